//! In-process tests over an in-memory byte stream, with an in-memory export.

use std::sync::Mutex;

use cairn_engine::{Error, Extent, IoBuf};
// `Msg`: the server has a `Reply` of its own.
use cairn_test_support::nbd::{self, Client, Reply as Msg};
use tokio::io::DuplexStream;

use super::*;
use crate::nbd::codec::Errno;
use crate::nbd::exports::{Export, ExportFuture};

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
