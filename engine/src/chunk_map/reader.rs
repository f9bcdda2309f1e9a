//! Reading one disk restore point, chunk by chunk, through the chunk map and the chunk store,
//! safe against a concurrent deletion of the restore point.

use std::sync::Arc;

use futures::StreamExt;

use crate::base::error::{Error, Result};
use crate::base::ids::{DiskId, LineageId, Name, RestorePointId};
use crate::base::merkle::Root;
use crate::catalog::restore_point::{ProvisioningState, RestorePointRecord};
use crate::chunk_map;
use crate::store::chunk::ChunkRef;

/// What [`DiskRestorePointReader::open_base`] needs of a restored disk.
#[derive(Debug)]
pub(crate) struct RestoredDisk<'a> {
    pub name: &'a Name,
    pub lineage: LineageId,
    pub size_bytes: u64,
    pub chunk_size_bytes: u64,
    /// The disk restore point it was restored from.
    pub restore_point: RestorePointId,
    pub source_disk: DiskId,
}

/// Reads one disk restore point: chunk by chunk through the chunk map and the chunk store.
///
/// Deleting a restore point changes what a lookup at its seq finds: its entries are dropped
/// (or kept for a newer one), and the lookup falls through to an older restore point's. The
/// deletion commits in one catalog batch with the removal of the restore point's record, so
/// every chunk map lookup is followed by a check that the record still exists: if it does, the
/// lookup ran before the deletion and found this restore point's own refs, whose records are
/// content-addressed and checked when read, so the bytes are exact or the read fails. If the
/// record is gone, the call fails NotFound, never with another restore point's bytes.
#[derive(Debug, Clone)]
pub struct DiskRestorePointReader {
    catalog: Arc<crate::catalog::Catalog>,
    chunks: Arc<crate::store::chunk_store::ChunkStore>,
    rp: RestorePointId,
    lineage: LineageId,
    seq: u64,
    size_bytes: u64,
    chunk_size_bytes: u64,
    /// The names and the root the record holds, for [`Self::check_root`].
    recorded: Option<Recorded>,
}

#[derive(Debug, Clone)]
struct Recorded {
    restore_point: Name,
    disk: Name,
    root: Option<Root>,
}

impl DiskRestorePointReader {
    /// A reader of disk `disk` of restore point `rp`, which must have succeeded.
    pub(crate) fn open(
        catalog: &Arc<crate::catalog::Catalog>,
        chunks: &Arc<crate::store::chunk_store::ChunkStore>,
        rp: RestorePointId,
        disk: DiskId,
    ) -> Result<Self> {
        let record = catalog
            .get::<RestorePointRecord>(rp.to_bytes())?
            .ok_or_else(|| Error::not_found(format!("restore point {rp}")))?;
        if record.state != ProvisioningState::Succeeded {
            return Err(Error::FailedPrecondition(format!(
                "restore point {} is {:?}, not readable",
                record.name, record.state
            )));
        }
        let d = record
            .disks
            .iter()
            .find(|d| d.disk == disk)
            .ok_or_else(|| Error::not_found(format!("disk {disk} in restore point {}", record.name)))?;
        Ok(Self {
            catalog: catalog.clone(),
            chunks: chunks.clone(),
            rp,
            lineage: d.lineage,
            seq: record.seq,
            size_bytes: d.size_bytes,
            chunk_size_bytes: d.chunk_size_bytes,
            recorded: Some(Recorded {
                restore_point: record.name.clone(),
                disk: d.disk_name.clone(),
                root: d.merkle_root,
            }),
        })
    }

