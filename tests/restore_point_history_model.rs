//! Restore point histories against a model (property test): random sequences of writes,
//! restore points in two collections of one group, deletions, restores (whose disk then has
//! restore points of its own), resizes to sizes that are not chunk multiples, GC, a capture
//! racing a deletion, and reopens. After every step each surviving restore point and each live
//! disk is read back byte for byte against the model.

use std::collections::HashMap;
use std::time::Duration;

use cairn_engine::{
    CollectionId, CreateCollection, CreateDisk, CreateGroup, CreateRestorePoint, DiskId, Engine, ErrorKind, IoBuf,
    OperationState, RestoreDisk, RestorePointId,
};
use proptest::prelude::*;

use crate::common::{BACKENDS, assert_same, open, pattern, read_all, read_rp, restore_point, wait_op};

const CHUNK: u64 = 64 << 10;
/// Not a chunk multiple: the last chunk is short, and grows later.
const START: u64 = 8 * CHUNK + 8192;
const MAX_SIZE: u64 = 3 * START;

#[derive(Debug, Clone)]
enum Step {
    /// `restored` picks the restored disk when there is one; `near_end` aims at the last chunks.
    Write {
        restored: bool,
        at: u8,
        blocks: u8,
        near_end: bool,
        seed: u64,
    },
    /// 0 and 1: the original disk's two collections; 2: the restored disk's.
    Capture {
        collection: u8,
    },
    Delete {
        pick: u16,
    },
    Restore {
        pick: u16,
    },
    Grow {
        restored: bool,
        blocks: u8,
    },
    Gc,
    /// A capture held at the free-space watermark in one collection while a restore point of
    /// the other collection of the same group is deleted.
    CaptureRacingDelete {
        pick: u16,
    },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (any::<bool>(), any::<u8>(), 1..24u8, any::<bool>(), any::<u64>())
            .prop_map(|(restored, at, blocks, near_end, seed)| Step::Write { restored, at, blocks, near_end, seed }),
        5 => (0..3u8).prop_map(|collection| Step::Capture { collection }),
        3 => any::<u16>().prop_map(|pick| Step::Delete { pick }),
        1 => any::<u16>().prop_map(|pick| Step::Restore { pick }),
        1 => (any::<bool>(), 1..20u8).prop_map(|(restored, blocks)| Step::Grow { restored, blocks }),
        1 => Just(Step::Gc),
        1 => any::<u16>().prop_map(|pick| Step::CaptureRacingDelete { pick }),
        1 => Just(Step::Reopen),
    ]
}

/// What the engine should hold.
#[derive(Default)]
struct Model {
    live: HashMap<DiskId, Vec<u8>>,
    /// Surviving restore points: id, its disk, its image.
    rps: Vec<(RestorePointId, DiskId, Vec<u8>)>,
    /// The restored disk and its collection, once there is one.
    restored: Option<(DiskId, CollectionId)>,
}

async fn check(engine: &Engine, m: &Model, what: &str) {
    for (rp, disk, image) in &m.rps {
        assert_same(&read_rp(engine, *rp, *disk).await, image, &format!("restore point after {what}"));
    }
    for (id, image) in &m.live {
        assert_same(&read_all(&engine.disk(*id).unwrap()).await, image, &format!("live disk after {what}"));
    }
}

async fn group_with(engine: &Engine, name: &str, disk: DiskId) -> (cairn_engine::GroupRecord, CollectionId) {
    let group = engine
        .create_group(CreateGroup { name: format!("{name}-vm"), disks: vec![disk], configuration: String::new() })
        .await
        .unwrap();
    let coll = engine
        .create_collection(CreateCollection { name: name.into(), group: group.id, ..Default::default() })
        .await
        .unwrap();
    (group, coll.id)
}

