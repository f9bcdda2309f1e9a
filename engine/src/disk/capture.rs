//! Capture of a closed change-tracking epoch into the chunk store, with copy-before-write.
//!
//! From the freeze until its capture ends, a disk carries a [`PendingCapture`]. A write (or
//! trim) that lands on a chunk the capture still has to read first preserves the old content
//! of the 4 KiB blocks it overwrites; the capture lays preserved blocks over what it reads
//! from the file. So the restore point holds the disk exactly as it was at the freeze, while
//! the guest pays a small read, not a chunk copy. Preserved blocks stay in memory up to a
//! bound and spill to a file past it.
//!
//! Nobody holds a lock across I/O. The one invariant: a block of a pending chunk is modified
//! only after its old content is preserved. A writer reads the old blocks first, then, under
//! the short `preserved` lock, keeps those still unpreserved while the chunk is pending (a
//! block read after someone else preserved it is dropped, so what is kept is always the
//! freeze-time content). The capture reads the chunk with no lock at all, then under the same
//! lock marks it done and lays the preserved blocks over what it read: any block it read
//! mid-write was preserved before that write began. Once a chunk is done writers stop
//! preserving, and the capture read before that instant.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::base::error::{Error, Result};
use crate::base::format::{BLOCK_BYTES, BLOCK_SIZE};
use crate::disk::tracking::ChangeTracker;

/// Preserved old block contents, bounded in memory, spilling to a file.
struct Preserved {
    mem: HashMap<u64, Box<[u8]>>,
    mem_limit_blocks: usize,
    spill_path: PathBuf,
    spill: Option<File>,
    spilled: HashMap<u64, u64>,
    spill_len: u64,
}

impl Preserved {
    fn contains(&self, block: u64) -> bool {
        self.mem.contains_key(&block) || self.spilled.contains_key(&block)
    }

    fn insert(&mut self, block: u64, data: &[u8]) -> Result<()> {
        if self.mem.len() < self.mem_limit_blocks {
            self.mem.insert(block, data.into());
            return Ok(());
        }
        let io = |e| Error::io("spill preserved block", &self.spill_path, e);
        if self.spill.is_none() {
            tracing::info!(path = %self.spill_path.display(), "copy-before-write buffer full; spilling to a file");
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.spill_path)
                .map_err(io)?;
            self.spill = Some(f);
        }
        if let Some(f) = &self.spill {
            f.write_all_at(data, self.spill_len).map_err(io)?;
        }
        self.spilled.insert(block, self.spill_len);
        self.spill_len += data.len() as u64;
        Ok(())
    }

    /// Takes the preserved content of `block`, if any.
    fn take(&mut self, block: u64) -> Result<Option<Vec<u8>>> {
        if let Some(b) = self.mem.remove(&block) {
            return Ok(Some(b.into_vec()));
        }
        let Some(off) = self.spilled.remove(&block) else { return Ok(None) };
        let mut buf = vec![0u8; BLOCK_BYTES];
        if let Some(f) = &self.spill {
            f.read_exact_at(&mut buf, off).map_err(|e| Error::io("read spilled block", &self.spill_path, e))?;
        }
        Ok(Some(buf))
    }

    fn any_in(&self, first: u64, end: u64) -> bool {
        // Chunks hold at most 1024 blocks: probing each is cheaper than scanning the maps.
        (first..end).any(|b| self.contains(b))
    }
}

impl Drop for Preserved {
    fn drop(&mut self) {
        if self.spill.take().is_some() {
            let _ = std::fs::remove_file(&self.spill_path);
        }
    }
}

/// Copy-before-write state of one disk while its closed epoch is captured.
pub struct PendingCapture {
    tracker: Arc<ChangeTracker>,
    full_scan: bool,
    chunk_size: u64,
    size_bytes: u64,
    done: Vec<AtomicU64>,
    /// Also orders "mark a chunk done" against "preserve blocks of it" (see the module doc).
    preserved: Mutex<Preserved>,
    preserved_blocks: AtomicU64,
    /// For a full scan of a restored disk: its local map at the freeze. Only local chunks
    /// are captured; the others still equal the base the lineage reads through.
    local_at_freeze: std::sync::OnceLock<Vec<u64>>,
}

impl std::fmt::Debug for PendingCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCapture")
            .field("full_scan", &self.full_scan)
            .field("chunk_size", &self.chunk_size)
            .field("size_bytes", &self.size_bytes)
            .finish_non_exhaustive()
    }
}

