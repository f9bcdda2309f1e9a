//! Service `cairn.v1.Collections`: restore point collections.
//!
//! CreateOrUpdate is a PUT, as Azure's restorePointCollections CreateOrUpdate: the request is
//! the collection wanted. A new name creates it; an existing one gets the request's
//! `max_restore_points` (0: the default) and hook (none: no hook). Its group and region are
//! fixed for life: a request naming others is INVALID_ARGUMENT naming the field.

use cairn_engine::{
    CollectionRecord, CollectionSource, CreateCollection, DEFAULT_MAX_RESTORE_POINTS, ScriptHook, UpdateCollection,
};
use cairn_proto::v1 as pb;
use pb::collections_server::Collections;
use tonic::{Request, Response, Status};

use super::{Context, guard};
use crate::errors::{grpc_status, invalid};
use crate::grpc::convert::{self, page};

#[derive(Debug)]
pub struct CollectionsService(pub Context);

impl CollectionsService {
    fn message(&self, c: &CollectionRecord) -> Result<pb::Collection, Status> {
        let count = self.0.engine.list_restore_points(c.id).map_err(grpc_status)?.len();
        Ok(convert::collection(c, count))
    }

    /// A copy collection: of a configured peer's collection, with no group and no hook. An
    /// existing one with the same source is left as it is but for its limit.
    async fn create_copy_collection(
        &self,
        name: String,
        source: pb::CollectionSource,
        group: String,
        hook: bool,
        max: u32,
    ) -> Result<Response<pb::Collection>, Status> {
        let engine = &self.0.engine;
        if !group.is_empty() || hook {
            return Err(invalid("source", "a copy collection has no group and no hook: give source alone"));
        }
        if self.0.peers.get(&source.peer).is_none() {
            return Err(invalid("source.peer", format!("{:?} is not a peer configured on this daemon", source.peer)));
        }
        let source = CollectionSource { peer: source.peer, collection: source.collection };
        let max = (max != 0).then_some(max);
        if let Ok(existing) = engine.collection_by_name(&name) {
            if existing.source.as_ref() != Some(&source) {
                return Err(invalid("source", format!("collection {} exists with another source", existing.name)));
            }
            let update =
                UpdateCollection { max_restore_points: Some(max.unwrap_or(DEFAULT_MAX_RESTORE_POINTS)), hook: None };
            let record = engine.update_collection(existing.id, update).await.map_err(grpc_status)?;
            return Ok(Response::new(self.message(&record)?));
        }
        let record = engine.create_copy_collection(&name, source, max).await.map_err(grpc_status)?;
        Ok(Response::new(self.message(&record)?))
    }
}

#[tonic::async_trait]
impl Collections for CollectionsService {
    async fn create_or_update_collection(
        &self,
        req: Request<pb::CreateOrUpdateCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        guard("CreateOrUpdateCollection", async {
            let r = req.into_inner();
            let engine = &self.0.engine;
            if let Some(source) = r.source {
                return self
                    .create_copy_collection(r.name, source, r.group, r.hook.is_some(), r.max_restore_points)
                    .await;
            }
            let group = convert::group_id(engine, "group", &r.group)?;
            let hook = r.hook.map(|h| ScriptHook { command: h.command, timeout_ms: h.timeout_ms });
            let region = (!r.region.is_empty()).then_some(r.region);
            let max = (r.max_restore_points != 0).then_some(r.max_restore_points);
            if !r.name.is_empty()
                && let Ok(existing) = engine.collection_by_name(&r.name)
            {
                if existing.group != group {
                    return Err(invalid(
                        "group",
                        format!(
                            "collection {} is of group {}; a collection's group cannot change",
                            existing.name, existing.group
                        ),
                    ));
                }
                if let Some(region) = region.filter(|x| *x != existing.region) {
                    return Err(invalid(
                        "region",
                        format!(
                            "collection {} is in region {}, not {region}; a collection's region cannot change",
                            existing.name, existing.region
                        ),
                    ));
                }
                let update = UpdateCollection {
                    max_restore_points: Some(max.unwrap_or(DEFAULT_MAX_RESTORE_POINTS)),
                    hook: Some(hook),
                };
                let record = engine.update_collection(existing.id, update).await.map_err(grpc_status)?;
                return Ok(Response::new(self.message(&record)?));
            }
            let record = engine
                .create_collection(CreateCollection { name: r.name, group, region, max_restore_points: max, hook })
                .await
                .map_err(grpc_status)?;
            Ok(Response::new(self.message(&record)?))
        })
        .await
    }

    async fn get_collection(&self, req: Request<pb::GetCollectionRequest>) -> Result<Response<pb::Collection>, Status> {
        guard("GetCollection", async {
            let c = convert::collection_record(&self.0.engine, "collection", &req.get_ref().collection)?;
            Ok(Response::new(self.message(&c)?))
        })
        .await
    }

    async fn list_collections(
        &self,
        req: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        guard("ListCollections", async {
            let r = req.into_inner();
            let all = self.0.engine.list_collections().map_err(grpc_status)?;
            let (records, next_page_token) = page(all, r.page_size, &r.page_token)?;
            let collections = records.iter().map(|c| self.message(c)).collect::<Result<_, _>>()?;
            Ok(Response::new(pb::ListCollectionsResponse { collections, next_page_token }))
        })
        .await
    }

    async fn delete_collection(
        &self,
        req: Request<pb::DeleteCollectionRequest>,
    ) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        guard("DeleteCollection", async {
            let r = req.into_inner();
            let c = convert::collection_record(&self.0.engine, "collection", &r.collection)?;
            self.0.engine.delete_collection(c.id, r.cascade).await.map_err(grpc_status)?;
            Ok(Response::new(pb::DeleteCollectionResponse {}))
        })
        .await
    }
}
