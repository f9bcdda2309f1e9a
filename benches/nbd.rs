#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "a benchmark: failures should stop it loudly"
)]
//! NBD throughput: Cairn's live-disk export (the real cairnd, release build) against
//! `qemu-nbd` and nbdkit's file plugin serving a raw file on the same file system, all through
//! the page cache, driven by the same client (fio's nbd engine) in the same run, as ratios.
//!
//! Rows: 1 MiB sequential write then read, 4 KiB random write then read, queue depth 16;
//! then a sequential read of the disk out of the page cache and random writes after it.
//! Each run starts after a `sync`, and the servers' order rotates from row to row.
//! `CAIRN_BENCH_MIB` sets the disk size (default 1024); `CAIRN_BENCH_SECONDS` is the length
//! of every row but the sequential write, which fills the disk once (default 10).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_engine::{CreateDisk, Engine, EngineConfig};
use cairn_test_support::wait_for_socket;

const DEPTH: u32 = 16;

struct Row {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    /// Runs for a fixed time; otherwise makes one pass over the disk.
    timed: bool,
    /// Drops the image's pages from the page cache first.
    cold: bool,
}

const ROWS: [Row; 6] = [
    Row { name: "1 MiB seq write", rw: "write", bs: "1M", timed: false, cold: false },
    Row { name: "1 MiB seq read", rw: "read", bs: "1M", timed: true, cold: false },
    Row { name: "4 KiB rand write", rw: "randwrite", bs: "4k", timed: true, cold: false },
    Row { name: "4 KiB rand read", rw: "randread", bs: "4k", timed: true, cold: false },
    // A backup-style pass over an uncached disk, then guest writes into what it read: the
    // page cache's folios are whatever that pass left.
    Row { name: "1 MiB seq read, cold", rw: "read", bs: "1M", timed: false, cold: true },
    Row { name: "4 KiB rand write, after", rw: "randwrite", bs: "4k", timed: true, cold: false },
];

/// Drops the clean pages of `path` from the page cache.
fn evict(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

/// A server process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds cairnd in release mode and returns its path.
fn cairnd_bin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "-p", "cairn-daemon", "--bin", "cairnd", "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "building cairnd failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "cairnd")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("no cairnd artifact")
}

/// Runs one fio row; returns (bytes per second, IOPS).
fn fio(uri: &str, row: &Row, size_mib: u64, seconds: u64) -> (f64, f64) {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        &format!("--rw={}", row.rw),
        &format!("--bs={}", row.bs),
        &format!("--iodepth={DEPTH}"),
        &format!("--size={size_mib}M"),
        "--output-format=json",
    ]);
    // A single pass of a cached read takes a fraction of a second, too short to compare.
    if row.timed {
        cmd.args(["--time_based", &format!("--runtime={seconds}"), "--randrepeat=0"]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "fio failed: {}", String::from_utf8_lossy(&out.stderr));
    // fio prints "fio: connected to NBD server" before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let json = &text[text.find('{').expect("fio printed no JSON")..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let dir = if row.rw.contains("write") { "write" } else { "read" };
    let job = &v["jobs"][0][dir];
    (job["bw_bytes"].as_f64().unwrap(), job["iops"].as_f64().unwrap())
}

#[tokio::main]
async fn main() {
    let size_mib: u64 = std::env::var("CAIRN_BENCH_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let seconds: u64 = std::env::var("CAIRN_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let cairnd = cairnd_bin();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let engine = Engine::open(EngineConfig::new(&data)).await.unwrap();
        engine
            .create_disk(CreateDisk {
                name: "bench".into(),
                size_bytes: size_mib << 20,
                chunk_size_bytes: None,
                direct_io: false,
            })
            .await
            .unwrap();
        engine.close().await.unwrap();
    }

    let mut servers = Vec::new();
    let mut targets: Vec<(&str, String)> = Vec::new();
    let mut images: Vec<PathBuf> = Vec::new();
    images.push(
        std::fs::read_dir(data.join("disks"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "raw"))
            .expect("no disk file"),
    );

    let sock = data.join("nbd.sock");
    servers.push(Server(Command::new(&cairnd).arg("--data-dir").arg(&data).env("RUST_LOG", "warn").spawn().unwrap()));
    wait_for_socket(&sock);
    targets.push(("cairn", format!("nbd+unix:///bench?socket={}", sock.display())));

    for (name, args) in [
        (
            "qemu-nbd",
            vec![
                "-f",
                "raw",
                "--persistent",
                "--cache=writeback",
                "--aio=io_uring",
                "--discard=unmap",
                "-x",
                "bench",
                "-k",
            ],
        ),
        // -P: nbdkit writes the pid file once it accepts connections (a probe connection
        // would only make it log a broken handshake).
        ("nbdkit", vec!["-f", "-e", "bench", "-P", "PIDFILE", "-U"]),
    ] {
        let img = dir.path().join(format!("{name}.raw"));
        std::fs::File::create(&img).unwrap().set_len(size_mib << 20).unwrap();
        images.push(img.clone());
        let sock = dir.path().join(format!("{name}.sock"));
        let pidfile = dir.path().join(format!("{name}.pid"));
        let mut cmd = Command::new(name);
        cmd.args(args.iter().map(|a| if *a == "PIDFILE" { pidfile.as_os_str() } else { a.as_ref() })).arg(&sock);
        if name == "nbdkit" {
            cmd.arg("file").arg(&img);
        } else {
            cmd.arg(&img);
        }
        servers.push(Server(cmd.spawn().unwrap()));
        if name == "nbdkit" {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !pidfile.exists() {
                assert!(Instant::now() < deadline, "nbdkit never came up");
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            wait_for_socket(&sock);
        }
        targets.push((name, format!("nbd+unix:///bench?socket={}", sock.display())));
    }

    println!("NBD export, {size_mib} MiB, fio nbd engine, depth {DEPTH}, page cache (same run)\n");
    println!("{:<18} {:>16} {:>16} {:>16} {:>10} {:>10}", "row", "cairn", "qemu-nbd", "nbdkit", "/qemu-nbd", "/nbdkit");
    for (r, row) in ROWS.iter().enumerate() {
        // Fairness: dirty pages one server's run leaves behind are written back before the
        // next run starts, and the order rotates from row to row, so no server always goes
        // first into a clean page cache.
        let mut results = vec![(0.0, 0.0); targets.len()];
        for k in 0..targets.len() {
            let i = (r + k) % targets.len();
            // A pass out of the disk varies more than a cached run: the median of three.
            let mut runs = Vec::new();
            for _ in 0..if row.cold { 3 } else { 1 } {
                let synced = Command::new("sync").status().unwrap();
                assert!(synced.success(), "sync failed");
                if row.cold {
                    evict(&images[i]);
                }
                runs.push(fio(&targets[i].1, row, size_mib, seconds));
            }
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            results[i] = runs[runs.len() / 2];
        }
        let fmt = |(bw, iops): (f64, f64)| {
            if row.bs == "4k" {
                format!("{:.1}k IOPS", iops / 1000.0)
            } else {
                format!("{:.0} MiB/s", bw / f64::from(1u32 << 20))
            }
        };
        let ratio = |i: usize| results[0].0 / results[i].0;
        println!(
            "{:<18} {:>16} {:>16} {:>16} {:>9.2}x {:>9.2}x",
            row.name,
            fmt(results[0]),
            fmt(results[1]),
            fmt(results[2]),
            ratio(1),
            ratio(2)
        );
    }
    drop(servers);
}
