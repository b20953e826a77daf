//! Go-style durations (`250ms`, `0.5s`, `1h30m`), as Istio's YAML writes them.
//!
//! Istio's CRDs accept Go's `time.ParseDuration` syntax for every `google.protobuf.Duration`
//! field (`timeout: 10s`, `interval: 1m`, `baseEjectionTime: 1h30m`): a sequence of decimal
//! numbers, each with an optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`).
//! Go's grammar is small and exact, and the crates that parse "human" durations accept far
//! more (`1 day`, spaces) than Istio does, so it is implemented here against Go's rules, with
//! property tests for the round trip. Negative durations are rejected: no Istio field takes one.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written in Go's syntax. Serialises in Go's canonical form
/// (`1h30m0s`, `250ms`, `1.5s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

/// Why a duration string is not valid Go syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    /// The text that failed to parse.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

// === impl GoDuration ===

impl GoDuration {
    /// The duration as `std::time::Duration`.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Parses Go's `time.ParseDuration` syntax (non-negative only).
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError {
            input: s.to_string(),
            reason,
        };
        let mut rest = s;
        if let Some(r) = rest.strip_prefix('+') {
            rest = r;
        } else if rest.starts_with('-') {
            if rest == "-0" {
                return Ok(GoDuration(Duration::ZERO));
            }
            return Err(err("negative durations are not allowed"));
        }
        if rest == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        if rest.is_empty() {
            return Err(err("empty"));
        }
        let mut total: u128 = 0; // nanoseconds
        while !rest.is_empty() {
            // integer part
            let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let int_part = &rest[..int_len];
            rest = &rest[int_len..];
            let mut frac_part = "";
            if let Some(r) = rest.strip_prefix('.') {
                let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
                frac_part = &r[..frac_len];
                rest = &r[frac_len..];
                if int_part.is_empty() && frac_part.is_empty() {
                    return Err(err("missing number"));
                }
            } else if int_part.is_empty() {
                return Err(err("missing number"));
            }
            let unit_len = rest
                .char_indices()
                .find(|(_, c)| *c == '.' || c.is_ascii_digit())
                .map_or(rest.len(), |(i, _)| i);
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3600 * 1_000_000_000,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| err("overflow"))?
            };
            let mut v = int.checked_mul(scale).ok_or_else(|| err("overflow"))?;
            // fraction, as Go's ParseDuration computes it: digits until int64 overflow,
            // then `f * (unit / scale)` in floating point
            if !frac_part.is_empty() {
                let (mut f, mut fscale, mut overflow) = (0u64, 1f64, false);
                for d in frac_part.bytes() {
                    if overflow {
                        continue;
                    }
                    match f
                        .checked_mul(10)
                        .and_then(|x| x.checked_add(u64::from(d - b'0')))
                    {
                        Some(x) if x <= i64::MAX as u64 => {
                            f = x;
                            fscale *= 10.0;
                        }
                        _ => overflow = true,
                    }
                }
                v += (f as f64 * (scale as f64 / fscale)) as u128;
            }
            total = total.checked_add(v).ok_or_else(|| err("overflow"))?;
            if total > i64::MAX as u128 {
                return Err(err("overflow"));
            }
        }
        let secs = (total / 1_000_000_000) as u64;
        let nanos = (total % 1_000_000_000) as u32;
        Ok(GoDuration(Duration::new(secs, nanos)))
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        GoDuration(d)
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Self {
        d.0
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GoDuration::parse(s)
    }
}

/// Writes `v` (< 10^digits) as a fraction with trailing zeros removed, as Go's `fmtFrac`.
fn write_frac(f: &mut fmt::Formatter<'_>, v: u64, digits: usize) -> fmt::Result {
    if v == 0 {
        return Ok(());
    }
    let s = format!("{v:0digits$}");
    write!(f, ".{}", s.trim_end_matches('0'))
}

