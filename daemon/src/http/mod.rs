//! Owns cairnd's HTTP endpoint: its listener and routes, `/healthz` and `/metrics`. Uses the
//! engine, `net` and `errors`.

mod healthz;
pub mod metrics;
mod routes;

use cairn_engine::Engine;
use tokio::sync::watch;

pub use routes::{DEFAULT_HTTP_ADDR, HttpListener, ListenError};

/// What every handler reads: the engine and the daemon's shutdown signal.
#[derive(Debug, Clone)]
struct Ctx {
    engine: Engine,
    shutdown: watch::Receiver<bool>,
}
