//! gRPC calls the tests make over and over, through the generated clients.

/// Writes `data` at `offset` of a live disk through the gRPC WriteDisk stream (flushed).
pub async fn grpc_write(ch: &tonic::transport::Channel, disk: &str, offset: u64, data: Vec<u8>) {
    use cairn_proto::v1 as pb;
    let msgs: Vec<pb::WriteDiskRequest> = data
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, part)| pb::WriteDiskRequest {
            disk: if i == 0 { disk.into() } else { String::new() },
            offset: offset + (i as u64) * (1 << 20),
            data: part.to_vec(),
            zero_length: 0,
        })
        .collect();
    pb::disk_data_client::DiskDataClient::new(ch.clone()).write_disk(futures::stream::iter(msgs)).await.unwrap();
}

/// The whole content of a live disk or disk restore point through the gRPC ReadDisk stream,
/// zero runs expanded; also returns how many zero runs came.
pub async fn grpc_read(
    ch: &tonic::transport::Channel,
    source: cairn_proto::v1::read_disk_request::Source,
) -> (Vec<u8>, usize) {
    try_grpc_read(ch, source).await.unwrap()
}

/// [`grpc_read`], or the status that ended the stream (for callers the daemon may die under).
pub async fn try_grpc_read(
    ch: &tonic::transport::Channel,
    source: cairn_proto::v1::read_disk_request::Source,
) -> Result<(Vec<u8>, usize), tonic::Status> {
    use cairn_proto::v1 as pb;
    let req = pb::ReadDiskRequest { source: Some(source), offset: 0, length: 0 };
    let mut stream = pb::disk_data_client::DiskDataClient::new(ch.clone()).read_disk(req).await?.into_inner();
    let mut out = Vec::new();
    let mut zero_runs = 0;
    while let Some(m) = stream.message().await? {
        assert_eq!(m.offset, out.len() as u64, "ReadDisk sends the range in order");
        if m.zero {
            zero_runs += 1;
            out.resize(out.len() + m.length as usize, 0);
        } else {
            assert_eq!(m.data.len() as u64, m.length);
            out.extend_from_slice(&m.data);
        }
    }
    Ok((out, zero_runs))
}

/// Polls an operation over gRPC until it ends; returns its last state.
pub async fn grpc_wait_op(ch: &tonic::transport::Channel, id: &str) -> cairn_proto::v1::Operation {
    try_grpc_wait_op(ch, id).await.unwrap()
}

/// [`grpc_wait_op`], or the status a call failed with (for callers the daemon may die under).
pub async fn try_grpc_wait_op(
    ch: &tonic::transport::Channel,
    id: &str,
) -> Result<cairn_proto::v1::Operation, tonic::Status> {
    use cairn_proto::v1 as pb;
    let mut c = pb::operations_client::OperationsClient::new(ch.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let op = c.get_operation(pb::GetOperationRequest { id: id.into() }).await?.into_inner();
        if op.state() != pb::OperationState::Running {
            return Ok(op);
        }
        assert!(std::time::Instant::now() < deadline, "operation {id} still running: {op:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Over gRPC: a group `group` of `disks` (configuration `{}`) and a collection `collection`
/// over it.
pub async fn grpc_group_and_collection(ch: &tonic::transport::Channel, group: &str, disks: &[&str], collection: &str) {
    use cairn_proto::v1 as pb;
    pb::groups_client::GroupsClient::new(ch.clone())
        .create_group(pb::CreateGroupRequest {
            name: group.into(),
            disks: disks.iter().map(|d| (*d).to_owned()).collect(),
            configuration: "{}".into(),
        })
        .await
        .unwrap();
    pb::collections_client::CollectionsClient::new(ch.clone())
        .create_or_update_collection(pb::CreateOrUpdateCollectionRequest {
            name: collection.into(),
            group: group.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Over gRPC: a live disk.
pub async fn grpc_disk(ch: &tonic::transport::Channel, name: &str, size_bytes: u64) {
    use cairn_proto::v1 as pb;
    pb::disks_client::DisksClient::new(ch.clone())
        .create_disk(pb::CreateDiskRequest { name: name.into(), size_bytes, ..Default::default() })
        .await
        .unwrap();
}

/// Over gRPC: restore point `name` of `collection` in `mode`, as it stands once its capture
/// ended, or why its creation was refused.
pub async fn grpc_restore_point(
    ch: &tonic::transport::Channel,
    collection: &str,
    name: &str,
    mode: cairn_proto::v1::ConsistencyMode,
) -> Result<cairn_proto::v1::RestorePoint, tonic::Status> {
    use cairn_proto::v1 as pb;
    let mut rps = pb::restore_points_client::RestorePointsClient::new(ch.clone());
    let req = pb::CreateRestorePointRequest {
        collection: collection.into(),
        name: name.into(),
        consistency_mode: mode.into(),
        ..Default::default()
    };
    let r = rps.create_restore_point(req).await?.into_inner();
    grpc_wait_op(ch, &r.operation.unwrap().id).await;
    let get =
        pb::GetRestorePointRequest { collection: collection.into(), restore_point: name.into(), instance_view: false };
    Ok(rps.get_restore_point(get).await.unwrap().into_inner())
}
