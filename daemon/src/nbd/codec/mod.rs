//! NBD wire format: pure encode/decode of the handshake, options, requests and replies.
//!
//! Nothing here does I/O, so every parser of untrusted bytes can be unit tested and fuzzed
//! on plain slices. Numbers are big-endian, as the protocol says. Only the fixed newstyle
//! handshake is spoken; oldstyle and extended headers are not.

mod handshake;
mod transmission;

pub use handshake::*;
pub use transmission::*;

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second greeting word, and the magic that starts every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags the server sends.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Option codes.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_PLATFORM: u32 = (1 << 31) + 4;
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) + 8;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Information types of `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flags and types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;

/// `base:allocation` status flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context every export offers.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Prefix of QEMU's dirty-bitmap contexts (`qemu:dirty-bitmap:NAME`, QEMU docs/interop/nbd.rst).
pub const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";
/// The one flag of a dirty-bitmap context: set where the extent is dirty.
pub const STATE_DIRTY: u32 = 1 << 0;

/// Longest string (export name, query, message) the protocol allows.
pub const MAX_STRING_BYTES: usize = 4096;
/// Largest option payload accepted; a bigger one is treated as a denial-of-service attempt.
pub const MAX_OPTION_BYTES: u32 = 64 << 10;
/// Largest READ/WRITE payload, advertised as the maximum block size.
pub const MAX_PAYLOAD_BYTES: u32 = 32 << 20;
/// Advertised preferred block size.
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;

/// Bytes of the server greeting.
pub const GREETING_LEN: usize = 18;
/// Bytes of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;

/// Error values allowed on the wire (the spec's restricted errno set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Errno {
    Perm = 1,
    Io = 5,
    NoMem = 12,
    Inval = 22,
    NoSpc = 28,
    Overflow = 75,
    NotSup = 95,
    Shutdown = 108,
}

impl Errno {
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// A protocol violation that ends the connection (hard disconnect).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("client flags {0:#x} include bits the server did not offer")]
    UnknownClientFlags(u32),
    #[error("bad option magic {0:#x}")]
    OptionMagic(u64),
    #[error("option data of {0} bytes exceeds the {MAX_OPTION_BYTES}-byte limit")]
    OptionTooLong(u32),
    #[error("bad request magic {0:#x}")]
    RequestMagic(u32),
    #[error("write payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    PayloadTooLong(u32),
}

// ---- helpers -----------------------------------------------------------------------------

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Lengths of things this module builds are bounded far below 4 GiB; saturate rather than
/// wrap if that ever stops being true.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Clips a string to the protocol's limit at a character boundary.
fn clip(s: &str) -> &str {
    if s.len() <= MAX_STRING_BYTES {
        return s;
    }
    let mut end = MAX_STRING_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use cairn_test_support::nbd::string as opt_string;

    use super::*;

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_fixed_newstyle_no_zeroes() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
    }

    #[test]
    fn client_flags_with_unknown_bits_are_a_violation() {
        assert_eq!(decode_client_flags([0, 0, 0, 3]), Ok(ClientFlags { fixed_newstyle: true, no_zeroes: true }));
        assert_eq!(decode_client_flags([0, 0, 0, 4]), Err(Violation::UnknownClientFlags(4)));
        assert!(decode_client_flags([0x80, 0, 0, 1]).is_err());
    }

    #[test]
    fn option_header_checks_magic_and_length() {
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(b"IHAVEOPT");
        h[8..12].copy_from_slice(&7u32.to_be_bytes());
        h[12..].copy_from_slice(&10u32.to_be_bytes());
        assert_eq!(decode_option_header(&h), Ok(OptionHeader { option: 7, len: 10 }));
        h[12..].copy_from_slice(&(MAX_OPTION_BYTES + 1).to_be_bytes());
        assert_eq!(decode_option_header(&h), Err(Violation::OptionTooLong(MAX_OPTION_BYTES + 1)));
        h[0] = b'X';
        assert!(matches!(decode_option_header(&h), Err(Violation::OptionMagic(_))));
    }

    #[test]
    fn go_parses_name_and_info_requests() {
        let mut d = opt_string(b"disk0");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        assert_eq!(
            parse_option(OPT_GO, &d),
            Ok(ClientOption::Go(InfoRequest { name: "disk0".into(), requests: vec![INFO_BLOCK_SIZE, INFO_NAME] }))
        );
    }

    #[test]
    fn go_with_inconsistent_lengths_is_invalid() {
        // Name length runs past the data.
        let mut d = 100u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        assert!(parse_option(OPT_GO, &d).is_err());
        // Request count larger than what follows.
        let mut d = opt_string(b"a");
        d.extend_from_slice(&5u16.to_be_bytes());
        assert!(parse_option(OPT_INFO, &d).is_err());
        // Trailing garbage.
        let mut d = opt_string(b"a");
        d.extend_from_slice(&0u16.to_be_bytes());
        d.push(9);
        assert!(parse_option(OPT_GO, &d).is_err());
        // Not UTF-8, embedded NUL.
        assert!(parse_option(OPT_EXPORT_NAME, &[0xff, 0xfe]).is_err());
        assert!(parse_option(OPT_EXPORT_NAME, b"a\0b").is_err());
    }

    #[test]
    fn meta_context_queries_parse_and_need_a_namespace() {
        let mut d = opt_string(b"disk0");
        d.extend_from_slice(&2u32.to_be_bytes());
        d.extend_from_slice(&opt_string(b"base:allocation"));
        d.extend_from_slice(&opt_string(b"qemu:dirty-bitmap:x"));
        assert_eq!(
            parse_option(OPT_SET_META_CONTEXT, &d),
            Ok(ClientOption::SetMetaContext(MetaRequest {
                name: "disk0".into(),
                queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:x".into()]
            }))
        );
        let mut d = opt_string(b"disk0");
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&opt_string(b"nocolon"));
        assert!(parse_option(OPT_LIST_META_CONTEXT, &d).is_err());
        // A huge query count with no queries behind it fails without allocating for it.
        let mut d = opt_string(b"disk0");
        d.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_option(OPT_LIST_META_CONTEXT, &d).is_err());
    }

    #[test]
    fn options_that_take_no_data_refuse_data_and_unknown_options_parse() {
        assert_eq!(parse_option(OPT_LIST, &[]), Ok(ClientOption::List));
        assert!(parse_option(OPT_LIST, &[1]).is_err());
        assert!(parse_option(OPT_STRUCTURED_REPLY, &[1]).is_err());
        assert_eq!(parse_option(OPT_ABORT, &[1, 2]), Ok(ClientOption::Abort));
        assert_eq!(parse_option(99, &[1, 2]), Ok(ClientOption::Unknown(99)));
        assert_eq!(parse_option(OPT_EXTENDED_HEADERS, &[]), Ok(ClientOption::ExtendedHeaders));
    }

    #[test]
    fn starttls_is_refused_without_tls_as_unsupported_or_by_policy() {
        let unsup = tls_verdict(TlsMode::Unconfigured, OPT_STARTTLS, 0);
        assert!(matches!(unsup, TlsVerdict::Refuse { reply: REP_ERR_UNSUP, .. }), "{unsup:?}");
        let policy = tls_verdict(TlsMode::NotOffered, OPT_STARTTLS, 0);
        assert!(matches!(policy, TlsVerdict::Refuse { reply: REP_ERR_POLICY, .. }), "{policy:?}");
        // NOTLS never answers TLS_REQD: everything else proceeds, EXPORT_NAME included.
        for mode in [TlsMode::Unconfigured, TlsMode::NotOffered] {
            for option in [OPT_EXPORT_NAME, OPT_LIST, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY, 99] {
                assert_eq!(tls_verdict(mode, option, 4), TlsVerdict::Proceed, "{mode:?} {option}");
            }
        }
    }

    #[test]
    fn forced_tls_serves_only_starttls_and_abort_before_the_upgrade() {
        assert_eq!(tls_verdict(TlsMode::Required, OPT_STARTTLS, 0), TlsVerdict::StartTls);
        let with_data = tls_verdict(TlsMode::Required, OPT_STARTTLS, 1);
        assert!(matches!(with_data, TlsVerdict::Refuse { reply: REP_ERR_INVALID, .. }), "{with_data:?}");
        assert_eq!(tls_verdict(TlsMode::Required, OPT_ABORT, 0), TlsVerdict::Proceed);
        assert_eq!(tls_verdict(TlsMode::Required, OPT_EXPORT_NAME, 3), TlsVerdict::Close);
        for option in [
            OPT_LIST,
            OPT_INFO,
            OPT_GO,
            OPT_STRUCTURED_REPLY,
            OPT_LIST_META_CONTEXT,
            OPT_SET_META_CONTEXT,
            OPT_EXTENDED_HEADERS,
            99,
        ] {
            let v = tls_verdict(TlsMode::Required, option, 0);
            assert!(matches!(v, TlsVerdict::Refuse { reply: REP_ERR_TLS_REQD, .. }), "{option}: {v:?}");
        }
    }

    #[test]
    fn after_the_upgrade_a_second_starttls_is_invalid_and_the_rest_proceeds() {
        let again = tls_verdict(TlsMode::Active, OPT_STARTTLS, 0);
        assert!(matches!(again, TlsVerdict::Refuse { reply: REP_ERR_INVALID, .. }), "{again:?}");
        for option in [OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY, 99] {
            assert_eq!(tls_verdict(TlsMode::Active, option, 0), TlsVerdict::Proceed, "{option}");
        }
    }

    /// A request header from the test client's encoder, with cookie 0xdead_beef.
    fn request(cmd: u16, flags: u16, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
        cairn_test_support::nbd::request(cmd, flags, 0xdead_beef, offset, len)
    }

    #[test]
    fn request_header_round_trips_and_rejects_bad_magic_and_huge_writes() {
        let req = decode_request(&request(1, CMD_FLAG_FUA, 4096, 512)).unwrap();
        assert_eq!(req.command, Command::Write);
        assert_eq!(req.cookie, 0xdead_beef);
        assert_eq!((req.offset, req.len, req.payload_len()), (4096, 512, 512));
        assert!(req.has(CMD_FLAG_FUA));
        assert_eq!(
            decode_request(&request(1, 0, 0, MAX_PAYLOAD_BYTES + 1)),
            Err(Violation::PayloadTooLong(MAX_PAYLOAD_BYTES + 1))
        );
        // A huge READ is not a violation: it has no payload and gets an error reply.
        assert!(decode_request(&request(0, 0, 0, u32::MAX)).is_ok());
        let mut bad = request(0, 0, 0, 1);
        bad[0] = 0;
        assert!(matches!(decode_request(&bad), Err(Violation::RequestMagic(_))));
    }

    const RW: u16 = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_SEND_FAST_ZERO
        | FLAG_SEND_DF
        | FLAG_SEND_CACHE;

    fn limits(flags: u16) -> Limits {
        Limits { flags, size_bytes: 1 << 20, min_block_bytes: 1, meta_context: true }
    }

    fn check(cmd: u16, flags: u16, offset: u64, len: u32, l: &Limits) -> Result<(), Errno> {
        check_request(&decode_request(&request(cmd, flags, offset, len)).unwrap(), l)
    }

    #[test]
    fn requests_are_judged_with_the_specs_errnos() {
        let l = limits(RW);
        assert_eq!(check(0, 0, 0, 4096, &l), Ok(()));
        assert_eq!(check(0, CMD_FLAG_DF, 0, 4096, &l), Ok(()));
        assert_eq!(check(0, CMD_FLAG_NO_HOLE, 0, 4096, &l), Err(Errno::Inval));
        assert_eq!(check(0, 0, 1 << 20, 1, &l), Err(Errno::Inval));
        assert_eq!(check(1, 0, (1 << 20) - 1, 2, &l), Err(Errno::NoSpc));
        assert_eq!(check(6, 0, u64::MAX, 2, &l), Err(Errno::NoSpc));
        assert_eq!(check(4, 0, 1 << 20, 1, &l), Err(Errno::Inval));
        assert_eq!(check(6, CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, 0, 1 << 20, &l), Ok(()));
        assert_eq!(check(7, CMD_FLAG_REQ_ONE, 0, 1 << 20, &l), Ok(()));
        assert_eq!(check(3, 0, 0, 0, &l), Ok(()));
        assert_eq!(check(42, 0, 0, 0, &l), Err(Errno::Inval));
        assert_eq!(check(0, 1 << 9, 0, 1, &l), Err(Errno::Inval));
        // Reads larger than the maximum payload are refused, not attempted.
        let big = Limits { size_bytes: u64::MAX, ..l };
        assert_eq!(check(0, 0, 0, MAX_PAYLOAD_BYTES + 1, &big), Err(Errno::Inval));
    }

    #[test]
    fn negotiation_narrows_what_is_allowed() {
        let ro = limits(FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH);
        assert_eq!(check(1, 0, 0, 1, &ro), Err(Errno::Perm));
        assert_eq!(check(4, 0, 0, 1, &ro), Err(Errno::Perm));
        assert_eq!(check(6, 0, 0, 1, &ro), Err(Errno::Perm));
        assert_eq!(check(0, CMD_FLAG_DF, 0, 1, &ro), Err(Errno::Inval));
        assert_eq!(check(0, CMD_FLAG_FUA, 0, 1, &ro), Err(Errno::Inval));
        assert_eq!(check(5, 0, 0, 1, &ro), Err(Errno::Inval));
        let no_meta = Limits { meta_context: false, ..limits(RW) };
        assert_eq!(check(7, 0, 0, 1, &no_meta), Err(Errno::Inval));
        let aligned = Limits { min_block_bytes: 4096, ..limits(RW) };
        assert_eq!(check(0, 0, 512, 4096, &aligned), Err(Errno::Inval));
        assert_eq!(check(0, 0, 4096, 512, &aligned), Err(Errno::Inval));
        assert_eq!(check(0, 0, 4096, 4096, &aligned), Ok(()));
    }

    #[test]
    fn replies_encode_as_the_spec_lays_them_out() {
        let mut out = Vec::new();
        encode_simple_reply(&mut out, 22, 7);
        assert_eq!(out.len(), SIMPLE_REPLY_LEN);
        assert_eq!(&out[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[4..8], &22u32.to_be_bytes());

        out.clear();
        encode_offset_hole(&mut out, 7, 4096, 8192, true);
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 12);
        assert_eq!(&out[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&out[6..8], &REPLY_TYPE_OFFSET_HOLE.to_be_bytes());
        assert_eq!(&out[16..20], &12u32.to_be_bytes());

        out.clear();
        encode_offset_data_header(&mut out, 7, 0, 100, false);
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 8);
        assert_eq!(&out[4..6], &0u16.to_be_bytes());
        assert_eq!(&out[16..20], &108u32.to_be_bytes());

        out.clear();
        encode_error_chunk(&mut out, 7, Errno::Io, "boom");
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 6 + 4);
        assert_eq!(&out[20..24], &5u32.to_be_bytes());
        assert_eq!(&out[24..26], &4u16.to_be_bytes());
        assert_eq!(&out[26..], b"boom");

        out.clear();
        let ds = [Descriptor { len: 4096, flags: 0 }, Descriptor { len: 8192, flags: STATE_HOLE | STATE_ZERO }];
        encode_block_status(&mut out, 7, 1, &ds, true);
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 4 + 16);
        assert_eq!(&out[16..20], &20u32.to_be_bytes());
        assert_eq!(&out[32..36], &8192u32.to_be_bytes());
        assert_eq!(&out[36..40], &3u32.to_be_bytes());
    }

    #[test]
    fn option_replies_encode_info_and_long_messages_are_clipped() {
        let mut out = Vec::new();
        encode_info_export(&mut out, OPT_GO, 1 << 30, 0x1ed);
        assert_eq!(out.len(), 20 + 12);
        assert_eq!(&out[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[16..20], &12u32.to_be_bytes());
        assert_eq!(&out[22..30], &(1u64 << 30).to_be_bytes());

        out.clear();
        encode_info_block_size(&mut out, OPT_GO, 1, 4096, MAX_PAYLOAD_BYTES);
        assert_eq!(&out[16..20], &14u32.to_be_bytes());

        out.clear();
        let long = "é".repeat(5000);
        encode_option_error(&mut out, 99, REP_ERR_UNSUP, &long);
        let len = be_u32(&out[16..20]) as usize;
        assert!(len <= MAX_STRING_BYTES);
        assert!(std::str::from_utf8(&out[20..]).is_ok());

        out.clear();
        encode_export_name_reply(&mut out, 4096, 1, false);
        assert_eq!(out.len(), 8 + 2 + 124);
    }

    proptest::proptest! {
        /// Stand-in for the fuzz target: no input makes a parser panic, and every request
        /// header decodes to what was encoded.
        #[test]
        fn option_parsing_never_panics(option in 0u32..16, data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_option(option, &data);
        }

        #[test]
        fn requests_round_trip_and_are_judged_without_panics(
            flags: u16, cmd in 0u16..12, cookie: u64, offset: u64, len: u32, size: u64, min_shift in 0u32..17,
        ) {
            match decode_request(&cairn_test_support::nbd::request(cmd, flags, cookie, offset, len)) {
                Ok(r) => {
                    proptest::prop_assert_eq!((r.flags, r.cookie, r.offset, r.len), (flags, cookie, offset, len));
                    let l = Limits { flags: RW, size_bytes: size, min_block_bytes: 1 << min_shift, meta_context: true };
                    if check_request(&r, &l).is_ok() && r.command != Command::Flush && r.command != Command::Disc {
                        proptest::prop_assert!(offset.checked_add(u64::from(len)).is_some_and(|e| e <= size));
                    }
                }
                Err(v) => proptest::prop_assert_eq!(v, Violation::PayloadTooLong(len)),
            }
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes() {
        // A cheap stand-in for the fuzz target: every prefix of some structured noise.
        let mut noise = Vec::new();
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..512 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x.to_le_bytes()[0]);
        }
        for opt in 0..=12 {
            for end in 0..noise.len() {
                let _ = parse_option(opt, &noise[..end]);
            }
        }
        for w in noise.windows(REQUEST_LEN) {
            let mut raw = [0u8; REQUEST_LEN];
            raw.copy_from_slice(w);
            raw[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            if let Ok(r) = decode_request(&raw) {
                let _ = check_request(&r, &limits(RW));
            }
        }
    }
}
