//! io_uring backend: one ring owned by a dedicated thread.
//!
//! Callers queue requests and wake the thread through an eventfd the ring itself reads;
//! the thread submits, reaps completions and answers each request on a oneshot channel.
//! Every request's buffer and file are owned by the thread's in-flight table from the
//! moment its SQE is pushed until its CQE is reaped: a caller dropping its future cannot
//! free memory the kernel is still writing (dropping a future cannot cancel a kernel
//! operation). Short transfers are resubmitted for the remainder.
//!
//! A ring whose submission fails with anything but EINTR or EBUSY is unusable: its thread
//! answers every request, queued, in flight or later, with EIO, and stops. Requests the
//! kernel may still be working on keep their buffer and file alive for good (leaked), since
//! the kernel could still write the one and use the other; only their reply is sent.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use io_uring::{IoUring, opcode, squeue, types};
use tokio::sync::oneshot;

use crate::sys::IoBuf;

/// Ring size; also the most requests in flight at once (one slot is kept for the wake-up read).
const ENTRIES: u32 = 256;
const MAX_IN_FLIGHT: usize = ENTRIES as usize - 1;
const WAKE: u64 = u64::MAX;
const CANCEL_WAKE: u64 = u64::MAX - 1;
const FALLOC_PUNCH_HOLE_KEEP_SIZE: i32 = 0x02 | 0x01;
const POSIX_FADV_WILLNEED: i32 = 3;

/// Whether this process can use io_uring for everything we need; probed once.
pub(super) fn probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let ring = IoUring::new(8).map_err(|e| format!("ring setup: {e}"))?;
            let mut probe = io_uring::Probe::new();
            ring.submitter().register_probe(&mut probe).map_err(|e| format!("probe: {e}"))?;
            for (name, code) in [
                ("read", opcode::Read::CODE),
                ("write", opcode::Write::CODE),
                ("fsync", opcode::Fsync::CODE),
                ("fallocate", opcode::Fallocate::CODE),
                ("fadvise", opcode::Fadvise::CODE),
                ("async-cancel", opcode::AsyncCancel::CODE),
            ] {
                if !probe.is_supported(code) {
                    return Err(format!("kernel lacks io_uring {name}"));
                }
            }
            Ok(())
        })
        .clone()
}

type ReadReply = oneshot::Sender<(io::Result<usize>, IoBuf)>;
type WriteReply = oneshot::Sender<(io::Result<()>, IoBuf)>;
type UnitReply = oneshot::Sender<io::Result<()>>;

enum Op {
    Read { file: Arc<File>, buf: IoBuf, offset: u64, done: usize, reply: ReadReply },
    Write { file: Arc<File>, buf: IoBuf, offset: u64, done: usize, piece: usize, reply: WriteReply },
    Sync { file: Arc<File>, reply: UnitReply },
    Punch { file: Arc<File>, offset: u64, len: u64, reply: UnitReply },
    WillNeed { file: Arc<File>, offset: u64, len: u64, reply: UnitReply },
}

/// Requests handed to the ring thread, until it stops on a broken ring.
struct Queue {
    ops: Vec<Op>,
    /// The ring broke and its thread stopped: requests fail at once.
    broken: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// An eventfd write is outstanding that the thread has not consumed yet.
    wake_pending: AtomicBool,
    shutdown: AtomicBool,
    eventfd: OwnedFd,
    /// An error the ring thread's next submission returns instead of entering the kernel.
    #[cfg(test)]
    injected: Mutex<Option<i32>>,
}

impl Shared {
    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // A failed eventfd write would leave the thread asleep; it cannot fail for a
            // counter far from overflow, so the error is only logged.
            if let Err(e) = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes()) {
                tracing::error!(error = %e, "io_uring wake-up failed");
            }
        }
    }
}

/// Stops the ring thread when the last [`Ring`] handle goes.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake_pending.store(false, Ordering::Release);
        self.shared.wake();
    }
}

/// A handle to the ring thread; cheap to clone.
#[derive(Clone)]
pub struct Ring {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ring")
    }
}

