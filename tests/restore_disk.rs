//! Restore as new disks: usable at once, reads fall through to the store, writes make chunks
//! local, hydration completes in the background (and resumes after a restart), and the first
//! restore point of a restored disk is an increment over its base.

use cairn_engine::{ErrorKind, IoBuf, OperationState, RestoreDisk};

use crate::common::{
    BACKENDS, assert_same, collection, disk, open, pattern, read_all, read_rp, restore_point, wait_op,
};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;

/// A source disk with data, holes and zeros, and one restore point of it.
async fn source(engine: &cairn_engine::Engine) -> (cairn_engine::DiskId, cairn_engine::RestorePointRecord, Vec<u8>) {
    let a = disk(engine, "src", 16 * MIB).await.id;
    let (_, coll) = collection(engine, "src", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, 5 * MIB as usize)), false).await.unwrap();
    d.write(12 * MIB + 777, IoBuf::from_slice(&pattern(2, 300_000)), false).await.unwrap();
    let rp = restore_point(engine, coll.id, "rp", vec![]).await;
    let image = read_rp(engine, rp.id, a).await;
    (a, rp, image)
}

async fn wait_paused(engine: &cairn_engine::Engine, op: cairn_engine::OperationId) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while engine.operation(op).unwrap().paused.is_none() {
        assert!(std::time::Instant::now() < deadline, "hydration never paused");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_disk_is_usable_before_hydration_and_exact_after() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), backend).await;
        let (a, rp, image) = source(&engine).await;

        engine.set_free_space_watermark(u64::MAX); // hold hydration at its first chunk
        let req = RestoreDisk { restore_point: rp.id, disk: a, name: "copy".into(), direct_io: false };
        let (rec, op) = engine.restore_disk(req).await.unwrap();
        wait_paused(&engine, op.id).await;
        let d = engine.disk(rec.id).unwrap();
        let (local, total, hydrated) = d.hydration().unwrap();
        assert!(!hydrated && local < total, "{backend:?}: {local}/{total} local");

        // Reads come from the store; block status follows the restore point, not the file.
        assert_same(&read_all(&d).await, &image, &format!("{backend:?}: restored disk before hydration"));
        let ext = d.extents(0, 16 * MIB).unwrap();
        assert!(ext.iter().any(|e| e.data && e.offset == 0 && e.len >= 5 * MIB), "{ext:?}");
        assert!(ext.iter().any(|e| !e.data && e.offset <= 6 * MIB && e.offset + e.len >= 12 * MIB), "{ext:?}");

        // Prefetch (NBD CACHE) hydrates the chunks it covers now, out of order: the file then
        // holds them, and they are local.
        let fetched = d.prefetch(MIB + 4096, 2 * MIB).await.unwrap();
        assert_eq!(fetched, 9, "{backend:?}: chunks 4..=12 fetched from the store");
        assert_eq!(d.hydration().unwrap().0, local + 9);
        let file = std::fs::read(d.path()).unwrap();
        assert_same(
            &file[(MIB) as usize..(3 * MIB + CHUNK) as usize],
            &image[(MIB) as usize..(3 * MIB + CHUNK) as usize],
            &format!("{backend:?}: prefetched chunks are in the file"),
        );
        assert_eq!(d.prefetch(MIB, MIB).await.unwrap(), 0, "already local");
        assert_eq!(d.prefetch(0, 17 * MIB).await.unwrap_err().kind(), ErrorKind::InvalidArgument);

        // A partial write and a trim of chunks still in the store keep the rest of those chunks.
        let mut expect = image.clone();
        d.write(3 * CHUNK + 100, IoBuf::from_slice(&pattern(9, 5000)), false).await.unwrap();
        expect[(3 * CHUNK + 100) as usize..(3 * CHUNK + 5100) as usize].copy_from_slice(&pattern(9, 5000));
        d.punch(12 * MIB + 4096, 8192, false).await.unwrap();
        expect[(12 * MIB + 4096) as usize..(12 * MIB + 12288) as usize].fill(0);
        assert_same(&read_all(&d).await, &expect, &format!("{backend:?}: after writes before hydration"));

        engine.set_free_space_watermark(0);
        let op = wait_op(&engine, op.id).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
        assert!(d.hydration().unwrap().2);
        assert!(engine.disk_record(rec.id).unwrap().hydrated);
        assert_same(&read_all(&d).await, &expect, &format!("{backend:?}: after hydration"));
        // Sparse stays sparse: the zero chunks of the restore point were never written.
        assert!(crate::common::allocated(d.path()) < 7 * MIB, "{backend:?}: {}", crate::common::allocated(d.path()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_restore_point_of_a_restored_disk_is_an_increment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let (a, rp, image) = source(&engine).await;
    let (group, restored) = engine.restore_group(rp.id, "vm2").await.unwrap();
    assert_eq!(group.configuration, r#"{"vm":"src"}"#);
    assert_eq!(restored.len(), 1);
    let (rec, op) = &restored[0];
    assert_eq!(rec.name.as_str(), "vm2-src");
    wait_op(&engine, op.id).await;
    let d = engine.disk(rec.id).unwrap();
    assert_same(&read_all(&d).await, &image, "restored group disk");

    d.write(CHUNK * 2, IoBuf::from_slice(&pattern(5, 4096)), false).await.unwrap();
    d.punch(0, CHUNK, false).await.unwrap();
    let live = read_all(&d).await;
    let coll = engine
        .create_collection(cairn_engine::CreateCollection { name: "vm2".into(), group: group.id, ..Default::default() })
        .await
        .unwrap();
    let rp2 = restore_point(&engine, coll.id, "after", vec![]).await;
    let drp = &rp2.disks[0];
    assert!(!drp.full_scan, "an increment over the base, not a full copy");
    assert_eq!(drp.chunks_captured, 2);
    assert_eq!(drp.base.map(|b| b.seq), Some(rp.seq));
    assert_same(&read_rp(&engine, rp2.id, rec.id).await, &live, "restore point of the restored disk");

    // The source collection cannot be cascaded away while the restored history reads through it.
    let src = engine.collection_by_name("src").unwrap();
    let err = engine.delete_collection(src.id, true).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert_eq!(engine.disk(a).unwrap().id(), a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydration_is_parked_at_shutdown_and_resumes_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (id, image, parked_op) = {
        let engine = open(dir.path(), BACKENDS[1]).await;
        let (a, rp, image) = source(&engine).await;
        engine.set_free_space_watermark(u64::MAX);
        let req = RestoreDisk { restore_point: rp.id, disk: a, name: "copy".into(), direct_io: false };
        let (rec, op) = engine.restore_disk(req).await.unwrap();
        wait_paused(&engine, op.id).await;
        tokio::time::timeout(std::time::Duration::from_secs(10), engine.close())
            .await
            .expect("shutdown parks hydration")
            .unwrap();
        // Parked, not canceled: it goes on at the next start as the same operation.
        assert_eq!(engine.operation(op.id).unwrap().state, OperationState::Running);
        (rec.id, image, op.id)
    };
    let engine = open(dir.path(), BACKENDS[0]).await;
    let d = engine.disk(id).unwrap();
    assert_same(&read_all(&d).await, &image, "restored disk after restart");
    let hydrations: Vec<_> = engine
        .list_operations()
        .unwrap()
        .into_iter()
        .filter(|o| o.kind == cairn_engine::OperationKind::Hydration && o.target.contains(&id.to_string()))
        .collect();
    assert_eq!(hydrations.len(), 1, "one hydration operation, resumed: {hydrations:?}");
    assert_eq!(hydrations[0].id, parked_op);
    let op = wait_op(&engine, parked_op).await;
    assert_eq!(op.state, OperationState::Succeeded);
    assert_eq!(op.note.as_deref(), Some("resumed after the engine restarted"));
    assert!(engine.disk_record(id).unwrap().hydrated);
    assert_same(&read_all(&d).await, &image, "restored disk after resumed hydration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_disk_grown_before_hydration_serves_its_new_space_and_hydrates() {
    let dir = tempfile::tempdir().unwrap();
    let (id, op, expect) = {
        let engine = open(dir.path(), BACKENDS[0]).await;
        // Five chunks, the last one short (8 KiB).
        let size = 4 * CHUNK + 8192;
        let a = disk(&engine, "src", size).await.id;
        let (_, coll) = collection(&engine, "src", vec![a]).await;
        let src = engine.disk(a).unwrap();
        src.write(0, IoBuf::from_slice(&pattern(1, size as usize)), false).await.unwrap();
        let rp = restore_point(&engine, coll.id, "rp", vec![]).await;
        let image = read_rp(&engine, rp.id, a).await;
        engine.set_free_space_watermark(u64::MAX); // hold hydration at its first chunk
        let req = RestoreDisk { restore_point: rp.id, disk: a, name: "copy".into(), direct_io: false };
        let (rec, op) = engine.restore_disk(req).await.unwrap();
        wait_paused(&engine, op.id).await;

        engine.resize_disk(rec.id, 8 * MIB).await.unwrap();
        let d = engine.disk(rec.id).unwrap();
        let mut expect = image.clone();
        expect.resize(8 * MIB as usize, 0);
        assert_same(&read_all(&d).await, &expect, "grown restored disk before hydration");
        d.write(5 * CHUNK + 100, IoBuf::from_slice(&pattern(2, 5000)), false).await.unwrap();
        expect[(5 * CHUNK + 100) as usize..(5 * CHUNK + 5100) as usize].copy_from_slice(&pattern(2, 5000));
        d.write(8 * MIB - 4096, IoBuf::from_slice(&pattern(3, 4096)), false).await.unwrap();
        expect[(8 * MIB - 4096) as usize..].copy_from_slice(&pattern(3, 4096));
        assert_same(&read_all(&d).await, &expect, "grown restored disk after writes to its new space");
        engine.close().await.unwrap(); // parks hydration
        (rec.id, op.id, expect)
    };

    let engine = open(dir.path(), BACKENDS[1]).await;
    // Captured while hydration resumes: the old short last chunk (never written) is stored
    // at its grown length.
    let (_, coll) = collection(&engine, "copy", vec![id]).await;
    let rp = restore_point(&engine, coll.id, "grown", vec![]).await;
    let op = wait_op(&engine, op).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let d = engine.disk(id).unwrap();
    assert_same(&read_all(&d).await, &expect, "grown restored disk after its resumed hydration");
    assert_same(&std::fs::read(d.path()).unwrap(), &expect, "grown restored disk's file after hydration");
    assert_same(&read_rp(&engine, rp.id, id).await, &expect, "restore point of the grown restored disk");
    engine.close().await.unwrap();
    drop((d, engine)); // a restored disk's base reader holds the catalog
    let engine = open(dir.path(), BACKENDS[0]).await;
    assert_same(&read_all(&engine.disk(id).unwrap()).await, &expect, "grown restored disk after reopening");
}
