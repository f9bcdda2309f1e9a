//! Transmission: request headers, their checks against what was negotiated, and the
//! simple and structured replies.

use super::*;

// ---- transmission ------------------------------------------------------------------------

/// Command types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl Command {
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    /// Command flags that may accompany this command (before negotiation narrows them).
    fn allowed_flags(self) -> u16 {
        match self {
            Command::Read => CMD_FLAG_FUA | CMD_FLAG_DF,
            Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            Command::BlockStatus => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            Command::Write | Command::Flush | Command::Trim | Command::Cache | Command::Disc | Command::Unknown(_) => {
                CMD_FLAG_FUA
            }
        }
    }

    /// Whether the command writes to the export.
    pub fn is_write(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }
}

/// A decoded request header (a WRITE's payload follows it on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write { self.len } else { 0 }
    }
}

/// Decodes a request header. Bad magic and oversize write payloads end the connection
/// (the stream cannot be resynchronised); everything else is judged by [`check_request`].
pub fn decode_request(raw: &[u8; REQUEST_LEN]) -> Result<Request, Violation> {
    let magic = be_u32(&raw[..4]);
    if magic != REQUEST_MAGIC {
        return Err(Violation::RequestMagic(magic));
    }
    let req = Request {
        flags: u16::from_be_bytes([raw[4], raw[5]]),
        command: Command::from_code(u16::from_be_bytes([raw[6], raw[7]])),
        cookie: be_u64(&raw[8..16]),
        offset: be_u64(&raw[16..24]),
        len: be_u32(&raw[24..28]),
    };
    if req.payload_len() > MAX_PAYLOAD_BYTES {
        return Err(Violation::PayloadTooLong(req.len));
    }
    Ok(req)
}

/// What the export and the negotiation allow, for judging requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Transmission flags advertised for this session.
    pub flags: u16,
    pub size_bytes: u64,
    /// Minimum block size (a power of two): offsets and lengths must be multiples of it.
    pub min_block_bytes: u32,
    /// Whether a metadata context was selected for this export.
    pub meta_context: bool,
}

/// Judges a request against the session: the errno to answer with, or `Ok` to execute it.
/// Follows the spec's error choices: EINVAL for unknown commands and flags, misalignment and
/// reads past the end; ENOSPC for writes past the end; EPERM for writes to read-only exports.
pub fn check_request(req: &Request, limits: &Limits) -> Result<(), Errno> {
    let cmd = req.command;
    if let Command::Unknown(_) = cmd {
        return Err(Errno::Inval);
    }
    let mut allowed = cmd.allowed_flags();
    if limits.flags & FLAG_SEND_FUA == 0 {
        allowed &= !CMD_FLAG_FUA;
    }
    if limits.flags & FLAG_SEND_DF == 0 {
        allowed &= !CMD_FLAG_DF;
    }
    if limits.flags & FLAG_SEND_FAST_ZERO == 0 {
        allowed &= !CMD_FLAG_FAST_ZERO;
    }
    if req.flags & !allowed != 0 {
        return Err(Errno::Inval);
    }
    let supported = match cmd {
        Command::Flush => limits.flags & FLAG_SEND_FLUSH != 0,
        Command::Trim => limits.flags & FLAG_SEND_TRIM != 0,
        Command::WriteZeroes => limits.flags & FLAG_SEND_WRITE_ZEROES != 0,
        Command::Cache => limits.flags & FLAG_SEND_CACHE != 0,
        Command::BlockStatus => limits.meta_context,
        _ => true,
    };
    if limits.flags & FLAG_READ_ONLY != 0 && cmd.is_write() {
        return Err(Errno::Perm);
    }
    if !supported {
        return Err(Errno::Inval);
    }
    if matches!(cmd, Command::Flush | Command::Disc) {
        // Offset and length are reserved (zero) for these; nothing to check against the size.
        return Ok(());
    }
    let len = u64::from(req.len);
    let past_end = req.offset.checked_add(len).is_none_or(|end| end > limits.size_bytes);
    if past_end {
        // The spec: ENOSPC for writes and write-zeroes past the end, EINVAL for reads and trims.
        return Err(if matches!(cmd, Command::Write | Command::WriteZeroes) { Errno::NoSpc } else { Errno::Inval });
    }
    let align = u64::from(limits.min_block_bytes.max(1));
    if !req.offset.is_multiple_of(align) || !len.is_multiple_of(align) {
        return Err(Errno::Inval);
    }
    if cmd == Command::Read && req.len > MAX_PAYLOAD_BYTES {
        return Err(Errno::Inval);
    }
    Ok(())
}

/// Appends a simple reply header.
pub fn encode_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Appends a structured reply chunk header.
pub fn encode_chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

fn done_flag(done: bool) -> u16 {
    if done { REPLY_FLAG_DONE } else { 0 }
}

/// Header of an `OFFSET_DATA` chunk carrying `data_len` bytes (the data follows it).
pub fn encode_offset_data_header(out: &mut Vec<u8>, cookie: u64, offset: u64, data_len: u32, done: bool) {
    let len = data_len.saturating_add(8);
    encode_chunk_header(out, done_flag(done), REPLY_TYPE_OFFSET_DATA, cookie, len);
    out.extend_from_slice(&offset.to_be_bytes());
}

/// An `OFFSET_HOLE` chunk.
pub fn encode_offset_hole(out: &mut Vec<u8>, cookie: u64, offset: u64, len: u32, done: bool) {
    encode_chunk_header(out, done_flag(done), REPLY_TYPE_OFFSET_HOLE, cookie, 12);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// A `NONE` chunk ending a successful structured reply.
pub fn encode_none(out: &mut Vec<u8>, cookie: u64) {
    encode_chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
}

/// An `ERROR` chunk (final) with a message.
pub fn encode_error_chunk(out: &mut Vec<u8>, cookie: u64, errno: Errno, message: &str) {
    let message = clip(message);
    let mlen = u16::try_from(message.len()).unwrap_or(0);
    let msg = if mlen == 0 { "" } else { message };
    encode_chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6 + u32::from(mlen));
    out.extend_from_slice(&errno.code().to_be_bytes());
    out.extend_from_slice(&mlen.to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
}

/// One `base:allocation` descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub len: u32,
    pub flags: u32,
}

/// A `BLOCK_STATUS` chunk for one metadata context.
pub fn encode_block_status(out: &mut Vec<u8>, cookie: u64, context_id: u32, descriptors: &[Descriptor], done: bool) {
    let len = 4 + 8 * len_u32(descriptors.len());
    encode_chunk_header(out, done_flag(done), REPLY_TYPE_BLOCK_STATUS, cookie, len);
    out.extend_from_slice(&context_id.to_be_bytes());
    for d in descriptors {
        out.extend_from_slice(&d.len.to_be_bytes());
        out.extend_from_slice(&d.flags.to_be_bytes());
    }
}
