//! Owns the Cairn gRPC services, one file per service of `cairn.v1`, and what they share:
//! the [`Context`] and the panic guard. Uses the engine, [`super::convert`] and `errors`.

pub mod access;
pub mod collections;
pub mod disk_data;
pub mod disks;
pub mod groups;
pub mod operations;
pub mod quiesce;
pub mod restore_points;
pub mod restores;
pub mod store;

use std::future::Future;
use std::panic::AssertUnwindSafe;

use cairn_engine::Engine;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// What every service holds: the engine and the daemon's shutdown signal.
#[derive(Debug, Clone)]
pub struct Context {
    pub engine: Engine,
    /// The configured peers, which copy collections name.
    pub peers: crate::replication::Peers,
    /// Turns true when the daemon shuts down; long streams end then.
    pub shutdown: watch::Receiver<bool>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

/// Runs a handler; a panic in it becomes INTERNAL for this call only.
pub async fn guard<T>(rpc: &'static str, fut: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(p) => {
            tracing::error!(rpc, panic = panic_message(p.as_ref()), "handler panicked");
            Err(Status::internal(format!("{rpc} failed with an internal error; the daemon log has the details")))
        }
    }
}

/// Spawns the producer of a streaming reply; a panic in it ends the stream with INTERNAL.
pub fn spawn_guarded<M: Send + 'static>(
    rpc: &'static str,
    tx: mpsc::Sender<Result<M, Status>>,
    fut: impl Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(p) = AssertUnwindSafe(fut).catch_unwind().await {
            tracing::error!(rpc, panic = panic_message(p.as_ref()), "stream producer panicked");
            let _ = tx
                .send(Err(Status::internal(format!(
                    "{rpc} failed with an internal error; the daemon log has the details"
                ))))
                .await;
        }
    });
}
