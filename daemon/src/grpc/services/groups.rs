//! Service `cairn.v1.Groups`: the disks of one VM plus its configuration.

use cairn_engine::{CreateGroup, DiskId};
use cairn_proto::v1 as pb;
use pb::groups_server::Groups;
use tonic::{Request, Response, Status};

use super::{Context, guard};
use crate::errors::grpc_status;
use crate::grpc::convert::{self, page};

#[derive(Debug)]
pub struct GroupsService(pub Context);

impl GroupsService {
    fn disks(&self, names: &[String]) -> Result<Vec<DiskId>, Status> {
        names.iter().map(|d| convert::disk_id(&self.0.engine, "disks", d)).collect()
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
    async fn create_group(&self, req: Request<pb::CreateGroupRequest>) -> Result<Response<pb::Group>, Status> {
        guard("CreateGroup", async {
            let r = req.into_inner();
            let disks = self.disks(&r.disks)?;
            let record = self
                .0
                .engine
                .create_group(CreateGroup { name: r.name, disks, configuration: r.configuration })
                .await
                .map_err(grpc_status)?;
            Ok(Response::new(convert::group(&record)))
        })
        .await
    }

    async fn get_group(&self, req: Request<pb::GetGroupRequest>) -> Result<Response<pb::Group>, Status> {
        guard("GetGroup", async {
            let engine = &self.0.engine;
            let id = convert::group_id(engine, "group", &req.get_ref().group)?;
            Ok(Response::new(convert::group(&engine.group(id).map_err(grpc_status)?)))
        })
        .await
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        guard("ListGroups", async {
            let r = req.into_inner();
            let (records, next_page_token) = page(self.0.engine.list_groups(), r.page_size, &r.page_token)?;
            Ok(Response::new(pb::ListGroupsResponse {
                groups: records.iter().map(convert::group).collect(),
                next_page_token,
            }))
        })
        .await
    }

    async fn update_group(&self, req: Request<pb::UpdateGroupRequest>) -> Result<Response<pb::Group>, Status> {
        guard("UpdateGroup", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            let id = convert::group_id(engine, "group", &r.group)?;
            let disks = if r.set_disks { Some(self.disks(&r.disks)?) } else { None };
            let record = engine.update_group(id, disks, r.configuration).await.map_err(grpc_status)?;
            Ok(Response::new(convert::group(&record)))
        })
        .await
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        guard("DeleteGroup", async {
            let engine = &self.0.engine;
            let id = convert::group_id(engine, "group", &req.get_ref().group)?;
            engine.delete_group(id).await.map_err(grpc_status)?;
            Ok(Response::new(pb::DeleteGroupResponse {}))
        })
        .await
    }
}
