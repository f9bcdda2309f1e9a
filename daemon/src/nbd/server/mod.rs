//! The NBD server: handshake, then transmission with many requests in flight.
//!
//! Per connection there is one reader (this task: it decodes requests and spawns one task
//! per request) and one writer task (it owns the socket's write half and sends replies in
//! the order they complete, so replies go out of order). Memory per connection is bounded:
//! a request takes permits for itself and the bytes it holds (write payload, read buffer)
//! before its payload is read, and gives them back once its last reply chunk is written; a
//! client that floods requests simply stops being read until replies drain.
//!
//! Malformed input that leaves the stream undecodable (bad magic, oversize lengths, unknown
//! client flags) ends that one connection; everything else gets the spec's error reply and
//! the session goes on.
//!
//! TLS: on a connection whose listener has TLS the server is in the spec's FORCEDTLS mode
//! (the rules are [`p::tls_verdict`]): after `NBD_OPT_STARTTLS` is acknowledged the same
//! stream is upgraded with rustls and the haggling starts over inside TLS, with no state
//! kept from before. The handshake and transmission are generic over the stream
//! ([`Connection`]), so plain and TLS connections run the same code; a failed TLS handshake
//! ends that connection only.

use std::sync::Arc;
use std::time::Duration;

use cairn_engine::IoBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::errors::nbd_errno;
use crate::nbd::codec::{self as p, ClientOption, Command, Errno, Request, TlsMode, TlsVerdict};
use crate::nbd::exports::{Export, ExportSource};

/// Tunables of the server; the defaults suit a hypervisor host.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests in flight per connection before the server stops reading that connection.
    pub max_inflight_requests: u32,
    /// Payload and buffer bytes in flight per connection (at least one maximum payload).
    pub max_inflight_bytes: u32,
    /// Time a client gets to finish the handshake.
    pub handshake_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_inflight_requests: 128,
            max_inflight_bytes: 2 * p::MAX_PAYLOAD_BYTES,
            handshake_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

/// Bytes of zeros written per step when WRITE_ZEROES must allocate (NO_HOLE).
const ZERO_STEP_BYTES: u32 = 1 << 20;
/// Longest range one BLOCK_STATUS looks at; the client asks again for the rest.
const MAX_STATUS_SPAN_BYTES: u64 = 1 << 30;
/// Most descriptors in one BLOCK_STATUS chunk (the spec's SHOULD is 2^20).
const MAX_DESCRIPTORS: usize = 1 << 16;
/// Most metadata contexts one SET_META_CONTEXT may select (each costs a lookup per
/// BLOCK_STATUS); more get `NBD_REP_ERR_TOO_BIG`.
const MAX_META_CONTEXTS: usize = 64;

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Violation(#[from] p::Violation),
    #[error("no export named {0:?} (NBD_OPT_EXPORT_NAME cannot report errors)")]
    UnknownExport(String),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS is required and the client asked for an export without it (or without fixed newstyle)")]
    TlsRequired,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

/// A byte stream the server can serve. Transmission reads and writes from two tasks, so
/// the stream splits into halves: sockets without a lock, anything else (TLS) through
/// [`tokio::io::split`].
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl Connection for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Connection for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Connection for tokio::io::DuplexStream {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

impl<S: Connection> Connection for tokio_rustls::server::TlsStream<S> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// What TLS a connection gets, as its listener decides.
#[derive(Clone)]
pub enum TlsPolicy {
    /// No TLS configured: STARTTLS is unsupported.
    Unconfigured,
    /// TLS configured but not on this listener (a unix socket): STARTTLS is refused by policy.
    NotOffered,
    /// TLS required before anything else (FORCEDTLS), with this acceptor.
    Required(TlsAcceptor),
}

impl std::fmt::Debug for TlsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsPolicy::Unconfigured => "Unconfigured",
            TlsPolicy::NotOffered => "NotOffered",
            TlsPolicy::Required(_) => "Required",
        })
    }
}

impl TlsPolicy {
    fn mode(&self) -> TlsMode {
        match self {
            TlsPolicy::Unconfigured => TlsMode::Unconfigured,
            TlsPolicy::NotOffered => TlsMode::NotOffered,
            TlsPolicy::Required(_) => TlsMode::Required,
        }
    }
}

/// An NBD server over a source of exports.
pub struct Server {
    exports: Arc<dyn ExportSource>,
    config: ServerConfig,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The outcome of the handshake.
struct Session {
    export: Arc<dyn Export>,
    structured: bool,
    limits: p::Limits,
    /// Selected metadata contexts; each one's id is its position plus one.
    contexts: Vec<MetaContext>,
}

/// How the handshake ended.
enum Negotiated {
    Transmission(Session),
    /// STARTTLS was acknowledged: upgrade the stream, then haggle again.
    StartTls,
    /// The client aborted, or the server is shutting down.
    Closed,
}

/// Metadata contexts selected by SET_META_CONTEXT, and for which export.
struct MetaSelection {
    export: String,
    contexts: Vec<MetaContext>,
}

/// A metadata context an export offers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MetaContext {
    /// `base:allocation`: holes (and zero chunks) versus data.
    BaseAllocation,
    /// `qemu:dirty-bitmap:NAME`: what changed since NAME (an older restore point).
    DirtyBitmap(String),
}

impl MetaContext {
    fn name(&self) -> String {
        match self {
            MetaContext::BaseAllocation => p::BASE_ALLOCATION.to_owned(),
            MetaContext::DirtyBitmap(b) => format!("{}{b}", p::DIRTY_BITMAP_PREFIX),
        }
    }

    /// The context a SET_META_CONTEXT query names exactly (wildcards select nothing).
    fn parse(query: &str) -> Option<Self> {
        if query == p::BASE_ALLOCATION {
            return Some(MetaContext::BaseAllocation);
        }
        let bitmap = query.strip_prefix(p::DIRTY_BITMAP_PREFIX).filter(|b| !b.is_empty())?;
        Some(MetaContext::DirtyBitmap(bitmap.to_owned()))
    }

    /// Whether a LIST_META_CONTEXT query lists this context: its exact name, or the
    /// wildcards `base:`, `qemu:` and `qemu:dirty-bitmap:` (QEMU's interop doc).
    fn listed_by(&self, query: &str) -> bool {
        match self {
            MetaContext::BaseAllocation => query == "base:" || query == p::BASE_ALLOCATION,
            MetaContext::DirtyBitmap(_) => query == "qemu:" || query == p::DIRTY_BITMAP_PREFIX || query == self.name(),
        }
    }
}

/// Every metadata context `export` offers.
fn available_contexts(export: &dyn Export) -> Vec<MetaContext> {
    let mut all = vec![MetaContext::BaseAllocation];
    all.extend(export.dirty_bitmaps().into_iter().map(MetaContext::DirtyBitmap));
    all
}

/// What LIST_META_CONTEXT answers: everything for no query, else what any query lists.
fn list_contexts(available: &[MetaContext], queries: &[String]) -> Vec<MetaContext> {
    available.iter().filter(|c| queries.is_empty() || queries.iter().any(|q| c.listed_by(q))).cloned().collect()
}

