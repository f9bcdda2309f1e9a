//! Collections and restore points on the engine: create (freeze, switch epochs, register
//! the capture, thaw, capture in the background), read, list, crash recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::format::{META_LINEAGE_PREFIX, META_NEXT_SEQ_KEY, PACK_TARGET_BYTES, RECORD_HEADER_LEN};
use crate::base::ids::{CollectionId, DiskId, LineageId, Name, OperationId, PackId, RestorePointId};
use crate::catalog::restore_point::{CreateRestorePoint, DiskRestorePoint, ProvisioningState, RestorePointRecord};
use crate::chunk_map;
use crate::chunk_map::reader::DiskRestorePointReader;
use crate::disk::Disk;
use crate::disk::capture::PendingCapture;
use crate::engine::Engine;
use crate::jobs::CreationSlot;
use crate::jobs::operation::{OperationKind, OperationRecord, OperationState};
use crate::rp::collection::{CollectionRecord, CreateCollection, DEFAULT_MAX_RESTORE_POINTS};
use crate::rp::hooks::{HookContext, QuiesceHook, quiesce_all, thaw_all};
use crate::store::chunk::{ChunkId, ChunkRef};
use crate::store::chunk_store::{IndexDelta, PackWriter, PreparedRecord, prepare_full};

/// Largest `max_restore_points` a collection may set.
pub const MAX_RESTORE_POINTS_LIMIT: u32 = 10_000;
/// Chunk map entries committed per batch while capturing.
const ENTRIES_PER_BATCH: usize = 8192;
/// Chunks read and analysed concurrently by one capture.
const CAPTURE_PARALLELISM: usize = 4;

/// The result of analysing one captured chunk (off the async threads).
enum Analysis {
    Zero,
    /// Already stored (found in the index at analysis time).
    Known(ChunkId),
    New(ChunkId, PreparedRecord),
    /// The blocks that differ from the full chunk `base`; `record` is `None` when that delta
    /// record is stored already.
    Delta {
        content: ChunkId,
        base: ChunkId,
        delta: ChunkId,
        record: Option<PreparedRecord>,
    },
}

/// Zero, already stored, a delta over the planned base (when few blocks may differ from it),
/// or a new full chunk, in that order of preference.
fn analyse(
    data: &[u8],
    plan: Option<(ChunkId, Vec<usize>)>,
    store_index: &dyn Fn(ChunkId) -> Result<bool>,
    level: i32,
) -> Result<Analysis> {
    if crate::store::chunk::is_zero(data) {
        return Ok(Analysis::Zero);
    }
    let id = ChunkId::of(data);
    if store_index(id)? {
        return Ok(Analysis::Known(id));
    }
    if let Some((base, changed)) = plan
        && let Some(payload) = crate::store::delta::make(data, &changed)
    {
        let delta = ChunkId::of(&payload);
        let record = if store_index(delta)? {
            None
        } else {
            Some(crate::store::chunk_store::prepare(crate::base::format::RecordKind::Delta, delta, &payload, level)?)
        };
        return Ok(Analysis::Delta { content: id, base, delta, record });
    }
    Ok(Analysis::New(id, prepare_full(id, data, level)?))
}

/// A chunk map entry of a capture: (lineage, chunk index, reference).
type Entry = (LineageId, u64, ChunkRef);

/// A full pack on its way into the store (fsync, then put) while the capture goes on, with
/// the entries that wait for it and the index changes that come with it.
struct Sealing {
    task: tokio::task::JoinHandle<Result<PackId>>,
    path: std::path::PathBuf,
    bytes: u64,
    entries: Vec<Entry>,
    delta: IndexDelta,
}

/// One capture's entries not committed yet: those whose records are indexed (or zero) and
/// can commit any time, those waiting for the seal of the pack being filled, and those of
/// the one pack being sealed. Entries are committed in the order their packs seal, so an
/// entry that refers to a record of an earlier pack always finds it indexed.
#[derive(Default)]
struct Pending {
    writer: Option<PackWriter>,
    ready: Vec<Entry>,
    ready_delta: IndexDelta,
    in_pack: Vec<Entry>,
    pack_delta: IndexDelta,
    sealing: Option<Sealing>,
}

impl Pending {
    /// An entry whose records are all indexed already.
    fn ready(&mut self, entry: Entry) {
        for id in entry.2.stored() {
            self.ready_delta.add_ref(id);
        }
        self.ready.push(entry);
    }

    /// An entry one of whose records is in the pack being filled or sealed: it commits with
    /// the pack being filled, which seals after the other.
    fn waiting(&mut self, entry: Entry) {
        for id in entry.2.stored() {
            self.pack_delta.add_ref(id);
        }
        self.in_pack.push(entry);
    }

    fn in_pack(&self, id: ChunkId) -> bool {
        self.pack_delta.new.contains_key(&id) || self.sealing.as_ref().is_some_and(|s| s.delta.new.contains_key(&id))
    }

    /// Appends record `id` to the capture's pack, opening one if needed; returns the bytes
    /// it took.
    fn store(&mut self, engine: &Engine, id: ChunkId, rec: &PreparedRecord) -> Result<u64> {
        let w = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(engine.inner.chunks.new_pack()?),
        };
        self.pack_delta.new.insert(id, w.append(rec)?);
        Ok((RECORD_HEADER_LEN + rec.stored.len()) as u64)
    }

    fn pack_bytes(&self) -> u64 {
        self.writer.as_ref().map_or(0, PackWriter::len)
    }

    /// Starts sealing the pack being filled, with its waiting entries, in a task of its own.
    /// The previous seal must be finished.
    fn start_seal(&mut self, engine: &Engine) {
        debug_assert!(self.sealing.is_none(), "one seal at a time");
        let entries = std::mem::take(&mut self.in_pack);
        let delta = std::mem::take(&mut self.pack_delta);
        let Some(w) = self.writer.take() else {
            // Entries that waited for a pack sealed meanwhile: ready now.
            self.merge(entries, delta);
            return;
        };
        let (bytes, path) = (w.len(), w.path().to_owned());
        let engine = engine.clone();
        let task = tokio::spawn(async move { w.seal(engine.inner.chunks.pack_store()).await });
        self.sealing = Some(Sealing { task, path, bytes, entries, delta });
    }

    fn sealing_done(&self) -> bool {
        self.sealing.as_ref().is_some_and(|s| s.task.is_finished())
    }

    /// Waits for the pack being sealed; its entries are then ready.
    async fn finish_seal(&mut self) -> Result<()> {
        let Some(Sealing { task, path, bytes, entries, mut delta }) = self.sealing.take() else { return Ok(()) };
        let pack = task.await.map_err(|e| Error::io("seal pack", path, std::io::Error::other(e)))??;
        crate::failpoint!("capture::after_pack_seal");
        delta.packs.push((pack, bytes));
        self.merge(entries, delta);
        Ok(())
    }

    fn merge(&mut self, mut entries: Vec<Entry>, delta: IndexDelta) {
        self.ready.append(&mut entries);
        for (id, n) in delta.refs {
            *self.ready_delta.refs.entry(id).or_default() += n;
        }
        self.ready_delta.new.extend(delta.new);
        self.ready_delta.packs.extend(delta.packs);
    }

    /// After a failure: the pack being filled is thrown away, and the one being sealed is
    /// left to finish (unreferenced, GC removes it).
    async fn abandon(&mut self) {
        if let Some(w) = self.writer.take() {
            w.discard();
        }
        if let Some(s) = self.sealing.take() {
            let _ = s.task.await;
        }
    }
}

