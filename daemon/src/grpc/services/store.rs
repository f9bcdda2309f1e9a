//! Service `cairn.v1.Store`: garbage collection, verify, chunk store statistics and
//! retention. GC and verify are long-running: they return their operation at once, and its
//! `result_json` carries the engine's report once it has ended.

use cairn_engine::{DEFAULT_GC_LIVE_SHARE_PERCENT, VerifyTarget};
use cairn_proto::v1 as pb;
use pb::store_server::Store;
use tonic::{Request, Response, Status};

use super::{Context, guard};
use crate::errors::grpc_status;
use crate::grpc::convert;

#[derive(Debug)]
pub struct StoreService(pub Context);

#[tonic::async_trait]
impl Store for StoreService {
    async fn collect_garbage(
        &self,
        req: Request<pb::CollectGarbageRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        guard("CollectGarbage", async {
            let live_share = req.get_ref().live_share_percent.unwrap_or(DEFAULT_GC_LIVE_SHARE_PERCENT);
            let op = self.0.engine.collect_garbage(live_share).await.map_err(grpc_status)?;
            Ok(Response::new(convert::operation(&op)))
        })
        .await
    }

    async fn verify(&self, req: Request<pb::VerifyRequest>) -> Result<Response<pb::Operation>, Status> {
        guard("Verify", async {
            let r = req.get_ref();
            let target = if r.restore_point.trim().is_empty() {
                if !r.collection.trim().is_empty() {
                    return Err(crate::errors::invalid(
                        "restore_point",
                        "must name a restore point of the collection (or leave both empty to verify the store)",
                    ));
                }
                VerifyTarget::Store
            } else {
                let engine = &self.0.engine;
                VerifyTarget::RestorePoint(convert::restore_point_record(engine, &r.collection, &r.restore_point)?.id)
            };
            let op = self.0.engine.verify(target).await.map_err(grpc_status)?;
            Ok(Response::new(convert::operation(&op)))
        })
        .await
    }

    async fn get_store_stats(
        &self,
        _req: Request<pb::GetStoreStatsRequest>,
    ) -> Result<Response<pb::StoreStats>, Status> {
        guard("GetStoreStats", async {
            // Running totals: no scan, nothing to move off the async workers.
            let stats = self.0.engine.store_stats().map_err(grpc_status)?;
            Ok(Response::new(convert::store_stats(&stats)))
        })
        .await
    }

    async fn apply_retention(
        &self,
        req: Request<pb::ApplyRetentionRequest>,
    ) -> Result<Response<pb::ApplyRetentionResponse>, Status> {
        guard("ApplyRetention", async {
            let r = req.get_ref();
            let coll = convert::collection_record(&self.0.engine, "collection", &r.collection)?;
            let policy = convert::retention_policy(r.policy.as_ref());
            let decisions = self.0.engine.apply_retention(coll.id, policy, r.dry_run).await.map_err(grpc_status)?;
            Ok(Response::new(pb::ApplyRetentionResponse {
                decisions: decisions.iter().map(convert::retention_decision).collect(),
            }))
        })
        .await
    }
}
