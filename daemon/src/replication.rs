//! Replication between daemons: the configured peers, the `cairn.v1.Replication` service a
//! daemon serves them on its own listener, and the client a copy pulls through.
//!
//! A peer is named in the config file (`[[peers]]`), never by a request: a copy dials only
//! the endpoint configured for the peer its collection names, checks the server against the
//! CA (or certificate) pinned for it, and presents the token configured for it. Serving, a
//! call is accepted only with a token some peer is configured to present (compared by hash)
//! and only for the collections that peer may copy; a record is served only when the named
//! restore point references it, so a peer reads nothing outside what it may copy.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_engine::{
    ChunkId, ChunkRef, CopySource, Engine, Error as EngineError, ExportedDisk, ExportedRestorePoint, RestorePointId,
    RestorePointRecord,
};
use cairn_proto::token::{AUTHORIZATION, BEARER_PREFIX, read_token};
use cairn_proto::v1 as pb;
use futures::future::BoxFuture;
use serde::Deserialize;
use tonic::{Request, Response, Status};

use crate::errors::grpc_status;
use crate::net::token::BearerToken;

/// Largest manifest or record accepted from a peer, and sent to one.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How long a call to a peer may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a served restore point's referenced records stay cached.
const REFERENCED_TTL: Duration = Duration::from_secs(300);

/// One `[[peers]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's name, as copy collections name it.
    pub name: String,
    /// Its replication listener, `https://HOST:PORT`; needed to copy from it.
    pub endpoint: Option<String>,
    /// The CA (or the server certificate itself), PEM, its replication listener must present
    /// a certificate of; needed with `endpoint`.
    pub ca: Option<PathBuf>,
    /// The token this daemon presents to the peer.
    pub token_file: Option<PathBuf>,
    /// The token the peer presents here; without it, the peer may copy nothing from here.
    pub accept_token_file: Option<PathBuf>,
    /// Collections of this daemon the peer may copy.
    #[serde(default)]
    pub collections: Vec<String>,
}

/// A configured peer, its files read.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub endpoint: Option<String>,
    ca_pem: Option<Vec<u8>>,
    token: Option<String>,
    accept: Option<BearerToken>,
    pub collections: Vec<String>,
}

/// Every configured peer.
#[derive(Debug, Clone, Default)]
pub struct Peers(Arc<Vec<Peer>>);

/// Why the peers could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {peer}: {message}")]
    Invalid { peer: String, message: String },
    #[error("peer {peer}: reading {path}: {source}")]
    Read {
        peer: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {peer}: {source}")]
    Token {
        peer: String,
        #[source]
        source: cairn_proto::token::TokenError,
    },
}

impl Peers {
    /// Reads and checks every peer's files now.
    pub fn load(configs: &[PeerConfig]) -> Result<Self, PeerError> {
        let mut peers = Vec::new();
        let mut names = HashSet::new();
        for c in configs {
            let invalid = |message: &str| PeerError::Invalid { peer: c.name.clone(), message: message.to_owned() };
            cairn_engine::Name::new(c.name.as_str()).map_err(|_| invalid("the name is not a valid name"))?;
            if !names.insert(c.name.clone()) {
                return Err(invalid("named twice"));
            }
            if let Some(e) = &c.endpoint {
                if !e.starts_with("https://") {
                    return Err(invalid("endpoint must be https://HOST:PORT: replication always speaks TLS"));
                }
                if c.ca.is_none() {
                    return Err(invalid("endpoint needs ca: the certificate or CA pinned for the peer"));
                }
            }
            let read = |p: &Path| {
                std::fs::read(p).map_err(|source| PeerError::Read { peer: c.name.clone(), path: p.into(), source })
            };
            let token = |p: &Path| read_token(p).map_err(|source| PeerError::Token { peer: c.name.clone(), source });
            peers.push(Peer {
                name: c.name.clone(),
                endpoint: c.endpoint.clone(),
                ca_pem: c.ca.as_deref().map(read).transpose()?,
                token: c.token_file.as_deref().map(token).transpose()?,
                accept: c.accept_token_file.as_deref().map(token).transpose()?.map(|t| BearerToken::new(&t)),
                collections: c.collections.clone(),
            });
        }
        Ok(Self(Arc::new(peers)))
    }

    pub fn get(&self, name: &str) -> Option<&Peer> {
        self.0.iter().find(|p| p.name == name)
    }

    /// Whether any peer may copy from here (the replication listener then has callers).
    pub fn accepts_any(&self) -> bool {
        self.0.iter().any(|p| p.accept.is_some())
    }

