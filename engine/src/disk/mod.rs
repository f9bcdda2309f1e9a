//! The disk layer: live disks, their gate, tracking, readahead, copy-before-write and local maps.
//! Uses base, sys, io, catalog, store and chunk_map (a restored disk reads its base).
//!
//! Live disks: sparse files served read-write, with a write gate and change tracking.

pub(crate) mod access;
pub(crate) mod capture;
pub(crate) mod gate;
pub(crate) mod local_map;
pub(crate) mod readahead;
pub(crate) mod restored;
pub(crate) mod tracking;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};
use crate::base::format::{DISK_ALIGN, MAX_CHUNK_SIZE, MAX_DISK_SIZE, MAX_IO_BYTES, MIN_CHUNK_SIZE};
use crate::base::ids::{DiskId, GroupId, LineageId, Name};
use crate::catalog::Record;
use crate::chunk_map::reader::DiskRestorePointReader;
use crate::disk::capture::PendingCapture;
use crate::disk::gate::{GateClosed, WriteGate};
use crate::disk::local_map::LocalMap;
use crate::disk::readahead::Readahead;
use crate::disk::restored::Restored;
use crate::disk::tracking::ChangeTracker;
use crate::io::Io;
use crate::sys::{self, IoBuf};

/// A disk as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub id: DiskId,
    pub name: Name,
    pub lineage: LineageId,
    pub size_bytes: u64,
    pub chunk_size_bytes: u64,
    /// Open the file with O_DIRECT (bypass the page cache); I/O must then be 4 KiB aligned.
    pub direct_io: bool,
    pub group: Option<GroupId>,
    pub created_at_ms: u64,
    /// The disk restore point this disk was restored from, if it was.
    #[serde(default)]
    pub source: Option<RestoreSource>,
    /// A restored disk holds all its chunks locally and no longer reads from the store.
    #[serde(default)]
    pub hydrated: bool,
}

/// Where a restored disk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSource {
    pub restore_point: crate::base::ids::RestorePointId,
    pub disk: DiskId,
}

impl Record for DiskRecord {
    const CF: &'static str = "disks";
    fn key(&self) -> [u8; 16] {
        self.id.to_bytes()
    }
}

/// What a caller asks for when creating a disk.
#[derive(Debug, Clone)]
pub struct CreateDisk {
    pub name: String,
    pub size_bytes: u64,
    /// Power of two from 4 KiB to 4 MiB; `None` picks the default (256 KiB).
    pub chunk_size_bytes: Option<u64>,
    pub direct_io: bool,
}

/// Checks a disk size: non-zero, 4 KiB aligned, not absurd.
pub(crate) fn check_size(size_bytes: u64) -> Result<()> {
    if size_bytes == 0 {
        return Err(Error::invalid("size_bytes", "must be greater than zero"));
    }
    if !size_bytes.is_multiple_of(DISK_ALIGN) {
        return Err(Error::invalid("size_bytes", format!("{size_bytes} is not a multiple of {DISK_ALIGN}")));
    }
    if size_bytes > MAX_DISK_SIZE {
        return Err(Error::invalid("size_bytes", format!("{size_bytes} is larger than the maximum {MAX_DISK_SIZE}")));
    }
    Ok(())
}

pub(crate) fn check_chunk_size(chunk: u64) -> Result<()> {
    if !chunk.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk) {
        return Err(Error::invalid(
            "chunk_size_bytes",
            format!("{chunk} is not a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}"),
        ));
    }
    Ok(())
}

/// Largest read tried from the page cache on the caller's thread.
const FAST_READ_MAX_BYTES: u64 = 1 << 20;

/// A run of a disk's address space that is either all data or all hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    /// False for a hole: reads return zeros and nothing is stored.
    pub data: bool,
}

/// Per-disk I/O counters.
#[derive(Debug, Default)]
pub struct DiskCounters {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flush_ops: AtomicU64,
    pub trim_ops: AtomicU64,
}

