//! Where cairnd serves NBD: loopback TCP works with real clients; a non-loopback TCP address
//! is refused without TLS unless plaintext is explicitly allowed.

use std::process::Command;

use crate::common::{create_disks, daemon_bin, run_ok, start_cairnd};

/// Loopback TCP and a unix socket at once (`--nbd` repeated), both serving the same disks.
#[tokio::test]
async fn loopback_tcp_serves_live_disks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_disks(&data, &[("d", 4 << 20)]).await;
    let socket = dir.path().join("also.sock");
    let unix = format!("unix:{}", socket.display());
    let daemon = start_cairnd(&data, &["--nbd", "127.0.0.1:0", "--nbd", &unix, "--log-format", "json"]);
    let addrs: Vec<String> = daemon
        .startup
        .iter()
        .filter(|l| l.contains("nbd listening"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["fields"]["addr"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    let addr = addrs.iter().find(|a| a.starts_with("127.0.0.1:")).unwrap();
    let uri = format!("nbd://{addr}/d");

    run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x42 1M 64k", &uri]));
    let out = run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 0x42 1M 64k", &uri]));

    assert!(out.contains("read 65536/65536"), "{out}");
    assert_eq!(run_ok(Command::new("nbdinfo").args(["--size", &uri])).trim(), (4u64 << 20).to_string());
    // The unix socket serves the same disk: what was written over TCP reads back there.
    let unix_uri = format!("nbd+unix:///d?socket={}", socket.display());
    let out = run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 0x42 1M 64k", &unix_uri]));
    assert!(out.contains("read 65536/65536"), "{out}");
    daemon.stop();
}

#[test]
fn non_loopback_tcp_is_refused_without_allow_plaintext() {
    let dir = tempfile::tempdir().unwrap();

    let out = Command::new(daemon_bin("cairnd"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--nbd", "0.0.0.0:0"])
        .output()
        .unwrap();

    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert") && err.contains("--allow-plaintext"), "{err}");
}

#[tokio::test]
async fn sigterm_during_a_copy_stops_the_listener_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disks = create_disks(&data, &[("d", 64 << 20)]).await;
    let source = dir.path().join("source.raw");
    let content = crate::common::pattern(7, 64 << 20);
    std::fs::write(&source, &content).unwrap();
    let daemon = start_cairnd(&data, &[]);
    let socket = daemon.socket.clone();
    let mut copy = Command::new("nbdcopy")
        .args(["--connections=2", "--requests=16"])
        .arg(&source)
        .arg(daemon.uri("d"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));

    // Requests in flight finish, the listener goes away and the engine closes cleanly
    // (asserted by stop()); the client's connections end, whether or not it was done.
    let started = std::time::Instant::now();
    daemon.stop();
    let stop_took = started.elapsed();
    copy.wait().unwrap();

    assert!(stop_took < std::time::Duration::from_secs(10), "shutdown took {stop_took:?}");
    assert!(!socket.exists(), "the nbd socket is removed on shutdown");
    // Every 4 KiB block is either what the client wrote or untouched: no torn writes.
    let stored = std::fs::read(data.join("disks").join(format!("{}.raw", disks[0].id))).unwrap();
    for (i, (got, want)) in stored.chunks(4096).zip(content.chunks(4096)).enumerate() {
        assert!(got == want || got.iter().all(|&b| b == 0), "block {i} is neither source nor zero");
    }
}
