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
        let now = crate::base::clock::now_ms();
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
