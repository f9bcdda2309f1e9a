//! GC and verify cut short by a SIGKILL of the real cairnd resume when it starts again, as the
//! same operation with a note saying so, and end with correct results: the GC rewrites the
//! sparse pack and every restore point reads back the same, the verify goes on from its saved
//! cursor and counts every record exactly once.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_proto::v1 as pb;
use tonic::transport::Channel;

use crate::common::{
    assert_same, grpc, grpc_group_and_collection, grpc_read, grpc_wait_op, grpc_write, pattern, start_cairnd,
    start_cairnd_env,
};

const MIB: u64 = 1 << 20;
const RESUMED: &str = "resumed after the engine restarted";

fn disks(ch: &Channel) -> pb::disks_client::DisksClient<Channel> {
    pb::disks_client::DisksClient::new(ch.clone())
}

fn rps(ch: &Channel) -> pb::restore_points_client::RestorePointsClient<Channel> {
    pb::restore_points_client::RestorePointsClient::new(ch.clone())
}

fn store(ch: &Channel) -> pb::store_client::StoreClient<Channel> {
    pb::store_client::StoreClient::new(ch.clone())
}

async fn create_rp(ch: &Channel, name: &str) {
    let req = pb::CreateRestorePointRequest { collection: "c".into(), name: name.into(), ..Default::default() };
    let r = rps(ch).create_restore_point(req).await.unwrap().into_inner();
    assert_eq!(grpc_wait_op(ch, &r.operation.unwrap().id).await.state(), pb::OperationState::Succeeded);
}

/// Disk `a` in collection `c` with restore point `rp1` of `first_mib` MiB of data.
async fn disk_with_a_restore_point(ch: &Channel, first_mib: u64) {
    disks(ch)
        .create_disk(pb::CreateDiskRequest { name: "a".into(), size_bytes: 16 * MIB, ..Default::default() })
        .await
        .unwrap();
    grpc_write(ch, "a", 0, pattern(1, (first_mib * MIB) as usize)).await;
    grpc_group_and_collection(ch, "vm", &["a"], "c").await;
    create_rp(ch, "rp1").await;
}

fn rp_source(name: &str) -> pb::read_disk_request::Source {
    pb::read_disk_request::Source::DiskRestorePoint(pb::DiskRestorePointRef {
        collection: "c".into(),
        restore_point: name.into(),
        disk: "a".into(),
    })
}

/// Polls an operation until `ready` holds for it (up to 60 s).
async fn wait_until(ch: &Channel, id: &str, ready: impl Fn(&pb::Operation) -> bool) -> pb::Operation {
    let mut ops = pb::operations_client::OperationsClient::new(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let op = ops.get_operation(pb::GetOperationRequest { id: id.into() }).await.unwrap().into_inner();
        if ready(&op) {
            return op;
        }
        assert!(Instant::now() < deadline, "operation never got there: {op:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn store_stats(ch: &Channel) -> pb::StoreStats {
    store(ch).get_store_stats(pb::GetStoreStatsRequest {}).await.unwrap().into_inner()
}

fn report(op: &pb::Operation) -> serde_json::Value {
    serde_json::from_str(&op.result_json).unwrap_or_else(|e| panic!("no report in {op:?}: {e}"))
}

fn restart(dir: &Path) -> crate::common::Cairnd {
    start_cairnd(dir, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_killed_while_rewriting_a_pack_resumes_and_completes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Phase 2 stalls right after sealing the rewritten pack, before its index switch.
    let daemon = start_cairnd_env(dir.path(), &[], &[("CAIRN_FAILPOINTS", "gc::after_rewrite_seal=sleep(60000)")]);
    let ch = grpc(dir.path()).await;
    disk_with_a_restore_point(&ch, 8).await;
    grpc_write(&ch, "a", 0, pattern(2, 7 * MIB as usize)).await;
    create_rp(&ch, "rp2").await;
    rps(&ch)
        .delete_restore_point(pb::DeleteRestorePointRequest { collection: "c".into(), restore_point: "rp1".into() })
        .await
        .unwrap();
    let (image, _) = grpc_read(&ch, rp_source("rp2")).await;
    let op = store(&ch).collect_garbage(pb::CollectGarbageRequest { live_share_percent: Some(50) }).await.unwrap();
    let id = op.into_inner().id;
    // Phase 1 is done once the rewrite's size is known; give the rewrite time to reach the stall.
    wait_until(&ch, &id, |o| o.bytes_total > 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.kill();

    let daemon = restart(dir.path());
    let ch = grpc(dir.path()).await;
    let end = grpc_wait_op(&ch, &id).await;
    let stats = store_stats(&ch).await;
    let (after, _) = grpc_read(&ch, rp_source("rp2")).await;

    assert_eq!(end.state(), pb::OperationState::Succeeded, "{end:?}");
    assert_eq!(end.note, RESUMED, "{end:?}");
    assert_eq!(report(&end)["packs_rewritten"], 1, "{end:?}");
    assert_eq!(stats.records, stats.referenced_records, "the sweep left no garbage: {stats:?}");
    assert_same(&after, &image, "rp2 after the resumed GC");
    daemon.stop();
}

/// A cairnd whose store verify checks a record every 100 ms (32 records: seconds; the cursor
/// is saved every second), once the verify saved progress; with the store's record count.
async fn slow_verify_under_way(dir: &Path) -> (crate::common::Cairnd, pb::Operation, u64) {
    let daemon = start_cairnd_env(dir, &[], &[("CAIRN_FAILPOINTS", "verify::after_record=sleep(100)")]);
    let ch = grpc(dir).await;
    disk_with_a_restore_point(&ch, 8).await;
    let records = store_stats(&ch).await.records;
    let op = store(&ch).verify(pb::VerifyRequest::default()).await.unwrap().into_inner();
    let cut = wait_until(&ch, &op.id, |o| o.bytes_done > 0).await;
    (daemon, cut, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_killed_midway_resumes_from_its_cursor_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cut, records) = slow_verify_under_way(dir.path()).await;
    daemon.kill();

    let daemon = restart(dir.path());
    let end = grpc_wait_op(&grpc(dir.path()).await, &cut.id).await;
    let resumed_at =
        daemon.startup.iter().find(|l| l.contains("verify resumes")).expect("a \"verify resumes\" log line");

    assert!(cut.bytes_done < cut.bytes_total, "killed midway: {cut:?}");
    assert!(!resumed_at.contains("records_checked=0"), "it resumed from a saved cursor: {resumed_at}");
    assert_eq!(end.state(), pb::OperationState::Succeeded, "{end:?}");
    assert_eq!(end.note, RESUMED, "{end:?}");
    assert_eq!((end.bytes_done, end.bytes_total), (cut.bytes_total, cut.bytes_total), "{end:?}");
    let report = report(&end);
    assert_eq!(report["records_checked"], records, "every record counted once: {report}");
    assert_eq!(report["corrupt"], serde_json::json!([]), "{report}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_parked_by_a_clean_stop_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, cut, records) = slow_verify_under_way(dir.path()).await;
    daemon.stop();

    let daemon = restart(dir.path());
    let end = grpc_wait_op(&grpc(dir.path()).await, &cut.id).await;

    assert_eq!(end.state(), pb::OperationState::Succeeded, "a stop parks it, never cancels it: {end:?}");
    assert_eq!(end.note, RESUMED, "{end:?}");
    assert_eq!(report(&end)["records_checked"], records, "{end:?}");
    daemon.stop();
}
