//! Upkeep of operation records: settling a resumable job's end, and resuming at open what a
//! stop cut short (writing, listing and pruning them is the context's).

use std::sync::Arc;

use crate::base::error::{Error, Result};
use crate::context::Context;
use crate::jobs::JobOutcome;
use crate::jobs::operation::{OperationKind, OperationRecord, OperationState};

/// Records the end of a resumable job. Stopped by a shutdown, it stays `Running` with
/// its saved progress, and resumes at the next start.
pub(crate) fn settle_resumable(ctx: &Arc<Context>, op: &mut OperationRecord, outcome: JobOutcome) {
    op.state = match outcome {
        Ok(report) => {
            op.result = Some(report);
            OperationState::Succeeded
        }
        Err(Error::Canceled) if ctx.jobs.closing() => {
            tracing::info!(op = %op.id, kind = ?op.kind, "parked by the shutdown; resumes at the next start");
            return;
        }
        Err(Error::Canceled) => OperationState::Canceled,
        Err(e) => {
            tracing::warn!(op = %op.id, kind = ?op.kind, error = %e, "operation failed");
            OperationState::Failed { error: e.to_string() }
        }
    };
    op.resume = None;
    if let Err(e) = ctx.put_operation(op) {
        tracing::error!(op = %op.id, error = %e, "could not record the end of an operation");
    }
}

/// At open: takes up every GC and verify a stop cut short, as the same operations.
pub(crate) fn resume_operations(ctx: &Arc<Context>) -> Result<()> {
    let ops = ctx.catalog.list::<OperationRecord>()?;
    for mut op in ops.into_iter().filter(|o| !o.state.is_terminal() && o.kind.resumes()) {
        op.note = Some("resumed after the engine restarted".into());
        op.paused = None;
        ctx.put_operation(&mut op)?;
        tracing::info!(op = %op.id, kind = ?op.kind, "resuming an operation the last stop cut short");
        let resumed = match op.kind {
            OperationKind::Gc => super::gc::resume_gc(ctx, op.clone()),
            _ => super::verify::resume_verify(ctx, op.clone()),
        };
        if let Err(e) = resumed {
            tracing::error!(op = %op.id, error = %e, "could not resume the operation");
            op.state = OperationState::Failed { error: format!("could not resume: {e}") };
            op.resume = None;
            ctx.put_operation(&mut op)?;
        }
    }
    Ok(())
}
