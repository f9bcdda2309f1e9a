//! [`Engine`]: the facade of one data dir: open and close, and every call handed to its layer.

use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::base::error::{Error, Result};
use crate::base::ids::{CollectionId, DiskId, GroupId, OperationId, RestorePointId};
use crate::base::stats::{FreezeStats, Throughput};
use crate::catalog::Catalog;
use crate::catalog::group::{CreateGroup, GroupRecord};
use crate::catalog::restore_point::{CreateRestorePoint, RestorePointRecord};
use crate::chunk_map::reader::{DiskRestorePointReader, RestoredDisk};
pub use crate::context::EngineConfig;
use crate::context::{Context, DiskEntry, State};
use crate::disk::{CreateDisk, Disk, DiskRecord};
use crate::io::Io;
use crate::jobs::operation::OperationRecord;
use crate::maintenance::gc;
use crate::maintenance::verify::{self, VerifyTarget};
use crate::rp::collection::{self, CollectionRecord, CollectionSource, CreateCollection, UpdateCollection};
use crate::rp::copy::{self, CopySource, ExportedRestorePoint};
use crate::rp::group::{self, Freeze};
use crate::rp::hooks::{QuiesceHook, Registry};
use crate::rp::restore::{self, RestoreDisk};
use crate::rp::retention::{self, RetentionDecision, RetentionPolicy};
use crate::rp::revert::{self, RevertInPlace, RevertReport};
use crate::rp::{create, delete, recover};
use crate::store::chunk::ChunkId;
use crate::store::chunk_store::ChunkStore;
use crate::store::pack::LocalPackStore;

/// The storage engine of one data dir. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Context>,
    /// Quiesce hooks of hypervisors, per group (none survive a restart).
    pub(crate) hooks: Arc<Registry>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("data_dir", &self.inner.config.data_dir).finish_non_exhaustive()
    }
}

fn create_dir(path: &Path) -> Result<()> {
    crate::sys::create_dir_durable(path).map_err(|e| Error::io("create directory", path, e))
}