/// What SET_META_CONTEXT selects: each available context a query names, once, in query
/// order; unknown names are ignored, as the spec demands.
fn select_contexts(available: &[MetaContext], queries: &[String]) -> Vec<MetaContext> {
    let mut selected: Vec<MetaContext> = Vec::new();
    for c in queries.iter().filter_map(|q| MetaContext::parse(q)) {
        if available.contains(&c) && !selected.contains(&c) {
            selected.push(c);
        }
    }
    selected
}

/// Context id of the `index`th selected context (ids are nonzero and per session).
fn context_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// Transmission flags for an export: exactly what the server supports on it.
pub fn transmission_flags(export: &dyn Export, structured: bool) -> u16 {
    let mut flags = p::FLAG_HAS_FLAGS | p::FLAG_SEND_FLUSH | p::FLAG_SEND_CACHE;
    if export.read_only() {
        flags |= p::FLAG_READ_ONLY;
    } else {
        flags |= p::FLAG_SEND_FUA | p::FLAG_SEND_TRIM | p::FLAG_SEND_WRITE_ZEROES | p::FLAG_SEND_FAST_ZERO;
    }
    if structured {
        flags |= p::FLAG_SEND_DF;
    }
    if export.can_multi_conn() {
        flags |= p::FLAG_CAN_MULTI_CONN;
    }
    flags
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await;
}

