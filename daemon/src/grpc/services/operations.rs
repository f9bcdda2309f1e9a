//! Service `cairn.v1.Operations`: get, list, cancel and watch long-running operations.

use std::time::Duration;

use cairn_proto::v1 as pb;
use pb::operations_server::Operations;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Context, guard};
use crate::errors::grpc_status;
use crate::grpc::convert::{self, page};

/// How often a watch looks at its operation.
const WATCH_POLL: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct OperationsService(pub Context);

#[tonic::async_trait]
impl Operations for OperationsService {
    type WatchOperationStream = ReceiverStream<Result<pb::Operation, Status>>;

    async fn get_operation(&self, req: Request<pb::GetOperationRequest>) -> Result<Response<pb::Operation>, Status> {
        guard("GetOperation", async {
            let id = convert::operation_id("id", &req.get_ref().id)?;
            Ok(Response::new(convert::operation(&self.0.engine.operation(id).map_err(grpc_status)?)))
        })
        .await
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        guard("ListOperations", async {
            let r = req.into_inner();
            let mut all = self.0.engine.list_operations().map_err(grpc_status)?;
            if r.running_only {
                all.retain(|o| !o.state.is_terminal());
            }
            let (records, next_page_token) = page(all, r.page_size, &r.page_token)?;
            Ok(Response::new(pb::ListOperationsResponse {
                operations: records.iter().map(convert::operation).collect(),
                next_page_token,
            }))
        })
        .await
    }

    async fn cancel_operation(
        &self,
        req: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        guard("CancelOperation", async {
            let id = convert::operation_id("id", &req.get_ref().id)?;
            Ok(Response::new(convert::operation(&self.0.engine.cancel_operation(id).map_err(grpc_status)?)))
        })
        .await
    }

    async fn watch_operation(
        &self,
        req: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        guard("WatchOperation", async {
            let id = convert::operation_id("id", &req.get_ref().id)?;
            let first = self.0.engine.operation(id).map_err(grpc_status)?;
            let (tx, rx) = mpsc::channel(4);
            let engine = self.0.engine.clone();
            let mut shutdown = self.0.shutdown.clone();
            super::spawn_guarded("WatchOperation", tx.clone(), async move {
                let mut last = None;
                let mut op = first;
                loop {
                    let msg = convert::operation(&op);
                    if last.as_ref() != Some(&msg) {
                        if tx.send(Ok(msg.clone())).await.is_err() {
                            return; // the client went away
                        }
                        last = Some(msg);
                    }
                    if op.state.is_terminal() {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(WATCH_POLL) => {}
                        _ = shutdown.changed() => {
                            let _ = tx.send(Err(Status::unavailable("the daemon is shutting down"))).await;
                            return;
                        }
                        () = tx.closed() => return,
                    }
                    op = match engine.operation(id) {
                        Ok(op) => op,
                        Err(e) => {
                            let _ = tx.send(Err(grpc_status(e))).await;
                            return;
                        }
                    };
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }
}
