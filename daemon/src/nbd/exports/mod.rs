//! Owns what the NBD server serves: the [`Export`] trait and [`ExportSource`], and their
//! engine implementations. Uses the engine and [`super::codec`]'s constants, never the server.
//!
//! - [`live`]: a live disk, read-write.
//! - [`restore_point`]: a disk restore point, read-only, with its dirty bitmaps.
//! - [`source`]: every export of an engine by name, for the handshake.
//!
//! The server knows nothing about disks: a read-only export implements the same trait (with
//! `read_only() == true` and no write calls reaching it, because the server refuses them
//! with EPERM first). Engine errors become NBD errnos in [`crate::errors`].

pub mod live;
pub mod restore_point;
pub mod source;

pub use live::LiveDisk;
pub use restore_point::DiskRestorePointExport;
pub use source::EngineExports;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cairn_engine::{Error, Extent, IoBuf, Result};

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

    /// Attaches a client that goes on to use the export: the session keeps what this returns
    /// and drops it when it ends. A refusal (a live disk held by a revert) reaches the client
    /// as `NBD_REP_ERR_POLICY` with the reason.
    fn attach(&self) -> Result<Box<dyn std::any::Any + Send + Sync>> {
        Ok(Box::new(()))
    }

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

/// Finds exports by name for the handshake.
pub trait ExportSource: Send + Sync + 'static {
    /// The export called `name`, if any.
    fn open(&self, name: &str) -> Option<Arc<dyn Export>>;
    /// Every export name, for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<String>;
}
