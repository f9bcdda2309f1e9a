//! Updating a collection, as Azure's restorePointCollections CreateOrUpdate does: over gRPC
//! and with `cairn collection update`, its limit and quiesce hook change (and take effect and
//! persist), a limit below the restore points it holds, a changed group or region and a bad
//! hook are refused with an error naming why, and refused requests change nothing.

use cairn_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{cairn_cli, grpc, grpc_disk, grpc_group_and_collection, grpc_restore_point, run_ok, start_cairnd};

const MIB: u64 = 1 << 20;

fn colls(ch: &Channel) -> pb::collections_client::CollectionsClient<Channel> {
    pb::collections_client::CollectionsClient::new(ch.clone())
}

async fn put(ch: &Channel, req: pb::CreateOrUpdateCollectionRequest) -> Result<pb::Collection, tonic::Status> {
    colls(ch).create_or_update_collection(req).await.map(tonic::Response::into_inner)
}

fn want(max: u32, hook: Option<pb::ScriptHook>) -> pb::CreateOrUpdateCollectionRequest {
    pb::CreateOrUpdateCollectionRequest {
        name: "c".into(),
        group: "vm".into(),
        max_restore_points: max,
        hook,
        ..Default::default()
    }
}

async fn create_rp(ch: &Channel, name: &str, mode: pb::ConsistencyMode) -> Result<pb::RestorePoint, tonic::Status> {
    grpc_restore_point(ch, "c", name, mode).await
}

async fn get(ch: &Channel) -> pb::Collection {
    colls(ch).get_collection(pb::GetCollectionRequest { collection: "c".into() }).await.unwrap().into_inner()
}

fn refused(r: Result<pb::Collection, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("the request must be refused");
    (s.code(), s.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_or_update_changes_limit_and_hook_and_refuses_fixed_or_impossible_settings() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    grpc_disk(&ch, "d", 4 * MIB).await;
    grpc_disk(&ch, "e", 4 * MIB).await;
    grpc_group_and_collection(&ch, "vm", &["d"], "c").await;
    pb::groups_client::GroupsClient::new(ch.clone())
        .create_group(pb::CreateGroupRequest {
            name: "vm2".into(),
            disks: vec!["e".into()],
            configuration: "{}".into(),
        })
        .await
        .unwrap();
    create_rp(&ch, "rp1", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    create_rp(&ch, "rp2", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    let script = dir.path().join("hook.sh");
    std::fs::write(&script, "[ \"$1\" = quiesce ] && echo ApplicationConsistent\nexit 0\n").unwrap();
    let hook = pb::ScriptHook { command: vec!["/bin/sh".into(), script.display().to_string()], timeout_ms: 10_000 };

    let updated = put(&ch, want(3, Some(hook.clone()))).await.unwrap();
    let rp3 = create_rp(&ch, "rp3", pb::ConsistencyMode::ApplicationConsistent).await.unwrap();
    let over_limit = create_rp(&ch, "rp4", pb::ConsistencyMode::CrashConsistent).await.unwrap_err();
    let below_count = refused(put(&ch, want(2, Some(hook.clone()))).await);
    let other_group =
        refused(put(&ch, pb::CreateOrUpdateCollectionRequest { group: "vm2".into(), ..want(3, None) }).await);
    let other_region =
        refused(put(&ch, pb::CreateOrUpdateCollectionRequest { region: "elsewhere".into(), ..want(3, None) }).await);
    let bad_hook = refused(put(&ch, want(3, Some(pb::ScriptHook { timeout_ms: 0, ..hook.clone() }))).await);
    let after_refusals = get(&ch).await;
    daemon.stop();
    let daemon = start_cairnd(dir.path(), &[]);
    let after_restart = get(&grpc(dir.path()).await).await;

    assert_eq!((updated.max_restore_points, updated.hook.as_ref(), updated.restore_point_count), (3, Some(&hook), 2));
    assert_eq!(rp3.consistency_mode(), pb::ConsistencyMode::ApplicationConsistent, "the new hook ran: {rp3:?}");
    assert_eq!(over_limit.code(), Code::ResourceExhausted, "the new limit applies: {over_limit:?}");
    assert_eq!(below_count.0, Code::FailedPrecondition, "{below_count:?}");
    assert!(below_count.1.contains("holds 3 restore points"), "{below_count:?}");
    assert_eq!(other_group.0, Code::InvalidArgument, "{other_group:?}");
    assert!(other_group.1.starts_with("invalid group: ") && other_group.1.contains("cannot change"), "{other_group:?}");
    assert_eq!(other_region.0, Code::InvalidArgument, "{other_region:?}");
    assert!(other_region.1.starts_with("invalid region: "), "{other_region:?}");
    assert_eq!(bad_hook.0, Code::InvalidArgument, "{bad_hook:?}");
    assert!(bad_hook.1.contains("hook.timeout_ms"), "{bad_hook:?}");
    assert_eq!((after_refusals.max_restore_points, after_refusals.hook.as_ref()), (3, Some(&hook)));
    assert_eq!(after_restart, after_refusals, "the update persisted");
    daemon.stop();
}

fn cli_json(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run_ok(cairn_cli(dir).args(["--output", "json"]).args(args))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_collection_update_changes_only_what_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    grpc_disk(&ch, "d", 4 * MIB).await;
    grpc_group_and_collection(&ch, "vm", &["d"], "c").await;
    create_rp(&ch, "rp1", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    create_rp(&ch, "rp2", pb::ConsistencyMode::CrashConsistent).await.unwrap();

    let hooked = cli_json(dir.path(), &["collection", "update", "c", "--hook-command", "/bin/true"]);
    let limited = cli_json(dir.path(), &["collection", "update", "c", "--max-restore-points", "10"]);
    let timed = cli_json(dir.path(), &["collection", "update", "c", "--hook-timeout-ms", "5000"]);
    let unhooked = cli_json(dir.path(), &["collection", "update", "c", "--no-hook"]);
    let too_low =
        cairn_cli(dir.path()).args(["collection", "update", "c", "--max-restore-points", "1"]).output().unwrap();
    let orphan_timeout =
        cairn_cli(dir.path()).args(["collection", "update", "c", "--hook-timeout-ms", "5"]).output().unwrap();

    assert_eq!(hooked["hook"], serde_json::json!({"command": ["/bin/true"], "timeout_ms": 60_000}), "{hooked}");
    assert_eq!(hooked["max_restore_points"], 200, "{hooked}");
    assert_eq!((&limited["max_restore_points"], &limited["hook"]), (&10.into(), &hooked["hook"]), "{limited}");
    assert_eq!(timed["hook"], serde_json::json!({"command": ["/bin/true"], "timeout_ms": 5000}), "{timed}");
    assert_eq!((&unhooked["hook"], &unhooked["max_restore_points"]), (&serde_json::Value::Null, &10.into()));
    let stderr = String::from_utf8_lossy(&too_low.stderr);
    assert_eq!(too_low.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: FAILED_PRECONDITION: ") && stderr.contains("holds 2 restore points"),
        "{stderr}"
    );
    let stderr = String::from_utf8_lossy(&orphan_timeout.stderr);
    assert_eq!(orphan_timeout.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--hook-command"), "{stderr}");
    assert_eq!(get(&ch).await.max_restore_points, 10, "refused updates change nothing");
    daemon.stop();
}
