//! A full file system is an ENOSPC, never a signal: the files written through a shared
//! mapping (change tracking, local maps) are fully allocated when created or grown, so a
//! bit set in them never needs a block the file system does not have.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use cairn_engine::{Error, IoBuf, RestoreDisk};

use crate::common::loopfs::LoopFs;
use crate::common::{BACKENDS, allocated, collection, disk, open, pattern, restore_point};

const MIB: u64 = 1 << 20;

/// The errno under an engine I/O error.
fn errno(e: &Error) -> Option<i32> {
    std::error::Error::source(e)?.downcast_ref::<std::io::Error>()?.raw_os_error()
}

/// The child's side: fills the file system through a disk, then trims and writes where the
/// change-tracking bitmap has pages never touched before. Does nothing unless run as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_entry() {
    let Some((dir, _)) = crate::common::child::child_args() else { return };
    let engine = open(&dir, BACKENDS[1]).await;
    // 2 GiB of disk on a 256 MiB file system (RocksDB preallocates its log in it): each
    // 128 MiB of disk is a page of the bitmap.
    let d = engine.disk(disk(&engine, "big", 2048 * MIB).await.id).unwrap();
    let mut offset = 0;
    let full = loop {
        match d.write(offset, IoBuf::from_slice(&pattern(offset, MIB as usize)), false).await {
            Ok(()) => offset += MIB,
            Err(e) => break e,
        }
        assert!(offset < 512 * MIB, "256 MiB of file system took {offset} bytes");
    };
    assert_eq!(errno(&full), Some(libc::ENOSPC), "{full:?}");

    d.punch(1900 * MIB, MIB, false).await.unwrap();
    let err = d.write(1500 * MIB, IoBuf::from_slice(&pattern(9, MIB as usize)), false).await.unwrap_err();
    assert_eq!(errno(&err), Some(libc::ENOSPC), "{err:?}");
    // Freeing space makes room again.
    d.punch(0, offset, false).await.unwrap();
    d.write(1500 * MIB, IoBuf::from_slice(&pattern(9, 4096)), false).await.unwrap();
    d.flush().await.unwrap();
    engine.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_file_system_is_an_enospc_not_a_signal() {
    let fs = LoopFs::new(256 * MIB);
    let (status, out) =
        crate::common::child::run("disk_full_filesystem::child_process_entry", &fs.path().join("data"), "", "");
    assert_eq!(status.signal(), None, "the engine was killed by a signal: {status}\n{out}");
    assert!(status.success(), "the child failed: {status}\n{out}");
}

/// Asserts the file at `path` has a block for every byte (no holes).
#[track_caller]
fn assert_fully_allocated(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    assert!(allocated(path) >= len, "{}: {} of {len} bytes allocated", path.display(), allocated(path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_and_local_maps_are_fully_allocated_at_create_and_grow() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let disks = dir.path().join("disks");
    let a = disk(&engine, "a", 1024 * MIB).await.id;
    assert_fully_allocated(&disks.join(format!("{a}.ctk")));
    engine.resize_disk(a, 4096 * MIB).await.unwrap();
    assert_fully_allocated(&disks.join(format!("{a}.ctk")));

    let (_, coll) = collection(&engine, "c", vec![a]).await;
    engine.disk(a).unwrap().write(0, IoBuf::from_slice(&pattern(1, 4096)), false).await.unwrap();
    let rp = restore_point(&engine, coll.id, "rp", vec![]).await;
    engine.set_free_space_watermark(u64::MAX); // keep the local map in use
    let req = RestoreDisk { restore_point: rp.id, disk: a, name: "copy".into(), direct_io: false };
    let (copy, _) = engine.restore_disk(req).await.unwrap();
    assert_fully_allocated(&disks.join(format!("{}.ctk", copy.id)));
    assert_fully_allocated(&disks.join(format!("{}.local", copy.id)));
    engine.resize_disk(copy.id, 8192 * MIB).await.unwrap();
    assert_fully_allocated(&disks.join(format!("{}.ctk", copy.id)));
    assert_fully_allocated(&disks.join(format!("{}.local", copy.id)));
}
