//! Copying restore points between daemons: what a source exports (a restore point's record
//! and chunk maps, and its stored records verbatim) and how a target takes a copy into a
//! copy collection. The network stays out: the target pulls through a [`CopySource`], which
//! the daemon implements over gRPC (and tests over another engine).
//!
//! The target treats everything the source sends as client input. The manifest is checked
//! before anything is fetched: sizes and chunk sizes in bounds, chunk indices in range and
//! ascending, and the Merkle roots it declares equal to the ones its own entries hash to.
//! Each record is checked on arrival (header, its id, the kind its entry needs, exact length,
//! CRC, decompressed length within a chunk, BLAKE3 of the content) and appended verbatim to a
//! pack of the target's own; each delta is applied to its base and checked against the
//! content its entry names; and the restore point turns `Succeeded` only once the chunk map
//! it wrote hashes to the source's roots. A copy that fails anywhere becomes `Failed` with
//! its entries dropped, as a failed capture does; one cut short by a stop likewise at the
//! next start.
//!
//! Each disk of a copy collection keeps one history (lineage) per source disk, so a copy
//! writes only the entries that differ from the previous copy of that disk, and fetches only
//! the records the previous copy did not already bring: a source learns nothing about what
//! the target holds for other collections.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::future::BoxFuture;

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::format::{PACK_TARGET_BYTES, RECORD_HEADER_LEN, RecordHeader, RecordKind};
use crate::base::ids::{CollectionId, LineageId, Name, RestorePointId};
use crate::base::merkle::{self, Root};
use crate::catalog::restore_point::{DiskRestorePoint, ProvisioningState, RestorePointRecord};
use crate::chunk_map;
use crate::context::Context;
use crate::jobs::operation::{OperationKind, OperationRecord, OperationState};
use crate::store::chunk::{ChunkId, ChunkRef};
use crate::store::chunk_store::{IndexDelta, PackWriter};

/// Records fetched at once.
const IN_FLIGHT: usize = 8;
/// Chunk map entries per catalog batch.
const ENTRIES_PER_BATCH: usize = 16_384;
/// Disks a restore point may hold, as a copy sees it.
const MAX_DISKS: usize = 256;

/// One disk restore point as a source exports it.
#[derive(Debug, Clone)]
pub struct ExportedDisk {
    pub record: DiskRestorePoint,
    /// Every chunk that is not all zeros, ascending by index.
    pub chunks: Vec<(u64, ChunkRef)>,
}

/// A restore point as a source exports it: the record and every disk's chunk map.
#[derive(Debug, Clone)]
pub struct ExportedRestorePoint {
    pub record: RestorePointRecord,
    pub disks: Vec<ExportedDisk>,
}

/// Where a copy pulls from: a restore point's manifest and its stored records.
pub trait CopySource: Send + Sync {
    /// The restore point being copied.
    fn restore_point(&self) -> BoxFuture<'_, Result<ExportedRestorePoint>>;
    /// Stored record `id`, verbatim (header + stored bytes).
    fn record(&self, id: ChunkId) -> BoxFuture<'_, Result<Vec<u8>>>;
}

/// The manifest of a `Succeeded` restore point, for a copy elsewhere.
pub(crate) fn export_restore_point(ctx: &Arc<Context>, id: RestorePointId) -> Result<ExportedRestorePoint> {
    let record = ctx.restore_point(id)?;
    let mut disks = Vec::new();
    for d in &record.disks {
        let reader = ctx.disk_restore_point(id, d.disk)?;
        disks.push(ExportedDisk { record: d.clone(), chunks: reader.allocated_chunks()? });
    }
    Ok(ExportedRestorePoint { record, disks })
}

/// Stored record `id` verbatim, checked whole first (a corrupt record is an error, never sent).
pub(crate) async fn export_record(ctx: &Arc<Context>, id: ChunkId) -> Result<Vec<u8>> {
    ctx.chunks.read_stored(id).await
}

/// What the target learned from the manifest, checked.
struct Plan {
    source: RestorePointRecord,
    disks: Vec<DiskPlan>,
}

struct DiskPlan {
    exported: ExportedDisk,
    root: Root,
    /// The history this disk's copies keep, and the seq of the previous copy in it.
    lineage: LineageId,
    previous: Option<u64>,
}

