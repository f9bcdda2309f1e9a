//! Service `cairn.v1.Disks`: live disks.

use cairn_engine::CreateDisk;
use cairn_proto::v1 as pb;
use pb::disks_server::Disks;
use tonic::{Request, Response, Status};

use super::{Context, guard};
use crate::errors::grpc_status;
use crate::grpc::convert::{self, page};

#[derive(Debug)]
pub struct DisksService(pub Context);

#[tonic::async_trait]
impl Disks for DisksService {
    async fn create_disk(&self, req: Request<pb::CreateDiskRequest>) -> Result<Response<pb::Disk>, Status> {
        guard("CreateDisk", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let record = engine
                .create_disk(CreateDisk {
                    name: r.name,
                    size_bytes: r.size_bytes,
                    chunk_size_bytes: (r.chunk_size_bytes != 0).then_some(r.chunk_size_bytes),
                    direct_io: r.direct_io,
                })
                .await
                .map_err(grpc_status)?;
            Ok(Response::new(convert::disk(engine, &record)))
        })
        .await
    }

    async fn get_disk(&self, req: Request<pb::GetDiskRequest>) -> Result<Response<pb::Disk>, Status> {
        guard("GetDisk", async {
            let engine = &self.0.engine;
            let id = convert::disk_id(engine, "disk", &req.get_ref().disk)?;
            let record = engine.disk_record(id).map_err(grpc_status)?;
            Ok(Response::new(convert::disk(engine, &record)))
        })
        .await
    }

    async fn list_disks(&self, req: Request<pb::ListDisksRequest>) -> Result<Response<pb::ListDisksResponse>, Status> {
        guard("ListDisks", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let (records, next_page_token) = page(engine.list_disks(), r.page_size, &r.page_token)?;
            let disks = records.iter().map(|d| convert::disk(engine, d)).collect();
            Ok(Response::new(pb::ListDisksResponse { disks, next_page_token }))
        })
        .await
    }

    async fn resize_disk(&self, req: Request<pb::ResizeDiskRequest>) -> Result<Response<pb::Disk>, Status> {
        guard("ResizeDisk", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let id = convert::disk_id(engine, "disk", &r.disk)?;
            let record = engine.resize_disk(id, r.size_bytes).await.map_err(grpc_status)?;
            Ok(Response::new(convert::disk(engine, &record)))
        })
        .await
    }

    async fn delete_disk(
        &self,
        req: Request<pb::DeleteDiskRequest>,
    ) -> Result<Response<pb::DeleteDiskResponse>, Status> {
        guard("DeleteDisk", async {
            let engine = &self.0.engine;
            let id = convert::disk_id(engine, "disk", &req.get_ref().disk)?;
            engine.delete_disk(id).await.map_err(grpc_status)?;
            Ok(Response::new(pb::DeleteDiskResponse {}))
        })
        .await
    }
}
