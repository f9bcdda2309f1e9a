//! A group freeze under concurrent writers: no write completes while frozen, none is lost,
//! and the epoch switch splits the writes exactly at the freeze.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_engine::{CreateGroup, IoBuf};

use crate::common::{BACKENDS, disk, open};

const WRITERS_PER_DISK: u64 = 2;
/// Every write goes to a block of its own, so a mark in the wrong epoch cannot hide behind a
/// later write to the same block.
const BLOCKS_PER_WRITER: u64 = 32 << 10;
const DISK_BYTES: u64 = WRITERS_PER_DISK * BLOCKS_PER_WRITER * 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_blocks_writers_and_loses_none() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), backend).await;
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(disk(&engine, &format!("d{i}"), DISK_BYTES).await.id);
        }
        let group = engine
            .create_group(CreateGroup { name: "vm".into(), disks: ids.clone(), configuration: "{}".into() })
            .await
            .unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        // Each writer logs (start, end, block, value) of every acknowledged write.
        let mut writers = Vec::new();
        for (di, id) in ids.iter().enumerate() {
            for w in 0..WRITERS_PER_DISK {
                let d = engine.disk(*id).unwrap();
                let stop = stop.clone();
                writers.push(tokio::spawn(async move {
                    let mut log = Vec::new();
                    let mut value = 0u64;
                    while !stop.load(Ordering::Relaxed) && value + 1 < BLOCKS_PER_WRITER {
                        value += 1;
                        let block = w * BLOCKS_PER_WRITER + value;
                        let mut buf = IoBuf::zeroed(4096);
                        buf[..8].copy_from_slice(&value.to_le_bytes());
                        buf[8..16].copy_from_slice(&(di as u64).to_le_bytes());
                        let start = Instant::now();
                        d.write(block * 4096, buf, false).await.unwrap();
                        log.push((start, Instant::now(), block, value));
                    }
                    log
                }));
            }
        }

        tokio::time::sleep(Duration::from_millis(50)).await;
        // A few plain freezes first, to exercise the window histogram.
        for _ in 0..5 {
            let f = engine.freeze_group(group.id, &[]).await.unwrap();
            f.thaw().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let freeze_called = Instant::now();
        let mut freeze = engine.freeze_group(group.id, &[]).await.unwrap();
        let frozen_at = Instant::now();
        // A write issued while frozen waits for the thaw (block 0: no writer's).
        let probe_disk = engine.disk(ids[0]).unwrap();
        let probe = tokio::spawn(async move { probe_disk.write(0, IoBuf::zeroed(4096), false).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!probe.is_finished(), "{backend:?}: a write completed while frozen");
        freeze.switch_epochs().unwrap();
        let thaw_at = Instant::now();
        let window = freeze.thaw().await.unwrap();
        assert!(window >= Duration::from_millis(100));
        probe.await.unwrap().unwrap();

        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.store(true, Ordering::Relaxed);
        let logs: Vec<Vec<(Instant, Instant, u64, u64)>> =
            futures::future::join_all(writers).await.into_iter().map(|r| r.unwrap()).collect();

        for (di, id) in ids.iter().enumerate() {
            let d = engine.disk(*id).unwrap();
            let t = d.tracker();
            let closed: BTreeSet<u64> = t.closed_blocks().into_iter().collect();
            let active: BTreeSet<u64> = t.active_blocks().into_iter().collect();
            for log in &logs[di * WRITERS_PER_DISK as usize..(di + 1) * WRITERS_PER_DISK as usize] {
                assert!(log.iter().any(|&(s, ..)| s > thaw_at), "{backend:?}: writers resumed after the thaw");
                for &(start, end, block, _) in log {
                    // Writes issued after the gates closed complete only after the thaw...
                    if start > frozen_at {
                        assert!(end > thaw_at, "{backend:?}: write to block {block} completed while frozen");
                        assert!(
                            active.contains(&block) && !closed.contains(&block),
                            "{backend:?}: post-freeze write to block {block} not in the new epoch alone"
                        );
                    }
                    // ...and writes acknowledged before the freeze began are in the closed one.
                    if end < freeze_called {
                        assert!(
                            closed.contains(&block) && !active.contains(&block),
                            "{backend:?}: pre-freeze write to block {block} not in the closed epoch alone"
                        );
                    }
                }
                // No acknowledged write lost: each block holds the last value written to it.
                let mut last = std::collections::BTreeMap::new();
                for &(_, _, block, value) in log {
                    last.insert(block, value);
                }
                for (block, value) in last {
                    let got = d.read(block * 4096, 16).await.unwrap();
                    assert_eq!(
                        u64::from_le_bytes(got[..8].try_into().unwrap()),
                        value,
                        "{backend:?} disk {di} block {block}"
                    );
                    assert_eq!(u64::from_le_bytes(got[8..16].try_into().unwrap()), di as u64);
                }
            }
        }
        let summary = engine.freeze_stats().summary();
        assert_eq!(summary.count, 6);
        assert!(summary.max >= Duration::from_millis(100));
    }
}

