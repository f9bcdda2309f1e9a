//! Where the NBD server listens (binding rules in [`crate::net::security`]) and the accept loop.
//! With TLS configured a TCP connection must upgrade with STARTTLS before anything else
//! (FORCEDTLS); a unix socket stays plain and refuses STARTTLS by policy.

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::server::{Server, TlsPolicy};
pub use crate::net::listen::ListenError;
use crate::net::listen::{self, Bound, ListenAddr};
use crate::net::security::{self, Security};

/// How long shutdown waits for connections to finish their requests in flight.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An NBD listen address.
pub type NbdAddr = ListenAddr;

/// A bound NBD listener.
#[derive(Debug)]
pub struct Listener {
    bound: Bound,
    tls: TlsPolicy,
}

impl Listener {
    /// Binds `addr` (rules in [`crate::net::security`]): clients authenticate with certificates.
    pub async fn bind(addr: &NbdAddr, security: &Security) -> Result<Self, ListenError> {
        let bound = listen::bind("NBD", addr, &security.protection(security::Listener::Nbd)).await?;
        let tls = match (&security.tls, &bound) {
            (None, _) => TlsPolicy::Unconfigured,
            (Some(_), Bound::Unix(..)) => TlsPolicy::NotOffered,
            (Some(t), Bound::Tcp(_)) => TlsPolicy::Required(t.nbd_acceptor()),
        };
        Ok(Self { bound, tls })
    }

    /// Where it listens, as an address string.
    pub fn local_addr(&self) -> String {
        self.bound.local_addr()
    }

    /// Whether TCP clients must start TLS.
    pub fn requires_tls(&self) -> bool {
        matches!(self.tls, TlsPolicy::Required(_))
    }

    /// Accepts and serves connections until `shutdown` turns true, then waits for every
    /// connection to finish its requests in flight. Removes its unix socket at the end.
    pub async fn run(self, server: Arc<Server>, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(server.config().max_connections));
        let mut conns = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.wait_for(|&s| s) => break,
                a = self.accept() => a,
            };
            while conns.try_join_next().is_some() {}
            let (conn, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "nbd accept failed");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "nbd connection limit reached; closing new connection");
                continue;
            };
            let server = server.clone();
            let shutdown = shutdown.clone();
            let tls = self.tls.clone();
            conns.spawn(async move {
                tracing::debug!(%peer, "nbd connection");
                let served = match conn {
                    Accepted::Unix(s) => server.serve(s, tls, shutdown).await,
                    Accepted::Tcp(s) => server.serve(s, tls, shutdown).await,
                };
                match served {
                    Ok(()) => tracing::debug!(%peer, "nbd connection closed"),
                    Err(e) => tracing::info!(%peer, error = %e, "nbd connection ended"),
                }
                drop(slot);
            });
        }
        tracing::info!(connections = conns.len(), "nbd listener stopped; finishing requests in flight");
        // A client that stops reading its replies must not hold the daemon up forever.
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                connections = conns.len(),
                "nbd connections still busy after {DRAIN_TIMEOUT:?}; closing them"
            );
            conns.shutdown().await;
        }
        if let Bound::Unix(_, path) = &self.bound
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove nbd socket");
        }
    }

    async fn accept(&self) -> std::io::Result<(Accepted, String)> {
        match &self.bound {
            Bound::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                roomy_send_buffer(&s);
                Ok((Accepted::Unix(s), format!("unix:{}", path.display())))
            }
            Bound::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Accepted::Tcp(s), peer.to_string()))
            }
        }
    }
}

/// The send buffer a unix-socket NBD connection asks for: the default (about 200 KiB) makes
/// the writer wait and wake several times for each 1 MiB read reply, and 1 MiB sequential
/// reads went from 2.7 to 3.3 GiB/s with this. The kernel caps it at `net.core.wmem_max`
/// and charges up to twice it per connection. TCP keeps its own autotuning, which setting
/// a size would turn off.
const SEND_BUFFER_BYTES: usize = 2 << 20;

fn roomy_send_buffer(socket: &impl std::os::fd::AsFd) {
    if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(socket, SEND_BUFFER_BYTES) {
        tracing::debug!(error = %e, "could not enlarge the nbd socket's send buffer");
    }
}

/// An accepted connection; each kind is served through the same generic server.
enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}
