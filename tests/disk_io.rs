//! Live disk I/O on real sparse files, on both backends.

use cairn_engine::{CreateDisk, ErrorKind, Extent};

use crate::common::{BACKENDS, allocated, disk, open, pattern};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_data_reads_back_and_holes_stay_holes() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), backend).await;
        let rec = disk(&engine, "d0", 256 * MIB).await;
        let d = engine.disk(rec.id).unwrap();
        assert_eq!(allocated(d.path()), 0, "a new disk allocates nothing");

        // Aligned, unaligned and block-straddling writes.
        let writes =
            [(0u64, 4096usize), (10 * MIB + 123, 10_000), (100 * MIB - 1000, 3 * 4096), (256 * MIB - 4096, 4096)];
        for (i, (off, len)) in writes.iter().enumerate() {
            d.write(*off, cairn_engine::IoBuf::from_slice(&pattern(i as u64, *len)), false).await.unwrap();
        }
        for (i, (off, len)) in writes.iter().enumerate() {
            let got = d.read(*off, *len as u64).await.unwrap();
            assert_eq!(&*got, &pattern(i as u64, *len)[..], "{backend:?} write {i}");
        }
        // Never-written regions read as zeros, and the file stays sparse.
        let hole = d.read(50 * MIB, MIB).await.unwrap();
        assert!(hole.iter().all(|&b| b == 0));
        assert!(allocated(d.path()) <= 2 * MIB, "{backend:?}: {} bytes allocated", allocated(d.path()));

        // The allocation map agrees with what was written.
        let ext = d.extents(0, 8192).unwrap();
        assert_eq!(
            ext,
            vec![Extent { offset: 0, len: 4096, data: true }, Extent { offset: 4096, len: 4096, data: false }]
        );

        d.flush().await.unwrap();
        engine.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_and_write_zeroes_punch_holes() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), backend).await;
        let rec = disk(&engine, "d0", 64 * MIB).await;
        let d = engine.disk(rec.id).unwrap();
        d.write(0, cairn_engine::IoBuf::from_slice(&pattern(7, 8 * MIB as usize)), false).await.unwrap();
        d.flush().await.unwrap();
        let before = allocated(d.path());
        assert!(before >= 8 * MIB);

        d.punch(MIB, 2 * MIB, false).await.unwrap(); // trim
        d.punch(4 * MIB + 100, 5000, true).await.unwrap(); // write-zeroes, unaligned, FUA
        let got = d.read(0, 8 * MIB).await.unwrap();
        let mut want = pattern(7, 8 * MIB as usize);
        want[MIB as usize..3 * MIB as usize].fill(0);
        want[4 * MIB as usize + 100..4 * MIB as usize + 5100].fill(0);
        assert!(got[..] == want[..], "{backend:?}: contents after punching");
        assert!(allocated(d.path()) <= before - 2 * MIB, "{backend:?}: trim gave space back");
        let holes: Vec<Extent> = d.extents(0, 8 * MIB).unwrap().into_iter().filter(|e| !e.data).collect();
        assert!(holes.contains(&Extent { offset: MIB, len: 2 * MIB, data: false }), "{holes:?}");
        // Trim and zeroes mark their blocks dirty like writes.
        assert!(d.tracker().active_blocks().contains(&(MIB / 4096)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_io_disks_need_aligned_io() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), backend).await;
        let rec = engine
            .create_disk(CreateDisk {
                name: "direct".into(),
                size_bytes: 16 * MIB,
                chunk_size_bytes: Some(1 << 20),
                direct_io: true,
            })
            .await
            .unwrap();
        let d = engine.disk(rec.id).unwrap();
        assert_eq!(d.min_io_bytes(), 4096);
        d.write(8192, cairn_engine::IoBuf::from_slice(&pattern(3, 65536)), true).await.unwrap();
        assert_eq!(&*d.read(8192, 65536).await.unwrap(), &pattern(3, 65536)[..]);
        let err = d.write(100, cairn_engine::IoBuf::zeroed(4096), false).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let err = d.read(0, 100).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);

        // Captures read O_DIRECT disks through the I/O backend (never the page-cache path),
        // and copy-before-write preserves with aligned reads.
        d.write(0, cairn_engine::IoBuf::from_slice(&pattern(4, 12 * MIB as usize)), false).await.unwrap();
        let at_freeze = crate::common::read_all(&d).await;
        let (_, coll) = crate::common::collection(&engine, "c", vec![rec.id]).await;
        let req = cairn_engine::CreateRestorePoint { name: "rp".into(), ..Default::default() };
        let (rp, op) = engine.create_restore_point(coll.id, req).await.unwrap();
        for i in 0..64u64 {
            let at = (i * 7 % 12) * MIB + i * 4096;
            d.write(at, cairn_engine::IoBuf::from_slice(&pattern(100 + i, 8192)), false).await.unwrap();
        }
        let op = crate::common::wait_op(&engine, op.id).await;
        assert_eq!(op.state, cairn_engine::OperationState::Succeeded, "{op:?}");
        crate::common::assert_same(
            &crate::common::read_rp(&engine, rp.id, rec.id).await,
            &at_freeze,
            &format!("{backend:?}: O_DIRECT disk's restore point"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_grows_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), BACKENDS[0]).await;
    let rec = disk(&engine, "grow", 4 * MIB).await;
    let d = engine.disk(rec.id).unwrap();
    d.write(4 * MIB - 4096, cairn_engine::IoBuf::from_slice(&pattern(1, 4096)), false).await.unwrap();
    assert_eq!(
        d.write(4 * MIB, cairn_engine::IoBuf::zeroed(4096), false).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );

    let grown = engine.resize_disk(rec.id, 64 * MIB).await.unwrap();
    assert_eq!(grown.size_bytes, 64 * MIB);
    assert_eq!(std::fs::metadata(d.path()).unwrap().len(), 64 * MIB);
    d.write(64 * MIB - 4096, cairn_engine::IoBuf::from_slice(&pattern(2, 4096)), false).await.unwrap();
    assert_eq!(&*d.read(4 * MIB - 4096, 4096).await.unwrap(), &pattern(1, 4096)[..]);
    assert_eq!(&*d.read(64 * MIB - 4096, 4096).await.unwrap(), &pattern(2, 4096)[..]);
    // Tracking covers the new size and kept the old bit.
    let blocks = d.tracker().active_blocks();
    assert_eq!(blocks, vec![4 * MIB / 4096 - 1, 64 * MIB / 4096 - 1]);

    let err = engine.resize_disk(rec.id, 8 * MIB).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    engine.close().await.unwrap();
    drop(engine);
    let engine = open(dir.path(), BACKENDS[1]).await;
    assert_eq!(engine.disk_record(rec.id).unwrap().size_bytes, 64 * MIB);
}

