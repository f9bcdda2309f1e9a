//! Creating a restore point: the checks and claims, quiesce hooks, the freeze (gates closed,
//! epochs switched, captures registered, gates reopened), thaw, the `Creating` record, and the
//! hand-over to the capture.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::format::META_NEXT_SEQ_KEY;
use crate::base::ids::{CollectionId, DiskId, LineageId, Name, RestorePointId};
use crate::catalog::restore_point::{CreateRestorePoint, DiskRestorePoint, ProvisioningState, RestorePointRecord};
use crate::chunk_map;
use crate::context::Context;
use crate::disk::Disk;
use crate::disk::capture::PendingCapture;
use crate::jobs::CreationSlot;
use crate::jobs::operation::{OperationKind, OperationRecord};
use crate::rp::capture::Armed;
use crate::rp::collection::CollectionRecord;
use crate::rp::hooks::{HookContext, QuiesceHook, Registry, quiesce_all, thaw_all};

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
    hook_ctx: HookContext,
    slot: CreationSlot,
    gc_pass: tokio::sync::OwnedRwLockReadGuard<()>,
}

fn lineage_has_restore_point(all: &[RestorePointRecord], lineage: LineageId) -> bool {
    all.iter().any(|rp| rp.state == ProvisioningState::Succeeded && rp.disks.iter().any(|d| d.lineage == lineage))
}

