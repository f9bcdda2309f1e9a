//! Instant restore: a disk created from a disk restore point is usable at once.
//!
//! Its local map says which chunks are in the disk file already. Reads of other chunks come
//! from the chunk store (the base disk restore point). The first write or trim of a chunk
//! makes it local first: the base content is written to the file and synced, and only then
//! is the chunk's bit set (so the map never claims data a power loss could take); FLUSH and
//! FUA writes persist the map, so no chunk they cover reads as "in the store" after one. A
//! background job hydrates the remaining chunks in batches (write, one fdatasync, set the
//! batch's bits). Change tracking sees only guest writes: hydration and read-modify-write
//! fills copy base content, which the lineage's base already holds.

use std::sync::Arc;

use crate::base::error::Result;
use crate::chunk_map::reader::DiskRestorePointReader;
use crate::disk::local_map::LocalMap;
use crate::store::chunk::ChunkRef;

const STRIPES: usize = 64;

/// The restore state of a restored disk.
#[derive(Debug)]
pub(crate) struct Restored {
    pub(crate) local: Arc<LocalMap>,
    pub(crate) base: DiskRestorePointReader,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Restored {
    pub(crate) fn new(local: LocalMap, base: DiskRestorePointReader) -> Self {
        Self { local: Arc::new(local), base, stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect() }
    }

    /// Orders "make chunk c local" against hydration of c.
    pub(crate) fn stripe(&self, c: u64) -> &tokio::sync::Mutex<()> {
        &self.stripes[usize::try_from(c % STRIPES as u64).unwrap_or(0)]
    }

    /// Whether reads of chunk `c` still come from the store.
    pub(crate) fn remote(&self, c: u64) -> bool {
        !self.local.is_local(c)
    }

    /// Whether the base holds only zeros for chunk `c`.
    pub(crate) fn base_is_zero(&self, c: u64) -> Result<bool> {
        Ok(self.base.chunk_ref(c)? == ChunkRef::Zero)
    }
}
