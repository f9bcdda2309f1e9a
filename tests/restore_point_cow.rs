//! Copy-before-write: writes racing a capture never leak into the restore point.

use cairn_engine::{IoBuf, OperationState};

use crate::common::{BACKENDS, collection, disk, open, pattern, read_all, read_rp, wait_op};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_capture_do_not_change_the_restore_point() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), backend).await;
        let a = disk(&engine, "a", 16 * MIB).await.id;
        let (_, coll) = collection(&engine, "c", vec![a]).await;
        let d = engine.disk(a).unwrap();
        d.write(0, IoBuf::from_slice(&pattern(1, 12 * MIB as usize)), false).await.unwrap();
        let at_freeze = read_all(&d).await;

        // Hold the capture at its first store write by raising the free-space watermark.
        engine.set_free_space_watermark(u64::MAX);
        let req = cairn_engine::CreateRestorePoint { name: "rp".into(), ..Default::default() };
        let (rp, op) = engine.create_restore_point(coll.id, req).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while engine.operation(op.id).unwrap().paused.is_none() {
            assert!(std::time::Instant::now() < deadline, "capture never paused");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let paused = engine.operation(op.id).unwrap().paused.unwrap();
        assert!(paused.contains("watermark"), "{paused}");

        // Overwrite, trim and extend while the capture waits.
        d.write(0, IoBuf::from_slice(&pattern(2, 8 * MIB as usize)), false).await.unwrap();
        d.punch(9 * MIB, MIB, false).await.unwrap();
        d.write(14 * MIB + 4096, IoBuf::from_slice(&pattern(3, 8192)), false).await.unwrap();
        let cap = d.pending_capture().expect("capture still pending");
        assert!(cap.preserved_blocks() > 0, "{backend:?}: writes preserved old blocks");

        engine.set_free_space_watermark(0);
        let op = wait_op(&engine, op.id).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
        assert!(op.paused.is_none());
        crate::common::assert_same(
            &read_rp(&engine, rp.id, a).await,
            &at_freeze,
            &format!("{backend:?}: restore point is the disk at the freeze"),
        );
        assert!(d.pending_capture().is_none());

        // The racing writes are in the next increment.
        let live = read_all(&d).await;
        let rp2 = crate::common::restore_point(&engine, coll.id, "rp2", vec![]).await;
        assert_eq!(read_rp(&engine, rp2.id, a).await, live);
        let changed = engine.changed_chunks(rp.id, rp2.id, a).unwrap();
        assert_eq!(changed, [(0..32).collect::<Vec<u64>>(), (36..40).collect(), vec![56]].concat());
    }
}

/// Writers hammer blocks of every chunk while the capture reads them with no lock held: the
/// restore point is still exactly the disk at the freeze, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_racing_unpaused_chunk_reads_do_not_leak() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), backend).await;
        let a = disk(&engine, "a", 32 * MIB).await.id;
        let (_, coll) = collection(&engine, "c", vec![a]).await;
        let d = engine.disk(a).unwrap();
        d.write(0, IoBuf::from_slice(&pattern(1, 32 * MIB as usize)), false).await.unwrap();
        let mut expected = Vec::new();
        for round in 0..3u64 {
            let at_freeze = read_all(&d).await;
            let req = cairn_engine::CreateRestorePoint { name: format!("rp{round}"), ..Default::default() };
            let (rp, op) = engine.create_restore_point(coll.id, req).await.unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let writes = Arc::new(AtomicU64::new(0));
            let writers: Vec<_> = (0..6u64)
                .map(|w| {
                    let (d, stop, writes) = (d.clone(), stop.clone(), writes.clone());
                    tokio::spawn(async move {
                        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (w << 32) ^ round;
                        while !stop.load(Ordering::Relaxed) {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            // 1 to 3 blocks anywhere, sometimes across a chunk boundary.
                            let blocks = 1 + x % 3;
                            let off = (x >> 8) % (32 * MIB / 4096 - blocks) * 4096;
                            let data = pattern(x, (blocks * 4096) as usize);
                            if x.is_multiple_of(7) {
                                d.punch(off, blocks * 4096, false).await.unwrap();
                            } else {
                                d.write(off, IoBuf::from_slice(&data), false).await.unwrap();
                            }
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let op = wait_op(&engine, op.id).await;
            stop.store(true, Ordering::Relaxed);
            for w in writers {
                w.await.unwrap();
            }
            assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
            assert!(writes.load(Ordering::Relaxed) > 0);
            crate::common::assert_same(
                &read_rp(&engine, rp.id, a).await,
                &at_freeze,
                &format!("{backend:?} round {round}: restore point is the disk at the freeze"),
            );
            expected.push((rp.id, at_freeze));
        }
        // Earlier restore points still read back after the increments built on them.
        for (id, content) in &expected {
            crate::common::assert_same(&read_rp(&engine, *id, a).await, content, "older restore point");
        }
    }
}
