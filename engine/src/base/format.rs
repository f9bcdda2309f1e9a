//! Every magic number, version and on-disk header the engine writes, in one place.
//!
//! Headers are checked when written and when read; sizes are checked at compile time.

use crate::base::error::{Error, Result};
use std::path::Path;

/// Version of the catalog's layout (column families, keys, record encodings).
/// A catalog written by a newer version refuses to open.
pub const CATALOG_FORMAT_VERSION: u32 = 1;

/// Key in the `meta` column family holding [`CATALOG_FORMAT_VERSION`] (u32 big-endian).
pub const META_FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// Size of a change-tracking block: the unit of dirty tracking (and of deltas later).
pub const BLOCK_SIZE: u64 = BLOCK_SIZE_U32 as u64;
/// [`BLOCK_SIZE`] as a buffer length.
pub const BLOCK_BYTES: usize = BLOCK_SIZE_U32 as usize;
const BLOCK_SIZE_U32: u32 = 4096;

/// Disk sizes and O_DIRECT I/O are multiples of this.
pub const DISK_ALIGN: u64 = 4096;

/// Chunk size bounds (powers of two) and default.
pub const MIN_CHUNK_SIZE: u64 = 4 << 10;
pub const MAX_CHUNK_SIZE: u64 = 4 << 20;
pub const DEFAULT_CHUNK_SIZE: u64 = 256 << 10;

/// Largest single read or write the engine accepts.
pub const MAX_IO_BYTES: u64 = 32 << 20;

/// Largest disk: 64 TiB, so a block bitmap stays under 2 GiB per slot.
pub const MAX_DISK_SIZE: u64 = 64 << 40;

/// Change-tracking file (`disks/<id>.ctk`):
///
/// ```text
/// 0     header (TRACKING_HEADER_LEN bytes, in a page of its own)
/// 4096  slot 0: one bit per 4 KiB block, u64 little-endian words
/// ...   slot 1: same size, page aligned
/// ```
///
/// One slot collects the writes of the current epoch; the other holds the closed epoch a
/// capture is reading. The epoch switch swaps them in memory inside the freeze and is
/// persisted after the thaw.
pub const TRACKING_MAGIC: [u8; 8] = *b"CAIRNCTK";
pub const TRACKING_VERSION: u32 = 1;
pub const TRACKING_HEADER_PAGE: u64 = 4096;

/// The engine has the disk open; found set at open time, the previous run ended uncleanly.
pub const TRACKING_FLAG_OPEN: u32 = 1 << 0;
/// Change tracking missed writes (unclean shutdown): the next capture must rescan.
pub const TRACKING_FLAG_UNTRUSTED: u32 = 1 << 1;
/// The closed slot holds an epoch a capture has not consumed yet.
pub const TRACKING_FLAG_CLOSED_PENDING: u32 = 1 << 2;
const TRACKING_KNOWN_FLAGS: u32 = TRACKING_FLAG_OPEN | TRACKING_FLAG_UNTRUSTED | TRACKING_FLAG_CLOSED_PENDING;

/// The decoded change-tracking header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackingHeader {
    pub flags: u32,
    /// Slot (0 or 1) collecting the current epoch's writes.
    pub active_slot: u32,
    /// Number of epoch switches so far.
    pub epoch: u64,
    /// Blocks tracked (disk size / BLOCK_SIZE, rounded up).
    pub block_count: u64,
}

/// magic 8 | version 4 | flags 4 | active 4 | block size 4 | epoch 8 | block count 8 | crc 4
pub const TRACKING_HEADER_LEN: usize = 44;
const _: () = assert!(TRACKING_HEADER_LEN as u64 <= TRACKING_HEADER_PAGE);

impl TrackingHeader {
    /// Bytes of one slot, page aligned.
    pub fn slot_bytes(block_count: u64) -> u64 {
        block_count.div_ceil(64).saturating_mul(8).next_multiple_of(TRACKING_HEADER_PAGE)
    }

    /// Offset of slot `i`.
    pub fn slot_offset(block_count: u64, i: u32) -> u64 {
        TRACKING_HEADER_PAGE + u64::from(i) * Self::slot_bytes(block_count)
    }

    /// Length of the whole file.
    pub fn file_len(block_count: u64) -> u64 {
        TRACKING_HEADER_PAGE + 2 * Self::slot_bytes(block_count)
    }

