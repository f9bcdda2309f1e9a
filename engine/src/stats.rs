//! Engine-wide statistics: the freeze-window histogram.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Freeze windows, in nanoseconds (1 µs to 60 s at 3 significant figures).
#[derive(Debug)]
pub struct FreezeStats {
    hist: Mutex<Histogram<u64>>,
}

/// A summary of freeze windows so far.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FreezeSummary {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub sum: Duration,
}

impl Default for FreezeStats {
    #[allow(clippy::expect_used, reason = "constant bounds that hdrhistogram accepts")]
    fn default() -> Self {
        let hist = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
        Self { hist: Mutex::new(hist) }
    }
}

impl FreezeStats {
    pub(crate) fn record(&self, window: Duration) {
        let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.hist.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(ns);
    }

    /// Count, percentiles and maximum.
    pub fn summary(&self) -> FreezeSummary {
        let h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        let sum: u64 = h.iter_recorded().map(|v| v.value_iterated_to().saturating_mul(v.count_at_value())).sum();
        FreezeSummary {
            count: h.len(),
            p50: Duration::from_nanos(h.value_at_quantile(0.50)),
            p99: Duration::from_nanos(h.value_at_quantile(0.99)),
            max: Duration::from_nanos(h.max()),
            sum: Duration::from_nanos(sum),
        }
    }

    /// Cumulative counts at the given upper bounds (for Prometheus histograms).
    pub fn cumulative(&self, bounds: &[Duration]) -> Vec<u64> {
        let h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        bounds
            .iter()
            .map(|b| {
                let ns = u64::try_from(b.as_nanos()).unwrap_or(u64::MAX);
                h.iter_recorded().filter(|v| v.value_iterated_to() <= ns).map(|v| v.count_at_value()).sum()
            })
            .collect()
    }
}
