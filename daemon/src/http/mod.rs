//! cairnd's HTTP endpoint (`--http`, default `127.0.0.1:9633`): `/healthz` and `/metrics`
//! in the Prometheus text format ([`metrics`]). `/healthz` is 200 `ok`, or 503 with the
//! reasons: shutting down, a disk poisoned by a failed sync, a failing catalog. Like the
//! other listeners, a TCP address that is not loopback is refused without TLS (not
//! implemented yet) unless plaintext is explicitly allowed. Engine errors become HTTP statuses in [`http_status`], the one place.

pub mod metrics;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_engine::{Engine, ErrorKind};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::listen::ListenError;
use crate::listen::{self, Bound, ListenAddr};

/// Where cairnd serves HTTP when `--http` is not given.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9633";

/// The HTTP status of an engine error kind.
pub fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists => StatusCode::CONFLICT,
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        ErrorKind::Busy | ErrorKind::Poisoned => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::LimitReached => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Corrupt | ErrorKind::Io => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Canceled => StatusCode::GONE,
    }
}

fn error_response(e: &cairn_engine::Error) -> Response {
    let code = http_status(e.kind());
    if code == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "HTTP request failed with an internal error");
    }
    (code, format!("{e}\n")).into_response()
}

#[derive(Debug, Clone)]
struct Ctx {
    engine: Engine,
    shutdown: watch::Receiver<bool>,
}

/// A bound HTTP listener, not serving yet.
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HttpListener {
    /// Binds `addr` (`HOST:PORT`; port 0 picks one; rules in [`crate::listen`]). A unix
    /// socket is refused: scrapers and probes speak TCP.
    pub async fn bind(addr: &str, allow_plaintext: bool) -> Result<Self, ListenError> {
        let parsed = match addr.parse::<ListenAddr>() {
            Ok(a @ ListenAddr::Tcp(_)) => a,
            Ok(ListenAddr::Unix(_)) => {
                return Err(ListenError::BadAddress {
                    protocol: "HTTP",
                    addr: addr.into(),
                    reason: "expected HOST:PORT",
                });
            }
            Err(e) => return Err(ListenError::bad_address("HTTP", e)),
        };
        let Bound::Tcp(listener) = listen::bind("HTTP", &parsed, allow_plaintext).await? else {
            return Err(ListenError::BadAddress { protocol: "HTTP", addr: addr.into(), reason: "expected HOST:PORT" });
        };
        let addr = listener.local_addr().map_err(|source| ListenError::Io {
            context: "reading the bound address of",
            addr: addr.into(),
            source,
        })?;
        Ok(Self { listener, addr })
    }

    /// The address actually bound (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` turns true, then lets requests in flight finish.
    pub async fn run(self, engine: Engine, stop: watch::Receiver<bool>) {
        let ctx = Ctx { engine, shutdown: stop.clone() };
        let app = Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics_page)).with_state(ctx);
        let mut stop = stop;
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
        tracing::info!("http listener stopped");
    }
}

async fn healthz(State(ctx): State<Ctx>) -> Response {
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

async fn metrics_page(State(ctx): State<Ctx>) -> Response {
    // Operation counts read the catalog: off the async workers.
    let engine = ctx.engine.clone();
    match tokio::task::spawn_blocking(move || metrics::render(&engine)).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics panicked");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering metrics failed; the daemon log has the details\n")
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_an_http_status() {
        let table = [
            (ErrorKind::NotFound, 404),
            (ErrorKind::AlreadyExists, 409),
            (ErrorKind::InvalidArgument, 400),
            (ErrorKind::FailedPrecondition, 412),
            (ErrorKind::Busy, 503),
            (ErrorKind::LimitReached, 429),
            (ErrorKind::Corrupt, 500),
            (ErrorKind::Canceled, 410),
            (ErrorKind::Io, 500),
            (ErrorKind::Poisoned, 503),
        ];
        for (kind, want) in table {
            assert_eq!(http_status(kind).as_u16(), want, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn public_addresses_are_refused_without_plaintext_and_unix_is_bad() {
        let e = HttpListener::bind("0.0.0.0:0", false).await.unwrap_err();
        assert!(e.to_string().contains("--allow-plaintext"), "{e}");
        assert!(matches!(HttpListener::bind("unix:/tmp/x", false).await, Err(ListenError::BadAddress { .. })));
        let l = HttpListener::bind("127.0.0.1:0", false).await.unwrap();
        assert_ne!(l.local_addr().port(), 0);
    }
}