/// Whether all of `[offset, offset + len)` of `path` is in the page cache (mincore, which
/// reads nothing in; a probing read would start the kernel's readahead).
fn cached(path: &std::path::Path, offset: u64, len: usize) -> bool {
    resident(path, offset, len).iter().all(|&r| r)
}

/// Per page of `[offset, offset + len)` of `path`: whether it is in the page cache.
fn resident(path: &std::path::Path, offset: u64, len: usize) -> Vec<bool> {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: the mapping is read-only and never dereferenced: it only names the range to
    // mincore, so a concurrent change of the file cannot make us read torn memory.
    let map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len).map(&file) }.unwrap();
    let mut resident = vec![0u8; len.div_ceil(4096)];
    // SAFETY: `map` is a live mapping of `len` bytes and `resident` has a byte per page.
    let rc = unsafe { libc::mincore(map.as_ptr().cast_mut().cast(), len, resident.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    resident.iter().map(|&b| b & 1 == 1).collect()
}

/// Drops `path`'s clean pages from the page cache.
fn evict(path: &std::path::Path) {
    let file = std::fs::File::open(path).unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

/// The kernel's readahead is off for disk files (it would fill the page cache with large
/// folios, which make small writes slow on ext4); the engine reads ahead of sequential
/// streams itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_are_read_ahead_by_the_engine_not_the_kernel() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path(), backend).await;
        let rec = disk(&engine, "d0", 64 * MIB).await;
        let d = engine.disk(rec.id).unwrap();
        d.write(0, cairn_engine::IoBuf::from_slice(&pattern(3, 32 * MIB as usize)), false).await.unwrap();
        d.flush().await.unwrap();
        // Every page the test reads or looks at must be out of the cache, or a read that hits
        // it would not count as a miss and the stream would not start where the test expects.
        // The kernel may keep a page it cannot drop at that moment: evict again until none is.
        let mut tries = 0;
        loop {
            evict(d.path());
            let left = resident(d.path(), 0, 32 * MIB as usize).iter().filter(|&&r| r).count();
            if left == 0 {
                break;
            }
            tries += 1;
            assert!(tries < 50, "{backend:?}: {left} pages stay in the page cache after eviction");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        // One read is not a stream: it brings in what it asked for and nothing more (the
        // kernel's own readahead would have read on past it).
        let got = d.read(0, 64 << 10).await.unwrap();
        assert_eq!(&*got, &pattern(3, 32 * MIB as usize)[..64 << 10]);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(cached(d.path(), 0, 64 << 10));
        assert!(!cached(d.path(), 64 << 10, 4096), "{backend:?}: the kernel read ahead");

        // A sequential stream gets the data ahead of it read in.
        let data = pattern(3, 32 * MIB as usize);
        for i in 0..8u64 {
            let at = 4 * MIB + i * (256 << 10);
            let got = d.read(at, 256 << 10).await.unwrap();
            assert_eq!(&*got, &data[at as usize..at as usize + (256 << 10)], "{backend:?} read {i}");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cached(d.path(), 6 * MIB, MIB as usize) {
            assert!(std::time::Instant::now() < deadline, "{backend:?}: nothing was read ahead of the stream");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Far past the stream, nothing was read.
        assert!(!cached(d.path(), 20 * MIB, 4096), "{backend:?}: read ahead too far");
        engine.close().await.unwrap();
    }
}