impl Engine {
    /// Opens (creating if needed) the data dir: catalog, I/O backend, every disk.
    ///
    /// Disks left open by an unclean shutdown get untrusted change tracking; files left by
    /// a create or delete that crashed before (or after) its catalog commit are removed.
    pub async fn open(config: EngineConfig) -> Result<Self> {
        let data_dir = &config.data_dir;
        create_dir(data_dir)?;
        let disks_dir = data_dir.join("disks");
        create_dir(&disks_dir)?;
        crate::base::failpoint::arm_from_env();
        // RocksDB syncs what it creates in its directory, not the directory into its parent.
        create_dir(&data_dir.join("catalog"))?;
        let catalog = Arc::new(Catalog::open(&data_dir.join("catalog"))?);
        crate::chunk_map::build_seq_index(&catalog)?;
        let io = Io::open(config.io_backend)?;
        let spill_dir = data_dir.join("spill");
        create_dir(&spill_dir)?;
        clear_dir(&spill_dir);
        let packs = Arc::new(LocalPackStore::open(&data_dir.join("packs"))?);
        let chunks = Arc::new(ChunkStore::open(
            catalog.clone(),
            packs,
            data_dir.join("staging"),
            config.zstd_level,
            config.chunk_cache_bytes,
        )?);

        let mut state = State::default();
        let mut disk_problems = Vec::new();
        for record in catalog.list::<DiskRecord>()? {
            let base = match record.source.filter(|_| !record.hydrated) {
                Some(src) => {
                    let restored = RestoredDisk {
                        name: &record.name,
                        lineage: record.lineage,
                        size_bytes: record.size_bytes,
                        chunk_size_bytes: record.chunk_size_bytes,
                        restore_point: src.restore_point,
                        source_disk: src.disk,
                    };
                    let (base, problem) = DiskRestorePointReader::open_base(&catalog, &chunks, &restored)?;
                    disk_problems.extend(problem.map(|p| (record.id, p)));
                    Some(base)
                }
                None => None,
            };
            let disk = Disk::open(&disks_dir, &record, io.clone(), base)?;
            state.disks.insert(record.id, DiskEntry { disk: Arc::new(disk), group: record.group });
        }
        for group in catalog.list::<GroupRecord>()? {
            state.groups.insert(group.id, group);
        }
        crate::context::disks::remove_orphan_files(&disks_dir, &state)?;
        tracing::info!(data_dir = %data_dir.display(), disks = state.disks.len(), groups = state.groups.len(), io = io.name(), "engine open");

        let watermark = config.free_space_watermark_bytes;
        let background = crate::jobs::background::BackgroundPool::start(config.background_priority)
            .map_err(|e| Error::io("start background threads", data_dir, e))?;
        let engine = Self {
            inner: Arc::new(Context {
                config,
                catalog,
                io,
                disks_dir,
                spill_dir,
                state: RwLock::new(state),
                admin: tokio::sync::Mutex::new(()),
                freeze_stats: Arc::new(FreezeStats::default()),
                throughput: Throughput::default(),
                chunks,
                jobs: crate::jobs::Jobs::default(),
                watermark_bytes: std::sync::atomic::AtomicU64::new(watermark),
                operations_pruned_at_ms: std::sync::atomic::AtomicU64::new(0),
                gc_gate: Arc::new(tokio::sync::RwLock::new(())),
                gc_single: Arc::new(tokio::sync::Mutex::new(())),
                background,
                disk_problems,
                roots_checked: Default::default(),
            }),
            hooks: Arc::default(),
        };
        recover::recover_captures(&engine.inner).await?;
        recover::record_missing_roots(&engine.inner)?;
        restore::resume_hydrations(&engine.inner);
        crate::maintenance::operations::resume_operations(&engine.inner)?;
        Ok(engine)
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    /// `"io_uring"` or `"blocking"`.
    pub fn io_backend(&self) -> &'static str {
        self.inner.io.name()
    }

    /// Changes the free-space watermark under which background jobs pause.
    pub fn set_free_space_watermark(&self, bytes: u64) {
        self.inner.watermark_bytes.store(bytes, std::sync::atomic::Ordering::Release);
    }

    /// Freeze-window statistics of every freeze so far.
    pub fn freeze_stats(&self) -> &FreezeStats {
        &self.inner.freeze_stats
    }

    /// What is wrong with the engine, if anything: disks a failed sync poisoned, restored disks
    /// whose base restore point is gone, a catalog whose last commit failed or that cannot be
    /// read. Empty when healthy.
    pub fn problems(&self) -> Vec<String> {
        let state = self.inner.state();
        let mut out: Vec<String> = state
            .disks
            .values()
            .filter(|e| e.disk.poisoned())
            .map(|e| format!("disk {} is poisoned by a failed sync", e.disk.name()))
            .collect();
        out.extend(
            self.inner.disk_problems.iter().filter(|(d, _)| state.disks.contains_key(d)).map(|(_, p)| p.clone()),
        );
        drop(state);
        out.extend(self.inner.catalog.problem());
        out
    }

    /// Bytes and busy time of captures and hydrations so far.
    pub fn throughput(&self) -> &Throughput {
        &self.inner.throughput
    }

    /// What the chunk store holds.
    pub fn store_stats(&self) -> Result<crate::store::counters::StoreStats> {
        self.inner.chunks.stats()
    }

    /// Registers a quiesce hook for a group (a hypervisor subscribed over gRPC). It stays
    /// until [`Self::unregister_quiesce_hook`] or a restart.
    pub fn register_quiesce_hook(&self, group: GroupId, hook: Arc<dyn QuiesceHook>) {
        self.hooks.register(group, hook);
    }

