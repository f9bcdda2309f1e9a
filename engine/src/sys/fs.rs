//! File-system calls std lacks: hole punching, preallocation, SEEK_DATA/SEEK_HOLE,
//! allocated size, directory sync. All through rustix, so no `unsafe` here.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{FallocateFlags, SeekFrom, fallocate, seek};

/// Deallocates `[offset, offset + len)`: reads return zeros, the file size is unchanged.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len)?;
    Ok(())
}

/// First offset at or after `offset` holding data, or `None` past the last data.
pub(crate) fn next_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    match seek(file, SeekFrom::Data(offset)) {
        Ok(pos) => Ok(Some(pos)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// First offset at or after `offset` in a hole (the end of the file counts as one).
pub(crate) fn next_hole(file: &File, offset: u64) -> io::Result<u64> {
    Ok(seek(file, SeekFrom::Hole(offset))?)
}

/// Reads `buf.len()` bytes at `offset` only if they are all in the page cache, without
/// blocking (preadv2 with RWF_NOWAIT). `None` when the read would block, came up short, or
/// the kernel or file system does not support it: the caller then does a normal read.
pub(crate) fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> Option<usize> {
    let want = buf.len();
    let mut iov = [std::io::IoSliceMut::new(buf)];
    match rustix::io::preadv2(file, &mut iov, offset, rustix::io::ReadWriteFlags::NOWAIT) {
        Ok(n) if n == want => Some(n),
        _ => None,
    }
}

/// Turns the kernel's readahead off for `file` (`POSIX_FADV_RANDOM`): reads bring in what
/// they ask for, in single-page folios (see `readahead.rs`).
pub(crate) fn advise_random(file: &File) -> io::Result<()> {
    Ok(rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Random)?)
}

/// Asks the kernel to read `[offset, offset + len)` into the page cache in the background.
pub(crate) fn will_need(file: &File, offset: u64, len: u64) -> io::Result<()> {
    Ok(rustix::fs::fadvise(file, offset, std::num::NonZeroU64::new(len), rustix::fs::Advice::WillNeed)?)
}

/// Gives `[0, len)` of `file` blocks of its own (the file grows to `len` if shorter), so
/// that writing there later, through a shared mapping above all, never needs a block the
/// file system may no longer have: a mapped store into a hole on a full file system is a
/// SIGBUS, where this call fails with ENOSPC. Where the file system cannot preallocate, the
/// holes of the range are written with zeros instead (the bytes already there stay).
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match fallocate(file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => fill_holes(file, len),
        Err(e) => Err(e.into()),
    }
}

/// [`allocate`] for a file written through a shared mapping that may predate allocation at
/// create (older versions left such files sparse): when it is not fully allocated, try now,
/// and only warn when that fails (a full file system must not keep a disk from opening).
pub(crate) fn allocate_if_sparse(file: &File, len: u64, path: &Path) {
    if allocated_bytes(file).is_ok_and(|a| a >= len) {
        return;
    }
    if let Err(e) = allocate(file, len) {
        tracing::warn!(path = %path.display(), error = %e, "mapped file stays sparse: a store into a hole on a full file system is a SIGBUS");
    }
}

/// Writes zeros over every hole of `[0, len)`.
fn fill_holes(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const PIECE: usize = 64 << 10;
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    let zeros = vec![0u8; PIECE];
    let mut pos = 0;
    while pos < len {
        let hole = next_hole(file, pos)?;
        if hole >= len {
            break;
        }
        let end = next_data(file, hole)?.unwrap_or(len).min(len);
        pos = hole;
        while pos < end {
            let n = usize::try_from(end - pos).unwrap_or(PIECE).min(PIECE);
            file.write_all_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
    }
    Ok(())
}

/// Bytes the file system has allocated to the file.
pub(crate) fn allocated_bytes(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.blocks() * 512)
}

/// Makes a directory's entries (a create or rename in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, durably: each directory it creates is synced into its parent, so a
/// power cut cannot take a directory (and every file in it) that was in use.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}
