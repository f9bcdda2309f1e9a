//! Revert in place: a live disk goes back to one of its restore points rewriting only the
//! chunks whose content changed (counted by the disk's own write counters), after a restore
//! point of the state before; its next restore point stores nothing new and has the root of
//! the one reverted to; a disk with a client attached is refused, and while a revert holds a
//! disk, a real NBD client (qemu-io) cannot attach and others' I/O is refused.

use std::sync::atomic::Ordering;

use cairn_engine::{ErrorKind, IoBuf, RevertInPlace};

use crate::common::{
    cairn_cli, collection, disk, grpc, grpc_read, grpc_restore_point, grpc_write, open, pattern, qemu_io, read_all,
    read_rp, restore_point, run_ok, start_cairnd, start_cairnd_env,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 * KIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_changed_chunks_are_rewritten_and_the_next_restore_point_is_an_increment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), cairn_engine::IoBackendKind::Auto).await;
    let a = disk(&engine, "a", 16 * MIB).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    d.write(0, IoBuf::from_slice(&pattern(1, (8 * MIB) as usize)), false).await.unwrap();
    let target = restore_point(&engine, coll.id, "target", vec![]).await;
    let image = read_all(&d).await;

    // Captured changes (an intermediate restore point) and uncaptured ones: a changed chunk,
    // a trimmed chunk, a chunk written past the old data, and a chunk rewritten unchanged.
    d.write(CHUNK + 4096, IoBuf::from_slice(&pattern(2, 8192)), false).await.unwrap();
    restore_point(&engine, coll.id, "between", vec![]).await;
    d.punch(3 * CHUNK, CHUNK, false).await.unwrap();
    d.write(40 * CHUNK, IoBuf::from_slice(&pattern(3, 4096)), false).await.unwrap();
    d.write(5 * CHUNK, IoBuf::from_slice(&image[(5 * CHUNK) as usize..(6 * CHUNK) as usize]), false).await.unwrap();
    let before = read_all(&d).await;
    let written_before = d.counters().write_bytes.load(Ordering::Relaxed);

    let req = RevertInPlace { restore_point: target.id, disks: vec![], current_state: Some("before-revert".into()) };
    let report = engine.revert_in_place(req).await.unwrap();

    assert_eq!(report.disks.len(), 1);
    let r = &report.disks[0];
    assert_eq!((r.chunks_compared, r.chunks_rewritten), (4, 3), "{r:?}");
    // Chunks 1 and 3 get their data back, chunk 40 goes back to zeros (trimmed).
    assert_eq!((r.bytes_written, r.bytes_trimmed), (2 * CHUNK, CHUNK), "{r:?}");
    assert_eq!(d.counters().write_bytes.load(Ordering::Relaxed) - written_before, 2 * CHUNK);
    assert!(read_all(&d).await == image, "the disk reads as the restore point again");
    let saved = report.current_state.expect("a restore point of the state before");
    assert_eq!(saved.name.as_str(), "before-revert");
    assert!(read_rp(&engine, saved.id, a).await == before, "the state before is kept");

    let next = restore_point(&engine, coll.id, "after", vec![]).await;
    assert_eq!(next.disks[0].merkle_root, target.disks[0].merkle_root);
    assert_eq!((next.disks[0].chunks_new, next.disks[0].chunks_delta), (0, 0), "{next:?}");
    assert!(!next.disks[0].full_scan && next.disks[0].chunks_captured == 3, "{next:?}");

    // Reverting to where the disk is already rewrites nothing, and takes no restore point.
    let req = RevertInPlace { restore_point: target.id, disks: vec![a], current_state: None };
    let again = engine.revert_in_place(req).await.unwrap();
    assert_eq!(again.disks[0].chunks_rewritten, 0, "{again:?}");
    assert!(again.current_state.is_none());
    assert_eq!(engine.list_restore_points(coll.id).unwrap().len(), 4);
    engine.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_disk_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), cairn_engine::IoBackendKind::Auto).await;
    let a = disk(&engine, "a", 4 * MIB).await.id;
    let (_, coll) = collection(&engine, "c", vec![a]).await;
    let d = engine.disk(a).unwrap();
    let target = restore_point(&engine, coll.id, "target", vec![]).await;
    d.write(0, IoBuf::from_slice(&pattern(4, 65536)), false).await.unwrap();
    let attached = d.attach().unwrap();

    let req = RevertInPlace { restore_point: target.id, disks: vec![], current_state: Some("before".into()) };
    let err = engine.revert_in_place(req.clone()).await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("1 client(s) attached"), "{err}");
    assert_eq!(engine.list_restore_points(coll.id).unwrap().len(), 1, "no restore point was taken");
    assert_eq!(&d.read(0, 65536).await.unwrap()[..], &pattern(4, 65536)[..]);
    drop(attached);
    let report = engine.revert_in_place(req).await.unwrap();
    assert_eq!(report.disks[0].chunks_rewritten, 1);
    engine.close().await.unwrap();
}

