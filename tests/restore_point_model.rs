//! Property test: random writes, trims and restore points on several disks against an
//! in-memory model; every restore point reads back exactly the model at its freeze, and a
//! disk restored from any of them reads it back and then diverges only where written.

use cairn_engine::{IoBuf, RestoreDisk};
use proptest::prelude::*;

use crate::common::{BACKENDS, assert_same, collection, open, pattern, read_all, read_rp, restore_point, wait_op};

const DISKS: usize = 2;
const SIZE: u64 = 2 << 20;

#[derive(Debug, Clone)]
enum Step {
    Write { disk: usize, offset: u64, len: u64, seed: u64 },
    Trim { disk: usize, offset: u64, len: u64 },
    RestorePoint,
}

fn step() -> impl Strategy<Value = Step> {
    let range = (0..SIZE - 1).prop_flat_map(|off| (Just(off), 1..=(SIZE - off).min(200_000)));
    prop_oneof![
        6 => (0..DISKS, range.clone(), any::<u64>()).prop_map(|(disk, (offset, len), seed)| Step::Write { disk, offset, len, seed }),
        2 => (0..DISKS, range).prop_map(|(disk, (offset, len))| Step::Trim { disk, offset, len }),
        2 => Just(Step::RestorePoint),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn restore_points_match_the_model(steps in proptest::collection::vec(step(), 1..24), uring in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let engine = open(dir.path(), BACKENDS[usize::from(!uring)]).await;
            let mut ids = Vec::new();
            for i in 0..DISKS {
                // Small chunks so that a few steps touch many of them.
                let rec = engine
                    .create_disk(cairn_engine::CreateDisk { name: format!("d{i}"), size_bytes: SIZE, chunk_size_bytes: Some(64 << 10), direct_io: false })
                    .await
                    .unwrap();
                ids.push(rec.id);
            }
            let (_, coll) = collection(&engine, "m", ids.clone()).await;
            let mut model = vec![vec![0u8; SIZE as usize]; DISKS];
            let mut taken = Vec::new();
            for s in &steps {
                match *s {
                    Step::Write { disk, offset, len, seed } => {
                        let data = pattern(seed, len as usize);
                        engine.disk(ids[disk]).unwrap().write(offset, IoBuf::from_slice(&data), false).await.unwrap();
                        model[disk][offset as usize..(offset + len) as usize].copy_from_slice(&data);
                    }
                    Step::Trim { disk, offset, len } => {
                        engine.disk(ids[disk]).unwrap().punch(offset, len, false).await.unwrap();
                        model[disk][offset as usize..(offset + len) as usize].fill(0);
                    }
                    Step::RestorePoint => {
                        let rp = restore_point(&engine, coll.id, &format!("rp{}", taken.len()), vec![]).await;
                        taken.push((rp, model.clone()));
                    }
                }
            }
            for (rp, images) in &taken {
                for (i, id) in ids.iter().enumerate() {
                    assert_same(&read_rp(&engine, rp.id, *id).await, &images[i], &format!("{} disk {i}", rp.name));
                }
            }
            if let Some((rp, images)) = taken.first() {
                let req = RestoreDisk { restore_point: rp.id, disk: ids[0], name: "restored".into(), direct_io: false };
                let (rec, op) = engine.restore_disk(req).await.unwrap();
                let d = engine.disk(rec.id).unwrap();
                let mut expect = images[0].clone();
                d.write(SIZE / 3, IoBuf::from_slice(&pattern(42, 70_000)), false).await.unwrap();
                expect[(SIZE / 3) as usize..(SIZE / 3) as usize + 70_000].copy_from_slice(&pattern(42, 70_000));
                assert_same(&read_all(&d).await, &expect, "restored disk");
                wait_op(&engine, op.id).await;
                assert_same(&read_all(&d).await, &expect, "restored disk after hydration");
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}
