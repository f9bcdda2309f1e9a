//! A bad-input table for every RPC of the real cairnd: each bad request gets its code and a
//! message that says what is wrong (an invalid argument names the request field at fault),
//! and harms nothing: the daemon answers after each one, and when the table is done the
//! daemon holds exactly what it held before.

use cairn_proto::v1 as pb;
use pb::read_disk_request::Source;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::{grpc, grpc_restore_point, grpc_wait_op, start_cairnd};

const UNKNOWN: &str = "00000000-0000-4000-8000-000000000000";

/// One call: an RPC and its request.
enum Rpc {
    CreateDisk(pb::CreateDiskRequest),
    GetDisk(pb::GetDiskRequest),
    ListDisks(pb::ListDisksRequest),
    ResizeDisk(pb::ResizeDiskRequest),
    DeleteDisk(pb::DeleteDiskRequest),
    CreateGroup(pb::CreateGroupRequest),
    GetGroup(pb::GetGroupRequest),
    UpdateGroup(pb::UpdateGroupRequest),
    DeleteGroup(pb::DeleteGroupRequest),
    CreateOrUpdateCollection(pb::CreateOrUpdateCollectionRequest),
    GetCollection(pb::GetCollectionRequest),
    DeleteCollection(pb::DeleteCollectionRequest),
    CreateRestorePoint(pb::CreateRestorePointRequest),
    GetRestorePoint(pb::GetRestorePointRequest),
    ListRestorePoints(pb::ListRestorePointsRequest),
    DeleteRestorePoint(pb::DeleteRestorePointRequest),
    RestoreDisk(pb::RestoreDiskRequest),
    RestoreGroup(pb::RestoreGroupRequest),
    GetOperation(pb::GetOperationRequest),
    ListOperations(pb::ListOperationsRequest),
    CancelOperation(pb::CancelOperationRequest),
    WatchOperation(pb::WatchOperationRequest),
    CollectGarbage(pb::CollectGarbageRequest),
    Verify(pb::VerifyRequest),
    ApplyRetention(pb::ApplyRetentionRequest),
    /// Read to its end: the error may come at the call or in the stream.
    ReadDisk(pb::ReadDiskRequest),
    /// One stream of these messages.
    WriteDisk(Vec<pb::WriteDiskRequest>),
    ListChangedBlocks(pb::ListChangedBlocksRequest),
    ListAllocatedBlocks(pb::ListAllocatedBlocksRequest),
    BeginGetAccess(pb::BeginGetAccessRequest),
    EndGetAccess(pb::EndGetAccessRequest),
}

