//! The HTTP listener (`--http`, default `127.0.0.1:9633`) and its routes: `/healthz`
//! ([`super::healthz`]) and `/metrics` in the Prometheus text format ([`super::metrics`]).
//! With TLS configured it serves HTTPS only (no client certificates: nothing here needs
//! them); the binding rules are the other listeners' ([`crate::net::security`]). Engine
//! errors become HTTP statuses in [`crate::errors`].

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use cairn_engine::Engine;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Ctx, healthz, metrics};

pub use crate::net::listen::ListenError;
use crate::net::listen::{self, Bound, ListenAddr};
use crate::net::security::{Listener, Security};
use crate::net::tls::{HANDSHAKE_TIMEOUT, ServerTls};

/// Where cairnd serves HTTP when `--http` is not given.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9633";

/// A bound HTTP listener, not serving yet.
#[derive(Debug)]
pub struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<ServerTls>,
}

impl HttpListener {
    /// Binds `addr` (`HOST:PORT`; port 0 picks one; rules in [`crate::net::security`]). A unix
    /// socket is refused: scrapers and probes speak TCP.
    pub async fn bind(addr: &str, security: &Security) -> Result<Self, ListenError> {
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
        let Bound::Tcp(listener) = listen::bind("HTTP", &parsed, &security.protection(Listener::Http)).await? else {
            return Err(ListenError::BadAddress { protocol: "HTTP", addr: addr.into(), reason: "expected HOST:PORT" });
        };
        let addr = listener.local_addr().map_err(|source| ListenError::Io {
            context: "reading the bound address of",
            addr: addr.into(),
            source,
        })?;
        Ok(Self { listener, addr, tls: security.tls.clone() })
    }

    /// The address actually bound (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `stop` turns true, then lets requests in flight finish.
    pub async fn run(self, engine: Engine, stop: watch::Receiver<bool>) {
        let ctx = Ctx { engine, shutdown: stop.clone() };
        let app =
            Router::new().route("/healthz", get(healthz::page)).route("/metrics", get(metrics::page)).with_state(ctx);
        let mut stop = stop;
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let served = match self.tls {
            None => axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await,
            Some(tls) => {
                let acceptor = tls.http_acceptor();
                let tls = TlsListener { tcp: self.listener, acceptor, handshakes: JoinSet::new() };
                axum::serve(tls, app).with_graceful_shutdown(shutdown).await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
        tracing::info!("http listener stopped");
    }
}

/// TCP connections handed to axum once their TLS handshake is done. Handshakes run on
/// their own tasks with a timeout, so a slow or silent client never holds up the others;
/// a failed one closes only that connection.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => Some((tls, peer)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "HTTP TLS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn public_addresses_are_refused_without_plaintext_and_unix_is_bad() {
        let plain = Security::default();
        let e = HttpListener::bind("0.0.0.0:0", &plain).await.unwrap_err();
        assert!(e.to_string().contains("--allow-plaintext"), "{e}");
        assert!(matches!(HttpListener::bind("unix:/tmp/x", &plain).await, Err(ListenError::BadAddress { .. })));
        let l = HttpListener::bind("127.0.0.1:0", &plain).await.unwrap();
        assert_ne!(l.local_addr().port(), 0);
    }
}
