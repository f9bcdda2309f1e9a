//! A bad-input table for every RPC of the real cairnd: each bad request gets its code, and
//! the daemon still answers afterwards.

use cairn_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{grpc, grpc_wait_op, start_cairnd};

const UNKNOWN: &str = "00000000-0000-4000-8000-000000000000";

type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send>>;

fn disks(ch: &Channel) -> pb::disks_client::DisksClient<Channel> {
    pb::disks_client::DisksClient::new(ch.clone())
}
fn groups(ch: &Channel) -> pb::groups_client::GroupsClient<Channel> {
    pb::groups_client::GroupsClient::new(ch.clone())
}
fn colls(ch: &Channel) -> pb::collections_client::CollectionsClient<Channel> {
    pb::collections_client::CollectionsClient::new(ch.clone())
}
fn rps(ch: &Channel) -> pb::restore_points_client::RestorePointsClient<Channel> {
    pb::restore_points_client::RestorePointsClient::new(ch.clone())
}
fn restores(ch: &Channel) -> pb::restores_client::RestoresClient<Channel> {
    pb::restores_client::RestoresClient::new(ch.clone())
}
fn ops(ch: &Channel) -> pb::operations_client::OperationsClient<Channel> {
    pb::operations_client::OperationsClient::new(ch.clone())
}
fn store(ch: &Channel) -> pb::store_client::StoreClient<Channel> {
    pb::store_client::StoreClient::new(ch.clone())
}
fn data(ch: &Channel) -> pb::disk_data_client::DiskDataClient<Channel> {
    pb::disk_data_client::DiskDataClient::new(ch.clone())
}
fn rp_ref(coll: &str, rp: &str, disk: &str) -> Option<pb::DiskRestorePointRef> {
    Some(pb::DiskRestorePointRef { collection: coll.into(), restore_point: rp.into(), disk: disk.into() })
}

