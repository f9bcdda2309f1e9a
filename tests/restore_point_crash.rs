//! Kill tests: a child process (this test binary, re-run as a child) is aborted by a
//! failpoint in the middle of a capture; reopening the engine must lose no acknowledged
//! write, keep every succeeded restore point byte-identical, fail the interrupted one cleanly
//! and capture everything again next time.

use std::path::Path;

use cairn_engine::{IoBuf, ProvisioningState};

use crate::common::{BACKENDS, collection, disk, open, pattern, read_all, read_rp, restore_point, wait_op};

const MIB: u64 = 1 << 20;

/// The child's side. Does nothing unless run as a child by the tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_entry() {
    let Some((dir, phase)) = crate::common::child::child_args() else { return };
    let engine = open(&dir, BACKENDS[0]).await;
    match phase.as_str() {
        "setup" => {
            let a = disk(&engine, "a", 16 * MIB).await.id;
            let (_, coll) = collection(&engine, "c", vec![a]).await;
            let d = engine.disk(a).unwrap();
            d.write(0, IoBuf::from_slice(&pattern(1, 6 * MIB as usize)), false).await.unwrap();
            restore_point(&engine, coll.id, "rp1", vec![]).await;
            d.write(2 * MIB, IoBuf::from_slice(&pattern(2, 2 * MIB as usize)), false).await.unwrap();
            engine.close().await.unwrap();
        }
        "crash" => {
            let d = engine.disk_by_name("a").unwrap();
            // Acknowledged, never flushed: must survive the process dying.
            d.write(10 * MIB, IoBuf::from_slice(&pattern(3, MIB as usize)), false).await.unwrap();
            // Data captured by rp1, trimmed since: the rescan after the crash must see the hole.
            d.punch(5 * MIB, MIB, false).await.unwrap();
            let coll = engine.collection_by_name("c").unwrap();
            let req = cairn_engine::CreateRestorePoint { name: "rp2".into(), ..Default::default() };
            let (_, op) = engine.create_restore_point(coll.id, req).await.unwrap();
            wait_op(&engine, op.id).await;
            // Only reached when the failpoint did not fire.
        }
        other => panic!("unknown child phase {other:?}"),
    }
}

fn run_child(dir: &Path, phase: &str, failpoints: &str) -> std::process::ExitStatus {
    crate::common::child::run("restore_point_crash::child_process_entry", dir, phase, failpoints).0
}

async fn crash_at(failpoint: &str, rp2_survives: bool) {
    let dir = tempfile::tempdir().unwrap();
    assert!(run_child(dir.path(), "setup", "").success());
    let status = run_child(dir.path(), "crash", &format!("{failpoint}=return(exit)"));
    assert!(!status.success(), "{failpoint}: the child was meant to die, got {status}");

    let engine = open(dir.path(), BACKENDS[1]).await;
    let coll = engine.collection_by_name("c").unwrap();
    let a = engine.disk_by_name("a").unwrap();
    let rps = engine.list_restore_points(coll.id).unwrap();
    assert_eq!(rps.len(), 2, "{failpoint}");
    let (rp1, rp2) = (&rps[0], &rps[1]);

    // Every acknowledged write is on the live disk.
    let mut expect = vec![0u8; 16 * MIB as usize];
    expect[..6 * MIB as usize].copy_from_slice(&pattern(1, 6 * MIB as usize));
    expect[2 * MIB as usize..4 * MIB as usize].copy_from_slice(&pattern(2, 2 * MIB as usize));
    expect[10 * MIB as usize..11 * MIB as usize].copy_from_slice(&pattern(3, MIB as usize));
    expect[5 * MIB as usize..6 * MIB as usize].fill(0);
    assert!(read_all(&a).await == expect, "{failpoint}: live disk lost a write");

    // The succeeded restore point reads back byte-identical (every chunk present and checked).
    assert_eq!(rp1.state, ProvisioningState::Succeeded);
    let mut at_rp1 = vec![0u8; 16 * MIB as usize];
    at_rp1[..6 * MIB as usize].copy_from_slice(&pattern(1, 6 * MIB as usize));
    assert!(read_rp(&engine, rp1.id, a.id()).await == at_rp1, "{failpoint}: rp1 changed");

    if rp2_survives {
        assert_eq!(rp2.state, ProvisioningState::Succeeded, "{failpoint}");
        assert!(read_rp(&engine, rp2.id, a.id()).await == expect, "{failpoint}: rp2 content");
    } else {
        match &rp2.state {
            ProvisioningState::Failed { reason } => assert!(reason.contains("interrupted"), "{reason}"),
            other => panic!("{failpoint}: rp2 is {other:?}"),
        }
        assert_eq!(
            engine.disk_restore_point(rp2.id, a.id()).unwrap_err().kind(),
            cairn_engine::ErrorKind::FailedPrecondition
        );
    }
    assert!(!a.tracker().closed_pending(), "{failpoint}: the closed epoch was settled at open");
    assert!(a.tracker().untrusted(), "{failpoint}: a killed process leaves tracking untrusted");

    // The next capture rescans everything and is exact.
    let rp3 = restore_point(&engine, coll.id, "rp3", vec![]).await;
    assert!(rp3.disks[0].full_scan);
    assert!(read_rp(&engine, rp3.id, a.id()).await == expect, "{failpoint}: rp3 content");
    assert!(!a.tracker().untrusted(), "a full capture makes tracking trusted again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_a_pack_is_sealed() {
    crash_at("capture::after_pack_seal", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_before_a_map_batch() {
    crash_at("capture::before_batch", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_before_the_final_commit() {
    crash_at("capture::before_commit", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_the_final_commit() {
    crash_at("capture::after_commit", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_a_pack_sync() {
    crash_at("pack::after_sync", false).await;
}
