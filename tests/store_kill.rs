//! Kill tests for delete and verify: a child process (this test binary re-run) dies at a
//! failpoint; after reopening, every restore point reads back byte-identical, no referenced
//! chunk is missing, and rerunning the job completes it.

use cairn_engine::{IoBuf, OperationState, VerifyReport, VerifyTarget};

use crate::common::{
    BACKENDS, assert_same, collection, disk, open, pattern, read_all, read_rp, restore_point, wait_op,
};

const MIB: u64 = 1 << 20;

/// The child's side. Does nothing unless run as a child by the tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_entry() {
    let Some((dir, action)) = crate::common::child::child_args() else { return };
    let engine = open(&dir, BACKENDS[0]).await;
    let coll = engine.collection_by_name("c").unwrap();
    match action.as_str() {
        "delete" => {
            let rp = engine.restore_point_by_name(coll.id, "rp1").unwrap();
            engine.delete_restore_point(rp.id).await.unwrap();
        }
        "verify" => {
            let op = engine.verify(VerifyTarget::Store).await.unwrap();
            wait_op(&engine, op.id).await;
        }
        other => panic!("unknown action {other:?}"),
    }
}

async fn kill_during(action: &str, failpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, images) = {
        let engine = open(dir.path(), BACKENDS[0]).await;
        let a = disk(&engine, "a", 8 * MIB).await.id;
        let (_, coll) = collection(&engine, "c", vec![a]).await;
        let d = engine.disk(a).unwrap();
        let mut images = Vec::new();
        for i in 0..3u64 {
            d.write(i * MIB, IoBuf::from_slice(&pattern(i, 2 * MIB as usize)), false).await.unwrap();
            images.push((restore_point(&engine, coll.id, &format!("rp{i}"), vec![]).await, read_all(&d).await));
        }
        engine.close().await.unwrap();
        (a, images)
    };
    let (status, out) = crate::common::child::run(
        "store_kill::child_process_entry",
        dir.path(),
        action,
        &format!("{failpoint}=return(exit)"),
    );
    assert!(!status.success(), "{failpoint}: the child was meant to die:\n{out}");

    let engine = open(dir.path(), BACKENDS[1]).await;
    for (rp, image) in &images {
        if let Ok(r) = engine.restore_point(rp.id) {
            assert_same(&read_rp(&engine, r.id, a).await, image, &format!("{failpoint}: {}", r.name));
        }
    }
    // Interrupted operations are settled (a verify resumed and ended), and a full verify
    // finds everything intact.
    for op in engine.list_operations().unwrap() {
        let end = wait_op(&engine, op.id).await;
        if op.kind == cairn_engine::OperationKind::Verify {
            assert_eq!(end.state, OperationState::Succeeded, "{failpoint}: the resumed verify: {end:?}");
            let report: VerifyReport = serde_json::from_value(end.result.unwrap()).unwrap();
            let records = engine.store_stats().unwrap().records;
            assert_eq!((report.records_checked, report.corrupt.len()), (records, 0), "{failpoint}: {report:?}");
        }
    }
    let op = engine.verify(VerifyTarget::Store).await.unwrap();
    let op = wait_op(&engine, op.id).await;
    assert_eq!(op.state, OperationState::Succeeded);
    let report: VerifyReport = serde_json::from_value(op.result.unwrap()).unwrap();
    assert!(report.corrupt.is_empty(), "{failpoint}: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_before_a_delete_commits() {
    kill_during("delete", "delete::before_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_a_verify() {
    kill_during("verify", "verify::after_record").await;
}
