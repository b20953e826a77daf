//! Istio's `Percent` message (`{value: 12.5}`): a percentage in [0, 100].

use serde::{Deserialize, Serialize};

/// `istio.networking.v1.Percent`: a percentage, written `percentage: {value: 12.5}`.
///
/// Deserialisation accepts any number; the validator checks the range (Istio reports
/// "percentage %v is not in range 0..100").
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// The percentage. Default: 0.
    #[serde(default)]
    pub value: f64,
}

// === impl Percent ===

impl Percent {
    /// A percentage.
    pub const fn new(value: f64) -> Self {
        Percent { value }
    }

    /// Whether the value is within Istio's accepted range, 0 to 100 inclusive.
    pub fn in_range(self) -> bool {
        (0.0..=100.0).contains(&self.value)
    }

    /// The fraction in [0, 1] (clamped), for sampling.
    pub fn fraction(self) -> f64 {
        (self.value / 100.0).clamp(0.0, 1.0)
    }

    /// Whether a uniform sample `u` in [0, 1) falls inside this percentage.
    pub fn sample(self, u: f64) -> bool {
        u < self.fraction()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn json_round_trip(v in 0.0f64..=100.0) {
            let p = Percent::new(v);
            let s = serde_json::to_string(&p).unwrap();
            prop_assert_eq!(serde_json::from_str::<Percent>(&s).unwrap(), p);
            prop_assert!(p.in_range());
        }

        #[test]
        fn sampling_matches_fraction(v in 0.0f64..=100.0, u in 0.0f64..1.0) {
            prop_assert_eq!(Percent::new(v).sample(u), u < v / 100.0);
        }
    }

    #[test]
    fn range_edges() {
        assert!(Percent::new(0.0).in_range());
        assert!(Percent::new(100.0).in_range());
        assert!(!Percent::new(100.01).in_range());
        assert!(!Percent::new(-1.0).in_range());
        assert!(serde_json::from_str::<Percent>(r#"{"value": 1, "x": 2}"#).is_err());
    }
}