impl Server {
    pub fn new(exports: Arc<dyn ExportSource>, config: ServerConfig) -> Self {
        Self { exports, config }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Serves one connection until the client disconnects, breaks the protocol, or
    /// `shutdown` turns true (then requests in flight finish and their replies are sent).
    pub async fn serve<S: Connection>(
        &self,
        mut stream: S,
        tls: TlsPolicy,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        // One deadline for the whole handshake, the TLS upgrade included.
        let deadline = Instant::now() + self.config.handshake_timeout;
        let mode = tls.mode();
        let Some(client) = self.step(deadline, &mut shutdown, greet(&mut stream, mode)).await? else {
            return self.finish(Negotiated::Closed, stream, shutdown).await;
        };
        let negotiated = self.step(deadline, &mut shutdown, self.options(&mut stream, client, mode)).await?;
        let acceptor = match (negotiated, tls) {
            (Some(Negotiated::StartTls), TlsPolicy::Required(acceptor)) => acceptor,
            (negotiated, _) => return self.finish(negotiated.unwrap_or(Negotiated::Closed), stream, shutdown).await,
        };
        let upgrade = async { acceptor.accept(stream).await.map_err(ConnectionError::Tls) };
        let Some(mut stream) = self.step(deadline, &mut shutdown, upgrade).await? else { return Ok(()) };
        let negotiated = self.step(deadline, &mut shutdown, self.options(&mut stream, client, TlsMode::Active)).await?;
        self.finish(negotiated.unwrap_or(Negotiated::Closed), stream, shutdown).await
    }

    /// Runs one handshake step before `deadline`; `None` when the daemon shuts down first.
    async fn step<T>(
        &self,
        deadline: Instant,
        shutdown: &mut watch::Receiver<bool>,
        step: impl Future<Output = Result<T, ConnectionError>>,
    ) -> Result<Option<T>, ConnectionError> {
        tokio::select! {
            biased;
            () = stopped(shutdown) => Ok(None),
            r = tokio::time::timeout_at(deadline, step) => {
                r.map_err(|_| ConnectionError::HandshakeTimeout(self.config.handshake_timeout))?.map(Some)
            }
        }
    }

    /// Enters transmission, or closes the stream.
    async fn finish<S: Connection>(
        &self,
        negotiated: Negotiated,
        mut stream: S,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        match negotiated {
            Negotiated::Transmission(session) => {
                tracing::debug!(export = %session.export.name(), structured = session.structured, "transmission");
                self.transmit(session, stream, shutdown).await
            }
            // Only a FORCEDTLS connection acknowledges STARTTLS, and `serve` upgrades those.
            Negotiated::StartTls => Err(ConnectionError::TlsRequired),
            Negotiated::Closed => {
                let _ = stream.shutdown().await;
                Ok(())
            }
        }
    }

    /// Option haggling until an export is chosen, the client aborts, or STARTTLS is
    /// acknowledged. Unbuffered: nothing the client sends after STARTTLS is read here.
    async fn options<S>(
        &self,
        stream: &mut S,
        client: p::ClientFlags,
        mode: TlsMode,
    ) -> Result<Negotiated, ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut structured = false;
        let mut meta: Option<MetaSelection> = None;
        let mut out = Vec::with_capacity(256);
        loop {
            out.clear();
            let mut raw = [0u8; p::OPTION_HEADER_LEN];
            stream.read_exact(&mut raw).await?;
            let header = p::decode_option_header(&raw)?;
            let len = usize::try_from(header.len).unwrap_or(usize::MAX);
            let mut data = vec![0u8; len];
            stream.read_exact(&mut data).await?;
            let option = header.option;
            match p::tls_verdict(mode, option, header.len) {
                TlsVerdict::Proceed => {}
                TlsVerdict::StartTls => {
                    p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                    return Ok(Negotiated::StartTls);
                }
                TlsVerdict::Refuse { reply, message } => {
                    p::encode_option_error(&mut out, option, reply, message);
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                    continue;
                }
                TlsVerdict::Close => return Err(ConnectionError::TlsRequired),
            }

            let parsed = match p::parse_option(option, &data) {
                Ok(o) => o,
                Err(invalid) => {
                    if option == p::OPT_EXPORT_NAME {
                        // No error reply exists for EXPORT_NAME: end the session.
                        return Err(ConnectionError::UnknownExport(invalid.to_string()));
                    }
                    p::encode_option_error(&mut out, option, p::REP_ERR_INVALID, &invalid.0);
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                    continue;
                }
            };
            match parsed {
                ClientOption::ExportName(name) => {
                    let Some(export) = self.exports.open(&name) else {
                        return Err(ConnectionError::UnknownExport(name));
                    };
                    let flags = transmission_flags(&*export, structured);
                    let size = export.size_bytes();
                    p::encode_export_name_reply(&mut out, size, flags, client.no_zeroes);
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                    let contexts = meta_for(meta, &name);
                    return Ok(Negotiated::Transmission(session(export, structured, flags, contexts)));
                }
                ClientOption::Abort => {
                    p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                    // The client may already be gone: a failed ACK is not an error.
                    let _ = stream.write_all(&out).await;
                    let _ = stream.flush().await;
                    return Ok(Negotiated::Closed);
                }
                ClientOption::List => {
                    for name in self.exports.list() {
                        p::encode_rep_server(&mut out, &name);
                    }
                    p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                }
                // `tls_verdict` answers every STARTTLS; this one is never reached.
                ClientOption::StartTls => {
                    p::encode_option_error(&mut out, option, p::REP_ERR_INVALID, "NBD_OPT_STARTTLS is not valid now")
                }
                ClientOption::Info(req) | ClientOption::Go(req) => {
                    let go = option == p::OPT_GO;
                    let Some(export) = self.exports.open(&req.name) else {
                        p::encode_option_error(
                            &mut out,
                            option,
                            p::REP_ERR_UNKNOWN,
                            &format!("no export named {:?}", req.name),
                        );
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        continue;
                    };
                    let flags = transmission_flags(&*export, structured);
                    let size = export.size_bytes();
                    p::encode_info_export(&mut out, option, size, flags);
                    if req.requests.contains(&p::INFO_NAME) {
                        p::encode_info_string(&mut out, option, p::INFO_NAME, &export.name());
                    }
                    if req.requests.contains(&p::INFO_DESCRIPTION) {
                        let d = export.description();
                        p::encode_info_string(&mut out, option, p::INFO_DESCRIPTION, &d);
                    }
                    // Always sent: a client that did not ask still learns the constraints,
                    // and the server errors misaligned requests cleanly either way.
                    p::encode_info_block_size(
                        &mut out,
                        option,
                        export.min_block_bytes(),
                        export.preferred_block_bytes(),
                        p::MAX_PAYLOAD_BYTES,
                    );
                    p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                    if go {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        let contexts = meta_for(meta, &req.name);
                        return Ok(Negotiated::Transmission(session(export, structured, flags, contexts)));
                    }
                }
                ClientOption::StructuredReply => {
                    structured = true;
                    p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                }
                ClientOption::ListMetaContext(req) => match self.exports.open(&req.name) {
                    None => p::encode_option_error(
                        &mut out,
                        option,
                        p::REP_ERR_UNKNOWN,
                        &format!("no export named {:?}", req.name),
                    ),
                    Some(export) => {
                        for c in list_contexts(&available_contexts(&*export), &req.queries) {
                            p::encode_meta_context(&mut out, option, 0, &c.name());
                        }
                        p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                    }
                },
                ClientOption::SetMetaContext(req) => {
                    // The selection is replaced even when this option fails.
                    meta = None;
                    if !structured {
                        p::encode_option_error(
                            &mut out,
                            option,
                            p::REP_ERR_INVALID,
                            "negotiate NBD_OPT_STRUCTURED_REPLY first",
                        );
                    } else if let Some(export) = self.exports.open(&req.name) {
                        let contexts = select_contexts(&available_contexts(&*export), &req.queries);
                        if contexts.len() > MAX_META_CONTEXTS {
                            p::encode_option_error(
                                &mut out,
                                option,
                                p::REP_ERR_TOO_BIG,
                                &format!("at most {MAX_META_CONTEXTS} metadata contexts at once"),
                            );
                        } else {
                            for (i, c) in contexts.iter().enumerate() {
                                p::encode_meta_context(&mut out, option, context_id(i), &c.name());
                            }
                            p::encode_option_reply(&mut out, option, p::REP_ACK, &[]);
                            meta = Some(MetaSelection { export: req.name, contexts });
                        }
                    } else {
                        p::encode_option_error(
                            &mut out,
                            option,
                            p::REP_ERR_UNKNOWN,
                            &format!("no export named {:?}", req.name),
                        );
                    }
                }
                ClientOption::ExtendedHeaders => {
                    p::encode_option_error(&mut out, option, p::REP_ERR_UNSUP, "extended headers are not supported")
                }
                ClientOption::Unknown(code) => p::encode_option_error(
                    &mut out,
                    option,
                    p::REP_ERR_UNSUP,
                    &format!("option {code} is not supported"),
                ),
            }
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
    }

    async fn transmit<S: Connection>(
        &self,
        session: Session,
        stream: S,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        // Buffered both ways: many small requests per read syscall, many replies per write.
        // Payloads larger than the buffer bypass it, so big writes are not copied twice.
        let (reader, writer) = stream.into_halves();
        let mut reader = BufReader::with_capacity(128 << 10, reader);
        let writer = BufWriter::with_capacity(256 << 10, writer);
        let session = Arc::new(session);
        let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
        let writer_task = tokio::spawn(write_loop(writer, rx));
        let requests = Arc::new(Semaphore::new(usize::try_from(self.config.max_inflight_requests).unwrap_or(1)));
        let byte_budget = self.config.max_inflight_bytes.max(p::MAX_PAYLOAD_BYTES);
        let bytes = Arc::new(Semaphore::new(usize::try_from(byte_budget).unwrap_or(usize::MAX >> 4)));
        let mut tasks = JoinSet::new();
        let mut result = Ok(());

        loop {
            let mut raw = [0u8; p::REQUEST_LEN];
            let got = tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break,
                r = reader.read_exact(&mut raw) => r,
            };
            if let Err(e) = got {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    result = Err(e.into());
                }
                break;
            }
            while tasks.try_join_next().is_some() {}
            let req = match p::decode_request(&raw) {
                Ok(r) => r,
                Err(v) => {
                    result = Err(v.into());
                    break;
                }
            };
            if req.command == Command::Disc {
                break;
            }
            let verdict = p::check_request(&req, &session.limits);
            let cost = if verdict.is_ok() { held_bytes(&req) } else { req.payload_len() }.min(byte_budget);
            // Throttle: stop reading this connection until enough replies have drained.
            let permits = tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break,
                p = acquire(&requests, &bytes, cost) => p,
            };
            let Some(permits) = permits else { break };
            let payload = if req.payload_len() > 0 {
                let n = usize::try_from(req.payload_len()).unwrap_or(0);
                let mut buf = IoBuf::for_overwrite(n);
                let got = tokio::select! {
                    biased;
                    () = stopped(&mut shutdown) => break,
                    r = reader.read_exact(&mut buf[..]) => r,
                };
                if let Err(e) = got {
                    result = Err(e.into());
                    break;
                }
                Some(buf)
            } else {
                None
            };
            let reply =
                Reply { cookie: req.cookie, structured: session.structured, tx: tx.clone(), permits: Some(permits) };
            let session = session.clone();
            let small = req.len <= INLINE_MAX_BYTES;
            let mut job = Box::pin(async move {
                match verdict {
                    Ok(()) => execute(&session, req, payload, reply).await,
                    Err(e) => reply.error(e, &refusal(&req, e)),
                }
            });
            // A small request that completes at once (a read from the page cache, say) is
            // done right here: a task of its own would cost more than the request. Anything
            // that has to wait goes on in its own task, so replies still come out of order.
            if small && futures::poll!(job.as_mut()).is_ready() {
                continue;
            }
            tasks.spawn(job);
        }
        // Requests already read still complete and get their replies.
        while tasks.join_next().await.is_some() {}
        drop(tx);
        match writer_task.await {
            Ok(Ok(())) => result,
            Ok(Err(e)) => result.and(Err(e.into())),
            Err(join) => result.and(Err(std::io::Error::other(join).into())),
        }
    }
}

/// Greeting and client flags. TLS needs fixed newstyle: without it a FORCEDTLS connection
/// cannot go on.
async fn greet<S>(stream: &mut S, mode: TlsMode) -> Result<p::ClientFlags, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&p::greeting()).await?;
    stream.flush().await?;
    let mut raw = [0u8; 4];
    stream.read_exact(&mut raw).await?;
    let client = p::decode_client_flags(raw)?;
    if mode == TlsMode::Required && !client.fixed_newstyle {
        return Err(ConnectionError::TlsRequired);
    }
    Ok(client)
}

fn session(export: Arc<dyn Export>, structured: bool, flags: u16, contexts: Vec<MetaContext>) -> Session {
    let limits = p::Limits {
        flags,
        size_bytes: export.size_bytes(),
        min_block_bytes: export.min_block_bytes(),
        meta_context: !contexts.is_empty(),
    };
    Session { export, structured, limits, contexts }
}

