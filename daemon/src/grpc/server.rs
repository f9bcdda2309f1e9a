//! The gRPC server: its routes (every Cairn service, health and reflection, the bearer token
//! demanded by all but health), where it listens (binding rules in [`crate::net::security`])
//! and the serve loop. On TCP with TLS configured, tonic terminates TLS (and checks client
//! certificates when a client CA is given); a unix socket stays plain.

use std::time::Duration;

use cairn_proto::v1 as pb;
use tokio::sync::watch;

use super::services::{self, Context};
pub use crate::net::listen::ListenError;
use crate::net::listen::{self, Bound, ListenAddr};
use crate::net::security::{Listener, Security};
use crate::net::token::RequireToken;
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

/// Every Cairn service plus health and reflection, ready to serve; `auth` guards all but
/// health.
pub async fn routes(ctx: &Context, auth: RequireToken) -> Result<Routes, tonic_reflection::server::Error> {
    use pb::access_server::AccessServer;
    use pb::collections_server::CollectionsServer;
    use pb::disk_data_server::DiskDataServer;
    use pb::disks_server::DisksServer;
    use pb::groups_server::GroupsServer;
    use pb::operations_server::OperationsServer;
    use pb::quiesce_server::QuiesceServer;
    use pb::restore_points_server::RestorePointsServer;
    use pb::restores_server::RestoresServer;
    use pb::store_server::StoreServer;
    use tonic::service::interceptor::InterceptedService;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DisksServer<services::disks::DisksService>>().await;
    health.set_serving::<GroupsServer<services::groups::GroupsService>>().await;
    health.set_serving::<CollectionsServer<services::collections::CollectionsService>>().await;
    health.set_serving::<RestorePointsServer<services::restore_points::RestorePointsService>>().await;
    health.set_serving::<RestoresServer<services::restores::RestoresService>>().await;
    health.set_serving::<OperationsServer<services::operations::OperationsService>>().await;
    health.set_serving::<DiskDataServer<services::disk_data::DiskDataService>>().await;
    health.set_serving::<QuiesceServer<services::quiesce::QuiesceService>>().await;
    health.set_serving::<StoreServer<services::store::StoreService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut b = Routes::builder();
    b.add_service(health_service)
        .add_service(InterceptedService::new(reflection.build_v1()?, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth.clone()))
        .add_service(DisksServer::with_interceptor(services::disks::DisksService(ctx.clone()), auth.clone()))
        .add_service(GroupsServer::with_interceptor(services::groups::GroupsService(ctx.clone()), auth.clone()))
        .add_service(CollectionsServer::with_interceptor(
            services::collections::CollectionsService(ctx.clone()),
            auth.clone(),
        ))
        .add_service(RestorePointsServer::with_interceptor(
            services::restore_points::RestorePointsService(ctx.clone()),
            auth.clone(),
        ))
        .add_service(RestoresServer::with_interceptor(services::restores::RestoresService(ctx.clone()), auth.clone()))
        .add_service(OperationsServer::with_interceptor(
            services::operations::OperationsService(ctx.clone()),
            auth.clone(),
        ))
        .add_service(DiskDataServer::with_interceptor(services::disk_data::DiskDataService(ctx.clone()), auth.clone()))
        .add_service(QuiesceServer::with_interceptor(services::quiesce::QuiesceService(ctx.clone()), auth.clone()))
        .add_service(StoreServer::with_interceptor(services::store::StoreService(ctx.clone()), auth.clone()))
        .add_service(AccessServer::with_interceptor(services::access::AccessService, auth));
    Ok(b.routes())
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
