//! Shared helpers of the end-to-end tests: the test support crate, plus what drives the
//! engine in-process (the test support crate links no RocksDB).

use std::path::Path;

use cairn_engine::{CreateDisk, DiskRecord, Engine, EngineConfig, IoBackendKind};
pub use cairn_test_support::*;

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

/// Creates live disks `(name, size_bytes)` in `data_dir` with the engine in-process, then
/// closes the engine so a daemon can open the data dir.
pub async fn create_disks(data_dir: &Path, disks: &[(&str, u64)]) -> Vec<DiskRecord> {
    let engine = open(data_dir, IoBackendKind::Auto).await;
    let mut records = Vec::new();
    for (name, size) in disks {
        records.push(disk(&engine, name, *size).await);
    }
    engine.close().await.unwrap();
    drop(engine);
    records
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

/// The root of a disk image, by `base::merkle`'s rule: BLAKE3 leaves of each chunk, an RFC
/// 6962 tree with BLAKE3 and its 0x00/0x01 domain bytes, bound to the sizes in derive-key mode.
pub fn merkle_root_of_image(image: &[u8], chunk: u64) -> cairn_engine::Root {
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        let node = |prefix: u8, parts: &[&[u8; 32]]| {
            let mut h = blake3::Hasher::new();
            h.update(&[prefix]);
            parts.iter().for_each(|p| {
                h.update(&p[..]);
            });
            *h.finalize().as_bytes()
        };
        match leaves.len() {
            1 => node(0, &[&leaves[0]]),
            n => {
                let k = n.next_power_of_two() / 2;
                node(1, &[&mth(&leaves[..k]), &mth(&leaves[k..])])
            }
        }
    }
    let leaves: Vec<[u8; 32]> =
        image.chunks(usize::try_from(chunk).unwrap()).map(|c| *blake3::hash(c).as_bytes()).collect();
    let mut h = blake3::Hasher::new_derive_key("cairn 2026-12-04 disk restore point merkle root v1");
    h.update(&(image.len() as u64).to_le_bytes());
    h.update(&chunk.to_le_bytes());
    h.update(&mth(&leaves));
    cairn_engine::Root(*h.finalize().as_bytes())
}

/// A gRPC channel to a cairnd started on `data_dir`.
pub async fn grpc(data_dir: &Path) -> tonic::transport::Channel {
    cairn_cli::client::connect(&grpc_endpoint(data_dir)).await.unwrap()
}