impl Ring {
    /// Sets up a ring and starts its thread.
    pub(super) fn start() -> io::Result<Self> {
        let ring = IoUring::new(ENTRIES)?;
        let eventfd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { ops: Vec::new(), broken: false }),
            wake_pending: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            eventfd,
            #[cfg(test)]
            injected: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new().name("cairn-uring".into()).spawn(move || run(ring, &thread_shared))?;
        Ok(Self { owner: Arc::new(Owner { shared }) })
    }

    fn submit(&self, op: Op) {
        let shared = &self.owner.shared;
        let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.broken {
            drop(queue);
            fail(op);
            return;
        }
        queue.ops.push(op);
        drop(queue);
        shared.wake();
    }

    pub(super) async fn read_at(&self, file: Arc<File>, buf: IoBuf, offset: u64) -> (io::Result<usize>, IoBuf) {
        let len = buf.len();
        let (reply, rx) = oneshot::channel();
        self.submit(Op::Read { file, buf, offset, done: 0, reply });
        rx.await.unwrap_or_else(|_| (Err(ring_gone()), IoBuf::zeroed(len)))
    }

    pub(super) async fn write_at(
        &self,
        file: Arc<File>,
        buf: IoBuf,
        offset: u64,
        piece: usize,
    ) -> (io::Result<()>, IoBuf) {
        let len = buf.len();
        let (reply, rx) = oneshot::channel();
        self.submit(Op::Write { file, buf, offset, done: 0, piece, reply });
        rx.await.unwrap_or_else(|_| (Err(ring_gone()), IoBuf::zeroed(len)))
    }

    pub(super) async fn sync_data(&self, file: Arc<File>) -> io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.submit(Op::Sync { file, reply });
        rx.await.unwrap_or_else(|_| Err(ring_gone()))
    }

    pub(super) async fn punch_hole(&self, file: Arc<File>, offset: u64, len: u64) -> io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.submit(Op::Punch { file, offset, len, reply });
        rx.await.unwrap_or_else(|_| Err(ring_gone()))
    }

    pub(super) async fn will_need(&self, file: Arc<File>, offset: u64, len: u64) -> io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.submit(Op::WillNeed { file, offset, len, reply });
        rx.await.unwrap_or_else(|_| Err(ring_gone()))
    }
}

fn ring_gone() -> io::Error {
    io::Error::other("io_uring thread stopped")
}

/// The SQE for `op`'s next (or remaining) transfer.
fn entry(op: &mut Op) -> squeue::Entry {
    match op {
        Op::Read { file, buf, offset, done, .. } => {
            let rest = &mut buf[*done..];
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            opcode::Read::new(types::Fd(file.as_raw_fd()), rest.as_mut_ptr(), len)
                .offset(*offset + *done as u64)
                .build()
        }
        Op::Write { file, buf, offset, done, piece, .. } => {
            let rest = &buf[*done..];
            let len = u32::try_from(rest.len().min(*piece)).unwrap_or(u32::MAX);
            opcode::Write::new(types::Fd(file.as_raw_fd()), rest.as_ptr(), len).offset(*offset + *done as u64).build()
        }
        Op::Sync { file, .. } => {
            opcode::Fsync::new(types::Fd(file.as_raw_fd())).flags(types::FsyncFlags::DATASYNC).build()
        }
        Op::Punch { file, offset, len, .. } => opcode::Fallocate::new(types::Fd(file.as_raw_fd()), *len)
            .offset(*offset)
            .mode(FALLOC_PUNCH_HOLE_KEEP_SIZE)
            .build(),
        Op::WillNeed { file, offset, len, .. } => opcode::Fadvise::new(
            types::Fd(file.as_raw_fd()),
            i64::try_from(*len).unwrap_or(i64::MAX),
            POSIX_FADV_WILLNEED,
        )
        .offset(*offset)
        .build(),
    }
}

/// Applies a completion to `op`: `Some(op)` when it must be resubmitted, `None` once answered.
fn complete(op: Op, res: i32) -> Option<Op> {
    let err = (res < 0).then(|| io::Error::from_raw_os_error(-res));
    if let Some(e) = &err
        && matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock)
    {
        return Some(op);
    }
    let n = usize::try_from(res).unwrap_or(0);
    match op {
        Op::Read { file, buf, offset, done, reply } => match err {
            Some(e) => {
                let _ = reply.send((Err(e), buf));
                None
            }
            None if n == 0 || done + n == buf.len() => {
                let _ = reply.send((Ok(done + n), buf));
                None
            }
            None => Some(Op::Read { file, buf, offset, done: done + n, reply }),
        },
        Op::Write { file, buf, offset, done, piece, reply } => match err {
            Some(e) => {
                let _ = reply.send((Err(e), buf));
                None
            }
            None if n == 0 => {
                let _ = reply.send((Err(io::ErrorKind::WriteZero.into()), buf));
                None
            }
            None if done + n == buf.len() => {
                let _ = reply.send((Ok(()), buf));
                None
            }
            None => Some(Op::Write { file, buf, offset, done: done + n, piece, reply }),
        },
        Op::Sync { reply, .. } | Op::Punch { reply, .. } | Op::WillNeed { reply, .. } => {
            let _ = reply.send(err.map_or(Ok(()), Err));
            None
        }
    }
}

