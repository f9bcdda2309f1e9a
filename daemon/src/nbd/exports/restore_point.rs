//! Read-only exports of disk restore points, named `COLLECTION/RESTORE_POINT/DISK` (DISK is
//! the disk's name as the restore point recorded it), with a `qemu:dirty-bitmap:OLDER`
//! metadata context per older restore point of the same disk history, so QEMU's pull-mode
//! incremental backup tooling reads "what changed since OLDER" unchanged.
//!
//! Only `Succeeded` restore points are exports: one still `Creating`, or `Failed`, is not
//! found. A restore point is immutable, so its allocation and each dirty bitmap are computed
//! once (lazily, off the async threads, as chunk-index runs: small for the usual contiguous
//! layouts) and served from memory, in a [`RunsCache`] shared by every connection: the four
//! connections of a multi-conn client scan the catalog once, not four times.
//!
//! Deleting a restore point moves its chunk map entries to the next newer one, so a reader
//! that outlived the deletion would silently read an older restore point's content. The
//! engine's reader checks, after its lookups, that the restore point still exists, and fails
//! NotFound if not; a READ answers that with EIO instead of wrong data. BLOCK_STATUS answers
//! from runs cached while the restore point existed, so it checks here, after its lookup.

use std::sync::Arc;

use cairn_engine::{
    DiskId, DiskRestorePointReader, Engine, Error, ErrorKind, Extent, IoBuf, ProvisioningState, RestorePointId, Result,
};

use super::{Export, ExportFuture};
use crate::nbd::codec::{MAX_PAYLOAD_BYTES, PREFERRED_BLOCK_BYTES};

/// Opens the export called `name`, or `None` when no succeeded restore point has that disk.
/// Catalog failures are logged and also answered `None` (the client sees "unknown export").
pub fn open(engine: &Engine, runs: &Arc<RunsCache>, name: &str) -> Option<DiskRestorePointExport> {
    match DiskRestorePointExport::open(engine, runs, name) {
        Ok(export) => export,
        Err(e) => {
            tracing::warn!(export = name, error = %e, "cannot open restore point export");
            None
        }
    }
}

/// Every disk restore point export name, for `NBD_OPT_LIST`.
pub fn list(engine: &Engine) -> Vec<String> {
    let mut names = Vec::new();
    let collections = match engine.list_collections() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list collections for NBD_OPT_LIST");
            return names;
        }
    };
    for coll in collections {
        let rps = match engine.list_restore_points(coll.id) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(collection = %coll.name, error = %e, "cannot list restore points for NBD_OPT_LIST");
                continue;
            }
        };
        for rp in rps.iter().filter(|r| r.state == ProvisioningState::Succeeded) {
            names.extend(rp.disks.iter().map(|d| format!("{}/{}/{}", coll.name, rp.name, d.disk_name)));
        }
    }
    names
}

/// `COLLECTION/RESTORE_POINT/DISK`, each part non-empty.
fn split_name(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(r), Some(d), None) if !c.is_empty() && !r.is_empty() && !d.is_empty() => Some((c, r, d)),
        _ => None,
    }
}

/// One disk restore point, served read-only.
#[derive(Debug)]
pub struct DiskRestorePointExport {
    engine: Engine,
    name: String,
    rp: RestorePointId,
    disk: DiskId,
    reader: DiskRestorePointReader,
    /// Allocations and bitmaps already computed, shared with other connections.
    runs: Arc<RunsCache>,
    /// Older restore points of the same disk history, oldest first.
    bitmaps: Vec<Bitmap>,
}

/// `qemu:dirty-bitmap:NAME`: the chunks changed since restore point `NAME`.
#[derive(Debug)]
struct Bitmap {
    name: String,
    from: RestorePointId,
}

/// What a [`RunsCache`] entry describes. Restore point ids are never reused and restore
/// points never change, so an entry never goes stale (a deleted one is just never asked for
/// again, and ages out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RunsKey {
    /// Chunks of `disk` in restore point `rp` that are not all zeros.
    Allocated { rp: RestorePointId, disk: DiskId },
    /// Chunks of `disk` changed from restore point `from` to `to`.
    Changed { from: RestorePointId, to: RestorePointId, disk: DiskId },
}

/// Restore point allocations and dirty bitmaps, shared by every NBD connection of a server.
/// Concurrent first uses compute an entry once.
#[derive(Debug)]
pub struct RunsCache(quick_cache::sync::Cache<RunsKey, Arc<ChunkRuns>>);

