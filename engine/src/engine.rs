//! [`Engine`]: the facade of one data dir: open and close, and every call handed to its layer.

use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::base::error::{Error, Result};
use crate::base::ids::{CollectionId, DiskId, GroupId, OperationId, RestorePointId};
use crate::base::stats::{FreezeStats, Throughput};
use crate::catalog::Catalog;
use crate::catalog::group::{CreateGroup, GroupRecord};
use crate::catalog::restore_point::RestorePointRecord;
use crate::chunk_map::reader::{DiskRestorePointReader, RestoredDisk};
pub use crate::context::EngineConfig;
use crate::context::{Context, DiskEntry, State};
use crate::disk::{CreateDisk, Disk, DiskRecord};
use crate::io::Io;
use crate::jobs::operation::OperationRecord;
use crate::rp::group::Freeze;
use crate::rp::hooks::{QuiesceHook, Registry};
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
    std::fs::create_dir_all(path).map_err(|e| Error::io("create directory", path, e))
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
            }),
            hooks: Arc::default(),
        };
        engine.recover_captures().await?;
        engine.resume_hydrations();
        engine.resume_operations()?;
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

    /// Freezes the group's disks, except `exclude`: gates closed, in-flight writes drained.
    pub async fn freeze_group(&self, id: GroupId, exclude: &[DiskId]) -> Result<Freeze> {
        let group = self.group(id)?;
        if let Some(bad) = exclude.iter().find(|d| !group.disks.contains(d)) {
            return Err(Error::invalid("exclude_disks", format!("disk {bad} is not in group {}", group.name)));
        }
        let disks =
            group.disks.iter().filter(|d| !exclude.contains(d)).map(|d| self.disk(*d)).collect::<Result<Vec<_>>>()?;
        Ok(Freeze::begin(disks, self.inner.freeze_stats.clone()).await)
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
