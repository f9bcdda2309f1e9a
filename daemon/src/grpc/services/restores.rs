//! Service `cairn.v1.Restores`: a disk restore point becomes a new disk, a restore point a
//! new group; both return their hydration operations at once.

use cairn_engine::RestoreDisk;
use cairn_proto::v1 as pb;
use pb::restores_server::Restores;
use tonic::{Request, Response, Status};

use super::{Context, guard};
use crate::errors::grpc_status;
use crate::grpc::convert;

#[derive(Debug)]
pub struct RestoresService(pub Context);

#[tonic::async_trait]
impl Restores for RestoresService {
    async fn restore_disk(
        &self,
        req: Request<pb::RestoreDiskRequest>,
    ) -> Result<Response<pb::RestoreDiskResponse>, Status> {
        guard("RestoreDisk", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let rp = convert::restore_point_record(engine, &r.collection, &r.restore_point)?;
            let disk = convert::restore_point_disk(&rp, "disk", &r.disk)?;
            let (record, op) = engine
                .restore_disk(RestoreDisk { restore_point: rp.id, disk, name: r.name, direct_io: r.direct_io })
                .await
                .map_err(grpc_status)?;
            Ok(Response::new(pb::RestoreDiskResponse {
                disk: Some(convert::disk(engine, &record)),
                operation: Some(convert::operation(&op)),
            }))
        })
        .await
    }

    async fn restore_group(
        &self,
        req: Request<pb::RestoreGroupRequest>,
    ) -> Result<Response<pb::RestoreGroupResponse>, Status> {
        guard("RestoreGroup", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let rp = convert::restore_point_record(engine, &r.collection, &r.restore_point)?;
            let (group, restored) = engine.restore_group(rp.id, &r.group_name).await.map_err(grpc_status)?;
            Ok(Response::new(pb::RestoreGroupResponse {
                group: Some(convert::group(&group)),
                disks: restored.iter().map(|(d, _)| convert::disk(engine, d)).collect(),
                operations: restored.iter().map(|(_, op)| convert::operation(op)).collect(),
            }))
        })
        .await
    }
}
