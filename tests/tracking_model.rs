//! Change tracking against a model, for random writes and epoch switches (property test).

use std::collections::BTreeSet;

use cairn_engine::{CreateGroup, IoBuf};
use proptest::prelude::*;

use crate::common::{BACKENDS, disk, open};

const SIZE: u64 = 8 << 20;

#[derive(Debug, Clone)]
enum Step {
    Write { offset: u64, len: u64 },
    Punch { offset: u64, len: u64 },
    Switch,
}

fn step() -> impl Strategy<Value = Step> {
    let range = (0..SIZE - 1).prop_flat_map(|off| (Just(off), 1..=(SIZE - off).min(300_000)));
    prop_oneof![
        6 => range.clone().prop_map(|(offset, len)| Step::Write { offset, len }),
        2 => range.prop_map(|(offset, len)| Step::Punch { offset, len }),
        1 => Just(Step::Switch),
    ]
}

fn blocks(offset: u64, len: u64) -> impl Iterator<Item = u64> {
    offset / 4096..=(offset + len - 1) / 4096
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn bitmaps_match_the_model(steps in proptest::collection::vec(step(), 1..40), uring in any::<bool>()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let engine = open(dir.path(), BACKENDS[usize::from(!uring)]).await;
            let id = disk(&engine, "d", SIZE).await.id;
            let group = engine.create_group(CreateGroup { name: "g".into(), disks: vec![id], configuration: String::new() }).await.unwrap();
            let d = engine.disk(id).unwrap();
            let mut active = BTreeSet::new();
            let mut closed = BTreeSet::new();
            let mut switched = false;
            for s in &steps {
                match *s {
                    Step::Write { offset, len } => {
                        d.write(offset, IoBuf::zeroed(len as usize), false).await.unwrap();
                        active.extend(blocks(offset, len));
                    }
                    Step::Punch { offset, len } => {
                        d.punch(offset, len, false).await.unwrap();
                        active.extend(blocks(offset, len));
                    }
                    // One capture at a time: a second switch waits for the first's capture,
                    // which this layer does not run, so only the first switch happens.
                    Step::Switch if !switched => {
                        let mut f = engine.freeze_group(group.id, &[]).await.unwrap();
                        f.switch_epochs().unwrap();
                        f.thaw().await.unwrap();
                        closed = std::mem::take(&mut active);
                        switched = true;
                    }
                    Step::Switch => {}
                }
                let t = d.tracker();
                prop_assert_eq!(t.active_blocks().into_iter().collect::<BTreeSet<_>>(), active.clone());
                prop_assert_eq!(t.closed_blocks().into_iter().collect::<BTreeSet<_>>(), closed.clone());
            }
            Ok(())
        })?;
    }
}
