//! Localities (`region/zone/subzone`), as WorkloadEntry and locality load balancing write them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A locality: `region`, `region/zone` or `region/zone/subzone`. Empty parts are absent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Locality {
    /// Region, e.g. `us-west`.
    pub region: String,
    /// Zone within the region.
    pub zone: String,
    /// Sub-zone within the zone.
    pub subzone: String,
}

// === impl Locality ===

impl Locality {
    /// Parses `region/zone/subzone` (missing trailing parts are empty).
    pub fn parse(s: &str) -> Self {
        let mut it = s.splitn(3, '/');
        Locality {
            region: it.next().unwrap_or("").to_string(),
            zone: it.next().unwrap_or("").to_string(),
            subzone: it.next().unwrap_or("").to_string(),
        }
    }

    /// Whether no part is set.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// Whether this locality matches a `localityLbSetting` pattern such as `us-west/*`,
    /// `us-west/zone1/*` or `us-west/zone1/sub1` (a `*` matches the rest).
    pub fn matches_pattern(&self, pattern: &str) -> bool {
        let parts = [
            self.region.as_str(),
            self.zone.as_str(),
            self.subzone.as_str(),
        ];
        for (i, p) in pattern.split('/').enumerate() {
            if p == "*" {
                return true;
            }
            if i >= 3 || parts[i] != p {
                return false;
            }
        }
        true
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        if !self.zone.is_empty() || !self.subzone.is_empty() {
            write!(f, "/{}", self.zone)?;
        }
        if !self.subzone.is_empty() {
            write!(f, "/{}", self.subzone)?;
        }
        Ok(())
    }
}

impl Serialize for Locality {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Locality {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Locality::parse(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns() {
        let l = Locality::parse("us-west/zone1/sub1");
        assert!(l.matches_pattern("us-west/*"));
        assert!(l.matches_pattern("us-west/zone1/*"));
        assert!(l.matches_pattern("us-west/zone1/sub1"));
        assert!(l.matches_pattern("*"));
        assert!(!l.matches_pattern("us-east/*"));
        assert!(!l.matches_pattern("us-west/zone2/*"));
        assert_eq!(Locality::parse("r").to_string(), "r");
    }

    proptest! {
        #[test]
        fn round_trips(r in "[a-z0-9-]{1,10}", z in "[a-z0-9-]{0,10}", s in "[a-z0-9-]{0,10}") {
            let l = Locality { region: r, subzone: if z.is_empty() { String::new() } else { s }, zone: z };
            prop_assert_eq!(Locality::parse(&l.to_string()), l);
        }
    }
}
