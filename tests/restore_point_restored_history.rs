//! A restored disk's history can be deleted whole and started again: deleting every restore
//! point of a restored disk (one by one, or with the collection) leaves its next restore point
//! exactly the disk, chunks rewritten before the deletion included.

use cairn_engine::{IoBuf, RestoreDisk};

use crate::common::{
    BACKENDS, assert_same, collection, disk, open, pattern, read_all, read_rp, restore_point, wait_op,
};

const CHUNK: u64 = 256 << 10;

/// A restored disk `r` whose chunk 0 the guest rewrote after one restore point of `r`, which
/// was then deleted; returns the engine, `r` and the source's collection.
async fn restored_with_deleted_history(
    dir: &std::path::Path,
    cascade: bool,
) -> (cairn_engine::Engine, cairn_engine::DiskId) {
    let engine = open(dir, BACKENDS[0]).await;
    let a = disk(&engine, "a", 16 * CHUNK).await.id;
    let (_, src) = collection(&engine, "src", vec![a]).await;
    let da = engine.disk(a).unwrap();
    da.write(0, IoBuf::from_slice(&pattern(1, 8 * CHUNK as usize)), false).await.unwrap();
    let rp0 = restore_point(&engine, src.id, "rp0", vec![]).await;

    let req = RestoreDisk { restore_point: rp0.id, disk: a, name: "r".into(), direct_io: false };
    let (rec, op) = engine.restore_disk(req).await.unwrap();
    wait_op(&engine, op.id).await;
    let r = engine.disk(rec.id).unwrap();
    r.write(0, IoBuf::from_slice(&pattern(2, CHUNK as usize)), false).await.unwrap();
    let (_, coll) = collection(&engine, "rc", vec![rec.id]).await;
    let rp1 = restore_point(&engine, coll.id, "rp1", vec![]).await;
    if cascade {
        engine.delete_collection(coll.id, true).await.unwrap();
    } else {
        engine.delete_restore_point(rp1.id).await.unwrap();
    }
    (engine, rec.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_every_restore_point_of_a_restored_disk_keeps_the_next_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, r) = restored_with_deleted_history(dir.path(), false).await;
    let d = engine.disk(r).unwrap();
    d.write(5 * CHUNK, IoBuf::from_slice(&pattern(3, 4096)), false).await.unwrap();
    let coll = engine.collection_by_name("rc").unwrap();

    let rp2 = restore_point(&engine, coll.id, "rp2", vec![]).await;

    assert_same(&read_rp(&engine, rp2.id, r).await, &read_all(&d).await, "rp2 of the restored disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_collection_after_a_cascade_delete_of_a_restored_disk_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, r) = restored_with_deleted_history(dir.path(), true).await;
    let d = engine.disk(r).unwrap();
    d.write(5 * CHUNK, IoBuf::from_slice(&pattern(3, 4096)), false).await.unwrap();
    let group = engine.group_by_name("rc-vm").unwrap();
    let coll = engine
        .create_collection(cairn_engine::CreateCollection {
            name: "again".into(),
            group: group.id,
            ..Default::default()
        })
        .await
        .unwrap();

    let rp2 = restore_point(&engine, coll.id, "rp2", vec![]).await;

    assert_same(&read_rp(&engine, rp2.id, r).await, &read_all(&d).await, "rp2 in a new collection");
}
