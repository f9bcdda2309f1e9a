//! Garbage collection: reclaims stored records no chunk map entry references, and rewrites
//! packs whose live share fell below a threshold.
//!
//! Phase 1 runs with captures excluded (the GC gate, held shared by every capture for its
//! whole run, so a chunk a capture just deduplicated against cannot be freed before its
//! reference is committed): packs retired by the previous run and packs no index entry
//! knows (sealed by a capture that died before its commit) are deleted, and dead index
//! entries are removed. Phase 2 runs beside captures: each sparse pack's live records are
//! copied (CRC-checked) into a new sealed pack, and their locations switched under the
//! index lock in one batch; the old pack is retired, and deleted by the next run, so a
//! reader that looked up an old location just before the switch can still read it.
//! A crash anywhere leaves either the old or the new location committed; the next run
//! deletes whatever pack nothing references.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Arc;

use crate::base::error::{Error, Result};
use crate::base::format::{RECORD_HEADER_LEN, RecordHeader};
use crate::base::ids::PackId;
use crate::context::Context;
use crate::jobs::operation::{OperationKind, OperationRecord};
use crate::store::chunk::{ChunkId, ChunkLocation};
use crate::store::counters::StoreChange;

const RETIRED_PREFIX: &[u8] = b"retired-pack:";
/// Default: rewrite packs less than half live.
pub const DEFAULT_GC_LIVE_SHARE_PERCENT: u32 = 50;

fn retired_key(pack: PackId) -> Vec<u8> {
    [RETIRED_PREFIX, &pack.to_bytes()].concat()
}

/// What a GC keeps in its operation to resume after a restart.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct GcSettings {
    live_share_percent: u32,
}

/// What one GC run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub records_freed: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    /// Bytes of pack files deleted or shrunk away (retired packs count when deleted).
    pub bytes_reclaimed: u64,
}

/// Starts a garbage collection; returns its operation at once. Packs whose live bytes
/// are below `live_share_percent` of their size are rewritten.
pub(crate) async fn collect_garbage(ctx: &Arc<Context>, live_share_percent: u32) -> Result<OperationRecord> {
    if live_share_percent > 100 {
        return Err(Error::invalid("live_share_percent", format!("{live_share_percent} is over 100")));
    }
    let single = claim_gc(ctx)?;
    let mut op = OperationRecord::start(OperationKind::Gc, "store".into(), 0);
    op.resume = serde_json::to_value(GcSettings { live_share_percent }).ok();
    ctx.put_operation(&mut op)?;
    spawn_gc(ctx, op.clone(), live_share_percent, single);
    Ok(op)
}

/// Takes up a GC a stop cut short, from the start of its phases (each is idempotent).
pub(crate) fn resume_gc(ctx: &Arc<Context>, op: OperationRecord) -> Result<()> {
    let settings: GcSettings = op.saved()?;
    let single = claim_gc(ctx)?;
    spawn_gc(ctx, op, settings.live_share_percent, single);
    Ok(())
}

/// The right to run the one garbage collection at a time.
fn claim_gc(ctx: &Arc<Context>) -> Result<tokio::sync::OwnedMutexGuard<()>> {
    ctx.gc_single
        .clone()
        .try_lock_owned()
        .map_err(|_| Error::FailedPrecondition("a garbage collection is already running".into()))
}

fn spawn_gc(
    ctx: &Arc<Context>,
    mut op: OperationRecord,
    live_share_percent: u32,
    single: tokio::sync::OwnedMutexGuard<()>,
) {
    let cancel = ctx.jobs.register(op.id, true);
    let task_ctx = ctx.clone();
    ctx.jobs.spawn(op.id, async move {
        let result = gc(&task_ctx, &mut op, live_share_percent, &cancel).await;
        if let Ok(report) = &result {
            tracing::info!(?report, "garbage collection finished");
        }
        let outcome = crate::jobs::report(result);
        drop(single);
        super::operations::settle_resumable(&task_ctx, &mut op, outcome);
    });
}

