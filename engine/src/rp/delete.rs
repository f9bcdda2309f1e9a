//! Deleting a restore point at the cost of its own increment, and the check that no live
//! lineage (a restored disk, or its restore points) reads through it as its base.

use std::sync::Arc;

use crate::base::error::{Error, Result};
use crate::base::format::META_LINEAGE_PREFIX;
use crate::base::ids::{LineageId, RestorePointId};
use crate::catalog::restore_point::{ProvisioningState, RestorePointRecord};
use crate::chunk_map;
use crate::context::Context;
use crate::disk::Disk;
use crate::store::chunk_store::IndexDelta;

/// The first of `rps` some live lineage (a disk, or restore points of one) reads through as
/// its base, with that lineage.
pub(crate) fn restore_point_in_use_as_base<'a>(
    ctx: &Arc<Context>,
    rps: &'a [RestorePointRecord],
) -> Result<Option<(&'a RestorePointRecord, LineageId)>> {
    let mut bases = Vec::new();
    ctx.catalog.scan("meta", META_LINEAGE_PREFIX, META_LINEAGE_PREFIX, |k, v| {
        let id: [u8; 16] =
            k[META_LINEAGE_PREFIX.len()..].try_into().map_err(|_| Error::corrupt("catalog/meta", "bad lineage key"))?;
        let base: crate::catalog::restore_point::LineageBase =
            serde_json::from_slice(v).map_err(|e| Error::corrupt("catalog/meta", format!("lineage base: {e}")))?;
        bases.push((LineageId::from(uuid::Uuid::from_bytes(id)), base));
        Ok(true)
    })?;
    if bases.is_empty() {
        return Ok(None);
    }
    let all = ctx.catalog.list::<RestorePointRecord>()?;
    let live_disks: Vec<LineageId> = ctx.state().disks.values().map(|e| e.disk.lineage()).collect();
    for (lineage, base) in bases {
        let live = live_disks.contains(&lineage) || all.iter().any(|r| r.disks.iter().any(|d| d.lineage == lineage));
        if !live {
            continue;
        }
        if let Some(rp) = rps.iter().find(|r| r.seq == base.seq && r.disks.iter().any(|d| d.lineage == base.lineage)) {
            return Ok(Some((rp, lineage)));
        }
    }
    Ok(None)
}

/// Deletes a restore point, any of them, at the cost of its own increment: each chunk it
/// holds that a newer restore point (or the live disk's next capture) still reads through
/// is kept, the rest dropped with their references. What every other restore point reads
/// does not change. Refused while a restore point is being created in the collection, and
/// while a restored disk's history still reads through this one.
pub(crate) async fn delete_restore_point(ctx: &Arc<Context>, id: RestorePointId) -> Result<()> {
    let rp = ctx.restore_point(id)?;
    let coll = super::collection::collection(ctx, rp.collection)?;
    let _slot = ctx.jobs.begin_creation(coll.group, coll.name.as_str())?;
    let _admin = ctx.admin.lock().await;
    // Under the group's slot no creation runs: a restore point still `Creating` here is one
    // whose failure could not be recorded, and deleting it drops its partial entries.
    let rp = ctx.restore_point(id)?;
    if let Some((_, dependent)) = restore_point_in_use_as_base(ctx, std::slice::from_ref(&rp))? {
        return Err(Error::FailedPrecondition(format!(
            "restore point {} is the origin of restored disk history {dependent}; delete that first",
            rp.name
        )));
    }
    delete_restore_point_locked(ctx, &rp).await?;
    tracing::info!(restore_point = %rp.name, collection = %coll.name, "restore point deleted");
    Ok(())
}

/// Deletes one restore point; the caller holds the collection's creation slot and the
/// admin lock.
pub(crate) async fn delete_restore_point_locked(ctx: &Arc<Context>, rp: &RestorePointRecord) -> Result<()> {
    let all = ctx.catalog.list::<RestorePointRecord>()?;
    let mut batch = ctx.catalog.batch();
    let mut delta = IndexDelta::default();
    // A failed restore point's entries were dropped when it failed; one left `Creating`
    // holds the entries its capture committed, which nothing else reads.
    if rp.state == ProvisioningState::Creating {
        for d in &rp.disks {
            for chunk in chunk_map::drop_seq(&ctx.catalog, &mut batch, d.lineage, rp.seq)? {
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
            let live = !others.is_empty() && ctx.state().disks.values().any(|e| e.disk.lineage() == d.lineage);
            // The last restore point of a history takes everything with it, including what
            // earlier deletions left for the live disk.
            let upto = if others.is_empty() { u64::MAX } else { rp.seq };
            if others.is_empty() {
                // Tracking counts changes since this restore point, which takes the
                // history with it: the live disk's next capture must read everything
                // again (a restored disk's would otherwise read its base for chunks the
                // guest rewrote). Durable before the history goes.
                let live: Vec<Arc<Disk>> = ctx.state().disks.values().map(|e| e.disk.clone()).collect();
                for disk in live.iter().filter(|disk| disk.lineage() == d.lineage) {
                    disk.tracker().require_rescan()?;
                }
            }
            let drops = chunk_map::drop_range(&ctx.catalog, &mut batch, d.lineage, after, upto, next, live)?;
            for chunk in drops {
                delta.drop_ref(chunk);
            }
        }
    }
    batch.delete::<RestorePointRecord>(rp.id.to_bytes())?;
    crate::failpoint!("delete::before_commit");
    ctx.chunks.commit(batch, &delta).await
}