impl Rpc {
    /// Makes the call with the generated client; what came back, short of the response.
    async fn call(self, ch: &Channel) -> Result<(), Status> {
        use pb::access_client::AccessClient;
        use pb::collections_client::CollectionsClient;
        use pb::disk_data_client::DiskDataClient;
        use pb::disks_client::DisksClient;
        use pb::groups_client::GroupsClient;
        use pb::operations_client::OperationsClient;
        use pb::restore_points_client::RestorePointsClient;
        use pb::restores_client::RestoresClient;
        use pb::store_client::StoreClient;

        let ch = ch.clone();
        match self {
            Self::CreateDisk(r) => DisksClient::new(ch).create_disk(r).await.map(drop),
            Self::GetDisk(r) => DisksClient::new(ch).get_disk(r).await.map(drop),
            Self::ListDisks(r) => DisksClient::new(ch).list_disks(r).await.map(drop),
            Self::ResizeDisk(r) => DisksClient::new(ch).resize_disk(r).await.map(drop),
            Self::DeleteDisk(r) => DisksClient::new(ch).delete_disk(r).await.map(drop),
            Self::CreateGroup(r) => GroupsClient::new(ch).create_group(r).await.map(drop),
            Self::GetGroup(r) => GroupsClient::new(ch).get_group(r).await.map(drop),
            Self::UpdateGroup(r) => GroupsClient::new(ch).update_group(r).await.map(drop),
            Self::DeleteGroup(r) => GroupsClient::new(ch).delete_group(r).await.map(drop),
            Self::CreateOrUpdateCollection(r) => {
                CollectionsClient::new(ch).create_or_update_collection(r).await.map(drop)
            }
            Self::GetCollection(r) => CollectionsClient::new(ch).get_collection(r).await.map(drop),
            Self::DeleteCollection(r) => CollectionsClient::new(ch).delete_collection(r).await.map(drop),
            Self::CreateRestorePoint(r) => RestorePointsClient::new(ch).create_restore_point(r).await.map(drop),
            Self::GetRestorePoint(r) => RestorePointsClient::new(ch).get_restore_point(r).await.map(drop),
            Self::ListRestorePoints(r) => RestorePointsClient::new(ch).list_restore_points(r).await.map(drop),
            Self::DeleteRestorePoint(r) => RestorePointsClient::new(ch).delete_restore_point(r).await.map(drop),
            Self::RestoreDisk(r) => RestoresClient::new(ch).restore_disk(r).await.map(drop),
            Self::RestoreGroup(r) => RestoresClient::new(ch).restore_group(r).await.map(drop),
            Self::GetOperation(r) => OperationsClient::new(ch).get_operation(r).await.map(drop),
            Self::ListOperations(r) => OperationsClient::new(ch).list_operations(r).await.map(drop),
            Self::CancelOperation(r) => OperationsClient::new(ch).cancel_operation(r).await.map(drop),
            Self::WatchOperation(r) => OperationsClient::new(ch).watch_operation(r).await.map(drop),
            Self::CollectGarbage(r) => StoreClient::new(ch).collect_garbage(r).await.map(drop),
            Self::Verify(r) => StoreClient::new(ch).verify(r).await.map(drop),
            Self::ApplyRetention(r) => StoreClient::new(ch).apply_retention(r).await.map(drop),
            Self::ReadDisk(r) => {
                let mut s = DiskDataClient::new(ch).read_disk(r).await?.into_inner();
                while s.message().await?.is_some() {}
                Ok(())
            }
            Self::WriteDisk(msgs) => DiskDataClient::new(ch).write_disk(futures::stream::iter(msgs)).await.map(drop),
            Self::ListChangedBlocks(r) => DiskDataClient::new(ch).list_changed_blocks(r).await.map(drop),
            Self::ListAllocatedBlocks(r) => DiskDataClient::new(ch).list_allocated_blocks(r).await.map(drop),
            Self::BeginGetAccess(r) => AccessClient::new(ch).begin_get_access(r).await.map(drop),
            Self::EndGetAccess(r) => AccessClient::new(ch).end_get_access(r).await.map(drop),
        }
    }
}

/// A bad request and how it must be refused: with `code`, and a message that starts with
/// `message`.
struct Case {
    what: &'static str,
    rpc: Rpc,
    code: Code,
    message: String,
}

fn case(what: &'static str, code: Code, message: impl Into<String>, rpc: Rpc) -> Case {
    Case { what, rpc, code, message: message.into() }
}

fn rp_ref(coll: &str, rp: &str, disk: &str) -> Option<pb::DiskRestorePointRef> {
    Some(pb::DiskRestorePointRef { collection: coll.into(), restore_point: rp.into(), disk: disk.into() })
}

fn write(disk: &str, offset: u64, data: Vec<u8>, zero_length: u64) -> pb::WriteDiskRequest {
    pb::WriteDiskRequest { disk: disk.into(), offset, data, zero_length }
}

fn changed(first: Option<pb::DiskRestorePointRef>, second: &str) -> pb::ListChangedBlocksRequest {
    pb::ListChangedBlocksRequest { first, second_restore_point: second.into(), ..Default::default() }
}

