//! Deltas: a chunk stored as the 4 KiB blocks that differ from a full base chunk.
//!
//! Payload: a bitmap of changed blocks (one bit per block, little-endian u64 words), then the
//! changed blocks in order. A delta is always taken against a *full* chunk, never against
//! another delta, so a read resolves at most base + one delta; when the share of blocks that
//! differ from the base grows past [`MAX_DELTA_SHARE_PERCENT`], the capture stores a full
//! chunk instead (consolidation).

use crate::base::error::{Error, Result};
use crate::base::format::BLOCK_BYTES;

/// Above this share of changed blocks a full chunk is stored instead of a delta.
pub const MAX_DELTA_SHARE_PERCENT: usize = 25;

fn bitmap_bytes(blocks: usize) -> usize {
    blocks.div_ceil(64) * 8
}

/// The delta holding blocks `changed` (indices within the chunk, ascending, no repeats) of
/// `data`, or `None` when they are more than [`MAX_DELTA_SHARE_PERCENT`] of its blocks. The
/// caller knows which blocks differ from the base (change tracking since the base, plus the
/// blocks of the delta it replaces), so the base itself is never read to make a delta.
pub(crate) fn make(data: &[u8], changed: &[usize]) -> Option<Vec<u8>> {
    let blocks = data.len().div_ceil(BLOCK_BYTES);
    if data.is_empty() || changed.len() * 100 > blocks * MAX_DELTA_SHARE_PERCENT {
        return None;
    }
    let mut out = vec![0u8; bitmap_bytes(blocks)];
    for &b in changed {
        if b >= blocks {
            return None;
        }
        out[b / 8] |= 1 << (b % 8);
    }
    for &b in changed {
        let end = ((b + 1) * BLOCK_BYTES).min(data.len());
        out.extend_from_slice(&data[b * BLOCK_BYTES..end]);
    }
    Some(out)
}

/// The blocks a delta payload for a chunk of `chunk_len` bytes holds. The payload must be
/// exactly its bitmap and those blocks: a bitmap read at another length than the delta was
/// made for (its chunk has grown since) does not pass for a valid one.
pub(crate) fn blocks(payload: &[u8], chunk_len: usize) -> Result<Vec<usize>> {
    let bad = |r: &str| Error::corrupt("delta", r.to_owned());
    let blocks = chunk_len.div_ceil(BLOCK_BYTES);
    let (map, rest) =
        payload.split_at_checked(bitmap_bytes(blocks)).ok_or_else(|| bad("delta shorter than its bitmap"))?;
    let set: Vec<usize> = (0..blocks).filter(|&b| map[b / 8] & (1 << (b % 8)) != 0).collect();
    if bits_past(map, blocks) {
        return Err(bad("delta names blocks past the chunk"));
    }
    let want: usize = set.iter().map(|&b| block_len(b, chunk_len)).sum();
    if rest.len() != want {
        return Err(bad("delta's blocks do not match its bitmap"));
    }
    Ok(set)
}

/// Length of block `b` of a chunk of `chunk_len` bytes (the last one may be short).
fn block_len(b: usize, chunk_len: usize) -> usize {
    ((b + 1) * BLOCK_BYTES).min(chunk_len) - b * BLOCK_BYTES
}

/// Whether a bitmap names a block at or past `blocks`.
fn bits_past(map: &[u8], blocks: usize) -> bool {
    map.iter().enumerate().any(|(i, byte)| (0..8).any(|bit| byte & (1 << bit) != 0 && i * 8 + bit >= blocks))
}

