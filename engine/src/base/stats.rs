//! Engine-wide statistics: the freeze-window histogram, and the bytes and busy time of
//! background jobs (capture, hydration) from which a scraper derives their throughput.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Bytes one kind of background job moved and the time it spent doing so, both monotonic:
/// `rate(bytes) / rate(seconds)` is its throughput while it works. Jobs running at the same
/// time each add their own time, so the busy time can grow faster than the clock.
#[derive(Debug, Default)]
pub struct JobThroughput {
    bytes: AtomicU64,
    busy_ns: AtomicU64,
}

impl JobThroughput {
    /// Counts `bytes` done, and the time since `since` as busy; moves `since` to now, so a
    /// job calling this after each piece of work counts all of its time exactly once.
    pub(crate) fn record(&self, bytes: u64, since: &mut Instant) {
        let now = Instant::now();
        let ns = u64::try_from(now.duration_since(*since).as_nanos()).unwrap_or(u64::MAX);
        *since = now;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Bytes done so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Time spent so far.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }
}

/// Throughput counters of the engine's data-moving jobs.
#[derive(Debug, Default)]
pub struct Throughput {
    /// Raw bytes captured into restore points (read from live disks, whether stored,
    /// deduplicated or zero).
    pub capture: JobThroughput,
    /// Bytes written into restored disks from the chunk store.
    pub hydration: JobThroughput,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_counts_bytes_and_the_time_between_calls_once() {
        let t = JobThroughput::default();
        let mut since = Instant::now() - Duration::from_millis(50);
        t.record(100, &mut since);
        let first = t.busy();
        t.record(20, &mut since);
        assert_eq!(t.bytes(), 120);
        assert!(first >= Duration::from_millis(50), "{first:?}");
        assert!(t.busy() >= first && t.busy() < first + Duration::from_secs(5), "{:?}", t.busy());
    }
}
