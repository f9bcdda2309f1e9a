//! Copies of restore points between two engines (two data dirs, the network left out: the
//! target pulls through a `CopySource` over the source engine, as the daemon's replication
//! client will over gRPC): a full copy and an incremental one read back byte-identical with
//! the source's Merkle roots, the incremental one fetching only its increment; the copy
//! restores as new disks with the source gone; a source that lies (a flipped byte, another
//! chunk's record, trailing bytes, a declared root its map does not make) fails the copy
//! and leaves nothing referenced behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_engine::{
    ChunkId, CollectionSource, CopySource, Engine, ErrorKind, ExportedRestorePoint, IoBuf, OperationState,
    ProvisioningState, RestoreDisk, RestorePointId, VerifyReport, VerifyTarget,
};
use futures::future::BoxFuture;

use crate::common::{collection, disk, open, pattern, read_all, read_rp, restore_point, wait_op};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lie {
    None,
    FlippedByte,
    OtherRecord,
    TrailingBytes,
    DeclaredRoot,
}

/// The source side of a copy, over an engine in the same process, counting what it sends.
struct EngineSource {
    engine: Engine,
    restore_point: RestorePointId,
    lie: Lie,
    records: AtomicU64,
    bytes: AtomicU64,
}

impl EngineSource {
    fn new(engine: &Engine, restore_point: RestorePointId, lie: Lie) -> Arc<Self> {
        Arc::new(Self {
            engine: engine.clone(),
            restore_point,
            lie,
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }
}

impl CopySource for EngineSource {
    fn restore_point(&self) -> BoxFuture<'_, cairn_engine::Result<ExportedRestorePoint>> {
        Box::pin(async move {
            let mut m = self.engine.export_restore_point(self.restore_point)?;
            if self.lie == Lie::DeclaredRoot {
                m.disks[0].chunks.pop();
            }
            Ok(m)
        })
    }

    fn record(&self, id: ChunkId) -> BoxFuture<'_, cairn_engine::Result<Vec<u8>>> {
        Box::pin(async move {
            let n = self.records.fetch_add(1, Ordering::Relaxed);
            let mut bytes = self.engine.export_record(id).await?;
            match self.lie {
                Lie::FlippedByte if n == 3 => {
                    let at = bytes.len() - 10;
                    bytes[at] ^= 1;
                }
                Lie::OtherRecord if n == 3 => {
                    let other = self.engine.export_restore_point(self.restore_point)?.disks[0].chunks[0].1;
                    bytes = self.engine.export_record(other.stored()[0]).await?;
                }
                Lie::TrailingBytes if n == 3 => bytes.extend_from_slice(&[0; 100]),
                _ => {}
            }
            self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(bytes)
        })
    }
}