async fn os_bytes(ch: &tonic::transport::Channel) -> Vec<u8> {
    grpc_read(ch, cairn_proto::v1::read_disk_request::Source::Disk("os".into())).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_while_qemu_is_attached_and_qemu_cannot_attach_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let cli = || cairn_cli(dir.path());
    run_ok(cli().args(["disk", "create", "os", "--size", "4M"]));
    run_ok(cli().args(["group", "create", "vm", "--disk", "os", "--configuration", "{}"]));
    run_ok(cli().args(["collection", "create", "rps", "--group", "vm"]));
    let ch = grpc(dir.path()).await;
    let good = pattern(5, MIB as usize);
    grpc_write(&ch, "os", 0, good.clone()).await;
    grpc_restore_point(&ch, "rps", "good", cairn_proto::v1::ConsistencyMode::CrashConsistent).await.unwrap();

    // qemu-io writes a block (which shows it is attached), then stays connected two seconds.
    let mut qemu = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xee 4096 4096", "-c", "sleep 2000", &daemon.uri("os")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while os_bytes(&ch).await[4096..8192] != [0xee; 4096] {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = cli().args(["revert", "rps", "good"]).output().unwrap();
    assert!(qemu.wait().unwrap().success());

    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("FAILED_PRECONDITION") && err.contains("attached"), "{err}");
    let out = run_ok(cli().args(["revert", "rps", "good", "--output", "json"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["disks"][0]["chunks_rewritten"], 1, "{report}");
    assert!(report["current_state"]["name"].as_str().unwrap().starts_with("before-revert-"), "{report}");
    qemu_io(&daemon.uri("os"), &["read -P 0 1M 3M"]);
    assert!(os_bytes(&ch).await[..MIB as usize] == good[..], "the disk reads as the restore point");
    drop(ch);
    daemon.stop();

    // Held: the daemon sleeps at the hold; qemu-io is refused with the reason meanwhile.
    let daemon = start_cairnd_env(dir.path(), &[], &[("CAIRN_FAILPOINTS", "revert::after_hold=sleep(3000)")]);
    let ch = grpc(dir.path()).await;
    grpc_write(&ch, "os", 0, vec![0xaa; 4096]).await;
    let mut revert = cli()
        .args(["revert", "rps", "good", "--no-current-state"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let attach = (0..60)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            std::process::Command::new("qemu-io")
                .args(["-f", "raw", "-c", "read 0 4k", &daemon.uri("os")])
                .output()
                .unwrap()
        })
        .find(|out| !out.status.success())
        .expect("qemu-io was refused while the revert held the disk");
    assert!(revert.wait().unwrap().success());

    let err = String::from_utf8_lossy(&attach.stderr);
    assert!(err.contains("held by a revert to restore point good"), "{err}");
    assert!(os_bytes(&ch).await[..MIB as usize] == good[..], "the revert finished after the hold");
    drop(ch);
    daemon.stop();
}
