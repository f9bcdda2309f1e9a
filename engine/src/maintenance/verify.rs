//! Verify: re-reads stored records and checks them end to end (record header, CRC of the
//! stored bytes, decoding, BLAKE3 of the content), and names the restore points and disks
//! each corrupt record affects; it also hashes every restore point's chunk map and compares
//! it with the Merkle root the restore point recorded (an entry swapped for another good
//! record reads back as valid, wrong data: only the root finds it). A corrupt record is marked so that no capture deduplicates
//! against it or builds a delta on it: the next capture of that content stores it anew,
//! which heals every restore point that referenced it by hash.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::base::error::{Error, Result};
use crate::base::format::decode_chunk_map_key;
use crate::base::ids::{LineageId, PackId, RestorePointId};
use crate::base::merkle::Root;
use crate::catalog::restore_point::{ProvisioningState, RestorePointRecord};
use crate::chunk_map;
use crate::context::Context;
use crate::jobs::operation::{OperationKind, OperationRecord};
use crate::store::chunk::{ChunkId, ChunkLocation, ChunkRef};

/// What checking one record found.
enum Checked {
    /// Intact; its stored bytes.
    Good(u64),
    /// Fails its checks where the index names it: the pack and the reason.
    Corrupt(PackId, String),
    /// Freed (or still moving) meanwhile: nothing to check.
    Gone,
}

/// What to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyTarget {
    /// Every record in the store.
    Store,
    /// Every chunk one restore point reads (through deltas and bases).
    RestorePoint(RestorePointId),
}

/// A restore point disk that reads a corrupt record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affected {
    pub restore_point: RestorePointId,
    pub restore_point_name: String,
    pub disk_name: String,
}

/// One corrupt record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptRecord {
    pub chunk: String,
    pub pack: String,
    pub reason: String,
    pub affected: Vec<Affected>,
}

/// How often a store verify saves its cursor, at least.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What a verify keeps in its operation to resume after a restart: its target and, for the
/// store, the last record checked (records go in index order) and what it found so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct VerifyProgress {
    /// `None`: the whole store.
    #[serde(default)]
    restore_point: Option<RestorePointId>,
    #[serde(default)]
    after: Option<[u8; 32]>,
    #[serde(default)]
    records_checked: u64,
    #[serde(default)]
    bytes_checked: u64,
    /// Corrupt records found so far: chunk, pack, reason.
    #[serde(default)]
    bad: Vec<([u8; 32], String, String)>,
}

/// A restore point whose chunk map no longer hashes to the Merkle root it recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMismatch {
    pub restore_point: RestorePointId,
    pub restore_point_name: String,
    /// Empty for the restore point's own root (configuration and disk roots).
    pub disk_name: String,
    /// `None`: no root was recorded.
    pub recorded: Option<Root>,
    pub computed: Root,
}

/// What a verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub records_checked: u64,
    pub bytes_checked: u64,
    pub corrupt: Vec<CorruptRecord>,
    /// Disk restore points and restore points whose roots were hashed from the chunk map.
    #[serde(default)]
    pub roots_checked: u64,
    #[serde(default)]
    pub root_mismatches: Vec<RootMismatch>,
}

