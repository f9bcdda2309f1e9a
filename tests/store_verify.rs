//! Verify finds flipped bits in full and delta records, names the restore points they
//! affect, reads return a corruption error (never wrong data), and the next capture of the
//! same content stores it anew, healing every restore point that reads it by hash.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_engine::{ErrorKind, IoBuf, OperationState, VerifyReport, VerifyTarget};

use crate::common::{
    BACKENDS, assert_same, collection, disk, open, pattern, read_all, read_rp, restore_point, wait_op,
};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;
/// Offset of the first record's stored bytes in a pack: pack header + record header.
const FIRST_RECORD_DATA: u64 = 32 + 64;

fn packs(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir.join("packs")).unwrap().map(|e| e.unwrap().path()).collect()
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

async fn verify(engine: &cairn_engine::Engine, target: VerifyTarget) -> VerifyReport {
    let op = engine.verify(target).await.unwrap();
    let op = wait_op(engine, op.id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    serde_json::from_value(op.result.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bits_are_found_named_refused_and_healed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", 8 * MIB).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, 4 * MIB as usize)), false).await.unwrap();
    let rp1 = restore_point(&engine, coll.id, "rp1", vec![]).await;
    let image1 = read_all(&d).await;
    let full_packs = packs(dir.path());
    assert_eq!(full_packs.len(), 1);

    // A few scattered writes: rp2 holds deltas over rp1's chunks, in a pack of its own.
    for i in 0..8u64 {
        d.write(i * CHUNK + 4096, IoBuf::from_slice(&pattern(50 + i, 4096)), false).await.unwrap();
    }
    let rp2 = restore_point(&engine, coll.id, "rp2", vec![]).await;
    assert_eq!(rp2.disks[0].chunks_delta, 8);
    let delta_pack = packs(dir.path()).difference(&full_packs).next().cloned().unwrap();

    let clean = verify(&engine, VerifyTarget::Store).await;
    assert!(clean.corrupt.is_empty() && clean.records_checked == 16 + 8, "{clean:?}");

    // Flip a bit in the first full record (chunk 0 of rp1, the base of rp2's first delta)
    // and in the first delta record.
    flip(full_packs.iter().next().unwrap(), FIRST_RECORD_DATA + 1000);
    flip(&delta_pack, FIRST_RECORD_DATA + 20);
    let report = verify(&engine, VerifyTarget::Store).await;
    assert_eq!(report.corrupt.len(), 2, "{report:?}");
    let names = |i: usize| -> BTreeSet<String> {
        report.corrupt[i].affected.iter().map(|x| format!("{}/{}", x.restore_point_name, x.disk_name)).collect()
    };
    let all: BTreeSet<String> = names(0).union(&names(1)).cloned().collect();
    assert!(all.contains("rp1/a") && all.contains("rp2/a"), "{report:?}");
    assert!(report.corrupt.iter().all(|c| c.reason.contains("CRC") || c.reason.contains("hash")), "{report:?}");

    // Reads of damaged chunks are errors, never wrong bytes; undamaged chunks still read.
    let r1 = engine.disk_restore_point(rp1.id, a).unwrap();
    assert_eq!(r1.read(0, 4096).await.unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(
        &r1.read(CHUNK * 9, 4096).await.unwrap()[..],
        &image1[(CHUNK * 9) as usize..(CHUNK * 9 + 4096) as usize]
    );
    let per_rp = verify(&engine, VerifyTarget::RestorePoint(rp2.id)).await;
    assert!(!per_rp.corrupt.is_empty(), "{per_rp:?}");

    // Writing rp1's chunk 0 back makes the next capture store it anew instead of
    // deduplicating against the damaged record: rp1 reads whole again.
    d.write(0, IoBuf::from_slice(&image1[..CHUNK as usize]), false).await.unwrap();
    let rp3 = restore_point(&engine, coll.id, "rp3", vec![]).await;
    assert_eq!(rp3.disks[0].chunks_new, 1, "{:?}", rp3.disks[0]);
    assert_same(&read_rp(&engine, rp1.id, a).await, &image1, "rp1 healed");
    assert_same(&read_rp(&engine, rp3.id, a).await, &read_all(&d).await, "rp3");
    let after = verify(&engine, VerifyTarget::Store).await;
    assert_eq!(after.corrupt.len(), 1, "only the delta record is still damaged: {after:?}");
}

/// The child's side of [`a_gc_moving_records_under_a_verify_marks_nothing_corrupt`]. Does
/// nothing unless run as a child (its failpoint is armed for the whole process).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_process_entry() {
    let Some((dir, _)) = crate::common::child::child_args() else { return };
    let engine = open(&dir, BACKENDS[0]).await;
    let a = disk(&engine, "a", 8 * MIB).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, 4 * MIB as usize)), false).await.unwrap();
    let rp1 = restore_point(&engine, coll.id, "rp1", vec![]).await;
    // rp1's pack ends up with 2 of its 16 records live.
    d.write(0, IoBuf::from_slice(&pattern(2, 14 * CHUNK as usize)), false).await.unwrap();
    let rp2 = restore_point(&engine, coll.id, "rp2", vec![]).await;
    engine.delete_restore_point(rp1.id).await.unwrap();
    let image2 = read_rp(&engine, rp2.id, a).await;

    // The verify lists every record, then is held while two GC runs free the dead ones,
    // move the live ones to a new pack and delete the old pack.
    let op = engine.verify(VerifyTarget::Store).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for _ in 0..2 {
        let gc = engine.collect_garbage(50).await.unwrap();
        assert_eq!(wait_op(&engine, gc.id).await.state, OperationState::Succeeded);
    }
    let op = wait_op(&engine, op.id).await;

    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let report: VerifyReport = serde_json::from_value(op.result.unwrap()).unwrap();
    assert!(report.corrupt.is_empty(), "good records marked corrupt: {report:?}");
    assert_same(&read_rp(&engine, rp2.id, a).await, &image2, "rp2 after the GC");
    engine.close().await.unwrap();
}

#[test]
fn a_gc_moving_records_under_a_verify_marks_nothing_corrupt() {
    let dir = tempfile::tempdir().unwrap();

    crate::common::child::run_ok(
        "store_verify::child_process_entry",
        dir.path(),
        "",
        "verify::after_snapshot=1*sleep(1500)",
    );
}
