//! What the NBD server serves: the [`Export`] trait, its live-disk implementation and the
//! [`ExportSource`] that finds exports by name. Engine errors become NBD errnos in
//! [`crate::errors`].
//!
//! The server knows nothing about disks: a read-only disk restore point export
//! ([`restore_point`]) implements the same trait (with `read_only() == true` and no
//! write calls reaching it, because the server refuses them with EPERM first).

pub mod restore_point;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cairn_engine::{Disk, Engine, Error, Extent, IoBuf, Result};

/// A boxed future returned by [`Export`] calls (the trait is used as `dyn Export`).
pub type ExportFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// One NBD export. Ranges handed to the I/O calls were already checked against
/// [`size_bytes`](Export::size_bytes), the minimum block size and read-only-ness.
pub trait Export: Send + Sync + 'static {
    /// Canonical export name (`NBD_INFO_NAME`).
    fn name(&self) -> String;
    /// One line for people (`NBD_INFO_DESCRIPTION`, `NBD_OPT_LIST`).
    fn description(&self) -> String;
    /// Size in bytes at the time of the call.
    fn size_bytes(&self) -> u64;
    /// Smallest addressable unit (a power of two, at most 64 KiB).
    fn min_block_bytes(&self) -> u32;
    /// The I/O size that costs least per byte (a power of two, at least the minimum).
    fn preferred_block_bytes(&self) -> u32 {
        crate::nbd::codec::PREFERRED_BLOCK_BYTES.max(self.min_block_bytes())
    }
    /// Read-only exports refuse writes, trims and zeroes with EPERM.
    fn read_only(&self) -> bool;
    /// Whether FLUSH and FUA on one connection cover writes made on every other connection.
    fn can_multi_conn(&self) -> bool;

    /// Reads `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u64) -> ExportFuture<'_, IoBuf>;
    /// Writes `buf` at `offset`; with `fua` durable on return.
    fn write(&self, offset: u64, buf: IoBuf, fua: bool) -> ExportFuture<'_, ()>;
    /// Makes the range read as zeros, deallocating it.
    fn punch(&self, offset: u64, len: u64, fua: bool) -> ExportFuture<'_, ()>;
    /// Makes every acknowledged write durable.
    fn flush(&self) -> ExportFuture<'_, ()>;
    /// Prefetch hint for the range; a no-op where everything is local already.
    fn cache(&self, offset: u64, len: u64) -> ExportFuture<'_, ()>;
    /// Data and hole runs covering the range (`base:allocation`, and holes skipped in READ).
    /// Asynchronous because finding them may take catalog lookups (restored disks, restore
    /// points), which must not run on the server's threads.
    fn extents(&self, offset: u64, len: u64) -> ExportFuture<'_, Vec<Extent>>;

    /// Names of the dirty bitmaps offered as `qemu:dirty-bitmap:NAME` metadata contexts.
    fn dirty_bitmaps(&self) -> Vec<String> {
        Vec::new()
    }
    /// Dirty and clean runs of bitmap `name` covering the range (`Extent::data` = dirty).
    fn dirty_extents(&self, name: &str, _offset: u64, _len: u64) -> ExportFuture<'_, Vec<Extent>> {
        let err = Error::NotFound { what: format!("dirty bitmap {name}") };
        Box::pin(std::future::ready(Err(err)))
    }
}

/// A live disk, served read-write.
#[derive(Debug, Clone)]
pub struct LiveDisk(pub Arc<Disk>);

impl Export for LiveDisk {
    fn name(&self) -> String {
        self.0.name().to_string()
    }
    fn description(&self) -> String {
        format!("Cairn live disk {} ({} bytes)", self.0.name(), self.0.size_bytes())
    }
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn min_block_bytes(&self) -> u32 {
        u32::try_from(self.0.min_io_bytes()).unwrap_or(4096)
    }
    fn read_only(&self) -> bool {
        false
    }
    fn can_multi_conn(&self) -> bool {
        // One file, one page cache; FLUSH is fdatasync of the whole file.
        true
    }
    fn read(&self, offset: u64, len: u64) -> ExportFuture<'_, IoBuf> {
        Box::pin(self.0.read(offset, len))
    }
    fn write(&self, offset: u64, buf: IoBuf, fua: bool) -> ExportFuture<'_, ()> {
        Box::pin(self.0.write(offset, buf, fua))
    }
    fn punch(&self, offset: u64, len: u64, fua: bool) -> ExportFuture<'_, ()> {
        Box::pin(self.0.punch(offset, len, fua))
    }
    fn flush(&self) -> ExportFuture<'_, ()> {
        Box::pin(self.0.flush())
    }
    fn cache(&self, offset: u64, len: u64) -> ExportFuture<'_, ()> {
        // A hydrating disk fetches the range's chunks from the store now; any disk asks the
        // kernel to read the range ahead.
        Box::pin(async move { self.0.prefetch(offset, len).await.map(drop) })
    }
    fn extents(&self, offset: u64, len: u64) -> ExportFuture<'_, Vec<Extent>> {
        // SEEK_DATA/SEEK_HOLE, and for a restored disk chunk lookups in the catalog.
        let disk = self.0.clone();
        Box::pin(async move {
            let path = disk.path().to_path_buf();
            tokio::task::spawn_blocking(move || disk.extents(offset, len)).await.map_err(|e| Error::Io {
                context: "find extents",
                path,
                source: std::io::Error::other(e),
            })?
        })
    }
}

/// Finds exports by name for the handshake.
pub trait ExportSource: Send + Sync + 'static {
    /// The export called `name`, if any.
    fn open(&self, name: &str) -> Option<Arc<dyn Export>>;
    /// Every export name, for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<String>;
}

/// Every export of an engine: each live disk by its name, read-write, and each disk
/// restore point of a succeeded restore point as `COLLECTION/RESTORE_POINT/DISK`, read-only.
/// Names never hold `/`, so the two kinds cannot collide.
#[derive(Debug, Clone)]
pub struct LiveDisks {
    engine: Engine,
    /// Restore point allocations and dirty bitmaps, shared by every connection.
    runs: Arc<restore_point::RunsCache>,
}

impl LiveDisks {
    pub fn new(engine: Engine) -> Self {
        Self { engine, runs: Arc::default() }
    }
}

impl ExportSource for LiveDisks {
    fn open(&self, name: &str) -> Option<Arc<dyn Export>> {
        if name.contains('/') {
            return restore_point::open(&self.engine, &self.runs, name).map(|e| Arc::new(e) as Arc<dyn Export>);
        }
        let disk = self.engine.disk_by_name(name).ok()?;
        Some(Arc::new(LiveDisk(disk)))
    }
    fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = self.engine.list_disks().into_iter().map(|r| r.name.to_string()).collect();
        names.extend(restore_point::list(&self.engine));
        names
    }
}
