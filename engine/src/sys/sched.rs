//! Thread scheduling policy for background work, which rustix does not wrap.

use std::io;

/// Moves the calling thread to `SCHED_IDLE`: it runs only on CPU time no normal thread
/// wants, and a normal thread that wakes up preempts it at once. Without it a low nice value
/// still lets a background thread finish its time slice (about a millisecond under EEVDF)
/// before a woken guest I/O thread gets the CPU.
pub(crate) fn set_current_thread_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid, initialised sched_param
    // that lives across the call, and the kernel only reads it.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Moves the calling thread back to `SCHED_OTHER`, at its nice value.
pub(crate) fn set_current_thread_normal() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as in `set_current_thread_idle`: pid 0 is the calling thread and `param` is a
    // valid sched_param that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