    /// The peer whose token the call carries.
    fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<&Peer, Status> {
        for p in self.0.iter() {
            if let Some(t) = &p.accept
                && t.check(metadata).is_ok()
            {
                return Ok(p);
            }
        }
        Err(Status::unauthenticated("no configured peer presents this token"))
    }

    /// A copy source for restore point `restore_point` of collection `collection` on `peer`.
    pub async fn source(
        &self,
        peer: &str,
        collection: &str,
        restore_point: &str,
    ) -> Result<Arc<dyn CopySource>, Status> {
        let p = self
            .get(peer)
            .ok_or_else(|| Status::failed_precondition(format!("peer {peer} is not configured on this daemon")))?;
        let (Some(endpoint), Some(ca)) = (&p.endpoint, &p.ca_pem) else {
            return Err(Status::failed_precondition(format!("peer {peer} has no endpoint configured to copy from")));
        };
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|e| Status::failed_precondition(format!("peer {peer}: endpoint {endpoint}: {e}")))?
            .tls_config(tls)
            .map_err(|e| Status::failed_precondition(format!("peer {peer}: TLS: {e}")))?
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .connect_lazy();
        let token =
            match &p.token {
                Some(t) => Some(format!("{BEARER_PREFIX}{t}").parse().map_err(|_| {
                    Status::failed_precondition(format!("peer {peer}: the token is not a header value"))
                })?),
                None => None,
            };
        let client = pb::replication_client::ReplicationClient::with_interceptor(channel, PresentToken(token))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Arc::new(GrpcSource {
            peer: peer.to_owned(),
            client,
            collection: collection.to_owned(),
            restore_point: restore_point.to_owned(),
        }))
    }
}

/// Adds the token configured for the peer to every call.
#[derive(Debug, Clone)]
struct PresentToken(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for PresentToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, t.clone());
        }
        Ok(req)
    }
}

type Client = pb::replication_client::ReplicationClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, PresentToken>,
>;

/// A copy source over a peer's replication service.
#[derive(Debug)]
struct GrpcSource {
    peer: String,
    client: Client,
    collection: String,
    restore_point: String,
}

/// A peer's failure as an engine error: what it said, and who said it.
fn peer_error(peer: &str, s: &Status) -> EngineError {
    let what = format!("peer {peer}: {} {}", s.code(), s.message());
    match s.code() {
        tonic::Code::NotFound => EngineError::NotFound { what },
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition => {
            EngineError::FailedPrecondition(what)
        }
        _ => EngineError::Io { context: "call peer", path: PathBuf::from(peer), source: std::io::Error::other(what) },
    }
}

fn chunk_id(field: &str, b: &[u8]) -> Result<ChunkId, String> {
    <[u8; 32]>::try_from(b).map(ChunkId).map_err(|_| format!("{field} is {} bytes, not 32", b.len()))
}

/// Turns a peer's manifest into the engine's, refusing anything malformed.
fn manifest_from(m: pb::Manifest) -> Result<ExportedRestorePoint, String> {
    let record: RestorePointRecord =
        serde_json::from_str(&m.restore_point_json).map_err(|e| format!("restore point record: {e}"))?;
    let mut disks = Vec::new();
    for (d, named) in m.disks.into_iter().zip(&record.disks) {
        if d.disk_id != named.disk.to_string() {
            return Err(format!("disk {} is not the record's disk {}", d.disk_id, named.disk));
        }
        let chunks = d
            .chunks
            .into_iter()
            .map(|c| {
                let content = chunk_id("content", &c.content)?;
                let r = match (c.base.is_empty(), c.delta.is_empty()) {
                    (true, true) => ChunkRef::Full(content),
                    (false, false) => ChunkRef::Delta {
                        content,
                        base: chunk_id("base", &c.base)?,
                        delta: chunk_id("delta", &c.delta)?,
                    },
                    _ => return Err(format!("chunk {}: a delta names both its base and its delta", c.index)),
                };
                Ok((c.index, r))
            })
            .collect::<Result<Vec<_>, String>>()?;
        disks.push(ExportedDisk { record: named.clone(), chunks });
    }
    Ok(ExportedRestorePoint { record, disks })
}

