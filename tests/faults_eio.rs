//! I/O errors from the file system under the real cairnd (injected by the power-loss file
//! system, so the daemon meets them where a failing disk would put them): a failed fsync of
//! a disk file poisons that disk for good (no retry that would pretend it worked) while the
//! other disks keep serving; a failed pack fsync fails the capture cleanly, and once the
//! file system heals the next restore point succeeds and reads back exact.

use std::process::Command;

use cairn_proto::v1 as pb;
use pb::read_disk_request::Source;

use crate::common::nbd::{CMD_FLUSH, CMD_WRITE, Client};
use crate::common::powerloss::{Fault, PowerLossFs};
use crate::common::{
    assert_same, grpc, grpc_disk, grpc_group_and_collection, grpc_read, grpc_restore_point, grpc_write, pattern,
    run_ok, start_cairnd,
};

const MIB: u64 = 1 << 20;
const EIO: u32 = 5;

async fn disk_id(ch: &tonic::transport::Channel, name: &str) -> String {
    let disks = pb::disks_client::DisksClient::new(ch.clone())
        .list_disks(pb::ListDisksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .disks;
    disks.into_iter().find(|d| d.name == name).unwrap().id
}

/// An NBD connection to `export`, after the handshake.
async fn nbd(socket: &std::path::Path, export: &str) -> Client<tokio::net::UnixStream> {
    let mut c = Client::connect(socket).await;
    c.hello().await;
    c.go(export).await.unwrap();
    c
}

/// WRITE then FLUSH; the error of each (0 = done).
async fn write_and_flush(c: &mut Client<tokio::net::UnixStream>, cookie: u64, offset: u64, data: &[u8]) -> (u32, u32) {
    c.request(CMD_WRITE, 0, cookie, offset, data.len() as u32).await;
    c.send(data).await;
    let (write, _) = c.simple_reply().await;
    c.request(CMD_FLUSH, 0, cookie + 1, 0, 0).await;
    let (flush, _) = c.simple_reply().await;
    (write, flush)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_disk_fsync_poisons_that_disk_and_the_others_keep_serving() {
    let mnt = tempfile::tempdir().unwrap();
    let fs = PowerLossFs::mount(mnt.path(), None);
    let data_dir = mnt.path().join("data");
    let daemon = start_cairnd(&data_dir, &[]);
    let ch = grpc(&data_dir).await;
    grpc_disk(&ch, "a", 4 * MIB).await;
    grpc_disk(&ch, "b", 4 * MIB).await;
    let a = disk_id(&ch, "a").await;
    let mut to_a = nbd(&daemon.socket, "a").await;
    let mut to_b = nbd(&daemon.socket, "b").await;
    assert_eq!(write_and_flush(&mut to_a, 1, 0, &pattern(1, 4096)).await, (0, 0), "disk a before the fault");

    fs.inject(Fault::Fsync, &format!("{a}.raw"));
    let failed = write_and_flush(&mut to_a, 3, 4096, &pattern(2, 4096)).await;
    fs.clear_faults();
    let after = write_and_flush(&mut to_a, 5, 8192, &pattern(3, 4096)).await;
    let other = write_and_flush(&mut to_b, 1, 0, &pattern(4, 8192)).await;
    let health = run_ok(Command::new("curl").args([
        "-sS",
        "-w",
        "\n%{http_code}",
        &format!("http://{}/healthz", daemon.http_addr()),
    ]));

    assert_eq!(failed, (0, EIO), "the flush whose fsync failed answers EIO");
    assert_ne!(after.0, 0, "a poisoned disk refuses writes even once the file system heals: {after:?}");
    assert_eq!(other, (0, 0), "disk b keeps serving");
    let mut want_b = vec![0u8; (4 * MIB) as usize];
    want_b[..8192].copy_from_slice(&pattern(4, 8192));
    assert_same(&grpc_read(&ch, Source::Disk("b".into())).await.0, &want_b, "disk b");
    assert!(health.ends_with("\n503") && health.contains("disk a is poisoned"), "{health}");
    assert_eq!(fs.counters().faults_injected, 1, "exactly the one fsync failed");
    drop((to_a, to_b, ch));
    daemon.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pack_fsync_fails_the_capture_and_the_next_restore_point_is_exact() {
    let mnt = tempfile::tempdir().unwrap();
    let fs = PowerLossFs::mount(mnt.path(), None);
    let data_dir = mnt.path().join("data");
    let daemon = start_cairnd(&data_dir, &[]);
    let ch = grpc(&data_dir).await;
    grpc_disk(&ch, "d", 4 * MIB).await;
    grpc_group_and_collection(&ch, "g", &["d"], "c").await;
    let content = pattern(7, (4 * MIB) as usize);
    grpc_write(&ch, "d", 0, content.clone()).await;

    fs.inject(Fault::Fsync, ".pack");
    let failed = grpc_restore_point(&ch, "c", "rp1", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    fs.clear_faults();
    let next = grpc_restore_point(&ch, "c", "rp2", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    let at_rp2 = Source::DiskRestorePoint(pb::DiskRestorePointRef {
        collection: "c".into(),
        restore_point: "rp2".into(),
        disk: "d".into(),
    });
    let verify = pb::store_client::StoreClient::new(ch.clone()).verify(pb::VerifyRequest::default()).await.unwrap();
    let verify = crate::common::grpc_wait_op(&ch, &verify.into_inner().id).await;

    assert_eq!(failed.provisioning_state(), pb::ProvisioningState::Failed, "{failed:?}");
    assert!(fs.counters().faults_injected >= 1, "the pack fsync was reached");
    assert_eq!(next.provisioning_state(), pb::ProvisioningState::Succeeded, "{next:?}");
    assert_same(&grpc_read(&ch, at_rp2).await.0, &content, "rp2 after the failed capture");
    let report: serde_json::Value = serde_json::from_str(&verify.result_json).unwrap();
    assert_eq!(report["corrupt"].as_array().map(Vec::len), Some(0), "{report}");
    drop(ch);
    daemon.stop();
}
