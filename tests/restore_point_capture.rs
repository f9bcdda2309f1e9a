//! Restore points capture exactly the disks' content, incrementally and deduplicated.

use cairn_engine::{ChunkRef, IoBuf, ProvisioningState};

use crate::common::{BACKENDS, collection, disk, open, pattern, read_all, read_rp, restore_point};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_is_full_then_increments_store_only_changes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", 16 * MIB).await.id;
    let b = disk(&engine, "b", 16 * MIB).await.id;
    let (_, coll) = collection(&engine, "c1", vec![a, b]).await;
    let (da, db) = (engine.disk(a).unwrap(), engine.disk(b).unwrap());
    da.write(0, IoBuf::from_slice(&pattern(1, 3 * MIB as usize)), false).await.unwrap();
    da.write(10 * MIB + 200_000, IoBuf::from_slice(&pattern(2, 100_000)), false).await.unwrap();
    // Disk b holds the same first 3 MiB as a: deduplicated against a's chunks.
    db.write(0, IoBuf::from_slice(&pattern(1, 3 * MIB as usize)), false).await.unwrap();
    let (live_a1, live_b1) = (read_all(&da).await, read_all(&db).await);

    let rp1 = restore_point(&engine, coll.id, "rp1", vec![]).await;
    assert_eq!(rp1.state, ProvisioningState::Succeeded);
    assert_eq!(rp1.configuration, r#"{"vm":"c1"}"#);
    let (ra, rb) = (&rp1.disks[0], &rp1.disks[1]);
    let (ra, rb) = if ra.disk == a { (ra, rb) } else { (rb, ra) };
    assert!(ra.full_scan && rb.full_scan, "first restore points read everything");
    assert_eq!(ra.chunks_new, 12 + 2, "3 MiB, plus a 100 KB write straddling two chunks");
    assert_eq!(rb.chunks_new, 0, "b's chunks are all in the store already");
    assert_eq!(rb.chunks_deduplicated, 12);
    assert!(ra.bytes_stored > 3 * MIB, "random data does not compress");
    assert_eq!(read_rp(&engine, rp1.id, a).await, live_a1);
    assert_eq!(read_rp(&engine, rp1.id, b).await, live_b1);

    // Scattered small writes on a, nothing on b.
    let touched = [0u64, 5, 40, 63];
    for (i, c) in touched.iter().enumerate() {
        da.write(c * CHUNK + 4096 * i as u64, IoBuf::from_slice(&pattern(10 + i as u64, 4096)), false).await.unwrap();
    }
    da.punch(10 * MIB, MIB, false).await.unwrap(); // chunks 40..44 become (partly) zero
    let live_a2 = read_all(&da).await;
    let rp2 = restore_point(&engine, coll.id, "rp2", vec![]).await;
    let ra2 = rp2.disks.iter().find(|d| d.disk == a).unwrap();
    let rb2 = rp2.disks.iter().find(|d| d.disk == b).unwrap();
    assert!(!ra2.full_scan && !rb2.full_scan);
    assert_eq!(rb2.chunks_captured, 0, "an unchanged disk stores nothing");
    let mut expect: Vec<u64> = touched.to_vec();
    expect.extend(40..44);
    expect.sort_unstable();
    expect.dedup();
    assert_eq!(ra2.chunks_captured, expect.len() as u64);
    assert_eq!(engine.changed_chunks(rp1.id, rp2.id, a).unwrap(), expect);
    assert_eq!(engine.changed_chunks(rp1.id, rp2.id, b).unwrap(), Vec::<u64>::new());

    // Both restore points still read back their own instant.
    assert_eq!(read_rp(&engine, rp1.id, a).await, live_a1);
    assert_eq!(read_rp(&engine, rp2.id, a).await, live_a2);
    assert_eq!(read_rp(&engine, rp2.id, b).await, live_b1);

    // Allocation lists exactly the non-zero chunks.
    let alloc = engine.disk_restore_point(rp2.id, a).unwrap().allocated_chunks().unwrap();
    let nonzero: Vec<u64> = live_a2
        .chunks(CHUNK as usize)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&x| x != 0))
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(alloc.iter().map(|(i, _)| *i).collect::<Vec<_>>(), nonzero);
    assert!(alloc.iter().all(|(_, r)| *r != ChunkRef::Zero));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_points_survive_reopen_and_keep_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (a, rp, live) = {
        let engine = open(dir.path(), BACKENDS[1]).await;
        let a = disk(&engine, "a", 8 * MIB).await.id;
        let (_, coll) = collection(&engine, "c", vec![a]).await;
        let d = engine.disk(a).unwrap();
        d.write(MIB, IoBuf::from_slice(&pattern(3, 2 * MIB as usize)), false).await.unwrap();
        let rp = restore_point(&engine, coll.id, "rp", vec![]).await;
        let live = read_all(&d).await;
        d.write(MIB, IoBuf::from_slice(&pattern(4, MIB as usize)), false).await.unwrap();
        engine.close().await.unwrap();
        (a, rp.id, live)
    };
    let engine = open(dir.path(), BACKENDS[0]).await;
    assert_eq!(engine.restore_point(rp).unwrap().state, ProvisioningState::Succeeded);
    assert_eq!(read_rp(&engine, rp, a).await, live);
    // The writes after the restore point are still tracked for the next one.
    let d = engine.disk(a).unwrap();
    assert_eq!(d.tracker().active_blocks().len(), 256);
}

/// Capture threads run under SCHED_IDLE by default, so a woken guest I/O thread preempts them.
#[tokio::test]
async fn capture_threads_run_under_sched_idle() {
    let dir = tempfile::tempdir().unwrap();
    let _engine = open(dir.path(), cairn_engine::IoBackendKind::Blocking).await;
    // Threads name themselves and then lower their priority once they run: poll a while.
    let policies = || {
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("cairn-bg-") {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            // Fields after the parenthesised command name; policy is field 41 of the line.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let policy: u32 = rest.split(' ').nth(41 - 3).unwrap().parse().unwrap();
            out.push((comm.trim().to_string(), policy));
        }
        out
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let seen = policies();
        // SCHED_IDLE is policy 5.
        if !seen.is_empty() && seen.iter().all(|&(_, p)| p == 5) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "background threads and their policies: {seen:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