/// The whole table. Fixtures: disk `d` (1 MiB) in group `g` with collection `c` holding
/// restore points `rp` (created by operation `rp_op`) and, after it, `rp2`; a lone disk
/// `free`.
fn cases(rp_op: &str) -> Vec<Case> {
    use Code::{AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unimplemented};
    let create_disk =
        |name: &str, size_bytes| pb::CreateDiskRequest { name: name.into(), size_bytes, ..Default::default() };
    let create_rp =
        |name: &str| pb::CreateRestorePointRequest { collection: "c".into(), name: name.into(), ..Default::default() };
    vec![
        case("CreateDisk empty name", InvalidArgument, "invalid name:", Rpc::CreateDisk(create_disk("", 4096))),
        case("CreateDisk bad name", InvalidArgument, "invalid name:", Rpc::CreateDisk(create_disk("a/b", 4096))),
        case("CreateDisk zero size", InvalidArgument, "invalid size_bytes:", Rpc::CreateDisk(create_disk("z", 0))),
        case(
            "CreateDisk unaligned size",
            InvalidArgument,
            "invalid size_bytes:",
            Rpc::CreateDisk(create_disk("z", 4097)),
        ),
        case(
            "CreateDisk huge size",
            InvalidArgument,
            "invalid size_bytes:",
            Rpc::CreateDisk(create_disk("z", u64::MAX - 4095)),
        ),
        case(
            "CreateDisk bad chunk size",
            InvalidArgument,
            "invalid chunk_size_bytes:",
            Rpc::CreateDisk(pb::CreateDiskRequest { chunk_size_bytes: 3000, ..create_disk("z", 4096) }),
        ),
        case("CreateDisk existing", AlreadyExists, "disk d already exists", Rpc::CreateDisk(create_disk("d", 4096))),
        case(
            "GetDisk empty",
            InvalidArgument,
            "invalid disk:",
            Rpc::GetDisk(pb::GetDiskRequest { disk: String::new() }),
        ),
        case(
            "GetDisk unknown id",
            NotFound,
            "disk 00000000-0000-4000-8000-000000000000 not found",
            Rpc::GetDisk(pb::GetDiskRequest { disk: UNKNOWN.into() }),
        ),
        case(
            "ListDisks bad token",
            InvalidArgument,
            "invalid page_token:",
            Rpc::ListDisks(pb::ListDisksRequest { page_size: 0, page_token: "zz".into() }),
        ),
        case(
            "ResizeDisk shrink",
            InvalidArgument,
            "invalid size_bytes:",
            Rpc::ResizeDisk(pb::ResizeDiskRequest { disk: "free".into(), size_bytes: 4096 }),
        ),
        case(
            "ResizeDisk unaligned",
            InvalidArgument,
            "invalid size_bytes:",
            Rpc::ResizeDisk(pb::ResizeDiskRequest { disk: "free".into(), size_bytes: (2 << 20) + 1 }),
        ),
        case(
            "ResizeDisk unknown",
            NotFound,
            "disk nope not found",
            Rpc::ResizeDisk(pb::ResizeDiskRequest { disk: "nope".into(), size_bytes: 2 << 20 }),
        ),
        case(
            "DeleteDisk in a group",
            FailedPrecondition,
            "disk d belongs to group g",
            Rpc::DeleteDisk(pb::DeleteDiskRequest { disk: "d".into() }),
        ),
        case(
            "CreateGroup empty name",
            InvalidArgument,
            "invalid name:",
            Rpc::CreateGroup(pb::CreateGroupRequest { name: String::new(), ..Default::default() }),
        ),
        case(
            "CreateGroup unknown disk",
            NotFound,
            "disk nope not found",
            Rpc::CreateGroup(pb::CreateGroupRequest {
                name: "g2".into(),
                disks: vec!["nope".into()],
                ..Default::default()
            }),
        ),
        case(
            "CreateGroup disk taken",
            FailedPrecondition,
            "disk d already belongs to group g",
            Rpc::CreateGroup(pb::CreateGroupRequest {
                name: "g2".into(),
                disks: vec!["d".into()],
                ..Default::default()
            }),
        ),
        case(
            "GetGroup unknown",
            NotFound,
            "group 00000000-0000-4000-8000-000000000000 not found",
            Rpc::GetGroup(pb::GetGroupRequest { group: UNKNOWN.into() }),
        ),
        case(
            "UpdateGroup empty",
            InvalidArgument,
            "invalid group:",
            Rpc::UpdateGroup(pb::UpdateGroupRequest::default()),
        ),
        case(
            "DeleteGroup unknown",
            NotFound,
            "group nope not found",
            Rpc::DeleteGroup(pb::DeleteGroupRequest { group: "nope".into() }),
        ),
        case(
            "CreateCollection bad max",
            InvalidArgument,
            "invalid max_restore_points:",
            Rpc::CreateOrUpdateCollection(pb::CreateOrUpdateCollectionRequest {
                name: "c2".into(),
                group: "g".into(),
                max_restore_points: 1_000_000,
                ..Default::default()
            }),
        ),
        case(
            "CreateOrUpdateCollection changed region",
            InvalidArgument,
            "invalid region:",
            Rpc::CreateOrUpdateCollection(pb::CreateOrUpdateCollectionRequest {
                name: "c".into(),
                group: "g".into(),
                region: "elsewhere".into(),
                ..Default::default()
            }),
        ),
        case(
            "CreateCollection empty group",
            InvalidArgument,
            "invalid group:",
            Rpc::CreateOrUpdateCollection(pb::CreateOrUpdateCollectionRequest {
                name: "c2".into(),
                ..Default::default()
            }),
        ),
        case(
            "GetCollection unknown",
            NotFound,
            "collection nope not found",
            Rpc::GetCollection(pb::GetCollectionRequest { collection: "nope".into() }),
        ),
        case(
            "DeleteCollection not empty",
            FailedPrecondition,
            "collection c holds 2 restore points",
            Rpc::DeleteCollection(pb::DeleteCollectionRequest { collection: "c".into(), cascade: false }),
        ),
        case("CreateRestorePoint empty name", InvalidArgument, "invalid name:", Rpc::CreateRestorePoint(create_rp(""))),
        case(
            "CreateRestorePoint duplicate",
            AlreadyExists,
            "restore point rp in collection c already exists",
            Rpc::CreateRestorePoint(create_rp("rp")),
        ),
        case(
            "CreateRestorePoint excluding all",
            InvalidArgument,
            "invalid exclude_disks:",
            Rpc::CreateRestorePoint(pb::CreateRestorePointRequest {
                exclude_disks: vec!["d".into()],
                ..create_rp("x")
            }),
        ),
        case(
            "CreateRestorePoint foreign exclude",
            InvalidArgument,
            "invalid exclude_disks:",
            Rpc::CreateRestorePoint(pb::CreateRestorePointRequest {
                exclude_disks: vec!["free".into()],
                ..create_rp("x")
            }),
        ),
        case(
            "CreateRestorePoint bad mode",
            InvalidArgument,
            "invalid consistency_mode:",
            Rpc::CreateRestorePoint(pb::CreateRestorePointRequest { consistency_mode: 99, ..create_rp("x") }),
        ),
        case(
            "GetRestorePoint unknown",
            NotFound,
            "restore point nope not found",
            Rpc::GetRestorePoint(pb::GetRestorePointRequest {
                collection: "c".into(),
                restore_point: "nope".into(),
                instance_view: true,
            }),
        ),
        case(
            "ListRestorePoints empty collection",
            InvalidArgument,
            "invalid collection:",
            Rpc::ListRestorePoints(pb::ListRestorePointsRequest::default()),
        ),
        case(
            "DeleteRestorePoint unknown id",
            NotFound,
            "restore point 00000000-0000-4000-8000-000000000000 not found",
            Rpc::DeleteRestorePoint(pb::DeleteRestorePointRequest {
                collection: String::new(),
                restore_point: UNKNOWN.into(),
            }),
        ),
        case(
            "RestoreDisk unknown disk",
            NotFound,
            "disk free not found in restore point rp",
            Rpc::RestoreDisk(pb::RestoreDiskRequest {
                collection: "c".into(),
                restore_point: "rp".into(),
                disk: "free".into(),
                name: "n".into(),
                direct_io: false,
            }),
        ),
        case(
            "RestoreDisk existing name",
            AlreadyExists,
            "disk free already exists",
            Rpc::RestoreDisk(pb::RestoreDiskRequest {
                collection: "c".into(),
                restore_point: "rp".into(),
                disk: "d".into(),
                name: "free".into(),
                direct_io: false,
            }),
        ),
        case(
            "RestoreGroup empty name",
            InvalidArgument,
            "invalid name:",
            Rpc::RestoreGroup(pb::RestoreGroupRequest {
                collection: "c".into(),
                restore_point: "rp".into(),
                group_name: String::new(),
            }),
        ),
        case(
            "GetOperation not a uuid",
            InvalidArgument,
            "invalid id:",
            Rpc::GetOperation(pb::GetOperationRequest { id: "x".into() }),
        ),
        case(
            "GetOperation id nope",
            InvalidArgument,
            "invalid id:",
            Rpc::GetOperation(pb::GetOperationRequest { id: "nope".into() }),
        ),
        case(
            "GetOperation unknown",
            NotFound,
            "operation 00000000-0000-4000-8000-000000000000 not found",
            Rpc::GetOperation(pb::GetOperationRequest { id: UNKNOWN.into() }),
        ),
        case(
            "ListOperations huge page",
            InvalidArgument,
            "invalid page_size:",
            Rpc::ListOperations(pb::ListOperationsRequest { page_size: 1 << 30, ..Default::default() }),
        ),
        case(
            "CancelOperation ended",
            FailedPrecondition,
            format!("operation {rp_op} already ended"),
            Rpc::CancelOperation(pb::CancelOperationRequest { id: rp_op.into() }),
        ),
        case(
            "WatchOperation unknown",
            NotFound,
            "operation 00000000-0000-4000-8000-000000000000 not found",
            Rpc::WatchOperation(pb::WatchOperationRequest { id: UNKNOWN.into() }),
        ),
        case(
            "CollectGarbage live share over 100",
            InvalidArgument,
            "invalid live_share_percent:",
            Rpc::CollectGarbage(pb::CollectGarbageRequest { live_share_percent: Some(101) }),
        ),
        case(
            "Verify unknown restore point",
            NotFound,
            "restore point nope not found",
            Rpc::Verify(pb::VerifyRequest { collection: "c".into(), restore_point: "nope".into() }),
        ),
        case(
            "Verify collection without restore point",
            InvalidArgument,
            "invalid restore_point:",
            Rpc::Verify(pb::VerifyRequest { collection: "c".into(), restore_point: String::new() }),
        ),
        case(
            "ApplyRetention unknown collection",
            NotFound,
            "collection nope not found",
            Rpc::ApplyRetention(pb::ApplyRetentionRequest {
                collection: "nope".into(),
                policy: Some(pb::RetentionPolicy { keep_last: 1, ..Default::default() }),
                dry_run: true,
            }),
        ),
        case(
            "ApplyRetention policy keeps nothing",
            InvalidArgument,
            "invalid policy:",
            Rpc::ApplyRetention(pb::ApplyRetentionRequest { collection: "c".into(), policy: None, dry_run: false }),
        ),
        case("ReadDisk no source", InvalidArgument, "invalid source:", Rpc::ReadDisk(pb::ReadDiskRequest::default())),
        case(
            "ReadDisk past the end",
            InvalidArgument,
            "invalid length:",
            Rpc::ReadDisk(pb::ReadDiskRequest { source: Some(Source::Disk("d".into())), offset: 1 << 20, length: 1 }),
        ),
        case(
            "ReadDisk overflowing range",
            InvalidArgument,
            "invalid length:",
            Rpc::ReadDisk(pb::ReadDiskRequest {
                source: Some(Source::Disk("d".into())),
                offset: 4096,
                length: u64::MAX,
            }),
        ),
        case(
            "ReadDisk unknown restore point",
            NotFound,
            "restore point nope not found",
            Rpc::ReadDisk(pb::ReadDiskRequest {
                source: Some(Source::DiskRestorePoint(rp_ref("c", "nope", "d").unwrap())),
                offset: 0,
                length: 0,
            }),
        ),
        case(
            "ReadDisk restore point without disk",
            InvalidArgument,
            "invalid disk_restore_point.disk:",
            Rpc::ReadDisk(pb::ReadDiskRequest {
                source: Some(Source::DiskRestorePoint(rp_ref("c", "rp", "").unwrap())),
                ..Default::default()
            }),
        ),
        case("WriteDisk empty stream", InvalidArgument, "invalid disk:", Rpc::WriteDisk(Vec::new())),
        case(
            "WriteDisk past the end",
            InvalidArgument,
            "invalid data:",
            Rpc::WriteDisk(vec![write("free", 1 << 20, vec![1; 4096], 0)]),
        ),
        case(
            "WriteDisk two disks",
            InvalidArgument,
            "invalid disk:",
            Rpc::WriteDisk(vec![write("free", 0, vec![1; 4096], 0), write("d", 0, vec![1; 4096], 0)]),
        ),
        case(
            "WriteDisk data running past the end",
            InvalidArgument,
            "invalid data:",
            Rpc::WriteDisk(vec![write("d", (1 << 20) - 4096, vec![1; 8192], 0)]),
        ),
        case(
            "WriteDisk zeroes past the end",
            InvalidArgument,
            "invalid zero_length:",
            Rpc::WriteDisk(vec![write("d", 4096, Vec::new(), 1 << 20)]),
        ),
        case(
            "WriteDisk offset past the end",
            InvalidArgument,
            "invalid offset:",
            Rpc::WriteDisk(vec![write("d", 2 << 20, vec![1; 4096], 0)]),
        ),
        case(
            "ListChangedBlocks missing second",
            InvalidArgument,
            "invalid second_restore_point:",
            Rpc::ListChangedBlocks(pb::ListChangedBlocksRequest {
                first: rp_ref("c", "rp", "d"),
                ..Default::default()
            }),
        ),
        case(
            "ListChangedBlocks missing first",
            InvalidArgument,
            "invalid first:",
            Rpc::ListChangedBlocks(pb::ListChangedBlocksRequest {
                second_restore_point: "rp".into(),
                ..Default::default()
            }),
        ),
        case(
            "ListChangedBlocks first without restore point",
            InvalidArgument,
            "invalid first.restore_point:",
            Rpc::ListChangedBlocks(changed(rp_ref("c", "", "d"), "rp2")),
        ),
        case(
            "ListChangedBlocks second older than first",
            InvalidArgument,
            "invalid second_restore_point:",
            Rpc::ListChangedBlocks(changed(rp_ref("c", "rp2", "d"), "rp")),
        ),
        case(
            "ListAllocatedBlocks unknown disk",
            NotFound,
            "disk nope not found in restore point rp",
            Rpc::ListAllocatedBlocks(pb::ListAllocatedBlocksRequest {
                disk_restore_point: rp_ref("c", "rp", "nope"),
                ..Default::default()
            }),
        ),
        case(
            "BeginGetAccess",
            Unimplemented,
            "access grants are not implemented yet",
            Rpc::BeginGetAccess(pb::BeginGetAccessRequest::default()),
        ),
        case(
            "EndGetAccess",
            Unimplemented,
            "access grants are not implemented yet",
            Rpc::EndGetAccess(pb::EndGetAccessRequest::default()),
        ),
    ]
}

