//! Deleting a restore point while something else uses it: a read of it returns its exact bytes
//! or fails NotFound, never another restore point's content; a restore from it either wins
//! (and the deletion is refused) or fails NotFound, never leaving a disk whose base is gone.
//!
//! A failpoint holds the other side in its critical window (armed in a child process: the
//! failpoint registry is global to a process).

use std::path::Path;
use std::time::Duration;

use cairn_engine::{ErrorKind, IoBuf, RestoreDisk};

use crate::common::{BACKENDS, collection, disk, open, pattern, restore_point};

const CHUNK: u64 = 256 << 10;
const ENTRY: &str = "restore_point_races::child_process_entry";
/// How long the failpoint holds the racing side, and when the deletion starts inside it.
const HOLD_MS: u64 = 1500;
const DELETE_AFTER: Duration = Duration::from_millis(300);

/// The child's side. Does nothing unless run as a child by the tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_process_entry() {
    let Some((dir, phase)) = crate::common::child::child_args() else { return };
    match phase.as_str() {
        "read" => delete_during_read(&dir).await,
        "restore" => delete_during_restore(&dir).await,
        other => panic!("unknown child phase {other:?}"),
    }
}

/// rp1, rp2, rp3 each hold their own chunks 0 and 1; deleting rp2 drops its entries, so a
/// lookup at rp2's seq that runs after the deletion would find rp1's.
async fn delete_during_read(dir: &Path) {
    let engine = open(dir, BACKENDS[0]).await;
    let a = disk(&engine, "a", 4 * CHUNK).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    let mut rps = Vec::new();
    for seed in 1..=3u64 {
        d.write(0, IoBuf::from_slice(&pattern(seed, 2 * CHUNK as usize)), false).await.unwrap();
        rps.push(restore_point(&engine, coll.id, &format!("rp{seed}"), vec![]).await);
    }
    let reader = engine.disk_restore_point(rps[1].id, a).unwrap();

    let read = tokio::spawn(async move { reader.read(0, 2 * CHUNK).await });
    tokio::time::sleep(DELETE_AFTER).await;
    engine.delete_restore_point(rps[1].id).await.unwrap();
    let got = read.await.unwrap();

    // Held after its lookups, the read sees the deletion commit before it returns.
    let exact = got.map(|bytes| bytes == pattern(2, 2 * CHUNK as usize)).map_err(|e| e.kind());
    assert_eq!(exact, Err(ErrorKind::NotFound), "read of rp2 across its deletion (Ok(false): another one's bytes)");
}

#[test]
fn a_read_racing_a_delete_fails_not_found_or_returns_the_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();

    crate::common::child::run_ok(
        ENTRY,
        dir.path(),
        "read",
        &format!("restore_point::read_resolved=1*sleep({HOLD_MS})"),
    );
}

async fn delete_during_restore(dir: &Path) {
    let engine = open(dir, BACKENDS[0]).await;
    let a = disk(&engine, "a", 4 * CHUNK).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    engine.disk(a).unwrap().write(0, IoBuf::from_slice(&pattern(7, 2 * CHUNK as usize)), false).await.unwrap();
    let rp = restore_point(&engine, coll.id, "rp", vec![]).await;
    let req = RestoreDisk { restore_point: rp.id, disk: a, name: "r".into(), direct_io: false };

    let restoring = engine.clone();
    let restore = tokio::spawn(async move { restoring.restore_disk(req).await });
    tokio::time::sleep(DELETE_AFTER).await;
    let deleted = engine.delete_restore_point(rp.id).await;
    let restored = restore.await.unwrap();

    // Held before it looked at its base, the restore finds the deletion done.
    assert!(deleted.is_ok(), "{deleted:?}");
    assert_eq!(restored.map(|(d, _)| d.id).map_err(|e| e.kind()), Err(ErrorKind::NotFound));
    // The data dir opens again with every disk.
    engine.close().await.unwrap();
    drop(engine);
    let engine = open(dir, BACKENDS[1]).await;
    assert!(engine.disk(a).is_ok());
    engine.close().await.unwrap();
}

#[test]
fn a_restore_racing_a_delete_of_its_restore_point_never_keeps_a_deleted_base() {
    let dir = tempfile::tempdir().unwrap();

    crate::common::child::run_ok(ENTRY, dir.path(), "restore", &format!("restore::before_admin=1*sleep({HOLD_MS})"));
}
