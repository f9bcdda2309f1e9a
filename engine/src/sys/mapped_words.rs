//! [`MappedWords`]: a shared, writable file mapping seen as `AtomicU64` words.
//!
//! Change tracking sets bits from many tasks at once with `fetch_or`, straight into the
//! page cache, and persists them with msync: the kernel tracks which pages are dirty.

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;

use memmap2::{MmapMut, MmapOptions};

/// `len` atomic 64-bit words mapped from a file at a page-aligned offset.
pub(crate) struct MappedWords {
    map: MmapMut,
    len: usize,
}

impl MappedWords {
    /// Maps `len` words of `file` starting at byte `offset` (page aligned; the file must be
    /// at least `offset + 8 * len` bytes long and stay so while mapped).
    pub(crate) fn map(file: &File, offset: u64, len: usize) -> io::Result<Self> {
        let bytes = len.checked_mul(8).ok_or_else(|| io::Error::other("bitmap too large"))?;
        if bytes == 0 {
            return Ok(Self { map: MmapOptions::new().len(8).map_anon()?, len: 0 });
        }
        // SAFETY: the engine owns the data dir (RocksDB's lock keeps out a second daemon),
        // creates the file at its full length (with its blocks allocated, so a store never
        // needs one from a full file system) before mapping and never truncates it while
        // mapped, so no access through this mapping can fault; other in-process access to
        // these bytes goes only through `words()`.
        let map = unsafe { MmapOptions::new().offset(offset).len(bytes).map_mut(file)? };
        Ok(Self { map, len })
    }

    /// The words, for atomic access.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        let ptr = self.map.as_ptr().cast::<AtomicU64>();
        // SAFETY: the mapping is page aligned (so 8-byte aligned) and at least `8 * len`
        // bytes long; AtomicU64 has the size and alignment of u64 and any bit pattern is
        // valid; the mapping lives as long as `self`, and no `&mut [u8]` to it is ever made
        // (we never call `MmapMut::deref_mut`), so shared atomic access cannot alias a
        // unique borrow.
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }

    /// Writes the mapping's dirty pages to the file and waits for them (msync MS_SYNC).
    pub(crate) fn flush(&self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.map.flush()
    }
}