/// Entries kept: each is one disk restore point's allocation or one bitmap.
const RUNS_CACHE_ENTRIES: usize = 1024;

impl Default for RunsCache {
    fn default() -> Self {
        Self(quick_cache::sync::Cache::new(RUNS_CACHE_ENTRIES))
    }
}

impl DiskRestorePointExport {
    /// The export called `name`; `Ok(None)` when nothing by that name is exportable.
    pub fn open(engine: &Engine, runs: &Arc<RunsCache>, name: &str) -> Result<Option<Self>> {
        let Some((coll_name, rp_name, disk_name)) = split_name(name) else { return Ok(None) };
        let coll = match engine.collection_by_name(coll_name) {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let rps = engine.list_restore_points(coll.id)?;
        let Some(rp) = rps.iter().find(|r| r.name.as_str() == rp_name) else { return Ok(None) };
        if rp.state != ProvisioningState::Succeeded {
            return Ok(None);
        }
        let Some(drp) = rp.disks.iter().find(|d| d.disk_name.as_str() == disk_name) else { return Ok(None) };
        let reader = match engine.disk_restore_point(rp.id, drp.disk) {
            Ok(r) => r,
            // Deleted or failed between the listing and now.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::FailedPrecondition) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bitmaps = rps
            .iter()
            .filter(|o| o.seq < rp.seq && o.state == ProvisioningState::Succeeded)
            .filter(|o| o.disks.iter().any(|x| x.disk == drp.disk && x.lineage == drp.lineage))
            .map(|o| Bitmap { name: o.name.to_string(), from: o.id })
            .collect();
        Ok(Some(Self {
            engine: engine.clone(),
            name: format!("{}/{}/{}", coll.name, rp.name, drp.disk_name),
            rp: rp.id,
            disk: drp.disk,
            reader,
            runs: runs.clone(),
            bitmaps,
        }))
    }

    /// Fails once the restore point is gone (see the module doc).
    fn still_exists(&self) -> Result<()> {
        self.engine.restore_point(self.rp).map(drop).map_err(|e| self.deleted_is_io(e))
    }

    /// The restore point deleted while exported is an I/O error of this export (EIO, as
    /// any NotFound is on NBD), named as such: the client named it when it still existed.
    fn deleted_is_io(&self, e: Error) -> Error {
        match e.kind() {
            ErrorKind::NotFound => Error::Io {
                context: "read a restore point deleted while exported",
                path: self.name.clone().into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()),
            },
            _ => e,
        }
    }

    async fn allocation(&self) -> Result<Arc<ChunkRuns>> {
        let key = RunsKey::Allocated { rp: self.rp, disk: self.disk };
        let reader = self.reader.clone();
        let scan = blocking(&self.name, "scan restore point allocation", move || {
            Ok(ChunkRuns::from_sorted(reader.allocated_chunks()?.into_iter().map(|(i, _)| i)))
        });
        self.runs.0.get_or_insert_async(&key, scan).await
    }

    async fn changed_since(&self, bitmap: &Bitmap) -> Result<Arc<ChunkRuns>> {
        let (engine, from, to, disk) = (self.engine.clone(), bitmap.from, self.rp, self.disk);
        let key = RunsKey::Changed { from, to, disk };
        let list = blocking(&self.name, "list changed chunks", move || {
            Ok(ChunkRuns::from_sorted(engine.changed_chunks(from, to, disk)?))
        });
        self.runs.0.get_or_insert_async(&key, list).await
    }

    fn runs_to_extents(&self, runs: &ChunkRuns, offset: u64, len: u64) -> Vec<Extent> {
        runs.extents(offset, len, self.reader.chunk_size_bytes(), self.reader.size_bytes())
    }
}

/// Runs `f` on the blocking pool (catalog scans must not stall the server's threads).
async fn blocking<T: Send + 'static>(
    export: &str,
    context: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<Arc<T>> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io { context, path: export.into(), source: std::io::Error::other(e) })?
        .map(Arc::new)
}

fn read_only_error() -> Error {
    Error::FailedPrecondition("disk restore point exports are read-only".into())
}