/// Checks a manifest as client input; returns the disks' declared roots.
fn check_manifest(m: &ExportedRestorePoint) -> Result<Vec<Root>> {
    let bad = |r: String| Error::invalid("source restore point", r);
    if m.record.state != ProvisioningState::Succeeded {
        return Err(bad(format!("{} is {:?}, not Succeeded", m.record.name, m.record.state)));
    }
    if m.disks.is_empty() || m.disks.len() > MAX_DISKS || m.disks.len() != m.record.disks.len() {
        return Err(bad(format!("{} disks, the record names {}", m.disks.len(), m.record.disks.len())));
    }
    // Names arrive as the peer wrote them: checked as a request's would be.
    Name::new(m.record.name.as_str()).map_err(|e| bad(format!("restore point name: {e}")))?;
    if m.record.configuration.len() > crate::catalog::group::MAX_CONFIGURATION_BYTES {
        return Err(bad("configuration too large".into()));
    }
    let mut roots = Vec::new();
    let mut seen = HashSet::new();
    for (d, named) in m.disks.iter().zip(&m.record.disks) {
        let r = &d.record;
        Name::new(r.disk_name.as_str()).map_err(|e| bad(format!("disk name: {e}")))?;
        if r.disk != named.disk || !seen.insert(r.disk) {
            return Err(bad(format!("disk {} is listed out of order or twice", r.disk)));
        }
        crate::disk::check_size(r.size_bytes)?;
        crate::disk::check_chunk_size(r.chunk_size_bytes)?;
        let chunks = r.size_bytes.div_ceil(r.chunk_size_bytes);
        let mut last = None;
        for (index, _) in &d.chunks {
            if *index >= chunks || last.is_some_and(|l| l >= *index) {
                return Err(bad(format!("disk {}: chunk index {index} out of order or past the disk", r.disk_name)));
            }
            last = Some(*index);
        }
        let declared = r.merkle_root.ok_or_else(|| bad(format!("disk {} has no Merkle root", r.disk_name)))?;
        let leaves: BTreeMap<u64, [u8; 32]> =
            d.chunks.iter().filter_map(|(i, c)| c.content().map(|id| (*i, id.0))).collect();
        let tree = merkle::tree(r.size_bytes, r.chunk_size_bytes, &leaves);
        let computed = merkle::disk_root(r.size_bytes, r.chunk_size_bytes, &tree);
        if computed != declared {
            return Err(bad(format!(
                "disk {}: its chunk map hashes to Merkle root {computed}, the source declares {declared}",
                r.disk_name
            )));
        }
        roots.push(declared);
    }
    let disk_roots = m.disks.iter().zip(&roots).map(|(d, root)| (d.record.disk_name.as_str(), *root));
    let rp_root = merkle::restore_point_root(&m.record.configuration, disk_roots);
    if m.record.merkle_root != Some(rp_root) {
        return Err(bad(format!("its Merkle root is not {rp_root}, the one its configuration and disks make")));
    }
    Ok(roots)
}

/// Copies the source's restore point into copy collection `collection` as `name`: the
/// `Creating` record and its operation come back at once, the copy runs as an engine job.
pub(crate) async fn copy_restore_point(
    ctx: &Arc<Context>,
    collection: CollectionId,
    name: String,
    source: Arc<dyn CopySource>,
) -> Result<(RestorePointRecord, OperationRecord)> {
    let name = Name::new(name)?;
    let coll = super::collection::collection(ctx, collection)?;
    if coll.source.is_none() {
        return Err(Error::FailedPrecondition(format!(
            "collection {} is not a copy collection; copies land in a collection made with a source",
            coll.name
        )));
    }
    let manifest = source.restore_point().await?;
    let roots = check_manifest(&manifest)?;
    let slot = ctx.jobs.begin_creation(coll.group, coll.name.as_str())?;
    let gc_pass = ctx.gc_gate.clone().read_owned().await;
    let all = ctx.catalog.list::<RestorePointRecord>()?;
    let in_coll: Vec<&RestorePointRecord> = all.iter().filter(|r| r.collection == coll.id).collect();
    let held = in_coll.iter().filter(|r| !matches!(r.state, ProvisioningState::Failed { .. })).count();
    if held >= coll.max_restore_points as usize {
        return Err(Error::LimitReached(format!(
            "collection {} holds {held} restore points, its limit is {}",
            coll.name, coll.max_restore_points
        )));
    }
    if in_coll.iter().any(|r| r.name == name) {
        return Err(Error::already_exists(format!("restore point {name} in collection {}", coll.name)));
    }
    // Each source disk's history in this collection: the newest copy that holds it.
    let mut disks = Vec::new();
    for (exported, root) in manifest.disks.into_iter().zip(roots) {
        let previous = in_coll
            .iter()
            .filter(|r| r.state == ProvisioningState::Succeeded)
            .filter_map(|r| r.disks.iter().find(|d| d.disk == exported.record.disk).map(|d| (r.seq, d)))
            .filter(|(_, d)| d.chunk_size_bytes == exported.record.chunk_size_bytes)
            .max_by_key(|(seq, _)| *seq);
        let (lineage, previous) = match previous {
            Some((seq, d)) => (d.lineage, Some(seq)),
            None => (LineageId::new(), None),
        };
        disks.push(DiskPlan { exported, root, lineage, previous });
    }
    let plan = Plan { source: manifest.record, disks };
    let (rp, op) = record_copy(ctx, &coll, name, &plan).await?;
    let cancel = ctx.jobs.register(op.id, false);
    let (task_ctx, task_rp, task_op) = (ctx.clone(), rp.clone(), op.clone());
    ctx.jobs.spawn(op.id, async move {
        run_copy(&task_ctx, plan, task_rp, task_op, source, &cancel).await;
        drop(slot);
        drop(gc_pass);
    });
    Ok((rp, op))
}

