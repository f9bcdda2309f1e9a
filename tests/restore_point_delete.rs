//! Deleting any restore point, in any order, never changes what the others read; deleting
//! them all leaves no references behind.

use cairn_engine::{ErrorKind, IoBuf};
use proptest::prelude::*;

use crate::common::{BACKENDS, assert_same, collection, open, pattern, read_all, read_rp, restore_point};

const SIZE: u64 = 2 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_middle_oldest_and_newest() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = crate::common::disk(&engine, "a", 8 << 20).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    let mut rps = Vec::new();
    for i in 0..4u64 {
        d.write(i * 300_000, IoBuf::from_slice(&pattern(i, 700_000)), false).await.unwrap();
        d.write((7 << 20) - i * 4096, IoBuf::from_slice(&pattern(50 + i, 4096)), false).await.unwrap();
        let image = read_all(&d).await;
        rps.push((restore_point(&engine, coll.id, &format!("rp{i}"), vec![]).await, image));
    }
    let stored_before = engine.store_stats().unwrap();

    engine.delete_restore_point(rps[1].0.id).await.unwrap();
    engine.delete_restore_point(rps[0].0.id).await.unwrap();
    engine.delete_restore_point(rps[3].0.id).await.unwrap();
    assert_eq!(engine.restore_point(rps[1].0.id).unwrap_err().kind(), ErrorKind::NotFound);
    assert_same(&read_rp(&engine, rps[2].0.id, a).await, &rps[2].1, "rp2 after deleting rp0, rp1, rp3");
    let after = engine.store_stats().unwrap();
    assert!(after.references < stored_before.references, "{after:?} vs {stored_before:?}");

    // The newest was deleted, but the live disk's next increment still builds on what it held.
    d.write(1 << 20, IoBuf::from_slice(&pattern(99, 4096)), false).await.unwrap();
    let image = read_all(&d).await;
    let rp4 = restore_point(&engine, coll.id, "rp4", vec![]).await;
    assert!(!rp4.disks[0].full_scan);
    assert_same(&read_rp(&engine, rp4.id, a).await, &image, "rp4 after deleting the newest");
    assert_same(&read_rp(&engine, rps[2].0.id, a).await, &rps[2].1, "rp2 still");
}

#[derive(Debug, Clone)]
struct Case {
    writes: Vec<Vec<(u64, u64, u64)>>,
    delete_order: Vec<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    let write = (0..SIZE - 1).prop_flat_map(|off| (Just(off), 1..=(SIZE - off).min(150_000), any::<u64>()));
    proptest::collection::vec(proptest::collection::vec(write, 0..6), 2..6).prop_flat_map(|writes| {
        let n = writes.len();
        (Just(writes), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
            .prop_map(|(writes, delete_order)| Case { writes, delete_order })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn deletion_in_any_order_keeps_the_rest_exact(c in case()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let engine = open(dir.path(), BACKENDS[1]).await;
            let rec = engine
                .create_disk(cairn_engine::CreateDisk { name: "d".into(), size_bytes: SIZE, chunk_size_bytes: Some(64 << 10), direct_io: false })
                .await
                .unwrap();
            let (_, coll) = collection(&engine, "m", vec![rec.id]).await;
            let d = engine.disk(rec.id).unwrap();
            let mut rps = Vec::new();
            for (i, round) in c.writes.iter().enumerate() {
                for &(off, len, seed) in round {
                    d.write(off, IoBuf::from_slice(&pattern(seed, len as usize)), false).await.unwrap();
                }
                rps.push((restore_point(&engine, coll.id, &format!("rp{i}"), vec![]).await, read_all(&d).await));
            }
            let mut alive: Vec<bool> = vec![true; rps.len()];
            for (n, &victim) in c.delete_order.iter().enumerate() {
                engine.delete_restore_point(rps[victim].0.id).await.unwrap();
                alive[victim] = false;
                if n % 2 == 1 {
                    // GC between deletions: it must never free what the survivors read.
                    let op = engine.collect_garbage(100).await.unwrap();
                    let op = crate::common::wait_op(&engine, op.id).await;
                    prop_assert_eq!(op.state, cairn_engine::OperationState::Succeeded);
                    let stats = engine.store_stats().unwrap();
                    prop_assert_eq!(stats.records, stats.referenced_records, "GC left garbage: {:?}", stats);
                }
                for (i, (rp, image)) in rps.iter().enumerate().filter(|(i, _)| alive[*i]) {
                    assert_same(&read_rp(&engine, rp.id, rec.id).await, image, &format!("rp{i} after deleting rp{victim}"));
                }
            }
            let stats = engine.store_stats().unwrap();
            prop_assert_eq!(stats.references, 0, "no restore point left, yet references remain: {:?}", stats);
            // Store size returns to what the remaining restore points need: nothing.
            let op = engine.collect_garbage(100).await.unwrap();
            crate::common::wait_op(&engine, op.id).await;
            let stats = engine.store_stats().unwrap();
            prop_assert_eq!((stats.records, stats.packs), (0, 0), "{:?}", stats);
            prop_assert_eq!(std::fs::read_dir(dir.path().join("packs")).unwrap().count(), 0);
            Ok(())
        })?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_dry_run_then_apply() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[1]).await;
    let a = crate::common::disk(&engine, "a", 4 << 20).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    let mut images = Vec::new();
    for i in 0..5u64 {
        d.write(i * 500_000, IoBuf::from_slice(&pattern(i, 600_000)), false).await.unwrap();
        let rp = restore_point(&engine, coll.id, &format!("rp{i}"), vec![]).await;
        images.push((rp, read_all(&d).await));
    }
    let policy = cairn_engine::RetentionPolicy { keep_last: 2, ..Default::default() };
    let plan = engine.apply_retention(coll.id, policy, true).await.unwrap();
    let doomed: Vec<&str> = plan.iter().filter(|p| !p.keep).map(|p| p.name.as_str()).collect();
    assert_eq!(doomed, ["rp2", "rp1", "rp0"]);
    assert_eq!(engine.list_restore_points(coll.id).unwrap().len(), 5, "a dry run deletes nothing");

    engine.apply_retention(coll.id, policy, false).await.unwrap();
    let left: Vec<String> = engine.list_restore_points(coll.id).unwrap().iter().map(|r| r.name.to_string()).collect();
    assert_eq!(left, ["rp3", "rp4"]);
    for (rp, image) in &images[3..] {
        assert_same(&read_rp(&engine, rp.id, a).await, image, &rp.name.to_string());
    }
    let err = engine.apply_retention(coll.id, cairn_engine::RetentionPolicy::default(), true).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}
