//! `/metrics`: the engine's counters in the Prometheus text exposition format (0.0.4),
//! rendered straight from the engine at each scrape (no global recorder, nothing to keep in
//! sync): per-disk I/O, the freeze-window histogram, capture and hydration throughput (bytes
//! and busy seconds, monotonic, so `rate(bytes) / rate(seconds)` is the throughput), chunk
//! store size and dedup (running totals: a scrape costs no index scan), and operations by
//! kind and state.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_engine::{Engine, OperationKind, OperationState, Result, StoreStats, Throughput};

use super::Ctx;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the freeze-window histogram buckets, in microseconds (100 µs to 10 s).
const FREEZE_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

const KINDS: [(OperationKind, &str); 5] = [
    (OperationKind::Capture, "capture"),
    (OperationKind::Hydration, "hydration"),
    (OperationKind::Copy, "copy"),
    (OperationKind::Gc, "gc"),
    (OperationKind::Verify, "verify"),
];
const STATES: [&str; 4] = ["running", "succeeded", "failed", "canceled"];

fn state_name(s: &OperationState) -> &'static str {
    match s {
        OperationState::Running => "running",
        OperationState::Succeeded => "succeeded",
        OperationState::Failed { .. } => "failed",
        OperationState::Canceled => "canceled",
    }
}

/// A label value, escaped as the format asks.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes `# HELP` and `# TYPE` of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders every metric of `engine`.
pub fn render(engine: &Engine) -> Result<String> {
    let mut out = String::new();
    disks(&mut out, engine);
    freeze(&mut out, engine);
    throughput(&mut out, engine.throughput());
    store(&mut out, &engine.store_stats()?);
    operations(&mut out, engine)?;
    Ok(out)
}

fn disks(out: &mut String, engine: &Engine) {
    let mut live: Vec<_> =
        engine.list_disks().into_iter().filter_map(|r| engine.disk(r.id).ok().map(|d| (r, d))).collect();
    live.sort_by(|a, b| a.0.name.as_str().cmp(b.0.name.as_str()));
    type Pick = fn(&cairn_engine::DiskCounters) -> &std::sync::atomic::AtomicU64;
    let counters: [(&str, &str, Pick); 6] = [
        ("cairn_disk_read_ops_total", "Read requests served by a live disk.", |c| &c.read_ops),
        ("cairn_disk_read_bytes_total", "Bytes read from a live disk.", |c| &c.read_bytes),
        ("cairn_disk_write_ops_total", "Write requests to a live disk.", |c| &c.write_ops),
        ("cairn_disk_write_bytes_total", "Bytes written to a live disk.", |c| &c.write_bytes),
        ("cairn_disk_flush_ops_total", "Flushes of a live disk.", |c| &c.flush_ops),
        ("cairn_disk_trim_ops_total", "Trims and zero writes of a live disk.", |c| &c.trim_ops),
    ];
    for (name, help, pick) in counters {
        family(out, name, "counter", help);
        for (r, d) in &live {
            let v = pick(d.counters()).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{disk=\"{}\",id=\"{}\"}} {v}", label(r.name.as_str()), r.id);
        }
    }
    family(out, "cairn_disk_size_bytes", "gauge", "Size of a live disk.");
    for (r, d) in &live {
        let _ = writeln!(
            out,
            "cairn_disk_size_bytes{{disk=\"{}\",id=\"{}\"}} {}",
            label(r.name.as_str()),
            r.id,
            d.size_bytes()
        );
    }
}

fn freeze(out: &mut String, engine: &Engine) {
    let name = "cairn_freeze_window_seconds";
    family(out, name, "histogram", "Time the disks of a restore point were frozen (write gates closed).");
    let bounds: Vec<Duration> = FREEZE_BUCKETS_US.iter().map(|us| Duration::from_micros(*us)).collect();
    let stats = engine.freeze_stats();
    // The summary is read after the buckets: a freeze recorded in between makes +Inf
    // larger, never smaller, than the last bucket.
    let counts = stats.cumulative(&bounds);
    let summary = stats.summary();
    for (b, n) in bounds.iter().zip(&counts) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", b.as_secs_f64());
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", summary.count);
    let _ = writeln!(out, "{name}_sum {}", summary.sum.as_secs_f64());
    let _ = writeln!(out, "{name}_count {}", summary.count);
}

fn throughput(out: &mut String, t: &Throughput) {
    let jobs = [
        ("capture", "Raw bytes captured into restore points.", "Time captures spent capturing.", &t.capture),
        ("hydration", "Bytes hydrated into restored disks from the store.", "Time hydrations spent.", &t.hydration),
    ];
    for (job, bytes_help, seconds_help, counters) in jobs {
        let name = format!("cairn_{job}_bytes_total");
        family(out, &name, "counter", bytes_help);
        let _ = writeln!(out, "{name} {}", counters.bytes());
        let name = format!("cairn_{job}_seconds_total");
        family(out, &name, "counter", seconds_help);
        let _ = writeln!(out, "{name} {}", counters.busy().as_secs_f64());
    }
}

fn store(out: &mut String, s: &StoreStats) {
    let gauges = [
        ("cairn_store_records", "Records (full chunks and deltas) in the chunk store index.", s.records),
        ("cairn_store_record_bytes", "Stored bytes of those records, headers included.", s.record_bytes),
        ("cairn_store_referenced_records", "Records some restore point references.", s.referenced_records),
        ("cairn_store_referenced_bytes", "Stored bytes of referenced records.", s.referenced_bytes),
        ("cairn_store_references", "Sum of the records' reference counts.", s.references),
        ("cairn_store_packs", "Sealed packs.", s.packs),
        ("cairn_store_pack_bytes", "Bytes of sealed packs.", s.pack_bytes),
    ];
    for (name, help, v) in gauges {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(out, "cairn_store_dedup_ratio", "gauge", "References per referenced record (1 without any sharing).");
    #[allow(clippy::cast_precision_loss, reason = "a ratio")]
    let ratio = if s.referenced_records == 0 { 1.0 } else { s.references as f64 / s.referenced_records as f64 };
    let _ = writeln!(out, "cairn_store_dedup_ratio {ratio}");
}

fn operations(out: &mut String, engine: &Engine) -> Result<()> {
    let ops = engine.list_operations()?;
    let name = "cairn_operations";
    family(out, name, "gauge", "Operations the engine keeps, by kind and state.");
    for (kind, kind_name) in KINDS {
        for state in STATES {
            let n = ops.iter().filter(|o| o.kind == kind && state_name(&o.state) == state).count();
            let _ = writeln!(out, "{name}{{kind=\"{kind_name}\",state=\"{state}\"}} {n}");
        }
    }
    Ok(())
}

/// The page, rendered off the async workers.
pub(super) async fn page(State(ctx): State<Ctx>) -> Response {
    // Operation counts read the catalog: off the async workers.
    let engine = ctx.engine.clone();
    match tokio::task::spawn_blocking(move || render(&engine)).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => crate::errors::http_error(&e).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics panicked");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering metrics failed; the daemon log has the details\n")
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn store_gauges_and_dedup_ratio_render() {
        let mut out = String::new();
        store(&mut out, &StoreStats { records: 3, referenced_records: 2, references: 5, ..Default::default() });
        assert!(out.contains("# TYPE cairn_store_records gauge\ncairn_store_records 3\n"), "{out}");
        assert!(out.contains("cairn_store_dedup_ratio 2.5\n"), "{out}");
    }
}
