//! Change tracking: which 4 KiB blocks of a disk were written since the last restore point.
//!
//! Two bitmap slots live in a memory-mapped file beside the disk (layout in
//! [`crate::base::format::TrackingHeader`]). Writes set bits in the active slot with atomic ORs
//! straight into the page cache. Inside a group freeze, [`ChangeTracker::switch_epoch`]
//! swaps the slots in memory only (no sync in the freeze window); the header recording the
//! switch is persisted after the thaw. A capture then reads the closed slot and, when it
//! ends, either clears it (restore point committed) or ORs it back into the active slot
//! (capture failed), so no change is ever lost.
//!
//! The header's OPEN flag is set while the engine has the disk open. Finding it set at open
//! means the last run did not close cleanly: tracking is then marked UNTRUSTED and the next
//! capture rescans every allocated extent.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::base::error::{Error, Result};
use crate::base::format::{
    BLOCK_SIZE, TRACKING_FLAG_CLOSED_PENDING, TRACKING_FLAG_OPEN, TRACKING_FLAG_UNTRUSTED, TrackingHeader,
};
use crate::sys::{self, MappedWords, sync_dir};

/// A disk's change-tracking bitmaps.
pub struct ChangeTracker {
    path: PathBuf,
    file: File,
    slots: [MappedWords; 2],
    block_count: u64,
    active: AtomicU32,
    epoch: AtomicU64,
    flags: AtomicU32,
    /// Serialises header writes so a stale header never overwrites a newer one.
    header_lock: Mutex<()>,
}

impl std::fmt::Debug for ChangeTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeTracker")
            .field("path", &self.path)
            .field("block_count", &self.block_count)
            .field("header", &self.header())
            .finish()
    }
}

/// Blocks covering `size_bytes`.
pub(crate) fn block_count(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(BLOCK_SIZE)
}

fn word_count(block_count: u64) -> Result<usize> {
    usize::try_from(block_count.div_ceil(64)).map_err(|_| Error::invalid("size_bytes", "too large for this machine"))
}

impl ChangeTracker {
    /// Creates a tracking file for a new disk: everything clean, trusted, epoch 0.
    ///
    /// `fresh` disks start trusted: an empty disk has no changes to miss.
    pub(crate) fn create(path: &Path, size_bytes: u64) -> Result<Self> {
        let blocks = block_count(size_bytes);
        let header = TrackingHeader { flags: 0, active_slot: 0, epoch: 0, block_count: blocks };
        write_fresh(path, header, &[])?;
        Self::open(path)
    }