impl fmt::Display for GoDuration {
    /// Go's `time.Duration.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_nanos();
        if total == 0 {
            return f.write_str("0s");
        }
        if total < 1_000_000_000 {
            // sub-second: ns, µs or ms with fraction
            let (unit, div, digits) = if total < 1_000 {
                ("ns", 1u128, 0)
            } else if total < 1_000_000 {
                ("µs", 1_000, 3)
            } else {
                ("ms", 1_000_000, 6)
            };
            write!(f, "{}", total / div)?;
            if digits > 0 {
                write_frac(f, (total % div) as u64, digits)?;
            }
            return f.write_str(unit);
        }
        let secs = total / 1_000_000_000;
        let nanos = (total % 1_000_000_000) as u64;
        let h = secs / 3600;
        let m = (secs % 3600) / 60;
        let s = secs % 60;
        if h > 0 {
            write!(f, "{h}h{m}m")?;
        } else if m > 0 {
            write!(f, "{m}m")?;
        }
        write!(f, "{s}")?;
        write_frac(f, nanos, 9)?;
        f.write_str("s")
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"250ms\" or \"1h30m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GoDuration, E> {
                GoDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Duration {
        GoDuration::parse(s).unwrap().0
    }

    #[test]
    fn parses_go_examples() {
        // Examples from Go's time.ParseDuration tests.
        assert_eq!(p("0"), Duration::ZERO);
        assert_eq!(p("5s"), Duration::from_secs(5));
        assert_eq!(p("30s"), Duration::from_secs(30));
        assert_eq!(p("1478s"), Duration::from_secs(1478));
        assert_eq!(p("+5s"), Duration::from_secs(5));
        assert_eq!(p("5.0s"), Duration::from_secs(5));
        assert_eq!(p("5.6s"), Duration::from_millis(5600));
        assert_eq!(p("5.s"), Duration::from_secs(5));
        assert_eq!(p(".5s"), Duration::from_millis(500));
        assert_eq!(p("1.004s"), Duration::from_millis(1004));
        assert_eq!(p("100.00100s"), Duration::from_millis(100_001));
        assert_eq!(p("10ns"), Duration::from_nanos(10));
        assert_eq!(p("11us"), Duration::from_micros(11));
        assert_eq!(p("12µs"), Duration::from_micros(12));
        assert_eq!(p("13ms"), Duration::from_millis(13));
        assert_eq!(p("14s"), Duration::from_secs(14));
        assert_eq!(p("15m"), Duration::from_secs(900));
        assert_eq!(p("16h"), Duration::from_secs(16 * 3600));
        assert_eq!(p("3h30m"), Duration::from_secs(3 * 3600 + 1800));
        assert_eq!(p("10.5s4m"), Duration::from_millis(4 * 60_000 + 10_500));
        assert_eq!(p("1h2m3s4ms5us6ns"), Duration::new(3723, 4_005_006));
        assert_eq!(p("0.3333333333333333333h"), Duration::from_secs(20 * 60));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "", "3", "-", "s", ".", "-.", ".s", "+.s", "1d", "1 s", "10", "1.5", "-1s", "1h-1m",
        ] {
            assert!(GoDuration::parse(bad).is_err(), "{bad:?} should fail");
        }
        assert!(GoDuration::parse("9999999999999999999h").is_err());
    }

    #[test]
    fn displays_like_go() {
        let d = |s: &str| GoDuration::parse(s).unwrap().to_string();
        assert_eq!(d("0"), "0s");
        assert_eq!(d("1ns"), "1ns");
        assert_eq!(d("1.1us"), "1.1µs");
        assert_eq!(d("2.2ms"), "2.2ms");
        assert_eq!(d("3.3s"), "3.3s");
        assert_eq!(d("4m5s"), "4m5s");
        assert_eq!(d("4m5.001s"), "4m5.001s");
        assert_eq!(d("5h6m7.001s"), "5h6m7.001s");
        assert_eq!(d("8m0.000000001s"), "8m0.000000001s");
        assert_eq!(d("250ms"), "250ms");
        assert_eq!(d("1h30m"), "1h30m0s");
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(nanos in 0u64..(i64::MAX as u64)) {
            let d = GoDuration(Duration::from_nanos(nanos));
            prop_assert_eq!(GoDuration::parse(&d.to_string()).unwrap(), d);
        }

        #[test]
        fn composed_units_add_up(h in 0u64..1000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
            let text = format!("{h}h{m}m{s}s{ms}ms");
            let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
            prop_assert_eq!(GoDuration::parse(&text).unwrap().0, want);
        }

        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = GoDuration::parse(&s);
        }
    }
}
