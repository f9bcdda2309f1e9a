//! A full file system under the real cairnd (its data dir on a small loop-mounted ext4): NBD
//! writes that find no space answer ENOSPC (no signal, no hang, the daemon keeps serving),
//! nothing stored is harmed, a capture waits at the free-space watermark instead of failing,
//! and once space is freed it resumes and everything works again.

use std::time::Duration;

use cairn_proto::v1 as pb;
use pb::read_disk_request::Source;

use crate::common::loopfs::LoopFs;
use crate::common::nbd::{CMD_FLUSH, CMD_WRITE, Client, ENOSPC};
use crate::common::{
    assert_same, grpc, grpc_disk, grpc_group_and_collection, grpc_read, grpc_restore_point, grpc_wait_op, grpc_write,
    pattern, start_cairnd,
};

const MIB: u64 = 1 << 20;

fn rp_source(rp: &str, disk: &str) -> Source {
    Source::DiskRestorePoint(pb::DiskRestorePointRef {
        collection: "c".into(),
        restore_point: rp.into(),
        disk: disk.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_file_system_is_enospc_over_nbd_and_a_capture_waits_for_space() {
    let fs = LoopFs::new(192 * MIB);
    let data_dir = fs.path().join("data");
    let config = fs.path().join("cairnd.toml");
    std::fs::write(&config, "free_space_watermark = \"24M\"\n").unwrap();
    let daemon = start_cairnd(&data_dir, &["--config", config.to_str().unwrap()]);
    let ch = grpc(&data_dir).await;
    grpc_disk(&ch, "a", 16 * MIB).await;
    grpc_group_and_collection(&ch, "g", &["a"], "c").await;
    let a = pattern(1, (16 * MIB) as usize);
    grpc_write(&ch, "a", 0, a.clone()).await;
    let rp1 = grpc_restore_point(&ch, "c", "rp1", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    assert_eq!(rp1.provisioning_state(), pb::ProvisioningState::Succeeded, "{rp1:?}");

    // Fill the file system through a big disk, 1 MiB a write, until a write finds no space.
    grpc_disk(&ch, "big", 1024 * MIB).await;
    let mut nbd = Client::connect(&daemon.socket).await;
    nbd.hello().await;
    nbd.go("big").await.unwrap();
    let mut written = 0;
    let full = loop {
        nbd.request(CMD_WRITE, 0, written + 1, written * MIB, MIB as u32).await;
        nbd.send(&pattern(written, MIB as usize)).await;
        match nbd.simple_reply().await {
            (0, _) => written += 1,
            (err, _) => break err,
        }
        assert!(written < 400, "192 MiB of file system took {written} MiB");
    };
    nbd.request(CMD_FLUSH, 0, 9999, 0, 0).await;
    let flushed = nbd.simple_reply().await;

    // The capture of a change to disk a (in place: it needs no new block of the disk file)
    // waits at the watermark rather than failing for want of space.
    grpc_write(&ch, "a", 0, pattern(2, (4 * MIB) as usize)).await;
    let mut a2 = a.clone();
    a2[..(4 * MIB) as usize].copy_from_slice(&pattern(2, (4 * MIB) as usize));
    let req = pb::CreateRestorePointRequest { collection: "c".into(), name: "rp2".into(), ..Default::default() };
    let rp2 = pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .create_restore_point(req)
        .await
        .unwrap()
        .into_inner();
    let op_id = rp2.operation.unwrap().id;
    let mut ops = pb::operations_client::OperationsClient::new(ch.clone());
    let paused = loop {
        let op = ops.get_operation(pb::GetOperationRequest { id: op_id.clone() }).await.unwrap().into_inner();
        if !op.paused_reason.is_empty() || op.state() != pb::OperationState::Running {
            break op;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rp1_while_full = grpc_read(&ch, rp_source("rp1", "a")).await.0;

    // Space returns: the paused capture resumes and succeeds.
    drop(nbd);
    pb::disks_client::DisksClient::new(ch.clone())
        .delete_disk(pb::DeleteDiskRequest { disk: "big".into() })
        .await
        .unwrap();
    let done = grpc_wait_op(&ch, &op_id).await;
    let verify = pb::store_client::StoreClient::new(ch.clone()).verify(pb::VerifyRequest::default()).await.unwrap();
    let verify = grpc_wait_op(&ch, &verify.into_inner().id).await;

    assert_eq!(full, ENOSPC, "the write that found no space after {written} MiB");
    assert_eq!(flushed, (0, 9999), "the writes acknowledged before are flushed");
    assert_eq!(paused.state(), pb::OperationState::Running, "the capture waits, it does not fail: {paused:?}");
    assert!(paused.paused_reason.contains("below the"), "{paused:?}");
    assert_same(&rp1_while_full, &a, "rp1 read while the file system is full");
    assert_eq!(done.state(), pb::OperationState::Succeeded, "the capture resumed once space returned: {done:?}");
    assert_same(&grpc_read(&ch, rp_source("rp2", "a")).await.0, &a2, "rp2");
    assert_same(&grpc_read(&ch, rp_source("rp1", "a")).await.0, &a, "rp1 afterwards");
    let report: serde_json::Value = serde_json::from_str(&verify.result_json).unwrap();
    assert_eq!(report["corrupt"].as_array().map(Vec::len), Some(0), "{report}");
    drop(ch);
    daemon.stop();
}
