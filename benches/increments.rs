#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "a benchmark: failures should stop it loudly"
)]
//! Increments at block granularity, against the bytes actually changed and against a qcow2
//! overlay (qemu-img + qemu-io) taking the same writes, in the same run:
//!
//! 1. Stored bytes of an incremental restore point after 2,621 scattered 4 KiB writes
//!    (10 MiB) on a 1 GiB image (256 MiB random + 256 MiB text-like + a hole), against the
//!    10 MiB written (target 1.5x or less) and against the qcow2 overlay's growth.
//! 2. The same after ten clustered 1 MiB writes of text-like data, against their zstd size
//!    (target 1.2x or less).
//! 3. Delete cost of a restore point against its increment, for a small and a large one.
//! 4. Read throughput of the delta-heavy restore point against the full one.
//!
//! `CAIRN_BENCH_MIB` scales the image (default 1024), `CAIRN_BENCH_DIR` sets where it runs.

use std::process::Command;
use std::time::{Duration, Instant};

use cairn_engine::{
    CollectionRecord, CreateCollection, CreateDisk, CreateGroup, CreateRestorePoint, Engine, EngineConfig, IoBuf,
    RestorePointRecord,
};

const MIB: u64 = 1 << 20;

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut next = xorshift(seed);
    (0..len).map(|_| next() as u8).collect()
}

fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "restore ",
        "point ",
        "chunk ",
        "lineage ",
        "capture ",
        "freeze ",
        "disk ",
        "group ",
        "the ",
        "of ",
        "and ",
        "snapshot ",
        "block ",
        "delta ",
        "pack ",
        "store\n",
    ];
    let mut next = xorshift(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(next() % 16) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

async fn capture(engine: &Engine, coll: &CollectionRecord, name: &str) -> (RestorePointRecord, Duration) {
    let start = Instant::now();
    let req = CreateRestorePoint { name: name.into(), ..Default::default() };
    let (rp, op) = engine.create_restore_point(coll.id, req).await.unwrap();
    loop {
        if engine.operation(op.id).unwrap().state.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rp = engine.restore_point(rp.id).unwrap();
    assert_eq!(rp.state, cairn_engine::ProvisioningState::Succeeded, "{rp:?}");
    (rp, start.elapsed())
}

fn stored(rp: &RestorePointRecord) -> u64 {
    rp.disks.iter().map(|d| d.bytes_stored).sum()
}

fn row(name: &str, value: String, reference: String, ratio: f64, target: &str) {
    println!("{name:<58} {value:>16} {reference:>16} {ratio:>8.2} {target:>8}");
}

fn qemu(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let size = std::env::var("CAIRN_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024u64) * MIB;
    let dir = tempfile::tempdir_in(std::env::var("CAIRN_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path().join("data"))).await.unwrap();
    let disk = engine
        .create_disk(CreateDisk { name: "img".into(), size_bytes: size, chunk_size_bytes: None, direct_io: false })
        .await
        .unwrap();
    let group = engine
        .create_group(CreateGroup { name: "vm".into(), disks: vec![disk.id], configuration: String::new() })
        .await
        .unwrap();
    let coll = engine
        .create_collection(CreateCollection { name: "c".into(), group: group.id, ..Default::default() })
        .await
        .unwrap();
    let d = engine.disk(disk.id).unwrap();

    // The image, and the same image as a raw file for the qcow2 peer.
    let raw = dir.path().join("base.raw");
    std::fs::File::create(&raw).unwrap().set_len(size).unwrap();
    let quarter = (size / 4) as usize;
    for (off, data) in [(0, random_bytes(1, quarter)), (size / 4, text_bytes(2, quarter))] {
        for (i, part) in data.chunks(8 * MIB as usize).enumerate() {
            let at = off + (i as u64) * 8 * MIB;
            d.write(at, IoBuf::from_slice(part), false).await.unwrap();
            std::os::unix::fs::FileExt::write_all_at(
                &std::fs::File::options().write(true).open(&raw).unwrap(),
                part,
                at,
            )
            .unwrap();
        }
    }
    let (full, full_time) = capture(&engine, &coll, "full").await;
    let base_qcow2 = dir.path().join("base.qcow2");
    qemu(&["qemu-img", "convert", "-O", "qcow2", raw.to_str().unwrap(), base_qcow2.to_str().unwrap()]);
    let overlay = dir.path().join("overlay.qcow2");
    let overlay_s = overlay.to_str().unwrap().to_owned();
    qemu(&["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base_qcow2.to_str().unwrap(), &overlay_s]);
    let overlay_empty = std::fs::metadata(&overlay).unwrap().len();

    println!("increments, {} MiB image (1/4 random, 1/4 text-like, 1/2 hole), 256 KiB chunks, same run", size >> 20);
    println!("{:<58} {:>16} {:>16} {:>8} {:>8}", "row", "cairn", "reference", "ratio", "target");
    row(
        "full restore point: stored vs written",
        format!("{} MB", stored(&full) / 1_000_000),
        format!("{} MB", (size / 2) / 1_000_000),
        stored(&full) as f64 / (size / 2) as f64,
        "",
    );
    println!("  (full capture took {:.2} s)", full_time.as_secs_f64());

    // 1. 2,621 scattered random 4 KiB writes in the first half.
    let writes = 2621u64;
    let mut next = xorshift(7);
    let mut cmds = Vec::new();
    for i in 0..writes {
        let block = next() % (size / 2 / 4096);
        d.write(block * 4096, IoBuf::from_slice(&random_bytes(100 + i, 4096)), false).await.unwrap();
        cmds.push(format!("write -P {} {} 4096", (i % 250) + 1, block * 4096));
    }
    let written = writes * 4096;
    for part in cmds.chunks(500) {
        let mut args = vec!["qemu-io".to_owned(), "-f".into(), "qcow2".into()];
        for c in part {
            args.push("-c".into());
            args.push(c.clone());
        }
        args.push(overlay_s.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        qemu(&args);
    }
    let (scattered, _) = capture(&engine, &coll, "scattered").await;
    let overlay_growth = std::fs::metadata(&overlay).unwrap().len() - overlay_empty;
    let s = stored(&scattered);
    row(
        "scattered 4 KiB x 2621: stored vs written",
        format!("{:.1} MB", s as f64 / 1e6),
        format!("{:.1} MB", written as f64 / 1e6),
        s as f64 / written as f64,
        "<= 1.5",
    );
    row(
        "  against a qcow2 overlay taking the same writes",
        format!("{:.1} MB", s as f64 / 1e6),
        format!("{:.1} MB", overlay_growth as f64 / 1e6),
        s as f64 / overlay_growth as f64,
        "",
    );

    // 2. Ten clustered 1 MiB text-like writes.
    let mut zstd_size = 0u64;
    for i in 0..10u64 {
        let data = text_bytes(500 + i, MIB as usize);
        zstd_size += zstd::bulk::compress(&data, cairn_engine::format::DEFAULT_ZSTD_LEVEL).unwrap().len() as u64;
        d.write(size / 4 + i * 16 * MIB, IoBuf::from_slice(&data), false).await.unwrap();
    }
    let (clustered, _) = capture(&engine, &coll, "clustered").await;
    let c = stored(&clustered);
    row(
        "clustered 1 MiB x 10: stored vs their zstd size",
        format!("{:.2} MB", c as f64 / 1e6),
        format!("{:.2} MB", zstd_size as f64 / 1e6),
        c as f64 / zstd_size as f64,
        "<= 1.2",
    );

    // 4. Read throughput: the delta-heavy restore point against the full one.
    let mut rates = Vec::new();
    for rp in [&full, &scattered] {
        let reader = engine.disk_restore_point(rp.id, disk.id).unwrap();
        let start = Instant::now();
        let mut pos = 0;
        while pos < size / 2 {
            reader.read(pos, 4 * MIB).await.unwrap();
            pos += 4 * MIB;
        }
        rates.push((size / 2) as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    row(
        "read of the delta-heavy restore point vs the full one",
        format!("{:.0} MB/s", rates[1]),
        format!("{:.0} MB/s", rates[0]),
        rates[1] / rates[0],
        "",
    );

    // 3. Delete cost against increment size: the clustered (small) and the full (large).
    for (rp, what) in [(&clustered, "small increment"), (&full, "large increment (the full one)")] {
        let start = Instant::now();
        engine.delete_restore_point(rp.id).await.unwrap();
        let took = start.elapsed();
        let inc: u64 = rp.disks.iter().map(|x| x.chunks_captured).sum();
        row(
            &format!("delete {what}: {inc} chunks"),
            format!("{:.1} ms", took.as_secs_f64() * 1e3),
            format!("{inc} chunks"),
            took.as_secs_f64() * 1e6 / inc.max(1) as f64,
            "us/chunk",
        );
    }
    engine.close().await.unwrap();
}