/// Reads a whole ReadDisk stream; the error, if any, whether at the call or in the stream.
async fn read_all(ch: Channel, req: pb::ReadDiskRequest) -> Result<(), tonic::Status> {
    let mut s = data(&ch).read_disk(req).await?.into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_bad_input_with_its_code_and_the_daemon_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    // Fixtures: disk d in group g with collection c holding restore point rp; lone disk free.
    for name in ["d", "free"] {
        disks(&ch)
            .create_disk(pb::CreateDiskRequest { name: name.into(), size_bytes: 1 << 20, ..Default::default() })
            .await
            .unwrap();
    }
    groups(&ch)
        .create_group(pb::CreateGroupRequest { name: "g".into(), disks: vec!["d".into()], ..Default::default() })
        .await
        .unwrap();
    colls(&ch)
        .create_or_update_collection(pb::CreateOrUpdateCollectionRequest {
            name: "c".into(),
            group: "g".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = rps(&ch)
        .create_restore_point(pb::CreateRestorePointRequest {
            collection: "c".into(),
            name: "rp".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let op_id = r.operation.unwrap().id;
    grpc_wait_op(&ch, &op_id).await;

    let c = ch.clone();
    let table: Vec<(&str, Code, Call)> = vec![
        (
            "CreateDisk empty name",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .create_disk(pb::CreateDiskRequest {
                            name: String::new(),
                            size_bytes: 4096,
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateDisk bad name",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .create_disk(pb::CreateDiskRequest {
                            name: "a/b".into(),
                            size_bytes: 4096,
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateDisk zero size",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .create_disk(pb::CreateDiskRequest { name: "z".into(), size_bytes: 0, ..Default::default() })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateDisk unaligned size",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .create_disk(pb::CreateDiskRequest { name: "z".into(), size_bytes: 4097, ..Default::default() })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateDisk huge size",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .create_disk(pb::CreateDiskRequest {
                            name: "z".into(),
                            size_bytes: u64::MAX - 4095,
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateDisk bad chunk size",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .create_disk(pb::CreateDiskRequest {
                            name: "z".into(),
                            size_bytes: 4096,
                            chunk_size_bytes: 3000,
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateDisk existing",
            Code::AlreadyExists,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .create_disk(pb::CreateDiskRequest { name: "d".into(), size_bytes: 4096, ..Default::default() })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "GetDisk empty",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move { disks(&c).get_disk(pb::GetDiskRequest { disk: String::new() }).await.map(drop) }
            }),
        ),
        (
            "GetDisk unknown id",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move { disks(&c).get_disk(pb::GetDiskRequest { disk: UNKNOWN.into() }).await.map(drop) }
            }),
        ),
        (
            "ListDisks bad token",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c).list_disks(pb::ListDisksRequest { page_size: 0, page_token: "zz".into() }).await.map(drop)
                }
            }),
        ),
        (
            "ResizeDisk shrink",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .resize_disk(pb::ResizeDiskRequest { disk: "free".into(), size_bytes: 4096 })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "ResizeDisk unaligned",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .resize_disk(pb::ResizeDiskRequest { disk: "free".into(), size_bytes: (2 << 20) + 1 })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "ResizeDisk unknown",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move {
                    disks(&c)
                        .resize_disk(pb::ResizeDiskRequest { disk: "nope".into(), size_bytes: 2 << 20 })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "DeleteDisk in a group",
            Code::FailedPrecondition,
            Box::pin({
                let c = c.clone();
                async move { disks(&c).delete_disk(pb::DeleteDiskRequest { disk: "d".into() }).await.map(drop) }
            }),
        ),
        (
            "CreateGroup empty name",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    groups(&c)
                        .create_group(pb::CreateGroupRequest { name: String::new(), ..Default::default() })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateGroup unknown disk",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move {
                    groups(&c)
                        .create_group(pb::CreateGroupRequest {
                            name: "g2".into(),
                            disks: vec!["nope".into()],
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateGroup disk taken",
            Code::FailedPrecondition,
            Box::pin({
                let c = c.clone();
                async move {
                    groups(&c)
                        .create_group(pb::CreateGroupRequest {
                            name: "g2".into(),
                            disks: vec!["d".into()],
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "GetGroup unknown",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move { groups(&c).get_group(pb::GetGroupRequest { group: UNKNOWN.into() }).await.map(drop) }
            }),
        ),
        (
            "UpdateGroup empty",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move { groups(&c).update_group(pb::UpdateGroupRequest::default()).await.map(drop) }
            }),
        ),
        (
            "DeleteGroup unknown",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move { groups(&c).delete_group(pb::DeleteGroupRequest { group: "nope".into() }).await.map(drop) }
            }),
        ),
        (
            "CreateCollection bad max",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    colls(&c)
                        .create_or_update_collection(pb::CreateOrUpdateCollectionRequest {
                            name: "c2".into(),
                            group: "g".into(),
                            max_restore_points: 1_000_000,
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateOrUpdateCollection changed region",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    colls(&c)
                        .create_or_update_collection(pb::CreateOrUpdateCollectionRequest {
                            name: "c".into(),
                            group: "g".into(),
                            region: "elsewhere".into(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateCollection empty group",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    colls(&c)
                        .create_or_update_collection(pb::CreateOrUpdateCollectionRequest {
                            name: "c2".into(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "GetCollection unknown",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move {
                    colls(&c).get_collection(pb::GetCollectionRequest { collection: "nope".into() }).await.map(drop)
                }
            }),
        ),
        (
            "DeleteCollection not empty",
            Code::FailedPrecondition,
            Box::pin({
                let c = c.clone();
                async move {
                    colls(&c)
                        .delete_collection(pb::DeleteCollectionRequest { collection: "c".into(), cascade: false })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateRestorePoint empty name",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    rps(&c)
                        .create_restore_point(pb::CreateRestorePointRequest {
                            collection: "c".into(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateRestorePoint duplicate",
            Code::AlreadyExists,
            Box::pin({
                let c = c.clone();
                async move {
                    rps(&c)
                        .create_restore_point(pb::CreateRestorePointRequest {
                            collection: "c".into(),
                            name: "rp".into(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateRestorePoint excluding all",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    rps(&c)
                        .create_restore_point(pb::CreateRestorePointRequest {
                            collection: "c".into(),
                            name: "x".into(),
                            exclude_disks: vec!["d".into()],
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateRestorePoint foreign exclude",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    rps(&c)
                        .create_restore_point(pb::CreateRestorePointRequest {
                            collection: "c".into(),
                            name: "x".into(),
                            exclude_disks: vec!["free".into()],
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CreateRestorePoint bad mode",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    rps(&c)
                        .create_restore_point(pb::CreateRestorePointRequest {
                            collection: "c".into(),
                            name: "x".into(),
                            consistency_mode: 99,
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "GetRestorePoint unknown",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move {
                    rps(&c)
                        .get_restore_point(pb::GetRestorePointRequest {
                            collection: "c".into(),
                            restore_point: "nope".into(),
                            instance_view: true,
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "ListRestorePoints empty collection",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move { rps(&c).list_restore_points(pb::ListRestorePointsRequest::default()).await.map(drop) }
            }),
        ),
        (
            "DeleteRestorePoint unknown id",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move {
                    rps(&c)
                        .delete_restore_point(pb::DeleteRestorePointRequest {
                            collection: String::new(),
                            restore_point: UNKNOWN.into(),
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "RestoreDisk unknown disk",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move {
                    restores(&c)
                        .restore_disk(pb::RestoreDiskRequest {
                            collection: "c".into(),
                            restore_point: "rp".into(),
                            disk: "free".into(),
                            name: "n".into(),
                            direct_io: false,
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "RestoreDisk existing name",
            Code::AlreadyExists,
            Box::pin({
                let c = c.clone();
                async move {
                    restores(&c)
                        .restore_disk(pb::RestoreDiskRequest {
                            collection: "c".into(),
                            restore_point: "rp".into(),
                            disk: "d".into(),
                            name: "free".into(),
                            direct_io: false,
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "RestoreGroup empty name",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    restores(&c)
                        .restore_group(pb::RestoreGroupRequest {
                            collection: "c".into(),
                            restore_point: "rp".into(),
                            group_name: String::new(),
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "GetOperation not a uuid",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move { ops(&c).get_operation(pb::GetOperationRequest { id: "x".into() }).await.map(drop) }
            }),
        ),
        (
            "GetOperation unknown",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move { ops(&c).get_operation(pb::GetOperationRequest { id: UNKNOWN.into() }).await.map(drop) }
            }),
        ),
        (
            "ListOperations huge page",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    ops(&c)
                        .list_operations(pb::ListOperationsRequest { page_size: 1 << 30, ..Default::default() })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "CancelOperation ended",
            Code::FailedPrecondition,
            Box::pin({
                let c = c.clone();
                let id = op_id.clone();
                async move { ops(&c).cancel_operation(pb::CancelOperationRequest { id }).await.map(drop) }
            }),
        ),
        (
            "WatchOperation unknown",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move { ops(&c).watch_operation(pb::WatchOperationRequest { id: UNKNOWN.into() }).await.map(drop) }
            }),
        ),
        (
            "CollectGarbage live share over 100",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    store(&c)
                        .collect_garbage(pb::CollectGarbageRequest { live_share_percent: Some(101) })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "Verify unknown restore point",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                let req = pb::VerifyRequest { collection: "c".into(), restore_point: "nope".into() };
                async move { store(&c).verify(req).await.map(drop) }
            }),
        ),
        (
            "Verify collection without restore point",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                let req = pb::VerifyRequest { collection: "c".into(), restore_point: String::new() };
                async move { store(&c).verify(req).await.map(drop) }
            }),
        ),
        (
            "ApplyRetention unknown collection",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                let policy = Some(pb::RetentionPolicy { keep_last: 1, ..Default::default() });
                let req = pb::ApplyRetentionRequest { collection: "nope".into(), policy, dry_run: true };
                async move { store(&c).apply_retention(req).await.map(drop) }
            }),
        ),
        (
            "ApplyRetention policy keeps nothing",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                let req = pb::ApplyRetentionRequest { collection: "c".into(), policy: None, dry_run: false };
                async move { store(&c).apply_retention(req).await.map(drop) }
            }),
        ),
        ("ReadDisk no source", Code::InvalidArgument, Box::pin(read_all(c.clone(), pb::ReadDiskRequest::default()))),
        (
            "ReadDisk past the end",
            Code::InvalidArgument,
            Box::pin(read_all(
                c.clone(),
                pb::ReadDiskRequest {
                    source: Some(pb::read_disk_request::Source::Disk("d".into())),
                    offset: 1 << 20,
                    length: 1,
                },
            )),
        ),
        (
            "ReadDisk overflowing range",
            Code::InvalidArgument,
            Box::pin(read_all(
                c.clone(),
                pb::ReadDiskRequest {
                    source: Some(pb::read_disk_request::Source::Disk("d".into())),
                    offset: 4096,
                    length: u64::MAX,
                },
            )),
        ),
        (
            "ReadDisk unknown restore point",
            Code::NotFound,
            Box::pin(read_all(
                c.clone(),
                pb::ReadDiskRequest {
                    source: Some(pb::read_disk_request::Source::DiskRestorePoint(rp_ref("c", "nope", "d").unwrap())),
                    offset: 0,
                    length: 0,
                },
            )),
        ),
        (
            "WriteDisk empty stream",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move { data(&c).write_disk(futures::stream::iter(Vec::<pb::WriteDiskRequest>::new())).await.map(drop) }
            }),
        ),
        (
            "WriteDisk past the end",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                let m =
                    pb::WriteDiskRequest { disk: "free".into(), offset: 1 << 20, data: vec![1; 4096], zero_length: 0 };
                async move { data(&c).write_disk(futures::stream::iter(vec![m])).await.map(drop) }
            }),
        ),
        (
            "WriteDisk two disks",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                let a = pb::WriteDiskRequest { disk: "free".into(), offset: 0, data: vec![1; 4096], zero_length: 0 };
                let b = pb::WriteDiskRequest { disk: "d".into(), offset: 0, data: vec![1; 4096], zero_length: 0 };
                async move { data(&c).write_disk(futures::stream::iter(vec![a, b])).await.map(drop) }
            }),
        ),
        (
            "ListChangedBlocks missing second",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    data(&c)
                        .list_changed_blocks(pb::ListChangedBlocksRequest {
                            first: rp_ref("c", "rp", "d"),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "ListChangedBlocks missing first",
            Code::InvalidArgument,
            Box::pin({
                let c = c.clone();
                async move {
                    data(&c)
                        .list_changed_blocks(pb::ListChangedBlocksRequest {
                            second_restore_point: "rp".into(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "ListAllocatedBlocks unknown disk",
            Code::NotFound,
            Box::pin({
                let c = c.clone();
                async move {
                    data(&c)
                        .list_allocated_blocks(pb::ListAllocatedBlocksRequest {
                            disk_restore_point: rp_ref("c", "rp", "nope"),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "BeginGetAccess",
            Code::Unimplemented,
            Box::pin({
                let c = c.clone();
                async move {
                    pb::access_client::AccessClient::new(c)
                        .begin_get_access(pb::BeginGetAccessRequest::default())
                        .await
                        .map(drop)
                }
            }),
        ),
        (
            "EndGetAccess",
            Code::Unimplemented,
            Box::pin({
                let c = c.clone();
                async move {
                    pb::access_client::AccessClient::new(c)
                        .end_get_access(pb::EndGetAccessRequest::default())
                        .await
                        .map(drop)
                }
            }),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, want, call) in table {
        match call.await {
            Ok(()) => wrong.push(format!("{what}: succeeded, want {want:?}")),
            Err(s) if s.code() != want => {
                wrong.push(format!("{what}: {:?} {:?}, want {want:?}", s.code(), s.message()))
            }
            Err(s) => assert!(!s.message().is_empty(), "{what}: empty message"),
        }
        // The daemon still answers.
        disks(&ch)
            .get_disk(pb::GetDiskRequest { disk: "d".into() })
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
    assert!(wrong.is_empty(), "wrong codes:\n{}", wrong.join("\n"));
    daemon.stop();
}

/// The error of a WriteDisk stream of one message.
async fn write_one(ch: &Channel, offset: u64, data_bytes: Vec<u8>, zero_length: u64) -> tonic::Status {
    let m = pb::WriteDiskRequest { disk: "d".into(), offset, data: data_bytes, zero_length };
    data(ch).write_disk(futures::stream::iter([m])).await.expect_err("the write must be refused")
}

fn changed(first: Option<pb::DiskRestorePointRef>, second: &str) -> pb::ListChangedBlocksRequest {
    pb::ListChangedBlocksRequest { first, second_restore_point: second.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_name_the_request_field_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    crate::common::grpc_disk(&ch, "d", 1 << 20).await;
    crate::common::grpc_group_and_collection(&ch, "g", &["d"], "c").await;
    for name in ["rp1", "rp2"] {
        crate::common::grpc_restore_point(&ch, "c", name, pb::ConsistencyMode::CrashConsistent).await.unwrap();
    }
    let list = |req| {
        let ch = ch.clone();
        async move { data(&ch).list_changed_blocks(req).await.expect_err("must be refused") }
    };

    let statuses = [
        write_one(&ch, (1 << 20) - 4096, vec![1; 8192], 0).await,
        write_one(&ch, 4096, Vec::new(), 1 << 20).await,
        write_one(&ch, 2 << 20, vec![1; 4096], 0).await,
        list(changed(rp_ref("c", "", "d"), "rp2")).await,
        list(changed(rp_ref("c", "rp2", "d"), "rp1")).await,
        list(changed(rp_ref("c", "rp1", "d"), "")).await,
        read_all(
            ch.clone(),
            pb::ReadDiskRequest {
                source: Some(pb::read_disk_request::Source::DiskRestorePoint(rp_ref("c", "rp1", "").unwrap())),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
        ops(&ch).get_operation(pb::GetOperationRequest { id: "nope".into() }).await.unwrap_err(),
    ];

    let fields: Vec<(Code, &str)> =
        statuses.iter().map(|s| (s.code(), s.message().split(':').next().unwrap_or(""))).collect();
    let invalid = |f| (Code::InvalidArgument, f);
    assert_eq!(
        fields,
        [
            invalid("invalid data"),
            invalid("invalid zero_length"),
            invalid("invalid offset"),
            invalid("invalid first.restore_point"),
            invalid("invalid second_restore_point"),
            invalid("invalid second_restore_point"),
            invalid("invalid disk_restore_point.disk"),
            invalid("invalid id"),
        ],
        "{statuses:#?}"
    );
    daemon.stop();
}