pub(crate) async fn next_seq(ctx: &Arc<Context>) -> Result<u64> {
    let current = match ctx.catalog.get_raw("meta", META_NEXT_SEQ_KEY)? {
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
pub(crate) async fn create_restore_point(
    ctx: &Arc<Context>,
    hooks: &Registry,
    collection: CollectionId,
    req: CreateRestorePoint,
) -> Result<(RestorePointRecord, OperationRecord)> {
    let creation = check_creation(ctx, hooks, collection, req).await?;
    let op = OperationRecord::start(OperationKind::Capture, format!("restore-point/{}", creation.rp_id), 0);
    let cancel = ctx.jobs.register(op.id, false);
    let (reply, answer) = tokio::sync::oneshot::channel();
    let task_ctx = ctx.clone();
    ctx.jobs.spawn(op.id, async move { run_creation(&task_ctx, creation, op, cancel, reply).await });
    answer.await.unwrap_or_else(|_| {
        Err(Error::io(
            "create restore point",
            &ctx.config.data_dir,
            std::io::Error::other("the creation job ended without an answer"),
        ))
    })
}

/// The checks of a creation, and the claims it holds to its end; nothing changes yet.
async fn check_creation(
    ctx: &Arc<Context>,
    hooks: &Registry,
    collection: CollectionId,
    req: CreateRestorePoint,
) -> Result<Creation> {
    let name = Name::new(req.name)?;
    if req.description.len() > 4096 {
        return Err(Error::invalid("description", "longer than 4096 bytes"));
    }
    let coll = super::collection::collection(ctx, collection)?;
    coll.require_group("creating a restore point")?;
    let group = ctx.group(coll.group)?;
    if let Some(bad) = req.exclude_disks.iter().find(|d| !group.disks.contains(d)) {
        return Err(Error::invalid("exclude_disks", format!("disk {bad} is not in group {}", group.name)));
    }
    let included: Vec<DiskId> = group.disks.iter().filter(|d| !req.exclude_disks.contains(d)).copied().collect();
    if included.is_empty() {
        return Err(Error::invalid("exclude_disks", format!("excludes every disk of group {}", group.name)));
    }
    let slot = ctx.jobs.begin_creation(coll.group, coll.name.as_str())?;
    // Held until the capture ends: GC's sweep waits for it (and a capture for a sweep).
    let gc_pass = ctx.gc_gate.clone().read_owned().await;
    let all = ctx.catalog.list::<RestorePointRecord>()?;
    // Failed restore points stay listed until deleted, but hold no data and no place.
    let in_coll =
        all.iter().filter(|r| r.collection == coll.id && !matches!(r.state, ProvisioningState::Failed { .. })).count();
    if in_coll >= coll.max_restore_points as usize {
        return Err(Error::LimitReached(format!(
            "collection {} holds {in_coll} restore points, its limit is {}",
            coll.name, coll.max_restore_points
        )));
    }
    if all.iter().any(|r| r.collection == coll.id && r.name == name) {
        return Err(Error::already_exists(format!("restore point {name} in collection {}", coll.name)));
    }
    let disks: Vec<Arc<Disk>> = included.iter().map(|d| ctx.disk(*d)).collect::<Result<_>>()?;
    // A restored disk's first restore point is an increment over its base.
    let first: Vec<bool> =
        disks.iter().map(|d| !lineage_has_restore_point(&all, d.lineage()) && d.source().is_none()).collect();
    let mut hooks: Vec<Arc<dyn QuiesceHook>> = hooks.of(group.id);
    if let Some(h) = &coll.hook {
        hooks.push(Arc::new(h.clone()));
    }
    let hook_ctx = HookContext {
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
        hook_ctx,
        slot,
        gc_pass,
    })
}

/// The creation job: hooks and freeze, the `Creating` record (then the caller has its
/// answer), and the capture.
async fn run_creation(
    ctx: &Arc<Context>,
    c: Creation,
    op: OperationRecord,
    cancel: Arc<AtomicBool>,
    reply: tokio::sync::oneshot::Sender<Result<(RestorePointRecord, OperationRecord)>>,
) {
    let Creation { rp_id, name, req, coll, configuration, disks, first, hooks, hook_ctx, slot, gc_pass } = c;
    let (achieved, note) = quiesce_all(&hooks, &hook_ctx).await;
    let frozen = if cancel.load(Ordering::Acquire) {
        Err(Error::Canceled)
    } else {
        freeze_and_register(ctx, &disks, &first, rp_id).await
    };
    thaw_all(&hooks, &hook_ctx).await;
    let recorded = match frozen {
        Ok((window, armed)) => {
            record_creation(ctx, rp_id, name, req, &coll, configuration, (achieved, note), window, &armed, op)
                .await
                .map(|(rp, op)| (rp, op, armed))
        }
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
    let task_ctx = ctx.clone();
    let capture = async move { super::capture::run_capture(&task_ctx, rp, op, armed, cancel, slot).await };
    ctx.background.run_on_own_thread("cairn-capture", capture).await;
    drop(gc_pass);
}

/// Records the frozen restore point as `Creating`, with its operation and the next seq.
#[allow(clippy::too_many_arguments)]
async fn record_creation(
    ctx: &Arc<Context>,
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
    let _admin = ctx.admin.lock().await;
    let seq = next_seq(ctx).await?;
    let now = now_ms();
    let disks = armed
        .caps()
        .iter()
        .map(|(d, cap)| {
            Ok(DiskRestorePoint {
                disk: d.id(),
                disk_name: d.name().clone(),
                lineage: d.lineage(),
                base: chunk_map::lineage_base(&ctx.catalog, d.lineage())?,
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
                merkle_root: None,
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
        merkle_root: None,
    };
    let mut batch = ctx.catalog.batch();
    batch.put(&rp)?;
    batch.put(&op)?;
    batch.put_raw("meta", META_NEXT_SEQ_KEY, &(seq + 1).to_be_bytes())?;
    crate::failpoint!("create::before_record");
    ctx.catalog.commit(batch)?;
    Ok((rp, op))
}

/// The freeze: gates closed, epochs switched, captures registered, gates reopened.
/// Nothing here syncs or copies data.
async fn freeze_and_register(
    ctx: &Arc<Context>,
    disks: &[Arc<Disk>],
    first: &[bool],
    rp_id: RestorePointId,
) -> Result<(Duration, Armed)> {
    let build = |d: &Arc<Disk>, first: bool| {
        let tracker = d.tracker();
        let full = first || tracker.untrusted();
        let spill = ctx.spill_dir.join(format!("{rp_id}-{}.blocks", d.id()));
        let cap = PendingCapture::new(
            tracker,
            full,
            d.chunk_size_bytes(),
            d.size_bytes(),
            spill,
            ctx.config.preserve_mem_bytes,
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
    let mut freeze = crate::rp::group::Freeze::begin(disks.to_vec(), ctx.freeze_stats.clone()).await;
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
