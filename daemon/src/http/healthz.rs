//! `/healthz`: 200 `ok`, or 503 with the reasons: shutting down, a disk poisoned by a failed
//! sync, a failing catalog.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Ctx;

/// 200 `ok`, or 503 with the engine's problems (or while the daemon shuts down).
pub(super) async fn page(State(ctx): State<Ctx>) -> Response {
    if *ctx.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // A RocksDB read: off the async workers.
    let engine = ctx.engine.clone();
    match tokio::task::spawn_blocking(move || engine.problems()).await {
        Ok(problems) if problems.is_empty() => (StatusCode::OK, "ok").into_response(),
        Ok(problems) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {}\n", problems.join("; "))).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "health check panicked");
            (StatusCode::INTERNAL_SERVER_ERROR, "health check failed; the daemon log has the details\n").into_response()
        }
    }
}
