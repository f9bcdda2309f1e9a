//! Owns the NBD server: handshake (`options`), then transmission (`transmit`, `reply`)
//! with many requests in flight. Uses [`super::codec`], [`super::exports`] and `errors`.
//!
//! Per connection there is one reader (this task: it decodes requests and spawns one task
//! per request) and one writer task (it owns the socket's write half and sends replies in
//! the order they complete, so replies go out of order). Memory per connection is bounded:
//! a request takes permits for itself and the bytes it holds (write payload, read buffer)
//! before its payload is read, and gives them back once its last reply chunk is written; a
//! client that floods requests simply stops being read until replies drain.
//!
//! Malformed input that leaves the stream undecodable (bad magic, oversize lengths, unknown
//! client flags) ends that one connection; everything else gets the spec's error reply and
//! the session goes on.
//!
//! TLS: on a connection whose listener has TLS the server is in the spec's FORCEDTLS mode
//! (the rules are [`p::tls_verdict`]): after `NBD_OPT_STARTTLS` is acknowledged the same
//! stream is upgraded with rustls and the haggling starts over inside TLS, with no state
//! kept from before. The handshake and transmission are generic over the stream
//! ([`Connection`]), so plain and TLS connections run the same code; a failed TLS handshake
//! ends that connection only.

mod connection;
mod options;
mod reply;
mod transmit;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::nbd::codec::{self as p, TlsMode};
use crate::nbd::exports::ExportSource;
use connection::stopped;
pub use connection::{Connection, ConnectionError, ServerConfig, TlsPolicy};
use options::Negotiated;
pub use options::transmission_flags;

/// An NBD server over a source of exports.
pub struct Server {
    exports: Arc<dyn ExportSource>,
    config: ServerConfig,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Server {
    pub fn new(exports: Arc<dyn ExportSource>, config: ServerConfig) -> Self {
        Self { exports, config }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Serves one connection until the client disconnects, breaks the protocol, or
    /// `shutdown` turns true (then requests in flight finish and their replies are sent).
    pub async fn serve<S: Connection>(
        &self,
        mut stream: S,
        tls: TlsPolicy,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        // One deadline for the whole handshake, the TLS upgrade included.
        let deadline = Instant::now() + self.config.handshake_timeout;
        let mode = tls.mode();
        let Some(client) = self.step(deadline, &mut shutdown, greet(&mut stream, mode)).await? else {
            return self.finish(Negotiated::Closed, stream, shutdown).await;
        };
        let negotiated =
            self.step(deadline, &mut shutdown, options::negotiate(&mut stream, &*self.exports, client, mode)).await?;
        let acceptor = match (negotiated, tls) {
            (Some(Negotiated::StartTls), TlsPolicy::Required(acceptor)) => acceptor,
            (negotiated, _) => return self.finish(negotiated.unwrap_or(Negotiated::Closed), stream, shutdown).await,
        };
        let upgrade = async { acceptor.accept(stream).await.map_err(ConnectionError::Tls) };
        let Some(mut stream) = self.step(deadline, &mut shutdown, upgrade).await? else { return Ok(()) };
        let negotiated = self
            .step(deadline, &mut shutdown, options::negotiate(&mut stream, &*self.exports, client, TlsMode::Active))
            .await?;
        self.finish(negotiated.unwrap_or(Negotiated::Closed), stream, shutdown).await
    }

    /// Runs one handshake step before `deadline`; `None` when the daemon shuts down first.
    async fn step<T>(
        &self,
        deadline: Instant,
        shutdown: &mut watch::Receiver<bool>,
        step: impl Future<Output = Result<T, ConnectionError>>,
    ) -> Result<Option<T>, ConnectionError> {
        tokio::select! {
            biased;
            () = stopped(shutdown) => Ok(None),
            r = tokio::time::timeout_at(deadline, step) => {
                r.map_err(|_| ConnectionError::HandshakeTimeout(self.config.handshake_timeout))?.map(Some)
            }
        }
    }

    /// Enters transmission, or closes the stream.
    async fn finish<S: Connection>(
        &self,
        negotiated: Negotiated,
        mut stream: S,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        match negotiated {
            Negotiated::Transmission(session) => {
                tracing::debug!(export = %session.export.name(), structured = session.structured, "transmission");
                transmit::transmit(session, stream, &self.config, shutdown).await
            }
            // Only a FORCEDTLS connection acknowledges STARTTLS, and `serve` upgrades those.
            Negotiated::StartTls => Err(ConnectionError::TlsRequired),
            Negotiated::Closed => {
                let _ = stream.shutdown().await;
                Ok(())
            }
        }
    }
}

/// Greeting and client flags. TLS needs fixed newstyle: without it a FORCEDTLS connection
/// cannot go on.
async fn greet<S>(stream: &mut S, mode: TlsMode) -> Result<p::ClientFlags, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&p::greeting()).await?;
    stream.flush().await?;
    let mut raw = [0u8; 4];
    stream.read_exact(&mut raw).await?;
    let client = p::decode_client_flags(raw)?;
    if mode == TlsMode::Required && !client.fixed_newstyle {
        return Err(ConnectionError::TlsRequired);
    }
    Ok(client)
}

#[cfg(test)]
mod tests;
