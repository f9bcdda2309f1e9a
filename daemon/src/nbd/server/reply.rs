//! Replies: the permits a request holds until its last reply chunk is on the wire, the
//! chunks of one reply, and the writer task that sends them.

use std::sync::Arc;

use cairn_engine::IoBuf;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::errors::nbd_errno;
use crate::nbd::codec::{self as p, Errno};

/// Both permits of a request: one request slot, and its bytes.
pub(super) struct Permits {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

pub(super) async fn acquire(requests: &Arc<Semaphore>, bytes: &Arc<Semaphore>, cost: u32) -> Option<Permits> {
    let request = requests.clone().acquire_owned().await.ok()?;
    let bytes = if cost > 0 { Some(bytes.clone().acquire_many_owned(cost).await.ok()?) } else { None };
    Some(Permits { _request: request, _bytes: bytes })
}

/// A message for the writer: header bytes, optional data, and the permits it releases once
/// it is on the wire.
pub(super) struct Outgoing {
    head: Vec<u8>,
    data: Option<IoBuf>,
    _permits: Option<Permits>,
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
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
pub(super) struct Reply {
    pub(super) cookie: u64,
    pub(super) structured: bool,
    pub(super) tx: mpsc::UnboundedSender<Outgoing>,
    pub(super) permits: Option<Permits>,
}

impl Reply {
    /// Sends a message; `last` hands over the request's permits with it.
    pub(super) fn send(&mut self, head: Vec<u8>, data: Option<IoBuf>, last: bool) {
        let permits = if last { self.permits.take() } else { None };
        // A send fails only when the writer is gone (the socket broke): nothing to do then.
        let _ = self.tx.send(Outgoing { head, data, _permits: permits });
    }

    pub(super) fn ok(mut self) {
        let mut head = Vec::with_capacity(p::SIMPLE_REPLY_LEN);
        p::encode_simple_reply(&mut head, 0, self.cookie);
        self.send(head, None, true);
    }

    pub(super) fn error(mut self, e: Errno, message: &str) {
        let mut head = Vec::with_capacity(p::CHUNK_HEADER_LEN + 6 + message.len());
        if self.structured {
            p::encode_error_chunk(&mut head, self.cookie, e, message);
        } else {
            p::encode_simple_reply(&mut head, e.code(), self.cookie);
        }
        self.send(head, None, true);
    }

    pub(super) fn engine_error(self, e: &cairn_engine::Error) {
        let code = nbd_errno(e);
        self.error(code, &e.to_string());
    }

    pub(super) fn result(self, r: cairn_engine::Result<()>) {
        match r {
            Ok(()) => self.ok(),
            Err(e) => self.engine_error(&e),
        }
    }
}