    pub fn unregister_quiesce_hook(&self, group: GroupId, hook: &Arc<dyn QuiesceHook>) {
        self.hooks.unregister(group, hook);
    }

    pub fn operation(&self, id: OperationId) -> Result<OperationRecord> {
        self.inner.operation(id)
    }

    /// Every operation remembered, oldest first.
    pub fn list_operations(&self) -> Result<Vec<OperationRecord>> {
        self.inner.list_operations()
    }

    /// Asks a running operation to stop; it ends `Canceled` (a capture's restore point
    /// ends `Failed`, reason canceled).
    pub fn cancel_operation(&self, id: OperationId) -> Result<OperationRecord> {
        self.inner.cancel_operation(id)
    }

    // ---- disks and groups (the context's) ------------------------------------------------

    /// Creates a sparse disk.
    pub async fn create_disk(&self, req: CreateDisk) -> Result<DiskRecord> {
        self.inner.create_disk(req).await
    }

    /// A live disk by id.
    pub fn disk(&self, id: DiskId) -> Result<Arc<Disk>> {
        self.inner.disk(id)
    }

    /// A live disk by name.
    pub fn disk_by_name(&self, name: &str) -> Result<Arc<Disk>> {
        self.inner.disk_by_name(name)
    }

    /// A disk's record as it stands.
    pub fn disk_record(&self, id: DiskId) -> Result<DiskRecord> {
        self.inner.disk_record(id)
    }

    /// Every disk, by id.
    pub fn list_disks(&self) -> Vec<DiskRecord> {
        self.inner.list_disks()
    }

    /// Grows a disk (shrinking is refused: it would destroy data).
    pub async fn resize_disk(&self, id: DiskId, new_size_bytes: u64) -> Result<DiskRecord> {
        self.inner.resize_disk(id, new_size_bytes).await
    }

    /// Deletes a disk and its files. A disk in a group must leave the group first.
    pub async fn delete_disk(&self, id: DiskId) -> Result<()> {
        self.inner.delete_disk(id).await
    }

    /// Creates a group of disks with its configuration document.
    pub async fn create_group(&self, req: CreateGroup) -> Result<GroupRecord> {
        self.inner.create_group(req).await
    }

    /// Replaces a group's disks and/or configuration.
    pub async fn update_group(
        &self,
        id: GroupId,
        disks: Option<Vec<DiskId>>,
        configuration: Option<String>,
    ) -> Result<GroupRecord> {
        self.inner.update_group(id, disks, configuration).await
    }

    /// A group by id.
    pub fn group(&self, id: GroupId) -> Result<GroupRecord> {
        self.inner.group(id)
    }

    /// A group by name.
    pub fn group_by_name(&self, name: &str) -> Result<GroupRecord> {
        self.inner.group_by_name(name)
    }

    /// Every group, by id.
    pub fn list_groups(&self) -> Vec<GroupRecord> {
        self.inner.list_groups()
    }

    /// Deletes a group; its disks stay, outside any group.
    pub async fn delete_group(&self, id: GroupId) -> Result<()> {
        self.inner.delete_group(id).await
    }

    // ---- restore point reads (the context's) ----------------------------------------------

    /// A restore point by id.
    pub fn restore_point(&self, id: RestorePointId) -> Result<RestorePointRecord> {
        self.inner.restore_point(id)
    }

    /// A collection's restore points, oldest first.
    pub fn list_restore_points(&self, collection: CollectionId) -> Result<Vec<RestorePointRecord>> {
        self.inner.list_restore_points(collection)
    }

    /// A collection's restore point by name.
    pub fn restore_point_by_name(&self, collection: CollectionId, name: &str) -> Result<RestorePointRecord> {
        self.inner.restore_point_by_name(collection, name)
    }

    /// A reader of one disk restore point of a `Succeeded` restore point.
    pub fn disk_restore_point(&self, rp: RestorePointId, disk: DiskId) -> Result<DiskRestorePointReader> {
        self.inner.disk_restore_point(rp, disk)
    }

