//! Reopening after a clean close and after an unclean one.

use cairn_engine::IoBuf;

use crate::common::{BACKENDS, disk, open, pattern};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_close_keeps_data_and_trusted_tracking() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let engine = open(dir.path(), backend).await;
            let rec = disk(&engine, "d", 1 << 24).await;
            let d = engine.disk(rec.id).unwrap();
            d.write(40960, IoBuf::from_slice(&pattern(9, 8192)), false).await.unwrap();
            engine.close().await.unwrap();
            rec.id
        };
        let engine = open(dir.path(), backend).await;
        let d = engine.disk(id).unwrap();
        assert_eq!(&*d.read(40960, 8192).await.unwrap(), &pattern(9, 8192)[..]);
        assert!(!d.tracker().untrusted(), "{backend:?}: clean close keeps tracking trusted");
        assert_eq!(d.tracker().active_blocks(), vec![10, 11]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_close_keeps_acknowledged_writes_and_distrusts_tracking() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let engine = open(dir.path(), backend).await;
            let rec = disk(&engine, "d", 1 << 24).await;
            let d = engine.disk(rec.id).unwrap();
            d.write(0, IoBuf::from_slice(&pattern(1, 4096)), false).await.unwrap();
            d.flush().await.unwrap();
            // Acknowledged but not flushed: survives a process death (page cache).
            d.write(4096, IoBuf::from_slice(&pattern(2, 4096)), false).await.unwrap();
            rec.id
            // Engine dropped without close(): as if the process died.
        };
        let engine = open(dir.path(), backend).await;
        let d = engine.disk(id).unwrap();
        assert_eq!(&*d.read(0, 4096).await.unwrap(), &pattern(1, 4096)[..]);
        assert_eq!(&*d.read(4096, 4096).await.unwrap(), &pattern(2, 4096)[..]);
        assert!(d.tracker().untrusted(), "{backend:?}: unclean shutdown must distrust tracking");
        // Untrusted stays untrusted across a clean close: only a full capture clears it.
        engine.close().await.unwrap();
        drop(engine);
        let engine = open(dir.path(), backend).await;
        assert!(engine.disk(id).unwrap().tracker().untrusted());
    }
}

#[tokio::test]
async fn orphan_files_from_a_crashed_create_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(dir.path(), BACKENDS[1]).await;
        disk(&engine, "kept", 1 << 20).await;
        engine.close().await.unwrap();
    }
    let orphan = dir.path().join("disks").join(format!("{}.raw", cairn_engine::DiskId::new()));
    std::fs::write(&orphan, b"left by a create that died before its commit").unwrap();
    let engine = open(dir.path(), BACKENDS[1]).await;
    assert!(!orphan.exists());
    assert_eq!(engine.list_disks().len(), 1);
}
