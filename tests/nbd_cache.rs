//! NBD_CMD_CACHE from a real client (libnbd's Python binding, as nbdsh uses it) against the
//! real cairnd: on a restored disk whose hydration is held back, CACHE fetches the chunks of
//! the range from the store into the disk's file at once; on other exports it is accepted.

use std::process::Command;

use cairn_engine::{IoBackendKind, IoBuf, RestoreDisk};

use crate::common::{allocated, collection, disk, open, pattern, read_all, restore_point, start_cairnd};

const MIB: u64 = 1 << 20;

/// Runs `script` in libnbd's Python binding with handle `h` connected to `uri`.
fn nbdsh(uri: &str, script: &str) -> std::process::Output {
    // Debian's python3-libnbd is built for the system interpreter, not whichever python3
    // comes first on PATH; nbdsh is `python3 -m nbd`.
    Command::new("/usr/bin/python3").args(["-m", "nbd", "-u", uri, "-c", script]).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hydrates_a_restored_disk_range_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (copy_path, image) = {
        let engine = open(&data, IoBackendKind::Auto).await;
        let src = disk(&engine, "src", 16 * MIB).await.id;
        let (_, coll) = collection(&engine, "c", vec![src]).await;
        let d = engine.disk(src).unwrap();
        d.write(0, IoBuf::from_slice(&pattern(5, 8 * MIB as usize)), false).await.unwrap();
        let image = read_all(&d).await;
        let rp = restore_point(&engine, coll.id, "rp", vec![]).await;
        // Hydration is held back by the free-space watermark (here and in the daemon below).
        engine.set_free_space_watermark(u64::MAX);
        let req = RestoreDisk { restore_point: rp.id, disk: src, name: "copy".into(), direct_io: false };
        let (rec, _) = engine.restore_disk(req).await.unwrap();
        let path = engine.disk(rec.id).unwrap().path().to_owned();
        engine.close().await.unwrap();
        (path, image)
    };
    assert_eq!(allocated(&copy_path), 0, "nothing hydrated yet");

    let config = dir.path().join("cairnd.toml");
    std::fs::write(&config, "free_space_watermark = \"1P\"\n").unwrap();
    let daemon = start_cairnd(&data, &["--config", config.to_str().unwrap()]);
    let socket = data.join("nbd.sock");
    let uri = |export: &str| format!("nbd+unix:///{export}?socket={}", socket.display());

    let out = nbdsh(&uri("copy"), "h.cache(2 * 1024 * 1024, 1024 * 1024 + 4096)");
    assert!(out.status.success(), "nbdsh cache: {}", String::from_utf8_lossy(&out.stderr));
    // Chunks 4..=12 (256 KiB each) are in the file now, and nothing else is.
    let got = allocated(&copy_path);
    assert!((9 * (256 << 10)..=10 * (256 << 10)).contains(&got), "{got} bytes allocated after CACHE");
    let file = std::fs::read(&copy_path).unwrap();
    let (from, to) = (MIB as usize, (3 * MIB + (256 << 10)) as usize);
    assert!(file[from..to] == image[from..to], "the cached range is the restore point's content");
    assert!(file[..from].iter().all(|&b| b == 0), "nothing before the range was fetched");

    // The whole disk still reads back exactly through the export, cached or not.
    let out_file = dir.path().join("copy.raw");
    let out = Command::new("nbdcopy").arg(uri("copy")).arg(&out_file).output().unwrap();
    assert!(out.status.success(), "nbdcopy: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&out_file).unwrap() == image, "the restored disk reads its restore point");

    // CACHE is accepted on live disks and restore point exports, and past the end refused.
    for export in ["src", "c/rp/src"] {
        let out = nbdsh(&uri(export), "h.cache(1024 * 1024, 0)");
        assert!(out.status.success(), "{export}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = nbdsh(&uri("copy"), "h.cache(1024 * 1024, 16 * 1024 * 1024)");
    assert!(!out.status.success(), "CACHE past the end is refused");
    drop(daemon);
}
