//! Multi-disk consistency: restore points taken while writers run hold a cut of the writes
//! that respects their order across disks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_engine::IoBuf;

use crate::common::{BACKENDS, collection, disk, open, read_rp, restore_point};

const DISKS: usize = 3;
/// Room for far more writes than the chains make before the last restore point.
const SIZE: u64 = 64 << 20;
const CHAINS: u64 = 2;

/// Chain `chain` writes its k-th write, tagged `(chain, k)`, to disk `k % DISKS`, each write
/// starting only after the previous one was acknowledged.
fn slot(chain: u64, k: u64) -> (usize, u64) {
    ((k % DISKS as u64) as usize, ((k / DISKS as u64) * CHAINS + chain) * 4096)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_restore_point_is_a_prefix_closed_cut() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let mut ids = Vec::new();
    for i in 0..DISKS {
        ids.push(disk(&engine, &format!("d{i}"), SIZE).await.id);
    }
    let (_, coll) = collection(&engine, "c", ids.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let max_k = SIZE / 4096 / CHAINS * DISKS as u64;
    let writers: Vec<_> = (0..CHAINS)
        .map(|chain| {
            let disks: Vec<_> = ids.iter().map(|id| engine.disk(*id).unwrap()).collect();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) && k < max_k {
                    let (d, off) = slot(chain, k);
                    let mut buf = IoBuf::zeroed(4096);
                    buf[..8].copy_from_slice(&(k + 1).to_le_bytes());
                    buf[8..16].copy_from_slice(&chain.to_le_bytes());
                    disks[d].write(off, buf, false).await.unwrap();
                    k += 1;
                }
                k
            })
        })
        .collect();

    let mut rps = Vec::new();
    for i in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        rps.push(restore_point(&engine, coll.id, &format!("rp{i}"), vec![]).await);
    }
    stop.store(true, Ordering::Relaxed);
    let written: Vec<u64> = futures::future::join_all(writers).await.into_iter().map(|r| r.unwrap()).collect();
    assert!(written.iter().all(|&n| n > 10), "writers made progress: {written:?}");

    let mut last_present = vec![0u64; CHAINS as usize];
    let mut strict_cut = false;
    for rp in &rps {
        let images: Vec<Vec<u8>> = futures::future::join_all(ids.iter().map(|id| read_rp(&engine, rp.id, *id))).await;
        for chain in 0..CHAINS {
            let present: BTreeSet<u64> = (0..written[chain as usize])
                .filter(|&k| {
                    let (d, off) = slot(chain, k);
                    let b = &images[d][off as usize..off as usize + 16];
                    u64::from_le_bytes(b[..8].try_into().unwrap()) == k + 1
                        && u64::from_le_bytes(b[8..].try_into().unwrap()) == chain
                })
                .collect();
            let n = present.len() as u64;
            assert_eq!(
                present,
                (0..n).collect(),
                "restore point {} chain {chain}: writes present are not a prefix",
                rp.name
            );
            assert!(n >= last_present[chain as usize], "later restore points hold no fewer writes");
            strict_cut |= n > 0 && n < written[chain as usize];
            last_present[chain as usize] = n;
        }
    }
    assert!(last_present.iter().any(|&n| n > 0), "the writes were captured at all");
    // A cut through running chains, not one taken before they started or after they ended.
    assert!(
        strict_cut,
        "no restore point holds a strict, non-empty prefix of a chain: {last_present:?} of {written:?}"
    );
}
