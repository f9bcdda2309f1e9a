//! Merkle roots: every disk restore point's root is the one its bytes make (hashed here from
//! the disk's content, by the published rule, with no engine code); deletions and GC keep
//! the roots of the restore points that remain; a chunk map entry swapped for another good
//! record (every record still checks, so reads would serve the wrong chunk) is found by
//! verify, and restores and readers refuse it; restore points from before roots get theirs.

use std::path::Path;

use cairn_engine::{ErrorKind, IoBuf, OperationState, RestoreDisk, VerifyReport, VerifyTarget};

use crate::common::{
    collection, disk, merkle_root_of_image as root_of_image, open, pattern, read_all, read_rp, restore_point, wait_op,
};

const KIB: u64 = 1 << 10;
const CHUNK: u64 = 256 * KIB;
/// Twenty full chunks and a short last one of 12 KiB.
const SIZE: u64 = 20 * CHUNK + 12 * KIB;

async fn verify(engine: &cairn_engine::Engine) -> VerifyReport {
    let op = engine.verify(VerifyTarget::Store).await.unwrap();
    let op = wait_op(engine, op.id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    serde_json::from_value(op.result.unwrap()).unwrap()
}

/// Opens the stopped engine's catalog with RocksDB itself, as a damaged disk or a bad tool
/// would change it.
fn raw_catalog(data_dir: &Path) -> rocksdb::DB {
    let path = data_dir.join("catalog");
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_match_the_bytes_and_survive_deletion_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), cairn_engine::IoBackendKind::Auto).await;
    let a = disk(&engine, "a", SIZE).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, (6 * CHUNK) as usize)), false).await.unwrap();
    d.write(SIZE - 8 * KIB, IoBuf::from_slice(&pattern(2, (8 * KIB) as usize)), false).await.unwrap();
    let rp1 = restore_point(&engine, coll.id, "rp1", vec![]).await;
    let image1 = read_all(&d).await;
    // Scattered small writes (deltas), one chunk zeroed, one new chunk.
    for i in 0..4u64 {
        d.write(i * CHUNK + 8 * KIB, IoBuf::from_slice(&pattern(10 + i, 4096)), false).await.unwrap();
    }
    d.write(5 * CHUNK, IoBuf::from_slice(&vec![0u8; CHUNK as usize]), false).await.unwrap();
    d.write(12 * CHUNK, IoBuf::from_slice(&pattern(3, CHUNK as usize)), false).await.unwrap();
    let rp2 = restore_point(&engine, coll.id, "rp2", vec![]).await;
    let image2 = read_all(&d).await;
    assert!(rp2.disks[0].chunks_delta > 0, "{rp2:?}");

    let root1 = rp1.disks[0].merkle_root.expect("rp1 has a root");
    let root2 = rp2.disks[0].merkle_root.expect("rp2 has a root");
    assert_eq!(root1, root_of_image(&image1, CHUNK));
    assert_eq!(root2, root_of_image(&image2, CHUNK));
    assert_eq!(rp2.merkle_root, rp2.root_of_disks());
    assert!(rp2.merkle_root.is_some() && rp2.merkle_root != rp1.merkle_root);

    // Deleting rp1 folds its entries into rp2's view; GC moves records: rp2's root holds.
    engine.delete_restore_point(rp1.id).await.unwrap();
    let gc = engine.collect_garbage(100).await.unwrap();
    assert_eq!(wait_op(&engine, gc.id).await.state, OperationState::Succeeded);
    let report = verify(&engine).await;
    assert!(report.corrupt.is_empty() && report.root_mismatches.is_empty(), "{report:?}");
    assert_eq!(report.roots_checked, 2, "one disk and one restore point root: {report:?}");
    let reader = engine.disk_restore_point(rp2.id, a).unwrap();
    assert_eq!(reader.merkle_root().unwrap(), root2);
    assert_eq!(read_rp(&engine, rp2.id, a).await, image2);

    // A disk restored from rp2 and captured unchanged has the same content, so the same root.
    let req = RestoreDisk { restore_point: rp2.id, disk: a, name: "b".into(), direct_io: false };
    let (b, _) = engine.restore_disk(req).await.unwrap();
    let (_, coll_b) = collection(&engine, "cb", vec![b.id]).await;
    let rp_b = restore_point(&engine, coll_b.id, "rpb", vec![]).await;
    assert_eq!(rp_b.disks[0].merkle_root, Some(root2));
    engine.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_chunk_map_entry_is_found_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), cairn_engine::IoBackendKind::Auto).await;
    let a = disk(&engine, "a", SIZE).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(7, (4 * CHUNK) as usize)), false).await.unwrap();
    let rp = restore_point(&engine, coll.id, "rp", vec![]).await;
    let (lineage, seq) = (rp.disks[0].lineage, rp.seq);
    let chunk1 = engine.disk_restore_point(rp.id, a).unwrap().chunk_ref(1).unwrap();
    engine.close().await.unwrap();
    drop(engine);

    // Chunk 0's entry now names chunk 1's record: a valid record of the right length.
    {
        let db = raw_catalog(dir.path());
        let cf = db.cf_handle("chunk_map").unwrap();
        let key = cairn_engine::format::chunk_map_key(lineage.to_bytes(), 0, seq);
        assert!(db.get_cf(&cf, key).unwrap().is_some());
        let cairn_engine::ChunkRef::Full(id) = chunk1 else { panic!("chunk 1 is {chunk1:?}") };
        let mut value = vec![cairn_engine::format::REF_FULL];
        value.extend_from_slice(&id.0);
        db.put_cf(&cf, key, value).unwrap();
    }

    let engine = open(dir.path(), cairn_engine::IoBackendKind::Auto).await;
    let report = verify(&engine).await;
    assert!(report.corrupt.is_empty(), "every record is intact: {report:?}");
    assert_eq!(report.root_mismatches.len(), 1, "{report:?}");
    let m = &report.root_mismatches[0];
    assert_eq!((m.restore_point_name.as_str(), m.disk_name.as_str()), ("rp", "a"));
    assert_eq!(m.recorded, rp.disks[0].merkle_root);
    assert_ne!(Some(m.computed), m.recorded);

    let err = engine.disk_restore_point(rp.id, a).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("Merkle root") && err.to_string().contains("rp"), "{err}");
    let req = RestoreDisk { restore_point: rp.id, disk: a, name: "b".into(), direct_io: false };
    let err = engine.restore_disk(req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(engine.disk_by_name("b").is_err(), "a refused restore leaves no disk behind");
    engine.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_point_from_before_roots_gets_its_root_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), cairn_engine::IoBackendKind::Auto).await;
    let a = disk(&engine, "a", SIZE).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(CHUNK, IoBuf::from_slice(&pattern(9, (3 * CHUNK) as usize)), false).await.unwrap();
    let rp = restore_point(&engine, coll.id, "rp", vec![]).await;
    let image = read_all(&d).await;
    engine.close().await.unwrap();
    drop(engine);

    // The record as a build without roots wrote it.
    {
        let db = raw_catalog(dir.path());
        let cf = db.cf_handle("restore_points").unwrap();
        let mut record: serde_json::Value =
            serde_json::from_slice(&db.get_cf(&cf, rp.id.to_bytes()).unwrap().unwrap()).unwrap();
        record.as_object_mut().unwrap().remove("merkle_root");
        for d in record["disks"].as_array_mut().unwrap() {
            d.as_object_mut().unwrap().remove("merkle_root");
        }
        db.put_cf(&cf, rp.id.to_bytes(), serde_json::to_vec(&record).unwrap()).unwrap();
    }

    let engine = open(dir.path(), cairn_engine::IoBackendKind::Auto).await;
    let again = engine.restore_point(rp.id).unwrap();
    assert_eq!(again.disks[0].merkle_root, Some(root_of_image(&image, CHUNK)));
    assert_eq!(again.merkle_root, rp.merkle_root);
    engine.close().await.unwrap();
}
