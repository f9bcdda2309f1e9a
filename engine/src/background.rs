//! A small pool of low-priority threads for the CPU work of background jobs (hashing,
//! compression), so that on a busy host the guest's I/O path, which runs at normal priority,
//! gets the CPU first: a capture must not make guest writes wait behind it. The pool runs
//! under `SCHED_IDLE` by default, or at nice 10 ([`BackgroundPriority`]).

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::engine::BackgroundPriority;

type Job = Box<dyn FnOnce() + Send>;

/// Nice value of background threads (the guest path stays at the process's own).
const BACKGROUND_NICE: i32 = 10;

/// Threads running background CPU work at a lower priority.
pub(crate) struct BackgroundPool {
    tx: Mutex<Sender<Job>>,
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
                // Linux scheduling is per thread: this lowers only this one. Failing to lower
                // it costs latency, not correctness.
                let lowered = match priority {
                    BackgroundPriority::Idle => crate::sys::set_current_thread_idle(),
                    BackgroundPriority::Low => {
                        rustix::process::setpriority_process(None, BACKGROUND_NICE).map_err(std::io::Error::from)
                    }
                };
                if let Err(e) = lowered {
                    tracing::warn!(?priority, error = %e, "could not lower background thread priority");
                }
                loop {
                    let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return, // the pool is gone
                    };
                    job();
                }
            })?;
        }
        Ok(Self { tx: Mutex::new(tx) })
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
