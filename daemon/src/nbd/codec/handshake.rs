//! The handshake: the server greeting, client flags, options and their replies, and the
//! STARTTLS rules.

use std::fmt;

use super::*;

// ---- server greeting and client flags ----------------------------------------------------

/// The fixed newstyle greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// What the client asked for in its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

/// Decodes the client flags; any bit the server did not offer ends the session.
pub fn decode_client_flags(raw: [u8; 4]) -> Result<ClientFlags, Violation> {
    let flags = u32::from_be_bytes(raw);
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(Violation::UnknownClientFlags(flags));
    }
    Ok(ClientFlags { fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0, no_zeroes: flags & FLAG_C_NO_ZEROES != 0 })
}

// ---- options -----------------------------------------------------------------------------

/// An option header: which option, and how many data bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

/// Decodes an option header, refusing bad magic and oversize data.
pub fn decode_option_header(raw: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, Violation> {
    let magic = be_u64(&raw[..8]);
    if magic != IHAVEOPT {
        return Err(Violation::OptionMagic(magic));
    }
    let option = be_u32(&raw[8..12]);
    let len = be_u32(&raw[12..16]);
    if len > MAX_OPTION_BYTES {
        return Err(Violation::OptionTooLong(len));
    }
    Ok(OptionHeader { option, len })
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    pub name: String,
    pub queries: Vec<String>,
}

/// A parsed client option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    ListMetaContext(MetaRequest),
    SetMetaContext(MetaRequest),
    ExtendedHeaders,
    Unknown(u32),
}

/// Why an option's data is unacceptable: answered with `NBD_REP_ERR_INVALID`, session goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidOption(pub String);

impl fmt::Display for InvalidOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses an option's data. Malformed data is an [`InvalidOption`], never a panic.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption, InvalidOption> {
    match option {
        OPT_EXPORT_NAME => Ok(ClientOption::ExportName(string(data, "export name")?)),
        // The spec says to ignore any data sent with ABORT.
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => no_data(data, "NBD_OPT_LIST").map(|()| ClientOption::List),
        OPT_STARTTLS => no_data(data, "NBD_OPT_STARTTLS").map(|()| ClientOption::StartTls),
        OPT_INFO => parse_info(data).map(ClientOption::Info),
        OPT_GO => parse_info(data).map(ClientOption::Go),
        OPT_STRUCTURED_REPLY => no_data(data, "NBD_OPT_STRUCTURED_REPLY").map(|()| ClientOption::StructuredReply),
        OPT_LIST_META_CONTEXT => parse_meta(data).map(ClientOption::ListMetaContext),
        OPT_SET_META_CONTEXT => parse_meta(data).map(ClientOption::SetMetaContext),
        OPT_EXTENDED_HEADERS => Ok(ClientOption::ExtendedHeaders),
        other => Ok(ClientOption::Unknown(other)),
    }
}

// ---- TLS (NBD_OPT_STARTTLS) -------------------------------------------------------------

/// Where one connection stands with TLS: the spec's modes as the option haggling sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// NOTLS: the server has no TLS configured at all.
    Unconfigured,
    /// NOTLS by policy: TLS is configured, but not offered on this kind of listener (unix
    /// sockets, protected by their file mode).
    NotOffered,
    /// FORCEDTLS, before the upgrade: only STARTTLS and ABORT are served.
    Required,
    /// After a successful STARTTLS.
    Active,
}

/// What the TLS mode makes of an option, decided from its code and data length alone,
/// before its data is parsed (an option refused for want of TLS is refused whatever it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVerdict {
    /// Handle the option as usual.
    Proceed,
    /// Reply `NBD_REP_ACK`, then upgrade the stream to TLS.
    StartTls,
    /// Reply with this error and go on with the haggling.
    Refuse { reply: u32, message: &'static str },
    /// End the session: `NBD_OPT_EXPORT_NAME` before TLS, which has no error reply.
    Close,
}

/// Applies the spec's TLS rules to option `option` carrying `len` data bytes.
pub fn tls_verdict(mode: TlsMode, option: u32, len: u32) -> TlsVerdict {
    use TlsVerdict::{Close, Proceed, Refuse, StartTls};
    match (mode, option) {
        (TlsMode::Unconfigured, OPT_STARTTLS) => {
            Refuse { reply: REP_ERR_UNSUP, message: "TLS is not configured on this server" }
        }
        (TlsMode::NotOffered, OPT_STARTTLS) => {
            Refuse { reply: REP_ERR_POLICY, message: "TLS is not offered on this listener" }
        }
        (TlsMode::Required, OPT_STARTTLS) if len > 0 => {
            Refuse { reply: REP_ERR_INVALID, message: "NBD_OPT_STARTTLS takes no data" }
        }
        (TlsMode::Required, OPT_STARTTLS) => StartTls,
        (TlsMode::Required, OPT_ABORT) => Proceed,
        (TlsMode::Required, OPT_EXPORT_NAME) => Close,
        (TlsMode::Required, _) => {
            Refuse { reply: REP_ERR_TLS_REQD, message: "this server requires TLS: send NBD_OPT_STARTTLS first" }
        }
        (TlsMode::Active, OPT_STARTTLS) => Refuse { reply: REP_ERR_INVALID, message: "TLS is already active" },
        _ => Proceed,
    }
}

