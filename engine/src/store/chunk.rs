//! Chunk identities, references and index entries.

use std::fmt;

use crate::base::error::{Error, Result};
use crate::base::format::{CHUNK_ENTRY_LEN, REF_DELTA, REF_FULL, REF_ZERO};
use crate::base::ids::PackId;

/// Whether `data` is all zeros: compared a page at a time with memcmp, several times faster
/// than a byte loop, which the early exit keeps the compiler from vectorising.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// BLAKE3-256 of a chunk's raw bytes: a chunk's identity and its dedup key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The id of an all-zero chunk of `len` bytes (never stored, but a Merkle leaf).
    pub fn zero(len: u64) -> Self {
        Self(crate::base::merkle::zero_leaf(len))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::base::merkle::write_hex(f, &self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// What a chunk map entry says about one chunk of a disk restore point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRef {
    /// All zeros: nothing stored.
    Zero,
    /// A whole stored chunk, by content hash.
    Full(ChunkId),
    /// The blocks that differ from a full `base` chunk, stored as record `delta`; `content` is
    /// the BLAKE3 of the whole resulting chunk.
    Delta { content: ChunkId, base: ChunkId, delta: ChunkId },
}

impl ChunkRef {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            ChunkRef::Zero => vec![REF_ZERO],
            ChunkRef::Full(id) => {
                let mut v = Vec::with_capacity(33);
                v.push(REF_FULL);
                v.extend_from_slice(&id.0);
                v
            }
            ChunkRef::Delta { content, base, delta } => {
                let mut v = Vec::with_capacity(97);
                v.push(REF_DELTA);
                v.extend_from_slice(&content.0);
                v.extend_from_slice(&base.0);
                v.extend_from_slice(&delta.0);
                v
            }
        }
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        let bad = |r: &str| Error::corrupt("catalog/chunk_map", r.to_owned());
        match b.first() {
            Some(&REF_ZERO) if b.len() == 1 => Ok(ChunkRef::Zero),
            Some(&REF_FULL) if b.len() == 33 => {
                let mut id = [0u8; 32];
                id.copy_from_slice(&b[1..]);
                Ok(ChunkRef::Full(ChunkId(id)))
            }
            Some(&REF_DELTA) if b.len() == 97 => {
                let id = |at: usize| {
                    let mut id = [0u8; 32];
                    id.copy_from_slice(&b[at..at + 32]);
                    ChunkId(id)
                };
                Ok(ChunkRef::Delta { content: id(1), base: id(33), delta: id(65) })
            }
            _ => Err(bad("malformed chunk map entry")),
        }
    }

    /// The stored records this entry holds a reference on: none, the chunk, or a delta's
    /// base and its delta record.
    pub fn stored(&self) -> Vec<ChunkId> {
        match self {
            ChunkRef::Zero => Vec::new(),
            ChunkRef::Full(id) => vec![*id],
            ChunkRef::Delta { base, delta, .. } => vec![*base, *delta],
        }
    }

    /// The BLAKE3 of the chunk's whole raw content, when it is not all zeros: a full
    /// chunk's id, a delta's `content`.
    pub fn content(&self) -> Option<ChunkId> {
        match self {
            ChunkRef::Zero => None,
            ChunkRef::Full(id) | ChunkRef::Delta { content: id, .. } => Some(*id),
        }
    }

    /// The full chunk a new delta of this chunk would be taken against.
    pub fn full_base(&self) -> Option<ChunkId> {
        match self {
            ChunkRef::Zero => None,
            ChunkRef::Full(id) | ChunkRef::Delta { base: id, .. } => Some(*id),
        }
    }
}

/// Where a stored chunk lives: the `chunks` index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    /// Offset of the record header in the pack.
    pub offset: u64,
    /// Bytes stored after the header.
    pub stored_len: u32,
    pub raw_len: u32,
    /// Chunk map entries referencing the chunk.
    pub refs: u64,
}

impl ChunkLocation {
    pub(crate) fn encode(&self) -> [u8; CHUNK_ENTRY_LEN] {
        let mut b = [0u8; CHUNK_ENTRY_LEN];
        b[..16].copy_from_slice(&self.pack.to_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.stored_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.raw_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.refs.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != CHUNK_ENTRY_LEN {
            return Err(Error::corrupt("catalog/chunks", format!("chunk index entry of {} bytes", b.len())));
        }
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&b[..16]);
        let u64_at =
            |i: usize| u64::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(Self {
            pack: PackId::from(uuid::Uuid::from_bytes(pack)),
            offset: u64_at(16),
            stored_len: u32_at(24),
            raw_len: u32_at(28),
            refs: u64_at(32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_locations_round_trip() {
        let delta = ChunkRef::Delta { content: ChunkId::of(b"c"), base: ChunkId::of(b"b"), delta: ChunkId::of(b"d") };
        for r in [ChunkRef::Zero, ChunkRef::Full(ChunkId::of(b"x")), delta] {
            assert_eq!(ChunkRef::decode(&r.encode()).unwrap(), r);
        }
        assert!(ChunkRef::decode(&[9]).is_err());
        assert!(ChunkRef::decode(&[REF_FULL, 1, 2]).is_err());
        let loc = ChunkLocation { pack: PackId::new(), offset: 77, stored_len: 5, raw_len: 9, refs: 3 };
        assert_eq!(ChunkLocation::decode(&loc.encode()).unwrap(), loc);
    }

    #[test]
    fn is_zero_finds_any_set_byte() {
        for len in [0usize, 1, 4095, 4096, 4097, 256 << 10] {
            let mut data = vec![0u8; len];
            assert!(is_zero(&data), "{len} zeros");
            for at in [0, len / 2, len.saturating_sub(1)] {
                if let Some(b) = data.get_mut(at) {
                    *b = 1;
                    assert!(!is_zero(&data), "{len} bytes, one set at {at}");
                    data[at] = 0;
                }
            }
        }
    }

    #[test]
    fn zero_id_matches_hash_of_zeros() {
        assert_eq!(ChunkId::zero(10000), ChunkId::of(&[0u8; 10000]));
    }
}