async fn verify(engine: &Engine) -> VerifyReport {
    let op = engine.verify(VerifyTarget::Store).await.unwrap();
    let op = wait_op(engine, op.id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    serde_json::from_value(op.result.unwrap()).unwrap()
}

/// A source engine with disks `a` (16 MiB) and `b` (8 MiB) in collection `c`, and a first
/// restore point.
async fn source(dir: &std::path::Path) -> (Engine, cairn_engine::CollectionRecord, RestorePointId) {
    let engine = open(dir, cairn_engine::IoBackendKind::Auto).await;
    let a = disk(&engine, "a", 16 * MIB).await.id;
    let b = disk(&engine, "b", 8 * MIB).await.id;
    let (_, coll) = collection(&engine, "c", vec![a, b]).await;
    engine.disk(a).unwrap().write(0, IoBuf::from_slice(&pattern(1, (6 * MIB) as usize)), false).await.unwrap();
    engine.disk(b).unwrap().write(MIB, IoBuf::from_slice(&pattern(2, (2 * MIB) as usize)), false).await.unwrap();
    let rp1 = restore_point(&engine, coll.id, "rp1", vec![]).await;
    (engine, coll, rp1.id)
}

async fn copy(
    target: &Engine,
    coll: cairn_engine::CollectionId,
    name: &str,
    src: Arc<EngineSource>,
) -> cairn_engine::RestorePointRecord {
    let (rp, op) = target.copy_restore_point(coll, name.into(), src).await.unwrap();
    assert_eq!(rp.state, ProvisioningState::Creating);
    let op = wait_op(target, op.id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    target.restore_point(rp.id).unwrap()
}

fn stored(rp: &cairn_engine::RestorePointRecord) -> u64 {
    rp.disks.iter().map(|d| d.bytes_stored).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_copies_read_back_exact_and_send_only_the_increment() {
    let (sdir, tdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, coll, rp1) = source(sdir.path()).await;
    let target = open(tdir.path(), cairn_engine::IoBackendKind::Auto).await;
    let from = CollectionSource { peer: "west".into(), collection: "c".into() };
    let copies = target.create_copy_collection("c-west", from, None).await.unwrap();

    let s1 = EngineSource::new(&src, rp1, Lie::None);
    let c1 = copy(&target, copies.id, "rp1", s1.clone()).await;
    let src_rp1 = src.restore_point(rp1).unwrap();
    assert_eq!(c1.merkle_root, src_rp1.merkle_root);
    assert_eq!(s1.bytes.load(Ordering::Relaxed), stored(&src_rp1), "a full copy sends what the source stored");
    for d in &src_rp1.disks {
        assert!(read_rp(&target, c1.id, d.disk).await == read_rp(&src, rp1, d.disk).await, "disk {}", d.disk_name);
    }

    // Scattered small writes (deltas on the source), a new chunk, a trimmed chunk.
    let a = src.disk_by_name("a").unwrap();
    for i in 0..6u64 {
        a.write(i * CHUNK + 8192, IoBuf::from_slice(&pattern(10 + i, 4096)), false).await.unwrap();
    }
    a.write(40 * CHUNK, IoBuf::from_slice(&pattern(3, CHUNK as usize)), false).await.unwrap();
    a.punch(20 * CHUNK, CHUNK, false).await.unwrap();
    let src_rp2 = restore_point(&src, coll.id, "rp2", vec![]).await;
    assert!(src_rp2.disks[0].chunks_delta >= 6, "{src_rp2:?}");
    let image_a = read_all(&a).await;
    let image_b = read_all(&src.disk_by_name("b").unwrap()).await;

    let s2 = EngineSource::new(&src, src_rp2.id, Lie::None);
    let c2 = copy(&target, copies.id, "rp2", s2.clone()).await;

    assert_eq!(c2.merkle_root, src_rp2.merkle_root);
    let sent = s2.bytes.load(Ordering::Relaxed);
    assert!(sent * 10 <= stored(&src_rp2) * 11, "sent {sent} bytes for an increment of {}", stored(&src_rp2));
    assert_eq!(c2.disks[0].lineage, c1.disks[0].lineage, "one history per source disk");
    assert!(c2.disks[0].chunks_delta >= 6, "deltas are copied as they are stored: {c2:?}");

    // The source goes away; the copy restores as new disks.
    src.close().await.unwrap();
    drop(src);
    let req = RestoreDisk { restore_point: c2.id, disk: c2.disks[0].disk, name: "a2".into(), direct_io: false };
    let (restored, _) = target.restore_disk(req).await.unwrap();
    assert!(read_all(&target.disk(restored.id).unwrap()).await == image_a);
    assert!(read_rp(&target, c2.id, c2.disks[1].disk).await == image_b);

    // Deleting the first copy keeps the second whole; GC and verify agree.
    target.delete_restore_point(c1.id).await.unwrap();
    let gc = target.collect_garbage(100).await.unwrap();
    assert_eq!(wait_op(&target, gc.id).await.state, OperationState::Succeeded);
    assert!(read_rp(&target, c2.id, c2.disks[0].disk).await == image_a);
    let report = verify(&target).await;
    assert!(report.corrupt.is_empty() && report.root_mismatches.is_empty(), "{report:?}");
    target.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_source_fails_the_copy_and_leaves_nothing_referenced() {
    let (sdir, tdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, _, rp1) = source(sdir.path()).await;
    let target = open(tdir.path(), cairn_engine::IoBackendKind::Auto).await;
    let from = CollectionSource { peer: "west".into(), collection: "c".into() };
    let copies = target.create_copy_collection("c-west", from, None).await.unwrap();

    let err = target
        .copy_restore_point(copies.id, "bad-root".into(), EngineSource::new(&src, rp1, Lie::DeclaredRoot))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("Merkle root"), "{err}");
    assert!(target.list_restore_points(copies.id).unwrap().is_empty(), "a refused manifest records nothing");

    for (lie, says) in [(Lie::FlippedByte, "CRC"), (Lie::OtherRecord, "another chunk"), (Lie::TrailingBytes, "bytes")] {
        let name = format!("{lie:?}").to_lowercase();
        let (rp, op) = target.copy_restore_point(copies.id, name, EngineSource::new(&src, rp1, lie)).await.unwrap();
        let op = wait_op(&target, op.id).await;
        let OperationState::Failed { error } = &op.state else { panic!("{lie:?}: {op:?}") };
        assert!(error.contains(says), "{lie:?}: {error}");
        assert!(matches!(target.restore_point(rp.id).unwrap().state, ProvisioningState::Failed { .. }));
        assert_eq!(
            target.disk_restore_point(rp.id, rp.disks[0].disk).unwrap_err().kind(),
            ErrorKind::FailedPrecondition
        );
    }
    let stats = target.store_stats().unwrap();
    assert_eq!((stats.records, stats.references), (0, 0), "nothing of a failed copy is indexed: {stats:?}");

    // A copy collection takes no captures; a plain collection takes no copies.
    let err = target
        .create_restore_point(copies.id, cairn_engine::CreateRestorePoint { name: "x".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    let x = disk(&target, "x", MIB).await.id;
    let (_, plain) = collection(&target, "plain", vec![x]).await;
    let err =
        target.copy_restore_point(plain.id, "y".into(), EngineSource::new(&src, rp1, Lie::None)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    src.close().await.unwrap();
    target.close().await.unwrap();
}