/// Applies `payload` to `base`, giving chunk content of `chunk_len` bytes. The base may be
/// shorter: a chunk that was the short last one of its disk when the base was stored, and
/// has grown with the disk since; its bytes past the base's end are zeros but for the
/// delta's blocks.
pub(crate) fn apply(base: &[u8], payload: &[u8], chunk_len: usize) -> Result<Vec<u8>> {
    let bad = |r: &str| Error::corrupt("delta", r.to_owned());
    if base.len() > chunk_len {
        return Err(bad("delta's base is longer than its chunk"));
    }
    let blocks = chunk_len.div_ceil(BLOCK_BYTES);
    let (map, mut rest) =
        payload.split_at_checked(bitmap_bytes(blocks)).ok_or_else(|| bad("delta shorter than its bitmap"))?;
    let mut out = base.to_vec();
    out.resize(chunk_len, 0);
    for b in 0..blocks {
        if map[b / 8] & (1 << (b % 8)) == 0 {
            continue;
        }
        let len = block_len(b, chunk_len);
        let (block, tail) = rest.split_at_checked(len).ok_or_else(|| bad("delta shorter than its blocks"))?;
        out[b * BLOCK_BYTES..b * BLOCK_BYTES + len].copy_from_slice(block);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad("delta longer than its blocks"));
    }
    if bits_past(map, blocks) {
        return Err(bad("delta names blocks past the chunk"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_changes_make_deltas_and_large_ones_do_not() {
        let base = vec![7u8; 64 * BLOCK_BYTES];
        let mut data = base.clone();
        data[5 * BLOCK_BYTES + 3] = 1;
        data[40 * BLOCK_BYTES] = 2;
        let d = make(&data, &[5, 40]).unwrap();
        assert_eq!(d.len(), 8 + 2 * BLOCK_BYTES);
        assert_eq!(blocks(&d, data.len()).unwrap(), vec![5, 40]);
        assert_eq!(apply(&base, &d, data.len()).unwrap(), data);
        let many: Vec<usize> = (0..17).collect();
        assert!(make(&data, &many).is_none(), "17 of 64 blocks is past 25%");
        assert!(make(&data, &[64]).is_none(), "a block past the chunk");
        assert!(make(&[], &[]).is_none());
    }

    #[test]
    fn damaged_deltas_are_errors() {
        let base = vec![0u8; 8 * BLOCK_BYTES];
        let mut data = base.clone();
        data[0] = 1;
        let d = make(&data, &[0]).unwrap();
        assert!(apply(&base, &d[..d.len() - 1], base.len()).is_err());
        let mut longer = d.clone();
        longer.push(0);
        assert!(apply(&base, &longer, base.len()).is_err());
        let mut past = d.clone();
        past[1] = 0x80; // block 15 of an 8-block chunk
        assert!(apply(&base, &past, base.len()).is_err());
        assert!(apply(&base, &[], base.len()).is_err());
    }

    #[test]
    fn a_shorter_base_is_zero_extended_to_the_chunk() {
        let base = vec![7u8; 3 * BLOCK_BYTES];
        let mut data = base.clone();
        data.resize(8 * BLOCK_BYTES, 0);
        data[6 * BLOCK_BYTES] = 9;
        let d = make(&data, &[6]).unwrap();
        assert_eq!(apply(&base, &d, data.len()).unwrap(), data);
        assert!(apply(&data, &d, base.len()).is_err(), "a base longer than its chunk");
    }

    #[test]
    fn a_bitmap_read_at_another_length_is_refused() {
        // 8 blocks have a one-word bitmap, 256 blocks a four-word one.
        let data = vec![1u8; 8 * BLOCK_BYTES];
        let d = make(&data, &[1]).unwrap();
        assert_eq!(blocks(&d, data.len()).unwrap(), vec![1]);
        assert!(blocks(&d, 256 * BLOCK_BYTES).is_err());
        assert!(blocks(&d[..d.len() - 1], data.len()).is_err());
    }

    proptest! {
        #[test]
        fn apply_inverts_make(n in 1usize..80, short in 0usize..4096, edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12)) {
            let len = n * BLOCK_BYTES - if n > 1 { short } else { 0 };
            let base: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
            let mut data = base.clone();
            let mut changed = Vec::new();
            for (at, v) in edits {
                data[at % len] = v;
                changed.push((at % len) / BLOCK_BYTES);
            }
            changed.sort_unstable();
            changed.dedup();
            if let Some(d) = make(&data, &changed) {
                prop_assert_eq!(blocks(&d, len).unwrap(), changed);
                prop_assert_eq!(apply(&base, &d, len).unwrap(), data);
            }
        }

        #[test]
        fn apply_never_panics(base_blocks in 1usize..8, payload in proptest::collection::vec(any::<u8>(), 0..20000)) {
            let _ = apply(&vec![0u8; base_blocks * BLOCK_BYTES], &payload, base_blocks * BLOCK_BYTES);
            let _ = blocks(&payload, base_blocks * BLOCK_BYTES);
        }
    }
}