/// A live disk.
pub struct Disk {
    id: DiskId,
    name: Name,
    lineage: LineageId,
    chunk_size_bytes: u64,
    direct_io: bool,
    created_at_ms: u64,
    source: Option<RestoreSource>,
    size_bytes: AtomicU64,
    path: PathBuf,
    file: Arc<File>,
    io: Io,
    gate: WriteGate,
    tracker: ArcSwap<ChangeTracker>,
    /// Set from a freeze until the capture of the closed epoch ends.
    capture: ArcSwapOption<PendingCapture>,
    /// For a disk restored from a disk restore point: its local map and base.
    restored: Option<Restored>,
    poisoned: AtomicBool,
    counters: DiskCounters,
    /// Sequential streams of reads, for readahead.
    readahead: Readahead,
    /// Attached clients and the exclusive hold.
    access: access::Access,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Paths of a disk's files inside the disks directory.
pub(crate) fn data_path(dir: &Path, id: DiskId) -> PathBuf {
    dir.join(format!("{id}.raw"))
}
pub(crate) fn tracking_path(dir: &Path, id: DiskId) -> PathBuf {
    dir.join(format!("{id}.ctk"))
}
pub(crate) fn local_path(dir: &Path, id: DiskId) -> PathBuf {
    dir.join(format!("{id}.local"))
}

fn open_data_file(path: &Path, direct_io: bool, create: bool) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if create {
        opts.create_new(true);
    }
    if direct_io {
        let flag = i32::try_from(rustix::fs::OFlags::DIRECT.bits()).unwrap_or(0);
        opts.custom_flags(flag);
    }
    let file = opts.open(path).map_err(|e| {
        let context = if direct_io && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
            "open disk file with O_DIRECT (the file system may not support it)"
        } else {
            "open disk file"
        };
        Error::io(context, path, e)
    })?;
    // The engine reads ahead itself (see readahead.rs).
    if !direct_io && let Err(e) = sys::advise_random(&file) {
        tracing::debug!(path = %path.display(), error = %e, "kernel readahead stays on");
    }
    Ok(file)
}

impl Disk {
    /// Creates the files of a new disk (sparse data file + tracking file), durably.
    pub(crate) fn create(
        dir: &Path,
        record: &DiskRecord,
        io: Io,
        base: Option<DiskRestorePointReader>,
    ) -> Result<Self> {
        let path = data_path(dir, record.id);
        let file = open_data_file(&path, record.direct_io, true)?;
        file.set_len(record.size_bytes).map_err(|e| Error::io("size disk file", &path, e))?;
        file.sync_all().map_err(|e| Error::io("sync disk file", &path, e))?;
        let tracker = ChangeTracker::create(&tracking_path(dir, record.id), record.size_bytes)?;
        let restored = match base {
            Some(base) => {
                let chunks = record.size_bytes.div_ceil(record.chunk_size_bytes);
                Some(Restored::new(LocalMap::create(&local_path(dir, record.id), chunks)?, base))
            }
            None => None,
        };
        sys::sync_dir(dir).map_err(|e| Error::io("sync disks directory", dir, e))?;
        Ok(Self::assemble(record, path, file, tracker, io, restored))
    }

    /// Opens an existing disk's files.
    pub(crate) fn open(dir: &Path, record: &DiskRecord, io: Io, base: Option<DiskRestorePointReader>) -> Result<Self> {
        let path = data_path(dir, record.id);
        let file = open_data_file(&path, record.direct_io, false)?;
        let len = file.metadata().map_err(|e| Error::io("stat disk file", &path, e))?.len();
        if len < record.size_bytes {
            // A crash between growing the file and committing the record leaves it longer,
            // never shorter: shorter means damage.
            return Err(Error::corrupt(&path, format!("disk file is {len} bytes, catalog says {}", record.size_bytes)));
        }
        let tracker = ChangeTracker::open(&tracking_path(dir, record.id))?;
        if tracker.block_count() < crate::disk::tracking::block_count(record.size_bytes) {
            return Err(Error::corrupt(&path, "change tracking covers less than the disk"));
        }
        let restored = match base {
            Some(base) => Some(Restored::new(LocalMap::open(&local_path(dir, record.id))?, base)),
            None => None,
        };
        Ok(Self::assemble(record, path, file, tracker, io, restored))
    }