impl PendingCapture {
    pub(crate) fn new(
        tracker: Arc<ChangeTracker>,
        full_scan: bool,
        chunk_size: u64,
        size_bytes: u64,
        spill_path: PathBuf,
        mem_limit_bytes: usize,
    ) -> Self {
        let chunks = size_bytes.div_ceil(chunk_size);
        let words = usize::try_from(chunks.div_ceil(64)).unwrap_or(usize::MAX);
        Self {
            tracker,
            full_scan,
            chunk_size,
            size_bytes,
            done: (0..words).map(|_| AtomicU64::new(0)).collect(),
            preserved: Mutex::new(Preserved {
                mem: HashMap::new(),
                mem_limit_blocks: mem_limit_bytes / BLOCK_BYTES,
                spill_path,
                spill: None,
                spilled: HashMap::new(),
                spill_len: 0,
            }),
            preserved_blocks: AtomicU64::new(0),
            local_at_freeze: std::sync::OnceLock::new(),
        }
    }

    /// Records a restored disk's local map as it is at the freeze (call inside the freeze).
    pub(crate) fn set_local_at_freeze(&self, words: Vec<u64>) {
        let _ = self.local_at_freeze.set(words);
    }

    fn local_at_freeze(&self, c: u64) -> bool {
        match self.local_at_freeze.get() {
            None => true,
            Some(words) => {
                words.get(usize::try_from(c / 64).unwrap_or(usize::MAX)).is_some_and(|w| w & (1 << (c % 64)) != 0)
            }
        }
    }

    pub(crate) fn full_scan(&self) -> bool {
        self.full_scan
    }

    /// Whether this state was built for the disk as it stands: its tracker (a resize
    /// replaces it), size and scan mode.
    pub(crate) fn fits(&self, tracker: &Arc<ChangeTracker>, size_bytes: u64, full_scan: bool) -> bool {
        Arc::ptr_eq(&self.tracker, tracker) && self.size_bytes == size_bytes && self.full_scan == full_scan
    }

    pub(crate) fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Disk size at the freeze.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub(crate) fn chunk_count(&self) -> u64 {
        self.size_bytes.div_ceil(self.chunk_size)
    }

    /// Blocks preserved so far (copy-before-write reads the guest paid for).
    pub fn preserved_blocks(&self) -> u64 {
        self.preserved_blocks.load(Ordering::Relaxed)
    }

    fn blocks_per_chunk(&self) -> u64 {
        self.chunk_size / BLOCK_SIZE
    }

    /// Byte range of chunk `c` (the last chunk may be short).
    pub(crate) fn chunk_range(&self, c: u64) -> (u64, u64) {
        let start = c * self.chunk_size;
        (start, (start + self.chunk_size).min(self.size_bytes))
    }

    fn is_done(&self, c: u64) -> bool {
        let Some(w) = self.done.get((c / 64) as usize) else { return true };
        w.load(Ordering::Acquire) & (1 << (c % 64)) != 0
    }

    fn mark_done(&self, c: u64) {
        if let Some(w) = self.done.get((c / 64) as usize) {
            w.fetch_or(1 << (c % 64), Ordering::AcqRel);
        }
    }

    /// Whether the capture still has to read chunk `c`.
    pub(crate) fn pending(&self, c: u64) -> bool {
        if c >= self.chunk_count() || self.is_done(c) {
            return false;
        }
        if self.full_scan {
            return self.local_at_freeze(c);
        }
        self.tracker.closed_any(c * self.blocks_per_chunk(), self.blocks_per_chunk())
    }

    /// Chunks the capture must read, ascending. For a full scan: chunks with data in
    /// `data_extents` (taken after the thaw) or with preserved blocks; a chunk that is a hole
    /// now and has nothing preserved was a hole at the freeze.
    pub(crate) fn chunks_to_capture(&self, data_extents: &[(u64, u64)]) -> Vec<u64> {
        if !self.full_scan {
            let bpc = self.blocks_per_chunk();
            let mut out: Vec<u64> = self.tracker.closed_blocks().into_iter().map(|b| b / bpc).collect();
            out.dedup();
            out.retain(|&c| c < self.chunk_count());
            return out;
        }
        if self.local_at_freeze.get().is_some() {
            // Every local chunk, holes included: for a restored lineage an absent entry means
            // "as the base", so a chunk zeroed since the restore needs its own entry.
            return (0..self.chunk_count()).filter(|&c| self.local_at_freeze(c)).collect();
        }
        let mut out = Vec::new();
        for &(off, len) in data_extents {
            let first = off / self.chunk_size;
            let last = (off + len - 1) / self.chunk_size;
            for c in first..=last {
                if out.last() != Some(&c) {
                    out.push(c);
                }
            }
        }
        let preserved = self.preserved.lock().unwrap_or_else(|p| p.into_inner());
        let bpc = self.blocks_per_chunk();
        let extra: Vec<u64> = preserved.mem.keys().chain(preserved.spilled.keys()).map(|b| b / bpc).collect();
        drop(preserved);
        out.extend(extra);
        out.sort_unstable();
        out.dedup();
        out.retain(|&c| c < self.chunk_count());
        out
    }