    /// The base of restored disk `record`, from `source`. When that restore point is gone
    /// (deleted by a deletion that raced the restore, before restores looked at their base
    /// under the admin lock), the disk still opens, so that one disk does not keep the engine
    /// and every other disk down: its base then reads nothing, every read of it fails
    /// NotFound (see the type's doc), and the second value says what is wrong.
    pub(crate) fn open_base(
        catalog: &Arc<crate::catalog::Catalog>,
        chunks: &Arc<crate::store::chunk_store::ChunkStore>,
        record: &RestoredDisk<'_>,
    ) -> Result<(Self, Option<String>)> {
        match Self::open(catalog, chunks, record.restore_point, record.source_disk) {
            Ok(reader) => Ok((reader, None)),
            Err(e) if e.kind() == crate::base::error::ErrorKind::NotFound => {
                let problem = format!(
                    "disk {} was restored from restore point {}, which is gone: its chunks not yet local cannot be \
                     read",
                    record.name, record.restore_point
                );
                tracing::error!(disk = %record.name, restore_point = %record.restore_point, "{problem}");
                let base = chunk_map::lineage_base(catalog, record.lineage)?;
                let reader = Self {
                    catalog: catalog.clone(),
                    chunks: chunks.clone(),
                    rp: record.restore_point,
                    lineage: base.map_or(record.lineage, |b| b.lineage),
                    seq: base.map_or(0, |b| b.seq),
                    size_bytes: record.size_bytes,
                    chunk_size_bytes: record.chunk_size_bytes,
                    recorded: None,
                };
                Ok((reader, Some(problem)))
            }
            Err(e) => Err(e),
        }
    }

