//! What a connection is served under: the stream it runs over ([`Connection`]), its TLS
//! policy, the server's limits, and why a connection ended early.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::nbd::codec::{self as p, TlsMode};

/// Tunables of the server; the defaults suit a hypervisor host.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests in flight per connection before the server stops reading that connection.
    pub max_inflight_requests: u32,
    /// Payload and buffer bytes in flight per connection (at least one maximum payload).
    pub max_inflight_bytes: u32,
    /// Time a client gets to finish the handshake.
    pub handshake_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_inflight_requests: 128,
            max_inflight_bytes: 2 * p::MAX_PAYLOAD_BYTES,
            handshake_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Violation(#[from] p::Violation),
    #[error("no export named {0:?} (NBD_OPT_EXPORT_NAME cannot report errors)")]
    UnknownExport(String),
    #[error("export {0:?} refused the client: {1} (NBD_OPT_EXPORT_NAME cannot report errors)")]
    Refused(String, String),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS is required and the client asked for an export without it (or without fixed newstyle)")]
    TlsRequired,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

/// A byte stream the server can serve. Transmission reads and writes from two tasks, so
/// the stream splits into halves: sockets without a lock, anything else (TLS) through
/// [`tokio::io::split`].
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl Connection for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Connection for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Connection for tokio::io::DuplexStream {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

impl<S: Connection> Connection for tokio_rustls::server::TlsStream<S> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// What TLS a connection gets, as its listener decides.
#[derive(Clone)]
pub enum TlsPolicy {
    /// No TLS configured: STARTTLS is unsupported.
    Unconfigured,
    /// TLS configured but not on this listener (a unix socket): STARTTLS is refused by policy.
    NotOffered,
    /// TLS required before anything else (FORCEDTLS), with this acceptor.
    Required(TlsAcceptor),
}

impl std::fmt::Debug for TlsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsPolicy::Unconfigured => "Unconfigured",
            TlsPolicy::NotOffered => "NotOffered",
            TlsPolicy::Required(_) => "Required",
        })
    }
}

impl TlsPolicy {
    pub(super) fn mode(&self) -> TlsMode {
        match self {
            TlsPolicy::Unconfigured => TlsMode::Unconfigured,
            TlsPolicy::NotOffered => TlsMode::NotOffered,
            TlsPolicy::Required(_) => TlsMode::Required,
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(super) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await;
}
