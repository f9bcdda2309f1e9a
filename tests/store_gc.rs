//! Garbage collection: reclaims what no restore point references, rewrites sparse packs,
//! never frees a referenced chunk, and survives a kill.

use std::path::Path;

use cairn_engine::{GcReport, IoBuf, OperationState};

use crate::common::{
    BACKENDS, assert_same, collection, disk, open, pattern, read_all, read_rp, restore_point, wait_op,
};

const MIB: u64 = 1 << 20;

fn pack_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("packs")).unwrap().count()
}

async fn gc(engine: &cairn_engine::Engine, share: u32) -> GcReport {
    let op = engine.collect_garbage(share).await.unwrap();
    let op = wait_op(engine, op.id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    serde_json::from_value(op.result.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_everything_then_gc_leaves_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", 16 * MIB).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    let mut rps = Vec::new();
    for i in 0..3u64 {
        d.write(i * 2 * MIB, IoBuf::from_slice(&pattern(i, 3 * MIB as usize)), false).await.unwrap();
        rps.push(restore_point(&engine, coll.id, &format!("rp{i}"), vec![]).await);
    }
    assert!(pack_files(dir.path()) > 0);
    // Nothing is garbage yet.
    let report = gc(&engine, 0).await;
    assert_eq!(report, GcReport::default());

    for rp in &rps {
        engine.delete_restore_point(rp.id).await.unwrap();
    }
    let report = gc(&engine, 50).await;
    assert!(report.records_freed > 0 && report.packs_deleted > 0 && report.bytes_reclaimed > 7 * MIB, "{report:?}");
    let stats = engine.store_stats().unwrap();
    assert_eq!((stats.records, stats.packs), (0, 0), "{stats:?}");
    assert_eq!(pack_files(dir.path()), 0);
    // The disk itself is untouched, and the next restore point is a full one again.
    let live = read_all(&d).await;
    let rp = restore_point(&engine, coll.id, "again", vec![]).await;
    assert!(rp.disks[0].full_scan);
    assert_same(&read_rp(&engine, rp.id, a).await, &live, "after a full GC");
}

/// A disk with rp1 (8 MiB of data) and rp2 (7 MiB of it overwritten), rp1 then deleted: its
/// pack is left mostly garbage. Returns the disk, rp2 and rp2's image.
async fn sparse_pack(
    engine: &cairn_engine::Engine,
) -> (cairn_engine::DiskId, cairn_engine::RestorePointRecord, Vec<u8>) {
    let a = disk(engine, "a", 16 * MIB).await.id;
    let (_, coll) = collection(engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, 8 * MIB as usize)), false).await.unwrap();
    let rp1 = restore_point(engine, coll.id, "rp1", vec![]).await;
    d.write(0, IoBuf::from_slice(&pattern(2, 7 * MIB as usize)), false).await.unwrap();
    let rp2 = restore_point(engine, coll.id, "rp2", vec![]).await;
    let image2 = read_rp(engine, rp2.id, a).await;
    engine.delete_restore_point(rp1.id).await.unwrap();
    (a, rp2, image2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_packs_are_rewritten_and_the_rest_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[1]).await;
    let (a, rp2, image2) = sparse_pack(&engine).await;

    let report = gc(&engine, 50).await;
    assert_eq!(report.packs_rewritten, 1, "{report:?}");
    assert!(report.bytes_reclaimed >= 6 * MIB, "{report:?}");
    let stats = engine.store_stats().unwrap();
    assert_eq!(stats.records, stats.referenced_records, "{stats:?}");
    assert_same(&read_rp(&engine, rp2.id, a).await, &image2, "rp2 after the rewrite");

    // The old pack was retired, and the next run deletes it; rp2 still reads back.
    let files = pack_files(dir.path());
    let report = gc(&engine, 50).await;
    assert_eq!(report.packs_deleted, 1, "{report:?}");
    assert_eq!(pack_files(dir.path()), files - 1);
    engine.close().await.unwrap();
    drop(engine);
    let engine = open(dir.path(), BACKENDS[0]).await;
    assert_same(&read_rp(&engine, rp2.id, a).await, &image2, "rp2 after reopen");
    // Two collections at once are refused.
    let first = engine.collect_garbage(50).await.unwrap();
    let err = engine.collect_garbage(50).await.unwrap_err();
    assert_eq!(err.kind(), cairn_engine::ErrorKind::FailedPrecondition);
    wait_op(&engine, first.id).await;
}

