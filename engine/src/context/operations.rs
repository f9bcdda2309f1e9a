//! Operation records on the context: read, list, cancel, write (forgetting ended ones past
//! their retention now and then), and the pause of a job while free space is short.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::ids::OperationId;
use crate::context::Context;
use crate::jobs::operation::OperationRecord;

/// Longest time between two prunings of ended operations.
const PRUNE_EVERY_MS: u64 = 3600 * 1000;

impl Context {
    /// Forgets ended operations past the retention (`EngineConfig::operation_retention`),
    /// keeping the newest `operations_kept` of them whatever their age, at most once per
    /// retention period or hour: the operations table would otherwise grow with every
    /// capture, and listings and metrics with it. A failure is logged and retried later.
    pub(crate) fn prune_operations_now_and_then(&self) {
        use std::sync::atomic::Ordering;
        let config = &self.config;
        let retention_ms = u64::try_from(config.operation_retention.as_millis()).unwrap_or(u64::MAX);
        let now = crate::base::clock::now_ms();
        let last = self.operations_pruned_at_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) < retention_ms.min(PRUNE_EVERY_MS)
            || self.operations_pruned_at_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            return;
        }
        if let Err(e) = self.prune_operations(now.saturating_sub(retention_ms), config.operations_kept) {
            tracing::warn!(error = %e, "could not prune ended operations; retried later");
        }
    }

    fn prune_operations(&self, ended_before_ms: u64, keep: usize) -> Result<()> {
        let mut ended: Vec<OperationRecord> =
            self.catalog.list::<OperationRecord>()?.into_iter().filter(|o| o.state.is_terminal()).collect();
        ended.sort_by_key(|o| std::cmp::Reverse(o.updated_at_ms));
        let mut batch = self.catalog.batch();
        let mut pruned = 0usize;
        for op in ended.iter().skip(keep).filter(|o| o.updated_at_ms < ended_before_ms) {
            batch.delete::<OperationRecord>(op.id.to_bytes())?;
            pruned += 1;
        }
        if pruned > 0 {
            self.catalog.commit(batch)?;
            tracing::info!(pruned, "forgot ended operations past their retention");
        }
        Ok(())
    }
}

impl Context {
    pub(crate) fn operation(&self, id: OperationId) -> Result<OperationRecord> {
        self.catalog.get::<OperationRecord>(id.to_bytes())?.ok_or_else(|| Error::not_found(format!("operation {id}")))
    }

    pub(crate) fn list_operations(&self) -> Result<Vec<OperationRecord>> {
        let mut ops = self.catalog.list::<OperationRecord>()?;
        ops.sort_by_key(|o| o.created_at_ms);
        Ok(ops)
    }

    /// Asks a running operation to stop; it ends `Canceled` (a capture's restore point
    /// ends `Failed`, reason canceled).
    pub(crate) fn cancel_operation(&self, id: OperationId) -> Result<OperationRecord> {
        let op = self.operation(id)?;
        if op.state.is_terminal() {
            return Err(Error::FailedPrecondition(format!("operation {id} already ended ({:?})", op.state)));
        }
        self.jobs.cancel(id);
        Ok(op)
    }

    /// Pauses while the data dir's free space is under the watermark, saying so in the
    /// operation, so guest writes never meet ENOSPC because of a background job.
    pub(crate) async fn wait_for_space(&self, op: &mut OperationRecord, cancel: &AtomicBool) -> Result<()> {
        loop {
            let free = free_bytes(&self.config.data_dir)?;
            let watermark = self.watermark_bytes.load(Ordering::Acquire);
            if free >= watermark {
                if op.paused.take().is_some() {
                    self.put_operation(op)?;
                    tracing::info!(op = %op.id, "free space back above the watermark; resuming");
                }
                return Ok(());
            }
            // A shutdown parks (hydration, GC, verify) or fails (a capture) a paused job at
            // once instead of waiting out its grace period for space that may never come.
            if cancel.load(Ordering::Acquire) || self.jobs.closing() {
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
        let mut batch = self.catalog.batch();
        batch.put(&*op)?;
        self.catalog.commit(batch)?;
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