impl Export for DiskRestorePointExport {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn description(&self) -> String {
        format!("Cairn disk restore point {} ({} bytes, read-only)", self.name, self.reader.size_bytes())
    }
    fn size_bytes(&self) -> u64 {
        self.reader.size_bytes()
    }
    fn min_block_bytes(&self) -> u32 {
        1
    }
    fn preferred_block_bytes(&self) -> u32 {
        // A whole chunk: anything smaller still reads and decompresses the whole chunk.
        u32::try_from(self.reader.chunk_size_bytes())
            .unwrap_or(MAX_PAYLOAD_BYTES)
            .clamp(PREFERRED_BLOCK_BYTES, MAX_PAYLOAD_BYTES)
    }
    fn read_only(&self) -> bool {
        true
    }
    fn can_multi_conn(&self) -> bool {
        // Immutable content: every connection sees the same bytes.
        true
    }
    fn read(&self, offset: u64, len: u64) -> ExportFuture<'_, IoBuf> {
        Box::pin(async move {
            let data = self.reader.read(offset, len).await.map_err(|e| self.deleted_is_io(e))?;
            Ok(IoBuf::from_slice(&data))
        })
    }
    fn write(&self, _offset: u64, _buf: IoBuf, _fua: bool) -> ExportFuture<'_, ()> {
        Box::pin(std::future::ready(Err(read_only_error())))
    }
    fn punch(&self, _offset: u64, _len: u64, _fua: bool) -> ExportFuture<'_, ()> {
        Box::pin(std::future::ready(Err(read_only_error())))
    }
    fn flush(&self) -> ExportFuture<'_, ()> {
        // Nothing is ever written, so everything is as durable as it gets.
        Box::pin(std::future::ready(Ok(())))
    }
    fn cache(&self, _offset: u64, _len: u64) -> ExportFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn extents(&self, offset: u64, len: u64) -> ExportFuture<'_, Vec<Extent>> {
        Box::pin(async move {
            let runs = self.allocation().await.map_err(|e| self.deleted_is_io(e))?;
            self.still_exists()?;
            Ok(self.runs_to_extents(&runs, offset, len))
        })
    }
    fn dirty_bitmaps(&self) -> Vec<String> {
        self.bitmaps.iter().map(|b| b.name.clone()).collect()
    }
    fn dirty_extents(&self, name: &str, offset: u64, len: u64) -> ExportFuture<'_, Vec<Extent>> {
        let bitmap = self.bitmaps.iter().find(|b| b.name == name);
        let missing = Error::NotFound { what: format!("dirty bitmap {name} of {}", self.name) };
        Box::pin(async move {
            let bitmap = bitmap.ok_or(missing)?;
            let runs = self.changed_since(bitmap).await.map_err(|e| self.deleted_is_io(e))?;
            self.still_exists()?;
            Ok(self.runs_to_extents(&runs, offset, len))
        })
    }
}

/// A set of chunk indices as sorted, disjoint, non-adjacent `[start, end)` runs.
#[derive(Debug, Default, PartialEq, Eq)]
struct ChunkRuns(Vec<(u64, u64)>);

impl ChunkRuns {
    /// From ascending indices (duplicates tolerated).
    fn from_sorted(indices: impl IntoIterator<Item = u64>) -> Self {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in indices {
            match runs.last_mut() {
                Some(last) if i < last.1 => {}
                Some(last) if i == last.1 => last.1 = i + 1,
                _ => runs.push((i, i.saturating_add(1))),
            }
        }
        Self(runs)
    }