/// In-flight requests, keyed by their slot index (the SQE's user data).
struct InFlight {
    slots: Vec<Option<Op>>,
    free: Vec<usize>,
    count: usize,
}

impl InFlight {
    fn insert(&mut self, op: Op) -> usize {
        self.count += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(op);
                i
            }
            None => {
                self.slots.push(Some(op));
                self.slots.len() - 1
            }
        }
    }

    fn take(&mut self, i: usize) -> Option<Op> {
        let op = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.count -= 1;
        Some(op)
    }
}

fn run(mut ring: IoUring, shared: &Shared) {
    let mut wake_buf = Box::new([0u8; 8]);
    let wake_entry = |buf: &mut [u8; 8]| {
        opcode::Read::new(types::Fd(shared.eventfd.as_raw_fd()), buf.as_mut_ptr(), 8).build().user_data(WAKE)
    };
    let mut inflight = InFlight { slots: Vec::new(), free: Vec::new(), count: 0 };
    let mut backlog: VecDeque<Op> = VecDeque::new();
    // Entries to push, user data set; those the queue has no room for wait for the next round.
    let mut pending: Vec<squeue::Entry> = Vec::new();
    let mut wake_armed = false;

    loop {
        if !wake_armed {
            pending.push(wake_entry(&mut wake_buf));
            wake_armed = true;
        }
        backlog.extend(shared.queue.lock().unwrap_or_else(|p| p.into_inner()).ops.drain(..));
        while inflight.count < MAX_IN_FLIGHT {
            let Some(mut op) = backlog.pop_front() else {
                break;
            };
            let e = entry(&mut op);
            let key = inflight.insert(op);
            pending.push(e.user_data(key as u64));
        }
        {
            let mut sq = ring.submission();
            let mut pushed = 0;
            for e in &pending {
                // SAFETY: every buffer and fd this entry points at is owned by the in-flight
                // table (or, for the wake-up read, by `wake_buf`, which lives until the read is
                // cancelled and reaped below) and is neither moved out nor freed until its
                // completion is reaped, or, if the ring breaks, ever (see `abandon`).
                if unsafe { sq.push(e) }.is_err() {
                    // At most MAX_IN_FLIGHT + 1 entries are outstanding, so this only happens
                    // when the kernel left the last batch in the queue (EBUSY): the rest waits.
                    break;
                }
                pushed += 1;
            }
            pending.drain(..pushed);
        }
        if shared.shutdown.load(Ordering::Acquire) && inflight.count == 0 && backlog.is_empty() {
            break;
        }
        match submit_and_wait(&ring, shared) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INTR.raw_os_error()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {}
            Err(e) => {
                // The ring is unusable. Every request fails with EIO, now and from here on;
                // the kernel may still write the buffers of those handed to it, so those are
                // kept alive for good (see `abandon`).
                tracing::error!(error = %e, "io_uring submit failed; the ring thread stops, I/O fails with EIO");
                let queued = {
                    let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                    queue.broken = true;
                    std::mem::take(&mut queue.ops)
                };
                for op in backlog.drain(..).chain(queued) {
                    fail(op);
                }
                for op in inflight.slots.drain(..).flatten() {
                    abandon(op);
                }
                std::mem::forget(wake_buf);
                return;
            }
        }
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (key, res) in done {
            if key == WAKE {
                shared.wake_pending.store(false, Ordering::Release);
                wake_armed = false;
                continue;
            }
            if key == CANCEL_WAKE {
                continue;
            }
            let Ok(i) = usize::try_from(key) else {
                continue;
            };
            let Some(op) = inflight.take(i) else { continue };
            if let Some(op) = complete(op, res) {
                let mut op = op;
                let e = entry(&mut op);
                let key = inflight.insert(op);
                pending.push(e.user_data(key as u64));
            }
        }
    }

    // Cancel the outstanding wake-up read and reap it before `wake_buf` is freed.
    if wake_armed {
        let cancel = opcode::AsyncCancel::new(WAKE).build().user_data(CANCEL_WAKE);
        // SAFETY: the cancel entry points at no memory.
        if unsafe { ring.submission().push(&cancel) }.is_ok() {
            let mut reaped = false;
            while !reaped {
                if ring.submit_and_wait(1).is_err() {
                    std::mem::forget(wake_buf);
                    return;
                }
                reaped = ring.completion().any(|c| c.user_data() == WAKE);
            }
        } else {
            std::mem::forget(wake_buf);
        }
    }
}

