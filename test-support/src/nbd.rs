//! A raw NBD client, for what real clients cannot show: malformed input, negotiation one
//! option at a time, the exact replies. Written from the protocol document
//! (NetworkBlockDevice/nbd `doc/proto.md`), not from the daemon's codec, so no test checks
//! that codec against itself. It speaks over any tokio stream (a unix socket, an in-memory
//! pipe, a TLS stream), fixed newstyle only, and every read gives up after [`READ_TIMEOUT`].

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a read waits before the test fails (a server that never answers).
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// `IHAVEOPT`: the second greeting word, and the magic that starts every option.
pub const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Client flags: fixed newstyle and no zeroes, what every modern client sends.
pub const CLIENT_FLAGS: u32 = 0b11;

pub const OPT_GO: u32 = 7;
pub const OPT_LIST_META_CONTEXT: u32 = 9;

pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const INFO_EXPORT: u16 = 0;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

/// A protocol string: 32-bit length, then the bytes.
pub fn string(s: impl AsRef<[u8]>) -> Vec<u8> {
    let s = s.as_ref();
    let mut v = u32::try_from(s.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// An option: magic, code, length, data.
pub fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut m = IHAVEOPT.to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// The data of GO or INFO on `export`, asking for no particular information.
pub fn go_data(export: &str) -> Vec<u8> {
    let mut d = string(export);
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

/// The data of LIST_META_CONTEXT or SET_META_CONTEXT on `export` with `queries`.
pub fn meta_context_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = string(export);
    d.extend_from_slice(&u32::try_from(queries.len()).unwrap().to_be_bytes());
    for q in queries {
        d.extend_from_slice(&string(q));
    }
    d
}

/// A transmission request header (a write's payload follows it).
pub fn request(cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut r = [0u8; 28];
    r[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    r[4..6].copy_from_slice(&flags.to_be_bytes());
    r[6..8].copy_from_slice(&cmd.to_be_bytes());
    r[8..16].copy_from_slice(&cookie.to_be_bytes());
    r[16..24].copy_from_slice(&offset.to_be_bytes());
    r[24..].copy_from_slice(&len.to_be_bytes());
    r
}

/// One reply of the transmission phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A simple reply (a successful READ's data follows it on the stream).
    Simple { error: u32, cookie: u64 },
    /// One structured reply chunk.
    Chunk { flags: u16, kind: u16, cookie: u64, payload: Vec<u8> },
}

/// A client end of an NBD connection.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
}

impl Client<tokio::net::UnixStream> {
    /// Connected to a unix socket; nothing read or sent yet.
    pub async fn connect(socket: &Path) -> Self {
        Self::new(tokio::net::UnixStream::connect(socket).await.unwrap())
    }
}

impl<S> Client<S> {
    pub fn new(stream: S) -> Self {
        Self { stream }
    }

    /// The stream, e.g. to start TLS over it after STARTTLS.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

impl<S: AsyncRead + Unpin> Client<S> {
    async fn read_exact(&mut self, buf: &mut [u8]) {
        match tokio::time::timeout(READ_TIMEOUT, self.stream.read_exact(buf)).await {
            Ok(read) => {
                read.unwrap();
            }
            Err(_) => panic!("no {} bytes from the server within {READ_TIMEOUT:?}", buf.len()),
        }
    }

    async fn be_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.read_exact(&mut b).await;
        u32::from_be_bytes(b)
    }

    /// Reads the server's greeting, asserting its magic; returns its handshake flags.
    pub async fn greeting(&mut self) -> u16 {
        let mut g = [0u8; 18];
        self.read_exact(&mut g).await;
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT", "greeting");
        u16::from_be_bytes([g[16], g[17]])
    }

    /// One option reply: (option, reply type, data).
    pub async fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.read_exact(&mut h).await;
        assert_eq!(&h[..8], &OPTION_REPLY_MAGIC.to_be_bytes(), "option reply magic");
        let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut data = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        self.read_exact(&mut data).await;
        (option, kind, data)
    }

    /// One transmission reply: simple, or one structured chunk with its payload.
    pub async fn reply(&mut self) -> Reply {
        let magic = self.be_u32().await;
        if magic == SIMPLE_REPLY_MAGIC {
            let mut r = [0u8; 12];
            self.read_exact(&mut r).await;
            return Reply::Simple {
                error: u32::from_be_bytes(r[..4].try_into().unwrap()),
                cookie: u64::from_be_bytes(r[4..].try_into().unwrap()),
            };
        }
        assert_eq!(magic, STRUCTURED_REPLY_MAGIC, "reply magic");
        let mut r = [0u8; 16];
        self.read_exact(&mut r).await;
        let mut payload = vec![0u8; u32::from_be_bytes(r[12..16].try_into().unwrap()) as usize];
        self.read_exact(&mut payload).await;
        Reply::Chunk {
            flags: u16::from_be_bytes([r[0], r[1]]),
            kind: u16::from_be_bytes([r[2], r[3]]),
            cookie: u64::from_be_bytes(r[4..12].try_into().unwrap()),
            payload,
        }
    }

    /// A reply that must be simple: (error, cookie).
    pub async fn simple_reply(&mut self) -> (u32, u64) {
        match self.reply().await {
            Reply::Simple { error, cookie } => (error, cookie),
            chunk => panic!("a simple reply, got {chunk:?}"),
        }
    }

    /// `len` bytes of payload (what follows a simple reply to a READ).
    pub async fn payload(&mut self, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.read_exact(&mut data).await;
        data
    }

    /// True once the server closed the connection (end of stream, or a reset after we wrote
    /// into it); false if it sends something or stays silent for [`READ_TIMEOUT`].
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut b)).await, Ok(Ok(0) | Err(_)))
    }
}

