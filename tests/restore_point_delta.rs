//! Block-granular increments: scattered small writes cost storage in proportion to the bytes
//! written, not to the chunks they touch, and every restore point still reads back exactly.

use cairn_engine::{ChunkRef, IoBuf};

use crate::common::{BACKENDS, assert_same, collection, disk, open, pattern, read_all, read_rp, restore_point};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_writes_are_stored_as_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", 64 * MIB).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, 32 * MIB as usize)), false).await.unwrap();
    let rp1 = restore_point(&engine, coll.id, "full", vec![]).await;
    let image1 = read_all(&d).await;

    // 256 random 4 KiB writes, two in each of the 128 data chunks.
    let chunks = 32 * MIB / CHUNK;
    for i in 0..256u64 {
        let block = (i % chunks) * (CHUNK / 4096) + (i * 7 + 3) % (CHUNK / 4096);
        d.write(block * 4096, IoBuf::from_slice(&pattern(100 + i, 4096)), false).await.unwrap();
    }
    let image2 = read_all(&d).await;
    let rp2 = restore_point(&engine, coll.id, "scattered", vec![]).await;
    let drp = &rp2.disks[0];
    assert_eq!(drp.chunks_captured, chunks);
    assert_eq!(drp.chunks_delta, chunks, "every touched chunk stored as a delta");
    assert_eq!(drp.chunks_new, 0);
    let written = 256 * 4096;
    assert!(
        drp.bytes_stored * 2 <= written * 3,
        "increment {} bytes for {written} written: over 1.5x",
        drp.bytes_stored
    );

    // A second round over the same chunks is again a delta against the same full base.
    for i in 0..128u64 {
        d.write(i * CHUNK + 8192, IoBuf::from_slice(&pattern(900 + i, 4096)), false).await.unwrap();
    }
    // One chunk rewritten almost whole: stored full again (consolidated).
    d.write(5 * CHUNK, IoBuf::from_slice(&pattern(77, (CHUNK / 2) as usize)), false).await.unwrap();
    let image3 = read_all(&d).await;
    let rp3 = restore_point(&engine, coll.id, "again", vec![]).await;
    assert_eq!(rp3.disks[0].chunks_new, 1);
    assert_eq!(rp3.disks[0].chunks_delta, chunks - 1);
    let reader = engine.disk_restore_point(rp3.id, a).unwrap();
    let base_of_0 = match reader.chunk_ref(0).unwrap() {
        ChunkRef::Delta { base, .. } => base,
        other => panic!("chunk 0 is {other:?}"),
    };
    assert_eq!(engine.disk_restore_point(rp1.id, a).unwrap().chunk_ref(0).unwrap(), ChunkRef::Full(base_of_0));
    assert!(matches!(reader.chunk_ref(5).unwrap(), ChunkRef::Full(_)));

    for (rp, image) in [(&rp1, &image1), (&rp2, &image2), (&rp3, &image3)] {
        assert_same(&read_rp(&engine, rp.id, a).await, image, &rp.name.to_string());
    }
    // After a restart too (everything from the store, nothing cached). Readers hold the
    // catalog open, so they go first.
    drop(reader);
    engine.close().await.unwrap();
    drop(engine);
    let engine = open(dir.path(), BACKENDS[1]).await;
    assert_same(&read_rp(&engine, rp2.id, a).await, &image2, "scattered, after reopen");
}

/// A disk whose last chunk is short, written whole, with a restore point `rp0`; then grown to
/// `grown` bytes. Returns the disk, its collection, rp0 and the image at rp0.
async fn short_last_chunk_then_grown(
    engine: &cairn_engine::Engine,
    size: u64,
    grown: u64,
) -> (std::sync::Arc<cairn_engine::Disk>, cairn_engine::CollectionId, cairn_engine::RestorePointRecord, Vec<u8>) {
    let a = disk(engine, "a", size).await.id;
    let (_, coll) = collection(engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, size as usize)), false).await.unwrap();
    let rp0 = restore_point(engine, coll.id, "rp0", vec![]).await;
    let image0 = read_all(&d).await;
    engine.resize_disk(a, grown).await.unwrap();
    (d, coll.id, rp0, image0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_write_in_a_grown_short_chunk_reads_back_in_every_restore_point() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let (d, coll, rp0, image0) = short_last_chunk_then_grown(&engine, CHUNK + 8192, MIB).await;

    d.write(CHUNK + 4096, IoBuf::from_slice(&pattern(2, 4096)), false).await.unwrap();
    let image1 = read_all(&d).await;
    let rp1 = restore_point(&engine, coll, "rp1", vec![]).await;

    assert_same(&read_rp(&engine, rp1.id, d.id()).await, &image1, "rp1, after the grow");
    assert_same(&read_rp(&engine, rp0.id, d.id()).await, &image0, "rp0, before the grow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grown_short_chunk_nobody_wrote_reads_back_zero_extended() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let (d, coll, rp0, image0) = short_last_chunk_then_grown(&engine, CHUNK + 8192, MIB).await;

    d.write(3 * CHUNK, IoBuf::from_slice(&pattern(2, 4096)), false).await.unwrap();
    let image1 = read_all(&d).await;
    let rp1 = restore_point(&engine, coll, "rp1", vec![]).await;

    assert_same(&read_rp(&engine, rp1.id, d.id()).await, &image1, "rp1, after the grow");
    assert_same(&read_rp(&engine, rp0.id, d.id()).await, &image0, "rp0, before the grow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_over_a_shorter_base_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    // The last chunk grows from 50 to 54 blocks: few enough changed blocks for a delta.
    let (d, coll, rp0, image0) = short_last_chunk_then_grown(&engine, CHUNK + 200 * 1024, CHUNK + 216 * 1024).await;

    d.write(CHUNK + 10 * 4096, IoBuf::from_slice(&pattern(2, 4096)), false).await.unwrap();
    let image1 = read_all(&d).await;
    let rp1 = restore_point(&engine, coll, "rp1", vec![]).await;

    let reader = engine.disk_restore_point(rp1.id, d.id()).unwrap();
    assert!(matches!(reader.chunk_ref(1).unwrap(), ChunkRef::Delta { .. }), "{:?}", reader.chunk_ref(1));
    assert_same(&read_rp(&engine, rp1.id, d.id()).await, &image1, "rp1, a delta over the short chunk");
    assert_same(&read_rp(&engine, rp0.id, d.id()).await, &image0, "rp0, before the grow");
}
