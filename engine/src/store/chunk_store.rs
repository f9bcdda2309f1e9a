//! The chunk store: content-addressed, compressed, CRC-checked chunk records in packs, with
//! the index (`chunks`: id -> pack, offset, lengths, references) in the catalog.
//!
//! Writers fill a staging pack of their own ([`PackWriter`]), seal it (fsync), put it into
//! the [`PackStore`], and only then commit the catalog batch that references it: the index
//! never points at bytes that are not durable. Reads check the record header, the CRC of
//! the stored bytes, the raw length and the BLAKE3 of the result: corrupt data is an error,
//! never returned as good.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::base::error::{Error, Result};
use crate::base::format::{Codec, PACK_HEADER_LEN, RECORD_HEADER_LEN, RecordHeader, RecordKind, encode_pack_header};
use crate::base::ids::PackId;
use crate::catalog::{Batch, Catalog};
use crate::store::chunk::{ChunkId, ChunkLocation, ChunkRef};
use crate::store::counters::{StoreChange, StoreCounters, StoreStats};
use crate::store::pack::PackStore;

/// A record ready to append: header plus stored bytes. Built off the I/O path (CPU work).
#[derive(Debug)]
pub(crate) struct PreparedRecord {
    pub header: RecordHeader,
    pub stored: Vec<u8>,
}

/// Compresses a full chunk with zstd at `level` (kept raw when that does not shrink it) and
/// checksums the stored bytes.
pub(crate) fn prepare_full(id: ChunkId, raw: &[u8], level: i32) -> Result<PreparedRecord> {
    prepare(RecordKind::Full, id, raw, level)
}

/// Like [`prepare_full`], for any record kind; `id` is the BLAKE3 of `raw`.
pub(crate) fn prepare(kind: RecordKind, id: ChunkId, raw: &[u8], level: i32) -> Result<PreparedRecord> {
    let raw_len = u32::try_from(raw.len()).map_err(|_| Error::invalid("chunk", "larger than 4 GiB"))?;
    let compressed = zstd::bulk::compress(raw, level).map_err(|e| Error::io("zstd compress", "chunk", e))?;
    let (codec, stored) =
        if compressed.len() < raw.len() { (Codec::Zstd, compressed) } else { (Codec::Raw, raw.to_vec()) };
    let stored_len = u32::try_from(stored.len()).map_err(|_| Error::invalid("chunk", "larger than 4 GiB"))?;
    let header = RecordHeader { kind, codec, raw_len, stored_len, stored_crc: crc32fast::hash(&stored), id: id.0 };
    Ok(PreparedRecord { header, stored })
}

/// Checks and decodes one record read from a pack (`bytes` = header + stored): its kind, id,
/// CRC, length, and the BLAKE3 of what it decodes to.
pub(crate) fn decode(bytes: &[u8], kind: RecordKind, expect: ChunkId, where_: &Path) -> Result<Vec<u8>> {
    let header = RecordHeader::decode(bytes, where_)?;
    let bad = |r: String| Error::corrupt(where_, format!("chunk {expect}: {r}"));
    if header.kind != kind || header.id != expect.0 {
        return Err(bad("record holds another chunk".into()));
    }
    let stored = bytes
        .get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + header.stored_len as usize)
        .ok_or_else(|| bad("stored bytes truncated".into()))?;
    if crc32fast::hash(stored) != header.stored_crc {
        return Err(bad("CRC mismatch".into()));
    }
    let raw = match header.codec {
        Codec::Raw => stored.to_vec(),
        Codec::Zstd => {
            zstd::bulk::decompress(stored, header.raw_len as usize).map_err(|e| bad(format!("zstd: {e}")))?
        }
    };
    if raw.len() != header.raw_len as usize {
        return Err(bad(format!("{} bytes decoded, header says {}", raw.len(), header.raw_len)));
    }
    if ChunkId::of(&raw) != expect {
        return Err(bad("content does not match its hash".into()));
    }
    Ok(raw)
}

/// A staging pack being filled by one writer.
#[derive(Debug)]
pub(crate) struct PackWriter {
    id: PackId,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    /// Bytes handed to early writeback so far.
    written_back: u64,
}

/// A staging pack starts writing to the device every this many bytes, so the fsync of its
/// seal does not have to write the whole pack at once.
const PACK_WRITEBACK_BYTES: u64 = 8 << 20;