    /// `[offset, offset + len)` as extents, `data` where the chunk is in the set; adjacent
    /// extents differ. The last chunk may be short: nothing past `size_bytes` is reported.
    fn extents(&self, offset: u64, len: u64, chunk_bytes: u64, size_bytes: u64) -> Vec<Extent> {
        let end = offset.saturating_add(len).min(size_bytes);
        let at = |chunk: u64| chunk.saturating_mul(chunk_bytes);
        let mut out: Vec<Extent> = Vec::new();
        let mut i = self.0.partition_point(|&(_, e)| at(e) <= offset);
        let mut pos = offset;
        while pos < end {
            let (data, next) = match self.0.get(i) {
                Some(&(s, e)) if at(s) <= pos => {
                    i += 1;
                    (true, at(e).min(end))
                }
                Some(&(s, _)) => (false, at(s).min(end)),
                None => (false, end),
            };
            match out.last_mut() {
                Some(last) if last.data == data => last.len += next - pos,
                _ => out.push(Extent { offset: pos, len: next - pos, data }),
            }
            pos = next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use cairn_engine::{
        CollectionId, CreateCollection, CreateDisk, CreateGroup, CreateRestorePoint, EngineConfig, OperationId,
        OperationState,
    };

    use super::*;

    fn ext(offset: u64, len: u64, data: bool) -> Extent {
        Extent { offset, len, data }
    }

    #[test]
    fn names_have_exactly_three_non_empty_parts() {
        assert_eq!(split_name("c/rp/d"), Some(("c", "rp", "d")));
        assert_eq!(split_name("c/rp"), None);
        assert_eq!(split_name("c/rp/d/x"), None);
        assert_eq!(split_name("c//d"), None);
        assert_eq!(split_name("/rp/d"), None);
        assert_eq!(split_name("c/rp/"), None);
    }

    #[test]
    fn chunk_runs_merge_adjacent_and_duplicate_indices() {
        assert_eq!(ChunkRuns::from_sorted([1, 2, 2, 3, 7, 9, 10]).0, vec![(1, 4), (7, 8), (9, 11)]);
        assert_eq!(ChunkRuns::from_sorted([]).0, vec![]);
    }

    #[test]
    fn chunk_runs_become_extents_of_any_range() {
        let runs = ChunkRuns::from_sorted([1, 2, 5]);
        // 8 chunks of 100 bytes, the last one short (size 750).
        assert_eq!(
            runs.extents(0, 750, 100, 750),
            vec![
                ext(0, 100, false),
                ext(100, 200, true),
                ext(300, 200, false),
                ext(500, 100, true),
                ext(600, 150, false)
            ]
        );
        // Unaligned start and end inside runs.
        assert_eq!(
            runs.extents(150, 400, 100, 750),
            vec![ext(150, 150, true), ext(300, 200, false), ext(500, 50, true)]
        );
        // Entirely inside a hole, and past the last run.
        assert_eq!(runs.extents(320, 10, 100, 750), vec![ext(320, 10, false)]);
        assert_eq!(runs.extents(600, 150, 100, 750), vec![ext(600, 150, false)]);
        // The short last chunk in the set ends at the size.
        assert_eq!(
            ChunkRuns::from_sorted([7]).extents(650, 100, 100, 750),
            vec![ext(650, 50, false), ext(700, 50, true)]
        );
        assert_eq!(runs.extents(10, 0, 100, 750), vec![]);
    }

    const CHUNK: u64 = 256 << 10;

    async fn wait(engine: &Engine, op: OperationId) -> OperationState {
        loop {
            let op = engine.operation(op).unwrap();
            if op.state.is_terminal() {
                return op.state;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    async fn capture(engine: &Engine, coll: CollectionId, name: &str) -> RestorePointId {
        let req = CreateRestorePoint { name: name.into(), ..Default::default() };
        let (rp, op) = engine.create_restore_point(coll, req).await.unwrap();
        assert_eq!(wait(engine, op.id).await, OperationState::Succeeded);
        rp.id
    }

    async fn write(engine: &Engine, disk: DiskId, offset: u64, byte: u8, len: u64) {
        let buf = IoBuf::from_slice(&vec![byte; usize::try_from(len).unwrap()]);
        engine.disk(disk).unwrap().write(offset, buf, false).await.unwrap();
    }

    #[tokio::test]
    async fn restore_points_are_read_only_exports_with_dirty_bitmaps_of_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
        let runs = Arc::new(RunsCache::default());
        let req = CreateDisk { name: "d".into(), size_bytes: 4 << 20, chunk_size_bytes: None, direct_io: false };
        let d = engine.create_disk(req).await.unwrap().id;
        let group = engine
            .create_group(CreateGroup { name: "vm".into(), disks: vec![d], configuration: "{}".into() })
            .await
            .unwrap();
        let coll = engine
            .create_collection(CreateCollection { name: "c".into(), group: group.id, ..Default::default() })
            .await
            .unwrap()
            .id;
        write(&engine, d, 0, 0x11, 4096).await;
        write(&engine, d, 2 * CHUNK, 0x22, 2 * CHUNK).await;
        // Written, but all zeros: captured as a zero chunk, a hole of the export.
        write(&engine, d, 8 * CHUNK, 0, CHUNK).await;
        capture(&engine, coll, "rp1").await;
        write(&engine, d, 3 * CHUNK + 4096, 0x33, 4096).await;
        write(&engine, d, 10 * CHUNK, 0x44, 4096).await;
        capture(&engine, coll, "rp2").await;

        // A capture still running is no export, nor once it failed (canceled).
        write(&engine, d, 0, 0x55, 2 << 20).await;
        let (rp3, op) = engine
            .create_restore_point(coll, CreateRestorePoint { name: "rp3".into(), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(engine.restore_point(rp3.id).unwrap().state, ProvisioningState::Creating);
        assert!(open(&engine, &runs, "c/rp3/d").is_none());
        engine.cancel_operation(op.id).unwrap();
        wait(&engine, op.id).await;
        assert!(matches!(engine.restore_point(rp3.id).unwrap().state, ProvisioningState::Failed { .. }));
        assert!(open(&engine, &runs, "c/rp3/d").is_none());
        for bad in ["c/rp2", "c/rp2/x", "x/rp2/d", "c/nope/d", "c/rp2/d/"] {
            assert!(open(&engine, &runs, bad).is_none(), "{bad}");
        }
        assert_eq!(list(&engine), vec!["c/rp1/d".to_owned(), "c/rp2/d".to_owned()]);

        let e = open(&engine, &runs, "c/rp2/d").unwrap();
        assert_eq!(
            (e.name(), e.size_bytes(), e.read_only(), e.can_multi_conn()),
            ("c/rp2/d".into(), 4 << 20, true, true)
        );
        assert_eq!(e.preferred_block_bytes(), 256 << 10);
        let data = e.read(3 * CHUNK, 8192).await.unwrap();
        assert!(data[..4096].iter().all(|&b| b == 0x22) && data[4096..].iter().all(|&b| b == 0x33));
        assert!(e.read(0, 4096).await.unwrap().iter().all(|&b| b == 0x11), "the old content, not the live disk's");
        let err = e.write(0, IoBuf::from_slice(&[1; 512]), false).await.unwrap_err();
        assert_eq!(crate::errors::nbd_errno(&err), crate::nbd::codec::Errno::Perm);
        assert!(e.punch(0, 4096, false).await.is_err());

        assert_eq!(
            e.extents(0, 4 << 20).await.unwrap(),
            vec![
                ext(0, CHUNK, true),
                ext(CHUNK, CHUNK, false),
                ext(2 * CHUNK, 2 * CHUNK, true),
                ext(4 * CHUNK, 6 * CHUNK, false),
                ext(10 * CHUNK, CHUNK, true),
                ext(11 * CHUNK, 5 * CHUNK, false),
            ]
        );
        assert_eq!(e.dirty_bitmaps(), vec!["rp1".to_owned()]);
        assert_eq!(
            e.dirty_extents("rp1", 0, 4 << 20).await.unwrap(),
            vec![
                ext(0, 3 * CHUNK, false),
                ext(3 * CHUNK, CHUNK, true),
                ext(4 * CHUNK, 6 * CHUNK, false),
                ext(10 * CHUNK, CHUNK, true),
                ext(11 * CHUNK, 5 * CHUNK, false),
            ]
        );
        assert!(e.dirty_extents("rp2", 0, 4096).await.is_err());
        // Another connection to the same export reuses what the first one computed.
        let again = open(&engine, &runs, "c/rp2/d").unwrap();
        assert!(Arc::ptr_eq(&e.allocation().await.unwrap(), &again.allocation().await.unwrap()));
        let bitmap = &again.bitmaps[0];
        assert!(Arc::ptr_eq(
            &e.changed_since(&e.bitmaps[0]).await.unwrap(),
            &again.changed_since(bitmap).await.unwrap()
        ));
        drop(again);
        assert!(open(&engine, &runs, "c/rp1/d").unwrap().dirty_bitmaps().is_empty());

        // Deleted while exported: EIO, never another restore point's content.
        let rp1 = open(&engine, &runs, "c/rp1/d").unwrap();
        let rp1_id = engine.collection_by_name("c").and_then(|c| engine.restore_point_by_name(c.id, "rp1")).unwrap().id;
        engine.delete_restore_point(rp1_id).await.unwrap();
        let err = rp1.read(0, 4096).await.unwrap_err();
        assert_eq!(crate::errors::nbd_errno(&err), crate::nbd::codec::Errno::Io);
        assert!(rp1.extents(0, 4096).await.is_err());
        drop((e, rp1));
        engine.close().await.unwrap();
    }
}
