//! Revert in place: live disks of a group go back to one of their restore points. Only
//! chunks that may differ are looked at (those with a chunk map entry newer than the restore
//! point, and those dirty in change tracking since the last capture; every chunk when
//! tracking is untrusted), and of those only the ones whose content differs are rewritten,
//! so the cost follows what changed, not the disk size.
//!
//! The disks must be detached: each is held for the whole revert (attaching, and I/O from
//! anyone else, fail Busy meanwhile). A restore point of the current state is taken first
//! unless asked not to. Rewrites go through the disk's write path, so change tracking marks
//! them: the next restore point stores them as an increment, deduplicated against the
//! restore point reverted to. The revert runs as an engine task of its own, so a caller that
//! goes away does not stop it halfway; a revert cut short by a stop leaves the disk partly
//! reverted (every rewritten chunk whole), and running it again finishes it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};
use crate::base::format::BLOCK_SIZE;
use crate::base::ids::{DiskId, Name, RestorePointId};
use crate::catalog::restore_point::{CreateRestorePoint, ProvisioningState, RestorePointRecord};
use crate::chunk_map;
use crate::context::Context;
use crate::disk::access::Hold;
use crate::rp::hooks::Registry;
use crate::store::chunk::{ChunkId, is_zero};
use crate::sys::IoBuf;

/// What a caller asks for when reverting disks in place.
#[derive(Debug, Clone, Default)]
pub struct RevertInPlace {
    pub restore_point: RestorePointId,
    /// Disks of the restore point to revert (live disk ids); empty: every one of them.
    pub disks: Vec<DiskId>,
    /// Name of the restore point of the current state taken first; `None`: take none.
    pub current_state: Option<String>,
}

/// What reverting one disk did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertedDisk {
    pub disk: DiskId,
    pub disk_name: Name,
    /// Chunks that may have differed, and were read to find out.
    pub chunks_compared: u64,
    /// Chunks whose content differed, and were rewritten (or trimmed, when zero).
    pub chunks_rewritten: u64,
    pub bytes_written: u64,
    pub bytes_trimmed: u64,
}

/// What a revert did.
#[derive(Debug, Clone)]
pub struct RevertReport {
    /// The restore point of the state before the revert, when one was taken.
    pub current_state: Option<RestorePointRecord>,
    pub disks: Vec<RevertedDisk>,
}

/// Reverts disks of a restore point's group in place (see the module doc).
pub(crate) async fn revert_in_place(
    ctx: &Arc<Context>,
    hooks: &Arc<Registry>,
    req: RevertInPlace,
) -> Result<RevertReport> {
    let (task_ctx, hooks) = (ctx.clone(), hooks.clone());
    tokio::spawn(async move { run(&task_ctx, &hooks, req).await })
        .await
        .map_err(|e| Error::io("revert in place", &ctx.config.data_dir, std::io::Error::other(e.to_string())))?
}

async fn run(ctx: &Arc<Context>, hooks: &Registry, req: RevertInPlace) -> Result<RevertReport> {
    let rp = ctx.restore_point(req.restore_point)?;
    if rp.state != ProvisioningState::Succeeded {
        return Err(Error::FailedPrecondition(format!("restore point {} is {:?}", rp.name, rp.state)));
    }
    let coll = super::collection::collection(ctx, rp.collection)?;
    coll.require_group("a revert in place")?;
    let group = ctx.group(coll.group)?;
    if let Some(bad) = req.disks.iter().find(|d| !rp.disks.iter().any(|x| x.disk == **d)) {
        return Err(Error::invalid("disks", format!("disk {bad} is not in restore point {}", rp.name)));
    }
    let targets: Vec<_> = rp.disks.iter().filter(|d| req.disks.is_empty() || req.disks.contains(&d.disk)).collect();
    let mut holds: Vec<Hold> = Vec::new();
    for d in &targets {
        let disk = ctx.disk(d.disk).map_err(|_| {
            Error::FailedPrecondition(format!(
                "disk {} of restore point {} is gone; restore it instead",
                d.disk_name, rp.name
            ))
        })?;
        if disk.lineage() != d.lineage || !group.disks.contains(&d.disk) {
            return Err(Error::FailedPrecondition(format!(
                "disk {} is no longer the disk restore point {} was taken of",
                disk.name(),
                rp.name
            )));
        }
        if disk.size_bytes() != d.size_bytes {
            return Err(Error::FailedPrecondition(format!(
                "disk {} is {} bytes, restore point {} holds {}; a disk does not shrink: restore it as a new disk",
                disk.name(),
                disk.size_bytes(),
                rp.name,
                d.size_bytes
            )));
        }
        holds.push(disk.hold(&format!("a revert to restore point {}", rp.name)).await?);
    }
    crate::failpoint!("revert::after_hold");
    let current_state = match req.current_state {
        Some(name) => Some(capture_current_state(ctx, hooks, &rp, coll.id, name).await?),
        None => None,
    };
    // No restore point of the group is created or deleted while the disks are rewritten: the
    // one reverted to stays readable to the end.
    let _slot = ctx.jobs.begin_creation(coll.group, coll.name.as_str())?;
    let mut disks = Vec::new();
    for hold in &holds {
        disks.push(revert_disk(ctx, &rp, hold).await?);
    }
    tracing::info!(restore_point = %rp.name, disks = disks.len(), rewritten = disks.iter().map(|d| d.chunks_rewritten).sum::<u64>(), "disks reverted in place");
    Ok(RevertReport { current_state, disks })
}

