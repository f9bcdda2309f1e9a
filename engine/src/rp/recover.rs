//! Recovery at open: restore points a stop cut short become `Failed`, their operations are
//! settled, and each disk's closed change-tracking epoch is consumed or merged back.

use std::sync::Arc;

use crate::base::error::{Error, Result};
use crate::catalog::restore_point::{ProvisioningState, RestorePointRecord};
use crate::context::Context;
use crate::disk::Disk;
use crate::jobs::operation::{OperationKind, OperationRecord, OperationState};

/// After a restart: restore points still `Creating` become `Failed` (their partial entries
/// dropped), and each disk's closed epoch is consumed if a succeeded restore point captured
/// it, else merged back into change tracking so the next capture misses nothing.
pub(crate) async fn recover_captures(ctx: &Arc<Context>) -> Result<()> {
    let all = ctx.catalog.list::<RestorePointRecord>()?;
    for mut rp in all.iter().filter(|r| r.state == ProvisioningState::Creating).cloned() {
        tracing::warn!(restore_point = %rp.name, "restore point was being created when the engine stopped; marking it failed");
        let err = Error::FailedPrecondition("interrupted: the engine stopped before the capture finished".into());
        super::capture::fail_capture(ctx, &mut rp, &err).await?;
    }
    let all = ctx.catalog.list::<RestorePointRecord>()?;
    for mut op in ctx.catalog.list::<OperationRecord>()? {
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
        ctx.put_operation(&mut op)?;
    }
    let all = ctx.catalog.list::<RestorePointRecord>()?;
    let disks: Vec<Arc<Disk>> = ctx.state().disks.values().map(|e| e.disk.clone()).collect();
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

/// Gives every `Succeeded` restore point written before Merkle roots existed its roots,
/// hashed from its chunk map as it is now (once: each is then recorded), so that every
/// restore point the engine serves carries one.
pub(crate) fn record_missing_roots(ctx: &Arc<Context>) -> Result<()> {
    let all = ctx.catalog.list::<RestorePointRecord>()?;
    let missing = all.into_iter().filter(|r| r.state == ProvisioningState::Succeeded && r.merkle_root.is_none());
    for mut rp in missing {
        for d in &mut rp.disks {
            let root =
                crate::chunk_map::merkle_root(&ctx.catalog, d.lineage, rp.seq, d.size_bytes, d.chunk_size_bytes)?;
            d.merkle_root = Some(root);
        }
        rp.merkle_root = rp.root_of_disks();
        tracing::info!(restore_point = %rp.name, root = ?rp.merkle_root, "recorded the Merkle roots of a restore point from before roots");
        let mut batch = ctx.catalog.batch();
        batch.put(&rp)?;
        ctx.catalog.commit(batch)?;
    }
    Ok(())
}
