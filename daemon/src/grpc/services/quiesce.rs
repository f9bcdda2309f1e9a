//! Service `cairn.v1.Quiesce`: a hypervisor host subscribes for a group over a bidirectional
//! stream and becomes one of the group's engine quiesce hooks while the stream lasts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_engine::{ConsistencyMode, HookContext, QuiesceHook};
use cairn_proto::v1 as pb;
use futures::future::BoxFuture;
use pb::quiesce_client_message::Message as ClientMsg;
use pb::quiesce_server::Quiesce;
use pb::quiesce_server_message::Message as ServerMsg;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Context, guard};
use crate::errors::invalid;
use crate::grpc::convert;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_TIMEOUT_MS: u64 = 600_000;

type Outbound = mpsc::Sender<Result<pb::QuiesceServerMessage, Status>>;

enum Reply {
    Quiesced(Result<ConsistencyMode, String>),
    Thawed(Result<(), String>),
}

/// One subscribed hypervisor, as an engine quiesce hook.
#[derive(Debug)]
struct Subscriber {
    tx: Outbound,
    pending: std::sync::Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next: AtomicU64,
    timeout: Duration,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reply::Quiesced(_) => "Quiesced",
            Reply::Thawed(_) => "Thawed",
        })
    }
}

impl Subscriber {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends a request and waits for its reply, up to the subscription's timeout.
    async fn ask(&self, phase: &str, make: impl FnOnce(u64) -> ServerMsg) -> Result<Reply, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, tx);
        let msg = pb::QuiesceServerMessage { message: Some(make(id)) };
        let exchange = async {
            self.tx.send(Ok(msg)).await.map_err(|_| format!("the hypervisor's subscription ended before {phase}"))?;
            rx.await.map_err(|_| format!("the hypervisor's subscription ended before it answered {phase}"))
        };
        let out = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("the hypervisor did not answer {phase} within {} ms", self.timeout.as_millis())),
        };
        self.pending().remove(&id);
        out
    }

    fn answer(&self, id: u64, reply: Reply) {
        match self.pending().remove(&id) {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => tracing::warn!(request_id = id, "quiesce subscriber answered an unknown or expired request"),
        }
    }
}

impl QuiesceHook for Subscriber {
    fn quiesce<'a>(&'a self, ctx: &'a HookContext) -> BoxFuture<'a, Result<ConsistencyMode, String>> {
        Box::pin(async move {
            let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
            let reply = self
                .ask("quiesce", |request_id| {
                    ServerMsg::Quiesce(pb::QuiesceRequest {
                        request_id,
                        restore_point: ctx.restore_point.to_string(),
                        requested: convert::consistency(ctx.requested).into(),
                        timeout_ms,
                    })
                })
                .await?;
            match reply {
                Reply::Quiesced(r) => r,
                Reply::Thawed(_) => Err("the hypervisor answered quiesce with a thaw reply".into()),
            }
        })
    }

    fn thaw<'a>(&'a self, ctx: &'a HookContext) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let reply = self
                .ask("thaw", |request_id| {
                    ServerMsg::Thaw(pb::ThawRequest { request_id, restore_point: ctx.restore_point.to_string() })
                })
                .await?;
            match reply {
                Reply::Thawed(r) => r,
                Reply::Quiesced(_) => Err("the hypervisor answered thaw with a quiesce reply".into()),
            }
        })
    }
}

fn error_or(error: String) -> Result<(), String> {
    if error.is_empty() { Ok(()) } else { Err(error) }
}

#[derive(Debug)]
pub struct QuiesceService(pub Context);

#[tonic::async_trait]
impl Quiesce for QuiesceService {
    type QuiesceSubscriptionStream = ReceiverStream<Result<pb::QuiesceServerMessage, Status>>;

    async fn quiesce_subscription(
        &self,
        req: Request<Streaming<pb::QuiesceClientMessage>>,
    ) -> Result<Response<Self::QuiesceSubscriptionStream>, Status> {
        guard("QuiesceSubscription", async {
            let engine = self.0.engine.clone();
            let mut inbound = req.into_inner();
            let Some(pb::QuiesceClientMessage { message: Some(ClientMsg::Subscribe(sub)) }) = inbound.message().await?
            else {
                return Err(invalid("subscribe", "the first message must be a subscribe"));
            };
            let group = convert::group_id(&engine, "subscribe.group", &sub.group)?;
            engine.group(group).map_err(crate::errors::grpc_status)?;
            let timeout = match sub.timeout_ms {
                0 => DEFAULT_TIMEOUT,
                t if t > MAX_TIMEOUT_MS => {
                    return Err(invalid("subscribe.timeout_ms", format!("{t} is larger than {MAX_TIMEOUT_MS}")));
                }
                t => Duration::from_millis(t),
            };
            let (tx, rx) = mpsc::channel(16);
            let subscriber =
                Arc::new(Subscriber { tx: tx.clone(), pending: Default::default(), next: AtomicU64::new(1), timeout });
            let hook: Arc<dyn QuiesceHook> = subscriber.clone();
            // Registered before the client hears it is subscribed: a restore point it asks
            // for right after must already count on it.
            engine.register_quiesce_hook(group, hook.clone());
            let subscribed = ServerMsg::Subscribed(pb::Subscribed { group_id: group.to_string() });
            if tx.send(Ok(pb::QuiesceServerMessage { message: Some(subscribed) })).await.is_err() {
                engine.unregister_quiesce_hook(group, &hook);
                return Err(Status::cancelled("the client went away"));
            }
            tracing::info!(%group, "hypervisor subscribed for quiesce");
            let mut shutdown = self.0.shutdown.clone();
            super::spawn_guarded("QuiesceSubscription", tx.clone(), async move {
                loop {
                    let next = tokio::select! {
                        m = inbound.message() => m,
                        _ = shutdown.changed() => {
                            let _ = tx.send(Err(Status::unavailable("the daemon is shutting down"))).await;
                            break;
                        }
                    };
                    match next {
                        Ok(Some(pb::QuiesceClientMessage { message: Some(ClientMsg::Quiesced(q)) })) => {
                            let r = if q.error.is_empty() {
                                convert::consistency_from("quiesced.achieved", q.achieved)
                                    .map_err(|e| e.message().to_owned())
                            } else {
                                Err(q.error)
                            };
                            subscriber.answer(q.request_id, Reply::Quiesced(r));
                        }
                        Ok(Some(pb::QuiesceClientMessage { message: Some(ClientMsg::Thawed(t)) })) => {
                            subscriber.answer(t.request_id, Reply::Thawed(error_or(t.error)));
                        }
                        Ok(Some(_)) => {
                            let _ = tx.send(Err(invalid("message", "expected a quiesced or thawed reply"))).await;
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                engine.unregister_quiesce_hook(group, &hook);
                subscriber.pending().clear();
                tracing::info!(%group, "hypervisor quiesce subscription ended");
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }
}
