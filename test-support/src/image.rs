//! Disk images: deterministic content, sparse files, what the file system allocated, and
//! comparisons that report where two images differ.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes the file system allocated to `path` (what `stat` reports as blocks * 512).
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Deterministic bytes for a pattern identified by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A sparse raw file of `size` bytes (no block allocated, unlike `qemu-img create`).
pub fn sparse_file(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// Asserts two images are equal, reporting the first differing offset instead of the bytes.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!("{what}: images differ (lengths {} and {}), first difference at byte {first:?}", got.len(), want.len());
}