    /// Chunks of `disk` that changed from restore point `from` to restore point `to` (same
    /// disk, `from` older): like EBS ListChangedBlocks.
    pub fn changed_chunks(&self, from: RestorePointId, to: RestorePointId, disk: DiskId) -> Result<Vec<u64>> {
        self.inner.changed_chunks(from, to, disk)
    }

    // ---- collections, restore points, restore, retention (rp's) ---------------------------

    /// Creates a restore point of the collection's group: quiesce hooks, freeze of every
    /// included disk at once, epoch switch, thaw, then capture in the background. Returns the
    /// `Creating` record and its operation as soon as the freeze is recorded.
    ///
    /// Everything after the checks runs as an engine job of its own, from the first hook to
    /// the last commit: a caller that goes away (an RPC deadline, a killed client) changes
    /// nothing, thaw hooks always run after quiesce hooks, and a failure anywhere after the
    /// freeze unwinds it (see `Armed`).
    pub async fn create_restore_point(
        &self,
        collection: CollectionId,
        req: CreateRestorePoint,
    ) -> Result<(RestorePointRecord, OperationRecord)> {
        create::create_restore_point(&self.inner, &self.hooks, collection, req).await
    }

    /// Changes a collection's limit of restore points and its quiesce hook, as Azure's
    /// restorePointCollections CreateOrUpdate does for an existing collection. A limit below
    /// the restore points it holds is refused (delete some first); lowering the limit waits
    /// for no creation: it is refused while one runs, whose restore point would not be counted.
    pub async fn update_collection(&self, id: CollectionId, req: UpdateCollection) -> Result<CollectionRecord> {
        collection::update_collection(&self.inner, id, req).await
    }

    /// This daemon's region.
    pub fn region(&self) -> &str {
        collection::region(&self.inner)
    }

    /// Creates a restore point collection for a group (one per group per region).
    pub async fn create_collection(&self, req: CreateCollection) -> Result<CollectionRecord> {
        collection::create_collection(&self.inner, req).await
    }

    pub fn collection(&self, id: CollectionId) -> Result<CollectionRecord> {
        collection::collection(&self.inner, id)
    }

    pub fn collection_by_name(&self, name: &str) -> Result<CollectionRecord> {
        collection::collection_by_name(&self.inner, name)
    }

    pub fn list_collections(&self) -> Result<Vec<CollectionRecord>> {
        collection::list_collections(&self.inner)
    }

    /// Deletes a collection. With restore points in it, refused unless `cascade`, which
    /// deletes them all (their chunk map entries and references) in the same batch.
    pub async fn delete_collection(&self, id: CollectionId, cascade: bool) -> Result<()> {
        collection::delete_collection(&self.inner, id, cascade).await
    }

    /// Deletes a restore point, any of them, at the cost of its own increment: each chunk it
    /// holds that a newer restore point (or the live disk's next capture) still reads through
    /// is kept, the rest dropped with their references. What every other restore point reads
    /// does not change. Refused while a restore point is being created in the collection, and
    /// while a restored disk's history still reads through this one.
    pub async fn delete_restore_point(&self, id: RestorePointId) -> Result<()> {
        delete::delete_restore_point(&self.inner, id).await
    }

    /// Creates a disk from a disk restore point. The disk is usable at once; chunks not yet
    /// local are read from the store, and a background operation hydrates them.
    pub async fn restore_disk(&self, req: RestoreDisk) -> Result<(DiskRecord, OperationRecord)> {
        restore::restore_disk(&self.inner, req).await
    }

    /// Creates a copy collection: restore points copied from `source` (a configured peer's
    /// collection) land in it; none is captured in it.
    pub async fn create_copy_collection(
        &self,
        name: &str,
        source: CollectionSource,
        max_restore_points: Option<u32>,
    ) -> Result<CollectionRecord> {
        collection::create_copy_collection(&self.inner, name, source, max_restore_points).await
    }

