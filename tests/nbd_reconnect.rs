//! Restarts under a running client: QEMU's NBD client (qemu-io, with `reconnect-delay`)
//! keeps one export open while cairnd is killed, stopped cleanly and started again, and sees
//! no I/O error: a request sent while the daemon is down waits and completes on the new one,
//! and every acknowledged write reads back.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use crate::common::{grpc, grpc_disk, start_cairnd};

/// qemu-io driven line by line through its stdin.
struct QemuIo {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl QemuIo {
    fn open(socket: &std::path::Path, export: &str) -> Self {
        let opts =
            format!("driver=nbd,server.type=unix,server.path={},export={export},reconnect-delay=60", socket.display());
        let mut child = Command::new("qemu-io")
            .args(["--image-opts", &opts])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-io (qemu-utils)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, stdin, lines }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The line that ends `cmd` (sent before): its result, or its error.
    fn result(&mut self, cmd: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| panic!("no result of {cmd:?} from qemu-io"));
            if ["wrote ", "read ", "failed", "error", "Error"].iter().any(|w| line.contains(w)) {
                return line.trim_start_matches("qemu-io> ").to_owned();
            }
        }
    }

    fn run(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.result(cmd)
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_sees_no_error_across_kills_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    grpc_disk(&grpc(dir.path()).await, "a", 16 << 20).await;
    let mut q = QemuIo::open(&daemon.socket, "a");

    let first = q.run("write -P 0xab 0 1M");
    daemon.kill();
    // Sent while no daemon runs: it waits for the reconnect.
    q.send("write -P 0xcd 1M 1M");
    std::thread::sleep(Duration::from_millis(500));
    let daemon = start_cairnd(dir.path(), &[]);
    let while_down = q.result("write -P 0xcd 1M 1M");
    let after_kill = q.run("read -P 0xab 0 1M");
    q.send("flush");
    daemon.stop();
    let daemon = start_cairnd(dir.path(), &[]);
    let after_stop = q.run("read -P 0xcd 1M 1M");
    let last = q.run("write -P 0xef 2M 64k");
    let read_last = q.run("read -P 0xef 2M 64k");

    assert!(first.starts_with("wrote 1048576/1048576 bytes at offset 0"), "{first}");
    assert!(while_down.starts_with("wrote 1048576/1048576 bytes at offset 1048576"), "{while_down}");
    assert!(after_kill.starts_with("read 1048576/1048576 bytes at offset 0"), "{after_kill}");
    assert!(after_stop.starts_with("read 1048576/1048576 bytes at offset 1048576"), "{after_stop}");
    assert!(last.starts_with("wrote 65536/65536"), "{last}");
    assert!(read_last.starts_with("read 65536/65536"), "{read_last}");
    drop(q);
    daemon.stop();
}
