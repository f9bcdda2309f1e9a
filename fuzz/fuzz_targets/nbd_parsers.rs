//! Fuzz target for the NBD parsers of untrusted bytes: client flags, option headers, every
//! option's data, the TLS mode's verdict on each option, request headers and the judging of
//! requests against a session's limits (`daemon/src/nbd/codec/`). Properties: nothing panics,
//! and what the parsers accept is within the protocol's bounds.
//!
//! Run a short session (stable toolchain: RUSTC_BOOTSTRAP unlocks the sanitizer flags):
//!
//!     cargo install cargo-fuzz
//!     cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run nbd_parsers -- -max_total_time=60
//!
//! The codec is pure (std and thiserror only), so it is compiled straight into the target:
//! no engine, RocksDB or tokio in the fuzzed binary.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../daemon/src/nbd/codec/mod.rs"]
#[allow(dead_code)]
mod codec;

use codec::{ClientOption, Command, Limits};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// An option's data through its parser, with the parsed strings within the spec's limits.
fn option(code: u32, data: &[u8]) {
    let Ok(parsed) = codec::parse_option(code, data) else { return };
    match parsed {
        ClientOption::ExportName(name) => assert!(name.len() <= codec::MAX_STRING_BYTES),
        ClientOption::Info(req) | ClientOption::Go(req) => {
            assert!(req.name.len() <= codec::MAX_STRING_BYTES);
            assert!(req.requests.len() * 2 <= data.len());
        }
        ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req) => {
            assert!(req.name.len() <= codec::MAX_STRING_BYTES);
            assert!(req.queries.len() * 4 <= data.len());
            assert!(req.queries.iter().all(|q| q.contains(':') && q.len() <= codec::MAX_STRING_BYTES));
        }
        _ => {}
    }
}

/// The TLS rules on an option header, in every mode: TLS_REQD only before the upgrade,
/// STARTTLS never proceeds unhandled, the upgrade only from FORCEDTLS.
fn tls(option: u32, len: u32) {
    use codec::{TlsMode, TlsVerdict};
    for mode in [TlsMode::Unconfigured, TlsMode::NotOffered, TlsMode::Required, TlsMode::Active] {
        let v = codec::tls_verdict(mode, option, len);
        if let TlsVerdict::Refuse { reply, .. } = v {
            assert!(reply != codec::REP_ERR_TLS_REQD || mode == TlsMode::Required);
        }
        assert!(option != codec::OPT_STARTTLS || v != TlsVerdict::Proceed);
        assert!(v != TlsVerdict::StartTls || (mode == TlsMode::Required && len == 0));
        assert!(v != TlsVerdict::Close || mode == TlsMode::Required);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    match selector % 3 {
        // A handshake as it arrives: client flags, then option headers and data.
        0 => {
            if rest.len() < 4 {
                return;
            }
            let _ = codec::decode_client_flags([rest[0], rest[1], rest[2], rest[3]]);
            let mut stream = &rest[4..];
            while stream.len() >= codec::OPTION_HEADER_LEN {
                let mut raw = [0u8; codec::OPTION_HEADER_LEN];
                raw.copy_from_slice(&stream[..codec::OPTION_HEADER_LEN]);
                stream = &stream[codec::OPTION_HEADER_LEN..];
                let Ok(header) = codec::decode_option_header(&raw) else { return };
                assert!(header.len <= codec::MAX_OPTION_BYTES);
                tls(header.option, header.len);
                let len = (header.len as usize).min(stream.len());
                option(header.option, &stream[..len]);
                stream = &stream[len..];
            }
        }
        // One option, the code biased towards the ones that carry data.
        1 => {
            if let Some((&code, body)) = rest.split_first() {
                option(u32::from(code % 16), body);
            }
        }
        // A request header judged against arbitrary session limits.
        _ => {
            if rest.len() < codec::REQUEST_LEN + 13 {
                return;
            }
            let mut raw = [0u8; codec::REQUEST_LEN];
            raw.copy_from_slice(&rest[..codec::REQUEST_LEN]);
            // Most inputs should get past the magic check.
            if rest[codec::REQUEST_LEN] & 1 == 0 {
                raw[..4].copy_from_slice(&codec::REQUEST_MAGIC.to_be_bytes());
            }
            let Ok(req) = codec::decode_request(&raw) else { return };
            assert!(req.payload_len() <= codec::MAX_PAYLOAD_BYTES);
            let l = &rest[codec::REQUEST_LEN + 1..];
            let limits = Limits {
                flags: u16::from_be_bytes([l[0], l[1]]),
                size_bytes: u64::from(u32_at(l, 2)) << (l[6] % 32),
                min_block_bytes: 1 << (l[7] % 17),
                meta_context: l[8] & 1 == 1,
            };
            if codec::check_request(&req, &limits).is_ok() && !matches!(req.command, Command::Flush | Command::Disc) {
                assert!(req.offset.checked_add(u64::from(req.len)).is_some_and(|end| end <= limits.size_bytes));
                assert!(req.command != Command::Read || req.len <= codec::MAX_PAYLOAD_BYTES);
            }
        }
    }
});