/// A creation that passed its checks, with the claims it holds to its end.
struct Creation {
    rp_id: RestorePointId,
    name: Name,
    req: CreateRestorePoint,
    coll: CollectionRecord,
    configuration: String,
    disks: Vec<Arc<Disk>>,
    /// Per disk: a first restore point of its history (a full scan).
    first: Vec<bool>,
    hooks: Vec<Arc<dyn QuiesceHook>>,
    ctx: HookContext,
    slot: CreationSlot,
    gc_pass: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// The disks of a capture from their epoch switch on. Dropping it ends copy-before-write
/// and, unless the capture committed (`settled`), merges the closed epochs back into change
/// tracking: a creation that stops anywhere, by an error, a panic or a task dropped, leaves
/// the disks as if never frozen, and the next capture misses nothing.
struct Armed {
    caps: Vec<(Arc<Disk>, Arc<PendingCapture>)>,
    settled: bool,
}

impl Armed {
    fn caps(&self) -> &[(Arc<Disk>, Arc<PendingCapture>)] {
        &self.caps
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        for (d, _) in &self.caps {
            if !self.settled
                && let Err(e) = crate::sys::critical(|| d.tracker().merge_closed())
            {
                tracing::error!(disk = %d.name(), error = %e, "could not merge change tracking back");
            }
            d.end_capture();
        }
    }
}

impl Engine {
    /// This daemon's region.
    pub fn region(&self) -> &str {
        &self.inner.config.region
    }

    // ---- collections ---------------------------------------------------------------------

    /// Creates a restore point collection for a group (one per group per region).
    pub async fn create_collection(&self, req: CreateCollection) -> Result<CollectionRecord> {
        let name = Name::new(req.name)?;
        let max = req.max_restore_points.unwrap_or(DEFAULT_MAX_RESTORE_POINTS);
        crate::rp::collection::check_max_restore_points(max)?;
        crate::rp::collection::check_hook(req.hook.as_ref())?;
        let region = match req.region {
            Some(r) => Name::new(r).map_err(|_| Error::invalid("region", "must be a valid name"))?.to_string(),
            None => self.region().to_owned(),
        };
        let _admin = self.inner.admin.lock().await;
        let group = self.group(req.group)?;
        let existing = self.list_collections()?;
        if existing.iter().any(|c| c.name == name) {
            return Err(Error::already_exists(format!("collection {name}")));
        }
        if let Some(c) = existing.iter().find(|c| c.group == group.id && c.region == region) {
            return Err(Error::FailedPrecondition(format!(
                "group {} already has collection {} in region {region}",
                group.name, c.name
            )));
        }
        let record = CollectionRecord {
            id: CollectionId::new(),
            name,
            group: group.id,
            region,
            max_restore_points: max,
            hook: req.hook,
            created_at_ms: now_ms(),
        };
        let mut batch = self.inner.catalog.batch();
        batch.put(&record)?;
        self.inner.catalog.commit(batch)?;
        tracing::info!(collection = %record.name, group = %group.name, "collection created");
        Ok(record)
    }

    pub fn collection(&self, id: CollectionId) -> Result<CollectionRecord> {
        self.inner
            .catalog
            .get::<CollectionRecord>(id.to_bytes())?
            .ok_or_else(|| Error::not_found(format!("collection {id}")))
    }

    pub fn collection_by_name(&self, name: &str) -> Result<CollectionRecord> {
        self.list_collections()?
            .into_iter()
            .find(|c| c.name.as_str() == name)
            .ok_or_else(|| Error::not_found(format!("collection {name}")))
    }

    pub fn list_collections(&self) -> Result<Vec<CollectionRecord>> {
        self.inner.catalog.list::<CollectionRecord>()
    }

    /// Deletes a collection. With restore points in it, refused unless `cascade`, which
    /// deletes them all (their chunk map entries and references) in the same batch.
    pub async fn delete_collection(&self, id: CollectionId, cascade: bool) -> Result<()> {
        let _admin = self.inner.admin.lock().await;
        let coll = self.collection(id)?;
        let _slot = self.inner.jobs.begin_creation(coll.group, coll.name.as_str())?;
        let rps = self.list_restore_points(id)?;
        if !rps.is_empty() && !cascade {
            return Err(Error::FailedPrecondition(format!(
                "collection {} holds {} restore points; delete them first or cascade",
                coll.name,
                rps.len()
            )));
        }
        if let Some((rp, dependent)) = self.restore_point_in_use_as_base(&rps)? {
            return Err(Error::FailedPrecondition(format!(
                "restore point {} is the origin of restored disk history {dependent} (a restored disk or its restore \
                 points); delete those first",
                rp.name
            )));
        }
        // Newest first, each deletion its own batch: a crash midway leaves a smaller,
        // consistent collection, and the call can simply be repeated.
        for rp in rps.iter().rev() {
            self.delete_restore_point_locked(rp).await?;
        }
        let mut batch = self.inner.catalog.batch();
        batch.delete::<CollectionRecord>(id.to_bytes())?;
        self.inner.catalog.commit(batch)?;
        tracing::info!(collection = %coll.name, restore_points = rps.len(), "collection deleted");
        Ok(())
    }