    /// A `Succeeded` restore point's record and chunk maps, for a copy on another daemon.
    pub fn export_restore_point(&self, id: RestorePointId) -> Result<ExportedRestorePoint> {
        copy::export_restore_point(&self.inner, id)
    }

    /// A stored record verbatim (header + stored bytes), checked whole first, for a copy.
    pub async fn export_record(&self, id: ChunkId) -> Result<Vec<u8>> {
        copy::export_record(&self.inner, id).await
    }

    /// Copies the restore point `source` serves into copy collection `collection` as `name`:
    /// returns the `Creating` record and its operation; the copy runs in the background and
    /// turns `Succeeded` only once every record is checked and the roots match (see
    /// `rp/copy.rs`).
    pub async fn copy_restore_point(
        &self,
        collection: CollectionId,
        name: String,
        source: Arc<dyn CopySource>,
    ) -> Result<(RestorePointRecord, OperationRecord)> {
        copy::copy_restore_point(&self.inner, collection, name, source).await
    }

    /// Reverts live disks of a restore point's group in place to it: the disks must be
    /// detached (each is held meanwhile: attaching and others' I/O fail Busy); a restore point
    /// of the current state is taken first unless `current_state` is `None`; only chunks that
    /// changed since, and whose content differs, are rewritten. See `rp/revert.rs`.
    pub async fn revert_in_place(&self, req: RevertInPlace) -> Result<RevertReport> {
        revert::revert_in_place(&self.inner, &self.hooks, req).await
    }

    /// Restores every disk of a restore point and puts them in a new group with the
    /// configuration the restore point saved. Disks are named `GROUP-DISK`.
    pub async fn restore_group(
        &self,
        restore_point: RestorePointId,
        group_name: &str,
    ) -> Result<(GroupRecord, Vec<(DiskRecord, OperationRecord)>)> {
        restore::restore_group(&self.inner, restore_point, group_name).await
    }

    /// Applies a retention policy to a collection: with `dry_run`, only says what would go
    /// and why; otherwise deletes those restore points (oldest first). A policy that keeps
    /// nothing is refused: delete restore points explicitly instead.
    pub async fn apply_retention(
        &self,
        collection: CollectionId,
        policy: RetentionPolicy,
        dry_run: bool,
    ) -> Result<Vec<RetentionDecision>> {
        retention::apply_retention(&self.inner, collection, policy, dry_run).await
    }

    /// Starts a garbage collection; returns its operation at once. Packs whose live bytes
    /// are below `live_share_percent` of their size are rewritten.
    pub async fn collect_garbage(&self, live_share_percent: u32) -> Result<OperationRecord> {
        gc::collect_garbage(&self.inner, live_share_percent).await
    }

    /// Starts a verify of the store or of one restore point; returns its operation at once.
    /// The report lands in the operation's `result`.
    pub async fn verify(&self, target: VerifyTarget) -> Result<OperationRecord> {
        verify::verify(&self.inner, target).await
    }
    /// Freezes the group's disks, except `exclude`: gates closed, in-flight writes drained.
    pub async fn freeze_group(&self, id: GroupId, exclude: &[DiskId]) -> Result<Freeze> {
        group::freeze_group(&self.inner, id, exclude).await
    }

    /// Clean shutdown: running captures finish (or fail cleanly past `timeout`), then every
    /// disk is flushed and its change tracking persisted and marked clean.
    pub async fn close(&self) -> Result<()> {
        self.inner.jobs.shutdown(std::time::Duration::from_secs(60)).await;
        let disks: Vec<Arc<Disk>> = self.inner.state().disks.values().map(|e| e.disk.clone()).collect();
        for d in disks {
            d.close().await?;
        }
        tracing::info!("engine closed cleanly");
        Ok(())
    }
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
