#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "a benchmark: failures should stop it loudly"
)]
//! Live-disk throughput: Cairn's disk layer (each I/O backend) against a plain file written
//! with the same pattern by plain `pwrite`/`pread` threads, in the same run, as ratios.
//!
//! Rows: 4 KiB random write/read at queue depth 16, 1 MiB sequential write/read at depth 4,
//! both through the page cache (the default cache mode of live disks).
//! `CAIRN_BENCH_MIB` sets the disk size (default 1024).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_engine::{CreateDisk, Disk, Engine, EngineConfig, IoBackendKind, IoBuf};

const DEPTH_RANDOM: usize = 16;
const DEPTH_SEQ: usize = 4;

#[derive(Clone, Copy)]
enum Pattern {
    Random4k,
    Seq1m,
}

impl Pattern {
    fn ops(self, size: u64) -> Vec<(u64, usize)> {
        match self {
            Pattern::Random4k => {
                let blocks = size / 4096;
                let mut x = 0x2545_F491_4F6C_DD1Du64;
                (0..blocks / 4)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        ((x % blocks) * 4096, 4096)
                    })
                    .collect()
            }
            Pattern::Seq1m => (0..size >> 20).map(|i| (i << 20, 1 << 20)).collect(),
        }
    }
    fn depth(self) -> usize {
        match self {
            Pattern::Random4k => DEPTH_RANDOM,
            Pattern::Seq1m => DEPTH_SEQ,
        }
    }
}

async fn run_disk(disk: &Arc<Disk>, ops: &[(u64, usize)], depth: usize, write: bool) -> Duration {
    let start = Instant::now();
    let per = ops.len().div_ceil(depth);
    let tasks = ops.chunks(per).map(|part| {
        let disk = disk.clone();
        let part = part.to_vec();
        tokio::spawn(async move {
            for (off, len) in part {
                if write {
                    disk.write(off, IoBuf::from_slice(&vec![0xA5; len]), false).await.unwrap();
                } else {
                    disk.read(off, len as u64).await.unwrap();
                }
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }
    start.elapsed()
}

fn run_plain(path: &std::path::Path, ops: &[(u64, usize)], depth: usize, write: bool) -> Duration {
    let file = Arc::new(OpenOptions::new().read(true).write(true).open(path).unwrap());
    let start = Instant::now();
    let per = ops.len().div_ceil(depth);
    std::thread::scope(|s| {
        for part in ops.chunks(per) {
            let file = file.clone();
            s.spawn(move || {
                let mut buf = vec![0xA5u8; 1 << 20];
                for &(off, len) in part {
                    if write {
                        file.write_all_at(&buf[..len], off).unwrap();
                    } else {
                        file.read_exact_at(&mut buf[..len], off).unwrap();
                    }
                }
            });
        }
    });
    start.elapsed()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let size: u64 = std::env::var("CAIRN_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024) << 20;
    let dir = tempfile::tempdir_in(std::env::var("CAIRN_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
    println!("live disk vs plain file, {} MiB, page cache, same run", size >> 20);
    println!("{:<10} {:<20} {:>12} {:>12} {:>8}", "backend", "row", "cairn MB/s", "plain MB/s", "ratio");
    for backend in [IoBackendKind::Uring, IoBackendKind::Blocking] {
        let data = dir.path().join(format!("{backend:?}"));
        let engine = Engine::open(EngineConfig { io_backend: backend, ..EngineConfig::new(&data) }).await.unwrap();
        let rec = engine
            .create_disk(CreateDisk {
                name: "bench".into(),
                size_bytes: size,
                chunk_size_bytes: None,
                direct_io: false,
            })
            .await
            .unwrap();
        let disk = engine.disk(rec.id).unwrap();
        let plain = dir.path().join(format!("{backend:?}.plain"));
        std::fs::File::create(&plain).unwrap().set_len(size).unwrap();

        for (n, (pattern, name)) in
            [(Pattern::Seq1m, "1MiB seq"), (Pattern::Random4k, "4KiB random")].into_iter().enumerate()
        {
            let ops = pattern.ops(size);
            let bytes: u64 = ops.iter().map(|o| o.1 as u64).sum();
            for (k, write) in [true, false].into_iter().enumerate() {
                // Fairness: each run starts with no dirty pages left by the other, and who
                // goes first alternates, so neither always meets a clean page cache.
                let sync = || assert!(std::process::Command::new("sync").status().unwrap().success());
                let (c, p) = if (n + k) % 2 == 0 {
                    sync();
                    let c = run_disk(&disk, &ops, pattern.depth(), write).await;
                    sync();
                    (c, run_plain(&plain, &ops, pattern.depth(), write))
                } else {
                    sync();
                    let p = run_plain(&plain, &ops, pattern.depth(), write);
                    sync();
                    (run_disk(&disk, &ops, pattern.depth(), write).await, p)
                };
                let row = format!("{name} {}", if write { "write" } else { "read" });
                println!(
                    "{:<10} {:<20} {:>12.0} {:>12.0} {:>8.2}",
                    engine.io_backend(),
                    row,
                    mbps(bytes, c),
                    mbps(bytes, p),
                    p.as_secs_f64() / c.as_secs_f64()
                );
            }
        }
        engine.close().await.unwrap();
    }
}