    /// The first of `rps` some live lineage (a disk, or restore points of one) reads through as
    /// its base, with that lineage.
    fn restore_point_in_use_as_base<'a>(
        &self,
        rps: &'a [RestorePointRecord],
    ) -> Result<Option<(&'a RestorePointRecord, LineageId)>> {
        let mut bases = Vec::new();
        self.inner.catalog.scan("meta", META_LINEAGE_PREFIX, META_LINEAGE_PREFIX, |k, v| {
            let id: [u8; 16] = k[META_LINEAGE_PREFIX.len()..]
                .try_into()
                .map_err(|_| Error::corrupt("catalog/meta", "bad lineage key"))?;
            let base: crate::catalog::restore_point::LineageBase =
                serde_json::from_slice(v).map_err(|e| Error::corrupt("catalog/meta", format!("lineage base: {e}")))?;
            bases.push((LineageId::from(uuid::Uuid::from_bytes(id)), base));
            Ok(true)
        })?;
        if bases.is_empty() {
            return Ok(None);
        }
        let all = self.inner.catalog.list::<RestorePointRecord>()?;
        let live_disks: Vec<LineageId> = self.state().disks.values().map(|e| e.disk.lineage()).collect();
        for (lineage, base) in bases {
            let live =
                live_disks.contains(&lineage) || all.iter().any(|r| r.disks.iter().any(|d| d.lineage == lineage));
            if !live {
                continue;
            }
            if let Some(rp) =
                rps.iter().find(|r| r.seq == base.seq && r.disks.iter().any(|d| d.lineage == base.lineage))
            {
                return Ok(Some((rp, lineage)));
            }
        }
        Ok(None)
    }

    // ---- restore points ------------------------------------------------------------------

    pub fn restore_point(&self, id: RestorePointId) -> Result<RestorePointRecord> {
        self.inner
            .catalog
            .get::<RestorePointRecord>(id.to_bytes())?
            .ok_or_else(|| Error::not_found(format!("restore point {id}")))
    }

    /// A collection's restore points, oldest first.
    pub fn list_restore_points(&self, collection: CollectionId) -> Result<Vec<RestorePointRecord>> {
        let mut rps: Vec<_> = self
            .inner
            .catalog
            .list::<RestorePointRecord>()?
            .into_iter()
            .filter(|r| r.collection == collection)
            .collect();
        rps.sort_by_key(|r| r.seq);
        Ok(rps)
    }

    pub fn restore_point_by_name(&self, collection: CollectionId, name: &str) -> Result<RestorePointRecord> {
        self.list_restore_points(collection)?
            .into_iter()
            .find(|r| r.name.as_str() == name)
            .ok_or_else(|| Error::not_found(format!("restore point {name}")))
    }

    /// Deletes a restore point, any of them, at the cost of its own increment: each chunk it
    /// holds that a newer restore point (or the live disk's next capture) still reads through
    /// is kept, the rest dropped with their references. What every other restore point reads
    /// does not change. Refused while a restore point is being created in the collection, and
    /// while a restored disk's history still reads through this one.
    pub async fn delete_restore_point(&self, id: RestorePointId) -> Result<()> {
        let rp = self.restore_point(id)?;
        let coll = self.collection(rp.collection)?;
        let _slot = self.inner.jobs.begin_creation(coll.group, coll.name.as_str())?;
        let _admin = self.inner.admin.lock().await;
        // Under the group's slot no creation runs: a restore point still `Creating` here is one
        // whose failure could not be recorded, and deleting it drops its partial entries.
        let rp = self.restore_point(id)?;
        if let Some((_, dependent)) = self.restore_point_in_use_as_base(std::slice::from_ref(&rp))? {
            return Err(Error::FailedPrecondition(format!(
                "restore point {} is the origin of restored disk history {dependent}; delete that first",
                rp.name
            )));
        }
        self.delete_restore_point_locked(&rp).await?;
        tracing::info!(restore_point = %rp.name, collection = %coll.name, "restore point deleted");
        Ok(())
    }

    /// Deletes one restore point; the caller holds the collection's creation slot and the
    /// admin lock.
    async fn delete_restore_point_locked(&self, rp: &RestorePointRecord) -> Result<()> {
        let all = self.inner.catalog.list::<RestorePointRecord>()?;
        let mut batch = self.inner.catalog.batch();
        let mut delta = IndexDelta::default();
        // A failed restore point's entries were dropped when it failed; one left `Creating`
        // holds the entries its capture committed, which nothing else reads.
        if rp.state == ProvisioningState::Creating {
            for d in &rp.disks {
                for chunk in chunk_map::drop_seq(&self.inner.catalog, &mut batch, d.lineage, rp.seq)? {
                    delta.drop_ref(chunk);
                }
            }
        }
        if rp.state == ProvisioningState::Succeeded {
            for d in &rp.disks {
                // A restore point still being created (in another collection the disk went
                // to) builds on this one like a succeeded one.
                let others: Vec<u64> = all
                    .iter()
                    .filter(|r| r.id != rp.id && !matches!(r.state, ProvisioningState::Failed { .. }))
                    .filter(|r| r.disks.iter().any(|x| x.lineage == d.lineage))
                    .map(|r| r.seq)
                    .collect();
                let after = others.iter().copied().filter(|&s| s < rp.seq).max().unwrap_or(0);
                let next = others.iter().copied().filter(|&s| s > rp.seq).min();
                // With no restore point left, the next capture reads everything again, so the
                // history must be empty; otherwise the live disk's next increment builds on it.
                let live = !others.is_empty() && self.state().disks.values().any(|e| e.disk.lineage() == d.lineage);
                // The last restore point of a history takes everything with it, including what
                // earlier deletions left for the live disk.
                let upto = if others.is_empty() { u64::MAX } else { rp.seq };
                if others.is_empty() {
                    // Tracking counts changes since this restore point, which takes the
                    // history with it: the live disk's next capture must read everything
                    // again (a restored disk's would otherwise read its base for chunks the
                    // guest rewrote). Durable before the history goes.
                    let live: Vec<Arc<Disk>> = self.state().disks.values().map(|e| e.disk.clone()).collect();
                    for disk in live.iter().filter(|disk| disk.lineage() == d.lineage) {
                        disk.tracker().require_rescan()?;
                    }
                }
                let drops = chunk_map::drop_range(&self.inner.catalog, &mut batch, d.lineage, after, upto, next, live)?;
                for chunk in drops {
                    delta.drop_ref(chunk);
                }
            }
        }
        batch.delete::<RestorePointRecord>(rp.id.to_bytes())?;
        crate::failpoint!("delete::before_commit");
        self.inner.chunks.commit(batch, &delta).await
    }

