//! Where the gRPC server listens (binding rules in [`crate::net::security`]) and the serve loop.
//! On TCP with TLS configured, tonic terminates TLS (and checks client certificates when a
//! client CA is given); a unix socket stays plain.

use std::time::Duration;

use tokio::sync::watch;

pub use crate::net::listen::ListenError;
use crate::net::listen::{self, Bound, ListenAddr};
use crate::net::security::{Listener, Security};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::Routes;
use tonic::transport::{Server, ServerTlsConfig};

/// How long shutdown waits for calls in flight before dropping the connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A gRPC listen address.
pub type GrpcAddr = ListenAddr;

/// A bound gRPC listener.
#[derive(Debug)]
pub struct GrpcListener {
    bound: Bound,
    tls: Option<ServerTlsConfig>,
}

impl GrpcListener {
    /// Binds `addr`: clients authenticate with a certificate (client CA) or the token.
    pub async fn bind(addr: &GrpcAddr, security: &Security) -> Result<Self, ListenError> {
        let bound = listen::bind("gRPC", addr, &security.protection(Listener::Grpc)).await?;
        let tls = match &bound {
            Bound::Tcp(_) => security.tls.as_ref().map(|t| t.grpc_config()),
            Bound::Unix(..) => None,
        };
        Ok(Self { bound, tls })
    }

    /// The address actually bound (with the port chosen when 0 was asked), `https://`
    /// first when it speaks TLS.
    pub fn local_addr(&self) -> String {
        let addr = self.bound.local_addr();
        if self.tls.is_some() { format!("https://{addr}") } else { addr }
    }

    /// Serves `routes` until `stop` turns true, then lets calls in flight finish (up to a
    /// drain timeout) and removes the socket file.
    pub async fn run(self, routes: Routes, mut stop: watch::Receiver<bool>) {
        let mut signal_rx = stop.clone();
        let signal = async move {
            let _ = signal_rx.wait_for(|s| *s).await;
        };
        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = match builder.tls_config(tls) {
                Ok(b) => b,
                Err(e) => {
                    // The files were checked at start, so this is not expected.
                    tracing::error!(error = %e, "gRPC TLS setup failed; not serving gRPC");
                    return;
                }
            };
        }
        let server = builder.add_routes(routes);
        let (serve, socket): (futures::future::BoxFuture<'_, Result<(), tonic::transport::Error>>, _) = match self.bound
        {
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
    async fn a_public_address_needs_tls_and_client_authentication() {
        let public = GrpcAddr::Tcp("0.0.0.0:0".into());
        let e = GrpcListener::bind(&public, &Security::default()).await.unwrap_err();
        assert!(e.to_string().contains("--tls-cert"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        cairn_test_support::pki::TestPki::generate().write_to(dir.path());
        let files = crate::net::tls::TlsFiles {
            cert: dir.path().join("server-cert.pem"),
            key: dir.path().join("server-key.pem"),
            client_ca: None,
        };
        let tls = Some(crate::net::tls::ServerTls::load(&files).unwrap());
        let e = GrpcListener::bind(&public, &Security { tls: tls.clone(), ..Security::default() }).await.unwrap_err();
        assert!(e.to_string().contains("--grpc-token-file"), "{e}");
        let token = Some(crate::net::token::BearerToken::new("t"));
        let l = GrpcListener::bind(&public, &Security { tls, grpc_token: token, ..Security::default() }).await.unwrap();
        assert!(l.local_addr().starts_with("https://"), "{}", l.local_addr());
    }

    #[tokio::test]
    async fn unix_socket_is_private_to_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.sock");
        let _l = GrpcListener::bind(&GrpcAddr::Unix(path.clone()), &Security::default()).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