impl PackWriter {
    pub(crate) fn create(staging_dir: &Path) -> Result<Self> {
        let id = PackId::new();
        let path = staging_dir.join(format!("{id}.pack"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create staging pack", &path, e))?;
        file.write_all(&encode_pack_header(id.to_bytes())).map_err(|e| Error::io("write staging pack", &path, e))?;
        Ok(Self { id, path, file: Arc::new(file), len: PACK_HEADER_LEN as u64, written_back: 0 })
    }

    /// The staging file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends a record; returns its location (with no references yet).
    /// Appends a record copied verbatim from another pack (header + stored bytes, already
    /// checked); returns its new location with the references of `from`.
    pub(crate) fn append_copy(&mut self, bytes: &[u8], from: ChunkLocation) -> Result<ChunkLocation> {
        let offset = self.len;
        (&*self.file).write_all(bytes).map_err(|e| Error::io("write staging pack", &self.path, e))?;
        self.len += bytes.len() as u64;
        self.write_back_if_due();
        Ok(ChunkLocation { pack: self.id, offset, ..from })
    }

    pub(crate) fn append(&mut self, rec: &PreparedRecord) -> Result<ChunkLocation> {
        let offset = self.len;
        let io = |e| Error::io("write staging pack", &self.path, e);
        (&*self.file).write_all(&rec.header.encode()).map_err(io)?;
        (&*self.file).write_all(&rec.stored).map_err(io)?;
        self.len += (RECORD_HEADER_LEN + rec.stored.len()) as u64;
        self.write_back_if_due();
        Ok(ChunkLocation {
            pack: self.id,
            offset,
            stored_len: rec.header.stored_len,
            raw_len: rec.header.raw_len,
            refs: 0,
        })
    }

    /// Starts writeback of what was appended since the last call, once there is enough of it,
    /// on a blocking thread (it may wait for the device queue). Durability still comes from
    /// the fsync in [`Self::seal`].
    fn write_back_if_due(&mut self) {
        let (from, len) = (self.written_back, self.len - self.written_back);
        if len < PACK_WRITEBACK_BYTES {
            return;
        }
        self.written_back = self.len;
        let (file, path) = (self.file.clone(), self.path.clone());
        let start = move || {
            if let Err(e) = crate::sys::start_writeback(&file, from, len) {
                tracing::debug!(pack = %path.display(), error = %e, "early writeback failed; the seal syncs anyway");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(start)),
            Err(_) => start(),
        }
    }

    /// Syncs the pack and hands it to the store. After this, index entries may point at it.
    pub(crate) async fn seal(self, store: &dyn PackStore) -> Result<PackId> {
        let Self { id, path, file, .. } = self;
        let synced_path = path.clone();
        tokio::task::spawn_blocking(move || {
            file.sync_all().map_err(|e| Error::io("sync staging pack", &synced_path, e))
        })
        .await
        .map_err(|e| Error::io("sync staging pack", &path, std::io::Error::other(e)))??;
        crate::failpoint!("pack::after_sync");
        store.put(id, path).await?;
        Ok(id)
    }

    /// Throws the staging pack away (capture failed or canceled).
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The engine's chunk store.
#[derive(Debug)]
pub(crate) struct ChunkStore {
    catalog: Arc<Catalog>,
    store: Arc<dyn PackStore>,
    staging_dir: PathBuf,
    zstd_level: i32,
    /// Serialises read-modify-write of reference counts up to their commit.
    index_lock: tokio::sync::Mutex<()>,
    /// Records a verify found corrupt (`meta` keys `corrupt:<id>`): never deduplicated
    /// against nor built upon; the next capture of that content stores it anew.
    corrupt: std::sync::RwLock<std::collections::HashSet<ChunkId>>,
    /// Recently read chunk contents, by content id. Content-addressed and checked when read,
    /// so an entry is right for every restore point and disk that holds that content: many
    /// small reads of one chunk (a client reading an export 4 KiB at a time) decompress it
    /// once. Verify never reads through it.
    cache: quick_cache::sync::Cache<ChunkId, Arc<[u8]>, ChunkWeight>,
    /// Totals behind [`Self::stats`], adjusted after every commit that changes the index.
    counters: StoreCounters,
}

/// Cache entries weigh their length in bytes.
#[derive(Debug, Clone, Copy)]
struct ChunkWeight;

impl quick_cache::Weighter<ChunkId, Arc<[u8]>> for ChunkWeight {
    fn weight(&self, _id: &ChunkId, data: &Arc<[u8]>) -> u64 {
        data.len() as u64
    }
}

const CORRUPT_PREFIX: &[u8] = b"corrupt:";

/// Index changes gathered by a writer, applied by [`ChunkStore::commit`].
#[derive(Debug, Default)]
pub(crate) struct IndexDelta {
    /// Chunks this writer stored, with where (in a sealed pack).
    pub new: HashMap<ChunkId, ChunkLocation>,
    /// References to add (or, negative, drop) per chunk (new or already stored).
    pub refs: HashMap<ChunkId, i64>,
    /// Packs sealed by this writer, with their sizes.
    pub packs: Vec<(PackId, u64)>,
}

impl IndexDelta {
    pub(crate) fn add_ref(&mut self, id: ChunkId) {
        *self.refs.entry(id).or_default() += 1;
    }

    pub(crate) fn drop_ref(&mut self, id: ChunkId) {
        *self.refs.entry(id).or_default() -= 1;
    }
}

impl ChunkStore {
    pub(crate) fn open(
        catalog: Arc<Catalog>,
        store: Arc<dyn PackStore>,
        staging_dir: PathBuf,
        zstd_level: i32,
        cache_bytes: u64,
    ) -> Result<Self> {
        crate::sys::create_dir_durable(&staging_dir)
            .map_err(|e| Error::io("create staging directory", &staging_dir, e))?;
        // Staging packs never referenced by the index: left by a crash before their seal.
        if let Ok(entries) = std::fs::read_dir(&staging_dir) {
            for e in entries.flatten() {
                tracing::info!(file = %e.path().display(), "removing unsealed staging pack");
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut corrupt = std::collections::HashSet::new();
        catalog.scan("meta", CORRUPT_PREFIX, CORRUPT_PREFIX, |k, _| {
            if let Ok(id) = <[u8; 32]>::try_from(&k[CORRUPT_PREFIX.len()..]) {
                corrupt.insert(ChunkId(id));
            }
            Ok(true)
        })?;
        let counters = StoreCounters::load(&catalog)?;
        Ok(Self {
            counters,
            catalog,
            store,
            staging_dir,
            zstd_level,
            index_lock: tokio::sync::Mutex::new(()),
            corrupt: std::sync::RwLock::new(corrupt),
            cache: quick_cache::sync::Cache::with_weighter(
                usize::try_from(cache_bytes / (256 << 10)).unwrap_or(1).max(1),
                cache_bytes,
                ChunkWeight,
            ),
        })
    }

    /// Whether a verify found this record corrupt (and no capture stored it again since).
    pub(crate) fn is_corrupt(&self, id: ChunkId) -> bool {
        self.corrupt.read().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// Whether `id` is stored and sound to deduplicate against or build a delta on.
    pub(crate) fn usable(&self, id: ChunkId) -> Result<bool> {
        Ok(!self.is_corrupt(id) && self.lookup(id)?.is_some())
    }

    /// Records that a verify found `id` corrupt.
    pub(crate) fn mark_corrupt(&self, id: ChunkId, reason: &str) -> Result<()> {
        let mut batch = self.catalog.batch();
        batch.put_raw("meta", &[CORRUPT_PREFIX, &id.0].concat(), reason.as_bytes())?;
        self.catalog.commit(batch)?;
        self.corrupt.write().unwrap_or_else(|p| p.into_inner()).insert(id);
        Ok(())
    }

    /// Reads one record exactly as stored and checks it whole (header, CRC, decoding, hash),
    /// whatever its kind. Returns the bytes stored.
    pub(crate) async fn check_record(&self, id: ChunkId, loc: &ChunkLocation) -> Result<u64> {
        let len = RECORD_HEADER_LEN + loc.stored_len as usize;
        let bytes = self.store.get_range(loc.pack, loc.offset, len).await?;
        let where_ = PathBuf::from(format!("pack {}", loc.pack));
        let header = RecordHeader::decode(&bytes, &where_)?;
        decode(&bytes, header.kind, id, &where_)?;
        Ok(len as u64)
    }

    pub(crate) fn zstd_level(&self) -> i32 {
        self.zstd_level
    }

    pub(crate) fn pack_store(&self) -> &dyn PackStore {
        &*self.store
    }

    pub(crate) fn new_pack(&self) -> Result<PackWriter> {
        PackWriter::create(&self.staging_dir)
    }

    /// The index entry of a stored chunk.
    pub(crate) fn lookup(&self, id: ChunkId) -> Result<Option<ChunkLocation>> {
        self.catalog.get_raw("chunks", &id.0)?.map(|v| ChunkLocation::decode(&v)).transpose()
    }

    /// Reads and checks a stored full chunk.
    pub(crate) async fn read(&self, id: ChunkId) -> Result<Vec<u8>> {
        self.read_record(id, RecordKind::Full).await
    }

    /// Reads and checks a stored delta record's payload.
    pub(crate) async fn read_delta(&self, id: ChunkId) -> Result<Vec<u8>> {
        self.read_record(id, RecordKind::Delta).await
    }

    async fn read_record(&self, id: ChunkId, kind: RecordKind) -> Result<Vec<u8>> {
        let loc = self
            .lookup(id)?
            .ok_or_else(|| Error::corrupt("catalog/chunks", format!("chunk {id} is referenced but not stored")))?;
        let bytes = self.store.get_range(loc.pack, loc.offset, RECORD_HEADER_LEN + loc.stored_len as usize).await?;
        decode(&bytes, kind, id, Path::new(&format!("pack {}", loc.pack)))
    }

    /// Record `id` exactly as stored (header + stored bytes), checked whole first: what a copy
    /// sends to another daemon, which checks it again on arrival. A corrupt record is an
    /// error, never sent.
    pub(crate) async fn read_stored(&self, id: ChunkId) -> Result<Vec<u8>> {
        let loc = self.lookup(id)?.ok_or_else(|| Error::not_found(format!("stored chunk {id}")))?;
        let bytes = self.store.get_range(loc.pack, loc.offset, RECORD_HEADER_LEN + loc.stored_len as usize).await?;
        let where_ = PathBuf::from(format!("pack {}", loc.pack));
        let header = RecordHeader::decode(&bytes, &where_)?;
        decode(&bytes, header.kind, id, &where_)?;
        Ok(bytes)
    }

    /// The raw content a chunk map entry names, checked end to end: a delta is applied to
    /// its base and the result must hash to the entry's content. `len` is the chunk's length
    /// where the entry is read (a zero chunk is that many zeros, a delta gives that many
    /// bytes even over a base stored when the chunk was shorter).
    pub(crate) async fn read_ref(&self, r: ChunkRef, len: usize) -> Result<Vec<u8>> {
        let content = match r {
            ChunkRef::Zero => return Ok(vec![0; len]),
            ChunkRef::Full(id) | ChunkRef::Delta { content: id, .. } => id,
        };
        if let Some(hit) = self.cache.get(&content) {
            return Ok(hit.to_vec());
        }
        let data = self.read_ref_uncached(r, len).await?;
        self.cache.insert(content, Arc::from(data.as_slice()));
        Ok(data)
    }

    async fn read_ref_uncached(&self, r: ChunkRef, len: usize) -> Result<Vec<u8>> {
        match r {
            ChunkRef::Zero => Ok(Vec::new()),
            ChunkRef::Full(id) => self.read(id).await,
            ChunkRef::Delta { content, base, delta } => {
                let base_data = match self.cache.get(&base) {
                    Some(hit) => hit.to_vec(),
                    None => self.read(base).await?,
                };
                let payload = self.read_delta(delta).await?;
                let data = crate::store::delta::apply(&base_data, &payload, len)?;
                if ChunkId::of(&data) != content {
                    return Err(Error::corrupt(
                        "delta",
                        format!("chunk {content}: base {base} + delta {delta} does not give the recorded content"),
                    ));
                }
                Ok(data)
            }
        }
    }

    /// Counts of the chunk index and its packs (running totals: no scan).
    pub(crate) fn stats(&self) -> Result<StoreStats> {
        Ok(self.counters.snapshot())
    }

    /// The running totals, for GC to adjust after its own commits.
    pub(crate) fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Holds the reference-count lock (GC relocations and sweeps take it around their commits).
    pub(crate) async fn lock_index(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.index_lock.lock().await
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Adds `delta`'s index changes to `batch` and commits it, atomically with whatever else
    /// the batch holds. Reference counts are read and written under one lock, so concurrent
    /// writers storing the same chunk count correctly (the later copy's record is garbage).
    pub(crate) async fn commit(&self, mut batch: Batch<'_>, delta: &IndexDelta) -> Result<()> {
        let _lock = self.index_lock.lock().await;
        let mut healed = Vec::new();
        let mut change = StoreChange::default();
        for (id, add) in &delta.refs {
            let before = self.lookup(*id)?;
            let loc = match (before, delta.new.get(id)) {
                // A record stored anew over one a verify found corrupt replaces it.
                (Some(existing), Some(fresh)) if self.is_corrupt(*id) => {
                    batch.delete_raw("meta", &[CORRUPT_PREFIX, &id.0].concat())?;
                    healed.push(*id);
                    ChunkLocation { refs: existing.refs, ..*fresh }
                }
                (Some(existing), _) => existing,
                (None, Some(fresh)) => *fresh,
                (None, None) => {
                    return Err(Error::corrupt(
                        "catalog/chunks",
                        format!("reference to chunk {id} that is not stored"),
                    ));
                }
            };
            // Below zero, some entry was dereferenced twice or the count is damaged: clamped to
            // 0, it would let GC free a record live entries still name. The count is catalog
            // data, so this is an error (nothing of the batch commits), not an assertion.
            let Some(refs) = loc.refs.checked_add_signed(*add) else {
                tracing::error!(chunk = %id, refs = loc.refs, add, "reference count would leave its range");
                return Err(Error::corrupt(
                    "catalog/chunks",
                    format!("chunk {id} has {} references; adding {add} leaves their range", loc.refs),
                ));
            };
            let loc = ChunkLocation { refs, ..loc };
            batch.put_raw("chunks", &id.0, &loc.encode())?;
            change.record(before.as_ref(), Some(&loc));
        }
        for (pack, bytes) in &delta.packs {
            batch.put_raw("packs", &pack.to_bytes(), &crate::base::format::encode_pack_entry(*bytes))?;
            change.pack_added(*bytes);
        }
        self.catalog.commit_off_thread(batch).await?;
        self.counters.apply(&change);
        if !healed.is_empty() {
            let mut corrupt = self.corrupt.write().unwrap_or_else(|p| p.into_inner());
            for id in healed {
                tracing::info!(chunk = %id, "corrupt record replaced by a good copy");
                corrupt.remove(&id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pack::LocalPackStore;

    /// A store over a fresh catalog holding one record with one reference.
    async fn store_with_one_record(dir: &Path) -> (ChunkStore, ChunkId) {
        let catalog = Arc::new(Catalog::open(&dir.join("catalog")).unwrap());
        let packs = Arc::new(LocalPackStore::open(&dir.join("packs")).unwrap());
        let store = ChunkStore::open(catalog, packs, dir.join("staging"), 3, 1 << 20).unwrap();
        let data = vec![7u8; 4096];
        let id = ChunkId::of(&data);
        let mut writer = store.new_pack().unwrap();
        let mut delta = IndexDelta::default();
        delta.new.insert(id, writer.append(&prepare_full(id, &data, 3).unwrap()).unwrap());
        let bytes = writer.len();
        delta.packs.push((writer.seal(store.pack_store()).await.unwrap(), bytes));
        delta.add_ref(id);
        store.commit(store.catalog.batch(), &delta).await.unwrap();
        (store, id)
    }

    #[tokio::test]
    async fn a_reference_count_that_would_go_negative_fails_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_one_record(dir.path()).await;
        let marker = b"marker".as_slice();
        let mut batch = store.catalog.batch();
        batch.put_raw("meta", marker, &[1]).unwrap();
        let mut double_drop = IndexDelta::default();
        double_drop.drop_ref(id);
        double_drop.drop_ref(id);

        let err = store.commit(batch, &double_drop).await.unwrap_err();

        assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{err}");
        assert_eq!(store.lookup(id).unwrap().map(|l| l.refs), Some(1), "the reference count is unchanged");
        assert_eq!(store.catalog.get_raw("meta", marker).unwrap(), None, "nothing of the batch committed");
    }
}