async fn run(steps: &[Step], dir: &std::path::Path) {
    let mut engine = open(dir, BACKENDS[0]).await;
    let a = engine
        .create_disk(CreateDisk {
            name: "a".into(),
            size_bytes: START,
            chunk_size_bytes: Some(CHUNK),
            direct_io: false,
        })
        .await
        .unwrap()
        .id;
    let (group, home) = group_with(&engine, "home", a).await;
    let away = engine
        .create_collection(CreateCollection {
            name: "away".into(),
            group: group.id,
            region: Some("elsewhere".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let mut m = Model::default();
    m.live.insert(a, vec![0; START as usize]);
    for (i, s) in steps.iter().enumerate() {
        let what = format!("step {i} {s:?}");
        match *s {
            Step::Write { restored, at, blocks, near_end, seed } => {
                let disk = m.restored.filter(|_| restored).map_or(a, |(r, _)| r);
                let image = m.live.get_mut(&disk).unwrap();
                let size = image.len() as u64;
                let span = if near_end { (2 * CHUNK).min(size) } else { size };
                let offset = (size - span + u64::from(at) * span / 256) / 4096 * 4096 + (seed % 3) * 512;
                let len = (u64::from(blocks) * 4096).min(size - offset);
                let data = pattern(seed, len as usize);
                engine.disk(disk).unwrap().write(offset, IoBuf::from_slice(&data), false).await.unwrap();
                image[offset as usize..(offset + len) as usize].copy_from_slice(&data);
            }
            Step::Capture { collection } => {
                let (coll, disk) = match collection {
                    0 => (home, a),
                    1 => (away, a),
                    _ => match m.restored {
                        Some((r, coll)) => (coll, r),
                        None => continue,
                    },
                };
                let rp = restore_point(&engine, coll, &format!("rp{i}"), vec![]).await;
                m.rps.push((rp.id, disk, m.live[&disk].clone()));
            }
            Step::Delete { pick } => {
                if m.rps.is_empty() {
                    continue;
                }
                let k = usize::from(pick) % m.rps.len();
                match engine.delete_restore_point(m.rps[k].0).await {
                    Ok(()) => {
                        m.rps.remove(k);
                    }
                    // The restored disk's history reads through it.
                    Err(e) if e.kind() == ErrorKind::FailedPrecondition => {}
                    Err(e) => panic!("{what}: {e}"),
                }
            }
            Step::Restore { pick } => {
                let of_a: Vec<usize> = (0..m.rps.len()).filter(|&k| m.rps[k].1 == a).collect();
                if m.restored.is_some() || of_a.is_empty() {
                    continue;
                }
                let (rp, _, image) = m.rps[of_a[usize::from(pick) % of_a.len()]].clone();
                let req = RestoreDisk { restore_point: rp, disk: a, name: "r".into(), direct_io: false };
                let (rec, _) = engine.restore_disk(req).await.unwrap();
                let (_, coll) = group_with(&engine, "r", rec.id).await;
                m.live.insert(rec.id, image);
                m.restored = Some((rec.id, coll));
            }
            Step::Grow { restored, blocks } => {
                let disk = m.restored.filter(|_| restored).map_or(a, |(r, _)| r);
                let image = m.live.get_mut(&disk).unwrap();
                let size = image.len() as u64 + u64::from(blocks) * 4096;
                if size > MAX_SIZE {
                    continue;
                }
                engine.resize_disk(disk, size).await.unwrap();
                image.resize(size as usize, 0);
            }
            Step::Gc => {
                let op = engine.collect_garbage(100).await.unwrap();
                assert_eq!(wait_op(&engine, op.id).await.state, OperationState::Succeeded, "{what}");
            }
            Step::CaptureRacingDelete { pick } => {
                let in_home: Vec<usize> = (0..m.rps.len()).filter(|&k| m.rps[k].1 == a).collect();
                if in_home.is_empty() {
                    continue;
                }
                let k = in_home[usize::from(pick) % in_home.len()];
                // New data, so the capture has a record to store and pauses there.
                let image = m.live.get_mut(&a).unwrap();
                let data = pattern(i as u64 + 7, 4096);
                engine.disk(a).unwrap().write(0, IoBuf::from_slice(&data), false).await.unwrap();
                image[..4096].copy_from_slice(&data);
                engine.set_free_space_watermark(u64::MAX);
                let req = CreateRestorePoint { name: format!("racing{i}"), ..Default::default() };
                let (rp, op) = engine.create_restore_point(away, req).await.unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while engine.operation(op.id).unwrap().paused.is_none() {
                    assert!(std::time::Instant::now() < deadline, "{what}: the capture never paused");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let deleted = engine.delete_restore_point(m.rps[k].0).await;
                engine.set_free_space_watermark(0);
                assert_eq!(wait_op(&engine, op.id).await.state, OperationState::Succeeded, "{what}");
                m.rps.push((rp.id, a, m.live[&a].clone()));
                if deleted.is_ok() {
                    m.rps.remove(k);
                }
            }
            Step::Reopen => {
                engine.close().await.unwrap();
                drop(engine);
                engine = open(dir, BACKENDS[0]).await;
            }
        }
        check(&engine, &m, &what).await;
    }
    engine.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_restore_point_and_disk_matches_the_model(steps in proptest::collection::vec(step(), 1..32)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(run(&steps, dir.path()));
    }
}
