//! The real cairnd process: starts on defaults, shuts down cleanly on SIGTERM, refuses a
//! second daemon on the same data dir.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::daemon_bin;

fn start(data_dir: &std::path::Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(daemon_bin("cairnd"))
        .arg("--data-dir")
        .arg(data_dir)
        // Tests run in parallel: never the default HTTP port.
        .args(["--http", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn wait_for(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return seen;
            }
        }
    }
    panic!("no {needle:?} in daemon output:\n{}", seen.join("\n"));
}

#[test]
fn starts_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, rx) = start(&data);
    wait_for(&rx, "cairnd ready");
    assert!(data.join("catalog").join("CURRENT").exists(), "catalog created");

    // A second daemon on the same data dir refuses to start, with a clear reason.
    let out = Command::new(daemon_bin("cairnd")).arg("--data-dir").arg(&data).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another cairnd"), "{err}");

    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "clean shutdown exits 0, got {status}");
    wait_for(&rx, "engine closed cleanly");
}
