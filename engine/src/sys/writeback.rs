//! Early writeback of a file range (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`), which
//! rustix does not wrap: it starts writing dirty pages to the device without waiting, so a
//! later fsync finds most of them clean. It is a hint for speed, never for durability.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Starts writeback of `[offset, offset + len)` of `file` and returns without waiting for it.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: sync_file_range takes no pointers, only integers; the descriptor is borrowed
    // from `file`, which outlives the call, so it cannot be closed or reused during it.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
