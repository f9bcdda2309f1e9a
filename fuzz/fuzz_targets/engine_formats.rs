//! Fuzz target for the engine's decoders of bytes read back from disk, which a torn write, a
//! bad sector or a hostile file can make anything: the change-tracking header (`.ctk`), the
//! local map header (`.local`), pack headers, record headers, chunk-map keys and pack index
//! entries (`engine/src/base/format.rs`), and delta payloads (`engine/src/store/delta.rs`).
//! Properties: nothing panics; what a decoder accepts encodes back to the same bytes; a delta
//! that applies yields exactly one chunk.
//!
//!     cargo install cargo-fuzz
//!     cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run engine_formats -- -max_total_time=60
//!
//! Both files use only `std`, crc32fast and the engine's error constructor, which the shim
//! (`engine_shim/`) stands in for, so they compile straight into the target: no RocksDB in
//! the fuzzed binary.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

// The engine's `crate::base::error` and `crate::base::format`, `crate::store::delta`.
#[path = "engine_shim/base.rs"]
#[allow(dead_code)]
mod base;
#[path = "engine_shim/store.rs"]
#[allow(dead_code)]
mod store;

use base::format;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz");
    if let Ok(h) = format::TrackingHeader::decode(data, p) {
        let again = format::TrackingHeader::decode(&h.encode(), p).expect("an encoded header decodes");
        assert_eq!(again, h);
    }
    if let Ok((flags, chunks)) = format::decode_local_header(data, p) {
        let b = format::encode_local_header(flags, chunks);
        assert_eq!(format::decode_local_header(&b, p).expect("an encoded header decodes"), (flags, chunks));
    }
    if let Ok(id) = format::decode_pack_header(data, p) {
        assert_eq!(format::decode_pack_header(&format::encode_pack_header(id), p).unwrap(), id);
    }
    if let Ok(h) = format::RecordHeader::decode(data, p) {
        assert_eq!(format::RecordHeader::decode(&h.encode(), p).expect("an encoded header decodes"), h);
        // A decompression buffer is sized from raw_len: it must be bounded.
        assert!(u64::from(h.raw_len) <= format::MAX_CHUNK_SIZE, "an accepted record is at most a chunk");
    }
    // Headers with a valid CRC and fuzzed fields, which random bytes rarely reach.
    if data.len() >= 48 {
        let u32_at = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&data[16..48]);
        let codec = if data[0] & 1 == 0 { format::Codec::Raw } else { format::Codec::Zstd };
        let h = format::RecordHeader {
            kind: format::RecordKind::Full,
            codec,
            raw_len: u32_at(4),
            stored_len: u32_at(8),
            stored_crc: u32_at(12),
            id,
        };
        if let Ok(back) = format::RecordHeader::decode(&h.encode(), p) {
            assert_eq!(back, h);
            assert!(u64::from(back.raw_len) <= format::MAX_CHUNK_SIZE, "an accepted record is at most a chunk");
        }
    }
    if let Some((lineage, index, seq)) = format::decode_chunk_map_key(data) {
        assert_eq!(&format::chunk_map_key(lineage, index, seq)[..], data);
    }
    if let Ok(bytes) = format::decode_pack_entry(data) {
        assert_eq!(&format::encode_pack_entry(bytes)[..], data);
    }

    // A delta over a chunk: the first two bytes choose its length (1..=64 blocks), the rest is
    // the payload, applied over a base of that length.
    if data.len() >= 2 {
        let blocks = 1 + usize::from(u16::from_le_bytes([data[0], data[1]]) % 64);
        let chunk_len = blocks * format::BLOCK_BYTES;
        let payload = &data[2..];
        let _ = store::delta::blocks(payload, chunk_len);
        let base = vec![0x5a; chunk_len];
        if let Ok(chunk) = store::delta::apply(&base, payload, chunk_len) {
            assert_eq!(chunk.len(), chunk_len, "an applied delta is one chunk");
        }
    }
});