/// Records the copy as `Creating`, with its operation and the next seq.
async fn record_copy(
    ctx: &Arc<Context>,
    coll: &super::collection::CollectionRecord,
    name: Name,
    plan: &Plan,
) -> Result<(RestorePointRecord, OperationRecord)> {
    let _admin = ctx.admin.lock().await;
    let seq = super::create::next_seq(ctx).await?;
    let id = RestorePointId::new();
    let logical: u64 =
        plan.disks.iter().map(|d| d.exported.chunks.len() as u64 * d.exported.record.chunk_size_bytes).sum();
    let op = OperationRecord::start(OperationKind::Copy, format!("restore-point/{id}"), logical);
    let src = &plan.source;
    let disks = plan
        .disks
        .iter()
        .map(|d| {
            let r = &d.exported.record;
            DiskRestorePoint {
                disk: r.disk,
                disk_name: r.disk_name.clone(),
                lineage: d.lineage,
                base: None,
                size_bytes: r.size_bytes,
                chunk_size_bytes: r.chunk_size_bytes,
                full_scan: d.previous.is_none(),
                chunks_captured: 0,
                chunks_new: 0,
                chunks_deduplicated: 0,
                chunks_zero: 0,
                chunks_delta: 0,
                bytes_stored: 0,
                bytes_captured: 0,
                bytes_done: 0,
                bytes_total: d.exported.chunks.len() as u64 * r.chunk_size_bytes,
                epoch: 0,
                merkle_root: None,
            }
        })
        .collect();
    let rp = RestorePointRecord {
        id,
        name,
        collection: coll.id,
        description: src.description.clone(),
        seq,
        created_at_ms: src.created_at_ms,
        state: ProvisioningState::Creating,
        consistency_requested: src.consistency_requested,
        consistency_achieved: src.consistency_achieved,
        consistency_note: src.consistency_note.clone(),
        freeze_window_us: src.freeze_window_us,
        configuration: src.configuration.clone(),
        disks,
        excluded_disks: src.excluded_disks.clone(),
        completed_at_ms: None,
        operation: op.id,
        merkle_root: None,
    };
    let mut batch = ctx.catalog.batch();
    batch.put(&rp)?;
    batch.put(&op)?;
    batch.put_raw("meta", crate::base::format::META_NEXT_SEQ_KEY, &(seq + 1).to_be_bytes())?;
    ctx.catalog.commit(batch)?;
    tracing::info!(restore_point = %rp.name, collection = %coll.name, source = %src.name, "copy starts");
    Ok((rp, op))
}

async fn run_copy(
    ctx: &Arc<Context>,
    plan: Plan,
    mut rp: RestorePointRecord,
    mut op: OperationRecord,
    source: Arc<dyn CopySource>,
    cancel: &AtomicBool,
) {
    let result = copy_all(ctx, &plan, &mut rp, &mut op, &*source, cancel).await;
    op.state = match &result {
        Ok(()) => OperationState::Succeeded,
        Err(Error::Canceled) => OperationState::Canceled,
        Err(e) => OperationState::Failed { error: e.to_string() },
    };
    if let Err(e) = &result {
        tracing::warn!(restore_point = %rp.name, error = %e, "copy failed");
        if let Err(e2) = super::capture::fail_capture(ctx, &mut rp, e).await {
            tracing::error!(restore_point = %rp.name, error = %e2, "could not record the failed copy; the next start does");
        }
    } else {
        tracing::info!(restore_point = %rp.name, "copy succeeded");
    }
    if let Err(e) = ctx.put_operation(&mut op) {
        tracing::error!(op = %op.id, error = %e, "could not record the copy's end; the next start settles it");
    }
}

