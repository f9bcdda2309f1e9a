//! Where the NBD server listens (binding rules in [`crate::listen`]) and the accept loop.

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::server::Server;
pub use crate::listen::ListenError;
use crate::listen::{self, Bound, ListenAddr};

/// How long shutdown waits for connections to finish their requests in flight.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An NBD listen address.
pub type NbdAddr = ListenAddr;

/// A bound NBD listener.
#[derive(Debug)]
pub struct Listener(Bound);

impl Listener {
    /// Binds `addr` (rules in [`crate::listen`]).
    pub async fn bind(addr: &NbdAddr, allow_plaintext: bool) -> Result<Self, ListenError> {
        listen::bind("NBD", addr, allow_plaintext).await.map(Self)
    }

    /// Where it listens, as an address string.
    pub fn local_addr(&self) -> String {
        self.0.local_addr()
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
            let (reader, writer, peer) = match accepted {
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
            conns.spawn(async move {
                tracing::debug!(%peer, "nbd connection");
                match server.serve(reader, writer, shutdown).await {
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
        if let Bound::Unix(_, path) = &self.0
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove nbd socket");
        }
    }

    async fn accept(&self) -> std::io::Result<(BoxRead, BoxWrite, String)> {
        match &self.0 {
            Bound::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), format!("unix:{}", path.display())))
            }
            Bound::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), peer.to_string()))
            }
        }
    }
}

type BoxRead = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