    /// Fails NotFound once the restore point is deleted (see the type's doc).
    fn check_exists(&self) -> Result<()> {
        let key = self.rp.to_bytes();
        match self.catalog.get_raw(<RestorePointRecord as crate::catalog::Record>::CF, &key)? {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!("restore point {} (deleted while being read)", self.rp))),
        }
    }

    /// The lineage and sequence this reader reads (a restored lineage's base).
    pub fn base(&self) -> crate::catalog::restore_point::LineageBase {
        crate::catalog::restore_point::LineageBase { lineage: self.lineage, seq: self.seq }
    }
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn chunk_size_bytes(&self) -> u64 {
        self.chunk_size_bytes
    }

    pub fn chunk_count(&self) -> u64 {
        self.size_bytes.div_ceil(self.chunk_size_bytes)
    }

    /// What chunk `index` holds.
    pub fn chunk_ref(&self, index: u64) -> Result<ChunkRef> {
        if index >= self.chunk_count() {
            return Err(Error::invalid("chunk index", format!("{index} is past the last chunk")));
        }
        let r = chunk_map::resolve(&self.catalog, self.lineage, index, self.seq)?;
        self.check_exists()?;
        Ok(r)
    }

    /// Every chunk that is not all zeros, with its ref: like EBS ListSnapshotBlocks.
    pub fn allocated_chunks(&self) -> Result<Vec<(u64, ChunkRef)>> {
        let chunks = chunk_map::allocated(&self.catalog, self.lineage, self.seq, self.chunk_count())?;
        self.check_exists()?;
        Ok(chunks.into_iter().collect())
    }

    /// The Merkle root of what this reader reads, hashed from the chunk map.
    pub fn merkle_root(&self) -> Result<Root> {
        let root =
            chunk_map::merkle_root(&self.catalog, self.lineage, self.seq, self.size_bytes, self.chunk_size_bytes)?;
        self.check_exists()?;
        Ok(root)
    }

    /// Fails Corrupt unless the chunk map hashes to the root the disk restore point recorded
    /// when it succeeded: an entry changed, lost or swapped since then would otherwise serve
    /// another chunk's bytes, each record checking good on its own.
    pub fn check_root(&self) -> Result<Root> {
        let Some(recorded) = &self.recorded else {
            return Err(Error::not_found(format!("restore point {} (deleted)", self.rp)));
        };
        let Some(expected) = recorded.root else {
            return Err(Error::corrupt(
                "catalog/restore_points",
                format!("restore point {} disk {} has no Merkle root recorded", recorded.restore_point, recorded.disk),
            ));
        };
        let root = self.merkle_root()?;
        if root != expected {
            return Err(Error::corrupt(
                "catalog/chunk_map",
                format!(
                    "restore point {} disk {}: the chunk map hashes to Merkle root {root}, the restore point recorded \
                     {expected}",
                    recorded.restore_point, recorded.disk
                ),
            ));
        }
        Ok(root)
    }

    /// Chunks that changed from `older` (same lineage, not newer) to this one.
    pub(crate) fn changed_since(&self, older: &Self) -> Result<Vec<u64>> {
        let chunks = self.chunk_count();
        let changed = chunk_map::changed(&self.catalog, self.lineage, older.seq, self.seq)?;
        older.check_exists()?;
        self.check_exists()?;
        Ok(changed.into_iter().filter(|&c| c < chunks).collect())
    }

    /// The raw bytes of chunk `index` (short for the last chunk), checked end to end.
    pub async fn read_chunk(&self, index: u64) -> Result<Vec<u8>> {
        let r = self.chunk_ref(index)?; // checks the index first
        let len = usize::try_from((self.size_bytes - index * self.chunk_size_bytes).min(self.chunk_size_bytes))
            .map_err(|_| Error::invalid("chunk_size_bytes", "too large for this machine"))?;
        self.fetch(index, r, len).await
    }

    /// The `len` bytes ref `r` (of chunk `index`, found while the restore point existed)
    /// names. A record freed since, by a deletion and a GC after the lookup, fails the read:
    /// then it fails NotFound rather than as corrupt data.
    async fn fetch(&self, index: u64, r: ChunkRef, len: usize) -> Result<Vec<u8>> {
        let data = match self.chunks.read_ref(r, len).await {
            Ok(data) => data,
            Err(e) => {
                self.check_exists()?;
                return Err(e);
            }
        };
        if data.len() != len {
            return Err(Error::corrupt(
                "catalog/chunk_map",
                format!("chunk {index} holds {} bytes, expected {len}", data.len()),
            ));
        }
        Ok(data)
    }

    /// Reads `[offset, offset + len)`.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let end = offset.checked_add(len).filter(|&e| e <= self.size_bytes).ok_or_else(|| {
            Error::invalid("offset", format!("range {offset}+{len} ends past the disk size {}", self.size_bytes))
        })?;
        if len > crate::base::format::MAX_IO_BYTES {
            return Err(Error::invalid(
                "length",
                format!("{len} is larger than the maximum I/O of {}", crate::base::format::MAX_IO_BYTES),
            ));
        }
        let capacity = usize::try_from(len).map_err(|_| Error::invalid("length", format!("{len} bytes")))?;
        let mut out = Vec::with_capacity(capacity);
        if len == 0 {
            return Ok(out);
        }
        // Every chunk is looked up first and the restore point checked once after them all;
        // then the chunks are fetched and decompressed a few at a time.
        let cs = self.chunk_size_bytes;
        let (first, last) = (offset / cs, (end - 1) / cs);
        let refs = (first..=last)
            .map(|index| {
                let chunk_len = (self.size_bytes - index * cs).min(cs);
                let chunk_len = usize::try_from(chunk_len).map_err(|_| Error::invalid("chunk size", "over usize"))?;
                Ok((index, chunk_map::resolve(&self.catalog, self.lineage, index, self.seq)?, chunk_len))
            })
            .collect::<Result<Vec<_>>>()?;
        crate::failpoint!("restore_point::read_resolved");
        self.check_exists()?;
        let mut chunks = futures::stream::iter(refs)
            .map(|(index, r, chunk_len)| async move { (index, self.fetch(index, r, chunk_len).await) })
            .buffered(4);
        let mut pos = offset;
        while let Some((index, chunk)) = chunks.next().await {
            let chunk = chunk?;
            // The piece of this chunk the range covers; `fetch` checked the chunk's length.
            let start = index * cs;
            let piece = usize::try_from(pos - start)
                .ok()
                .zip(usize::try_from((end - start).min(chunk.len() as u64)).ok())
                .and_then(|(from, to)| chunk.get(from..to))
                .filter(|p| !p.is_empty());
            debug_assert!(piece.is_some(), "chunk {index} ({} bytes) does not cover {pos}..{end}", chunk.len());
            let Some(piece) = piece else {
                return Err(Error::corrupt(
                    "catalog/chunk_map",
                    format!("chunk {index} ({} bytes) does not cover {pos}..{end}", chunk.len()),
                ));
            };
            out.extend_from_slice(piece);
            pos += piece.len() as u64;
        }
        Ok(out)
    }
}