/// What one disk's entries need: per entry, the records it references and the kind each must be.
fn needs(chunks: &[(u64, ChunkRef)]) -> Vec<(ChunkId, RecordKind)> {
    let mut out = Vec::new();
    for (_, r) in chunks {
        match r {
            ChunkRef::Zero => {}
            ChunkRef::Full(id) => out.push((*id, RecordKind::Full)),
            ChunkRef::Delta { base, delta, .. } => {
                out.push((*base, RecordKind::Full));
                out.push((*delta, RecordKind::Delta));
            }
        }
    }
    out
}

/// Checks a record the source sent for `id` as `kind`: exact length, header, id, CRC,
/// decoded length and content hash.
fn check_record(bytes: &[u8], id: ChunkId, kind: RecordKind) -> Result<()> {
    let where_ = std::path::Path::new("copy source");
    let header =
        RecordHeader::decode(bytes, where_).map_err(|e| Error::invalid("source record", format!("chunk {id}: {e}")))?;
    if bytes.len() != RECORD_HEADER_LEN + header.stored_len as usize {
        return Err(Error::invalid(
            "source record",
            format!(
                "chunk {id}: {} bytes, its header says {}",
                bytes.len(),
                RECORD_HEADER_LEN + header.stored_len as usize
            ),
        ));
    }
    crate::store::chunk_store::decode(bytes, kind, id, where_)
        .map_err(|e| Error::invalid("source record", e.to_string()))?;
    Ok(())
}

