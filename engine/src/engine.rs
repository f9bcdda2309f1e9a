//! [`Engine`]: one data dir's disks, groups and catalog.

use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::format::DEFAULT_CHUNK_SIZE;
use crate::base::ids::{DiskId, GroupId, LineageId, Name, OperationId};
use crate::base::stats::{FreezeStats, Throughput};
use crate::catalog::Catalog;
use crate::catalog::group::{CreateGroup, GroupRecord, check_configuration};
use crate::chunk_map::reader::{DiskRestorePointReader, RestoredDisk};
pub use crate::context::EngineConfig;
use crate::context::{Context, DiskEntry, State};
use crate::disk::{self, CreateDisk, Disk, DiskRecord};
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
        remove_orphan_files(&disks_dir, &state)?;
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

    pub(crate) fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
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
        let state = self.state();
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

    // ---- disks ---------------------------------------------------------------------------

    /// Creates a sparse disk.
    pub async fn create_disk(&self, req: CreateDisk) -> Result<DiskRecord> {
        let name = Name::new(req.name)?;
        disk::check_size(req.size_bytes)?;
        let chunk_size_bytes = req.chunk_size_bytes.unwrap_or(DEFAULT_CHUNK_SIZE);
        disk::check_chunk_size(chunk_size_bytes)?;

        let _admin = self.inner.admin.lock().await;
        if self.state().disk_named(name.as_str()).is_some() {
            return Err(Error::already_exists(format!("disk {name}")));
        }
        let record = DiskRecord {
            id: DiskId::new(),
            name,
            lineage: LineageId::new(),
            size_bytes: req.size_bytes,
            chunk_size_bytes,
            direct_io: req.direct_io,
            group: None,
            created_at_ms: now_ms(),
            source: None,
            hydrated: false,
        };
        let dir = self.inner.disks_dir.clone();
        let disk = Disk::create(&dir, &record, self.inner.io.clone(), None)?;
        let mut batch = self.inner.catalog.batch();
        batch.put(&record)?;
        if let Err(e) = self.inner.catalog.commit(batch) {
            remove_disk_files(&dir, record.id);
            return Err(e);
        }
        self.state_mut().disks.insert(record.id, DiskEntry { disk: Arc::new(disk), group: None });
        tracing::info!(disk = %record.name, id = %record.id, size = record.size_bytes, "disk created");
        Ok(record)
    }

    /// A live disk by id.
    pub fn disk(&self, id: DiskId) -> Result<Arc<Disk>> {
        self.state().disks.get(&id).map(|e| e.disk.clone()).ok_or_else(|| Error::not_found(format!("disk {id}")))
    }

    /// A live disk by name.
    pub fn disk_by_name(&self, name: &str) -> Result<Arc<Disk>> {
        let state = self.state();
        let id = state.disk_named(name).ok_or_else(|| Error::not_found(format!("disk {name}")))?;
        state.disks.get(&id).map(|e| e.disk.clone()).ok_or_else(|| Error::not_found(format!("disk {name}")))
    }

    /// A disk's record as it stands.
    pub fn disk_record(&self, id: DiskId) -> Result<DiskRecord> {
        self.state().record(id).ok_or_else(|| Error::not_found(format!("disk {id}")))
    }

    /// Every disk, by id.
    pub fn list_disks(&self) -> Vec<DiskRecord> {
        let state = self.state();
        state.disks.keys().filter_map(|id| state.record(*id)).collect()
    }

    /// Grows a disk (shrinking is refused: it would destroy data).
    pub async fn resize_disk(&self, id: DiskId, new_size_bytes: u64) -> Result<DiskRecord> {
        disk::check_size(new_size_bytes)?;
        let _admin = self.inner.admin.lock().await;
        let disk = self.disk(id)?;
        let old = disk.size_bytes();
        if new_size_bytes < old {
            return Err(Error::invalid(
                "size_bytes",
                format!("{new_size_bytes} is smaller than the current size {old}; disks only grow"),
            ));
        }
        if new_size_bytes > old {
            disk.grow(new_size_bytes).await?;
            let record = self.disk_record(id)?;
            let mut batch = self.inner.catalog.batch();
            batch.put(&record)?;
            self.inner.catalog.commit(batch)?;
            tracing::info!(disk = %record.name, old, new = new_size_bytes, "disk resized");
        }
        self.disk_record(id)
    }

    /// Deletes a disk and its files. A disk in a group must leave the group first.
    pub async fn delete_disk(&self, id: DiskId) -> Result<()> {
        let _admin = self.inner.admin.lock().await;
        let record = self.disk_record(id)?;
        if let Some(g) = record.group {
            let group = self.state().groups.get(&g).map(|g| g.name.to_string()).unwrap_or_else(|| g.to_string());
            return Err(Error::FailedPrecondition(format!(
                "disk {} belongs to group {group}; remove it from the group first",
                record.name
            )));
        }
        let mut batch = self.inner.catalog.batch();
        batch.delete::<DiskRecord>(id.to_bytes())?;
        self.inner.catalog.commit(batch)?;
        self.state_mut().disks.remove(&id);
        remove_disk_files(&self.inner.disks_dir, id);
        tracing::info!(disk = %record.name, %id, "disk deleted");
        Ok(())
    }

    // ---- groups --------------------------------------------------------------------------

    fn check_members(&self, state: &State, group: Option<GroupId>, disks: &[DiskId]) -> Result<()> {
        for (i, id) in disks.iter().enumerate() {
            if disks[..i].contains(id) {
                return Err(Error::invalid("disks", format!("disk {id} is listed twice")));
            }
            let entry = state.disks.get(id).ok_or_else(|| Error::not_found(format!("disk {id}")))?;
            if let Some(other) = entry.group
                && Some(other) != group
            {
                let other = state.groups.get(&other).map_or_else(|| other.to_string(), |g| g.name.to_string());
                return Err(Error::FailedPrecondition(format!(
                    "disk {} already belongs to group {other}",
                    entry.disk.name()
                )));
            }
        }
        Ok(())
    }

    /// Creates a group of disks with its configuration document.
    pub async fn create_group(&self, req: CreateGroup) -> Result<GroupRecord> {
        let name = Name::new(req.name)?;
        check_configuration(&req.configuration)?;
        let _admin = self.inner.admin.lock().await;
        let record = GroupRecord {
            id: GroupId::new(),
            name,
            disks: req.disks,
            configuration: req.configuration,
            created_at_ms: now_ms(),
        };
        {
            let state = self.state();
            if state.group_named(record.name.as_str()).is_some() {
                return Err(Error::already_exists(format!("group {}", record.name)));
            }
            self.check_members(&state, None, &record.disks)?;
        }
        self.commit_group(&record, &[])?;
        tracing::info!(group = %record.name, id = %record.id, disks = record.disks.len(), "group created");
        Ok(record)
    }

    /// Replaces a group's disks and/or configuration.
    pub async fn update_group(
        &self,
        id: GroupId,
        disks: Option<Vec<DiskId>>,
        configuration: Option<String>,
    ) -> Result<GroupRecord> {
        if let Some(doc) = &configuration {
            check_configuration(doc)?;
        }
        let _admin = self.inner.admin.lock().await;
        let old = self.group(id)?;
        let mut record = old.clone();
        if let Some(disks) = disks {
            self.check_members(&self.state(), Some(id), &disks)?;
            record.disks = disks;
        }
        if let Some(doc) = configuration {
            record.configuration = doc;
        }
        let left: Vec<DiskId> = old.disks.iter().filter(|d| !record.disks.contains(d)).copied().collect();
        self.commit_group(&record, &left)?;
        Ok(record)
    }

    /// Writes a group record, sets its disks' membership and clears that of `left`, atomically.
    fn commit_group(&self, record: &GroupRecord, left: &[DiskId]) -> Result<()> {
        let mut batch = self.inner.catalog.batch();
        batch.put(record)?;
        let mut changed = Vec::new();
        {
            let state = self.state();
            for (id, group) in record.disks.iter().map(|d| (*d, Some(record.id))).chain(left.iter().map(|d| (*d, None)))
            {
                let mut r = state.record(id).ok_or_else(|| Error::not_found(format!("disk {id}")))?;
                r.group = group;
                batch.put(&r)?;
                changed.push((id, group));
            }
        }
        self.inner.catalog.commit(batch)?;
        let mut state = self.state_mut();
        for (id, group) in changed {
            if let Some(e) = state.disks.get_mut(&id) {
                e.group = group;
            }
        }
        state.groups.insert(record.id, record.clone());
        Ok(())
    }

    /// A group by id.
    pub fn group(&self, id: GroupId) -> Result<GroupRecord> {
        self.state().groups.get(&id).cloned().ok_or_else(|| Error::not_found(format!("group {id}")))
    }

    /// A group by name.
    pub fn group_by_name(&self, name: &str) -> Result<GroupRecord> {
        let state = self.state();
        let id = state.group_named(name).ok_or_else(|| Error::not_found(format!("group {name}")))?;
        state.groups.get(&id).cloned().ok_or_else(|| Error::not_found(format!("group {name}")))
    }

    /// Every group, by id.
    pub fn list_groups(&self) -> Vec<GroupRecord> {
        self.state().groups.values().cloned().collect()
    }

    /// Deletes a group; its disks stay, outside any group.
    pub async fn delete_group(&self, id: GroupId) -> Result<()> {
        let _admin = self.inner.admin.lock().await;
        let record = self.group(id)?;
        let mut batch = self.inner.catalog.batch();
        batch.delete::<GroupRecord>(id.to_bytes())?;
        {
            let state = self.state();
            for d in &record.disks {
                if let Some(mut r) = state.record(*d) {
                    r.group = None;
                    batch.put(&r)?;
                }
            }
        }
        self.inner.catalog.commit(batch)?;
        let mut state = self.state_mut();
        for d in &record.disks {
            if let Some(e) = state.disks.get_mut(d) {
                e.group = None;
            }
        }
        state.groups.remove(&id);
        tracing::info!(group = %record.name, %id, "group deleted");
        Ok(())
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
        let disks: Vec<Arc<Disk>> = self.state().disks.values().map(|e| e.disk.clone()).collect();
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

pub(crate) fn remove_disk_files(dir: &Path, id: DiskId) {
    for path in [disk::data_path(dir, id), disk::tracking_path(dir, id), disk::local_path(dir, id)] {
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove disk file");
        }
    }
}

/// Removes files under `disks/` that belong to no catalogued disk (a create that crashed
/// before its commit, or a delete that crashed after it).
fn remove_orphan_files(dir: &Path, state: &State) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list disks directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list disks directory", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.split('.').next()) else {
            continue;
        };
        let known = stem.parse::<DiskId>().is_ok_and(|id| state.disks.contains_key(&id));
        if !known {
            tracing::warn!(file = %entry.path().display(), "removing orphan disk file");
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "could not remove orphan file");
            }
        }
    }
    Ok(())
}
