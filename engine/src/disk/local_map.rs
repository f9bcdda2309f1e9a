//! The local map of a restored disk: which chunks are already in the disk file.
//!
//! It covers the chunks of the base (its chunk count is in the header): chunks past them,
//! added by growing the disk, hold what the file holds and are local from the start.
//!
//! A bit is set only once the chunk's data in the file is durable, but the bit itself is
//! durable only once persisted: the disk persists the map with every FLUSH and FUA write, so
//! a guest write they acknowledge never finds its chunk "still in the store" after a power
//! loss (reads would return the base, and hydration would write the base over it).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::base::error::{Error, Result};
use crate::base::format::{
    LOCAL_FLAG_HYDRATED, LOCAL_HEADER_LEN, LOCAL_HEADER_PAGE, decode_local_header, encode_local_header,
};
use crate::sys::{MappedWords, allocate, allocate_if_sparse, sync_dir};

/// Per-chunk "content is in the file" bits, memory-mapped.
pub(crate) struct LocalMap {
    path: PathBuf,
    file: File,
    words: MappedWords,
    chunks: u64,
    flags: AtomicU32,
    local: AtomicU64,
}

impl std::fmt::Debug for LocalMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalMap").field("path", &self.path).field("chunks", &self.chunks).finish_non_exhaustive()
    }
}

fn words_for(chunks: u64) -> Result<usize> {
    usize::try_from(chunks.div_ceil(64)).map_err(|_| Error::invalid("size_bytes", "too large for this machine"))
}

impl LocalMap {
    /// Creates an empty map (no chunk local) durably.
    pub(crate) fn create(path: &Path, chunks: u64) -> Result<Self> {
        let io = |c, e| Error::io(c, path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io("create local map", e))?;
        let len = LOCAL_HEADER_PAGE + (words_for(chunks)? as u64 * 8).next_multiple_of(LOCAL_HEADER_PAGE);
        file.set_len(len).map_err(|e| io("size local map", e))?;
        // Bits are set through a shared mapping: see `sys::allocate`.
        allocate(&file, len).map_err(|e| io("allocate local map", e))?;
        file.write_all_at(&encode_local_header(0, chunks), 0).map_err(|e| io("write local map header", e))?;
        file.sync_all().map_err(|e| io("sync local map", e))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(|e| Error::io("sync disks directory", dir, e))?;
        }
        drop(file);
        Self::open(path)
    }

    pub(crate) fn open(path: &Path) -> Result<Self> {
        let io = |c, e| Error::io(c, path, e);
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| io("open local map", e))?;
        let mut head = [0u8; LOCAL_HEADER_LEN];
        file.read_exact_at(&mut head, 0).map_err(|e| io("read local map header", e))?;
        let (flags, chunks) = decode_local_header(&head, path)?;
        let words = words_for(chunks)?;
        let need = LOCAL_HEADER_PAGE + words as u64 * 8;
        let len = file.metadata().map_err(|e| io("stat local map", e))?.len();
        if len < need {
            return Err(Error::corrupt(path, format!("local map is {len} bytes, needs {need}")));
        }
        allocate_if_sparse(&file, len, path);
        let words = MappedWords::map(&file, LOCAL_HEADER_PAGE, words).map_err(|e| io("map local map", e))?;
        let local = words.words().iter().map(|w| u64::from(w.load(Ordering::Relaxed).count_ones())).sum();
        Ok(Self {
            path: path.to_owned(),
            file,
            words,
            chunks,
            flags: AtomicU32::new(flags),
            local: AtomicU64::new(local),
        })
    }

    /// Whether chunk `c` is in the file: hydrated, set, or past the base's chunks.
    pub(crate) fn is_local(&self, c: u64) -> bool {
        if self.hydrated() || c >= self.chunks {
            return true;
        }
        let Some(w) = self.words.words().get(usize::try_from(c / 64).unwrap_or(usize::MAX)) else {
            debug_assert!(false, "local map of {} chunks has no word for chunk {c}", self.chunks);
            return false;
        };
        w.load(Ordering::Acquire) & (1 << (c % 64)) != 0
    }

    /// Marks chunk `c` local. Call only once its data in the disk file is durable.
    pub(crate) fn set_local(&self, c: u64) {
        if let Some(w) = self.words.words().get(usize::try_from(c / 64).unwrap_or(usize::MAX)) {
            let bit = 1 << (c % 64);
            if w.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
                self.local.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn local_count(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }

    pub(crate) fn chunks(&self) -> u64 {
        self.chunks
    }

    pub(crate) fn hydrated(&self) -> bool {
        self.flags.load(Ordering::Acquire) & LOCAL_FLAG_HYDRATED != 0
    }

    /// Makes the bits durable.
    pub(crate) fn persist(&self) -> Result<()> {
        self.words.flush().map_err(|e| Error::io("persist local map", &self.path, e))
    }

    /// Every chunk is local: persist the bits and say so in the header.
    pub(crate) fn mark_hydrated(&self) -> Result<()> {
        self.persist()?;
        self.flags.fetch_or(LOCAL_FLAG_HYDRATED, Ordering::AcqRel);
        let head = encode_local_header(self.flags.load(Ordering::Acquire), self.chunks);
        self.file.write_all_at(&head, 0).map_err(|e| Error::io("write local map header", &self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io("sync local map", &self.path, e))
    }

    /// A copy of the bits for a disk of `chunks` chunks now (for a capture's full scan of a
    /// restored disk): chunks past the base's are set, as they are local.
    pub(crate) fn snapshot(&self, chunks: u64) -> Vec<u64> {
        let mut words: Vec<u64> = self.words.words().iter().map(|w| w.load(Ordering::Acquire)).collect();
        words.resize(usize::try_from(chunks.div_ceil(64)).unwrap_or(0).max(words.len()), 0);
        for c in self.chunks..chunks {
            if let Some(w) = words.get_mut(usize::try_from(c / 64).unwrap_or(usize::MAX)) {
                *w |= 1 << (c % 64);
            }
        }
        words
    }
}