/// The child's side of the kill tests. Does nothing unless run as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_entry() {
    let Some((dir, _)) = crate::common::child::child_args() else { return };
    let engine = open(&dir, BACKENDS[0]).await;
    let op = engine.collect_garbage(50).await.unwrap();
    wait_op(&engine, op.id).await;
}

async fn kill_during_gc(failpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (a, rp2, image2) = {
        let engine = open(dir.path(), BACKENDS[0]).await;
        let (a, rp2, image2) = sparse_pack(&engine).await;
        engine.close().await.unwrap();
        (a, rp2.id, image2)
    };
    let (status, out) = crate::common::child::run(
        "store_gc::child_process_entry",
        dir.path(),
        "",
        &format!("{failpoint}=return(exit)"),
    );
    assert!(!status.success(), "{failpoint}: the child was meant to die:\n{out}");

    let engine = open(dir.path(), BACKENDS[1]).await;
    assert_same(&read_rp(&engine, rp2, a).await, &image2, &format!("{failpoint}: rp2 after the kill"));
    // The open resumed the cut-short GC as the same operation, and it completed the job.
    let ops = engine.list_operations().unwrap();
    let [cut] = ops.iter().filter(|o| o.kind == cairn_engine::OperationKind::Gc).collect::<Vec<_>>()[..] else {
        panic!("{failpoint}: one GC operation expected: {ops:?}")
    };
    let resumed = wait_op(&engine, cut.id).await;
    assert_eq!(resumed.state, OperationState::Succeeded, "{failpoint}: {resumed:?}");
    assert_eq!(resumed.note.as_deref(), Some("resumed after the engine restarted"), "{failpoint}");
    let report: GcReport = serde_json::from_value(resumed.result.unwrap()).unwrap();
    assert_eq!(report.packs_rewritten, 1, "{failpoint}: the resumed run rewrote the sparse pack: {report:?}");
    // One more run deletes the pack the rewrite retired, and leaves only what rp2 needs.
    gc(&engine, 50).await;
    let stats = engine.store_stats().unwrap();
    assert_eq!(stats.records, stats.referenced_records, "{failpoint}: {stats:?}");
    assert_eq!(pack_files(dir.path()) as u64, stats.packs, "{failpoint}: a pack file nothing references");
    assert_same(&read_rp(&engine, rp2, a).await, &image2, &format!("{failpoint}: rp2 after the reruns"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_the_sweep() {
    kill_during_gc("gc::after_sweep").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_a_rewritten_pack_is_sealed() {
    kill_during_gc("gc::after_rewrite_seal").await;
}

/// The store totals the engine keeps up to date as it goes, against a fresh count of the
/// index (the one an open makes).
async fn assert_totals_survive_a_recount(engine: cairn_engine::Engine, dir: &Path, step: &str) -> cairn_engine::Engine {
    let running = engine.store_stats().unwrap();
    engine.close().await.unwrap();
    drop(engine);
    let engine = open(dir, BACKENDS[0]).await;
    assert_eq!(running, engine.store_stats().unwrap(), "{step}: running totals differ from a recount");
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_store_totals_equal_a_recount_through_captures_deletes_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let (a, rp2, _) = sparse_pack(&engine).await;
    // A second disk with the same content as the first: deduplicated records gain references.
    let b = disk(&engine, "b", 16 * MIB).await.id;
    let (_, coll_b) = collection(&engine, "cb", vec![b]).await;
    let content = read_rp(&engine, rp2.id, a).await;
    engine.disk(b).unwrap().write(0, IoBuf::from_slice(&content[..8 * MIB as usize]), false).await.unwrap();
    let rp_b = restore_point(&engine, coll_b.id, "b1", vec![]).await;
    let before_gc = engine.store_stats().unwrap();
    assert!(before_gc.references > before_gc.referenced_records, "dedup adds references: {before_gc:?}");
    assert!(before_gc.records > before_gc.referenced_records, "rp1's deletion left garbage: {before_gc:?}");
    let engine = assert_totals_survive_a_recount(engine, dir.path(), "after captures and a delete").await;

    gc(&engine, 50).await;
    let engine = assert_totals_survive_a_recount(engine, dir.path(), "after a sweep and a rewrite").await;
    engine.delete_restore_point(rp_b.id).await.unwrap();
    gc(&engine, 50).await;
    let engine = assert_totals_survive_a_recount(engine, dir.path(), "after the retired pack went").await;

    let s = engine.store_stats().unwrap();
    assert_eq!((s.records, s.referenced_records), (s.referenced_records, before_gc.referenced_records), "{s:?}");
    assert_eq!(s.packs, pack_files(dir.path()) as u64, "{s:?}");
}
