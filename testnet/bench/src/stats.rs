//! Summaries of timing samples: median, p90, min and max, in milliseconds.

use std::time::Duration;

use serde::Serialize;

/// A set of timings, summarised. The median of an even count is the mean of the two middle
/// samples; p90 is the nearest-rank 90th percentile (the smallest sample at or above 90 % of
/// the sorted samples).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Samples summarised.
    pub runs: usize,
    /// Median, ms.
    pub median_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// Smallest sample, ms.
    pub min_ms: f64,
    /// Largest sample, ms.
    pub max_ms: f64,
    /// Every sample in the order measured, ms.
    pub samples_ms: Vec<f64>,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        Self::of_ms(&samples.iter().map(ms).collect::<Vec<_>>())
    }

    /// Summarises samples given in milliseconds; `None` when there are none.
    pub fn of_ms(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            runs: n,
            median_ms: median,
            p90_ms: percentile(&sorted, 0.9),
            min_ms: sorted[0],
            max_ms: sorted[n - 1],
            samples_ms: samples.to_vec(),
        })
    }

    /// "4.2 ms (p90 5.1, max 7.0; 20 runs)".
    pub fn describe(&self) -> String {
        format!(
            "{} ms median (p90 {}, max {}; {} runs)",
            fmt_ms(self.median_ms),
            fmt_ms(self.p90_ms),
            fmt_ms(self.max_ms),
            self.runs
        )
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of samples (mean of the two middle ones for an even count); 0 for none.
pub fn median(samples: &[f64]) -> f64 {
    Summary::of_ms(samples).map_or(0.0, |s| s.median_ms)
}

/// A duration in milliseconds.
pub fn ms(duration: &Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Milliseconds with precision that suits their size.
pub fn fmt_ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90_of_ten_samples() {
        let samples: Vec<f64> = (1..=10).map(f64::from).collect();
        let summary = Summary::of_ms(&samples).expect("samples");
        assert_eq!(summary.median_ms, 5.5);
        assert_eq!(summary.p90_ms, 9.0);
        assert_eq!(summary.max_ms, 10.0);
        assert_eq!(summary.min_ms, 1.0);
    }

    #[test]
    fn odd_count_median_is_the_middle_sample() {
        let summary = Summary::of_ms(&[3.0, 1.0, 2.0]).expect("samples");
        assert_eq!(summary.median_ms, 2.0);
        assert_eq!(summary.p90_ms, 3.0);
        assert_eq!(summary.samples_ms, vec![3.0, 1.0, 2.0]);
    }

    #[test]
    fn no_samples_no_summary() {
        assert!(Summary::of(&[]).is_none());
    }
}
