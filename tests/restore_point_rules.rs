//! Restore point rules: one creation at a time, the limit, names, exclusions, hooks.

use cairn_engine::{ConsistencyMode, CreateCollection, CreateRestorePoint, DiskId, ErrorKind, IoBuf, ScriptHook};

use crate::common::{BACKENDS, collection, disk, open, pattern, read_rp, restore_point, wait_op};

fn req(name: &str) -> CreateRestorePoint {
    CreateRestorePoint { name: name.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_names_and_exclusions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", 1 << 20).await.id;
    let b = disk(&engine, "b", 1 << 20).await.id;
    let group = engine
        .create_group(cairn_engine::CreateGroup { name: "vm".into(), disks: vec![a, b], configuration: String::new() })
        .await
        .unwrap();
    let coll = engine
        .create_collection(CreateCollection {
            name: "c".into(),
            group: group.id,
            max_restore_points: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    // One collection per group per region.
    let err = engine
        .create_collection(CreateCollection { name: "c2".into(), group: group.id, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");

    engine.disk(b).unwrap().write(0, IoBuf::from_slice(&pattern(1, 8192)), false).await.unwrap();
    let rp1 = restore_point(&engine, coll.id, "one", vec![b]).await;
    assert_eq!(rp1.disks.len(), 1);
    assert_eq!(rp1.excluded_disks, vec![b]);
    assert_eq!(engine.disk(b).unwrap().tracker().epoch(), 0, "excluded disks keep their epoch");
    assert_eq!(engine.disk_restore_point(rp1.id, b).unwrap_err().kind(), ErrorKind::NotFound);

    assert_eq!(engine.create_restore_point(coll.id, req("one")).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
    let bad = engine
        .create_restore_point(coll.id, CreateRestorePoint { exclude_disks: vec![DiskId::new()], ..req("x") })
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
    let all = engine
        .create_restore_point(coll.id, CreateRestorePoint { exclude_disks: vec![a, b], ..req("x") })
        .await
        .unwrap_err();
    assert_eq!(all.kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        engine.create_restore_point(coll.id, req("bad/name")).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );

    // b's first restore point still sees the write made before the excluded one.
    let rp2 = restore_point(&engine, coll.id, "two", vec![]).await;
    let rb = rp2.disks.iter().find(|d| d.disk == b).unwrap();
    assert!(rb.full_scan);
    assert_eq!(&read_rp(&engine, rp2.id, b).await[..8192], &pattern(1, 8192)[..]);

    let err = engine.create_restore_point(coll.id, req("three")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitReached, "{err}");
    assert_eq!(engine.list_restore_points(coll.id).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creation_is_refused_and_hooks_set_consistency() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[1]).await;
    let a = disk(&engine, "a", 1 << 20).await.id;
    let (group, _) = collection(&engine, "plain", vec![a]).await;
    // A second collection on another group, with a slow quiesce script that reports
    // application consistency, and a log of its phases.
    let b = disk(&engine, "b", 1 << 20).await.id;
    let g2 = engine
        .create_group(cairn_engine::CreateGroup { name: "vm2".into(), disks: vec![b], configuration: String::new() })
        .await
        .unwrap();
    let log = dir.path().join("hook.log");
    let script = dir.path().join("hook.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1 $CAIRN_RESTORE_POINT\" >> {}\n[ \"$1\" = quiesce ] && sleep 0.5 && echo ApplicationConsistent\nexit 0\n", log.display())).unwrap();
    let hook = ScriptHook { command: vec!["/bin/sh".into(), script.display().to_string()], timeout_ms: 10_000 };
    let coll = engine
        .create_collection(CreateCollection {
            name: "hooked".into(),
            group: g2.id,
            hook: Some(hook),
            ..Default::default()
        })
        .await
        .unwrap();

    let app = CreateRestorePoint { consistency: ConsistencyMode::ApplicationConsistent, ..req("app") };
    let (first, second) = tokio::join!(engine.create_restore_point(coll.id, app), async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        engine.create_restore_point(coll.id, req("meanwhile")).await
    });
    let err = second.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(err.to_string().contains("already being created"), "{err}");
    let (rp, op) = first.unwrap();
    wait_op(&engine, op.id).await;
    let rp = engine.restore_point(rp.id).unwrap();
    assert_eq!(rp.consistency_achieved, ConsistencyMode::ApplicationConsistent);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "quiesce app\nthaw app\n");

    // A failing hook degrades the restore point and says why.
    std::fs::write(&script, "#!/bin/sh\necho frozen disk >&2\nexit 3\n").unwrap();
    let rp = restore_point_with(
        &engine,
        coll.id,
        CreateRestorePoint { consistency: ConsistencyMode::FileSystemConsistent, ..req("fs") },
    )
    .await;
    assert_eq!(rp.consistency_requested, ConsistencyMode::FileSystemConsistent);
    assert_eq!(rp.consistency_achieved, ConsistencyMode::CrashConsistent);
    assert!(rp.consistency_note.as_deref().unwrap_or("").contains("frozen disk"), "{:?}", rp.consistency_note);

    // No hook configured: application consistency cannot be reached, and the record says so.
    let plain = engine.collection_by_name("plain").unwrap();
    assert_eq!(plain.group, group.id);
    let rp = restore_point_with(
        &engine,
        plain.id,
        CreateRestorePoint { consistency: ConsistencyMode::ApplicationConsistent, ..req("p") },
    )
    .await;
    assert_eq!(rp.consistency_achieved, ConsistencyMode::CrashConsistent);
    assert!(rp.freeze_window_us > 0);
}

async fn restore_point_with(
    engine: &cairn_engine::Engine,
    coll: cairn_engine::CollectionId,
    req: CreateRestorePoint,
) -> cairn_engine::RestorePointRecord {
    let (rp, op) = engine.create_restore_point(coll, req).await.unwrap();
    wait_op(engine, op.id).await;
    engine.restore_point(rp.id).unwrap()
}

/// Ended operations are forgotten past their retention, the newest few kept whatever their
/// age; running ones and restore points are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_operations_are_pruned_past_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let config = cairn_engine::EngineConfig {
        operation_retention: std::time::Duration::ZERO,
        operations_kept: 2,
        ..cairn_engine::EngineConfig::new(dir.path())
    };
    let engine = cairn_engine::Engine::open(config).await.unwrap();
    let a = crate::common::disk(&engine, "a", 4 << 20).await.id;
    let (_, coll) = crate::common::collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    let mut rps = Vec::new();
    for i in 0..5u64 {
        d.write(i * 4096, cairn_engine::IoBuf::from_slice(&[i as u8 + 1; 4096]), false).await.unwrap();
        rps.push(crate::common::restore_point(&engine, coll.id, &format!("rp{i}"), vec![]).await);
    }
    let ops = engine.list_operations().unwrap();
    assert!(ops.len() <= 3, "at most the 2 kept and one ended since the last pruning: {ops:?}");
    assert!(ops.iter().any(|o| o.id == rps[4].operation), "the newest is kept");
    assert!(engine.operation(rps[0].operation).is_err(), "the oldest is forgotten");
    // The restore points themselves stay.
    assert_eq!(engine.list_restore_points(coll.id).unwrap().len(), 5);
    engine.close().await.unwrap();
}

/// A canceled capture leaves no task behind holding the engine: closing it releases the data
/// dir at once, so it reopens (as a daemon would right after a test or a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_capture_leaves_nothing_holding_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = crate::common::open(dir.path(), cairn_engine::IoBackendKind::Auto).await;
        let a = crate::common::disk(&engine, "a", 64 << 20).await.id;
        let d = engine.disk(a).unwrap();
        for half in 0..2u64 {
            let data = crate::common::pattern(3 + half, 32 << 20);
            d.write(half << 25, cairn_engine::IoBuf::from_slice(&data), false).await.unwrap();
        }
        crate::common::collection(&engine, "c", vec![a]).await;
        engine.close().await.unwrap();
    }
    for round in 0..8u32 {
        let engine = cairn_engine::Engine::open(cairn_engine::EngineConfig::new(dir.path()))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the data dir is still held: {e}"));
        let coll = engine.collection_by_name("c").unwrap();
        let req = cairn_engine::CreateRestorePoint { name: format!("rp{round}"), ..Default::default() };
        let (_, op) = engine.create_restore_point(coll.id, req).await.unwrap();
        // Let a few chunks get going, then cancel with every core busy at normal priority,
        // so the capture's idle-priority jobs still in flight are slow to finish.
        tokio::time::sleep(std::time::Duration::from_millis(u64::from(round) * 3)).await;
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let spinners: Vec<_> = (0..2)
            .map(|_| {
                let busy = busy.clone();
                std::thread::spawn(move || {
                    while busy.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        engine.cancel_operation(op.id).unwrap();
        crate::common::wait_op(&engine, op.id).await;
        engine.close().await.unwrap();
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        for s in spinners {
            s.join().unwrap();
        }
    }
}
