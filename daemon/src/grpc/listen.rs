//! Where the gRPC server listens (`unix:PATH` or `HOST:PORT`) and the serve loop.
//!
//! A unix socket is created with mode 0600 (bound under a temporary name, restricted, then
//! renamed into place, so it is never reachable with wider permissions). TLS is not
//! implemented yet, so a TCP address that is not loopback is refused unless the operator
//! explicitly allows plaintext.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::Routes;
use tonic::transport::Server;

/// How long shutdown waits for calls in flight before dropping the connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A gRPC listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for GrpcAddr {
    type Err = ListenError;
    fn from_str(s: &str) -> Result<Self, ListenError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenError::BadAddress(s.into(), "empty socket path"));
            }
            return Ok(GrpcAddr::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(GrpcAddr::Tcp(s.into())),
            _ => Err(ListenError::BadAddress(s.into(), "expected unix:PATH or HOST:PORT")),
        }
    }
}

impl fmt::Display for GrpcAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrpcAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            GrpcAddr::Tcp(a) => f.write_str(a),
        }
    }
}

/// Why the gRPC listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("bad gRPC address {0:?}: {1}")]
    BadAddress(String, &'static str),
    #[error(
        "refusing to serve gRPC in plaintext on non-loopback address {0}: TLS is not implemented yet (it comes \
         later); listen on a unix socket or loopback, or pass --allow-plaintext to accept the risk"
    )]
    PlaintextRefused(SocketAddr),
    #[error("{path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("{context} {addr}")]
    Io {
        context: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bound gRPC listener.
#[derive(Debug)]
pub enum GrpcListener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

fn io(context: &'static str, addr: impl fmt::Display) -> impl FnOnce(std::io::Error) -> ListenError {
    let addr = addr.to_string();
    move |source| ListenError::Io { context, addr, source }
}

/// Removes a stale socket file at `path`; refuses when something still listens there.
fn clear_stale_socket(path: &Path) -> Result<(), ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse { path: path.into() });
            }
            std::fs::remove_file(path).map_err(io("removing stale socket", path.display()))
        }
        Ok(_) => Err(ListenError::InUse { path: path.into() }),
        Err(_) => Ok(()),
    }
}

impl GrpcListener {
    pub async fn bind(addr: &GrpcAddr, allow_plaintext: bool) -> Result<Self, ListenError> {
        match addr {
            GrpcAddr::Unix(path) => {
                clear_stale_socket(path)?;
                let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let tmp = path.with_file_name(format!(".{file}.{}.tmp", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                let listener = UnixListener::bind(&tmp).map_err(io("binding", tmp.display()))?;
                let restrict = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                    .and_then(|()| std::fs::rename(&tmp, path));
                if let Err(e) = restrict {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io("creating socket", path.display())(e));
                }
                Ok(GrpcListener::Unix(listener, path.clone()))
            }
            GrpcAddr::Tcp(a) => {
                let addrs: Vec<SocketAddr> =
                    tokio::net::lookup_host(a.as_str()).await.map_err(io("resolving", a))?.collect();
                if !allow_plaintext && let Some(bad) = addrs.iter().find(|s| !s.ip().is_loopback()) {
                    return Err(ListenError::PlaintextRefused(*bad));
                }
                let l = TcpListener::bind(addrs.as_slice()).await.map_err(io("binding", a))?;
                Ok(GrpcListener::Tcp(l))
            }
        }
    }

    /// The address actually bound (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> String {
        match self {
            GrpcListener::Unix(_, p) => format!("unix:{}", p.display()),
            GrpcListener::Tcp(l) => l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        }
    }

    /// Serves `routes` until `stop` turns true, then lets calls in flight finish (up to a
    /// drain timeout) and removes the socket file.
    pub async fn run(self, routes: Routes, mut stop: watch::Receiver<bool>) {
        let mut signal_rx = stop.clone();
        let signal = async move {
            let _ = signal_rx.wait_for(|s| *s).await;
        };
        let server = Server::builder().add_routes(routes);
        let (serve, socket): (futures::future::BoxFuture<'_, Result<(), tonic::transport::Error>>, _) = match self {
            GrpcListener::Unix(l, path) => {
                (Box::pin(server.serve_with_incoming_shutdown(UnixListenerStream::new(l), signal)), Some(path))
            }
            GrpcListener::Tcp(l) => {
                (Box::pin(server.serve_with_incoming_shutdown(TcpListenerStream::new(l), signal)), None)
            }
        };
        tokio::pin!(serve);
        let result = tokio::select! {
            r = &mut serve => r,
            _ = async {
                let _ = stop.wait_for(|s| *s).await;
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } => {
                tracing::warn!("gRPC calls still running past the drain timeout; dropping them");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server failed");
        }
        if let Some(path) = socket {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("gRPC server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!("unix:/tmp/x.sock".parse::<GrpcAddr>().unwrap(), GrpcAddr::Unix("/tmp/x.sock".into()));
        assert_eq!("127.0.0.1:7000".parse::<GrpcAddr>().unwrap(), GrpcAddr::Tcp("127.0.0.1:7000".into()));
        assert!("unix:".parse::<GrpcAddr>().is_err());
        assert!("nonsense".parse::<GrpcAddr>().is_err());
    }

    #[tokio::test]
    async fn plaintext_on_a_public_address_is_refused_naming_tls() {
        let e = GrpcListener::bind(&GrpcAddr::Tcp("0.0.0.0:0".into()), false).await.unwrap_err();
        assert!(e.to_string().contains("TLS is not implemented yet"), "{e}");
    }

    #[tokio::test]
    async fn unix_socket_is_private_to_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.sock");
        let _l = GrpcListener::bind(&GrpcAddr::Unix(path.clone()), false).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