impl CopySource for GrpcSource {
    fn restore_point(&self) -> BoxFuture<'_, cairn_engine::Result<ExportedRestorePoint>> {
        Box::pin(async move {
            let req = pb::GetManifestRequest {
                collection: self.collection.clone(),
                restore_point: self.restore_point.clone(),
            };
            let m = self.client.clone().get_manifest(req).await.map_err(|s| peer_error(&self.peer, &s))?.into_inner();
            manifest_from(m).map_err(|e| EngineError::InvalidArgument {
                field: "source manifest",
                reason: format!("peer {}: {e}", self.peer),
            })
        })
    }

    fn record(&self, id: ChunkId) -> BoxFuture<'_, cairn_engine::Result<Vec<u8>>> {
        Box::pin(async move {
            let req = pb::ReadRecordRequest {
                collection: self.collection.clone(),
                restore_point: self.restore_point.clone(),
                chunk_id: id.0.to_vec(),
            };
            let r = self.client.clone().read_record(req).await.map_err(|s| peer_error(&self.peer, &s))?;
            Ok(r.into_inner().record)
        })
    }
}

/// When a served restore point's referenced records were listed, and the list.
type Referenced = (Instant, Arc<HashSet<ChunkId>>);

/// The service peers call.
#[derive(Debug, Clone)]
pub struct ReplicationService {
    engine: Engine,
    peers: Peers,
    /// Per served restore point: the records it references, and when that was listed.
    referenced: Arc<Mutex<HashMap<RestorePointId, Referenced>>>,
}

impl ReplicationService {
    pub fn new(engine: Engine, peers: Peers) -> Self {
        Self { engine, peers, referenced: Arc::default() }
    }

    /// The restore point a peer names, in a collection it may copy.
    fn allowed(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        collection: &str,
        rp: &str,
    ) -> Result<RestorePointRecord, Status> {
        let peer = self.peers.caller(metadata)?;
        if !peer.collections.iter().any(|c| c == collection) {
            return Err(Status::permission_denied(format!("peer {} may not copy collection {collection}", peer.name)));
        }
        let coll = self.engine.collection_by_name(collection).map_err(grpc_status)?;
        self.engine.restore_point_by_name(coll.id, rp).map_err(grpc_status)
    }

    fn referenced(&self, rp: RestorePointId) -> Result<Arc<HashSet<ChunkId>>, Status> {
        let mut cache = self.referenced.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (at, _)| at.elapsed() < REFERENCED_TTL);
        if let Some((_, set)) = cache.get(&rp) {
            return Ok(set.clone());
        }
        let m = self.engine.export_restore_point(rp).map_err(grpc_status)?;
        let set: Arc<HashSet<ChunkId>> =
            Arc::new(m.disks.iter().flat_map(|d| d.chunks.iter().flat_map(|(_, r)| r.stored())).collect());
        cache.insert(rp, (Instant::now(), set.clone()));
        Ok(set)
    }
}

fn entry(index: u64, r: &ChunkRef) -> Option<pb::ChunkEntry> {
    match r {
        ChunkRef::Zero => None,
        ChunkRef::Full(id) => Some(pb::ChunkEntry { index, content: id.0.to_vec(), base: vec![], delta: vec![] }),
        ChunkRef::Delta { content, base, delta } => {
            Some(pb::ChunkEntry { index, content: content.0.to_vec(), base: base.0.to_vec(), delta: delta.0.to_vec() })
        }
    }
}

#[tonic::async_trait]
impl pb::replication_server::Replication for ReplicationService {
    async fn get_manifest(&self, req: Request<pb::GetManifestRequest>) -> Result<Response<pb::Manifest>, Status> {
        let rp = self.allowed(req.metadata(), &req.get_ref().collection, &req.get_ref().restore_point)?;
        let m = self.engine.export_restore_point(rp.id).map_err(grpc_status)?;
        let restore_point_json = serde_json::to_string(&m.record).map_err(|e| Status::internal(e.to_string()))?;
        let disks = m
            .disks
            .iter()
            .map(|d| pb::DiskManifest {
                disk_id: d.record.disk.to_string(),
                chunks: d.chunks.iter().filter_map(|(i, r)| entry(*i, r)).collect(),
            })
            .collect();
        Ok(Response::new(pb::Manifest { restore_point_json, disks }))
    }

    async fn read_record(
        &self,
        req: Request<pb::ReadRecordRequest>,
    ) -> Result<Response<pb::ReadRecordResponse>, Status> {
        let rp = self.allowed(req.metadata(), &req.get_ref().collection, &req.get_ref().restore_point)?;
        let id = chunk_id("chunk_id", &req.get_ref().chunk_id).map_err(Status::invalid_argument)?;
        if !self.referenced(rp.id)?.contains(&id) {
            return Err(Status::not_found(format!("restore point {} references no record {id}", rp.name)));
        }
        let record = self.engine.export_record(id).await.map_err(grpc_status)?;
        Ok(Response::new(pb::ReadRecordResponse { record }))
    }
}