/// Takes the restore point of the current state and waits for its capture.
async fn capture_current_state(
    ctx: &Arc<Context>,
    hooks: &Registry,
    rp: &RestorePointRecord,
    collection: crate::base::ids::CollectionId,
    name: String,
) -> Result<RestorePointRecord> {
    let req = CreateRestorePoint {
        name,
        description: format!("the state before a revert to restore point {}", rp.name),
        ..Default::default()
    };
    let (created, op) = super::create::create_restore_point(ctx, hooks, collection, req).await?;
    loop {
        let op = ctx.operation(op.id)?;
        if op.state.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let created = ctx.restore_point(created.id)?;
    match &created.state {
        ProvisioningState::Succeeded => Ok(created),
        other => Err(Error::FailedPrecondition(format!(
            "the restore point of the current state ({}) ended {other:?}; nothing was reverted",
            created.name
        ))),
    }
}

async fn revert_disk(ctx: &Arc<Context>, rp: &RestorePointRecord, hold: &Hold) -> Result<RevertedDisk> {
    let disk = hold.disk();
    let reader = ctx.disk_restore_point(rp.id, disk.id())?;
    let cs = reader.chunk_size_bytes();
    let chunks = reader.chunk_count();
    let tracker = disk.tracker();
    let candidates: BTreeSet<u64> = if tracker.untrusted() {
        (0..chunks).collect()
    } else {
        let mut c: BTreeSet<u64> =
            chunk_map::changed(&ctx.catalog, disk.lineage(), rp.seq, u64::MAX)?.into_iter().collect();
        let dirty = tracker.active_blocks().into_iter().chain(tracker.closed_blocks());
        c.extend(dirty.map(|b| b * BLOCK_SIZE / cs));
        c.into_iter().filter(|&i| i < chunks).collect()
    };
    let mut out = RevertedDisk {
        disk: disk.id(),
        disk_name: disk.name().clone(),
        chunks_compared: 0,
        chunks_rewritten: 0,
        bytes_written: 0,
        bytes_trimmed: 0,
    };
    for index in candidates {
        let start = index * cs;
        let len = (reader.size_bytes() - start).min(cs);
        let want = reader.chunk_ref(index)?.content().unwrap_or_else(|| ChunkId::zero(len));
        let have = disk.read_held(start, len).await?;
        out.chunks_compared += 1;
        if ChunkId::of(&have) == want {
            continue;
        }
        let data = reader.read_chunk(index).await?;
        if is_zero(&data) {
            disk.punch_as(start, len, false, true).await?;
            out.bytes_trimmed += len;
        } else {
            disk.write_as(start, IoBuf::from_slice(&data), false, true).await?;
            out.bytes_written += len;
        }
        out.chunks_rewritten += 1;
        crate::failpoint!("revert::after_chunk");
    }
    disk.flush_held().await?;
    tracing::info!(disk = %disk.name(), restore_point = %rp.name, compared = out.chunks_compared, rewritten = out.chunks_rewritten, "disk reverted in place");
    Ok(out)
}
