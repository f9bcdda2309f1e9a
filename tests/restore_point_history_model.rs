//! Restore point histories against a model (property test): random sequences of writes,
//! restore points in two collections of one group, deletions (one at a time, and of a whole
//! collection, which is then made again), restores (whose disk then has restore points of its own), resizes to sizes that are not chunk multiples, GC, a capture
//! racing a deletion, a resize racing a capture's freeze, and reopens. After every step each
//! surviving restore point and each live disk is read back byte for byte against the model.
//!
//! The model runs in a child process: its resize race holds a creation at the failpoint just
//! before the freeze, and failpoints are global to a process.

use std::collections::HashMap;
use std::time::Duration;

use cairn_engine::{
    CollectionId, CreateCollection, CreateDisk, CreateGroup, CreateRestorePoint, DiskId, Engine, ErrorKind, IoBuf,
    OperationState, RestoreDisk, RestorePointId,
};
use proptest::prelude::*;

use crate::common::{BACKENDS, assert_same, child, open, pattern, read_all, read_rp, restore_point, wait_op};

const CHUNK: u64 = 64 << 10;
/// Not a chunk multiple: the last chunk is short, and grows later.
const START: u64 = 8 * CHUNK + 8192;
const MAX_SIZE: u64 = 3 * START;

#[derive(Debug, Clone)]
enum Step {
    /// `restored` picks the restored disk when there is one; `aim` is where: 0 anywhere, 1
    /// the last chunks, 2 a former end (a short last chunk before a grow: small writes there
    /// are deltas over the short content).
    Write {
        restored: bool,
        at: u8,
        blocks: u8,
        aim: u8,
        seed: u64,
    },
    /// 0 and 1: the original disk's two collections; 2 (and 3, as often as both others): the
    /// restored disk's.
    Capture {
        collection: u8,
    },
    /// Half the time the newest restore point, else any.
    Delete {
        pick: u16,
    },
    /// Cascade delete of collection 0, 1 or 2 (as in Capture), then a new one of that name.
    DropCollection {
        collection: u8,
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
    /// A resize of the original disk while a creation in `collection` has built its capture
    /// state and not yet frozen.
    GrowRacingCapture {
        collection: u8,
        blocks: u8,
    },
    Reopen,
}

/// A history; half of them start by restoring a disk, so that most of the steps meet a
/// restored disk and its own history (where items such as a deleted history's rescan live).
fn steps() -> impl Strategy<Value = Vec<Step>> {
    (any::<bool>(), any::<u64>(), proptest::collection::vec(step(), 1..40)).prop_map(|(restore_first, seed, rest)| {
        let prelude = [
            Step::Write { restored: false, at: 0, blocks: 20, aim: 0, seed },
            Step::Capture { collection: 0 },
            Step::Restore { pick: 0 },
        ];
        let take = if restore_first { prelude.len() } else { 0 };
        prelude.into_iter().take(take).chain(rest).collect()
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (any::<bool>(), any::<u8>(), 1..24u8, 0..3u8, any::<u64>())
            .prop_map(|(restored, at, blocks, aim, seed)| Step::Write { restored, at, blocks, aim, seed }),
        6 => (0..4u8).prop_map(|collection| Step::Capture { collection }),
        3 => any::<u16>().prop_map(|pick| Step::Delete { pick }),
        2 => (0..3u8).prop_map(|collection| Step::DropCollection { collection }),
        4 => any::<u16>().prop_map(|pick| Step::Restore { pick }),
        2 => (any::<bool>(), 1..20u8).prop_map(|(restored, blocks)| Step::Grow { restored, blocks }),
        1 => Just(Step::Gc),
        2 => any::<u16>().prop_map(|pick| Step::CaptureRacingDelete { pick }),
        1 => (0..2u8, 1..20u8).prop_map(|(collection, blocks)| Step::GrowRacingCapture { collection, blocks }),
        1 => Just(Step::Reopen),
    ]
}

/// What the engine should hold.
#[derive(Default)]
struct Model {
    live: HashMap<DiskId, Vec<u8>>,
    /// Surviving restore points: id, its collection, its disk, its image.
    rps: Vec<(RestorePointId, CollectionId, DiskId, Vec<u8>)>,
    /// The restored disk and its collection, once there is one.
    restored: Option<(DiskId, CollectionId)>,
    /// Per disk, its sizes before each grow that were not chunk multiples.
    former_ends: HashMap<DiskId, Vec<u64>>,
}

impl Model {
    fn grow(&mut self, disk: DiskId, size: u64) {
        let image = self.live.get_mut(&disk).unwrap();
        if !(image.len() as u64).is_multiple_of(CHUNK) {
            self.former_ends.entry(disk).or_default().push(image.len() as u64);
        }
        image.resize(size as usize, 0);
    }
}

async fn check(engine: &Engine, m: &Model, what: &str) {
    for (rp, _, disk, image) in &m.rps {
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
    let (group, mut home) = group_with(&engine, "home", a).await;
    let mut away = engine
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
            Step::Write { restored, at, blocks, aim, seed } => {
                let disk = m.restored.filter(|_| restored).map_or(a, |(r, _)| r);
                let ends = m.former_ends.get(&disk).cloned().unwrap_or_default();
                let image = m.live.get_mut(&disk).unwrap();
                let size = image.len() as u64;
                let offset = match (aim, ends.as_slice()) {
                    // A block or two of the chunk that was short, on either side of its old end.
                    (2, [.., _]) => {
                        let end = ends[usize::from(at) % ends.len()];
                        end / CHUNK * CHUNK + u64::from(at) % (end % CHUNK).div_ceil(4096) * 4096
                    }
                    _ => {
                        let span = if aim == 1 { (2 * CHUNK).min(size) } else { size };
                        (size - span + u64::from(at) * span / 256) / 4096 * 4096 + (seed % 3) * 512
                    }
                };
                let blocks = if aim == 2 { blocks % 3 + 1 } else { blocks };
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
                m.rps.push((rp.id, coll, disk, m.live[&disk].clone()));
            }
            Step::Delete { pick } => {
                if m.rps.is_empty() {
                    continue;
                }
                let k = if pick & 1 == 0 { m.rps.len() - 1 } else { usize::from(pick >> 1) % m.rps.len() };
                match engine.delete_restore_point(m.rps[k].0).await {
                    Ok(()) => {
                        m.rps.remove(k);
                    }
                    // The restored disk's history reads through it.
                    Err(e) if e.kind() == ErrorKind::FailedPrecondition => {}
                    Err(e) => panic!("{what}: {e}"),
                }
            }
            Step::DropCollection { collection } => {
                let (coll, name, region) = match (collection, m.restored) {
                    (0, _) => (home, "home", None),
                    (1, _) => (away, "away", Some("elsewhere".to_owned())),
                    (_, Some((_, coll))) => (coll, "r", None),
                    (_, None) => continue,
                };
                match engine.delete_collection(coll, true).await {
                    Ok(()) => {
                        m.rps.retain(|r| r.1 != coll);
                        assert_eq!(engine.collection(coll).unwrap_err().kind(), ErrorKind::NotFound, "{what}");
                        let group = match (collection, m.restored) {
                            (2, Some((r, _))) => engine.disk_record(r).unwrap().group.unwrap(),
                            _ => engine.disk_record(a).unwrap().group.unwrap(),
                        };
                        let req = CreateCollection { name: name.into(), group, region, ..Default::default() };
                        let new = engine.create_collection(req).await.unwrap().id;
                        match collection {
                            0 => home = new,
                            1 => away = new,
                            _ => m.restored = m.restored.map(|(r, _)| (r, new)),
                        }
                    }
                    // The restored disk's history reads through one of its restore points.
                    Err(e) if e.kind() == ErrorKind::FailedPrecondition => {}
                    Err(e) => panic!("{what}: {e}"),
                }
            }
            Step::Restore { pick } => {
                let of_a: Vec<usize> = (0..m.rps.len()).filter(|&k| m.rps[k].2 == a).collect();
                if m.restored.is_some() || of_a.is_empty() {
                    continue;
                }
                let (rp, _, _, image) = m.rps[of_a[usize::from(pick) % of_a.len()]].clone();
                let req = RestoreDisk { restore_point: rp, disk: a, name: "r".into(), direct_io: false };
                let (rec, _) = engine.restore_disk(req).await.unwrap();
                let (_, coll) = group_with(&engine, "r", rec.id).await;
                m.live.insert(rec.id, image);
                m.restored = Some((rec.id, coll));
            }
            Step::Grow { restored, blocks } => {
                let disk = m.restored.filter(|_| restored).map_or(a, |(r, _)| r);
                let size = m.live[&disk].len() as u64 + u64::from(blocks) * 4096;
                if size > MAX_SIZE {
                    continue;
                }
                engine.resize_disk(disk, size).await.unwrap();
                m.grow(disk, size);
            }
            Step::Gc => {
                let op = engine.collect_garbage(100).await.unwrap();
                assert_eq!(wait_op(&engine, op.id).await.state, OperationState::Succeeded, "{what}");
            }
            Step::CaptureRacingDelete { pick } => {
                let in_home: Vec<usize> = (0..m.rps.len()).filter(|&k| m.rps[k].2 == a).collect();
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
                m.rps.push((rp.id, away, a, m.live[&a].clone()));
                if deleted.is_ok() {
                    m.rps.remove(k);
                }
            }
            Step::GrowRacingCapture { collection, blocks } => {
                let size = m.live[&a].len() as u64 + u64::from(blocks) * 4096;
                if size > MAX_SIZE {
                    continue;
                }
                let coll = if collection == 0 { home } else { away };
                let (reached, at_point) = std::sync::mpsc::channel::<()>();
                let (go, wait_go) = std::sync::mpsc::channel::<()>();
                let (reached, wait_go) = (std::sync::Mutex::new(reached), std::sync::Mutex::new(wait_go));
                fail::cfg_callback("create::before_freeze", move || {
                    reached.lock().unwrap().send(()).unwrap();
                    wait_go.lock().unwrap().recv_timeout(Duration::from_secs(30)).unwrap();
                })
                .unwrap();
                let creating = {
                    let engine = engine.clone();
                    let req = CreateRestorePoint { name: format!("grown{i}"), ..Default::default() };
                    tokio::spawn(async move { engine.create_restore_point(coll, req).await })
                };
                tokio::task::spawn_blocking(move || at_point.recv_timeout(Duration::from_secs(30)))
                    .await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{what}: the creation never reached the freeze: {e}"));
                engine.resize_disk(a, size).await.unwrap();
                fail::remove("create::before_freeze");
                go.send(()).unwrap();
                let (rp, op) = creating.await.unwrap().unwrap();
                assert_eq!(wait_op(&engine, op.id).await.state, OperationState::Succeeded, "{what}");
                m.grow(a, size);
                m.rps.push((rp.id, coll, a, m.live[&a].clone()));
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

#[test]
fn every_restore_point_and_disk_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    child::run_ok("restore_point_history_model::child_process_entry", dir.path(), "", "");
}

/// The model itself, run by [`every_restore_point_and_disk_matches_the_model`] in a child.
#[test]
fn child_process_entry() {
    if child::child_args().is_none() {
        return;
    }
    let cases = std::env::var("CAIRN_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(32);
    let config = ProptestConfig { cases, ..ProptestConfig::default() };
    proptest!(config, |(steps in steps())| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(run(&steps, dir.path()));
    });
}
