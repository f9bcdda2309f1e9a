//! A small pool of low-priority threads for the CPU work of background jobs (hashing,
//! compression), so that on a busy host the guest's I/O path, which runs at normal priority,
//! gets the CPU first: a capture must not make guest writes wait behind it. The pool runs
//! under `SCHED_IDLE` by default, or at nice 10 ([`BackgroundPriority`]).

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Scheduling of the threads that hash and compress captured chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackgroundPriority {
    /// `SCHED_IDLE`: CPU time nothing else wants; a woken guest I/O thread preempts it at
    /// once. Guest latency is unaffected by captures, but on a host whose CPUs are saturated
    /// a capture only gets a trickle of CPU time and takes that much longer.
    #[default]
    Idle,
    /// Nice 10: captures get a fair low-priority share even on a saturated host, and a woken
    /// guest thread may wait up to a scheduler slice (about a millisecond) for a core.
    Low,
}

type Job = Box<dyn FnOnce() + Send>;

/// Nice value of background threads (the guest path stays at the process's own).
const BACKGROUND_NICE: i32 = 10;

/// Threads running background CPU work at a lower priority.
pub(crate) struct BackgroundPool {
    tx: Mutex<Sender<Job>>,
    priority: BackgroundPriority,
}

/// Lowers the calling thread to `priority`. Linux scheduling is per thread: this lowers only
/// this one. Failing to lower it costs latency, not correctness.
fn lower_current_thread(priority: BackgroundPriority) {
    let lowered = match priority {
        BackgroundPriority::Idle => crate::sys::enter_idle(),
        BackgroundPriority::Low => {
            rustix::process::setpriority_process(None, BACKGROUND_NICE).map_err(std::io::Error::from)
        }
    };
    if let Err(e) = lowered {
        tracing::warn!(?priority, error = %e, "could not lower background thread priority");
    }
}

impl std::fmt::Debug for BackgroundPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackgroundPool")
    }
}

impl BackgroundPool {
    /// Starts one thread per core.
    pub(crate) fn start(priority: BackgroundPriority) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        for i in 0..threads {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            std::thread::Builder::new().name(format!("cairn-bg-{i}")).spawn(move || {
                lower_current_thread(priority);
                loop {
                    let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return, // the pool is gone
                    };
                    job();
                }
            })?;
        }
        Ok(Self { tx: Mutex::new(tx), priority })
    }

    /// Drives `job` to its end on a new thread of its own at the pool's priority (a job's
    /// sequential part, which would otherwise hold an async worker that guest I/O waits
    /// for), and gives its output. Should no thread be had, `job` runs here instead.
    pub(crate) async fn run_on_own_thread<T: Send + 'static>(
        &self,
        name: &str,
        job: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        let slot = Arc::new(Mutex::new(Some(job)));
        let theirs = slot.clone();
        let (rt, priority) = (tokio::runtime::Handle::current(), self.priority);
        let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
            lower_current_thread(priority);
            let job = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(job) = job {
                // Not an async context: a plain thread may block on a future.
                let _ = reply.send(rt.block_on(job));
            }
        });
        match spawned {
            Ok(_) => rx.await.ok(),
            Err(e) => {
                tracing::warn!(job = name, error = %e, "no thread for a background job; running it on the async workers");
                let job = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                match job {
                    Some(job) => Some(job.await),
                    None => None,
                }
            }
        }
    }

    /// Runs `f` on a background thread and waits for its result.
    pub(crate) async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(f());
        });
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(job).ok()?;
        rx.await.ok()
    }
}