    pub fn encode(&self) -> [u8; TRACKING_HEADER_LEN] {
        assert!(self.active_slot < 2 && self.flags & !TRACKING_KNOWN_FLAGS == 0, "bad header {self:?}");
        let mut b = [0u8; TRACKING_HEADER_LEN];
        b[0..8].copy_from_slice(&TRACKING_MAGIC);
        b[8..12].copy_from_slice(&TRACKING_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..20].copy_from_slice(&self.active_slot.to_le_bytes());
        b[20..24].copy_from_slice(&BLOCK_SIZE_U32.to_le_bytes());
        b[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32..40].copy_from_slice(&self.block_count.to_le_bytes());
        let crc = crc32fast::hash(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::corrupt(path, reason);
        if b.len() < TRACKING_HEADER_LEN {
            return Err(bad(format!("tracking header is {} bytes, want {TRACKING_HEADER_LEN}", b.len())));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        if b[0..8] != TRACKING_MAGIC {
            return Err(bad("not a change-tracking file (bad magic)".into()));
        }
        let crc = crc32fast::hash(&b[..40]);
        if crc != u32_at(40) {
            return Err(bad("tracking header CRC mismatch".into()));
        }
        let version = u32_at(8);
        if version != TRACKING_VERSION {
            return Err(bad(format!("tracking format version {version}, this build reads {TRACKING_VERSION}")));
        }
        let h =
            TrackingHeader { flags: u32_at(12), active_slot: u32_at(16), epoch: u64_at(24), block_count: u64_at(32) };
        if u32_at(20) != BLOCK_SIZE_U32 {
            return Err(bad(format!("tracking block size {}, want {BLOCK_SIZE}", u32_at(20))));
        }
        if h.active_slot > 1 || h.flags & !TRACKING_KNOWN_FLAGS != 0 {
            return Err(bad(format!("tracking header fields out of range: {h:?}")));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record header whose CRC holds but whose lengths no record of ours can have (a hostile
    /// or foreign pack): decoding it would size a decompression buffer from it.
    #[test]
    fn record_headers_with_impossible_lengths_are_corrupt() {
        let header = |codec, raw_len, stored_len| {
            let h = RecordHeader { kind: RecordKind::Full, codec, raw_len, stored_len, stored_crc: 0, id: [7; 32] };
            RecordHeader::decode(&h.encode(), Path::new("x"))
        };
        assert!(header(Codec::Zstd, 1 << 20, 1000).is_ok());
        assert!(header(Codec::Raw, 4096, 4096).is_ok());
        let too_big = header(Codec::Zstd, u32::MAX, 1000).unwrap_err();
        assert_eq!(too_big.kind(), crate::ErrorKind::Corrupt, "{too_big}");
        assert!(header(Codec::Raw, 4096, 8192).is_err(), "raw bytes are stored as they are");
        assert!(header(Codec::Zstd, 4096, 4096).is_err(), "a record is compressed only when it shrinks");
    }

    #[test]
    fn tracking_header_round_trips_and_rejects_damage() {
        let h = TrackingHeader { flags: TRACKING_FLAG_OPEN, active_slot: 1, epoch: 7, block_count: 1000 };
        let mut b = h.encode();
        assert_eq!(TrackingHeader::decode(&b, Path::new("x")).unwrap(), h);
        b[30] ^= 1;
        assert_eq!(TrackingHeader::decode(&b, Path::new("x")).unwrap_err().kind(), crate::ErrorKind::Corrupt);
        assert!(TrackingHeader::decode(&b[..10], Path::new("x")).is_err());
    }

    #[test]
    fn slots_are_page_aligned() {
        assert_eq!(TrackingHeader::slot_bytes(1), 4096);
        assert_eq!(TrackingHeader::slot_bytes(64 * 512 + 1), 8192);
        assert_eq!(TrackingHeader::slot_offset(1, 1), 8192);
    }
}

// ---- chunk store ---------------------------------------------------------------------------

/// Pack file: a header, then records back to back. Immutable once sealed.
///
/// ```text
/// pack header (PACK_HEADER_LEN): magic "CAIRNPAK" | version u32 | reserved u32 | pack id [16]
/// record header (RECORD_HEADER_LEN):
///   magic u32 | kind u8 | codec u8 | reserved u16 | raw_len u32 | stored_len u32
///   | stored_crc u32 (CRC-32 of the stored bytes) | id [32] | reserved [8]
///   | header_crc u32 (CRC-32 of the 60 bytes before it)
/// stored bytes (stored_len)
/// ```
pub const PACK_MAGIC: [u8; 8] = *b"CAIRNPAK";
pub const PACK_VERSION: u32 = 1;
pub const PACK_HEADER_LEN: usize = 32;
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"CREC");
pub const RECORD_HEADER_LEN: usize = 64;
const _: () = assert!(RECORD_HEADER_LEN == 4 + 1 + 1 + 2 + 4 + 4 + 4 + 32 + 8 + 4);

/// What a pack record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A whole chunk; its id is the BLAKE3 of the raw chunk.
    Full = 1,
    /// Changed blocks over a base chunk (restore point lifecycle layer).
    Delta = 2,
}

/// How a record's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub codec: Codec,
    pub raw_len: u32,
    pub stored_len: u32,
    pub stored_crc: u32,
    pub id: [u8; 32],
}

/// Encodes a pack header.
pub fn encode_pack_header(pack_id: [u8; 16]) -> [u8; PACK_HEADER_LEN] {
    let mut b = [0u8; PACK_HEADER_LEN];
    b[0..8].copy_from_slice(&PACK_MAGIC);
    b[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    b[16..32].copy_from_slice(&pack_id);
    b
}

/// Checks a pack header; returns the pack id it names.
pub fn decode_pack_header(b: &[u8], path: &Path) -> Result<[u8; 16]> {
    if b.len() < PACK_HEADER_LEN || b[0..8] != PACK_MAGIC {
        return Err(Error::corrupt(path, "not a pack (bad magic)"));
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version != PACK_VERSION {
        return Err(Error::corrupt(path, format!("pack format version {version}, this build reads {PACK_VERSION}")));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&b[16..32]);
    Ok(id)
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[4] = self.kind as u8;
        b[5] = self.codec as u8;
        b[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.stored_crc.to_le_bytes());
        b[20..52].copy_from_slice(&self.id);
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: &str| Error::corrupt(path, reason.to_owned());
        if b.len() < RECORD_HEADER_LEN {
            return Err(bad("record header truncated"));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if u32_at(0) != RECORD_MAGIC {
            return Err(bad("bad record magic"));
        }
        if crc32fast::hash(&b[..60]) != u32_at(60) {
            return Err(bad("record header CRC mismatch"));
        }
        let kind = match b[4] {
            1 => RecordKind::Full,
            2 => RecordKind::Delta,
            _ => return Err(bad("unknown record kind")),
        };
        let codec = match b[5] {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            _ => return Err(bad("unknown record codec")),
        };
        let (raw_len, stored_len) = (u32_at(8), u32_at(12));
        // Bounds before anything is sized from them (a decompression buffer of raw_len): a
        // record holds one chunk, or a delta (smaller than its chunk); it is stored raw, or
        // compressed when that made it smaller.
        if u64::from(raw_len) > MAX_CHUNK_SIZE {
            return Err(bad("record longer than the largest chunk"));
        }
        match codec {
            Codec::Raw if stored_len != raw_len => return Err(bad("raw record whose stored and raw lengths differ")),
            Codec::Zstd if stored_len >= raw_len => return Err(bad("compressed record no smaller than its content")),
            _ => {}
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[20..52]);
        Ok(Self { kind, codec, raw_len, stored_len, stored_crc: u32_at(16), id })
    }
}

/// Default zstd level for chunk records.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// A staging pack is sealed once it holds this many bytes.
pub const PACK_TARGET_BYTES: u64 = 64 << 20;

// ---- catalog keys and values ----------------------------------------------------------------

/// `chunk_map` key: `lineage [16] | chunk index u64 BE | !seq u64 BE` (newer sorts first).
pub const CHUNK_MAP_KEY_LEN: usize = 32;

pub fn chunk_map_key(lineage: [u8; 16], index: u64, seq: u64) -> [u8; CHUNK_MAP_KEY_LEN] {
    let mut k = [0u8; CHUNK_MAP_KEY_LEN];
    k[..16].copy_from_slice(&lineage);
    k[16..24].copy_from_slice(&index.to_be_bytes());
    k[24..32].copy_from_slice(&(!seq).to_be_bytes());
    k
}

/// Splits a `chunk_map` key into (lineage, chunk index, seq).
pub fn decode_chunk_map_key(k: &[u8]) -> Option<([u8; 16], u64, u64)> {
    if k.len() != CHUNK_MAP_KEY_LEN {
        return None;
    }
    let mut lineage = [0u8; 16];
    lineage.copy_from_slice(&k[..16]);
    let index = u64::from_be_bytes(k[16..24].try_into().ok()?);
    let seq = !u64::from_be_bytes(k[24..32].try_into().ok()?);
    Some((lineage, index, seq))
}

/// `chunk_map` value tags.
pub const REF_ZERO: u8 = 0;
pub const REF_FULL: u8 = 1;
pub const REF_DELTA: u8 = 2;

/// `chunks` value: `pack id [16] | offset u64 | stored_len u32 | raw_len u32 | refs u64` (LE).
pub const CHUNK_ENTRY_LEN: usize = 40;

/// `packs` value: the pack's size in bytes, u64 LE.
pub const PACK_ENTRY_LEN: usize = 8;

/// The `packs` value of a pack of `bytes` bytes.
pub fn encode_pack_entry(bytes: u64) -> [u8; PACK_ENTRY_LEN] {
    bytes.to_le_bytes()
}

/// The pack size a `packs` value holds; any other length than [`PACK_ENTRY_LEN`] is corrupt.
pub fn decode_pack_entry(v: &[u8]) -> Result<u64> {
    let bytes: [u8; PACK_ENTRY_LEN] = v.try_into().map_err(|_| {
        Error::corrupt("catalog/packs", format!("pack entry of {} bytes, expected {PACK_ENTRY_LEN}", v.len()))
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// `meta` key of the next restore point sequence number (u64 BE).
pub const META_NEXT_SEQ_KEY: &[u8] = b"next_seq";

/// `meta` key set once the `chunk_seq` family indexes every chunk map entry: by a new
/// catalog when it is created, by the index build for a catalog from before the index.
pub const META_SEQ_INDEX_BUILT_KEY: &[u8] = b"chunk_seq_index_built";

/// `meta` key prefix of a lineage's base: `lineage: | lineage id [16]` -> JSON `LineageBase`.
pub const META_LINEAGE_PREFIX: &[u8] = b"lineage:";

/// The `meta` key of `lineage`'s base.
pub fn meta_lineage_key(lineage: [u8; 16]) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(META_LINEAGE_PREFIX);
    k[8..].copy_from_slice(&lineage);
    k
}

// ---- local map of a restored disk ---------------------------------------------------------------

/// Local map (`disks/<id>.local`) of a disk restored from a disk restore point: one bit per
/// chunk, set once the chunk's content is in the disk file (hydrated, or written by the guest
/// after a read-modify-write from the store). A bit is set only after the chunk's data is
/// durable, so the map never claims data that a power loss could take away.
///
/// ```text
/// 0     magic "CAIRNLOC" | version u32 | flags u32 | chunk count u64 | crc u32 (of the 24 bytes before)
/// 4096  bitmap: u64 little-endian words
/// ```
pub const LOCAL_MAGIC: [u8; 8] = *b"CAIRNLOC";
pub const LOCAL_VERSION: u32 = 1;
pub const LOCAL_HEADER_LEN: usize = 28;
pub const LOCAL_HEADER_PAGE: u64 = 4096;
/// Every chunk is local: the disk no longer reads from the store.
pub const LOCAL_FLAG_HYDRATED: u32 = 1;

/// Encodes a local-map header.
pub fn encode_local_header(flags: u32, chunks: u64) -> [u8; LOCAL_HEADER_LEN] {
    let mut b = [0u8; LOCAL_HEADER_LEN];
    b[0..8].copy_from_slice(&LOCAL_MAGIC);
    b[8..12].copy_from_slice(&LOCAL_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    b[16..24].copy_from_slice(&chunks.to_le_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a local-map header into (flags, chunk count).
pub fn decode_local_header(b: &[u8], path: &Path) -> Result<(u32, u64)> {
    if b.len() < LOCAL_HEADER_LEN || b[0..8] != LOCAL_MAGIC {
        return Err(Error::corrupt(path, "not a local map (bad magic)"));
    }
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if crc32fast::hash(&b[..24]) != u32_at(24) {
        return Err(Error::corrupt(path, "local map header CRC mismatch"));
    }
    if u32_at(8) != LOCAL_VERSION {
        return Err(Error::corrupt(path, format!("local map version {}, this build reads {LOCAL_VERSION}", u32_at(8))));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[16..24]);
    Ok((u32_at(12), u64::from_le_bytes(n)))
}
