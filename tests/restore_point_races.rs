//! Deleting a restore point while something else uses it: a read of it returns its exact bytes
//! or fails NotFound, never another restore point's content.
//!
//! A failpoint holds the other side in its critical window (armed in a child process: the
//! failpoint registry is global to a process).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_engine::{ErrorKind, IoBuf};

use crate::common::{BACKENDS, collection, disk, open, pattern, restore_point};

const CHUNK: u64 = 256 << 10;
const CHILD_ENV: &str = "CAIRN_RACE_CHILD_DIR";
const PHASE_ENV: &str = "CAIRN_RACE_CHILD_PHASE";
/// How long the failpoint holds the racing side, and when the deletion starts inside it.
const HOLD_MS: u64 = 1500;
const DELETE_AFTER: Duration = Duration::from_millis(300);

/// The child's side. Does nothing unless run as a child by the tests below.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_process_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    match std::env::var(PHASE_ENV).as_deref() {
        Ok("read") => delete_during_read(Path::new(&dir)).await,
        other => panic!("unknown child phase {other:?}"),
    }
}

fn run_child(dir: &Path, phase: &str, failpoints: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["restore_point_races::child_process_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(PHASE_ENV, phase)
        .env("CAIRN_FAILPOINTS", failpoints)
        .output()
        .unwrap()
}

#[track_caller]
fn assert_child_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "child failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

    let out = run_child(dir.path(), "read", &format!("restore_point::read_resolved=1*sleep({HOLD_MS})"));

    assert_child_ok(&out);
}