/// The contexts selected for the export the client went on to use (none if it selected
/// them for another export).
fn meta_for(meta: Option<MetaSelection>, export: &str) -> Vec<MetaContext> {
    meta.filter(|m| m.export == export).map(|m| m.contexts).unwrap_or_default()
}

/// Largest request tried inline by the connection's reader before it gets a task of its own.
const INLINE_MAX_BYTES: u32 = 64 << 10;

/// Bytes a request holds in memory while in flight.
fn held_bytes(req: &Request) -> u32 {
    match req.command {
        Command::Read | Command::Write => req.len,
        Command::WriteZeroes if req.has(p::CMD_FLAG_NO_HOLE) => req.len.min(ZERO_STEP_BYTES),
        _ => 0,
    }
}

/// Both permits of a request: one request slot, and its bytes.
struct Permits {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

async fn acquire(requests: &Arc<Semaphore>, bytes: &Arc<Semaphore>, cost: u32) -> Option<Permits> {
    let request = requests.clone().acquire_owned().await.ok()?;
    let bytes = if cost > 0 { Some(bytes.clone().acquire_many_owned(cost).await.ok()?) } else { None };
    Some(Permits { _request: request, _bytes: bytes })
}

/// Why a request was refused before it ran, for the error chunk's message.
fn refusal(req: &Request, e: Errno) -> String {
    match e {
        Errno::Perm => "the export is read-only".into(),
        Errno::NoSpc => format!("range {}+{} ends past the end of the export", req.offset, req.len),
        _ => match req.command {
            Command::Unknown(code) => format!("unknown command {code}"),
            _ => {
                format!("invalid {:?} request (flags {:#x}, range {}+{})", req.command, req.flags, req.offset, req.len)
            }
        },
    }
}

/// A message for the writer: header bytes, optional data, and the permits it releases once
/// it is on the wire.
struct Outgoing {
    head: Vec<u8>,
    data: Option<IoBuf>,
    _permits: Option<Permits>,
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: BufWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) -> std::io::Result<()> {
    while let Some(mut msg) = rx.recv().await {
        loop {
            w.write_all(&msg.head).await?;
            if let Some(data) = &msg.data {
                w.write_all(data).await?;
            }
            drop(msg);
            // Batch whatever is already queued into one flush.
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        w.flush().await?;
    }
    w.shutdown().await
}

/// Builds and sends the reply chunks of one request.
struct Reply {
    cookie: u64,
    structured: bool,
    tx: mpsc::UnboundedSender<Outgoing>,
    permits: Option<Permits>,
}

impl Reply {
    /// Sends a message; `last` hands over the request's permits with it.
    fn send(&mut self, head: Vec<u8>, data: Option<IoBuf>, last: bool) {
        let permits = if last { self.permits.take() } else { None };
        // A send fails only when the writer is gone (the socket broke): nothing to do then.
        let _ = self.tx.send(Outgoing { head, data, _permits: permits });
    }

    fn ok(mut self) {
        let mut head = Vec::with_capacity(p::SIMPLE_REPLY_LEN);
        p::encode_simple_reply(&mut head, 0, self.cookie);
        self.send(head, None, true);
    }

    fn error(mut self, e: Errno, message: &str) {
        let mut head = Vec::with_capacity(p::CHUNK_HEADER_LEN + 6 + message.len());
        if self.structured {
            p::encode_error_chunk(&mut head, self.cookie, e, message);
        } else {
            p::encode_simple_reply(&mut head, e.code(), self.cookie);
        }
        self.send(head, None, true);
    }

    fn engine_error(self, e: &cairn_engine::Error) {
        let code = nbd_errno(e);
        self.error(code, &e.to_string());
    }

    fn result(self, r: cairn_engine::Result<()>) {
        match r {
            Ok(()) => self.ok(),
            Err(e) => self.engine_error(&e),
        }
    }
}

async fn execute(session: &Session, req: Request, payload: Option<IoBuf>, reply: Reply) {
    let export = &*session.export;
    let fua = req.has(p::CMD_FLAG_FUA);
    let (offset, len) = (req.offset, u64::from(req.len));
    match req.command {
        Command::Read => read(export, &req, reply).await,
        Command::Write => match payload {
            Some(buf) => reply.result(export.write(offset, buf, fua).await),
            None => reply.ok(),
        },
        Command::Flush => reply.result(export.flush().await),
        Command::Trim => reply.result(export.punch(offset, len, fua).await),
        Command::Cache => reply.result(export.cache(offset, len).await),
        Command::WriteZeroes => {
            if !req.has(p::CMD_FLAG_NO_HOLE) {
                // Punching is faster than writing, so FAST_ZERO is honoured too.
                reply.result(export.punch(offset, len, fua).await);
            } else if req.has(p::CMD_FLAG_FAST_ZERO) {
                reply.error(Errno::NotSup, "allocated zeroes are no faster than a write");
            } else {
                reply.result(write_zeroes(export, offset, len, fua).await);
            }
        }
        Command::BlockStatus => block_status(session, &req, reply).await,
        // Filtered out before execution.
        Command::Disc | Command::Unknown(_) => reply.error(Errno::Inval, "not executable"),
    }
}

/// WRITE_ZEROES with NO_HOLE: real zeros, so the range stays allocated.
async fn write_zeroes(export: &dyn Export, offset: u64, len: u64, fua: bool) -> cairn_engine::Result<()> {
    let step = u64::from(ZERO_STEP_BYTES);
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = (end - pos).min(step);
        let buf = IoBuf::zeroed(usize::try_from(n).unwrap_or(0));
        export.write(pos, buf, false).await?;
        pos += n;
    }
    if fua { export.flush().await } else { Ok(()) }
}

async fn read(export: &dyn Export, req: &Request, mut reply: Reply) {
    let (offset, len) = (req.offset, u64::from(req.len));
    if !reply.structured {
        // Simple replies: the whole range as data, or an error with no payload.
        match export.read(offset, len).await {
            Ok(buf) => {
                let mut head = Vec::with_capacity(p::SIMPLE_REPLY_LEN);
                p::encode_simple_reply(&mut head, 0, reply.cookie);
                reply.send(head, Some(buf), true);
            }
            Err(e) => reply.engine_error(&e),
        }
        return;
    }
    if len == 0 {
        let mut head = Vec::with_capacity(p::CHUNK_HEADER_LEN);
        p::encode_none(&mut head, reply.cookie);
        reply.send(head, None, true);
        return;
    }
    // A short read would fold any hole into data anyway (see `coalesce`), unless it lies
    // wholly in a hole: not worth two SEEK_DATA/SEEK_HOLE calls on every small random read.
    let extents = if len < MIN_HOLE_CHUNK_BYTES {
        vec![cairn_engine::Extent { offset, len, data: true }]
    } else {
        match export.extents(offset, len).await {
            Ok(e) => e,
            Err(e) => return reply.engine_error(&e),
        }
    };
    let all_hole = extents.iter().all(|e| !e.data);
    if all_hole {
        // One hole chunk is one content chunk, so this also honours DF.
        let mut head = Vec::with_capacity(p::CHUNK_HEADER_LEN + 12);
        p::encode_offset_hole(&mut head, reply.cookie, offset, req.len, true);
        reply.send(head, None, true);
        return;
    }
    let extents = coalesce(&extents);
    if req.has(p::CMD_FLAG_DF) || extents.len() == 1 {
        // Don't fragment (or nothing to skip): one data chunk with the holes' zeros in it.
        match export.read(offset, len).await {
            Ok(buf) => {
                let mut head = Vec::with_capacity(p::CHUNK_HEADER_LEN + 8);
                p::encode_offset_data_header(&mut head, reply.cookie, offset, req.len, true);
                reply.send(head, Some(buf), true);
            }
            Err(e) => reply.engine_error(&e),
        }
        return;
    }
    let last = extents.len() - 1;
    for (i, ext) in extents.iter().enumerate() {
        let done = i == last;
        // Extents lie inside the request, whose length fits in 32 bits.
        let ext_len = u32::try_from(ext.len).unwrap_or(u32::MAX);
        if ext.data {
            match export.read(ext.offset, ext.len).await {
                Ok(buf) => {
                    let mut head = Vec::with_capacity(p::CHUNK_HEADER_LEN + 8);
                    p::encode_offset_data_header(&mut head, reply.cookie, ext.offset, ext_len, done);
                    reply.send(head, Some(buf), done);
                }
                Err(e) => return reply.engine_error(&e),
            }
        } else {
            let mut head = Vec::with_capacity(p::CHUNK_HEADER_LEN + 12);
            p::encode_offset_hole(&mut head, reply.cookie, ext.offset, ext_len, done);
            reply.send(head, None, done);
        }
    }
}

/// Holes shorter than this between data go out as data: a separate chunk and a second read
/// cost more than the zeros.
const MIN_HOLE_CHUNK_BYTES: u64 = 64 << 10;

/// Extents with short holes folded into the data around them.
fn coalesce(extents: &[cairn_engine::Extent]) -> Vec<cairn_engine::Extent> {
    let mut out: Vec<cairn_engine::Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        let mut e = *e;
        if !e.data && e.len < MIN_HOLE_CHUNK_BYTES {
            e.data = true;
        }
        match out.last_mut() {
            Some(last) if last.data == e.data => last.len += e.len,
            _ => out.push(e),
        }
    }
    out
}