async fn gc(
    ctx: &Arc<Context>,
    op: &mut OperationRecord,
    live_share_percent: u32,
    cancel: &AtomicBool,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    op.bytes_done = 0;
    let chunks = &ctx.chunks;
    let store = chunks.pack_store();
    let catalog = chunks.catalog();

    // ---- phase 1: captures excluded ----
    let (rewrite, live_records) = {
        let _gate = ctx.gc_gate.write().await;
        let _index = chunks.lock_index().await;

        let mut retired = Vec::new();
        catalog.scan("meta", RETIRED_PREFIX, RETIRED_PREFIX, |k, _| {
            retired.push(k.to_vec());
            Ok(true)
        })?;
        let mut known: HashMap<PackId, u64> = HashMap::new();
        catalog.scan("packs", &[], &[], |k, v| {
            let id: [u8; 16] = k.try_into().map_err(|_| Error::corrupt("catalog/packs", "bad pack key"))?;
            let size = crate::base::format::decode_pack_entry(v)?;
            known.insert(PackId::from(uuid::Uuid::from_bytes(id)), size);
            Ok(true)
        })?;
        // Retired packs and packs nothing knows go first.
        let mut batch = catalog.batch();
        for key in &retired {
            batch.delete_raw("meta", key)?;
        }
        for (pack, size) in store.list().await? {
            if !known.contains_key(&pack) {
                store.delete(pack).await?;
                report.packs_deleted += 1;
                report.bytes_reclaimed += size;
            }
        }
        catalog.commit(batch)?;

        // Dead records out of the index; live bytes per pack.
        let mut dead: Vec<([u8; 32], ChunkLocation)> = Vec::new();
        let mut live: HashMap<PackId, u64> = HashMap::new();
        let mut live_records: HashMap<PackId, Vec<(ChunkId, ChunkLocation)>> = HashMap::new();
        catalog.scan("chunks", &[], &[], |k, v| {
            let id: [u8; 32] = k.try_into().map_err(|_| Error::corrupt("catalog/chunks", "bad chunk key"))?;
            let loc = ChunkLocation::decode(v)?;
            if loc.refs == 0 {
                dead.push((id, loc));
            } else {
                *live.entry(loc.pack).or_default() += RECORD_HEADER_LEN as u64 + u64::from(loc.stored_len);
                live_records.entry(loc.pack).or_default().push((ChunkId(id), loc));
            }
            Ok(true)
        })?;
        for part in dead.chunks(10_000) {
            let mut batch = catalog.batch();
            let mut change = StoreChange::default();
            for (id, loc) in part {
                batch.delete_raw("chunks", id)?;
                change.record(Some(loc), None);
            }
            catalog.commit(batch)?;
            chunks.counters().apply(&change);
        }
        report.records_freed = dead.len() as u64;
        crate::failpoint!("gc::after_sweep");

        // Empty packs go now; sparse ones are rewritten below.
        let mut rewrite = Vec::new();
        let mut batch = catalog.batch();
        let mut empty = Vec::new();
        let mut change = StoreChange::default();
        for (&pack, &size) in &known {
            let l = live.get(&pack).copied().unwrap_or(0);
            if l == 0 {
                batch.delete_raw("packs", &pack.to_bytes())?;
                change.pack_removed(size);
                empty.push((pack, size));
            } else if l.saturating_mul(100) < size.saturating_mul(u64::from(live_share_percent)) {
                rewrite.push((pack, size));
            }
        }
        catalog.commit(batch)?;
        chunks.counters().apply(&change);
        for (pack, size) in empty {
            store.delete(pack).await?;
            report.packs_deleted += 1;
            report.bytes_reclaimed += size;
        }
        (rewrite, live_records)
    };
    op.bytes_total = rewrite.iter().map(|(_, s)| s).sum();
    ctx.put_operation(op)?;

    // ---- phase 2: rewrite sparse packs beside captures ----
    for (pack, size) in rewrite {
        if cancel.load(Ordering::Acquire) {
            return Err(Error::Canceled);
        }
        ctx.wait_for_space(op, cancel).await?;
        let records = live_records.get(&pack).cloned().unwrap_or_default();
        let mut writer = chunks.new_pack()?;
        let mut moved = Vec::with_capacity(records.len());
        for (id, loc) in &records {
            let bytes = store.get_range(pack, loc.offset, RECORD_HEADER_LEN + loc.stored_len as usize).await?;
            check_copy(&bytes, *id, pack)?;
            moved.push((*id, *loc, writer.append_copy(&bytes, *loc)?));
        }
        let new_size = writer.len();
        let new_pack = writer.seal(store).await?;
        crate::failpoint!("gc::after_rewrite_seal");
        {
            let _index = chunks.lock_index().await;
            let mut batch = catalog.batch();
            for (id, old, new) in &moved {
                // Only records still where they were move; references are kept as they are now.
                if let Some(cur) = chunks.lookup(*id)?
                    && cur.pack == old.pack
                    && cur.offset == old.offset
                {
                    batch.put_raw("chunks", &id.0, &ChunkLocation { refs: cur.refs, ..*new }.encode())?;
                }
            }
            batch.put_raw("packs", &new_pack.to_bytes(), &crate::base::format::encode_pack_entry(new_size))?;
            batch.delete_raw("packs", &pack.to_bytes())?;
            batch.put_raw("meta", &retired_key(pack), &[])?;
            catalog.commit(batch)?;
            let mut change = StoreChange::default();
            change.pack_added(new_size);
            change.pack_removed(size);
            chunks.counters().apply(&change);
        }
        report.packs_rewritten += 1;
        report.bytes_reclaimed += size.saturating_sub(new_size);
        op.bytes_done += size;
        ctx.put_operation(op)?;
    }
    Ok(report)
}

/// A record about to be copied must be the one the index names, intact: a corrupt record is
/// never spread into a new pack as if it were good.
fn check_copy(bytes: &[u8], id: ChunkId, pack: PackId) -> Result<()> {
    let where_ = std::path::PathBuf::from(format!("pack {pack}"));
    let header = RecordHeader::decode(bytes, &where_)?;
    let stored = bytes.get(RECORD_HEADER_LEN..).unwrap_or(&[]);
    if header.id != id.0 || crc32fast::hash(stored) != header.stored_crc || stored.len() != header.stored_len as usize {
        return Err(Error::corrupt(where_, format!("record of chunk {id} fails its checks; not copied")));
    }
    Ok(())
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records freed, {} packs deleted, {} rewritten, {} bytes reclaimed",
            self.records_freed, self.packs_deleted, self.packs_rewritten, self.bytes_reclaimed
        )
    }
}
