//! A live disk as an export, read-write.

use std::sync::Arc;

use cairn_engine::{Disk, Error, Extent, IoBuf};

use super::{Export, ExportFuture};

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
    fn attach(&self) -> Result<Box<dyn std::any::Any + Send + Sync>, Error> {
        Ok(Box::new(self.0.attach()?))
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
