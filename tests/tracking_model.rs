//! Change tracking against a model (property test): random writes and trims, restore points
//! (the capture consumes the closed epoch), failed captures (the closed epoch merges back,
//! with writes made while it was pending), flushes, resizes and clean reopens, checking both
//! bitmaps after every step.

use std::collections::BTreeSet;

use cairn_engine::{CreateRestorePoint, IoBuf, OperationState};
use proptest::prelude::*;

use crate::common::{BACKENDS, collection, disk, open, pattern, restore_point, wait_op};

const SIZE: u64 = 8 << 20;

#[derive(Debug, Clone)]
enum Step {
    Write {
        offset: u64,
        len: u64,
    },
    Punch {
        offset: u64,
        len: u64,
    },
    /// A restore point: switch, capture, consume.
    Capture,
    /// A capture held at the free-space watermark, a write while it is pending, then canceled.
    FailedCapture {
        offset: u64,
        len: u64,
    },
    Flush,
    Grow,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    let range = (0..SIZE - 1).prop_flat_map(|off| (Just(off), 1..=(SIZE - off).min(300_000)));
    prop_oneof![
        8 => range.clone().prop_map(|(offset, len)| Step::Write { offset, len }),
        3 => range.clone().prop_map(|(offset, len)| Step::Punch { offset, len }),
        2 => Just(Step::Capture),
        2 => range.prop_map(|(offset, len)| Step::FailedCapture { offset, len }),
        1 => Just(Step::Flush),
        1 => Just(Step::Grow),
        1 => Just(Step::Reopen),
    ]
}

fn blocks(offset: u64, len: u64) -> impl Iterator<Item = u64> {
    offset / 4096..=(offset + len - 1) / 4096
}

fn bits(v: Vec<u64>) -> BTreeSet<u64> {
    v.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn bitmaps_match_the_model(steps in proptest::collection::vec(step(), 1..40), uring in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let backend = BACKENDS[usize::from(!uring)];
            let mut engine = open(dir.path(), backend).await;
            let id = disk(&engine, "d", SIZE).await.id;
            let (_, coll) = collection(&engine, "c", vec![id]).await;
            let mut d = engine.disk(id).unwrap();
            let mut active = BTreeSet::new();
            for (i, s) in steps.iter().enumerate() {
                match *s {
                    Step::Write { offset, len } => {
                        d.write(offset, IoBuf::from_slice(&pattern(i as u64, len as usize)), false).await.unwrap();
                        active.extend(blocks(offset, len));
                    }
                    Step::Punch { offset, len } => {
                        d.punch(offset, len, false).await.unwrap();
                        active.extend(blocks(offset, len));
                    }
                    Step::Capture => {
                        restore_point(&engine, coll.id, &format!("rp{i}"), vec![]).await;
                        active.clear();
                    }
                    Step::FailedCapture { offset, len } => {
                        // New data, so the capture has a record to store and pauses there.
                        d.write(offset, IoBuf::from_slice(&pattern(i as u64, len as usize)), false).await.unwrap();
                        active.extend(blocks(offset, len));
                        engine.set_free_space_watermark(u64::MAX);
                        let req = CreateRestorePoint { name: format!("failed{i}"), ..Default::default() };
                        let (_, op) = engine.create_restore_point(coll.id, req).await.unwrap();
                        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                        while engine.operation(op.id).unwrap().paused.is_none() {
                            prop_assert!(std::time::Instant::now() < deadline, "the capture never paused");
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                        d.write(offset, IoBuf::from_slice(&pattern(1000 + i as u64, len as usize)), false).await.unwrap();
                        let during: BTreeSet<u64> = blocks(offset, len).collect();
                        let t = d.tracker();
                        prop_assert_eq!(bits(t.closed_blocks()), active.clone(), "closed epoch while pending");
                        prop_assert_eq!(bits(t.active_blocks()), during.clone(), "new epoch while pending");
                        engine.cancel_operation(op.id).unwrap();
                        prop_assert_eq!(wait_op(&engine, op.id).await.state, OperationState::Canceled);
                        engine.set_free_space_watermark(0);
                        active.extend(during);
                    }
                    Step::Flush => d.flush().await.unwrap(),
                    Step::Grow => {
                        engine.resize_disk(id, d.size_bytes() + (1 << 20)).await.unwrap();
                    }
                    Step::Reopen => {
                        engine.close().await.unwrap();
                        drop(d);
                        drop(engine);
                        engine = open(dir.path(), backend).await;
                        d = engine.disk(id).unwrap();
                        prop_assert!(!d.tracker().untrusted(), "a clean reopen keeps tracking trusted");
                    }
                }
                let t = d.tracker();
                prop_assert_eq!(bits(t.active_blocks()), active.clone(), "active epoch after step {} {:?}", i, s);
                prop_assert!(t.closed_blocks().is_empty(), "closed epoch after step {} {:?}", i, s);
                prop_assert!(!t.closed_pending(), "an epoch left pending after step {} {:?}", i, s);
            }
            Ok(())
        })?;
    }
}
