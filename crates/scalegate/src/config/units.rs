//! Units a user writes in the config: durations ("250ms", "5s", "2m", "1h") and byte sizes
//! (64, "64KiB", "10MiB", "1GB").

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A duration written as a number with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// A byte count written as an integer or a number with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Parses "250ms", "5s", "1.5s", "2m", "1h", "1d".
pub fn parse_duration(s: &str) -> Option<Duration> {
    // At most a century: more is a typo, and would overflow the clock arithmetic (and
    // `Duration::from_secs_f64` panics past u64::MAX seconds).
    let secs = duration_secs(s)?;
    (secs <= MAX_SECS).then(|| Duration::from_secs_f64(secs))
}

/// The seconds a duration's text says, however many.
fn duration_secs(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1_000_000.0,
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

/// The longest duration a config may give: 100 years.
const MAX_SECS: f64 = 100.0 * 365.0 * 86400.0;

/// Parses "512", "64KiB", "64KB", "10MiB", "1GiB" (KB/MB/GB are powers of 1000).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl<'de> de::Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration such as "250ms", "5s", "2m", "1h" or "1d""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).ok_or_else(|| {
                    // A well-formed duration over the limit is told as such, not as a typo.
                    if duration_secs(v).is_some() {
                        return E::custom(format!(r#"duration "{v}" is over the longest allowed, 100 years"#));
                    }
                    E::custom(format!(r#"invalid duration "{v}": expected a number with a unit (us, ms, s, m, h, d), e.g. "250ms""#))
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> de::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a size in bytes: an integer or a string such as "64KiB" or "10MiB""#)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).ok_or_else(|| {
                    E::custom(format!(r#"invalid size "{v}": expected bytes, or a number with KiB, MiB, GiB, KB, MB or GB"#))
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        // Found from outside: this panicked (and a reload took the gateway down).
        assert_eq!(parse_duration("99999999999999999999h"), None);
        assert_eq!(parse_duration("36501d"), None);
        assert_eq!(
            parse_duration("36500d"),
            Some(Duration::from_secs(36500 * 86400))
        );
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("ms"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("1TB"), None);
    }
}