#[tokio::test]
async fn excluded_disks_are_not_frozen_and_keep_their_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[1]).await;
    let a = disk(&engine, "a", 1 << 20).await.id;
    let b = disk(&engine, "b", 1 << 20).await.id;
    let group = engine
        .create_group(CreateGroup { name: "vm".into(), disks: vec![a, b], configuration: String::new() })
        .await
        .unwrap();
    engine.disk(b).unwrap().write(0, IoBuf::zeroed(4096), false).await.unwrap();

    let mut freeze = engine.freeze_group(group.id, &[b]).await.unwrap();
    // The excluded disk takes writes while the others are frozen.
    tokio::time::timeout(Duration::from_secs(5), engine.disk(b).unwrap().write(4096, IoBuf::zeroed(4096), false))
        .await
        .unwrap()
        .unwrap();
    freeze.switch_epochs().unwrap();
    freeze.thaw().await.unwrap();

    let tb = engine.disk(b).unwrap().tracker();
    assert_eq!(tb.epoch(), 0);
    assert_eq!(tb.active_blocks(), vec![0, 1]);
    assert_eq!(engine.disk(a).unwrap().tracker().epoch(), 1);

    let other = disk(&engine, "c", 1 << 20).await.id;
    let err = engine.freeze_group(group.id, &[other]).await.unwrap_err();
    assert_eq!(err.kind(), cairn_engine::ErrorKind::InvalidArgument);
}

/// Writers on fresh blocks while a real restore point is created: copy-before-write is armed,
/// and the restore point holds every write acknowledged before it was asked for and none
/// issued after it was frozen; the live disk holds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_point_under_concurrent_writers_holds_exactly_the_writes_before_its_freeze() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", DISK_BYTES).await.id;
    let (_, coll) = crate::common::collection(&engine, "c", vec![a]).await;
    crate::common::restore_point(&engine, coll.id, "base", vec![]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS_PER_DISK {
        let (d, stop) = (engine.disk(a).unwrap(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut log = Vec::new();
            let mut value = 0u64;
            while !stop.load(Ordering::Relaxed) && value + 1 < BLOCKS_PER_WRITER {
                value += 1;
                let block = w * BLOCKS_PER_WRITER + value;
                let mut buf = IoBuf::zeroed(4096);
                buf[..8].copy_from_slice(&value.to_le_bytes());
                let start = Instant::now();
                d.write(block * 4096, buf, false).await.unwrap();
                log.push((start, Instant::now(), block, value));
            }
            log
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let asked = Instant::now();
    let req = cairn_engine::CreateRestorePoint { name: "rp".into(), ..Default::default() };
    let (rp, op) = engine.create_restore_point(coll.id, req).await.unwrap();
    let answered = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<_> = futures::future::join_all(writers).await.into_iter().map(|r| r.unwrap()).collect();
    let op = crate::common::wait_op(&engine, op.id).await;

    assert_eq!(op.state, cairn_engine::OperationState::Succeeded, "{op:?}");
    let image = crate::common::read_rp(&engine, rp.id, a).await;
    let live = crate::common::read_all(&engine.disk(a).unwrap()).await;
    let value_at = |img: &[u8], block: u64| {
        let at = (block * 4096) as usize;
        u64::from_le_bytes(img[at..at + 8].try_into().unwrap())
    };
    let (mut before, mut after) = (0, 0);
    for &(start, end, block, value) in logs.iter().flatten() {
        assert_eq!(value_at(&live, block), value, "live disk block {block}");
        let got = value_at(&image, block);
        if end < asked {
            before += 1;
            assert_eq!(got, value, "write to block {block} acknowledged before the restore point is missing");
        } else if start > answered {
            after += 1;
            assert_eq!(got, 0, "write to block {block} issued after the freeze is in the restore point");
        } else {
            assert!(got == 0 || got == value, "block {block} holds {got}, neither before nor after");
        }
    }
    assert!(before > 0 && after > 0, "writes before ({before}) and after ({after}) the restore point");
}
