//! Where the NBD server listens: a unix socket or a TCP address, and the accept loop.
//!
//! TLS is not implemented yet, so a TCP address that is not loopback is refused unless the
//! operator explicitly allows plaintext.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::server::Server;

/// How long shutdown waits for connections to finish their requests in flight.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An NBD listen address: `unix:PATH` or `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for NbdAddr {
    type Err = ListenError;
    fn from_str(s: &str) -> Result<Self, ListenError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenError::BadAddress(s.into(), "empty socket path"));
            }
            return Ok(NbdAddr::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(NbdAddr::Tcp(s.into())),
            _ => Err(ListenError::BadAddress(s.into(), "expected unix:PATH or HOST:PORT")),
        }
    }
}

impl fmt::Display for NbdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            NbdAddr::Tcp(a) => f.write_str(a),
        }
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("bad NBD address {0:?}: {1}")]
    BadAddress(String, &'static str),
    #[error(
        "refusing to serve NBD in plaintext on non-loopback address {0}: TLS is not implemented \
         yet; listen on a unix socket or loopback, or pass --allow-plaintext to accept the risk"
    )]
    PlaintextRefused(SocketAddr),
    #[error("{context} {addr}")]
    Io {
        context: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bound NBD listener.
#[derive(Debug)]
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds `addr`. A stale unix socket file is replaced (the data dir lock, held by the
    /// engine, guarantees no other cairnd owns it); any other file there is an error.
    pub async fn bind(addr: &NbdAddr, allow_plaintext: bool) -> Result<Self, ListenError> {
        let io = |context, source| ListenError::Io { context, addr: addr.to_string(), source };
        match addr {
            NbdAddr::Unix(path) => {
                remove_stale_socket(path).map_err(|e| io("removing stale socket", e))?;
                let l = UnixListener::bind(path).map_err(|e| io("binding", e))?;
                Ok(Listener::Unix(l, path.clone()))
            }
            NbdAddr::Tcp(hostport) => {
                let addrs: Vec<SocketAddr> =
                    tokio::net::lookup_host(hostport.as_str()).await.map_err(|e| io("resolving", e))?.collect();
                if let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback())
                    && !allow_plaintext
                {
                    return Err(ListenError::PlaintextRefused(*open));
                }
                let l = TcpListener::bind(addrs.as_slice()).await.map_err(|e| io("binding", e))?;
                Ok(Listener::Tcp(l))
            }
        }
    }

    /// Where it listens, as an address string.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
            Listener::Tcp(l) => l.local_addr().map_or_else(|_| "tcp:?".into(), |a| a.to_string()),
        }
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
        if let Listener::Unix(_, path) = &self
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove nbd socket");
        }
    }

    async fn accept(&self) -> std::io::Result<(BoxRead, BoxWrite, String)> {
        match self {
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), format!("unix:{}", path.display())))
            }
            Listener::Tcp(l) => {
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

fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a file that is not a socket is in the way"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!("unix:/run/x.sock".parse::<NbdAddr>().unwrap(), NbdAddr::Unix("/run/x.sock".into()));
        assert_eq!("127.0.0.1:10809".parse::<NbdAddr>().unwrap(), NbdAddr::Tcp("127.0.0.1:10809".into()));
        assert_eq!("[::1]:10809".parse::<NbdAddr>().unwrap(), NbdAddr::Tcp("[::1]:10809".into()));
        assert!("unix:".parse::<NbdAddr>().is_err());
        assert!("localhost".parse::<NbdAddr>().is_err());
        assert!("host:notaport".parse::<NbdAddr>().is_err());
    }

    #[tokio::test]
    async fn non_loopback_tcp_needs_allow_plaintext() {
        let addr: NbdAddr = "0.0.0.0:0".parse().unwrap();
        let err = Listener::bind(&addr, false).await.unwrap_err();
        assert!(matches!(err, ListenError::PlaintextRefused(_)), "{err}");
        assert!(err.to_string().contains("TLS is not implemented"));
        assert!(Listener::bind(&addr, true).await.is_ok());
        let lo: NbdAddr = "127.0.0.1:0".parse().unwrap();
        assert!(Listener::bind(&lo, false).await.is_ok());
    }
}
