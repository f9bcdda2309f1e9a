//! The context layer: the state every engine service shares (settings, catalog, chunk store,
//! I/O, jobs, live disks and groups) and the reads of its records. Uses base, catalog, store,
//! chunk_map (restore point readers), disk, io and jobs.

pub(crate) mod disks;
pub(crate) mod groups;
pub(crate) mod operations;
pub(crate) mod restore_points;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::base::ids::{DiskId, GroupId, RestorePointId};
use crate::base::stats::{FreezeStats, Throughput};
use crate::catalog::Catalog;
use crate::catalog::group::GroupRecord;
use crate::disk::{Disk, DiskRecord};
use crate::io::{Io, IoBackendKind};
use crate::jobs::background::BackgroundPriority;
use crate::store::chunk_store::ChunkStore;

/// Engine settings; everything has an embedded default except the data dir.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of all state: `catalog/` (RocksDB), `disks/` (sparse files + tracking),
    /// `packs/` (the local pack store), `staging/` (packs being filled), `spill/`.
    pub data_dir: PathBuf,
    pub io_backend: IoBackendKind,
    /// This daemon's region name (collections are created here unless told otherwise).
    pub region: String,
    /// zstd level of stored chunks.
    pub zstd_level: i32,
    /// Copy-before-write blocks kept in memory per capture before spilling to a file.
    pub preserve_mem_bytes: usize,
    /// Background jobs pause while the data dir has less free space than this.
    pub free_space_watermark_bytes: u64,
    /// How the CPU work of captures (hashing, compression) yields to everything else.
    pub background_priority: BackgroundPriority,
    /// Memory for recently read chunk contents (restore point exports, restored disks).
    pub chunk_cache_bytes: u64,
    /// Ended operations are forgotten this long after they end...
    pub operation_retention: std::time::Duration,
    /// ...except the newest this many of them, whatever their age.
    pub operations_kept: usize,
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            io_backend: IoBackendKind::Auto,
            region: "local".into(),
            zstd_level: crate::base::format::DEFAULT_ZSTD_LEVEL,
            preserve_mem_bytes: 256 << 20,
            free_space_watermark_bytes: 1 << 30,
            background_priority: BackgroundPriority::default(),
            chunk_cache_bytes: 64 << 20,
            operation_retention: std::time::Duration::from_secs(7 * 24 * 3600),
            operations_kept: 100,
        }
    }
}

pub(crate) struct DiskEntry {
    pub(crate) disk: Arc<Disk>,
    pub(crate) group: Option<GroupId>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) disks: BTreeMap<DiskId, DiskEntry>,
    pub(crate) groups: BTreeMap<GroupId, GroupRecord>,
}

impl State {
    pub(crate) fn record(&self, id: DiskId) -> Option<DiskRecord> {
        let e = self.disks.get(&id)?;
        let d = &e.disk;
        Some(DiskRecord {
            id,
            name: d.name().clone(),
            lineage: d.lineage(),
            size_bytes: d.size_bytes(),
            chunk_size_bytes: d.chunk_size_bytes(),
            direct_io: d.direct_io(),
            group: e.group,
            created_at_ms: d.created_at_ms(),
            source: d.source(),
            hydrated: d.hydration().is_some_and(|(_, _, h)| h),
        })
    }

    pub(crate) fn disk_named(&self, name: &str) -> Option<DiskId> {
        self.disks.values().find(|e| e.disk.name().as_str() == name).map(|e| e.disk.id())
    }

    pub(crate) fn group_named(&self, name: &str) -> Option<GroupId> {
        self.groups.values().find(|g| g.name.as_str() == name).map(|g| g.id)
    }
}

/// What every service of the engine works with: the settings, the catalog, the chunk store,
/// the I/O backend, the jobs, and the live disks and groups with the locks that order their
/// changes. The facade holds one; clones of the facade share it.
pub(crate) struct Context {
    pub(crate) config: EngineConfig,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) io: Io,
    pub(crate) disks_dir: PathBuf,
    pub(crate) spill_dir: PathBuf,
    pub(crate) state: RwLock<State>,
    /// Serialises changes to resources so that checks and catalog commits act as one.
    pub(crate) admin: tokio::sync::Mutex<()>,
    pub(crate) freeze_stats: Arc<FreezeStats>,
    pub(crate) throughput: Throughput,
    pub(crate) chunks: Arc<ChunkStore>,
    pub(crate) jobs: crate::jobs::Jobs,
    pub(crate) watermark_bytes: std::sync::atomic::AtomicU64,
    /// When ended operations were last pruned (ms since the epoch).
    pub(crate) operations_pruned_at_ms: std::sync::atomic::AtomicU64,
    /// Held shared by every capture for its whole run and exclusively by GC's sweep, so a
    /// chunk a capture deduplicated against is never freed before its reference commits.
    pub(crate) gc_gate: Arc<tokio::sync::RwLock<()>>,
    /// One garbage collection at a time: a second one would take the first's freshly sealed
    /// pack for an orphan.
    pub(crate) gc_single: Arc<tokio::sync::Mutex<()>>,
    /// Low-priority threads for the CPU work of captures.
    pub(crate) background: crate::jobs::background::BackgroundPool,
    /// What was wrong with disks when the engine opened (a restored disk whose base is gone).
    pub(crate) disk_problems: Vec<(DiskId, String)>,
    /// Disk restore points whose chunk map was checked against their Merkle root since the
    /// engine opened: a map changes only by deletions, which keep every other root.
    pub(crate) roots_checked: std::sync::Mutex<std::collections::HashSet<(RestorePointId, DiskId)>>,
}

impl Context {
    pub(crate) fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}