impl<S: AsyncWrite + Unpin> Client<S> {
    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends the client flags that answer the greeting.
    pub async fn client_flags(&mut self, flags: u32) {
        self.send(&flags.to_be_bytes()).await;
    }

    /// Sends an option.
    pub async fn option(&mut self, code: u32, data: &[u8]) {
        self.send(&option(code, data)).await;
    }

    /// Sends a request header.
    pub async fn request(&mut self, cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        self.send(&request(cmd, flags, cookie, offset, len)).await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Greeting read, [`CLIENT_FLAGS`] sent: the client is in option haggling.
    pub async fn hello(&mut self) {
        self.greeting().await;
        self.client_flags(CLIENT_FLAGS).await;
    }

    /// GO on `export`: the export's transmission flags once the server ACKs, or the error
    /// reply type. INFO replies before the ACK are read, any other reply fails the test.
    pub async fn go(&mut self, export: &str) -> Result<u16, u32> {
        self.option(OPT_GO, &go_data(export)).await;
        let mut flags = None;
        loop {
            match self.option_reply().await {
                (_, REP_INFO, data) => {
                    if data[..2] == INFO_EXPORT.to_be_bytes() {
                        flags = Some(u16::from_be_bytes([data[10], data[11]]));
                    }
                }
                (_, REP_ACK, _) => return Ok(flags.expect("NBD_INFO_EXPORT before the ACK of GO")),
                (_, kind, _) if kind & (1 << 31) != 0 => return Err(kind),
                other => panic!("unexpected reply to GO: {other:?}"),
            }
        }
    }

    /// The context names LIST_META_CONTEXT returns for `queries` on `export`.
    pub async fn list_meta(&mut self, export: &str, queries: &[&str]) -> Vec<String> {
        self.option(OPT_LIST_META_CONTEXT, &meta_context_data(export, queries)).await;
        let mut names = Vec::new();
        loop {
            match self.option_reply().await {
                (_, REP_ACK, _) => return names,
                (_, REP_META_CONTEXT, p) => names.push(String::from_utf8(p[4..].to_vec()).unwrap()),
                other => panic!("unexpected reply to LIST_META_CONTEXT: {other:?}"),
            }
        }
    }

    /// READ without structured replies: the bytes, after asserting a clean simple reply.
    pub async fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        self.request(CMD_READ, 0, cookie, offset, len).await;
        assert_eq!(self.simple_reply().await, (0, cookie), "READ of {len} bytes at {offset}");
        self.payload(len as usize).await
    }
}