    /// Opens a tracking file, noticing an unclean previous shutdown, and marks it open.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let io_err = |context, e| Error::io(context, path, e);
        let file =
            OpenOptions::new().read(true).write(true).open(path).map_err(|e| io_err("open change-tracking file", e))?;
        let mut head = [0u8; crate::base::format::TRACKING_HEADER_LEN];
        file.read_exact_at(&mut head, 0).map_err(|e| io_err("read change-tracking header", e))?;
        let header = TrackingHeader::decode(&head, path)?;
        let want_len = TrackingHeader::file_len(header.block_count);
        let len = file.metadata().map_err(|e| io_err("stat change-tracking file", e))?.len();
        if len < want_len {
            return Err(Error::corrupt(path, format!("change-tracking file is {len} bytes, header needs {want_len}")));
        }
        sys::allocate_if_sparse(&file, want_len, path);
        let words = word_count(header.block_count)?;
        let map = |i| {
            MappedWords::map(&file, TrackingHeader::slot_offset(header.block_count, i), words)
                .map_err(|e| io_err("map change-tracking slot", e))
        };
        let slots = [map(0)?, map(1)?];
        let mut flags = header.flags;
        if flags & TRACKING_FLAG_OPEN != 0 {
            tracing::warn!(path = %path.display(), "disk was not closed cleanly: change tracking is untrusted until the next full capture");
            flags |= TRACKING_FLAG_UNTRUSTED;
        }
        let tracker = Self {
            path: path.to_owned(),
            file,
            slots,
            block_count: header.block_count,
            active: AtomicU32::new(header.active_slot),
            epoch: AtomicU64::new(header.epoch),
            flags: AtomicU32::new(flags | TRACKING_FLAG_OPEN),
            header_lock: Mutex::new(()),
        };
        tracker.write_header(true)?;
        Ok(tracker)
    }

    /// Number of blocks tracked.
    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    /// Marks the blocks of `[offset, offset + len)` as written in the current epoch.
    pub(crate) fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / BLOCK_SIZE;
        let last = ((offset + len - 1) / BLOCK_SIZE).min(self.block_count.saturating_sub(1));
        let words = self.slots[self.active_index()].words();
        let mut block = first;
        while block <= last {
            let word = (block / 64) as usize;
            let bit = block % 64;
            let n = (64 - bit).min(last - block + 1);
            let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << bit };
            // Skip the write (and the cache-line ownership it costs) when already set.
            if words[word].load(Ordering::Relaxed) & mask != mask {
                words[word].fetch_or(mask, Ordering::Relaxed);
            }
            block += n;
        }
    }

    fn active_index(&self) -> usize {
        (self.active.load(Ordering::Acquire) & 1) as usize
    }

    fn closed_index(&self) -> usize {
        1 - self.active_index()
    }

    /// True when writes may have been missed; the next capture must rescan.
    pub fn untrusted(&self) -> bool {
        self.flags.load(Ordering::Acquire) & TRACKING_FLAG_UNTRUSTED != 0
    }

    /// True while a closed epoch waits for its capture to end.
    pub fn closed_pending(&self) -> bool {
        self.flags.load(Ordering::Acquire) & TRACKING_FLAG_CLOSED_PENDING != 0
    }

    /// Current epoch number (count of switches).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Closes the current epoch: the active slot becomes the closed one and writes go to the
    /// other (empty) slot. Memory only: call inside a freeze, then [`Self::persist`] after
    /// the thaw. Fails if the previous closed epoch was never consumed.
    pub(crate) fn switch_epoch(&self) -> Result<u64> {
        let flags = self.flags.load(Ordering::Acquire);
        if flags & TRACKING_FLAG_CLOSED_PENDING != 0 {
            return Err(Error::FailedPrecondition(format!(
                "change tracking of {} still holds an unconsumed epoch",
                self.path.display()
            )));
        }
        self.flags.fetch_or(TRACKING_FLAG_CLOSED_PENDING, Ordering::AcqRel);
        self.active.fetch_xor(1, Ordering::AcqRel);
        Ok(self.epoch.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// How many of the `n` blocks from `first` are dirty in the closed epoch.
    pub(crate) fn closed_count(&self, first: u64, n: u64) -> u64 {
        let words = self.slots[self.closed_index()].words();
        let end = (first + n).min(self.block_count);
        let mut b = first;
        let mut count = 0;
        while b < end {
            let Some(w) = words.get((b / 64) as usize) else { break };
            let bit = b % 64;
            let take = (64 - bit).min(end - b);
            let mask = if take == 64 { u64::MAX } else { ((1u64 << take) - 1) << bit };
            count += u64::from((w.load(Ordering::Acquire) & mask).count_ones());
            b += take;
        }
        count
    }

    /// Whether any of the `n` blocks from `first` is dirty in the closed epoch.
    pub(crate) fn closed_any(&self, first: u64, n: u64) -> bool {
        let words = self.slots[self.closed_index()].words();
        let end = (first + n).min(self.block_count);
        let mut b = first;
        while b < end {
            let Some(w) = words.get((b / 64) as usize) else { return false };
            let bit = b % 64;
            let take = (64 - bit).min(end - b);
            let mask = if take == 64 { u64::MAX } else { ((1u64 << take) - 1) << bit };
            if w.load(Ordering::Acquire) & mask != 0 {
                return true;
            }
            b += take;
        }
        false
    }

    /// Blocks dirty in the closed epoch, ascending.
    pub fn closed_blocks(&self) -> Vec<u64> {
        set_bits(self.slots[self.closed_index()].words(), self.block_count)
    }

    /// Blocks dirty in the current epoch, ascending.
    pub fn active_blocks(&self) -> Vec<u64> {
        set_bits(self.slots[self.active_index()].words(), self.block_count)
    }

    /// The closed epoch was captured: forget it, and trust tracking again if the capture
    /// was a full rescan.
    pub(crate) fn consume_closed(&self, full_rescan: bool) -> Result<()> {
        for w in self.slots[self.closed_index()].words() {
            w.store(0, Ordering::Relaxed);
        }
        let mut clear = TRACKING_FLAG_CLOSED_PENDING;
        if full_rescan {
            clear |= TRACKING_FLAG_UNTRUSTED;
        }
        self.flags.fetch_and(!clear, Ordering::AcqRel);
        self.persist()
    }

    /// The capture of the closed epoch failed: merge it back into the active epoch so the
    /// next capture sees those changes too.
    pub(crate) fn merge_closed(&self) -> Result<()> {
        let closed = self.slots[self.closed_index()].words();
        let active = self.slots[self.active_index()].words();
        for (c, a) in closed.iter().zip(active) {
            let bits = c.swap(0, Ordering::Relaxed);
            if bits != 0 {
                a.fetch_or(bits, Ordering::Relaxed);
            }
        }
        self.flags.fetch_and(!TRACKING_FLAG_CLOSED_PENDING, Ordering::AcqRel);
        self.persist()
    }

    /// Makes the next capture rescan every allocated extent, durably: for a history that lost
    /// what tracking was counting from (its last restore point deleted).
    pub(crate) fn require_rescan(&self) -> Result<()> {
        self.flags.fetch_or(TRACKING_FLAG_UNTRUSTED, Ordering::AcqRel);
        self.write_header(true)
    }

    /// Makes both slots and the header durable.
    pub(crate) fn persist(&self) -> Result<()> {
        for slot in &self.slots {
            slot.flush().map_err(|e| Error::io("persist change-tracking bitmap", &self.path, e))?;
        }
        self.write_header(true)
    }

    /// Clean close: persist, then clear the OPEN flag.
    pub(crate) fn close(&self) -> Result<()> {
        self.flags.fetch_and(!TRACKING_FLAG_OPEN, Ordering::AcqRel);
        self.persist()
    }

    /// The header as it stands in memory.
    pub fn header(&self) -> TrackingHeader {
        TrackingHeader {
            flags: self.flags.load(Ordering::Acquire),
            active_slot: self.active.load(Ordering::Acquire) & 1,
            epoch: self.epoch.load(Ordering::Acquire),
            block_count: self.block_count,
        }
    }

    fn write_header(&self, sync: bool) -> Result<()> {
        let _guard = self.header_lock.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = self.header().encode();
        self.file.write_all_at(&bytes, 0).map_err(|e| Error::io("write change-tracking header", &self.path, e))?;
        if sync {
            self.file.sync_data().map_err(|e| Error::io("sync change-tracking header", &self.path, e))?;
        }
        Ok(())
    }

    /// Builds a tracker for a larger disk at `path` carrying over both slots and the header
    /// state, written to a temporary file and renamed into place. The caller holds the
    /// disk's write gate closed, so no bit is set meanwhile; `self` must not be used after.
    pub(crate) fn grow(&self, new_size_bytes: u64) -> Result<Self> {
        let blocks = block_count(new_size_bytes);
        let header = self.header();
        let slots: Vec<Vec<u64>> =
            self.slots.iter().map(|s| s.words().iter().map(|w| w.load(Ordering::Relaxed)).collect()).collect();
        let tmp = self.path.with_extension("ctk.tmp");
        let grown = TrackingHeader { flags: header.flags & !TRACKING_FLAG_OPEN, block_count: blocks, ..header };
        if let Err(e) = write_fresh(&tmp, grown, &slots) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io("replace change-tracking file", &tmp, e))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir).map_err(|e| Error::io("sync disks directory", dir, e))?;
        }
        Self::open(&self.path)
    }
}