    /// What the chunk store holds.
    pub fn store_stats(&self) -> Result<crate::store::counters::StoreStats> {
        self.inner.chunks.stats()
    }

    pub fn operation(&self, id: OperationId) -> Result<OperationRecord> {
        self.inner
            .catalog
            .get::<OperationRecord>(id.to_bytes())?
            .ok_or_else(|| Error::not_found(format!("operation {id}")))
    }

    pub fn list_operations(&self) -> Result<Vec<OperationRecord>> {
        let mut ops = self.inner.catalog.list::<OperationRecord>()?;
        ops.sort_by_key(|o| o.created_at_ms);
        Ok(ops)
    }

    /// Asks a running operation to stop; it ends `Canceled` (a capture's restore point
    /// ends `Failed`, reason canceled).
    pub fn cancel_operation(&self, id: OperationId) -> Result<OperationRecord> {
        let op = self.operation(id)?;
        if op.state.is_terminal() {
            return Err(Error::FailedPrecondition(format!("operation {id} already ended ({:?})", op.state)));
        }
        self.inner.jobs.cancel(id);
        Ok(op)
    }

    /// Registers a quiesce hook for a group (a hypervisor subscribed over gRPC). Returns a
    /// handle; dropping it does nothing — call [`Self::unregister_quiesce_hook`].
    pub fn register_quiesce_hook(&self, group: crate::base::ids::GroupId, hook: Arc<dyn QuiesceHook>) {
        self.inner.hooks.write().unwrap_or_else(|p| p.into_inner()).entry(group).or_default().push(hook);
    }

    pub fn unregister_quiesce_hook(&self, group: crate::base::ids::GroupId, hook: &Arc<dyn QuiesceHook>) {
        if let Some(v) = self.inner.hooks.write().unwrap_or_else(|p| p.into_inner()).get_mut(&group) {
            v.retain(|h| !Arc::ptr_eq(h, hook));
        }
    }

    fn lineage_has_restore_point(&self, all: &[RestorePointRecord], lineage: LineageId) -> bool {
        all.iter().any(|rp| rp.state == ProvisioningState::Succeeded && rp.disks.iter().any(|d| d.lineage == lineage))
    }

