//! Upkeep of operation records: settling a resumable job's end, resuming at open what a stop
//! cut short, and forgetting ended operations past their retention.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::ids::OperationId;
use crate::engine::Engine;
use crate::jobs::JobOutcome;
use crate::jobs::operation::{OperationKind, OperationRecord, OperationState};

impl Engine {
    /// Records the end of a resumable job. Stopped by a shutdown, it stays `Running` with
    /// its saved progress, and resumes at the next start.
    pub(crate) fn settle_resumable(&self, op: &mut OperationRecord, outcome: JobOutcome) {
        op.state = match outcome {
            Ok(report) => {
                op.result = Some(report);
                OperationState::Succeeded
            }
            Err(Error::Canceled) if self.inner.jobs.closing() => {
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
        if let Err(e) = self.put_operation(op) {
            tracing::error!(op = %op.id, error = %e, "could not record the end of an operation");
        }
    }

    /// At open: takes up every GC and verify a stop cut short, as the same operations.
    pub(crate) fn resume_operations(&self) -> Result<()> {
        let ops = self.inner.catalog.list::<OperationRecord>()?;
        for mut op in ops.into_iter().filter(|o| !o.state.is_terminal() && o.kind.resumes()) {
            op.note = Some("resumed after the engine restarted".into());
            op.paused = None;
            self.put_operation(&mut op)?;
            tracing::info!(op = %op.id, kind = ?op.kind, "resuming an operation the last stop cut short");
            let resumed = match op.kind {
                OperationKind::Gc => self.resume_gc(op.clone()),
                _ => self.resume_verify(op.clone()),
            };
            if let Err(e) = resumed {
                tracing::error!(op = %op.id, error = %e, "could not resume the operation");
                op.state = OperationState::Failed { error: format!("could not resume: {e}") };
                op.resume = None;
                self.put_operation(&mut op)?;
            }
        }
        Ok(())
    }
}

/// Longest time between two prunings of ended operations.
const PRUNE_EVERY_MS: u64 = 3600 * 1000;

impl Engine {
    /// Forgets ended operations past the retention (`EngineConfig::operation_retention`),
    /// keeping the newest `operations_kept` of them whatever their age, at most once per
    /// retention period or hour: the operations table would otherwise grow with every
    /// capture, and listings and metrics with it. A failure is logged and retried later.
    pub(crate) fn prune_operations_now_and_then(&self) {
        use std::sync::atomic::Ordering;
        let config = &self.inner.config;
        let retention_ms = u64::try_from(config.operation_retention.as_millis()).unwrap_or(u64::MAX);
        let now = crate::base::clock::now_ms();
        let last = self.inner.operations_pruned_at_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) < retention_ms.min(PRUNE_EVERY_MS)
            || self
                .inner
                .operations_pruned_at_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        if let Err(e) = self.prune_operations(now.saturating_sub(retention_ms), config.operations_kept) {
            tracing::warn!(error = %e, "could not prune ended operations; retried later");
        }
    }

    fn prune_operations(&self, ended_before_ms: u64, keep: usize) -> Result<()> {
        let mut ended: Vec<OperationRecord> =
            self.inner.catalog.list::<OperationRecord>()?.into_iter().filter(|o| o.state.is_terminal()).collect();
        ended.sort_by_key(|o| std::cmp::Reverse(o.updated_at_ms));
        let mut batch = self.inner.catalog.batch();
        let mut pruned = 0usize;
        for op in ended.iter().skip(keep).filter(|o| o.updated_at_ms < ended_before_ms) {
            batch.delete::<OperationRecord>(op.id.to_bytes())?;
            pruned += 1;
        }
        if pruned > 0 {
            self.inner.catalog.commit(batch)?;
            tracing::info!(pruned, "forgot ended operations past their retention");
        }
        Ok(())
    }
}

impl Engine {
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
}

fn free_bytes(dir: &std::path::Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(|e| Error::io("statvfs data dir", dir, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