    /// Whether chunk `c` has few enough dirty blocks in the closed epoch to be worth storing
    /// as a delta.
    pub(crate) fn few_dirty_blocks(&self, c: u64) -> bool {
        let bpc = self.blocks_per_chunk();
        let dirty = self.tracker.closed_count(c * bpc, bpc);
        dirty * 100 <= bpc * crate::store::delta::MAX_DELTA_SHARE_PERCENT as u64
    }

    /// Blocks of chunk `c` (indices within the chunk) dirty in the closed epoch.
    pub(crate) fn dirty_blocks_in_chunk(&self, c: u64) -> Vec<usize> {
        let bpc = self.blocks_per_chunk();
        (0..bpc).filter(|&b| self.tracker.closed_any(c * bpc + b, 1)).filter_map(|b| usize::try_from(b).ok()).collect()
    }

    /// The span of blocks `[first, end)` of `[offset, offset + len)` inside chunk `c` that
    /// are not preserved yet, or `None` when all are (a hint: a concurrent writer may
    /// preserve some before [`Self::preserve`] runs, which then keeps only the rest).
    pub(crate) fn unpreserved_span(&self, c: u64, offset: u64, len: u64) -> Option<(u64, u64)> {
        let (cs, ce) = self.chunk_range(c);
        let start = offset.max(cs);
        let end = (offset + len).min(ce);
        if start >= end {
            return None;
        }
        let preserved = self.preserved.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing = (start / BLOCK_SIZE..end.div_ceil(BLOCK_SIZE)).filter(|b| !preserved.contains(*b));
        let first = missing.next()?;
        let last = missing.next_back().unwrap_or(first);
        Some((first, last + 1))
    }

    /// Keeps `data`, the content of blocks `first..` of chunk `c` read before the caller's
    /// write, for each block not preserved yet, if `c` is still pending. Returns whether the
    /// chunk was still pending (if not, the capture has read it and nothing is needed).
    pub(crate) fn preserve(&self, c: u64, first: u64, data: &[u8]) -> Result<bool> {
        let mut p = self.preserved.lock().unwrap_or_else(|p| p.into_inner());
        if !self.pending(c) {
            return Ok(false);
        }
        for (i, block) in data.chunks(BLOCK_BYTES).enumerate() {
            let b = first + i as u64;
            if !p.contains(b) {
                p.insert(b, block)?;
                self.preserved_blocks.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(true)
    }

    /// Completes the capture's read of chunk `c`: `data` is the chunk as read from the file
    /// (with no lock held, before this call). Marks `c` done, so writers stop preserving it,
    /// and lays its preserved blocks over `data`, which then holds the chunk at the freeze.
    pub(crate) fn finish_read(&self, c: u64, data: &mut [u8]) -> Result<()> {
        // Writers wait on this lock: never hold it at background priority.
        crate::sys::critical(|| self.finish_read_locked(c, data))
    }

    fn finish_read_locked(&self, c: u64, data: &mut [u8]) -> Result<()> {
        let (cs, _) = self.chunk_range(c);
        let bpc = self.blocks_per_chunk();
        let mut p = self.preserved.lock().unwrap_or_else(|p| p.into_inner());
        self.mark_done(c);
        if !p.any_in(c * bpc, (c + 1) * bpc) {
            return Ok(());
        }
        for b in c * bpc..(c + 1) * bpc {
            if let Some(old) = p.take(b)? {
                // A preserved block lies inside its chunk: one that does not fit would leave
                // the guest's newer write in the restore point.
                let dst = usize::try_from(b * BLOCK_SIZE - cs)
                    .ok()
                    .and_then(|at| data.get_mut(at..at.checked_add(old.len())?));
                let Some(dst) = dst else {
                    debug_assert!(false, "preserved block {b} does not fit chunk {c} of {} bytes", data.len());
                    return Err(Error::corrupt(
                        &p.spill_path,
                        format!("preserved block {b} does not fit chunk {c} of {} bytes", data.len()),
                    ));
                };
                dst.copy_from_slice(&old);
            }
        }
        Ok(())
    }
}
