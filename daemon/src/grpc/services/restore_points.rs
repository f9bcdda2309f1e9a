//! Service `cairn.v1.RestorePoints`: create (returns the operation at once), get with an
//! optional instance view, list, delete.

use cairn_engine::{CreateRestorePoint, DiskId};
use cairn_proto::v1 as pb;
use pb::restore_points_server::RestorePoints;
use tonic::{Request, Response, Status};

use super::{Context, guard};
use crate::errors::grpc_status;
use crate::grpc::convert::{self, page};

#[derive(Debug)]
pub struct RestorePointsService(pub Context);

#[tonic::async_trait]
impl RestorePoints for RestorePointsService {
    async fn create_restore_point(
        &self,
        req: Request<pb::CreateRestorePointRequest>,
    ) -> Result<Response<pb::CreateRestorePointResponse>, Status> {
        guard("CreateRestorePoint", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let coll = convert::collection_record(engine, "collection", &r.collection)?;
            let exclude_disks = r
                .exclude_disks
                .iter()
                .map(|d| convert::disk_id(engine, "exclude_disks", d))
                .collect::<Result<Vec<DiskId>, _>>()?;
            let consistency = convert::consistency_from("consistency_mode", r.consistency_mode)?;
            let (rp, op) = engine
                .create_restore_point(
                    coll.id,
                    CreateRestorePoint { name: r.name, description: r.description, exclude_disks, consistency },
                )
                .await
                .map_err(grpc_status)?;
            Ok(Response::new(pb::CreateRestorePointResponse {
                restore_point: Some(convert::restore_point(&rp, None)),
                operation: Some(convert::operation(&op)),
            }))
        })
        .await
    }

    async fn get_restore_point(
        &self,
        req: Request<pb::GetRestorePointRequest>,
    ) -> Result<Response<pb::RestorePoint>, Status> {
        guard("GetRestorePoint", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let rp = convert::restore_point_record(engine, &r.collection, &r.restore_point)?;
            let view = r.instance_view.then(|| {
                let op = engine.operation(rp.operation).ok();
                convert::instance_view(&rp, op.as_ref())
            });
            Ok(Response::new(convert::restore_point(&rp, view)))
        })
        .await
    }

    async fn list_restore_points(
        &self,
        req: Request<pb::ListRestorePointsRequest>,
    ) -> Result<Response<pb::ListRestorePointsResponse>, Status> {
        guard("ListRestorePoints", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let coll = convert::collection_record(engine, "collection", &r.collection)?;
            let all = engine.list_restore_points(coll.id).map_err(grpc_status)?;
            let (records, next_page_token) = page(all, r.page_size, &r.page_token)?;
            Ok(Response::new(pb::ListRestorePointsResponse {
                restore_points: records.iter().map(|rp| convert::restore_point(rp, None)).collect(),
                next_page_token,
            }))
        })
        .await
    }

    async fn copy_restore_point(
        &self,
        req: Request<pb::CopyRestorePointRequest>,
    ) -> Result<Response<pb::CreateRestorePointResponse>, Status> {
        guard("CopyRestorePoint", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let coll = convert::collection_record(engine, "collection", &r.collection)?;
            let Some(from) = &coll.source else {
                return Err(Status::failed_precondition(format!(
                    "collection {} is not a copy collection; create one with a source",
                    coll.name
                )));
            };
            if r.source_restore_point.trim().is_empty() {
                return Err(crate::errors::invalid("source_restore_point", "name the restore point to copy"));
            }
            let name = if r.name.is_empty() { r.source_restore_point.clone() } else { r.name };
            let source = self.0.peers.source(&from.peer, &from.collection, &r.source_restore_point).await?;
            let (rp, op) = engine.copy_restore_point(coll.id, name, source).await.map_err(grpc_status)?;
            Ok(Response::new(pb::CreateRestorePointResponse {
                restore_point: Some(convert::restore_point(&rp, None)),
                operation: Some(convert::operation(&op)),
            }))
        })
        .await
    }

    async fn delete_restore_point(
        &self,
        req: Request<pb::DeleteRestorePointRequest>,
    ) -> Result<Response<pb::DeleteRestorePointResponse>, Status> {
        guard("DeleteRestorePoint", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let rp = convert::restore_point_record(engine, &r.collection, &r.restore_point)?;
            engine.delete_restore_point(rp.id).await.map_err(grpc_status)?;
            Ok(Response::new(pb::DeleteRestorePointResponse {}))
        })
        .await
    }
}
