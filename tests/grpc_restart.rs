//! Restarts of the real cairnd under a gRPC client: a clean restart keeps every resource, and
//! a SIGKILL loses no acknowledged write and fails the interrupted capture cleanly.

use cairn_proto::v1 as pb;
use pb::read_disk_request::Source;

use crate::common::{assert_same, grpc, grpc_read, grpc_wait_op, grpc_write, pattern, start_cairnd, start_cairnd_env};

const MIB: u64 = 1 << 20;

async fn setup(ch: &tonic::transport::Channel) {
    pb::disks_client::DisksClient::new(ch.clone())
        .create_disk(pb::CreateDiskRequest { name: "d".into(), size_bytes: 8 * MIB, ..Default::default() })
        .await
        .unwrap();
    crate::common::grpc_group_and_collection(ch, "g", &["d"], "c").await;
}

async fn create_rp(ch: &tonic::transport::Channel, name: &str) -> pb::CreateRestorePointResponse {
    pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .create_restore_point(pb::CreateRestorePointRequest {
            collection: "c".into(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    setup(&ch).await;
    let content = pattern(4, (2 * MIB) as usize);
    grpc_write(&ch, "d", MIB, content.clone()).await;
    let r = create_rp(&ch, "rp1").await;
    grpc_wait_op(&ch, &r.operation.unwrap().id).await;
    drop(ch);
    daemon.stop();

    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    let disks = pb::disks_client::DisksClient::new(ch.clone())
        .list_disks(pb::ListDisksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disks.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["d"]);
    let rp = pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .get_restore_point(pb::GetRestorePointRequest {
            collection: "c".into(),
            restore_point: "rp1".into(),
            instance_view: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rp.provisioning_state(), pb::ProvisioningState::Succeeded);
    let mut want = vec![0u8; (8 * MIB) as usize];
    want[MIB as usize..(3 * MIB) as usize].copy_from_slice(&content);
    assert_same(&grpc_read(&ch, Source::Disk("d".into())).await.0, &want, "live disk after restart");
    let at_rp = Source::DiskRestorePoint(pb::DiskRestorePointRef {
        collection: "c".into(),
        restore_point: "rp1".into(),
        disk: "d".into(),
    });
    assert_same(&grpc_read(&ch, at_rp).await.0, &want, "restore point after restart");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write_and_fails_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd_env(dir.path(), &[], &[("CAIRN_FAILPOINTS", "capture::before_batch=sleep(5000)")]);
    let ch = grpc(dir.path()).await;
    setup(&ch).await;
    let before = pattern(5, (2 * MIB) as usize);
    grpc_write(&ch, "d", 0, before.clone()).await;
    let r = create_rp(&ch, "rp1").await;
    let op_id = r.operation.unwrap().id;
    // Written (and replied to) while the capture runs.
    let during = pattern(6, MIB as usize);
    grpc_write(&ch, "d", 4 * MIB, during.clone()).await;
    drop(ch);
    daemon.kill();

    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    let mut want = vec![0u8; (8 * MIB) as usize];
    want[..before.len()].copy_from_slice(&before);
    want[(4 * MIB) as usize..(5 * MIB) as usize].copy_from_slice(&during);
    assert_same(&grpc_read(&ch, Source::Disk("d".into())).await.0, &want, "live disk after SIGKILL");
    let rp = pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .get_restore_point(pb::GetRestorePointRequest {
            collection: "c".into(),
            restore_point: "rp1".into(),
            instance_view: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rp.provisioning_state(), pb::ProvisioningState::Failed, "{rp:?}");
    assert!(!rp.failure_reason.is_empty());
    let op = grpc_wait_op(&ch, &op_id).await;
    assert_eq!(op.state(), pb::OperationState::Failed, "{op:?}");
    assert!(!op.error.is_empty());
    // The next restore point captures everything.
    let r2 = create_rp(&ch, "rp2").await;
    let end = grpc_wait_op(&ch, &r2.operation.unwrap().id).await;
    assert_eq!(end.state(), pb::OperationState::Succeeded, "{end:?}");
    let at_rp = Source::DiskRestorePoint(pb::DiskRestorePointRef {
        collection: "c".into(),
        restore_point: "rp2".into(),
        disk: "d".into(),
    });
    assert_same(&grpc_read(&ch, at_rp).await.0, &want, "restore point after SIGKILL");
    daemon.stop();
}
