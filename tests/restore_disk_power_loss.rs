//! Power loss on a restored disk still hydrating: a write acknowledged by a FLUSH must read
//! back after the power comes back, and hydration must not lay the base over it. The data
//! dir is on a loop-mounted ext4; the "power loss" is a copy of its device taken right after
//! the FLUSH (what the file system only holds in its page cache is lost), mounted anew.

use cairn_engine::{Engine, EngineConfig, IoBackendKind, IoBuf, OperationState, RestoreDisk};

use crate::common::loopfs::LoopFs;
use crate::common::{assert_same, collection, disk, pattern, read_all, read_rp, restore_point, wait_op};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;

async fn open_on(dir: &std::path::Path, watermark: u64) -> Engine {
    let config = EngineConfig {
        io_backend: IoBackendKind::Blocking,
        free_space_watermark_bytes: watermark,
        ..EngineConfig::new(dir)
    };
    Engine::open(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_writes_to_a_hydrating_disk_survive_a_power_loss() {
    let fs = LoopFs::new(128 * MIB);
    let data_dir = fs.path().join("data");
    let engine = open_on(&data_dir, 0).await;
    let a = disk(&engine, "src", 4 * MIB).await.id;
    let (_, coll) = collection(&engine, "src", vec![a]).await;
    let src = engine.disk(a).unwrap();
    src.write(0, IoBuf::from_slice(&pattern(1, 4 * MIB as usize)), false).await.unwrap();
    let rp = restore_point(&engine, coll.id, "rp", vec![]).await;
    let mut expect = read_rp(&engine, rp.id, a).await;
    engine.set_free_space_watermark(u64::MAX); // hold hydration at its first chunk
    let req = RestoreDisk { restore_point: rp.id, disk: a, name: "copy".into(), direct_io: false };
    let (rec, op) = engine.restore_disk(req).await.unwrap();
    let d = engine.disk(rec.id).unwrap();

    // Chunk 3 is still in the store: the write fills it from the base first.
    d.write(3 * CHUNK + 100, IoBuf::from_slice(&pattern(2, 5000)), false).await.unwrap();
    expect[(3 * CHUNK + 100) as usize..(3 * CHUNK + 5100) as usize].copy_from_slice(&pattern(2, 5000));
    // Chunk 5 is hydrated out of order (as a hydration batch would), then written.
    assert_eq!(d.prefetch(5 * CHUNK, CHUNK).await.unwrap(), 1);
    d.write(5 * CHUNK + 4096, IoBuf::from_slice(&pattern(3, 4096)), false).await.unwrap();
    expect[(5 * CHUNK + 4096) as usize..(5 * CHUNK + 8192) as usize].copy_from_slice(&pattern(3, 4096));
    d.flush().await.unwrap();
    let after = fs.power_loss_copy();
    engine.close().await.unwrap();
    drop((d, src, engine));

    let engine = open_on(&after.path().join("data"), u64::MAX).await;
    let d = engine.disk(rec.id).unwrap();
    assert_same(&read_all(&d).await, &expect, "restored disk after the power loss");
    engine.set_free_space_watermark(0);
    let op = wait_op(&engine, op.id).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    assert_same(&read_all(&d).await, &expect, "restored disk hydrated after the power loss");
    assert_same(&std::fs::read(d.path()).unwrap(), &expect, "restored disk's file hydrated after the power loss");
    engine.close().await.unwrap();
}
