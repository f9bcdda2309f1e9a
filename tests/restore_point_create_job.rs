//! Creating a restore point is an engine job from the first hook to the last commit: a
//! caller that goes away changes nothing, every step that ran is unwound on failure, a
//! resize or a delete racing it cannot make it lie, and it never holds up a shutdown.

use std::time::Duration;

use cairn_engine::{
    ConsistencyMode, CreateCollection, CreateRestorePoint, ErrorKind, IoBuf, OperationState, ProvisioningState,
    ScriptHook,
};

use crate::common::{
    BACKENDS, assert_same, child, collection, disk, open, pattern, read_all, read_rp, restore_point, wait_op,
};

const MIB: u64 = 1 << 20;
const ENTRY: &str = "restore_point_create_job::child_process_entry";

fn req(name: &str) -> CreateRestorePoint {
    CreateRestorePoint { name: name.into(), ..Default::default() }
}

/// Waits until `cond` holds, failing after `secs` seconds with `what`.
async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_during_quiesce_still_gets_the_guest_thawed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", 4 * MIB).await.id;
    let log = dir.path().join("hook.log");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = quiesce ] && sleep 1\necho \"$1\" >> {}\necho ApplicationConsistent\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let group = engine
        .create_group(cairn_engine::CreateGroup { name: "vm".into(), disks: vec![a], ..Default::default() })
        .await
        .unwrap();
    let hook = ScriptHook { command: vec![script.display().to_string()], timeout_ms: 10_000 };
    let coll = engine
        .create_collection(CreateCollection {
            name: "c".into(),
            group: group.id,
            hook: Some(hook),
            ..Default::default()
        })
        .await
        .unwrap();
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, MIB as usize)), false).await.unwrap();

    // The caller gives up while the quiesce hook runs (an RPC deadline, a killed CLI).
    let app = CreateRestorePoint { consistency: ConsistencyMode::ApplicationConsistent, ..req("rp") };
    let gave_up = tokio::time::timeout(Duration::from_millis(300), engine.create_restore_point(coll.id, app)).await;
    assert!(gave_up.is_err(), "the creation was meant to outlast the caller");

    eventually(20, "the thaw hook never ran", || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("thaw"))).await;
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "quiesce\nthaw\n");
    eventually(20, "the restore point was never recorded", || engine.restore_point_by_name(coll.id, "rp").is_ok())
        .await;
    let rp = engine.restore_point_by_name(coll.id, "rp").unwrap();
    let op = wait_op(&engine, rp.operation).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    assert!(d.pending_capture().is_none(), "copy-before-write still armed after the capture");
    assert_same(&read_rp(&engine, rp.id, a).await, &read_all(&d).await, "the restore point the caller left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_paused_at_the_free_space_watermark_does_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", 4 * MIB).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    engine.disk(a).unwrap().write(0, IoBuf::from_slice(&pattern(1, MIB as usize)), false).await.unwrap();
    engine.set_free_space_watermark(u64::MAX);
    let (rp, op) = engine.create_restore_point(coll.id, req("rp")).await.unwrap();
    eventually(20, "the capture never paused", || engine.operation(op.id).unwrap().paused.is_some()).await;

    let closed = tokio::time::timeout(Duration::from_secs(20), engine.close()).await;

    assert!(closed.is_ok(), "close did not finish within 20 s");
    closed.unwrap().unwrap();
    drop(engine);
    let engine = open(dir.path(), BACKENDS[0]).await;
    let rp = engine.restore_point(rp.id).unwrap();
    assert!(matches!(rp.state, ProvisioningState::Failed { .. }), "{:?}", rp.state);
    assert!(engine.operation(op.id).unwrap().state.is_terminal());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_point_does_not_count_toward_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", 4 * MIB).await.id;
    let group = engine
        .create_group(cairn_engine::CreateGroup { name: "vm".into(), disks: vec![a], ..Default::default() })
        .await
        .unwrap();
    let coll = engine
        .create_collection(CreateCollection {
            name: "c".into(),
            group: group.id,
            max_restore_points: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    engine.disk(a).unwrap().write(0, IoBuf::from_slice(&pattern(1, MIB as usize)), false).await.unwrap();
    engine.set_free_space_watermark(u64::MAX);
    let (failed, op) = engine.create_restore_point(coll.id, req("canceled")).await.unwrap();
    eventually(20, "the capture never paused", || engine.operation(op.id).unwrap().paused.is_some()).await;
    engine.cancel_operation(op.id).unwrap();
    wait_op(&engine, op.id).await;
    assert!(matches!(engine.restore_point(failed.id).unwrap().state, ProvisioningState::Failed { .. }));
    engine.set_free_space_watermark(0);

    let rp = restore_point(&engine, coll.id, "rp", vec![]).await;

    assert_eq!(rp.state, ProvisioningState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_in_one_collection_waits_for_a_capture_in_another_of_the_same_group() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let a = disk(&engine, "a", 4 * MIB).await.id;
    let (group, here) = collection(&engine, "here", vec![a]).await;
    let there = engine
        .create_collection(CreateCollection {
            name: "there".into(),
            group: group.id,
            region: Some("elsewhere".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, 2 * MIB as usize)), false).await.unwrap();
    let old = restore_point(&engine, here.id, "old", vec![]).await;
    d.write(MIB, IoBuf::from_slice(&pattern(2, MIB as usize)), false).await.unwrap();
    let image = read_all(&d).await;
    engine.set_free_space_watermark(u64::MAX);
    let (rp, op) = engine.create_restore_point(there.id, req("new")).await.unwrap();
    eventually(20, "the capture never paused", || engine.operation(op.id).unwrap().paused.is_some()).await;

    let refused = engine.delete_restore_point(old.id).await.unwrap_err();
    let second = engine.create_restore_point(here.id, req("second")).await.unwrap_err();

    assert_eq!(refused.kind(), ErrorKind::FailedPrecondition, "{refused}");
    assert!(refused.to_string().contains("already being created"), "{refused}");
    assert_eq!(second.kind(), ErrorKind::FailedPrecondition, "{second}");
    engine.set_free_space_watermark(0);
    assert_eq!(wait_op(&engine, op.id).await.state, OperationState::Succeeded);
    engine.delete_restore_point(old.id).await.unwrap();
    assert_same(&read_rp(&engine, rp.id, a).await, &image, "the other collection's restore point");
}

/// The child's side of the failpoint tests below; does nothing as a plain test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_entry() {
    let Some((dir, phase)) = child::child_args() else { return };
    let engine = open(&dir, BACKENDS[0]).await;
    let a = disk(&engine, "a", 4 * MIB).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, MIB as usize)), false).await.unwrap();
    match phase.as_str() {
        // create::before_freeze sleeps: a resize and a write land between the capture state
        // being built and the freeze.
        "resize" => {
            restore_point(&engine, coll.id, "rp0", vec![]).await;
            let create = tokio::spawn({
                let engine = engine.clone();
                async move { engine.create_restore_point(coll.id, req("rp")).await }
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            d.write(2 * MIB, IoBuf::from_slice(&pattern(2, 4096)), false).await.unwrap();
            engine.resize_disk(a, 8 * MIB).await.unwrap();
            let image = read_all(&d).await;
            let (rp, op) = create.await.unwrap().unwrap();
            assert_eq!(wait_op(&engine, op.id).await.state, OperationState::Succeeded);
            assert_same(&read_rp(&engine, rp.id, a).await, &image, "restore point frozen after a resize");
            d.write(6 * MIB, IoBuf::from_slice(&pattern(3, 4096)), false).await.unwrap();
            let rp2 = restore_point(&engine, coll.id, "rp2", vec![]).await;
            assert_same(&read_rp(&engine, rp2.id, a).await, &read_all(&d).await, "the next restore point");
        }
        // The capture fails and so does recording it: the restore point is left Creating
        // with nothing running for it.
        "stuck" => {
            let (rp, op) = engine.create_restore_point(coll.id, req("stuck")).await.unwrap();
            wait_op(&engine, op.id).await;
            assert_eq!(engine.restore_point(rp.id).unwrap().state, ProvisioningState::Creating);
            engine.delete_restore_point(rp.id).await.unwrap();
            assert_eq!(engine.restore_point(rp.id).unwrap_err().kind(), ErrorKind::NotFound);
            assert_eq!(engine.store_stats().unwrap().references, 0);
        }
        other => panic!("unknown phase {other:?}"),
    }
    engine.close().await.unwrap();
}

#[test]
fn a_resize_racing_the_freeze_loses_no_change() {
    let dir = tempfile::tempdir().unwrap();
    child::run_ok(ENTRY, dir.path(), "resize", "create::before_freeze=sleep(600)");
}

#[test]
fn a_restore_point_left_creating_by_a_failed_capture_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    child::run_ok(ENTRY, dir.path(), "stuck", "capture::before_batch=return;capture::fail_capture=return");
}
