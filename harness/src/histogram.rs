//! A latency histogram with 1 % relative precision.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Ratio between the bounds of consecutive buckets.
const GROWTH: f64 = 1.01;
/// Buckets: 1 µs to about 20 minutes.
const BUCKETS: usize = 2100;

/// Latencies counted in logarithmic buckets (each 1 % wide), from 1 µs to
/// about 20 minutes; the exact minimum, maximum and mean are kept.
///
/// ```
/// use std::time::Duration;
/// use tidemill_harness::LatencyHistogram;
///
/// let mut h = LatencyHistogram::default();
/// for ms in 1..=100 {
///     h.record(Duration::from_millis(ms));
/// }
/// let p50 = h.percentile(50.0).unwrap().as_secs_f64() * 1e3;
/// assert!((p50 - 50.0).abs() < 1.0, "{p50}");
/// assert_eq!(h.max(), Some(Duration::from_millis(100)));
/// ```
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    count: u64,
    sum_us: f64,
    min_us: u64,
    max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_us: 0.0,
            min_us: u64::MAX,
            max_us: 0,
        }
    }
}

fn bucket(us: u64) -> usize {
    if us <= 1 {
        0
    } else {
        (((us as f64).ln() / GROWTH.ln()).floor() as usize + 1).min(BUCKETS - 1)
    }
}

/// The value reported for a bucket: the geometric middle of its bounds.
fn bucket_value(b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        GROWTH.powf(b as f64 - 0.5)
    }
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        self.record_micros(latency.as_micros().min(u64::MAX as u128) as u64);
    }

    /// Counts one latency given in microseconds.
    pub fn record_micros(&mut self, us: u64) {
        self.counts[bucket(us)] += 1;
        self.count += 1;
        self.sum_us += us as f64;
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    /// How many latencies were counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `p`-th percentile (0–100), within 1 %; `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let us = bucket_value(b).clamp(self.min_us as f64, self.max_us as f64);
                return Some(Duration::from_secs_f64(us / 1e6));
            }
        }
        self.max()
    }

    /// The largest latency; `None` when empty.
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.max_us))
    }

    /// The mean latency; `None` when empty.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_secs_f64(self.sum_us / self.count as f64 / 1e6))
    }

    /// The usual summary, in milliseconds.
    pub fn summary(&self) -> Option<LatencySummary> {
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        (self.count > 0).then(|| LatencySummary {
            rows: self.count,
            p50_ms: ms(self.percentile(50.0)),
            p95_ms: ms(self.percentile(95.0)),
            p99_ms: ms(self.percentile(99.0)),
            p999_ms: ms(self.percentile(99.9)),
            max_ms: ms(self.max()),
            mean_ms: ms(self.mean()),
        })
    }
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Latencies counted.
    pub rows: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile (0 in results written before it was measured).
    #[serde(default)]
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_one_percent() {
        let mut h = LatencyHistogram::default();
        for us in 1..=100_000u64 {
            h.record_micros(us);
        }
        for p in [50.0, 95.0, 99.0] {
            let got = h.percentile(p).unwrap().as_secs_f64() * 1e6;
            let want = p / 100.0 * 100_000.0;
            assert!((got - want).abs() / want < 0.01, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.max(), Some(Duration::from_micros(100_000)));
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn empty_and_single() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.percentile(50.0), None);
        assert!(h.summary().is_none());
        h.record(Duration::from_millis(7));
        // One value: every percentile is that value (clamped to min/max).
        assert_eq!(h.percentile(99.0), Some(Duration::from_millis(7)));
    }
}