fn no_data(data: &[u8], what: &str) -> Result<(), InvalidOption> {
    if data.is_empty() { Ok(()) } else { Err(InvalidOption(format!("{what} takes no data"))) }
}

fn string(bytes: &[u8], what: &str) -> Result<String, InvalidOption> {
    if bytes.len() > MAX_STRING_BYTES {
        return Err(InvalidOption(format!("{what} is longer than {MAX_STRING_BYTES} bytes")));
    }
    if bytes.contains(&0) {
        return Err(InvalidOption(format!("{what} contains NUL")));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| InvalidOption(format!("{what} is not UTF-8")))
}

/// A cursor over option data that fails instead of reading past the end.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], InvalidOption> {
        if n > self.data.len() {
            return Err(InvalidOption(format!("{what} runs past the option data")));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }
    fn u16(&mut self, what: &str) -> Result<u16, InvalidOption> {
        self.take(2, what).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, InvalidOption> {
        self.take(4, what).map(be_u32)
    }
    fn string(&mut self, what: &str) -> Result<String, InvalidOption> {
        let len = usize::try_from(self.u32(what)?).map_err(|_| InvalidOption(format!("{what} length is absurd")))?;
        let bytes = self.take(len, what)?;
        string(bytes, what)
    }
    fn finish(&self) -> Result<(), InvalidOption> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(InvalidOption(format!("{} unexpected bytes after the option data", self.data.len())))
        }
    }
}

fn parse_info(data: &[u8]) -> Result<InfoRequest, InvalidOption> {
    let mut c = Cursor { data };
    let name = c.string("export name")?;
    let n = c.u16("information request count")?;
    let mut requests = Vec::with_capacity(usize::from(n).min(c.data.len() / 2));
    for _ in 0..n {
        requests.push(c.u16("information request")?);
    }
    c.finish()?;
    Ok(InfoRequest { name, requests })
}

fn parse_meta(data: &[u8]) -> Result<MetaRequest, InvalidOption> {
    let mut c = Cursor { data };
    let name = c.string("export name")?;
    let n = c.u32("query count")?;
    // Each query takes at least its 4-byte length: never trust the count for capacity.
    let mut queries = Vec::with_capacity(c.data.len() / 4);
    for _ in 0..n {
        let q = c.string("query")?;
        if !q.contains(':') {
            return Err(InvalidOption(format!("query {q:?} has no namespace")));
        }
        queries.push(q);
    }
    c.finish()?;
    Ok(MetaRequest { name, queries })
}

/// Appends an option reply (header + payload) to `out`.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, payload: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&len_u32(payload.len()).to_be_bytes());
    out.extend_from_slice(payload);
}

/// An error reply with a human-readable message (clipped to the protocol's string limit).
pub fn encode_option_error(out: &mut Vec<u8>, option: u32, reply: u32, message: &str) {
    encode_option_reply(out, option, reply, clip(message).as_bytes());
}

/// `NBD_REP_SERVER` naming one export.
pub fn encode_rep_server(out: &mut Vec<u8>, name: &str) {
    let mut payload = Vec::with_capacity(4 + name.len());
    payload.extend_from_slice(&len_u32(name.len()).to_be_bytes());
    payload.extend_from_slice(name.as_bytes());
    encode_option_reply(out, OPT_LIST, REP_SERVER, &payload);
}

/// `NBD_REP_INFO` with `NBD_INFO_EXPORT`.
pub fn encode_info_export(out: &mut Vec<u8>, option: u32, size_bytes: u64, flags: u16) {
    let mut p = [0u8; 12];
    p[..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    p[2..10].copy_from_slice(&size_bytes.to_be_bytes());
    p[10..].copy_from_slice(&flags.to_be_bytes());
    encode_option_reply(out, option, REP_INFO, &p);
}

/// `NBD_REP_INFO` with `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn encode_info_string(out: &mut Vec<u8>, option: u32, info: u16, text: &str) {
    let text = clip(text);
    let mut p = Vec::with_capacity(2 + text.len());
    p.extend_from_slice(&info.to_be_bytes());
    p.extend_from_slice(text.as_bytes());
    encode_option_reply(out, option, REP_INFO, &p);
}

/// `NBD_REP_INFO` with `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(out: &mut Vec<u8>, option: u32, min: u32, preferred: u32, max: u32) {
    let mut p = [0u8; 14];
    p[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    p[2..6].copy_from_slice(&min.to_be_bytes());
    p[6..10].copy_from_slice(&preferred.to_be_bytes());
    p[10..].copy_from_slice(&max.to_be_bytes());
    encode_option_reply(out, option, REP_INFO, &p);
}

/// `NBD_REP_META_CONTEXT`.
pub fn encode_meta_context(out: &mut Vec<u8>, option: u32, id: u32, name: &str) {
    let mut p = Vec::with_capacity(4 + name.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    encode_option_reply(out, option, REP_META_CONTEXT, &p);
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zeroes unless NO_ZEROES.
pub fn encode_export_name_reply(out: &mut Vec<u8>, size_bytes: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size_bytes.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}
