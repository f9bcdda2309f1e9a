//! The capture of a frozen restore point, in the background: each chunk to capture is read
//! with its preserved blocks laid over it, analysed (zero, deduplicated, delta or new) off the
//! async threads, appended to one pack at a time, and its chunk map entry committed once its
//! records are sealed and indexed; a failure drops the partial entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::format::{PACK_TARGET_BYTES, RECORD_HEADER_LEN};
use crate::base::ids::{LineageId, PackId};
use crate::catalog::restore_point::{ProvisioningState, RestorePointRecord};
use crate::chunk_map;
use crate::context::Context;
use crate::disk::Disk;
use crate::disk::capture::PendingCapture;
use crate::jobs::CreationSlot;
use crate::jobs::operation::{OperationRecord, OperationState};
use crate::store::chunk::{ChunkId, ChunkRef};
use crate::store::chunk_store::{IndexDelta, PackWriter, PreparedRecord, prepare_full};

/// Chunk map entries committed per batch while capturing.
const ENTRIES_PER_BATCH: usize = 8192;
/// Chunks read and analysed concurrently by one capture.
const CAPTURE_PARALLELISM: usize = 4;
/// A chunk map entry of a capture: (lineage, chunk index, reference).
type Entry = (LineageId, u64, ChunkRef);

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
    fn store(&mut self, ctx: &Context, id: ChunkId, rec: &PreparedRecord) -> Result<u64> {
        let w = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(ctx.chunks.new_pack()?),
        };
        self.pack_delta.new.insert(id, w.append(rec)?);
        Ok((RECORD_HEADER_LEN + rec.stored.len()) as u64)
    }

    fn pack_bytes(&self) -> u64 {
        self.writer.as_ref().map_or(0, PackWriter::len)
    }

    /// Starts sealing the pack being filled, with its waiting entries, in a task of its own.
    /// The previous seal must be finished.
    fn start_seal(&mut self, ctx: &Context) {
        debug_assert!(self.sealing.is_none(), "one seal at a time");
        let entries = std::mem::take(&mut self.in_pack);
        let delta = std::mem::take(&mut self.pack_delta);
        let Some(w) = self.writer.take() else {
            // Entries that waited for a pack sealed meanwhile: ready now.
            self.merge(entries, delta);
            return;
        };
        let (bytes, path) = (w.len(), w.path().to_owned());
        let chunks = ctx.chunks.clone();
        let task = tokio::spawn(async move { w.seal(chunks.pack_store()).await });
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

/// The disks of a capture from their epoch switch on. Dropping it ends copy-before-write
/// and, unless the capture committed (`settled`), merges the closed epochs back into change
/// tracking: a creation that stops anywhere, by an error, a panic or a task dropped, leaves
/// the disks as if never frozen, and the next capture misses nothing.
pub(crate) struct Armed {
    pub(crate) caps: Vec<(Arc<Disk>, Arc<PendingCapture>)>,
    pub(crate) settled: bool,
}

impl Armed {
    pub(crate) fn caps(&self) -> &[(Arc<Disk>, Arc<PendingCapture>)] {
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

pub(crate) async fn run_capture(
    ctx: &Arc<Context>,
    mut rp: RestorePointRecord,
    mut op: OperationRecord,
    mut armed: Armed,
    cancel: Arc<AtomicBool>,
    slot: CreationSlot,
) {
    let started = std::time::Instant::now();
    let result = capture_all(ctx, &mut rp, &mut op, armed.caps(), &cancel).await;
    match &result {
        Ok(()) => {
            armed.settled = true;
            let stored: u64 = rp.disks.iter().map(|d| d.bytes_stored).sum();
            tracing::info!(restore_point = %rp.name, seconds = started.elapsed().as_secs_f64(), stored, "restore point succeeded");
        }
        Err(e) => {
            tracing::warn!(restore_point = %rp.name, error = %e, "capture failed");
            if let Err(e2) = fail_capture(ctx, &mut rp, e).await {
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
    if let Err(e) = ctx.put_operation(&mut op) {
        tracing::error!(op = %op.id, error = %e, "could not record the capture's end; the next start settles it");
    }
}

async fn capture_all(
    ctx: &Arc<Context>,
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
            let older = chunk_map::allocated(&ctx.catalog, d.lineage(), rp.seq - 1, cap.chunk_count())?;
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
    capture_chunks(ctx, rp, op, caps, &work, cancel).await?;
    crate::failpoint!("capture::before_commit");
    for d in &mut rp.disks {
        let root = chunk_map::merkle_root(&ctx.catalog, d.lineage, rp.seq, d.size_bytes, d.chunk_size_bytes)?;
        d.merkle_root = Some(root);
    }
    rp.merkle_root = rp.root_of_disks();
    rp.state = ProvisioningState::Succeeded;
    rp.completed_at_ms = Some(now_ms());
    op.updated_at_ms = now_ms();
    let mut batch = ctx.catalog.batch();
    batch.put(&*rp)?;
    batch.put(&*op)?;
    ctx.catalog.commit(batch)?;
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
    ctx: &Arc<Context>,
    rp: &mut RestorePointRecord,
    op: &mut OperationRecord,
    caps: &[(Arc<Disk>, Arc<PendingCapture>)],
    work: &[(usize, u64)],
    cancel: &AtomicBool,
) -> Result<()> {
    let seq = rp.seq;
    let level = ctx.chunks.zstd_level();
    let mut pending = Pending::default();

    // Set on failure: no more chunks start, and those in flight are waited for below, so
    // no task of this capture outlives it (each holds the engine open).
    let stop = AtomicBool::new(false);
    let mut results = futures::stream::iter(work.iter().copied().take_while(|_| !stop.load(Ordering::Acquire)))
        .map(|(i, c)| {
            let (disk, cap) = caps[i].clone();
            let task_ctx = ctx.clone();
            let path = disk.path().to_owned();
            // A task of its own per chunk, so the consumer below appends and commits
            // meanwhile. The chunk's work (read, delta plan, hash, compress) runs as one
            // job on the background threads, so it yields to guest I/O; only a chunk not
            // in the page cache is read through the I/O backend first.
            let task = tokio::spawn(async move {
                let lineage = disk.lineage();
                let analysed = analyse_chunk(&task_ctx, &disk, &cap, c, seq, level, None).await?;
                let (len, analysis) = match analysed {
                    Some(done) => done,
                    None => {
                        let data = disk.read_chunk_for_capture(&cap, c).await?;
                        analyse_chunk(&task_ctx, &disk, &cap, c, seq, level, Some(data)).await?.ok_or_else(|| {
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
            ctx.throughput.capture.record(len, &mut since);
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
                    match record.filter(|_| !pending.in_pack(delta) && !ctx.chunks.usable(delta).unwrap_or(false)) {
                        Some(rec) => {
                            ctx.wait_for_space(op, cancel).await?;
                            rp.disks[i].bytes_stored += pending.store(ctx, delta, &rec)?;
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
                    } else if ctx.chunks.usable(id)? {
                        drp.chunks_deduplicated += 1;
                        pending.ready((lineage, c, ChunkRef::Full(id)));
                    } else {
                        ctx.wait_for_space(op, cancel).await?;
                        drp.chunks_new += 1;
                        drp.bytes_stored += pending.store(ctx, id, &rec)?;
                        pending.waiting((lineage, c, ChunkRef::Full(id)));
                    }
                }
            }
            if pending.pack_bytes() >= PACK_TARGET_BYTES {
                pending.finish_seal().await?;
                pending.start_seal(ctx);
                commit_entries(ctx, rp, op, seq, &mut pending).await?;
            } else if pending.sealing_done() {
                pending.finish_seal().await?;
                commit_entries(ctx, rp, op, seq, &mut pending).await?;
            } else if pending.ready.len() >= ENTRIES_PER_BATCH {
                commit_entries(ctx, rp, op, seq, &mut pending).await?;
            }
        }
        pending.finish_seal().await?;
        pending.start_seal(ctx);
        pending.finish_seal().await?;
        commit_entries(ctx, rp, op, seq, &mut pending).await
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
    ctx: &Arc<Context>,
    disk: &Arc<Disk>,
    cap: &Arc<PendingCapture>,
    c: u64,
    seq: u64,
    level: i32,
    data: Option<crate::IoBuf>,
) -> Result<Option<(u64, Analysis)>> {
    let rt = tokio::runtime::Handle::current();
    let (task_ctx, disk2, cap) = (ctx.clone(), disk.clone(), cap.clone());
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
        let plan = rt.block_on(delta_plan(&task_ctx, &cap, disk2.lineage(), c, seq));
        let known = |id: ChunkId| task_ctx.chunks.usable(id);
        Ok(Some((data.len() as u64, analyse(&data, plan, &known, level)?)))
    };
    ctx.background
        .run(job)
        .await
        .ok_or_else(|| Error::io("analyse chunk", disk.path(), std::io::Error::other("background pool gone")))?
}

/// Commits the entries whose records are indexed or sealed, with the restore point's and
/// operation's progress, in one batch.
async fn commit_entries(
    ctx: &Arc<Context>,
    rp: &RestorePointRecord,
    op: &mut OperationRecord,
    seq: u64,
    pending: &mut Pending,
) -> Result<()> {
    let mut batch = ctx.catalog.batch();
    for (lineage, index, r) in pending.ready.drain(..) {
        chunk_map::put(&mut batch, lineage, index, seq, &r)?;
    }
    op.updated_at_ms = now_ms();
    batch.put(rp)?;
    batch.put(&*op)?;
    crate::failpoint!("capture::before_batch");
    ctx.chunks.commit(batch, &pending.ready_delta).await?;
    pending.ready_delta = IndexDelta::default();
    Ok(())
}

/// The full chunk a delta of chunk `c` would be taken against, and the blocks of `c` that
/// may differ from it: those dirty in the closed epoch plus those of the delta the
/// chunk's previous version already is. `None` for full scans, for chunks whose dirty
/// share rules a delta out, and when the previous delta cannot be read intact (the chunk
/// is then stored whole).
async fn delta_plan(
    ctx: &Arc<Context>,
    cap: &PendingCapture,
    lineage: LineageId,
    c: u64,
    seq: u64,
) -> Option<(ChunkId, Vec<usize>)> {
    if cap.full_scan() || !cap.few_dirty_blocks(c) {
        return None;
    }
    let prev = chunk_map::resolve(&ctx.catalog, lineage, c, seq.checked_sub(1)?).ok()?;
    let mut changed = cap.dirty_blocks_in_chunk(c);
    if prev.stored().iter().any(|id| ctx.chunks.is_corrupt(*id)) {
        return None; // never build on a record a verify found corrupt
    }
    let base = match prev {
        ChunkRef::Zero => return None,
        ChunkRef::Full(base) => base,
        ChunkRef::Delta { base, delta, .. } => {
            let (start, end) = cap.chunk_range(c);
            let len = usize::try_from(end - start).ok()?;
            match ctx.chunks.read_delta(delta).await.and_then(|p| crate::store::delta::blocks(&p, len)) {
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

/// Marks a capture's restore point failed: its partial entries dropped with their
/// references, in one batch. (The operation is settled by the caller.)
pub(crate) async fn fail_capture(ctx: &Arc<Context>, rp: &mut RestorePointRecord, err: &Error) -> Result<()> {
    crate::failpoint!("capture::fail_capture");
    let reason = if matches!(err, Error::Canceled) { "canceled".to_owned() } else { err.to_string() };
    let mut batch = ctx.catalog.batch();
    let mut delta = IndexDelta::default();
    for d in &rp.disks {
        for chunk in chunk_map::drop_seq(&ctx.catalog, &mut batch, d.lineage, rp.seq)? {
            delta.drop_ref(chunk);
        }
    }
    rp.state = ProvisioningState::Failed { reason };
    rp.completed_at_ms = Some(now_ms());
    batch.put(&*rp)?;
    ctx.chunks.commit(batch, &delta).await
}