    async fn next_seq(&self) -> Result<u64> {
        let current = match self.inner.catalog.get_raw("meta", META_NEXT_SEQ_KEY)? {
            None => 1,
            Some(v) => u64::from_be_bytes(
                v.as_slice().try_into().map_err(|_| Error::corrupt("catalog/meta", "next_seq is not 8 bytes"))?,
            ),
        };
        Ok(current)
    }

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
        let creation = self.check_creation(collection, req).await?;
        let op = OperationRecord::start(OperationKind::Capture, format!("restore-point/{}", creation.rp_id), 0);
        let cancel = self.inner.jobs.register(op.id, false);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let engine = self.clone();
        self.inner.jobs.spawn(op.id, async move { engine.run_creation(creation, op, cancel, reply).await });
        answer.await.unwrap_or_else(|_| {
            Err(Error::io(
                "create restore point",
                self.data_dir(),
                std::io::Error::other("the creation job ended without an answer"),
            ))
        })
    }

    /// The checks of a creation, and the claims it holds to its end; nothing changes yet.
    async fn check_creation(&self, collection: CollectionId, req: CreateRestorePoint) -> Result<Creation> {
        let name = Name::new(req.name)?;
        if req.description.len() > 4096 {
            return Err(Error::invalid("description", "longer than 4096 bytes"));
        }
        let coll = self.collection(collection)?;
        let group = self.group(coll.group)?;
        if let Some(bad) = req.exclude_disks.iter().find(|d| !group.disks.contains(d)) {
            return Err(Error::invalid("exclude_disks", format!("disk {bad} is not in group {}", group.name)));
        }
        let included: Vec<DiskId> = group.disks.iter().filter(|d| !req.exclude_disks.contains(d)).copied().collect();
        if included.is_empty() {
            return Err(Error::invalid("exclude_disks", format!("excludes every disk of group {}", group.name)));
        }
        let slot = self.inner.jobs.begin_creation(coll.group, coll.name.as_str())?;
        // Held until the capture ends: GC's sweep waits for it (and a capture for a sweep).
        let gc_pass = self.inner.gc_gate.clone().read_owned().await;
        let all = self.inner.catalog.list::<RestorePointRecord>()?;
        // Failed restore points stay listed until deleted, but hold no data and no place.
        let in_coll = all
            .iter()
            .filter(|r| r.collection == coll.id && !matches!(r.state, ProvisioningState::Failed { .. }))
            .count();
        if in_coll >= coll.max_restore_points as usize {
            return Err(Error::LimitReached(format!(
                "collection {} holds {in_coll} restore points, its limit is {}",
                coll.name, coll.max_restore_points
            )));
        }
        if all.iter().any(|r| r.collection == coll.id && r.name == name) {
            return Err(Error::already_exists(format!("restore point {name} in collection {}", coll.name)));
        }
        let disks: Vec<Arc<Disk>> = included.iter().map(|d| self.disk(*d)).collect::<Result<_>>()?;
        // A restored disk's first restore point is an increment over its base.
        let first: Vec<bool> =
            disks.iter().map(|d| !self.lineage_has_restore_point(&all, d.lineage()) && d.source().is_none()).collect();
        let mut hooks: Vec<Arc<dyn QuiesceHook>> =
            self.inner.hooks.read().unwrap_or_else(|p| p.into_inner()).get(&group.id).cloned().unwrap_or_default();
        if let Some(h) = &coll.hook {
            hooks.push(Arc::new(h.clone()));
        }
        let ctx = HookContext {
            group: group.id,
            group_name: group.name.clone(),
            restore_point: name.clone(),
            requested: req.consistency,
        };
        Ok(Creation {
            rp_id: RestorePointId::new(),
            name,
            req: CreateRestorePoint { name: String::new(), ..req },
            coll,
            configuration: group.configuration,
            disks,
            first,
            hooks,
            ctx,
            slot,
            gc_pass,
        })
    }

    /// The creation job: hooks and freeze, the `Creating` record (then the caller has its
    /// answer), and the capture.
    async fn run_creation(
        self,
        c: Creation,
        op: OperationRecord,
        cancel: Arc<AtomicBool>,
        reply: tokio::sync::oneshot::Sender<Result<(RestorePointRecord, OperationRecord)>>,
    ) {
        let Creation { rp_id, name, req, coll, configuration, disks, first, hooks, ctx, slot, gc_pass } = c;
        let (achieved, note) = quiesce_all(&hooks, &ctx).await;
        let frozen = if cancel.load(Ordering::Acquire) {
            Err(Error::Canceled)
        } else {
            self.freeze_and_register(&disks, &first, rp_id).await
        };
        thaw_all(&hooks, &ctx).await;
        let recorded = match frozen {
            Ok((window, armed)) => self
                .record_creation(rp_id, name, req, &coll, configuration, (achieved, note), window, &armed, op)
                .await
                .map(|(rp, op)| (rp, op, armed)),
            Err(e) => Err(e),
        };
        // On failure `armed` is gone by now: the disks are as if never frozen.
        let (rp, op, armed) = match recorded {
            Ok(done) => done,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        tracing::info!(restore_point = %rp.name, collection = %coll.name, seq = rp.seq, window_us = rp.freeze_window_us, consistency = ?achieved, "restore point frozen; capture starts");
        let _ = reply.send(Ok((rp.clone(), op.clone())));
        // The capture's sequential part (appends, seals, commits) runs on a thread of its own
        // at background priority, leaving the async workers to guest I/O.
        let engine = self.clone();
        let capture = async move { engine.run_capture(rp, op, armed, cancel, slot).await };
        self.inner.background.run_on_own_thread("cairn-capture", capture).await;
        drop(gc_pass);
    }

    /// Records the frozen restore point as `Creating`, with its operation and the next seq.
    #[allow(clippy::too_many_arguments)]
    async fn record_creation(
        &self,
        rp_id: RestorePointId,
        name: Name,
        req: CreateRestorePoint,
        coll: &CollectionRecord,
        configuration: String,
        (achieved, note): (crate::catalog::restore_point::ConsistencyMode, Option<String>),
        window: Duration,
        armed: &Armed,
        op: OperationRecord,
    ) -> Result<(RestorePointRecord, OperationRecord)> {
        let _admin = self.inner.admin.lock().await;
        let seq = self.next_seq().await?;
        let now = now_ms();
        let disks = armed
            .caps()
            .iter()
            .map(|(d, cap)| {
                Ok(DiskRestorePoint {
                    disk: d.id(),
                    disk_name: d.name().clone(),
                    lineage: d.lineage(),
                    base: chunk_map::lineage_base(&self.inner.catalog, d.lineage())?,
                    size_bytes: cap.size_bytes(),
                    chunk_size_bytes: cap.chunk_size(),
                    full_scan: cap.full_scan(),
                    chunks_captured: 0,
                    chunks_new: 0,
                    chunks_deduplicated: 0,
                    chunks_zero: 0,
                    chunks_delta: 0,
                    bytes_stored: 0,
                    bytes_captured: 0,
                    bytes_done: 0,
                    bytes_total: 0,
                    epoch: d.tracker().epoch(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rp = RestorePointRecord {
            id: rp_id,
            name,
            collection: coll.id,
            description: req.description,
            seq,
            created_at_ms: now,
            state: ProvisioningState::Creating,
            consistency_requested: req.consistency,
            consistency_achieved: achieved,
            consistency_note: note,
            freeze_window_us: u64::try_from(window.as_micros()).unwrap_or(u64::MAX),
            configuration,
            disks,
            excluded_disks: req.exclude_disks,
            completed_at_ms: None,
            operation: op.id,
        };
        let mut batch = self.inner.catalog.batch();
        batch.put(&rp)?;
        batch.put(&op)?;
        batch.put_raw("meta", META_NEXT_SEQ_KEY, &(seq + 1).to_be_bytes())?;
        crate::failpoint!("create::before_record");
        self.inner.catalog.commit(batch)?;
        Ok((rp, op))
    }

    /// The freeze: gates closed, epochs switched, captures registered, gates reopened.
    /// Nothing here syncs or copies data.
    async fn freeze_and_register(
        &self,
        disks: &[Arc<Disk>],
        first: &[bool],
        rp_id: RestorePointId,
    ) -> Result<(Duration, Armed)> {
        let build = |d: &Arc<Disk>, first: bool| {
            let tracker = d.tracker();
            let full = first || tracker.untrusted();
            let spill = self.inner.spill_dir.join(format!("{rp_id}-{}.blocks", d.id()));
            let cap = PendingCapture::new(
                tracker,
                full,
                d.chunk_size_bytes(),
                d.size_bytes(),
                spill,
                self.inner.config.preserve_mem_bytes,
            );
            Arc::new(cap)
        };
        // The capture states are built before the freeze, to keep allocations out of the
        // window; inside it each is checked against the disk as it is then (a resize that
        // waited at the gate replaced the tracker and size) and built again if it no longer
        // fits, so the capture reads the very epoch the freeze closed.
        let mut caps: Vec<(Arc<Disk>, Arc<PendingCapture>)> =
            disks.iter().zip(first).map(|(d, &first)| (d.clone(), build(d, first))).collect();
        crate::failpoint!("create::before_freeze");
        let mut freeze = crate::rp::group::Freeze::begin(disks.to_vec(), self.inner.freeze_stats.clone()).await;
        for ((d, cap), &first) in caps.iter_mut().zip(first) {
            let tracker = d.tracker();
            if !cap.fits(&tracker, d.size_bytes(), first || tracker.untrusted()) {
                *cap = build(d, first);
            }
        }
        freeze.switch_epochs()?;
        // From the switch on, every way out that is not a committed capture unwinds.
        let armed = Armed { caps, settled: false };
        for (d, cap) in armed.caps() {
            if cap.full_scan()
                && let Some(local) = d.local_snapshot()
            {
                cap.set_local_at_freeze(local);
            }
            d.begin_capture(cap.clone());
        }
        let window = freeze.thaw().await?;
        Ok((window, armed))
    }

    async fn run_capture(
        self,
        mut rp: RestorePointRecord,
        mut op: OperationRecord,
        mut armed: Armed,
        cancel: Arc<AtomicBool>,
        slot: CreationSlot,
    ) {
        let started = std::time::Instant::now();
        let result = self.capture_all(&mut rp, &mut op, armed.caps(), &cancel).await;
        match &result {
            Ok(()) => {
                armed.settled = true;
                let stored: u64 = rp.disks.iter().map(|d| d.bytes_stored).sum();
                tracing::info!(restore_point = %rp.name, seconds = started.elapsed().as_secs_f64(), stored, "restore point succeeded");
            }
            Err(e) => {
                tracing::warn!(restore_point = %rp.name, error = %e, "capture failed");
                if let Err(e2) = self.fail_capture(&mut rp, e).await {
                    tracing::error!(restore_point = %rp.name, error = %e2, "could not record the failed capture; it stays Creating until deleted or the next start");
                }
            }
        }
        // Copy-before-write ends (and a failed capture's epochs merge back) before the next
        // creation may start.
        drop(armed);
        // The next creation may start once the operation reads as ended: free the slot first.
        drop(slot);
        op.state = match result {
            Ok(()) => OperationState::Succeeded,
            Err(Error::Canceled) => OperationState::Canceled,
            Err(e) => OperationState::Failed { error: e.to_string() },
        };
        if let Err(e) = self.put_operation(&mut op) {
            tracing::error!(op = %op.id, error = %e, "could not record the capture's end; the next start settles it");
        }
    }

    async fn capture_all(
        &self,
        rp: &mut RestorePointRecord,
        op: &mut OperationRecord,
        caps: &[(Arc<Disk>, Arc<PendingCapture>)],
        cancel: &AtomicBool,
    ) -> Result<()> {
        // Totals first, so progress means something from the start.
        let mut plans = Vec::new();
        for (i, (d, cap)) in caps.iter().enumerate() {
            let extents = if cap.full_scan() { d.data_extents()? } else { Vec::new() };
            let mut chunks = cap.chunks_to_capture(&extents);
            if cap.full_scan() && rp.seq > 1 {
                // A rescan skips holes, but a chunk that held data at an earlier restore point
                // of this history (or its base) and is a hole now must be recorded as zero, or
                // reads would fall through to the old data.
                let older = chunk_map::allocated(&self.inner.catalog, d.lineage(), rp.seq - 1, cap.chunk_count())?;
                chunks.extend(older.into_keys().filter(|&c| cap.pending(c)));
                chunks.sort_unstable();
                chunks.dedup();
            }
            let total: u64 = chunks
                .iter()
                .map(|&c| {
                    let (s, e) = cap.chunk_range(c);
                    e - s
                })
                .sum();
            rp.disks[i].bytes_total = total;
            plans.push(chunks);
        }
        op.bytes_total = rp.disks.iter().map(|d| d.bytes_total).sum();
        let work: Vec<(usize, u64)> =
            plans.iter().enumerate().flat_map(|(i, chunks)| chunks.iter().map(move |&c| (i, c))).collect();
        self.capture_chunks(rp, op, caps, &work, cancel).await?;
        crate::failpoint!("capture::before_commit");
        rp.state = ProvisioningState::Succeeded;
        rp.completed_at_ms = Some(now_ms());
        op.updated_at_ms = now_ms();
        let mut batch = self.inner.catalog.batch();
        batch.put(&*rp)?;
        batch.put(&*op)?;
        self.inner.catalog.commit(batch)?;
        crate::failpoint!("capture::after_commit");
        for (d, cap) in caps {
            if let Err(e) = crate::sys::critical(|| d.tracker().consume_closed(cap.full_scan())) {
                // The restore point stands; the disk's tracking cannot be trusted to be exact.
                tracing::error!(disk = %d.name(), error = %e, "could not consume the captured epoch");
            }
        }
        Ok(())
    }

    /// Captures `work`, (disk position in `caps`, chunk) pairs, as one pipeline over all the
    /// disks: chunks are read and analysed a few at a time on every worker, records go to
    /// one pack at a time, and a full pack seals while the next one fills.
    async fn capture_chunks(
        &self,
        rp: &mut RestorePointRecord,
        op: &mut OperationRecord,
        caps: &[(Arc<Disk>, Arc<PendingCapture>)],
        work: &[(usize, u64)],
        cancel: &AtomicBool,
    ) -> Result<()> {
        let seq = rp.seq;
        let level = self.inner.chunks.zstd_level();
        let mut pending = Pending::default();

        // Set on failure: no more chunks start, and those in flight are waited for below, so
        // no task of this capture outlives it (each holds the engine open).
        let stop = AtomicBool::new(false);
        let mut results = futures::stream::iter(work.iter().copied().take_while(|_| !stop.load(Ordering::Acquire)))
            .map(|(i, c)| {
                let (disk, cap) = caps[i].clone();
                let engine = self.clone();
                let path = disk.path().to_owned();
                // A task of its own per chunk, so the consumer below appends and commits
                // meanwhile. The chunk's work (read, delta plan, hash, compress) runs as one
                // job on the background threads, so it yields to guest I/O; only a chunk not
                // in the page cache is read through the I/O backend first.
                let task = tokio::spawn(async move {
                    let lineage = disk.lineage();
                    let analysed = engine.analyse_chunk(&disk, &cap, c, seq, level, None).await?;
                    let (len, analysis) = match analysed {
                        Some(done) => done,
                        None => {
                            let data = disk.read_chunk_for_capture(&cap, c).await?;
                            engine.analyse_chunk(&disk, &cap, c, seq, level, Some(data)).await?.ok_or_else(|| {
                                Error::io("analyse chunk", disk.path(), std::io::Error::other("chunk not analysed"))
                            })?
                        }
                    };
                    Ok::<_, Error>((i, lineage, c, len, analysis))
                });
                async move { task.await.map_err(|e| Error::io("capture chunk", path, std::io::Error::other(e)))? }
            })
            .buffered(CAPTURE_PARALLELISM);

        let outcome: Result<()> = async {
            let mut since = std::time::Instant::now();
            while let Some(item) = results.next().await {
                if cancel.load(Ordering::Acquire) {
                    return Err(Error::Canceled);
                }
                let (i, lineage, c, len, analysis) = item?;
                self.inner.throughput.capture.record(len, &mut since);
                let drp = &mut rp.disks[i];
                drp.chunks_captured += 1;
                drp.bytes_captured += len;
                drp.bytes_done += len;
                op.bytes_done += len;
                match analysis {
                    Analysis::Zero => {
                        drp.chunks_zero += 1;
                        pending.ready((lineage, c, ChunkRef::Zero));
                    }
                    Analysis::Known(id) => {
                        drp.chunks_deduplicated += 1;
                        pending.ready((lineage, c, ChunkRef::Full(id)));
                    }
                    Analysis::Delta { content, base, delta, record } => {
                        drp.chunks_delta += 1;
                        let entry = (lineage, c, ChunkRef::Delta { content, base, delta });
                        match record
                            .filter(|_| !pending.in_pack(delta) && !self.inner.chunks.usable(delta).unwrap_or(false))
                        {
                            Some(rec) => {
                                self.wait_for_space(op, cancel).await?;
                                rp.disks[i].bytes_stored += pending.store(self, delta, &rec)?;
                                pending.waiting(entry);
                            }
                            None if pending.in_pack(delta) => pending.waiting(entry),
                            None => pending.ready(entry),
                        }
                    }
                    Analysis::New(id, rec) => {
                        if pending.in_pack(id) {
                            drp.chunks_deduplicated += 1;
                            pending.waiting((lineage, c, ChunkRef::Full(id)));
                        } else if self.inner.chunks.usable(id)? {
                            drp.chunks_deduplicated += 1;
                            pending.ready((lineage, c, ChunkRef::Full(id)));
                        } else {
                            self.wait_for_space(op, cancel).await?;
                            drp.chunks_new += 1;
                            drp.bytes_stored += pending.store(self, id, &rec)?;
                            pending.waiting((lineage, c, ChunkRef::Full(id)));
                        }
                    }
                }
                if pending.pack_bytes() >= PACK_TARGET_BYTES {
                    pending.finish_seal().await?;
                    pending.start_seal(self);
                    self.commit_entries(rp, op, seq, &mut pending).await?;
                } else if pending.sealing_done() {
                    pending.finish_seal().await?;
                    self.commit_entries(rp, op, seq, &mut pending).await?;
                } else if pending.ready.len() >= ENTRIES_PER_BATCH {
                    self.commit_entries(rp, op, seq, &mut pending).await?;
                }
            }
            pending.finish_seal().await?;
            pending.start_seal(self);
            pending.finish_seal().await?;
            self.commit_entries(rp, op, seq, &mut pending).await
        }
        .await;
        if outcome.is_err() {
            stop.store(true, Ordering::Release);
            while results.next().await.is_some() {}
            pending.abandon().await;
        }
        outcome
    }

    /// Reads (unless given `data`), plans and analyses chunk `c` on a background thread.
    /// `None` when `data` was not given and the chunk is not in the page cache: the caller
    /// then reads it through the I/O backend and calls again with it.
    async fn analyse_chunk(
        &self,
        disk: &Arc<Disk>,
        cap: &Arc<PendingCapture>,
        c: u64,
        seq: u64,
        level: i32,
        data: Option<crate::IoBuf>,
    ) -> Result<Option<(u64, Analysis)>> {
        let rt = tokio::runtime::Handle::current();
        let (engine, disk2, cap) = (self.clone(), disk.clone(), cap.clone());
        let job = move || -> Result<Option<(u64, Analysis)>> {
            let data = match data {
                Some(data) => data,
                None => match disk2.read_chunk_for_capture_cached(&cap, c)? {
                    Some(data) => data,
                    None => return Ok(None),
                },
            };
            // Not an async context: blocking here on the plan (a catalog lookup, and for a
            // chunk that is a delta already, a read of that delta) is what this thread is for.
            let plan = rt.block_on(engine.delta_plan(&cap, disk2.lineage(), c, seq));
            let known = |id: ChunkId| engine.inner.chunks.usable(id);
            Ok(Some((data.len() as u64, analyse(&data, plan, &known, level)?)))
        };
        self.inner
            .background
            .run(job)
            .await
            .ok_or_else(|| Error::io("analyse chunk", disk.path(), std::io::Error::other("background pool gone")))?
    }

    /// Commits the entries whose records are indexed or sealed, with the restore point's and
    /// operation's progress, in one batch.
    async fn commit_entries(
        &self,
        rp: &RestorePointRecord,
        op: &mut OperationRecord,
        seq: u64,
        pending: &mut Pending,
    ) -> Result<()> {
        let mut batch = self.inner.catalog.batch();
        for (lineage, index, r) in pending.ready.drain(..) {
            chunk_map::put(&mut batch, lineage, index, seq, &r)?;
        }
        op.updated_at_ms = now_ms();
        batch.put(rp)?;
        batch.put(&*op)?;
        crate::failpoint!("capture::before_batch");
        self.inner.chunks.commit(batch, &pending.ready_delta).await?;
        pending.ready_delta = IndexDelta::default();
        Ok(())
    }

    /// The full chunk a delta of chunk `c` would be taken against, and the blocks of `c` that
    /// may differ from it: those dirty in the closed epoch plus those of the delta the
    /// chunk's previous version already is. `None` for full scans, for chunks whose dirty
    /// share rules a delta out, and when the previous delta cannot be read intact (the chunk
    /// is then stored whole).
    async fn delta_plan(
        &self,
        cap: &PendingCapture,
        lineage: LineageId,
        c: u64,
        seq: u64,
    ) -> Option<(ChunkId, Vec<usize>)> {
        if cap.full_scan() || !cap.few_dirty_blocks(c) {
            return None;
        }
        let prev = chunk_map::resolve(&self.inner.catalog, lineage, c, seq.checked_sub(1)?).ok()?;
        let mut changed = cap.dirty_blocks_in_chunk(c);
        if prev.stored().iter().any(|id| self.inner.chunks.is_corrupt(*id)) {
            return None; // never build on a record a verify found corrupt
        }
        let base = match prev {
            ChunkRef::Zero => return None,
            ChunkRef::Full(base) => base,
            ChunkRef::Delta { base, delta, .. } => {
                let (start, end) = cap.chunk_range(c);
                let len = usize::try_from(end - start).ok()?;
                match self.inner.chunks.read_delta(delta).await.and_then(|p| crate::store::delta::blocks(&p, len)) {
                    Ok(prev_blocks) => changed.extend(prev_blocks),
                    Err(e) => {
                        tracing::warn!(delta = %delta, error = %e, "previous delta unreadable; storing the chunk whole");
                        return None;
                    }
                }
                changed.sort_unstable();
                changed.dedup();
                base
            }
        };
        Some((base, changed))
    }

    /// Pauses while the data dir's free space is under the watermark, saying so in the
    /// operation, so guest writes never meet ENOSPC because of a background job.
    pub(crate) async fn wait_for_space(&self, op: &mut OperationRecord, cancel: &AtomicBool) -> Result<()> {
        loop {
            let free = free_bytes(&self.inner.config.data_dir)?;
            let watermark = self.inner.watermark_bytes.load(Ordering::Acquire);
            if free >= watermark {
                if op.paused.take().is_some() {
                    self.put_operation(op)?;
                    tracing::info!(op = %op.id, "free space back above the watermark; resuming");
                }
                return Ok(());
            }
            // A shutdown parks (hydration, GC, verify) or fails (a capture) a paused job at
            // once instead of waiting out its grace period for space that may never come.
            if cancel.load(Ordering::Acquire) || self.inner.jobs.closing() {
                return Err(Error::Canceled);
            }
            if op.paused.is_none() {
                op.paused =
                    Some(format!("paused: {free} bytes free in the data dir, below the {watermark}-byte watermark"));
                self.put_operation(op)?;
                tracing::warn!(op = %op.id, free, watermark, "free space below the watermark; job paused");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub(crate) fn put_operation(&self, op: &mut OperationRecord) -> Result<()> {
        op.updated_at_ms = now_ms();
        let mut batch = self.inner.catalog.batch();
        batch.put(&*op)?;
        self.inner.catalog.commit(batch)?;
        if op.state.is_terminal() {
            self.prune_operations_now_and_then();
        }
        Ok(())
    }

    /// Marks a capture's restore point failed: its partial entries dropped with their
    /// references, in one batch. (The operation is settled by the caller.)
    async fn fail_capture(&self, rp: &mut RestorePointRecord, err: &Error) -> Result<()> {
        crate::failpoint!("capture::fail_capture");
        let reason = if matches!(err, Error::Canceled) { "canceled".to_owned() } else { err.to_string() };
        let mut batch = self.inner.catalog.batch();
        let mut delta = IndexDelta::default();
        for d in &rp.disks {
            for chunk in chunk_map::drop_seq(&self.inner.catalog, &mut batch, d.lineage, rp.seq)? {
                delta.drop_ref(chunk);
            }
        }
        rp.state = ProvisioningState::Failed { reason };
        rp.completed_at_ms = Some(now_ms());
        batch.put(&*rp)?;
        self.inner.chunks.commit(batch, &delta).await
    }

    /// After a restart: restore points still `Creating` become `Failed` (their partial entries
    /// dropped), and each disk's closed epoch is consumed if a succeeded restore point captured
    /// it, else merged back into change tracking so the next capture misses nothing.
    pub(crate) async fn recover_captures(&self) -> Result<()> {
        let all = self.inner.catalog.list::<RestorePointRecord>()?;
        for mut rp in all.iter().filter(|r| r.state == ProvisioningState::Creating).cloned() {
            tracing::warn!(restore_point = %rp.name, "restore point was being created when the engine stopped; marking it failed");
            let err = Error::FailedPrecondition("interrupted: the engine stopped before the capture finished".into());
            self.fail_capture(&mut rp, &err).await?;
        }
        let all = self.inner.catalog.list::<RestorePointRecord>()?;
        for mut op in self.inner.catalog.list::<OperationRecord>()? {
            // GC and verify resume as themselves; hydration is settled by `resume_hydrations`.
            if op.state.is_terminal() || op.kind.resumes() || op.kind == OperationKind::Hydration {
                continue;
            }
            // A capture whose restore point committed ended well; anything else was cut short.
            let captured = all.iter().any(|r| r.operation == op.id && r.state == ProvisioningState::Succeeded);
            op.state = if captured {
                OperationState::Succeeded
            } else {
                OperationState::Failed { error: "interrupted: the engine stopped".into() }
            };
            self.put_operation(&mut op)?;
        }
        let all = self.inner.catalog.list::<RestorePointRecord>()?;
        let disks: Vec<Arc<Disk>> = self.state().disks.values().map(|e| e.disk.clone()).collect();
        for d in disks {
            let t = d.tracker();
            if !t.closed_pending() {
                continue;
            }
            let captured = all.iter().find(|rp| {
                rp.state == ProvisioningState::Succeeded
                    && rp.disks.iter().any(|x| x.disk == d.id() && x.epoch == t.epoch())
            });
            match captured {
                Some(rp) => {
                    let full = rp.disks.iter().any(|x| x.disk == d.id() && x.full_scan);
                    t.consume_closed(full)?;
                }
                None => {
                    tracing::warn!(disk = %d.name(), "merging an uncaptured change-tracking epoch back");
                    t.merge_closed()?;
                }
            }
        }
        Ok(())
    }

    // ---- reading -------------------------------------------------------------------------

    /// A reader of one disk restore point of a `Succeeded` restore point.
    pub fn disk_restore_point(&self, rp: RestorePointId, disk: DiskId) -> Result<DiskRestorePointReader> {
        DiskRestorePointReader::open(&self.inner.catalog, &self.inner.chunks, rp, disk)
    }

    /// Chunks of `disk` that changed from restore point `from` to restore point `to` (same
    /// disk, `from` older): like EBS ListChangedBlocks.
    pub fn changed_chunks(&self, from: RestorePointId, to: RestorePointId, disk: DiskId) -> Result<Vec<u64>> {
        let a = self.disk_restore_point(from, disk)?;
        let b = self.disk_restore_point(to, disk)?;
        if a.base().lineage != b.base().lineage {
            return Err(Error::invalid("from", "the two disk restore points are of different disk histories"));
        }
        if a.base().seq > b.base().seq {
            return Err(Error::invalid("from", "must be older than `to`"));
        }
        b.changed_since(&a)
    }
}

fn free_bytes(dir: &std::path::Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(|e| Error::io("statvfs data dir", dir, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
