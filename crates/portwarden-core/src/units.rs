//! Human units in policies: durations (`500ms`, `24h`, `1h30m`), bandwidths (`10Gbit`) and byte sizes (`64MiB`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// Why a unit value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// A duration that does not parse.
    #[error("`{0}` is not a duration: use e.g. 500ms, 10s, 30m, 24h, 7d or 1h30m")]
    Duration(String),
    /// A negative duration.
    #[error("duration `{0}` is negative")]
    Negative(String),
    /// A duration too large to represent.
    #[error("duration `{0}` is too large")]
    TooLarge(String),
    /// A bandwidth that does not parse.
    #[error("`{0}` is not a bandwidth: use e.g. 100Mbit, 10Gbit or 1.5Gbps")]
    Bandwidth(String),
    /// A byte size that does not parse.
    #[error("`{0}` is not a size: use e.g. 4096, 64KiB, 16MiB or 1GB")]
    Size(String),
}

/// A span of time written the way operators write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The std duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<HumanDuration, UnitError> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(UnitError::Negative(t.to_string()));
        }
        let bad = || UnitError::Duration(t.to_string());
        if t.is_empty() {
            return Err(bad());
        }
        if t == "0" {
            return Ok(HumanDuration(Duration::ZERO)); // zero needs no unit
        }
        let mut total: u128 = 0; // nanoseconds
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad());
            }
            let large = || UnitError::TooLarge(t.to_string());
            let n: u128 = rest[..digits].parse().map_err(|_| large())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let ns: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" | "min" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "d" => 86_400_000_000_000,
                "w" => 604_800_000_000_000,
                _ => return Err(bad()),
            };
            total = n
                .checked_mul(ns)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(large)?;
        }
        let secs =
            u64::try_from(total / 1_000_000_000).map_err(|_| UnitError::TooLarge(t.to_string()))?;
        let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| bad())?;
        Ok(HumanDuration(Duration::new(secs, nanos)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d.subsec_nanos() != 0 {
            let ms = d.as_millis();
            if Duration::from_millis(ms as u64) == d {
                return write!(f, "{ms}ms");
            }
            return write!(f, "{}ns", d.as_nanos());
        }
        let mut s = d.as_secs();
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
            if s >= size {
                write!(f, "{}{unit}", s / size)?;
                s %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A link speed in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bandwidth(pub u64);

impl Bandwidth {
    /// Bits per second.
    pub fn bits_per_sec(self) -> u64 {
        self.0
    }

    /// Bytes that fit in flight on a link of this speed with round-trip time `rtt`
    /// (the bandwidth-delay product).
    pub fn bdp_bytes(self, rtt: Duration) -> u64 {
        let bits = u128::from(self.0) * rtt.as_nanos() / 1_000_000_000;
        u64::try_from(bits / 8).unwrap_or(u64::MAX)
    }
}

/// Splits `1.5Gbit` into (1.5, "Gbit").
fn split_number(t: &str) -> Option<(f64, &str)> {
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..end].parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n, t[end..].trim()))
}

impl FromStr for Bandwidth {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Bandwidth, UnitError> {
        let t = s.trim();
        let bad = || UnitError::Bandwidth(t.to_string());
        let (n, unit) = split_number(t).ok_or_else(bad)?;
        let unit = unit.strip_suffix("/s").unwrap_or(unit);
        let mult: f64 = match unit {
            "bit" | "bps" => 1.0,
            "Kbit" | "kbit" | "Kbps" | "kbps" => 1e3,
            "Mbit" | "Mbps" => 1e6,
            "Gbit" | "Gbps" => 1e9,
            "Tbit" | "Tbps" => 1e12,
            "B" => 8.0,
            "KB" | "kB" => 8e3,
            "MB" => 8e6,
            "GB" => 8e9,
            _ => return Err(bad()),
        };
        let v = n * mult;
        if v > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(Bandwidth(v.round() as u64))
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [("Tbit", 1e12), ("Gbit", 1e9), ("Mbit", 1e6), ("Kbit", 1e3)] {
            if b as f64 >= size {
                let v = b as f64 / size;
                return if v.fract() == 0.0 {
                    write!(f, "{v:.0}{unit}")
                } else {
                    write!(f, "{v}{unit}")
                };
            }
        }
        write!(f, "{b}bit")
    }
}

impl Serialize for Bandwidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes: `4096`, `64KiB`, `16MiB`, `1GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<ByteSize, UnitError> {
        let t = s.trim();
        let bad = || UnitError::Size(t.to_string());
        let (n, unit) = split_number(t).ok_or_else(bad)?;
        let mult: f64 = match unit {
            "" | "B" => 1.0,
            "K" | "KiB" => 1024.0,
            "M" | "MiB" => 1024.0 * 1024.0,
            "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
            "kB" | "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            _ => return Err(bad()),
        };
        let v = n * mult;
        if v > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(ByteSize(v.round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_a_huge_duration_is_too_large_not_malformed() {
        for t in [
            "99999999999999999999d",
            "999999999999999999999999999999999999999999s",
        ] {
            let e = t.parse::<HumanDuration>().unwrap_err();
            assert!(matches!(e, UnitError::TooLarge(_)), "{t}: {e}");
            assert_eq!(e.to_string(), format!("duration `{t}` is too large"));
        }
    }

    #[test]
    fn durations_as_table() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("30m", Duration::from_secs(1800)),
            ("24h", Duration::from_secs(86_400)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("1h30m", Duration::from_secs(5400)),
            ("0s", Duration::ZERO),
        ];
        for (s, want) in cases {
            let d: HumanDuration = s.parse().unwrap();
            assert_eq!(d.get(), want, "{s}");
            assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }
        for bad in ["", "10", "ms", "3 parsecs", "1.5h", "10x", "00"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
        assert_eq!(
            "-5m".parse::<HumanDuration>(),
            Err(UnitError::Negative("-5m".into()))
        );
    }

    #[test]
    fn bandwidth_and_bdp() {
        let b: Bandwidth = "10Gbit".parse().unwrap();
        assert_eq!(b.bits_per_sec(), 10_000_000_000);
        assert_eq!(b.to_string(), "10Gbit");
        // 10 Gbit/s × 40 ms = 400 Mbit = 50 MB in flight.
        assert_eq!(b.bdp_bytes(Duration::from_millis(40)), 50_000_000);
        assert_eq!("1.5Gbps".parse::<Bandwidth>().unwrap().0, 1_500_000_000);
        assert_eq!(
            "1.5Gbps".parse::<Bandwidth>().unwrap().to_string(),
            "1.5Gbit"
        );
        assert!("fast".parse::<Bandwidth>().is_err());
        assert!("10Gbytes".parse::<Bandwidth>().is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65_536);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert_eq!("1GB".parse::<ByteSize>().unwrap().0, 1_000_000_000);
        assert!("lots".parse::<ByteSize>().is_err());
    }
}
