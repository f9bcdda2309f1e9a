//! Shared helpers of the end-to-end tests.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cairn_engine::{CreateDisk, DiskRecord, Engine, EngineConfig, IoBackendKind};

/// Both I/O backends: every I/O test runs on each.
pub const BACKENDS: [IoBackendKind; 2] = [IoBackendKind::Uring, IoBackendKind::Blocking];

pub async fn open(dir: &Path, io_backend: IoBackendKind) -> Engine {
    Engine::open(EngineConfig { io_backend, ..EngineConfig::new(dir) }).await.unwrap()
}

pub async fn disk(engine: &Engine, name: &str, size_bytes: u64) -> DiskRecord {
    engine
        .create_disk(CreateDisk { name: name.into(), size_bytes, chunk_size_bytes: None, direct_io: false })
        .await
        .unwrap()
}

/// Bytes the file system allocated to `path` (what `stat` reports as blocks * 512).
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Deterministic bytes for a pattern identified by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Path of a freshly built binary of the daemon crate: builds it (a no-op when up to date)
/// so the tests never run a stale binary.
pub fn daemon_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    let bins = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--locked", "-p", "cairn-daemon", "--bins", "--message-format=json"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo build");
        assert!(out.status.success(), "building the daemon failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact")
            .filter_map(|v| {
                let name = v["target"]["name"].as_str()?.to_owned();
                Some((name, PathBuf::from(v["executable"].as_str()?)))
            })
            .collect()
    });
    bins.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone()).unwrap_or_else(|| panic!("no binary {name} built"))
}

/// Waits until an operation ends; returns its final record.
pub async fn wait_op(engine: &Engine, id: cairn_engine::OperationId) -> cairn_engine::OperationRecord {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let op = engine.operation(id).unwrap();
        if op.state.is_terminal() {
            return op;
        }
        assert!(std::time::Instant::now() < deadline, "operation {id} still running: {op:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Creates a restore point and waits for its capture; returns the final record.
pub async fn restore_point(
    engine: &Engine,
    collection: cairn_engine::CollectionId,
    name: &str,
    exclude: Vec<cairn_engine::DiskId>,
) -> cairn_engine::RestorePointRecord {
    let req = cairn_engine::CreateRestorePoint { name: name.into(), exclude_disks: exclude, ..Default::default() };
    let (rp, op) = engine.create_restore_point(collection, req).await.unwrap();
    let op = wait_op(engine, op.id).await;
    assert_eq!(op.state, cairn_engine::OperationState::Succeeded, "{op:?}");
    engine.restore_point(rp.id).unwrap()
}

/// A group of the given disks with a collection over it.
pub async fn collection(
    engine: &Engine,
    name: &str,
    disks: Vec<cairn_engine::DiskId>,
) -> (cairn_engine::GroupRecord, cairn_engine::CollectionRecord) {
    let group = engine
        .create_group(cairn_engine::CreateGroup {
            name: format!("{name}-vm"),
            disks,
            configuration: format!("{{\"vm\":\"{name}\"}}"),
        })
        .await
        .unwrap();
    let coll = engine
        .create_collection(cairn_engine::CreateCollection { name: name.into(), group: group.id, ..Default::default() })
        .await
        .unwrap();
    (group, coll)
}

/// The whole content of a live disk.
pub async fn read_all(disk: &cairn_engine::Disk) -> Vec<u8> {
    let mut out = Vec::new();
    let size = disk.size_bytes();
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(8 << 20);
        out.extend_from_slice(&disk.read(pos, n).await.unwrap());
        pos += n;
    }
    out
}

/// The whole content of a disk restore point.
pub async fn read_rp(engine: &Engine, rp: cairn_engine::RestorePointId, disk: cairn_engine::DiskId) -> Vec<u8> {
    let r = engine.disk_restore_point(rp, disk).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < r.size_bytes() {
        let n = (r.size_bytes() - pos).min(8 << 20);
        out.extend_from_slice(&r.read(pos, n).await.unwrap());
        pos += n;
    }
    out
}

/// Asserts two images are equal, reporting the first differing offset instead of the bytes.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!("{what}: images differ (lengths {} and {}), first difference at byte {first:?}", got.len(), want.len());
}