/// What the daemon holds, by name: disks, groups, collections, restore points of `c` with
/// their state, and the number of operations.
async fn holdings(ch: &Channel) -> (Vec<String>, Vec<String>, Vec<String>, Vec<(String, i32)>, usize) {
    let ch = ch.clone();
    let disks = pb::disks_client::DisksClient::new(ch.clone())
        .list_disks(pb::ListDisksRequest::default())
        .await
        .unwrap()
        .into_inner();
    let groups = pb::groups_client::GroupsClient::new(ch.clone())
        .list_groups(pb::ListGroupsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let colls = pb::collections_client::CollectionsClient::new(ch.clone())
        .list_collections(pb::ListCollectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let rps = pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .list_restore_points(pb::ListRestorePointsRequest { collection: "c".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let ops = pb::operations_client::OperationsClient::new(ch)
        .list_operations(pb::ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    (
        disks.disks.into_iter().map(|d| d.name).collect(),
        groups.groups.into_iter().map(|g| g.name).collect(),
        colls.collections.into_iter().map(|c| c.name).collect(),
        rps.restore_points.into_iter().map(|r| (r.name, r.provisioning_state)).collect(),
        ops.operations.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_bad_input_with_its_code_and_message_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    for name in ["d", "free"] {
        crate::common::grpc_disk(&ch, name, 1 << 20).await;
    }
    pb::groups_client::GroupsClient::new(ch.clone())
        .create_group(pb::CreateGroupRequest { name: "g".into(), disks: vec!["d".into()], ..Default::default() })
        .await
        .unwrap();
    pb::collections_client::CollectionsClient::new(ch.clone())
        .create_or_update_collection(pb::CreateOrUpdateCollectionRequest {
            name: "c".into(),
            group: "g".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .create_restore_point(pb::CreateRestorePointRequest {
            collection: "c".into(),
            name: "rp".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rp_op = r.operation.unwrap().id;
    grpc_wait_op(&ch, &rp_op).await;
    grpc_restore_point(&ch, "c", "rp2", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    let before = holdings(&ch).await;

    let mut wrong = Vec::new();
    for Case { what, rpc, code, message } in cases(&rp_op) {
        match rpc.call(&ch).await {
            Ok(()) => wrong.push(format!("{what}: succeeded, want {code:?}")),
            Err(s) => {
                if s.code() != code || !s.message().starts_with(&message) {
                    wrong.push(format!("{what}: {:?} {:?}, want {code:?} {message:?}...", s.code(), s.message()));
                }
            }
        }
        // The daemon still answers.
        pb::disks_client::DisksClient::new(ch.clone())
            .get_disk(pb::GetDiskRequest { disk: "d".into() })
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
    assert!(wrong.is_empty(), "refused wrongly:\n{}", wrong.join("\n"));
    assert_eq!(holdings(&ch).await, before, "the bad requests changed what the daemon holds");
    daemon.stop();
}