/// Hashes `rp`'s disk restore points from the chunk map and compares them, and the restore
/// point's own root, with what it recorded. A restore point deleted meanwhile is skipped.
fn check_roots(ctx: &Arc<Context>, rp: &RestorePointRecord, report: &mut VerifyReport) -> Result<()> {
    let mismatch = |disk_name: &str, recorded: Option<Root>, computed: Root| RootMismatch {
        restore_point: rp.id,
        restore_point_name: rp.name.to_string(),
        disk_name: disk_name.to_owned(),
        recorded,
        computed,
    };
    for d in &rp.disks {
        let computed = match ctx.disk_restore_point_unchecked(rp.id, d.disk).and_then(|r| r.merkle_root()) {
            Ok(root) => root,
            Err(e) if e.kind() == crate::base::error::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        report.roots_checked += 1;
        if d.merkle_root != Some(computed) {
            tracing::error!(restore_point = %rp.name, disk = %d.disk_name, recorded = ?d.merkle_root, %computed, "chunk map does not match the recorded Merkle root");
            report.root_mismatches.push(mismatch(d.disk_name.as_str(), d.merkle_root, computed));
        }
    }
    // The disks' recorded roots with the configuration make the restore point's.
    let Some(computed) = rp.root_of_disks() else { return Ok(()) };
    report.roots_checked += 1;
    if rp.merkle_root != Some(computed) {
        report.root_mismatches.push(mismatch("", rp.merkle_root, computed));
    }
    Ok(())
}

/// Starts a verify of the store or of one restore point; returns its operation at once.
/// The report lands in the operation's `result`.
pub(crate) async fn verify(ctx: &Arc<Context>, target: VerifyTarget) -> Result<OperationRecord> {
    let (label, progress) = match target {
        VerifyTarget::Store => ("store".to_owned(), VerifyProgress::default()),
        VerifyTarget::RestorePoint(id) => {
            let rp = ctx.restore_point(id)?;
            if rp.state != ProvisioningState::Succeeded {
                return Err(Error::FailedPrecondition(format!("restore point {} is {:?}", rp.name, rp.state)));
            }
            (format!("restore-point/{id}"), VerifyProgress { restore_point: Some(id), ..Default::default() })
        }
    };
    let mut op = OperationRecord::start(OperationKind::Verify, label, 0);
    op.resume = serde_json::to_value(&progress).ok();
    ctx.put_operation(&mut op)?;
    spawn_verify(ctx, op.clone(), progress);
    Ok(op)
}

/// Takes up a verify a stop cut short: a store verify from its saved cursor, a restore
/// point's from the start.
pub(crate) fn resume_verify(ctx: &Arc<Context>, op: OperationRecord) -> Result<()> {
    let progress: VerifyProgress = op.saved()?;
    tracing::info!(op = %op.id, records_checked = progress.records_checked, "verify resumes");
    spawn_verify(ctx, op, progress);
    Ok(())
}

fn spawn_verify(ctx: &Arc<Context>, mut op: OperationRecord, progress: VerifyProgress) {
    let cancel = ctx.jobs.register(op.id, true);
    let task_ctx = ctx.clone();
    ctx.jobs.spawn(op.id, async move {
        let result = match progress.restore_point {
            None => verify_store(&task_ctx, &mut op, progress, &cancel).await,
            Some(id) => match task_ctx.restore_point(id) {
                Ok(rp) => verify_restore_point(&task_ctx, &rp, &mut op, &cancel).await,
                Err(e) => Err(e),
            },
        };
        if let Ok(report) = &result
            && !report.corrupt.is_empty()
        {
            tracing::error!(corrupt = report.corrupt.len(), "verify found corrupt records");
        }
        let outcome = crate::jobs::report(result);
        super::operations::settle_resumable(&task_ctx, &mut op, outcome);
    });
}

async fn verify_store(
    ctx: &Arc<Context>,
    op: &mut OperationRecord,
    mut progress: VerifyProgress,
    cancel: &AtomicBool,
) -> Result<VerifyReport> {
    let chunks = &ctx.chunks;
    let mut records: Vec<(ChunkId, ChunkLocation)> = Vec::new();
    chunks.catalog().scan("chunks", &[], &[], |k, v| {
        let id: [u8; 32] = k.try_into().map_err(|_| Error::corrupt("catalog/chunks", "bad chunk key"))?;
        records.push((ChunkId(id), ChunkLocation::decode(v)?));
        Ok(true)
    })?;
    crate::failpoint!("verify::after_snapshot");
    // The index scans in key order, so the records up to the cursor were checked already.
    let start = records.partition_point(|(id, _)| progress.after.is_some_and(|a| id.0 <= a));
    op.bytes_total = records.iter().map(|(_, l)| u64::from(l.stored_len)).sum();
    op.bytes_done = records[..start].iter().map(|(_, l)| u64::from(l.stored_len)).sum();
    let mut saved = Instant::now();
    for (i, (id, loc)) in records.iter().enumerate().skip(start) {
        if cancel.load(Ordering::Acquire) {
            return Err(Error::Canceled);
        }
        match check_current(ctx, *id, *loc).await? {
            Checked::Good(bytes) => progress.bytes_checked += bytes,
            Checked::Corrupt(pack, reason) => progress.bad.push((id.0, pack.to_string(), reason)),
            Checked::Gone => {}
        }
        progress.records_checked += 1;
        progress.after = Some(id.0);
        crate::failpoint!("verify::after_record");
        op.bytes_done += u64::from(loc.stored_len);
        if i % 256 == 255 || saved.elapsed() >= PROGRESS_EVERY {
            op.resume = serde_json::to_value(&progress).ok();
            ctx.put_operation(op)?;
            saved = Instant::now();
        }
    }
    let mut report = VerifyReport {
        records_checked: progress.records_checked,
        bytes_checked: progress.bytes_checked,
        ..Default::default()
    };
    for rp in ctx.catalog.list::<RestorePointRecord>()?.iter().filter(|r| r.state == ProvisioningState::Succeeded) {
        check_roots(ctx, rp, &mut report)?;
    }
    if !progress.bad.is_empty() {
        let ids: Vec<ChunkId> = progress.bad.iter().map(|(id, _, _)| ChunkId(*id)).collect();
        let affected = affected_by(ctx, &ids)?;
        for (id, pack, reason) in progress.bad {
            let id = ChunkId(id);
            chunks.mark_corrupt(id, &reason)?;
            report.corrupt.push(CorruptRecord {
                chunk: id.to_string(),
                pack,
                reason,
                affected: affected.get(&id).cloned().unwrap_or_default(),
            });
        }
    }
    Ok(report)
}

async fn verify_restore_point(
    ctx: &Arc<Context>,
    rp: &RestorePointRecord,
    op: &mut OperationRecord,
    cancel: &AtomicBool,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    check_roots(ctx, rp, &mut report)?;
    op.bytes_total = rp.disks.iter().map(|d| d.size_bytes).sum();
    op.bytes_done = 0;
    for d in &rp.disks {
        let reader = ctx.disk_restore_point_unchecked(rp.id, d.disk)?;
        for (index, r) in reader.allocated_chunks()? {
            if cancel.load(Ordering::Acquire) {
                return Err(Error::Canceled);
            }
            match reader.read_chunk(index).await {
                Ok(data) => report.bytes_checked += data.len() as u64,
                Err(e) if e.kind() == crate::base::error::ErrorKind::Corrupt => {
                    // Name the record at fault: the delta, its base, or the chunk itself.
                    let mut culprit = None;
                    for id in r.stored() {
                        if let Some(loc) = ctx.chunks.lookup(id)?
                            && let Checked::Corrupt(pack, reason) = check_current(ctx, id, loc).await?
                        {
                            ctx.chunks.mark_corrupt(id, &reason)?;
                            culprit = Some((id, pack.to_string(), reason));
                        }
                    }
                    // Every record checks good where the index names it now: the read
                    // raced GC moving one of them, and reads whole again.
                    if culprit.is_none()
                        && let Ok(data) = reader.read_chunk(index).await
                    {
                        report.bytes_checked += data.len() as u64;
                        report.records_checked += 1;
                        continue;
                    }
                    let (chunk, pack, reason) = culprit.unwrap_or_else(|| {
                        let content = match r {
                            ChunkRef::Delta { content, .. } => content,
                            ChunkRef::Full(id) => id,
                            ChunkRef::Zero => ChunkId([0; 32]),
                        };
                        (content, String::new(), e.to_string())
                    });
                    report.corrupt.push(CorruptRecord {
                        chunk: chunk.to_string(),
                        pack,
                        reason,
                        affected: vec![Affected {
                            restore_point: rp.id,
                            restore_point_name: rp.name.to_string(),
                            disk_name: d.disk_name.to_string(),
                        }],
                    });
                }
                Err(e) => return Err(e),
            }
            report.records_checked += 1;
        }
        op.bytes_done += d.size_bytes;
        ctx.put_operation(op)?;
    }
    Ok(report)
}

/// Checks record `id`, which the index named at `loc` when the verify listed it. GC moves
/// live records to new packs (deleting the old pack one run later) and frees dead ones
/// while a verify runs, so a check that fails is repeated where the index names the
/// record now: only a record that fails where the index still names it is corrupt.
async fn check_current(ctx: &Arc<Context>, id: ChunkId, mut loc: ChunkLocation) -> Result<Checked> {
    let chunks = &ctx.chunks;
    // Each retry needs GC to have moved the record once more; a few cover any real run.
    for _ in 0..8 {
        let failure = match chunks.check_record(id, &loc).await {
            Ok(bytes) => return Ok(Checked::Good(bytes)),
            Err(e) if e.kind() == crate::base::error::ErrorKind::Corrupt => e,
            Err(e) => return Err(e),
        };
        match chunks.lookup(id)? {
            Some(now) if (now.pack, now.offset) == (loc.pack, loc.offset) => {
                return Ok(Checked::Corrupt(loc.pack, failure.to_string()));
            }
            Some(now) => loc = now,
            None => return Ok(Checked::Gone),
        }
    }
    tracing::warn!(chunk = %id, "record kept moving while verified; left for the next verify");
    Ok(Checked::Gone)
}

/// For each of `ids`, the restore point disks whose view reads it: an entry at seq s for
/// chunk i is what every restore point of the lineage from s up to (not including) the
/// next newer entry for i reads.
fn affected_by(ctx: &Arc<Context>, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Vec<Affected>>> {
    let rps = ctx.catalog.list::<RestorePointRecord>()?;
    let mut by_lineage: HashMap<LineageId, Vec<(u64, &RestorePointRecord, String)>> = HashMap::new();
    for rp in rps.iter().filter(|r| r.state == ProvisioningState::Succeeded) {
        for d in &rp.disks {
            by_lineage.entry(d.lineage).or_default().push((rp.seq, rp, d.disk_name.to_string()));
        }
    }
    let mut out: HashMap<ChunkId, Vec<Affected>> = HashMap::new();
    // (lineage, index) -> entries newest first, each with the ids it references.
    let mut last: Option<([u8; 16], u64)> = None;
    let mut newer_seq = u64::MAX;
    let mut hits: BTreeMap<(LineageId, u64, u64), Vec<ChunkId>> = BTreeMap::new();
    ctx.catalog.scan(chunk_map::CF, &[], &[], |k, v| {
        let Some((lineage, index, seq)) = decode_chunk_map_key(k) else { return Ok(true) };
        if last != Some((lineage, index)) {
            last = Some((lineage, index));
            newer_seq = u64::MAX;
        }
        let refs = ChunkRef::decode(v)?.stored();
        let bad: Vec<ChunkId> = refs.into_iter().filter(|id| ids.contains(id)).collect();
        if !bad.is_empty() {
            hits.insert((LineageId::from(uuid::Uuid::from_bytes(lineage)), seq, newer_seq), bad);
        }
        newer_seq = seq;
        Ok(true)
    })?;
    for ((lineage, from, until), bad) in hits {
        for (seq, rp, disk_name) in by_lineage.get(&lineage).map(Vec::as_slice).unwrap_or(&[]) {
            if *seq >= from && *seq < until {
                for id in &bad {
                    let list = out.entry(*id).or_default();
                    let a = Affected {
                        restore_point: rp.id,
                        restore_point_name: rp.name.to_string(),
                        disk_name: disk_name.clone(),
                    };
                    if !list.contains(&a) {
                        list.push(a);
                    }
                }
            }
        }
    }
    Ok(out)
}