/// One BLOCK_STATUS chunk per selected context, all looked up before any is sent, so a
/// failure is a single error reply.
async fn block_status(session: &Session, req: &Request, mut reply: Reply) {
    if req.len == 0 {
        return reply.error(Errno::Inval, "block status of an empty range");
    }
    let export = &*session.export;
    let span = u64::from(req.len).min(MAX_STATUS_SPAN_BYTES);
    let mut chunks = Vec::with_capacity(session.contexts.len());
    for (i, context) in session.contexts.iter().enumerate() {
        let (extents, flags_of): (_, fn(bool) -> u32) = match context {
            MetaContext::BaseAllocation => {
                (export.extents(req.offset, span).await, |data| if data { 0 } else { p::STATE_HOLE | p::STATE_ZERO })
            }
            MetaContext::DirtyBitmap(name) => {
                (export.dirty_extents(name, req.offset, span).await, |dirty| if dirty { p::STATE_DIRTY } else { 0 })
            }
        };
        let extents = match extents {
            Ok(e) => e,
            Err(e) => return reply.engine_error(&e),
        };
        let mut descriptors = descriptors(&extents, flags_of);
        if req.has(p::CMD_FLAG_REQ_ONE) {
            descriptors.truncate(1);
        }
        if descriptors.is_empty() {
            return reply.error(Errno::Inval, "block status found no extents");
        }
        chunks.push((context_id(i), descriptors));
    }
    let last = chunks.len().saturating_sub(1);
    for (i, (id, descriptors)) in chunks.iter().enumerate() {
        let mut head = Vec::with_capacity(p::CHUNK_HEADER_LEN + 4 + 8 * descriptors.len());
        p::encode_block_status(&mut head, reply.cookie, *id, descriptors, i == last);
        reply.send(head, None, i == last);
    }
}

