//! A log-linear latency histogram in the manner of HdrHistogram: exact below 128, then 64
//! buckets per power of two (every value is recorded within 1/64 — 1.6 % — of itself),
//! fixed size, mergeable (so worker processes' histograms add up), serialised sparse.

use serde::{Deserialize, Serialize};

/// Values below this are counted exactly.
const EXACT: u64 = 128;
/// Buckets per power of two above `EXACT`.
const SUB: u64 = 64;
/// 128 exact buckets, then 64 for each of the octaves 2^7 … 2^63.
const BUCKETS: usize = (EXACT + SUB * 57) as usize;

/// Counts of values (microseconds, say) in log-linear buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let msb = 63 - u64::from(v.leading_zeros());
    let shift = msb - 6;
    (EXACT + (msb - 7) * SUB + ((v >> shift) - SUB)) as usize
}

/// The highest value that falls into bucket `i`.
fn highest(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let octave = (i - EXACT) / SUB;
    let sub = (i - EXACT) % SUB + SUB;
    let shift = octave + 1;
    let low = sub << shift;
    low.saturating_add((1u64 << shift) - 1)
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The smallest value counted.
    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    /// The largest value counted.
    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// The mean of the values counted.
    pub fn mean(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum as f64 / self.total as f64)
    }

    /// The value at or below which fraction `q` (0..=1) of the values fall: the highest
    /// value of that value's bucket, never above the largest value counted.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(highest(i).min(self.max).max(self.min));
            }
        }
        Some(self.max)
    }
}

/// The serialised form: only the buckets that hold something.
#[derive(Serialize, Deserialize)]
struct Sparse {
    buckets: Vec<(u32, u64)>,
    min: u64,
    max: u64,
    sum: u128,
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Sparse {
            buckets: (self.counts.iter().enumerate())
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            min: self.min,
            max: self.max,
            sum: self.sum,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sp = Sparse::deserialize(d)?;
        let mut h = Histogram {
            min: sp.min,
            max: sp.max,
            sum: sp.sum,
            ..Histogram::default()
        };
        for (i, c) in sp.buckets {
            let slot = h
                .counts
                .get_mut(i as usize)
                .ok_or_else(|| serde::de::Error::custom(format!("no histogram bucket {i}")))?;
            *slot += c;
            h.total += c;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_within_one_in_sixty_four() {
        let mut prev = None;
        for v in (0..5000u64).chain([1 << 20, (1 << 20) + 12345, u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(highest(i) >= v, "{v} above its bucket's top {}", highest(i));
            if i > 0 {
                assert!(highest(i - 1) < v, "{v} belongs to bucket {}", i - 1);
            }
            if v >= EXACT {
                assert!((highest(i) - v) as f64 <= v as f64 / 64.0, "{v}");
            }
            if let Some(p) = prev {
                assert!(i >= p);
            }
            prev = Some(i);
        }
    }

    #[test]
    fn quantiles_of_one_to_ten_thousand() {
        let mut h = Histogram::default();
        for v in 1..=10_000 {
            h.record(v);
        }
        for (q, want) in [
            (0.5, 5000.0),
            (0.9, 9000.0),
            (0.99, 9900.0),
            (0.999, 9990.0),
        ] {
            let got = h.quantile(q).unwrap() as f64;
            assert!(got >= want && got <= want * 1.016, "q{q}: {got}");
        }
        assert_eq!(h.quantile(1.0), Some(10_000));
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.mean(), Some(5000.5));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn merged_and_round_tripped_histograms_keep_every_count() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        for v in 0..1000 {
            a.record(v * 7);
            b.record(v * 1_000_003);
        }
        let mut both = a.clone();
        both.merge(&b);
        assert_eq!(both.count(), 2000);
        assert_eq!(both.max(), Some(999 * 1_000_003));
        assert_eq!(both.min(), Some(0));
        let json = serde_json::to_string(&both).unwrap();
        let back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, both);
        let bad = r#"{"buckets":[[999999,1]],"min":0,"max":0,"sum":0}"#;
        assert!(serde_json::from_str::<Histogram>(bad).is_err());
    }
}