    fn assemble(
        record: &DiskRecord,
        path: PathBuf,
        file: File,
        tracker: ChangeTracker,
        io: Io,
        restored: Option<Restored>,
    ) -> Self {
        Self {
            id: record.id,
            name: record.name.clone(),
            lineage: record.lineage,
            chunk_size_bytes: record.chunk_size_bytes,
            direct_io: record.direct_io,
            created_at_ms: record.created_at_ms,
            source: record.source,
            size_bytes: AtomicU64::new(record.size_bytes),
            path,
            file: Arc::new(file),
            io,
            gate: WriteGate::default(),
            tracker: ArcSwap::from_pointee(tracker),
            capture: ArcSwapOption::empty(),
            restored,
            poisoned: AtomicBool::new(false),
            counters: DiskCounters::default(),
            readahead: Readahead::default(),
            access: access::Access::default(),
        }
    }

    pub fn id(&self) -> DiskId {
        self.id
    }
    pub fn name(&self) -> &Name {
        &self.name
    }
    pub fn lineage(&self) -> LineageId {
        self.lineage
    }
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }
    pub fn chunk_size_bytes(&self) -> u64 {
        self.chunk_size_bytes
    }
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }
    /// The disk restore point this disk was restored from.
    pub fn source(&self) -> Option<RestoreSource> {
        self.source
    }
    /// The sparse data file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// I/O counters.
    pub fn counters(&self) -> &DiskCounters {
        &self.counters
    }
    /// Whether a failed sync poisoned the disk (it then refuses all I/O).
    pub fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }
    /// The change tracker as it stands (replaced on resize).
    pub fn tracker(&self) -> Arc<ChangeTracker> {
        self.tracker.load_full()
    }
    /// Smallest I/O granularity: 4 KiB for O_DIRECT disks, 1 byte otherwise.
    pub fn min_io_bytes(&self) -> u64 {
        if self.direct_io { DISK_ALIGN } else { 1 }
    }

    /// Bytes the file system has allocated to the disk's data file.
    pub fn allocated_bytes(&self) -> Result<u64> {
        sys::allocated_bytes(&self.file).map_err(|e| Error::io("stat disk file", &self.path, e))
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned { disk: self.name.to_string() });
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64, limit_len: bool) -> Result<()> {
        self.check_usable()?;
        let size = self.size_bytes();
        let end = offset.checked_add(len).ok_or_else(|| Error::invalid("offset", "offset + length overflows"))?;
        if end > size {
            return Err(Error::invalid("offset", format!("range {offset}+{len} ends past the disk size {size}")));
        }
        if limit_len && len > MAX_IO_BYTES {
            return Err(Error::invalid("length", format!("{len} is larger than the maximum I/O of {MAX_IO_BYTES}")));
        }
        let align = self.min_io_bytes();
        if !offset.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(Error::invalid(
                "offset",
                format!("O_DIRECT disk needs {align}-byte aligned I/O, got {offset}+{len}"),
            ));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`. Holes read as zeros without data I/O.
    pub async fn read(&self, offset: u64, len: u64) -> Result<IoBuf> {
        self.access.check(self.name.as_str())?;
        self.read_held(offset, len).await
    }

    /// [`Self::read`] for the holder of the disk (or anyone, when it is not held).
    pub(crate) async fn read_held(&self, offset: u64, len: u64) -> Result<IoBuf> {
        self.check_range(offset, len, true)?;
        let n = usize::try_from(len).map_err(|_| Error::invalid("length", "too large"))?;
        // Which chunks still read from the store is decided before the file is read: a chunk
        // hydrated in between would otherwise be taken from the file as it was before.
        let remote: Vec<u64> = match &self.restored {
            Some(r) if !r.local.hydrated() => {
                self.chunk_spans(offset, len).map(|(c, ..)| c).filter(|&c| r.remote(c)).collect()
            }
            _ => Vec::new(),
        };
        let (got, mut buf) = self.read_file(IoBuf::for_overwrite(n), offset, "read disk").await?;
        // The file is never shorter than the disk, so a short read only happens if someone
        // truncated it behind our back; the rest reads as zeros.
        if got < n {
            tracing::warn!(disk = %self.name, offset, len, got, "short read from disk file");
            buf[got..].fill(0);
        }
        if let Some(r) = &self.restored
            && !remote.is_empty()
        {
            self.overlay_remote(r, offset, &remote, &mut buf).await?;
        }
        self.counters.read_ops.fetch_add(1, Ordering::Relaxed);
        self.counters.read_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(buf)
    }

    /// Writes `buf` at `offset`. With `fua`, the write is durable when this returns.
    pub async fn write(&self, offset: u64, buf: IoBuf, fua: bool) -> Result<()> {
        self.write_as(offset, buf, fua, false).await
    }

    /// [`Self::write`]; `holder`: from the holder of the disk.
    pub(crate) async fn write_as(&self, offset: u64, buf: IoBuf, fua: bool, holder: bool) -> Result<()> {
        let len = buf.len() as u64;
        self.check_range(offset, len, true)?;
        {
            let _pass = self.gate.enter().await;
            if !holder {
                self.access.check(self.name.as_str())?;
            }
            self.make_local(offset, len).await?;
            self.preserve_for_capture(offset, len).await?;
            self.tracker.load().mark(offset, len);
            let (res, _buf) = self.write_file(buf, offset).await;
            res.map_err(|e| Error::io("write disk", &self.path, e))?;
        }
        self.counters.write_ops.fetch_add(1, Ordering::Relaxed);
        self.counters.write_bytes.fetch_add(len, Ordering::Relaxed);
        if fua {
            self.sync_file().await?;
            self.persist_local().await?;
        }
        Ok(())
    }

    /// Deallocates `[offset, offset + len)`: it reads as zeros and the file stays sparse.
    /// Serves both trim and write-zeroes.
    pub async fn punch(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.punch_as(offset, len, fua, false).await
    }

    /// [`Self::punch`]; `holder`: from the holder of the disk.
    pub(crate) async fn punch_as(&self, offset: u64, len: u64, fua: bool, holder: bool) -> Result<()> {
        self.check_range(offset, len, false)?;
        if len == 0 {
            return Ok(());
        }
        {
            let _pass = self.gate.enter().await;
            if !holder {
                self.access.check(self.name.as_str())?;
            }
            self.make_local(offset, len).await?;
            self.preserve_for_capture(offset, len).await?;
            self.tracker.load().mark(offset, len);
            self.io
                .punch_hole(&self.file, offset, len)
                .await
                .map_err(|e| Error::io("punch hole in disk", &self.path, e))?;
        }
        self.counters.trim_ops.fetch_add(1, Ordering::Relaxed);
        if fua {
            self.sync_file().await?;
            self.persist_local().await?;
        }
        Ok(())
    }

    /// Chunks of `[offset, offset + len)`, as (chunk index, start, end) clipped to the range.
    fn chunk_spans(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> + use<> {
        let cs = self.chunk_size_bytes;
        let end = offset + len;
        let first = offset / cs;
        let last = if len == 0 { first } else { (end - 1) / cs + 1 };
        (first..last).map(move |c| (c, (c * cs).max(offset), ((c + 1) * cs).min(end)))
    }

    /// Replaces the bytes of the `remote` chunks (still in the store when the read began)
    /// with their base content.
    async fn overlay_remote(&self, r: &Restored, offset: u64, remote: &[u64], buf: &mut [u8]) -> Result<()> {
        for (c, start, end) in self.chunk_spans(offset, buf.len() as u64) {
            if !remote.contains(&c) {
                continue;
            }
            let data = r.base.read_chunk(c).await?;
            let index = |v: u64| usize::try_from(v).map_err(|_| Error::invalid("offset", "too large"));
            let from = index(start - c * self.chunk_size_bytes)?;
            let to = index(end - c * self.chunk_size_bytes)?;
            let at = index(start - offset)?;
            // A remote chunk is one of the base's, and the disk's chunk is as long as the
            // base's (growing makes a short last chunk local): the span always fits.
            let (src, dst) = (data.get(from..to), buf.get_mut(at..at + (to - from)));
            debug_assert!(src.is_some() && dst.is_some(), "chunk {c} of {} bytes, read {from}..{to}", data.len());
            let (Some(src), Some(dst)) = (src, dst) else {
                return Err(Error::corrupt(
                    &self.path,
                    format!("chunk {c} of the base holds {} bytes, the read needs {from}..{to}", data.len()),
                ));
            };
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    /// Reads the file into `buf` at `offset`; returns the bytes read (short only at the end of
    /// the file). Page-cache hits are served on the spot: a non-blocking read costs a copy,
    /// where a trip through the I/O backend costs a thread hand-off.
    async fn read_file(&self, mut buf: IoBuf, offset: u64, what: &'static str) -> Result<(usize, IoBuf)> {
        if !self.direct_io
            && buf.len() as u64 <= FAST_READ_MAX_BYTES
            && let Some(got) = sys::read_cached(&self.file, &mut buf, offset)
        {
            self.read_ahead(offset, buf.len() as u64, false);
            return Ok((got, buf));
        }
        self.read_ahead(offset, buf.len() as u64, true);
        let (res, buf) = self.io.read_at(&self.file, buf, offset).await;
        Ok((res.map_err(|e| Error::io(what, &self.path, e))?, buf))
    }

    /// Writes `buf` to the file at `offset`: in one request with O_DIRECT, else in page-cache
    /// sized pieces (see [`crate::io::BUFFERED_WRITE_PIECE`]).
    async fn write_file(&self, buf: IoBuf, offset: u64) -> (std::io::Result<()>, IoBuf) {
        if self.direct_io {
            self.io.write_direct_at(&self.file, buf, offset).await
        } else {
            self.io.write_at(&self.file, buf, offset).await
        }
    }

    /// Follows the reads' streams and reads ahead of a sequential one, in the background.
    fn read_ahead(&self, offset: u64, len: u64, missed: bool) {
        if self.direct_io {
            return;
        }
        let Some((from, len)) = self.readahead.on_read(offset, len, self.size_bytes(), missed) else {
            return;
        };
        let file = self.file.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let io = self.io.clone();
                runtime.spawn(async move {
                    if let Err(e) = io.will_need(&file, from, len).await {
                        tracing::debug!(offset = from, len, error = %e, "readahead refused");
                    }
                });
            }
            // A plain thread (a capture job) can wait for the advice itself.
            Err(_) => {
                if let Err(e) = sys::will_need(&file, from, len) {
                    tracing::debug!(offset = from, len, error = %e, "readahead refused");
                }
            }
        }
    }

    /// Before a write or trim of a restored disk: every chunk it touches that is still in the
    /// store gets its base content written to the file and synced, then becomes local.
    async fn make_local(&self, offset: u64, len: u64) -> Result<()> {
        let Some(r) = &self.restored else { return Ok(()) };
        if r.local.hydrated() {
            return Ok(());
        }
        for (c, _, _) in self.chunk_spans(offset, len) {
            if !r.remote(c) {
                continue;
            }
            let _stripe = r.stripe(c).lock().await;
            if !r.remote(c) {
                continue;
            }
            let data = r.base.read_chunk(c).await?;
            if !crate::store::chunk::is_zero(&data) {
                let (res, _) = self.write_file(IoBuf::from_slice(&data), c * self.chunk_size_bytes).await;
                res.map_err(|e| Error::io("fill chunk from its restore point", &self.path, e))?;
                self.sync_file().await?;
            }
            r.local.set_local(c);
        }
        Ok(())
    }

    /// Brings `[offset, offset + len)` close ahead of reads (NBD CACHE). For a restored disk
    /// still hydrating, the chunks it covers are hydrated now, out of hydration order
    /// (fetched from the store, written, synced, marked local); the kernel is then asked to
    /// read the range ahead into the page cache. Returns the chunks hydrated.
    pub async fn prefetch(&self, offset: u64, len: u64) -> Result<u64> {
        self.check_usable()?;
        self.access.check(self.name.as_str())?;
        let end = offset.checked_add(len).ok_or_else(|| Error::invalid("offset", "offset + length overflows"))?;
        if end > self.size_bytes() {
            return Err(Error::invalid(
                "offset",
                format!("range {offset}+{len} ends past the disk size {}", self.size_bytes()),
            ));
        }
        let mut written = Vec::new();
        if let Some(r) = &self.restored
            && !r.local.hydrated()
        {
            for (c, ..) in self.chunk_spans(offset, len) {
                if r.remote(c) && self.hydrate_chunk(c).await? {
                    written.push(c);
                }
            }
            self.hydrate_commit(&written).await?;
        }
        if len > 0
            && let Err(e) = self.io.will_need(&self.file, offset, len).await
        {
            tracing::debug!(disk = %self.name, error = %e, "readahead advice refused");
        }
        Ok(written.len() as u64)
    }

    /// Hydration of one chunk: writes its base content to the file unless it is local or
    /// zero. Returns true when data was written and the chunk awaits [`Self::hydrate_commit`].
    pub(crate) async fn hydrate_chunk(&self, c: u64) -> Result<bool> {
        let Some(r) = &self.restored else { return Ok(false) };
        let _stripe = r.stripe(c).lock().await;
        if !r.remote(c) {
            return Ok(false);
        }
        if r.base_is_zero(c)? {
            // The file is still a hole there: nothing to write, nothing to sync.
            r.local.set_local(c);
            return Ok(false);
        }
        let data = r.base.read_chunk(c).await?;
        let (res, _) = self.write_file(IoBuf::from_slice(&data), c * self.chunk_size_bytes).await;
        res.map_err(|e| Error::io("hydrate chunk", &self.path, e))?;
        Ok(true)
    }

    /// Makes a batch of hydrated chunks durable, then marks them local.
    pub(crate) async fn hydrate_commit(&self, chunks: &[u64]) -> Result<()> {
        let Some(r) = &self.restored else { return Ok(()) };
        if !chunks.is_empty() {
            self.sync_file().await?;
        }
        for &c in chunks {
            r.local.set_local(c);
        }
        Ok(())
    }

    /// Ends hydration: every chunk is local; the disk no longer reads from the store.
    pub(crate) fn finish_hydration(&self) -> Result<()> {
        match &self.restored {
            Some(r) => r.local.mark_hydrated(),
            None => Ok(()),
        }
    }

    /// For a restored disk: (chunks local so far, chunks in all, hydrated).
    pub fn hydration(&self) -> Option<(u64, u64, bool)> {
        self.restored.as_ref().map(|r| (r.local.local_count(), r.local.chunks(), r.local.hydrated()))
    }

    /// A copy of the local map's bits, for a full-scan capture of a restored disk.
    pub(crate) fn local_snapshot(&self) -> Option<Vec<u64>> {
        let chunks = self.size_bytes().div_ceil(self.chunk_size_bytes);
        self.restored.as_ref().filter(|r| !r.local.hydrated()).map(|r| r.local.snapshot(chunks))
    }

    /// Copy-before-write: before `[offset, offset + len)` is overwritten, keep the old content
    /// of its blocks in chunks the pending capture has not read yet.
    async fn preserve_for_capture(&self, offset: u64, len: u64) -> Result<()> {
        let Some(cap) = self.capture.load_full() else { return Ok(()) };
        let cs = cap.chunk_size();
        let end = (offset + len).min(cap.size_bytes());
        if offset >= end {
            return Ok(());
        }
        for c in offset / cs..=(end - 1) / cs {
            if !cap.pending(c) {
                continue;
            }
            // One read for the blocks this write covers, taken before the write is issued;
            // `preserve` keeps only those nobody preserved meanwhile (see capture.rs).
            let Some((first, last)) = cap.unpreserved_span(c, offset, len) else { continue };
            let n = usize::try_from((last - first) * crate::base::format::BLOCK_SIZE)
                .map_err(|_| Error::invalid("length", "too large"))?;
            let at = first * crate::base::format::BLOCK_SIZE;
            let (got, mut buf) = self.read_file(IoBuf::for_overwrite(n), at, "read blocks to preserve").await?;
            buf[got..].fill(0);
            cap.preserve(c, first, &buf)?;
        }
        Ok(())
    }

    /// Installs the copy-before-write state of a capture (inside a freeze).
    pub(crate) fn begin_capture(&self, cap: Arc<PendingCapture>) {
        self.capture.store(Some(cap));
    }

    /// Drops the capture state: writes stop preserving.
    pub(crate) fn end_capture(&self) {
        self.capture.store(None);
    }

    /// The pending capture, if one runs.
    pub fn pending_capture(&self) -> Option<Arc<PendingCapture>> {
        self.capture.load_full()
    }

    /// [`Self::read_chunk_for_capture`] if the chunk is all in the page cache (a copy on the
    /// calling thread, which may be a plain thread); `None`, with nothing changed, if not.
    pub(crate) fn read_chunk_for_capture_cached(&self, cap: &PendingCapture, c: u64) -> Result<Option<IoBuf>> {
        if self.direct_io {
            return Ok(None);
        }
        let (start, end) = cap.chunk_range(c);
        let len = usize::try_from(end - start).map_err(|_| Error::invalid("chunk", "too large"))?;
        let mut data = IoBuf::for_overwrite(len);
        if sys::read_cached(&self.file, &mut data, start).is_none() {
            return Ok(None);
        }
        self.read_ahead(start, end - start, false);
        cap.finish_read(c, &mut data)?;
        Ok(Some(data))
    }

    /// Reads chunk `c` as it was at the freeze: the file's content with preserved blocks laid
    /// over it. Marks the chunk done, so writers stop preserving its blocks.
    pub(crate) async fn read_chunk_for_capture(&self, cap: &PendingCapture, c: u64) -> Result<IoBuf> {
        let (start, end) = cap.chunk_range(c);
        let len = usize::try_from(end - start).map_err(|_| Error::invalid("chunk", "too large"))?;
        // No lock across the read: blocks written meanwhile were preserved first, and
        // `finish_read` lays them back (see capture.rs).
        let (got, mut data) = self.read_file(IoBuf::for_overwrite(len), start, "read chunk to capture").await?;
        data[got..].fill(0);
        cap.finish_read(c, &mut data)?;
        Ok(data)
    }

    /// Data extents of the whole disk, as (offset, len).
    pub(crate) fn data_extents(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self.extents(0, self.size_bytes())?.into_iter().filter(|e| e.data).map(|e| (e.offset, e.len)).collect())
    }

    /// Makes every write acknowledged so far durable, and the change bitmap with it; on a
    /// restored disk still hydrating, the local map too (a chunk it covers must not read
    /// as "still in the store" after a power loss).
    pub async fn flush(&self) -> Result<()> {
        self.access.check(self.name.as_str())?;
        self.flush_held().await
    }

    /// [`Self::flush`] for the holder of the disk.
    pub(crate) async fn flush_held(&self) -> Result<()> {
        self.check_usable()?;
        self.sync_file().await?;
        let tracker = self.tracker();
        let persisted = tokio::task::spawn_blocking(move || tracker.persist())
            .await
            .map_err(|e| Error::io("persist change tracking", &self.path, std::io::Error::other(e)))?;
        self.poison_on_err(persisted)?;
        self.persist_local().await?;
        self.counters.flush_ops.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the local map's bits durable (restored disks still hydrating; no-op otherwise).
    /// Every bit is set only after its chunk's data was synced, so once this returns, every
    /// chunk local so far is local after a power loss too.
    async fn persist_local(&self) -> Result<()> {
        let Some(r) = self.restored.as_ref().filter(|r| !r.local.hydrated()) else { return Ok(()) };
        let local = r.local.clone();
        let persisted = tokio::task::spawn_blocking(move || local.persist())
            .await
            .map_err(|e| Error::io("persist local map", &self.path, std::io::Error::other(e)))?;
        self.poison_on_err(persisted)
    }

    async fn sync_file(&self) -> Result<()> {
        let res = match sync_failpoint() {
            Ok(()) => self.io.sync_data(&self.file).await.map_err(|e| Error::io("fdatasync disk", &self.path, e)),
            Err(e) => Err(e),
        };
        self.poison_on_err(res)
    }

    /// A failed sync may have dropped dirty pages: refuse all further I/O rather than pretend.
    fn poison_on_err(&self, res: Result<()>) -> Result<()> {
        if let Err(e) = &res {
            tracing::error!(disk = %self.name, error = %e, "sync failed; disk poisoned");
            self.poisoned.store(true, Ordering::Release);
        }
        res
    }

    /// Data and hole runs covering `[offset, offset + len)` (SEEK_DATA / SEEK_HOLE).
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len, false)?;
        let Some(r) = self.restored.as_ref().filter(|r| !r.local.hydrated()) else {
            return self.file_extents(offset, len);
        };
        // Chunks still in the store are data or hole as their base says.
        let mut out: Vec<Extent> = Vec::new();
        for (c, start, end) in self.chunk_spans(offset, len) {
            let parts = if r.remote(c) {
                vec![Extent { offset: start, len: end - start, data: !r.base_is_zero(c)? }]
            } else {
                self.file_extents(start, end - start)?
            };
            for e in parts {
                match out.last_mut() {
                    Some(last) if last.data == e.data && last.offset + last.len == e.offset => last.len += e.len,
                    _ => out.push(e),
                }
            }
        }
        Ok(out)
    }

    fn file_extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset + len;
        let io = |e| Error::io("seek data/hole in disk", &self.path, e);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = sys::next_data(&self.file, pos).map_err(io)?.unwrap_or(end).min(end);
            if data > pos {
                out.push(Extent { offset: pos, len: data - pos, data: false });
                pos = data;
                continue;
            }
            let hole = sys::next_hole(&self.file, pos).map_err(io)?.min(end);
            out.push(Extent { offset: pos, len: hole - pos, data: true });
            pos = hole;
        }
        Ok(out)
    }

    /// Closes the write gate (freeze); dropping the guard reopens it.
    pub(crate) async fn close_gate(&self) -> GateClosed {
        self.gate.close().await
    }

    /// Grows the disk. Writes wait at the gate meanwhile; the caller commits the record.
    pub(crate) async fn grow(&self, new_size: u64) -> Result<()> {
        self.check_usable()?;
        self.access.check(self.name.as_str())?;
        let _closed = self.gate.close().await;
        if self.capture.load().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "disk {} has a restore point capture running; resize it after the capture ends",
                self.name
            )));
        }
        let old_size = self.size_bytes();
        // A short last chunk gets longer: its restore point entries hold the short content,
        // so it must be captured again at its new length (the blocks it gains are zeros that
        // count as changed). On a restored disk it becomes local first, as for a write:
        // captures read changed chunks from the file.
        let tail = (old_size, old_size.next_multiple_of(self.chunk_size_bytes).min(new_size));
        if tail.0 < tail.1 {
            // Durably: after the grow, the base's short chunk no longer fits the disk's.
            self.make_local(old_size - 1, 1).await?;
            self.persist_local().await?;
        }
        let old = self.tracker();
        self.file.set_len(new_size).map_err(|e| Error::io("grow disk file", &self.path, e))?;
        let sync = self.file.sync_all().map_err(|e| Error::io("sync disk file", &self.path, e));
        self.poison_on_err(sync)?;
        let grown = old.grow(new_size)?;
        grown.mark(tail.0, tail.1 - tail.0);
        self.tracker.store(Arc::new(grown));
        self.size_bytes.store(new_size, Ordering::Release);
        Ok(())
    }

    /// Clean close: data durable, tracking persisted and marked clean.
    pub(crate) async fn close(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        self.sync_file().await?;
        self.persist_local().await?;
        self.tracker().close()
    }
}

/// Where kill and health tests make a disk sync fail (`disk::sync=return`).
fn sync_failpoint() -> Result<()> {
    crate::failpoint!("disk::sync");
    Ok(())
}