/// Descriptors for extents (adjacent ones with equal flags merged), at most
/// [`MAX_DESCRIPTORS`] of them.
fn descriptors(extents: &[cairn_engine::Extent], flags_of: fn(bool) -> u32) -> Vec<p::Descriptor> {
    let mut out: Vec<p::Descriptor> = Vec::with_capacity(extents.len().min(1024));
    for ext in extents {
        let flags = flags_of(ext.data);
        // Extents lie within one status span (at most 1 GiB).
        let len = u32::try_from(ext.len).unwrap_or(u32::MAX);
        match out.last_mut() {
            Some(d) if d.flags == flags => d.len = d.len.saturating_add(len),
            _ => out.push(p::Descriptor { len, flags }),
        }
        if out.len() > MAX_DESCRIPTORS {
            out.truncate(MAX_DESCRIPTORS);
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! In-process tests over an in-memory byte stream, with an in-memory export.

    use std::sync::Mutex;

    use cairn_engine::{Error, Extent};
    // `Msg`: the server has a `Reply` of its own.
    use cairn_test_support::nbd::{self, Client, Reply as Msg};
    use tokio::io::DuplexStream;

    use super::*;
    use crate::nbd::exports::ExportFuture;

    const BLOCK: u64 = 4096;

    /// A sparse in-memory export: 4 KiB blocks, allocated on write, freed on punch.
    struct MemExport {
        size: u64,
        blocks: Mutex<Vec<Option<Vec<u8>>>>,
    }

    impl MemExport {
        fn new(size: u64) -> Self {
            let n = usize::try_from(size / BLOCK).unwrap();
            Self { size, blocks: Mutex::new(vec![None; n]) }
        }
    }

    fn idx(off: u64) -> usize {
        usize::try_from(off / BLOCK).unwrap()
    }

    impl Export for MemExport {
        fn name(&self) -> String {
            "mem".into()
        }
        fn description(&self) -> String {
            "in-memory test export".into()
        }
        fn size_bytes(&self) -> u64 {
            self.size
        }
        fn min_block_bytes(&self) -> u32 {
            1
        }
        fn read_only(&self) -> bool {
            false
        }
        fn can_multi_conn(&self) -> bool {
            true
        }
        fn read(&self, offset: u64, len: u64) -> ExportFuture<'_, IoBuf> {
            let blocks = self.blocks.lock().unwrap();
            let mut out = IoBuf::zeroed(usize::try_from(len).unwrap());
            for (i, byte) in out.iter_mut().enumerate() {
                let pos = offset + i as u64;
                if let Some(b) = &blocks[idx(pos)] {
                    *byte = b[usize::try_from(pos % BLOCK).unwrap()];
                }
            }
            Box::pin(std::future::ready(Ok(out)))
        }
        fn write(&self, offset: u64, buf: IoBuf, _fua: bool) -> ExportFuture<'_, ()> {
            let mut blocks = self.blocks.lock().unwrap();
            for (i, byte) in buf.iter().enumerate() {
                let pos = offset + i as u64;
                let b = blocks[idx(pos)].get_or_insert_with(|| vec![0; 4096]);
                b[usize::try_from(pos % BLOCK).unwrap()] = *byte;
            }
            Box::pin(std::future::ready(Ok(())))
        }
        fn punch(&self, offset: u64, len: u64, _fua: bool) -> ExportFuture<'_, ()> {
            let mut blocks = self.blocks.lock().unwrap();
            for pos in offset..offset + len {
                if let Some(b) = &mut blocks[idx(pos)] {
                    b[usize::try_from(pos % BLOCK).unwrap()] = 0;
                }
            }
            // Whole blocks become holes.
            let first = offset.div_ceil(BLOCK);
            let end = (offset + len) / BLOCK;
            for i in first..end {
                blocks[usize::try_from(i).unwrap()] = None;
            }
            Box::pin(std::future::ready(Ok(())))
        }
        fn flush(&self) -> ExportFuture<'_, ()> {
            Box::pin(std::future::ready(Ok(())))
        }
        fn cache(&self, _offset: u64, _len: u64) -> ExportFuture<'_, ()> {
            // Slow on purpose: lets tests see replies overtake it.
            Box::pin(async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Ok(())
            })
        }
        fn extents(&self, offset: u64, len: u64) -> ExportFuture<'_, Vec<Extent>> {
            Box::pin(std::future::ready(self.extents_now(offset, len)))
        }
    }

    impl MemExport {
        fn extents_now(&self, offset: u64, len: u64) -> cairn_engine::Result<Vec<Extent>> {
            if offset + len > self.size {
                return Err(Error::InvalidArgument { field: "offset", reason: "past the end".into() });
            }
            let blocks = self.blocks.lock().unwrap();
            let mut out: Vec<Extent> = Vec::new();
            let mut pos = offset;
            while pos < offset + len {
                let next = ((pos / BLOCK) + 1) * BLOCK;
                let end = next.min(offset + len);
                let data = blocks[idx(pos)].is_some();
                match out.last_mut() {
                    Some(e) if e.data == data => e.len += end - pos,
                    _ => out.push(Extent { offset: pos, len: end - pos, data }),
                }
                pos = end;
            }
            Ok(out)
        }
    }

    struct Source(Arc<MemExport>);

    impl ExportSource for Source {
        fn open(&self, name: &str) -> Option<Arc<dyn Export>> {
            (name == "mem").then(|| self.0.clone() as Arc<dyn Export>)
        }
        fn list(&self) -> Vec<String> {
            vec!["mem".into()]
        }
    }

    /// A connected server (on its own task) and the client end of the stream.
    fn start(
        config: ServerConfig,
    ) -> (Client<DuplexStream>, watch::Sender<bool>, tokio::task::JoinHandle<Result<(), ConnectionError>>) {
        start_with(config, 1 << 20)
    }

    /// Like [`start`], with `pipe_bytes` of buffering in each direction of the stream.
    fn start_with(
        config: ServerConfig,
        pipe_bytes: usize,
    ) -> (Client<DuplexStream>, watch::Sender<bool>, tokio::task::JoinHandle<Result<(), ConnectionError>>) {
        start_tls(config, pipe_bytes, TlsPolicy::Unconfigured)
    }

    /// Like [`start_with`], with a TLS policy.
    fn start_tls(
        config: ServerConfig,
        pipe_bytes: usize,
        tls: TlsPolicy,
    ) -> (Client<DuplexStream>, watch::Sender<bool>, tokio::task::JoinHandle<Result<(), ConnectionError>>) {
        let export = Arc::new(MemExport::new(1 << 20));
        let server = Server::new(Arc::new(Source(export)), config);
        let (client, serverside) = tokio::io::duplex(pipe_bytes);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move { server.serve(serverside, tls, stopped).await });
        (Client::new(client), stop, task)
    }

    /// A client end: a plain or a TLS stream.
    trait Stream: AsyncRead + AsyncWrite + Unpin {}
    impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

    /// Greeting, flags, STRUCTURED_REPLY, SET_META_CONTEXT base:allocation, GO.
    async fn negotiate(c: &mut Client<impl Stream>) -> u16 {
        greet_server(c).await;
        haggle(c).await
    }

    /// Reads the greeting and sends the client flags (fixed newstyle, no zeroes).
    async fn greet_server(c: &mut Client<impl Stream>) {
        assert_eq!(c.greeting().await, p::FLAG_FIXED_NEWSTYLE | p::FLAG_NO_ZEROES);
        c.client_flags(3).await;
    }

    /// STRUCTURED_REPLY, SET_META_CONTEXT base:allocation, GO; the export's flags.
    async fn haggle(c: &mut Client<impl Stream>) -> u16 {
        c.option(p::OPT_STRUCTURED_REPLY, &[]).await;
        assert_eq!(c.option_reply().await.1, p::REP_ACK);
        c.option(p::OPT_SET_META_CONTEXT, &nbd::meta_context_data("mem", &[p::BASE_ALLOCATION])).await;
        let (_, kind, data) = c.option_reply().await;
        assert_eq!(kind, p::REP_META_CONTEXT);
        assert_eq!(&data[4..], p::BASE_ALLOCATION.as_bytes());
        assert_eq!(c.option_reply().await.1, p::REP_ACK);
        c.go("mem").await.unwrap()
    }

    #[test]
    fn meta_contexts_are_listed_by_wildcards_and_selected_by_exact_names() {
        let bitmap = |n: &str| MetaContext::DirtyBitmap(n.into());
        let all = vec![MetaContext::BaseAllocation, bitmap("rp1"), bitmap("rp2")];
        let q = |qs: &[&str]| qs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(list_contexts(&all, &[]), all);
        assert_eq!(list_contexts(&all, &q(&["base:"])), vec![MetaContext::BaseAllocation]);
        assert_eq!(list_contexts(&all, &q(&["qemu:"])), vec![bitmap("rp1"), bitmap("rp2")]);
        assert_eq!(list_contexts(&all, &q(&["qemu:dirty-bitmap:"])), vec![bitmap("rp1"), bitmap("rp2")]);
        assert_eq!(list_contexts(&all, &q(&["qemu:dirty-bitmap:rp2", "x-other:y"])), vec![bitmap("rp2")]);
        assert_eq!(list_contexts(&all, &q(&["qemu:dirty-bitmap:rp9"])), vec![]);

        // Wildcards select nothing; unknown names are ignored; duplicates count once.
        assert_eq!(
            select_contexts(&all, &q(&["base:", "qemu:", "qemu:dirty-bitmap:", "qemu:dirty-bitmap:rp9"])),
            vec![]
        );
        assert_eq!(
            select_contexts(&all, &q(&["qemu:dirty-bitmap:rp2", "base:allocation", "qemu:dirty-bitmap:rp2"])),
            vec![bitmap("rp2"), MetaContext::BaseAllocation]
        );
        assert_eq!(bitmap("rp1").name(), "qemu:dirty-bitmap:rp1");
        assert_eq!(context_id(0), 1);
    }

    #[test]
    fn short_holes_are_read_as_data_and_long_ones_skipped() {
        let ext = |offset, len, data| Extent { offset, len, data };
        let got = coalesce(&[
            ext(0, 4096, true),
            ext(4096, 4096, false),
            ext(8192, 4096, true),
            ext(12288, 1 << 20, false),
            ext(12288 + (1 << 20), 4096, true),
        ]);
        assert_eq!(got, vec![ext(0, 12288, true), ext(12288, 1 << 20, false), ext(12288 + (1 << 20), 4096, true)]);
    }

    #[tokio::test]
    async fn write_read_block_status_and_holes_round_trip() {
        let (mut c, _stop, task) = start(ServerConfig::default());
        let flags = negotiate(&mut c).await;
        assert_eq!(
            flags,
            p::FLAG_HAS_FLAGS
                | p::FLAG_SEND_FLUSH
                | p::FLAG_SEND_FUA
                | p::FLAG_SEND_TRIM
                | p::FLAG_SEND_WRITE_ZEROES
                | p::FLAG_SEND_FAST_ZERO
                | p::FLAG_SEND_DF
                | p::FLAG_SEND_CACHE
                | p::FLAG_CAN_MULTI_CONN
        );

        // Write 4 KiB of 0xab at 128 KiB.
        c.request(1, p::CMD_FLAG_FUA, 1, 128 << 10, 4096).await;
        c.send(&[0xab; 4096]).await;
        assert!(matches!(c.reply().await, Msg::Simple { error: 0, cookie: 1 }));

        // Read 256 KiB from 0: a hole, the data, a hole, in order, the last one DONE.
        c.request(0, 0, 2, 0, 256 << 10).await;
        let mut seen = Vec::new();
        loop {
            let Msg::Chunk { flags, kind, cookie, payload } = c.reply().await else {
                panic!("read must get structured replies");
            };
            assert_eq!(cookie, 2);
            let off = u64::from_be_bytes(payload[..8].try_into().unwrap());
            seen.push((kind, off));
            if kind == p::REPLY_TYPE_OFFSET_DATA {
                assert!(payload[8..].iter().all(|&b| b == 0xab));
                assert_eq!(payload.len() - 8, 4096);
            }
            if flags & p::REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        assert_eq!(
            seen,
            vec![
                (p::REPLY_TYPE_OFFSET_HOLE, 0),
                (p::REPLY_TYPE_OFFSET_DATA, 128 << 10),
                (p::REPLY_TYPE_OFFSET_HOLE, 132 << 10)
            ]
        );

        // DF: one content chunk with the zeros inside.
        c.request(0, p::CMD_FLAG_DF, 3, (128 << 10) - 4096, 8192).await;
        let Msg::Chunk { flags, kind, payload, .. } = c.reply().await else {
            panic!("structured");
        };
        assert_eq!((flags, kind), (p::REPLY_FLAG_DONE, p::REPLY_TYPE_OFFSET_DATA));
        assert!(payload[8..4104].iter().all(|&b| b == 0));
        assert!(payload[4104..].iter().all(|&b| b == 0xab));

        // Block status: hole, data, hole with lengths 128 KiB, 4 KiB, the rest.
        c.request(7, 0, 4, 0, 1 << 20).await;
        let Msg::Chunk { kind, payload, .. } = c.reply().await else {
            panic!("structured");
        };
        assert_eq!(kind, p::REPLY_TYPE_BLOCK_STATUS);
        let words: Vec<u32> = payload.chunks(4).map(|w| u32::from_be_bytes(w.try_into().unwrap())).collect();
        assert_eq!(words, vec![1, 128 << 10, 3, 4096, 0, (1 << 20) - (132 << 10), 3]);

        // Trim makes it a hole again; flush; disconnect ends the session cleanly.
        c.request(4, 0, 5, 128 << 10, 4096).await;
        assert!(matches!(c.reply().await, Msg::Simple { error: 0, cookie: 5 }));
        c.request(3, 0, 6, 0, 0).await;
        assert!(matches!(c.reply().await, Msg::Simple { error: 0, cookie: 6 }));
        c.request(0, 0, 7, 128 << 10, 64 << 10).await;
        let Msg::Chunk { kind, .. } = c.reply().await else {
            panic!("structured");
        };
        assert_eq!(kind, p::REPLY_TYPE_OFFSET_HOLE);
        c.request(2, 0, 8, 0, 0).await;
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn bad_requests_get_errors_and_the_session_goes_on() {
        let (mut c, _stop, task) = start(ServerConfig::default());
        negotiate(&mut c).await;
        let expect_err = |m: Msg, want: Errno, cookie_want: u64| match m {
            Msg::Chunk { kind, cookie, payload, .. } => {
                assert_eq!(kind, p::REPLY_TYPE_ERROR);
                assert_eq!(cookie, cookie_want);
                assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), want.code());
            }
            Msg::Simple { .. } => panic!("expected an error chunk"),
        };
        c.request(99, 0, 1, 0, 0).await;
        expect_err(c.reply().await, Errno::Inval, 1);
        c.request(0, 0, 2, 1 << 20, 1).await;
        expect_err(c.reply().await, Errno::Inval, 2);
        c.request(6, 0, 3, (1 << 20) - 1, 2).await;
        expect_err(c.reply().await, Errno::NoSpc, 3);
        c.request(0, 1 << 12, 4, 0, 1).await;
        expect_err(c.reply().await, Errno::Inval, 4);
        // A write past the end: its payload is consumed, then the error.
        c.request(1, 0, 5, 1 << 20, 3).await;
        c.send(b"xyz").await;
        expect_err(c.reply().await, Errno::NoSpc, 5);
        c.request(6, p::CMD_FLAG_NO_HOLE | p::CMD_FLAG_FAST_ZERO, 6, 0, 4096).await;
        expect_err(c.reply().await, Errno::NotSup, 6);
        // Still serving.
        c.request(3, 0, 7, 0, 0).await;
        assert!(matches!(c.reply().await, Msg::Simple { error: 0, cookie: 7 }));
        // Garbage magic ends the connection.
        c.send(&[0x55; p::REQUEST_LEN]).await;
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, ConnectionError::Violation(p::Violation::RequestMagic(_))));
    }

    #[tokio::test]
    async fn unknown_options_are_unsupported_and_unknown_client_flags_close() {
        let (mut c, _stop, task) = start(ServerConfig::default());
        c.greeting().await;
        c.client_flags(1).await;
        c.option(1234, b"whatever").await;
        assert_eq!(c.option_reply().await, (1234, p::REP_ERR_UNSUP, b"option 1234 is not supported".to_vec()));
        c.option(p::OPT_EXTENDED_HEADERS, &[]).await;
        assert_eq!(c.option_reply().await.1, p::REP_ERR_UNSUP);
        c.option(p::OPT_STARTTLS, &[]).await;
        assert_eq!(c.option_reply().await.1, p::REP_ERR_UNSUP, "no TLS configured");
        c.option(p::OPT_GO, &nbd::go_data("nope")).await;
        assert_eq!(c.option_reply().await.1, p::REP_ERR_UNKNOWN);
        c.option(p::OPT_GO, &[0, 0, 0, 9]).await;
        assert_eq!(c.option_reply().await.1, p::REP_ERR_INVALID);
        c.option(p::OPT_LIST, &[]).await;
        let (_, kind, data) = c.option_reply().await;
        assert_eq!((kind, data), (p::REP_SERVER, nbd::string("mem")));
        assert_eq!(c.option_reply().await.1, p::REP_ACK);
        c.option(p::OPT_ABORT, &[]).await;
        assert_eq!(c.option_reply().await.1, p::REP_ACK);
        task.await.unwrap().unwrap();

        let (mut c, _stop, task) = start(ServerConfig::default());
        c.greeting().await;
        c.client_flags(0x8000_0001).await;
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, ConnectionError::Violation(p::Violation::UnknownClientFlags(_))));
    }

    /// A server with TLS from a throwaway PKI (client certificates required), and a rustls
    /// client that trusts its CA, presenting the client certificate or not.
    fn tls_pair(client_cert: bool) -> (TlsPolicy, tokio_rustls::TlsConnector) {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let dir = tempfile::tempdir().unwrap();
        let pki = cairn_test_support::pki::TestPki::generate();
        pki.write_to(dir.path());
        let files = crate::net::tls::TlsFiles {
            cert: dir.path().join("server-cert.pem"),
            key: dir.path().join("server-key.pem"),
            client_ca: Some(dir.path().join("ca-cert.pem")),
        };
        let server = crate::net::tls::ServerTls::load(&files).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = if client_cert {
            let cert = CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).unwrap();
            let key = PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).unwrap();
            builder.with_client_auth_cert(vec![cert], key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        (TlsPolicy::Required(server.nbd_acceptor()), tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    fn server_name() -> rustls_pki_types::ServerName<'static> {
        rustls_pki_types::ServerName::try_from("localhost").unwrap()
    }

    #[tokio::test]
    async fn forced_tls_refuses_options_until_starttls_then_serves_over_tls() {
        let (policy, connector) = tls_pair(true);
        let (mut c, _stop, task) = start_tls(ServerConfig::default(), 1 << 20, policy);
        greet_server(&mut c).await;
        for opt in [p::OPT_LIST, p::OPT_STRUCTURED_REPLY, 1234] {
            c.option(opt, &[]).await;
            assert_eq!(c.option_reply().await.1, p::REP_ERR_TLS_REQD, "option {opt}");
        }
        c.option(p::OPT_GO, &nbd::go_data("mem")).await;
        assert_eq!(c.option_reply().await.1, p::REP_ERR_TLS_REQD);
        c.option(p::OPT_STARTTLS, b"x").await;
        assert_eq!(c.option_reply().await.1, p::REP_ERR_INVALID, "STARTTLS takes no data");
        c.option(p::OPT_STARTTLS, &[]).await;
        assert_eq!(c.option_reply().await, (p::OPT_STARTTLS, p::REP_ACK, Vec::new()));

        let mut tls = Client::new(connector.connect(server_name(), c.into_inner()).await.unwrap());
        tls.option(p::OPT_STARTTLS, &[]).await;
        assert_eq!(tls.option_reply().await.1, p::REP_ERR_INVALID, "a second STARTTLS");
        haggle(&mut tls).await;
        tls.request(1, 0, 7, 0, 4096).await;
        tls.send(&[0x5a; 4096]).await;
        assert!(matches!(tls.reply().await, Msg::Simple { error: 0, cookie: 7 }));
        tls.request(0, 0, 8, 0, 4096).await;
        let Msg::Chunk { cookie: 8, payload, .. } = tls.reply().await else { panic!("no data chunk") };
        assert_eq!(&payload[8..], &[0x5a; 4096][..]);
        tls.request(2, 0, 9, 0, 0).await;
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn export_name_before_tls_and_a_failed_tls_handshake_end_only_that_connection() {
        let (policy, _) = tls_pair(true);
        let (mut c, _stop, task) = start_tls(ServerConfig::default(), 1 << 20, policy);
        greet_server(&mut c).await;
        c.option(p::OPT_EXPORT_NAME, b"mem").await;
        assert!(matches!(task.await.unwrap(), Err(ConnectionError::TlsRequired)));

        // Without the client certificate the server ends the handshake.
        let (policy, connector) = tls_pair(false);
        let (mut c, _stop, task) = start_tls(ServerConfig::default(), 1 << 20, policy);
        greet_server(&mut c).await;
        c.option(p::OPT_STARTTLS, &[]).await;
        assert_eq!(c.option_reply().await.1, p::REP_ACK);
        // TLS 1.3 reports the refusal only after the client's first flight.
        if let Ok(mut tls) = connector.connect(server_name(), c.into_inner()).await {
            let _ = tls.write_all(&[0; 16]).await;
            let _ = tls.flush().await;
            let mut b = [0u8; 1];
            assert!(tls.read_exact(&mut b).await.is_err(), "the server never answers it");
        }
        assert!(matches!(task.await.unwrap(), Err(ConnectionError::Tls(_))));
    }

    #[tokio::test]
    async fn a_plain_listener_of_a_tls_server_refuses_starttls_by_policy() {
        let (mut c, _stop, _task) = start_tls(ServerConfig::default(), 1 << 20, TlsPolicy::NotOffered);
        greet_server(&mut c).await;
        c.option(p::OPT_STARTTLS, &[]).await;
        assert_eq!(c.option_reply().await.1, p::REP_ERR_POLICY);
        haggle(&mut c).await;
    }

    #[tokio::test]
    async fn a_flooding_client_is_throttled_and_every_request_is_answered() {
        const N: u64 = 6000;
        let config = ServerConfig { max_inflight_requests: 2, ..ServerConfig::default() };
        let (mut c, _stop, task) = start_with(config, 1024);
        negotiate(&mut c).await;
        let (rd, wr) = tokio::io::split(c.into_inner());
        let (mut rd, mut wr) = (Client::new(rd), Client::new(wr));
        let sender = tokio::spawn(async move {
            for cookie in 0..N {
                wr.request(nbd::CMD_FLUSH, 0, cookie, 0, 0).await;
            }
            wr
        });

        // Nobody reads replies: the server stops reading once 2 requests wait on the writer
        // and its read buffer is full, so the client cannot push all its requests.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!sender.is_finished(), "the server kept reading a client that reads no replies");

        // Reading the replies lets everything through; every request is answered once.
        let mut cookies = Vec::new();
        for _ in 0..N {
            let (error, cookie) = rd.simple_reply().await;
            assert_eq!(error, 0);
            cookies.push(cookie);
        }
        cookies.sort_unstable();
        assert_eq!(cookies, (0..N).collect::<Vec<_>>());
        let mut wr = sender.await.unwrap();
        wr.request(nbd::CMD_DISC, 0, 0, 0, 0).await;
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_slow_request_is_overtaken_by_later_ones() {
        let (mut c, _stop, _task) = start(ServerConfig::default());
        negotiate(&mut c).await;

        c.request(5, 0, 1, 0, 4096).await;
        c.request(3, 0, 2, 0, 0).await;
        c.request(0, 0, 3, 0, 4096).await;

        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(match c.reply().await {
                Msg::Simple { error: 0, cookie } => cookie,
                Msg::Chunk { cookie, flags, .. } if flags & p::REPLY_FLAG_DONE != 0 => cookie,
                other => panic!("unexpected {other:?}"),
            });
        }
        assert_eq!(order.last(), Some(&1), "the slow CACHE is answered last: {order:?}");
    }

    #[tokio::test]
    async fn shutdown_ends_an_idle_session_cleanly() {
        let (mut c, stop, task) = start(ServerConfig::default());
        negotiate(&mut c).await;
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
        let mut rest = Vec::new();
        c.into_inner().read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
