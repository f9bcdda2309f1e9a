//! Transmission: requests decoded by the connection's reader, each executed on its own (or
//! at once when small and ready), replies sent by the writer in the order they complete.

use std::sync::Arc;

use cairn_engine::IoBuf;
use tokio::io::{AsyncReadExt, BufReader, BufWriter};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::connection::{Connection, ConnectionError, ServerConfig, stopped};
use super::options::{MetaContext, Session, context_id};
use super::reply::{Outgoing, Reply, acquire, write_loop};
use crate::nbd::codec::{self as p, Command, Errno, Request};
use crate::nbd::exports::Export;

/// Bytes of zeros written per step when WRITE_ZEROES must allocate (NO_HOLE).
const ZERO_STEP_BYTES: u32 = 1 << 20;
/// Longest range one BLOCK_STATUS looks at; the client asks again for the rest.
const MAX_STATUS_SPAN_BYTES: u64 = 1 << 30;
/// Most descriptors in one BLOCK_STATUS chunk (the spec's SHOULD is 2^20).
const MAX_DESCRIPTORS: usize = 1 << 16;

/// Transmission: reads requests until the client disconnects, breaks the protocol, or
/// `shutdown` turns true; requests already read still complete and get their replies.
pub(super) async fn transmit<S: Connection>(
    session: Session,
    stream: S,
    config: &ServerConfig,
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
    let requests = Arc::new(Semaphore::new(usize::try_from(config.max_inflight_requests).unwrap_or(1)));
    let byte_budget = config.max_inflight_bytes.max(p::MAX_PAYLOAD_BYTES);
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
    use cairn_engine::Extent;

    use super::*;

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
}
