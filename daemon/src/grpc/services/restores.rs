//! Service `cairn.v1.Restores`: a disk restore point becomes a new disk, a restore point a
//! new group; both return their hydration operations at once.

use cairn_engine::{RestoreDisk, RevertInPlace};
use cairn_proto::v1 as pb;
use pb::restores_server::Restores;
use tonic::{Request, Response, Status};

use super::{Context, guard};
use crate::errors::grpc_status;
use crate::grpc::convert;

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

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

    async fn revert_in_place(
        &self,
        req: Request<pb::RevertInPlaceRequest>,
    ) -> Result<Response<pb::RevertInPlaceResponse>, Status> {
        guard("RevertInPlace", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let rp = convert::restore_point_record(engine, &r.collection, &r.restore_point)?;
            let disks =
                r.disks.iter().map(|d| convert::restore_point_disk(&rp, "disks", d)).collect::<Result<Vec<_>, _>>()?;
            let current_state = match (r.skip_current_state, r.current_state_name.trim()) {
                (true, _) => None,
                (false, "") => Some(format!("before-revert-{}", now_ms())),
                (false, name) => Some(name.to_owned()),
            };
            let report = engine
                .revert_in_place(RevertInPlace { restore_point: rp.id, disks, current_state })
                .await
                .map_err(grpc_status)?;
            Ok(Response::new(pb::RevertInPlaceResponse {
                disks: report
                    .disks
                    .iter()
                    .map(|d| pb::RevertedDisk {
                        disk_id: d.disk.to_string(),
                        disk_name: d.disk_name.to_string(),
                        chunks_compared: d.chunks_compared,
                        chunks_rewritten: d.chunks_rewritten,
                        bytes_written: d.bytes_written,
                        bytes_trimmed: d.bytes_trimmed,
                    })
                    .collect(),
                current_state: report.current_state.as_ref().map(|r| convert::restore_point(r, None)),
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
