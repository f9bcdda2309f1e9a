//! Thread scheduling policy for background work, which rustix does not wrap.

use std::io;

/// Moves the calling thread to `SCHED_IDLE`: it runs only on CPU time no normal thread
/// wants, and a normal thread that wakes up preempts it at once. Without it a low nice value
/// still lets a background thread finish its time slice (about a millisecond under EEVDF)
/// before a woken guest I/O thread gets the CPU.
pub(crate) fn set_current_thread_idle() -> io::Result<()> {
    set_current_thread_policy(libc::SCHED_IDLE)
}

std::thread_local! {
    /// Whether this thread runs under `SCHED_IDLE` (see [`critical`]).
    static IDLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Moves the calling thread to `SCHED_IDLE` for good, remembering it for [`critical`].
pub(crate) fn enter_idle() -> io::Result<()> {
    set_current_thread_idle().map(|()| IDLE.set(true))
}

/// Runs `f`, which holds a lock that guest I/O may wait for, at normal priority: a
/// `SCHED_IDLE` thread preempted inside it would stall the guest for as long as the host's
/// CPUs stay busy (priority inversion). A no-op on other threads.
pub(crate) fn critical<T>(f: impl FnOnce() -> T) -> T {
    if !IDLE.get() {
        return f();
    }
    let raised = set_current_thread_normal().is_ok();
    let out = f();
    if raised && set_current_thread_idle().is_err() {
        IDLE.set(false); // left at normal priority: slower to yield, never wrong
    }
    out
}

/// Moves the calling thread back to `SCHED_OTHER`, at its nice value.
pub(crate) fn set_current_thread_normal() -> io::Result<()> {
    set_current_thread_policy(libc::SCHED_OTHER)
}

fn set_current_thread_policy(policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid, initialised sched_param
    // that lives across the call, and the kernel only reads it.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