/// Writes a complete tracking file durably: header plus slots (copied from `slots` where
/// given), then fsync of file and directory.
fn write_fresh(path: &Path, header: TrackingHeader, slots: &[Vec<u64>]) -> Result<()> {
    let blocks = header.block_count;
    let io = |context, e: io::Error| Error::io(context, path, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io("create change-tracking file", e))?;
    let len = TrackingHeader::file_len(blocks);
    file.set_len(len).map_err(|e| io("size change-tracking file", e))?;
    // Bits are set through a shared mapping: see `sys::allocate`.
    sys::allocate(&file, len).map_err(|e| io("allocate change-tracking file", e))?;
    for (i, words) in slots.iter().enumerate().take(2) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let slot = u32::from(i == 1);
        file.write_all_at(&bytes, TrackingHeader::slot_offset(blocks, slot))
            .map_err(|e| io("write change-tracking slot", e))?;
    }
    file.write_all_at(&header.encode(), 0).map_err(|e| io("write change-tracking header", e))?;
    file.sync_all().map_err(|e| io("sync change-tracking file", e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(|e| Error::io("sync disks directory", dir, e))?;
    }
    Ok(())
}

fn set_bits(words: &[std::sync::atomic::AtomicU64], block_count: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let mut bits = w.load(Ordering::Acquire);
        while bits != 0 {
            let b = u64::from(bits.trailing_zeros());
            let block = i as u64 * 64 + b;
            if block < block_count {
                out.push(block);
            }
            bits &= bits - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_switches_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.ctk");
        let t = ChangeTracker::create(&path, 1 << 20).unwrap();
        assert!(!t.untrusted());
        t.mark(0, 1);
        t.mark(4096 * 63, 4096 * 3);
        assert_eq!(t.active_blocks(), vec![0, 63, 64, 65]);
        t.switch_epoch().unwrap();
        assert!(t.switch_epoch().is_err(), "a pending closed epoch blocks the next switch");
        t.mark(4096 * 10, 10);
        assert_eq!(t.closed_blocks(), vec![0, 63, 64, 65]);
        assert_eq!(t.active_blocks(), vec![10]);
        t.merge_closed().unwrap();
        assert_eq!(t.active_blocks(), vec![0, 10, 63, 64, 65]);
        assert!(t.closed_blocks().is_empty());
        t.switch_epoch().unwrap();
        t.consume_closed(false).unwrap();
        assert!(t.closed_blocks().is_empty() && t.active_blocks().is_empty());
    }

    #[test]
    fn unclean_close_is_untrusted_and_clean_close_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.ctk");
        let t = ChangeTracker::create(&path, 1 << 20).unwrap();
        t.mark(0, 4096);
        t.close().unwrap();
        drop(t);
        let t = ChangeTracker::open(&path).unwrap();
        assert!(!t.untrusted());
        assert_eq!(t.active_blocks(), vec![0]);
        drop(t); // no close: as if killed
        let t = ChangeTracker::open(&path).unwrap();
        assert!(t.untrusted());
    }

    #[test]
    fn grow_keeps_bits_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.ctk");
        let t = ChangeTracker::create(&path, 8192).unwrap();
        t.mark(4096, 1);
        t.switch_epoch().unwrap();
        t.mark(0, 1);
        let g = t.grow(1 << 30).unwrap();
        drop(t);
        assert_eq!(g.block_count(), (1 << 30) / 4096);
        assert_eq!(g.closed_blocks(), vec![1]);
        assert_eq!(g.active_blocks(), vec![0]);
        assert!(g.closed_pending());
        assert_eq!(g.epoch(), 1);
        g.mark((1 << 30) - 1, 1);
        assert_eq!(g.active_blocks(), vec![0, (1 << 30) / 4096 - 1]);
    }
}
