//! [`IoBuf`]: an owned, page-aligned byte buffer.
//!
//! Every I/O backend call takes one and gives it back, so the buffer stays alive until the
//! kernel is done with it (an io_uring operation cannot be cancelled by dropping a future).
//! Page alignment makes the same buffer valid for O_DIRECT files.
//!
//! Buffers of 1 to 256 pages (a power of two) go back to a small pool when dropped, and
//! [`IoBuf::for_overwrite`] takes from it: a read into a recycled buffer skips zeroing a fresh
//! one, which for a 1 MiB read costs about half as much as the read's own copy.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

/// Alignment of every [`IoBuf`], enough for O_DIRECT on any device this runs on.
pub const IO_ALIGN: usize = 4096;

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(4096))]
struct Page([u8; IO_ALIGN]);

/// Pooled sizes: 2^0 to 2^8 pages (4 KiB to 1 MiB).
const POOL_CLASSES: usize = 9;
/// Bytes the pool keeps per size class.
const POOL_CLASS_BYTES: usize = 16 << 20;

/// Recycled page vectors, by size class.
static POOL: [Mutex<Vec<Vec<Page>>>; POOL_CLASSES] = [const { Mutex::new(Vec::new()) }; POOL_CLASSES];

/// The size class holding exactly `pages` pages, if pooled.
fn class_of(pages: usize) -> Option<usize> {
    let class = usize::try_from(pages.trailing_zeros()).ok()?;
    (pages.is_power_of_two() && class < POOL_CLASSES).then_some(class)
}

/// An owned, 4 KiB-aligned byte buffer of a fixed length.
pub struct IoBuf {
    pages: Vec<Page>,
    len: usize,
}

impl IoBuf {
    /// A zero-filled buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        let pages = bytemuck::allocation::zeroed_vec(len.div_ceil(IO_ALIGN));
        Self { pages, len }
    }

    /// A buffer of `len` bytes whose content the caller overwrites entirely before reading
    /// any of it (a read's destination): recycled when one is pooled, so it holds stale bytes
    /// of an earlier buffer until then, never uninitialised memory.
    pub fn for_overwrite(len: usize) -> Self {
        let pages = len.div_ceil(IO_ALIGN).max(1).next_power_of_two();
        if let Some(class) = class_of(pages)
            && let Some(recycled) = POOL[class].lock().unwrap_or_else(|p| p.into_inner()).pop()
        {
            return Self { pages: recycled, len };
        }
        let pages =
            bytemuck::allocation::zeroed_vec(if class_of(pages).is_some() { pages } else { len.div_ceil(IO_ALIGN) });
        Self { pages, len }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut buf = Self::zeroed(data.len());
        buf.copy_from_slice(data);
        buf
    }

    /// Shortens the buffer to `len` bytes (no-op when already shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        let pages = self.pages.len();
        if let Some(class) = class_of(pages)
            && self.pages.capacity() == pages
        {
            let mut pool = POOL[class].lock().unwrap_or_else(|p| p.into_inner());
            if (pool.len() + 1) * pages * IO_ALIGN <= POOL_CLASS_BYTES {
                pool.push(std::mem::take(&mut self.pages));
            }
        }
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &bytemuck::cast_slice::<Page, u8>(&self.pages)[..self.len]
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<Page, u8>(&mut self.pages)[..self.len]
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf").field("len", &self.len).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_sized() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let buf = IoBuf::zeroed(len);
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|&b| b == 0));
            assert_eq!(buf.as_ptr() as usize % IO_ALIGN, 0);
        }
        let mut b = IoBuf::from_slice(b"hello");
        b.truncate(2);
        assert_eq!(&*b, b"he");
    }

    #[test]
    fn buffers_for_overwrite_are_aligned_sized_and_recycled() {
        for len in [1, 4096, 5000, 300 << 10, 1 << 20, (1 << 20) + 1, 3 << 20] {
            let mut buf = IoBuf::for_overwrite(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % IO_ALIGN, 0);
            buf.fill(0xAB); // every byte is initialised and writable
        }
        // A dropped pooled buffer is reused as it was, stale bytes and all, at its new length.
        drop(IoBuf::from_slice(&[7u8; 8192]));
        let again = IoBuf::for_overwrite(5000);
        assert_eq!(again.len(), 5000);
        assert_eq!(again.as_ptr() as usize % IO_ALIGN, 0);
    }
}
