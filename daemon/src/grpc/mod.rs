//! Cairn's gRPC API (package `cairn.v1`): one module per service, one conversion module
//! ([`convert`]) where proto types meet engine types, one place ([`crate::errors`]) mapping engine
//! errors to gRPC codes, plus the standard health service and server reflection. With a
//! bearer token configured ([`auth`]), every service but health demands it.
//!
//! Long-running calls (restore point creation, restores, GC, verify) return their operation at once.
//! Every handler runs under [`guard`], so a panic becomes INTERNAL for that call and never
//! takes the connection or the daemon down. Streams end when the daemon shuts down.

pub mod convert;
pub mod server;
pub mod services;

use std::future::Future;
use std::panic::AssertUnwindSafe;

use cairn_engine::Engine;
use cairn_proto::v1 as pb;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tonic::service::Routes;

pub use server::{GrpcAddr, GrpcListener, ListenError};

/// What every service holds: the engine and the daemon's shutdown signal.
#[derive(Debug, Clone)]
pub struct Context {
    pub engine: Engine,
    /// Turns true when the daemon shuts down; long streams end then.
    pub shutdown: watch::Receiver<bool>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

/// Runs a handler; a panic in it becomes INTERNAL for this call only.
pub async fn guard<T>(rpc: &'static str, fut: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(p) => {
            tracing::error!(rpc, panic = panic_message(p.as_ref()), "handler panicked");
            Err(Status::internal(format!("{rpc} failed with an internal error; the daemon log has the details")))
        }
    }
}

/// Spawns the producer of a streaming reply; a panic in it ends the stream with INTERNAL.
pub fn spawn_guarded<M: Send + 'static>(
    rpc: &'static str,
    tx: mpsc::Sender<Result<M, Status>>,
    fut: impl Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(p) = AssertUnwindSafe(fut).catch_unwind().await {
            tracing::error!(rpc, panic = panic_message(p.as_ref()), "stream producer panicked");
            let _ = tx
                .send(Err(Status::internal(format!(
                    "{rpc} failed with an internal error; the daemon log has the details"
                ))))
                .await;
        }
    });
}

/// Every Cairn service plus health and reflection, ready to serve; `auth` guards all but
/// health.
pub async fn routes(
    ctx: &Context,
    auth: crate::net::token::RequireToken,
) -> Result<Routes, tonic_reflection::server::Error> {
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
