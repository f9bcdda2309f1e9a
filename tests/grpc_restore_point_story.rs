//! The restore point story over gRPC against the real cairnd: disks, a group, data written
//! with WriteDisk, a collection, restore points with and without excluded disks, incremental
//! sizes, restores of a disk and a group, deletion, the limit, and a concurrent creation
//! refused.

use cairn_proto::v1 as pb;
use pb::read_disk_request::Source;
use tonic::Code;

use crate::common::{assert_same, grpc, grpc_read, grpc_wait_op, grpc_write, pattern, start_cairnd, start_cairnd_env};

const MIB: u64 = 1 << 20;

fn rp_ref(coll: &str, rp: &str, disk: &str) -> Source {
    Source::DiskRestorePoint(pb::DiskRestorePointRef {
        collection: coll.into(),
        restore_point: rp.into(),
        disk: disk.into(),
    })
}

async fn create_rp(
    ch: &tonic::transport::Channel,
    coll: &str,
    name: &str,
    exclude: &[&str],
) -> Result<pb::RestorePoint, tonic::Status> {
    let mut rps = pb::restore_points_client::RestorePointsClient::new(ch.clone());
    let r = rps
        .create_restore_point(pb::CreateRestorePointRequest {
            collection: coll.into(),
            name: name.into(),
            description: format!("{name} by the story"),
            exclude_disks: exclude.iter().map(|s| (*s).to_owned()).collect(),
            consistency_mode: pb::ConsistencyMode::CrashConsistent.into(),
        })
        .await?
        .into_inner();
    let op = r.operation.unwrap();
    assert_eq!(op.kind(), pb::OperationKind::Capture);
    let end = grpc_wait_op(ch, &op.id).await;
    assert_eq!(end.state(), pb::OperationState::Succeeded, "{end:?}");
    let rp = rps
        .get_restore_point(pb::GetRestorePointRequest {
            collection: coll.into(),
            restore_point: name.into(),
            instance_view: true,
        })
        .await?
        .into_inner();
    Ok(rp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_point_story_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    let mut disks = pb::disks_client::DisksClient::new(ch.clone());
    for name in ["os", "data"] {
        let d = disks
            .create_disk(pb::CreateDiskRequest { name: name.into(), size_bytes: 16 * MIB, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.size_bytes, 16 * MIB);
    }
    let group = pb::groups_client::GroupsClient::new(ch.clone())
        .create_group(pb::CreateGroupRequest {
            name: "vm1".into(),
            disks: vec!["os".into(), "data".into()],
            configuration: "{\"cpus\":2}".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(group.disk_ids.len(), 2);
    let os0 = pattern(1, (4 * MIB) as usize);
    let data0 = pattern(2, (2 * MIB) as usize);
    grpc_write(&ch, "os", 0, os0.clone()).await;
    grpc_write(&ch, "data", 8 * MIB, data0.clone()).await;
    let mut colls = pb::collections_client::CollectionsClient::new(ch.clone());
    let coll = colls
        .create_or_update_collection(pb::CreateOrUpdateCollectionRequest {
            name: "vm1-rps".into(),
            group: "vm1".into(),
            max_restore_points: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(coll.max_restore_points, 3);

    // Full restore point, then an increment of 256 KiB on os with data excluded.
    let rp1 = create_rp(&ch, "vm1-rps", "rp1", &[]).await.unwrap();
    assert_eq!(rp1.provisioning_state(), pb::ProvisioningState::Succeeded);
    assert_eq!(rp1.disks.len(), 2);
    assert_eq!(rp1.configuration, "{\"cpus\":2}");
    let view = rp1.instance_view.as_ref().unwrap();
    assert!(view.disks.iter().all(|d| d.percent >= 100.0), "{view:?}");
    let full_bytes: u64 = rp1.disks.iter().map(|d| d.bytes_stored).sum();
    let os1 = pattern(3, (256 << 10) as usize);
    grpc_write(&ch, "os", MIB, os1.clone()).await;
    let rp2 = create_rp(&ch, "vm1-rps", "rp2", &["data"]).await.unwrap();
    assert_eq!(rp2.disks.len(), 1);
    assert_eq!(rp2.excluded_disk_ids.len(), 1);
    let incr_bytes: u64 = rp2.disks.iter().map(|d| d.bytes_stored).sum();
    assert!(incr_bytes > 0 && incr_bytes * 4 < full_bytes, "increment {incr_bytes} vs full {full_bytes}");
    assert_eq!(rp2.disks[0].chunks_captured, 1, "{rp2:?}");

    // Changed and allocated blocks of os.
    let mut data = pb::disk_data_client::DiskDataClient::new(ch.clone());
    let changed = data
        .list_changed_blocks(pb::ListChangedBlocksRequest {
            first: Some(pb::DiskRestorePointRef {
                collection: "vm1-rps".into(),
                restore_point: "rp1".into(),
                disk: "os".into(),
            }),
            second_restore_point: "rp2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.blocks.iter().map(|b| b.offset).collect::<Vec<_>>(), vec![MIB]);
    let allocated = data
        .list_allocated_blocks(pb::ListAllocatedBlocksRequest {
            disk_restore_point: Some(pb::DiskRestorePointRef {
                collection: "vm1-rps".into(),
                restore_point: "rp1".into(),
                disk: "os".into(),
            }),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allocated.blocks.len(), 10, "first page of 16 allocated chunks");
    assert!(!allocated.next_page_token.is_empty());

    // The restore points read back what was written, zero runs sent as such.
    let mut os_at_rp1 = vec![0u8; (16 * MIB) as usize];
    os_at_rp1[..os0.len()].copy_from_slice(&os0);
    let (got, zero_runs) = grpc_read(&ch, rp_ref("vm1-rps", "rp1", "os")).await;
    assert_same(&got, &os_at_rp1, "os at rp1");
    assert!(zero_runs >= 1);
    let mut os_at_rp2 = os_at_rp1.clone();
    os_at_rp2[MIB as usize..MIB as usize + os1.len()].copy_from_slice(&os1);
    assert_same(&grpc_read(&ch, rp_ref("vm1-rps", "rp2", "os")).await.0, &os_at_rp2, "os at rp2");

    // Restore one disk and the whole group.
    let mut restores = pb::restores_client::RestoresClient::new(ch.clone());
    let r = restores
        .restore_disk(pb::RestoreDiskRequest {
            collection: "vm1-rps".into(),
            restore_point: "rp1".into(),
            disk: "os".into(),
            name: "os-restored".into(),
            direct_io: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.disk.as_ref().unwrap().source.as_ref().unwrap().restore_point_id, rp1.id);
    assert_same(&grpc_read(&ch, Source::Disk("os-restored".into())).await.0, &os_at_rp1, "restored os");
    let end = grpc_wait_op(&ch, &r.operation.unwrap().id).await;
    assert_eq!(end.state(), pb::OperationState::Succeeded, "{end:?}");
    let g = restores
        .restore_group(pb::RestoreGroupRequest {
            collection: "vm1-rps".into(),
            restore_point: "rp1".into(),
            group_name: "vm1-copy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.disks.len(), 2);
    assert_eq!(g.group.unwrap().configuration, "{\"cpus\":2}");
    let mut data_at_rp1 = vec![0u8; (16 * MIB) as usize];
    data_at_rp1[(8 * MIB) as usize..(10 * MIB) as usize].copy_from_slice(&data0);
    assert_same(&grpc_read(&ch, Source::Disk("vm1-copy-data".into())).await.0, &data_at_rp1, "restored group data");

    // The limit: a third fits, a fourth is refused; deleting one makes room again.
    create_rp(&ch, "vm1-rps", "rp3", &[]).await.unwrap();
    let e = create_rp(&ch, "vm1-rps", "rp4", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let mut rps = pb::restore_points_client::RestorePointsClient::new(ch.clone());
    rps.delete_restore_point(pb::DeleteRestorePointRequest {
        collection: "vm1-rps".into(),
        restore_point: "rp3".into(),
    })
    .await
    .unwrap();
    let list = rps
        .list_restore_points(pb::ListRestorePointsRequest { collection: "vm1-rps".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.restore_points.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["rp1", "rp2"]);
    create_rp(&ch, "vm1-rps", "rp4", &[]).await.unwrap();
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_creation_while_one_runs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Every capture batch sleeps, so the first capture is still running when the second comes.
    let daemon = start_cairnd_env(dir.path(), &[], &[("CAIRN_FAILPOINTS", "capture::before_batch=sleep(1500)")]);
    let ch = grpc(dir.path()).await;
    pb::disks_client::DisksClient::new(ch.clone())
        .create_disk(pb::CreateDiskRequest { name: "d".into(), size_bytes: 4 * MIB, ..Default::default() })
        .await
        .unwrap();
    grpc_write(&ch, "d", 0, pattern(9, MIB as usize)).await;
    crate::common::grpc_group_and_collection(&ch, "g", &["d"], "c").await;
    let mut rps = pb::restore_points_client::RestorePointsClient::new(ch.clone());
    let first = rps
        .create_restore_point(pb::CreateRestorePointRequest {
            collection: "c".into(),
            name: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.restore_point.unwrap().provisioning_state(), pb::ProvisioningState::Creating);
    let e = rps
        .create_restore_point(pb::CreateRestorePointRequest {
            collection: "c".into(),
            name: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("already being created"), "{}", e.message());
    // The watch pushes progress until the end.
    let mut watch = pb::operations_client::OperationsClient::new(ch.clone())
        .watch_operation(pb::WatchOperationRequest { id: first.operation.unwrap().id })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(op) = watch.message().await.unwrap() {
        last = Some(op);
    }
    assert_eq!(last.unwrap().state(), pb::OperationState::Succeeded);
    daemon.stop();
}
