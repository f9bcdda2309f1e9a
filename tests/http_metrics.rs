//! cairnd's HTTP endpoint with a real client (curl): `/healthz` answers ok, `/metrics` has
//! every metric family in the Prometheus text format with values that follow guest I/O
//! (capture reads are not guest I/O and do not count), captures, hydrations and the chunk
//! store; a public address without TLS is refused.

use std::process::Command;

use cairn_proto::v1 as pb;

use crate::common::{daemon_bin, grpc, grpc_read, grpc_wait_op, grpc_write, pattern, run_ok, start_cairnd};

const MIB: u64 = 1 << 20;

fn curl(url: &str) -> String {
    run_ok(Command::new("curl").args(["-sS", "--fail", "--max-time", "30", url]))
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_over_curl_follow_io_captures_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &["--http", "127.0.0.1:0"]);
    let base = format!("http://{}", daemon.http_addr());
    let ch = grpc(dir.path()).await;
    let d = pb::disks_client::DisksClient::new(ch.clone())
        .create_disk(pb::CreateDiskRequest { name: "d".into(), size_bytes: 8 * MIB, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let disk = format!("{{disk=\"d\",id=\"{}\"}}", d.id);

    let health = curl(&format!("{base}/healthz"));
    let before = curl(&format!("{base}/metrics"));
    grpc_write(&ch, "d", 0, pattern(5, MIB as usize)).await;
    crate::common::grpc_group_and_collection(&ch, "vm", &["d"], "c").await;
    let r = pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .create_restore_point(pb::CreateRestorePointRequest {
            collection: "c".into(),
            name: "rp1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grpc_wait_op(&ch, &r.operation.unwrap().id).await.state(), pb::OperationState::Succeeded);
    grpc_read(&ch, pb::read_disk_request::Source::Disk("d".into())).await;
    let restored = pb::restores_client::RestoresClient::new(ch.clone())
        .restore_disk(pb::RestoreDiskRequest {
            collection: "c".into(),
            restore_point: "rp1".into(),
            disk: "d".into(),
            name: "d2".into(),
            direct_io: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grpc_wait_op(&ch, &restored.operation.unwrap().id).await.state(), pb::OperationState::Succeeded);
    let after = curl(&format!("{base}/metrics"));

    assert_eq!(health, "ok");
    for family in [
        "cairn_disk_read_ops_total counter",
        "cairn_disk_read_bytes_total counter",
        "cairn_disk_write_ops_total counter",
        "cairn_disk_write_bytes_total counter",
        "cairn_disk_flush_ops_total counter",
        "cairn_disk_trim_ops_total counter",
        "cairn_disk_size_bytes gauge",
        "cairn_freeze_window_seconds histogram",
        "cairn_capture_bytes_total counter",
        "cairn_capture_seconds_total counter",
        "cairn_hydration_bytes_total counter",
        "cairn_hydration_seconds_total counter",
        "cairn_store_records gauge",
        "cairn_store_record_bytes gauge",
        "cairn_store_referenced_records gauge",
        "cairn_store_referenced_bytes gauge",
        "cairn_store_references gauge",
        "cairn_store_packs gauge",
        "cairn_store_pack_bytes gauge",
        "cairn_store_dedup_ratio gauge",
        "cairn_operations gauge",
    ] {
        assert!(before.contains(&format!("# TYPE {family}\n")), "no {family} in:\n{before}");
    }
    assert_eq!(sample(&before, &format!("cairn_disk_write_bytes_total{disk}")), 0.0);
    assert_eq!(sample(&after, &format!("cairn_disk_write_bytes_total{disk}")), MIB as f64);
    assert!(sample(&after, &format!("cairn_disk_write_ops_total{disk}")) >= 1.0, "{after}");
    assert_eq!(sample(&before, &format!("cairn_disk_read_bytes_total{disk}")), 0.0);
    assert!(sample(&after, &format!("cairn_disk_read_bytes_total{disk}")) >= MIB as f64, "ReadDisk read it: {after}");
    assert_eq!(sample(&before, "cairn_freeze_window_seconds_count"), 0.0);
    assert_eq!(sample(&after, "cairn_freeze_window_seconds_count"), 1.0);
    assert_eq!(sample(&after, "cairn_freeze_window_seconds_bucket{le=\"+Inf\"}"), 1.0);
    assert_eq!(sample(&after, "cairn_freeze_window_seconds_bucket{le=\"10\"}"), 1.0);
    assert_eq!((sample(&before, "cairn_store_records"), sample(&after, "cairn_store_records")), (0.0, 4.0));
    assert_eq!(sample(&after, "cairn_store_packs"), 1.0);
    assert!(sample(&after, "cairn_store_pack_bytes") > MIB as f64, "{after}");
    assert_eq!(sample(&before, "cairn_operations{kind=\"capture\",state=\"succeeded\"}"), 0.0);
    assert_eq!(sample(&after, "cairn_operations{kind=\"capture\",state=\"succeeded\"}"), 1.0);
    // Throughput: the capture read the 1 MiB of data; the hydration wrote it back (holes
    // cost nothing); both spent time doing so.
    assert_eq!(sample(&before, "cairn_capture_bytes_total"), 0.0);
    assert_eq!(sample(&after, "cairn_capture_bytes_total"), MIB as f64);
    assert!(sample(&after, "cairn_capture_seconds_total") > 0.0, "{after}");
    assert_eq!(sample(&before, "cairn_hydration_bytes_total"), 0.0);
    assert_eq!(sample(&after, "cairn_hydration_bytes_total"), MIB as f64);
    assert!(sample(&after, "cairn_hydration_seconds_total") > 0.0, "{after}");
    assert_eq!(sample(&after, "cairn_operations{kind=\"hydration\",state=\"succeeded\"}"), 1.0);
    assert_eq!(sample(&after, "cairn_store_dedup_ratio"), 1.0);
    daemon.stop();
    let gone = Command::new("curl").args(["-sS", "--max-time", "5", &format!("{base}/healthz")]).output().unwrap();
    assert!(!gone.status.success(), "the HTTP listener stops with the daemon");
}

#[test]
fn http_on_a_public_address_without_tls_or_on_a_unix_socket_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = |http: &str| {
        let out = Command::new(daemon_bin("cairnd"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--http", http])
            .output()
            .unwrap();
        assert!(!out.status.success(), "cairnd --http {http} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let public = start("0.0.0.0:0");
    let unix = start("unix:/tmp/cairn-http.sock");

    assert!(public.contains("HTTP") && public.contains("--allow-plaintext"), "{public}");
    assert!(unix.contains("expected HOST:PORT"), "{unix}");
}