/// Submits what is queued and waits for at least one completion.
fn submit_and_wait(ring: &IoUring, shared: &Shared) -> io::Result<usize> {
    #[cfg(test)]
    if let Some(errno) = shared.injected.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(io::Error::from_raw_os_error(errno));
    }
    #[cfg(not(test))]
    let _ = shared;
    ring.submit_and_wait(1)
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())
}

/// Answers a request the kernel never saw with EIO (the ring broke).
fn fail(op: Op) {
    match op {
        Op::Read { buf, reply, .. } => {
            let _ = reply.send((Err(eio()), buf));
        }
        Op::Write { buf, reply, .. } => {
            let _ = reply.send((Err(eio()), buf));
        }
        Op::Sync { reply, .. } | Op::Punch { reply, .. } | Op::WillNeed { reply, .. } => {
            let _ = reply.send(Err(eio()));
        }
    }
}

/// Answers a request the kernel may still be working on with EIO when the ring broke: its
/// outcome is unknown. The kernel may still write its buffer and use its file, so both are
/// leaked, never freed (a reused fd or allocation would take the late transfer); the caller
/// gets a fresh buffer of the same length back.
fn abandon(op: Op) {
    match op {
        Op::Read { file, buf, reply, .. } => {
            let _ = reply.send((Err(eio()), IoBuf::zeroed(buf.len())));
            std::mem::forget((file, buf));
        }
        Op::Write { file, buf, reply, .. } => {
            let _ = reply.send((Err(eio()), IoBuf::zeroed(buf.len())));
            std::mem::forget((file, buf));
        }
        Op::Sync { file, reply } | Op::Punch { file, reply, .. } | Op::WillNeed { file, reply, .. } => {
            let _ = reply.send(Err(eio()));
            std::mem::forget(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Long enough for any healthy request; a hang shows as this timeout.
    const PATIENCE: Duration = Duration::from_secs(5);

    fn eio(res: io::Result<usize>) -> Option<i32> {
        res.err().and_then(|e| e.raw_os_error())
    }

    #[tokio::test]
    async fn a_broken_ring_fails_requests_in_flight_and_later_instead_of_hanging() {
        let ring = Ring::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [5u8; 4096]).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        // A read of an empty pipe stays in the kernel until the ring breaks.
        let (pipe_rx, _pipe_tx) = std::io::pipe().unwrap();
        let stuck = tokio::spawn({
            let ring = ring.clone();
            async move { ring.read_at(Arc::new(File::from(OwnedFd::from(pipe_rx))), IoBuf::zeroed(4096), 0).await.0 }
        });
        let (ok, _) = ring.read_at(file.clone(), IoBuf::zeroed(4096), 0).await;
        assert_eq!(ok.unwrap(), 4096, "a healthy ring reads");

        *ring.owner.shared.injected.lock().unwrap() = Some(rustix::io::Errno::FAULT.raw_os_error());
        let breaking = tokio::time::timeout(PATIENCE, ring.read_at(file.clone(), IoBuf::zeroed(4096), 0)).await;
        let in_flight = tokio::time::timeout(PATIENCE, stuck).await;
        let later = tokio::time::timeout(PATIENCE, ring.read_at(file, IoBuf::zeroed(4096), 0)).await;

        let eio_code = Some(rustix::io::Errno::IO.raw_os_error());
        assert_eq!(breaking.map(|(res, _)| eio(res)).ok(), Some(eio_code), "the request that met the failure");
        assert_eq!(in_flight.map(|r| eio(r.unwrap())).ok(), Some(eio_code), "the request in the kernel");
        assert_eq!(later.map(|(res, _)| eio(res)).ok(), Some(eio_code), "a request after the failure");
    }
}
