//! Long-running operations (capture, hydration, copy, GC, verify): persisted state and
//! progress. The engine runs them; the daemon only exposes them.

use serde::{Deserialize, Serialize};

use crate::base::ids::OperationId;
use crate::catalog::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationKind {
    Capture,
    Hydration,
    Copy,
    Gc,
    Verify,
}

impl OperationKind {
    /// GC and verify are taken up again at the next start, as the same operation, from what
    /// their record saved (their phases are idempotent; a store verify keeps a cursor). The
    /// other kinds settle at start: a capture fails; a hydration goes on as the same
    /// operation too, from the disk's local map (see `resume_hydrations`).
    pub fn resumes(self) -> bool {
        matches!(self, OperationKind::Gc | OperationKind::Verify)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationState {
    Running,
    Succeeded,
    Failed { error: String },
    Canceled,
}

impl OperationState {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, OperationState::Running)
    }
}

/// An operation as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    pub id: OperationId,
    pub kind: OperationKind,
    /// What it works on, e.g. `restore-point/<id>`.
    pub target: String,
    pub state: OperationState,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Why the operation waits, when it does (e.g. free space below the watermark).
    #[serde(default)]
    pub paused: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// What the operation found or did (a GC report, a verify report), when it has ended.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// What a resumable operation needs to go on after a restart (its settings, and how far
    /// it got); dropped when it ends.
    #[serde(default)]
    pub resume: Option<serde_json::Value>,
    /// A remark on its history, e.g. that it resumed after the daemon restarted.
    #[serde(default)]
    pub note: Option<String>,
}

impl OperationRecord {
    /// A new running operation.
    pub(crate) fn start(kind: OperationKind, target: String, bytes_total: u64) -> Self {
        let now = crate::disk::now_ms();
        Self {
            id: OperationId::new(),
            kind,
            target,
            state: OperationState::Running,
            bytes_done: 0,
            bytes_total,
            paused: None,
            created_at_ms: now,
            updated_at_ms: now,
            result: None,
            resume: None,
            note: None,
        }
    }

    /// Progress in percent (100 when there is nothing to do).
    pub fn percent(&self) -> f64 {
        if self.bytes_total == 0 {
            return if self.state.is_terminal() { 100.0 } else { 0.0 };
        }
        #[allow(clippy::cast_precision_loss, reason = "a percentage")]
        let p = self.bytes_done as f64 * 100.0 / self.bytes_total as f64;
        p.min(100.0)
    }
}

impl Record for OperationRecord {
    const CF: &'static str = "operations";
    fn key(&self) -> [u8; 16] {
        self.id.to_bytes()
    }
}

/// Longest time between two prunings of ended operations.
const PRUNE_EVERY_MS: u64 = 3600 * 1000;

impl crate::engine::Engine {
    /// Forgets ended operations past the retention (`EngineConfig::operation_retention`),
    /// keeping the newest `operations_kept` of them whatever their age, at most once per
    /// retention period or hour: the operations table would otherwise grow with every
    /// capture, and listings and metrics with it. A failure is logged and retried later.
    pub(crate) fn prune_operations_now_and_then(&self) {
        use std::sync::atomic::Ordering;
        let config = &self.inner.config;
        let retention_ms = u64::try_from(config.operation_retention.as_millis()).unwrap_or(u64::MAX);
        let now = crate::disk::now_ms();
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

    fn prune_operations(&self, ended_before_ms: u64, keep: usize) -> crate::base::error::Result<()> {
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
