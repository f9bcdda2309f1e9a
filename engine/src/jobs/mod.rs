//! The jobs layer: job slots and cancel flags, operation records, the background pool.
//! Uses base, sys and catalog.
//!
//! Background jobs: the tasks behind running operations, their cancel flags, and the
//! per-group "one creation (or deletion) of restore points at a time" rule.

pub(crate) mod background;
pub(crate) mod operation;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::base::error::{Error, Result};
use crate::base::ids::{GroupId, OperationId};

struct Job {
    cancel: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
    /// Shutdown cancels the job at once (it resumes at the next start) instead of waiting.
    park: bool,
}

#[derive(Default)]
struct Inner {
    running: HashMap<OperationId, Job>,
    /// Groups with a restore point being created or deleted, and the collection doing it.
    creating: HashMap<GroupId, String>,
    closing: bool,
}

/// Running background jobs of an engine.
#[derive(Default)]
pub(crate) struct Jobs {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jobs")
    }
}

/// Held while a restore point of a group is being created or deleted; dropping it lets the
/// next one in. Per group, not per collection: collections of one group (in several regions)
/// share the disks' histories and write gates, so a delete in one must never run while another
/// captures, and two freezes of the same disks must never overlap.
pub(crate) struct CreationSlot {
    jobs: Arc<Mutex<Inner>>,
    group: GroupId,
}

impl Drop for CreationSlot {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).creating.remove(&self.group);
    }
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the group's creation slot for collection `collection`, or says clearly that
    /// it is taken (and by which collection).
    pub(crate) fn begin_creation(&self, group: GroupId, collection: &str) -> Result<CreationSlot> {
        let mut inner = self.lock();
        if inner.closing {
            return Err(Error::FailedPrecondition("the engine is shutting down".into()));
        }
        if let Some(holder) = inner.creating.get(&group) {
            return Err(Error::FailedPrecondition(format!(
                "a restore point is already being created or deleted in collection {holder} (of the same group); \
                 wait for it to finish"
            )));
        }
        inner.creating.insert(group, collection.to_owned());
        Ok(CreationSlot { jobs: self.inner.clone(), group })
    }

    /// A cancel flag for a new operation's job. `park` jobs (hydration, GC, verify) are
    /// stopped at once on shutdown and resumed at the next start; the others are waited for.
    pub(crate) fn register(&self, op: OperationId, park: bool) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.lock().running.insert(op, Job { cancel: flag.clone(), task: None, park });
        flag
    }

    /// Runs `job` in the background as operation `op` (registered before).
    pub(crate) fn spawn(&self, op: OperationId, job: impl Future<Output = ()> + Send + 'static) {
        let inner = self.inner.clone();
        let handle = tokio::spawn(async move {
            job.await;
            inner.lock().unwrap_or_else(|p| p.into_inner()).running.remove(&op);
        });
        if let Some(job) = self.lock().running.get_mut(&op) {
            job.task = Some(handle);
        }
    }

    /// Asks a running job to stop; false when no such job runs.
    pub(crate) fn cancel(&self, op: OperationId) -> bool {
        match self.lock().running.get(&op) {
            Some(job) => {
                job.cancel.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Stops taking jobs, waits up to `grace` for running ones, then cancels the rest and
    /// waits for them to wind down.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        let handles: Vec<JoinHandle<()>> = {
            let mut inner = self.lock();
            inner.closing = true;
            for job in inner.running.values().filter(|j| j.park) {
                job.cancel.store(true, Ordering::Release);
            }
            inner.running.values_mut().filter_map(|j| j.task.take()).collect()
        };
        if handles.is_empty() {
            return;
        }
        tracing::info!(jobs = handles.len(), "waiting for background jobs before shutdown");
        let mut all = futures::future::join_all(handles);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            tracing::warn!("background jobs still running past the grace period; canceling them");
            for job in self.lock().running.values() {
                job.cancel.store(true, Ordering::Release);
            }
            all.await;
        }
    }
}

impl Jobs {
    /// Whether the engine is shutting down (a parked job then stays `Running` in the catalog,
    /// to be resumed at the next start).
    pub(crate) fn closing(&self) -> bool {
        self.lock().closing
    }
}

/// What ends a resumable job's operation (GC, verify): its report, or why it stopped.
pub(crate) type JobOutcome = Result<serde_json::Value>;

/// A job's report as its operation keeps it.
pub(crate) fn report<T: serde::Serialize>(result: Result<T>) -> JobOutcome {
    result.and_then(|r| serde_json::to_value(r).map_err(|e| Error::invalid("report", e.to_string())))
}

impl crate::jobs::operation::OperationRecord {
    /// What a resumable operation saved to go on with after a restart.
    pub(crate) fn saved<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        self.resume.clone().and_then(|v| serde_json::from_value(v).ok()).ok_or_else(|| {
            Error::corrupt("catalog/operations", format!("operation {} saved nothing to resume from", self.id))
        })
    }
}