async fn copy_all(
    ctx: &Arc<Context>,
    plan: &Plan,
    rp: &mut RestorePointRecord,
    op: &mut OperationRecord,
    source: &dyn CopySource,
    cancel: &AtomicBool,
) -> Result<()> {
    // What earlier copies of each disk brought: fetched again never, and never anything else.
    let mut known: HashSet<ChunkId> = HashSet::new();
    let mut previous_maps = Vec::new();
    for d in &plan.disks {
        let prev = match d.previous {
            Some(seq) => {
                let chunks = d.exported.record.size_bytes.div_ceil(d.exported.record.chunk_size_bytes);
                chunk_map::allocated(&ctx.catalog, d.lineage, seq, chunks)?
            }
            None => BTreeMap::new(),
        };
        known.extend(prev.values().flat_map(ChunkRef::stored).filter(|id| !ctx.chunks.is_corrupt(*id)));
        previous_maps.push(prev);
    }
    // Fetch, check and store every record not known, several in flight.
    let mut wanted: Vec<(ChunkId, RecordKind, usize)> = Vec::new();
    let mut queued = HashSet::new();
    for (i, d) in plan.disks.iter().enumerate() {
        for (id, kind) in needs(&d.exported.chunks) {
            if !known.contains(&id) && queued.insert(id) {
                wanted.push((id, kind, i));
            }
        }
    }
    let mut delta = IndexDelta::default();
    let mut writer: Option<PackWriter> = None;
    let mut fetched = futures::stream::iter(wanted.iter().copied())
        .map(|(id, kind, disk)| async move { (id, kind, disk, source.record(id).await) })
        .buffer_unordered(IN_FLIGHT);
    let mut saved = std::time::Instant::now();
    while let Some((id, kind, disk, bytes)) = fetched.next().await {
        if cancel.load(Ordering::Acquire) {
            if let Some(w) = writer.take() {
                w.discard();
            }
            return Err(Error::Canceled);
        }
        let bytes = bytes?;
        check_record(&bytes, id, kind)?;
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(ctx.chunks.new_pack()?),
        };
        let header = RecordHeader::decode(&bytes, std::path::Path::new("copy source"))?;
        let loc = crate::store::chunk::ChunkLocation {
            pack: crate::base::ids::PackId::new(),
            offset: 0,
            stored_len: header.stored_len,
            raw_len: header.raw_len,
            refs: 0,
        };
        delta.new.insert(id, w.append_copy(&bytes, loc)?);
        let d = &mut rp.disks[disk];
        d.chunks_new += 1;
        d.bytes_stored += bytes.len() as u64;
        d.bytes_done = (d.bytes_done + d.chunk_size_bytes).min(d.bytes_total);
        op.bytes_done = rp.disks.iter().map(|d| d.bytes_done).sum();
        if w.len() >= PACK_TARGET_BYTES {
            let full = writer.take().map(|w| (w.len(), w));
            if let Some((len, w)) = full {
                delta.packs.push((w.seal(ctx.chunks.pack_store()).await?, len));
            }
        }
        if saved.elapsed() >= std::time::Duration::from_secs(1) {
            op.updated_at_ms = now_ms();
            ctx.put_operation(op)?;
            saved = std::time::Instant::now();
        }
        crate::failpoint!("copy::after_record");
    }
    drop(fetched);
    if let Some(w) = writer.take() {
        let len = w.len();
        delta.packs.push((w.seal(ctx.chunks.pack_store()).await?, len));
    }
    // Entries, each disk's difference from its previous copy, with their references; the
    // first batch indexes the records and their packs.
    let seq = rp.seq;
    let mut entries: Vec<(LineageId, u64, ChunkRef)> = Vec::new();
    for ((d, prev), rec) in plan.disks.iter().zip(&previous_maps).zip(rp.disks.iter_mut()) {
        let now: HashMap<u64, ChunkRef> = d.exported.chunks.iter().copied().collect();
        for (index, r) in &d.exported.chunks {
            if matches!(r, ChunkRef::Delta { .. }) {
                rec.chunks_delta += 1;
            }
            if prev.get(index) != Some(r) {
                entries.push((d.lineage, *index, *r));
            } else {
                rec.chunks_deduplicated += 1;
            }
        }
        for index in prev.keys().filter(|i| !now.contains_key(i)) {
            entries.push((d.lineage, *index, ChunkRef::Zero));
            rec.chunks_zero += 1;
        }
        rec.chunks_captured = d.exported.chunks.len() as u64;
        rec.bytes_done = rec.bytes_total;
    }
    op.bytes_done = op.bytes_total;
    let mut new = std::mem::take(&mut delta.new);
    let mut packs = std::mem::take(&mut delta.packs);
    for batch_entries in entries.chunks(ENTRIES_PER_BATCH).map(<[_]>::to_vec).chain(std::iter::once(Vec::new())) {
        let mut batch = ctx.catalog.batch();
        let mut d = IndexDelta { packs: std::mem::take(&mut packs), ..Default::default() };
        for (lineage, index, r) in &batch_entries {
            chunk_map::put(&mut batch, *lineage, *index, seq, r)?;
            for id in r.stored() {
                d.add_ref(id);
                if let Some(loc) = new.remove(&id) {
                    d.new.insert(id, loc);
                }
            }
        }
        op.updated_at_ms = now_ms();
        batch.put(&*rp)?;
        batch.put(&*op)?;
        crate::failpoint!("copy::before_batch");
        ctx.chunks.commit(batch, &d).await?;
    }
    // Every delta gives the content its entry names; the map written hashes to the roots.
    for (d, rec) in plan.disks.iter().zip(rp.disks.iter_mut()) {
        let cs = d.exported.record.chunk_size_bytes;
        for (index, r) in d.exported.chunks.iter().filter(|(_, r)| matches!(r, ChunkRef::Delta { .. })) {
            let len = usize::try_from((d.exported.record.size_bytes - index * cs).min(cs))
                .map_err(|_| Error::invalid("chunk_size_bytes", "too large for this machine"))?;
            ctx.chunks.read_ref(*r, len).await.map_err(|e| Error::invalid("source record", e.to_string()))?;
        }
        let root = chunk_map::merkle_root(&ctx.catalog, d.lineage, seq, rec.size_bytes, rec.chunk_size_bytes)?;
        if root != d.root {
            return Err(Error::corrupt(
                "catalog/chunk_map",
                format!("copied disk {} hashes to Merkle root {root}, the source's is {}", rec.disk_name, d.root),
            ));
        }
        rec.merkle_root = Some(root);
    }
    rp.merkle_root = rp.root_of_disks();
    if rp.merkle_root != plan.source.merkle_root {
        return Err(Error::corrupt("catalog/restore_points", "the copy's Merkle root is not the source's"));
    }
    crate::failpoint!("copy::before_commit");
    rp.state = ProvisioningState::Succeeded;
    rp.completed_at_ms = Some(now_ms());
    op.updated_at_ms = now_ms();
    let mut batch = ctx.catalog.batch();
    batch.put(&*rp)?;
    batch.put(&*op)?;
    ctx.catalog.commit(batch)?;
    Ok(())
}
