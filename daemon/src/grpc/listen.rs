//! Where the gRPC server listens (binding rules in [`crate::listen`]) and the serve loop.

use std::time::Duration;

use tokio::sync::watch;

pub use crate::listen::ListenError;
use crate::listen::{self, Bound, ListenAddr};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::Routes;
use tonic::transport::Server;

/// How long shutdown waits for calls in flight before dropping the connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A gRPC listen address.
pub type GrpcAddr = ListenAddr;

/// A bound gRPC listener.
#[derive(Debug)]
pub struct GrpcListener(Bound);

impl GrpcListener {
    pub async fn bind(addr: &GrpcAddr, allow_plaintext: bool) -> Result<Self, ListenError> {
        listen::bind("gRPC", addr, allow_plaintext).await.map(Self)
    }

    /// The address actually bound (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> String {
        self.0.local_addr()
    }

    /// Serves `routes` until `stop` turns true, then lets calls in flight finish (up to a
    /// drain timeout) and removes the socket file.
    pub async fn run(self, routes: Routes, mut stop: watch::Receiver<bool>) {
        let mut signal_rx = stop.clone();
        let signal = async move {
            let _ = signal_rx.wait_for(|s| *s).await;
        };
        let server = Server::builder().add_routes(routes);
        let (serve, socket): (futures::future::BoxFuture<'_, Result<(), tonic::transport::Error>>, _) = match self.0 {
            Bound::Unix(l, path) => {
                (Box::pin(server.serve_with_incoming_shutdown(UnixListenerStream::new(l), signal)), Some(path))
            }
            Bound::Tcp(l) => (Box::pin(server.serve_with_incoming_shutdown(TcpListenerStream::new(l), signal)), None),
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
    use std::os::unix::fs::PermissionsExt;

    use super::*;

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
