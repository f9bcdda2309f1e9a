//! `/healthz` follows the engine's health, with curl against the real cairnd: a disk poisoned
//! by a failed sync, or a catalog whose last commit failed, makes it answer 503 with the
//! reason; a catalog commit that succeeds again makes it healthy again.

use std::process::Command;

use cairn_proto::v1 as pb;

use crate::common::{grpc, grpc_disk, pattern, run_ok, start_cairnd_env};

/// HTTP status and body of a GET.
fn get(url: &str) -> (u16, String) {
    let out = run_ok(Command::new("curl").args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", url]));
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_poisoned_by_a_failed_sync_makes_healthz_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd_env(dir.path(), &[], &[("CAIRN_FAILPOINTS", "disk::sync=return")]);
    let url = format!("http://{}/healthz", daemon.http_addr());
    let ch = grpc(dir.path()).await;
    grpc_disk(&ch, "d", 1 << 20).await;

    let before = get(&url);
    let write = pb::WriteDiskRequest { disk: "d".into(), offset: 0, data: pattern(1, 4096), zero_length: 0 };
    let flushed =
        pb::disk_data_client::DiskDataClient::new(ch.clone()).write_disk(futures::stream::iter([write])).await;
    let after = get(&url);

    assert_eq!(before, (200, "ok".to_owned()));
    assert!(flushed.is_err(), "the flush after the write failed: {flushed:?}");
    assert_eq!(after.0, 503, "{after:?}");
    assert!(after.1.starts_with("unhealthy: disk d is poisoned by a failed sync"), "{after:?}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_catalog_commit_makes_healthz_unavailable_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    // The first catalog commit fails, the rest go through.
    let daemon = start_cairnd_env(dir.path(), &[], &[("CAIRN_FAILPOINTS", "catalog::commit=1*return->off")]);
    let url = format!("http://{}/healthz", daemon.http_addr());
    let ch = grpc(dir.path()).await;
    let mut disks = pb::disks_client::DisksClient::new(ch.clone());
    let create = |name: &str| pb::CreateDiskRequest { name: name.into(), size_bytes: 1 << 20, ..Default::default() };

    let before = get(&url);
    let failed = disks.create_disk(create("a")).await;
    let failing = get(&url);
    let created = disks.create_disk(create("b")).await;
    let after = get(&url);

    assert_eq!(before, (200, "ok".to_owned()));
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(failing.0, 503, "{failing:?}");
    assert!(failing.1.contains("the last catalog commit failed: failpoint catalog::commit fired"), "{failing:?}");
    assert!(created.is_ok(), "{created:?}");
    assert_eq!(after, (200, "ok".to_owned()));
    daemon.stop();
}
