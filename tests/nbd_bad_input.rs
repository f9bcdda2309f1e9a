//! Malformed NBD input against the real cairnd: every bad connection gets the spec's answer
//! or is closed alone, while a good connection opened before keeps working and new clients
//! are still served. Ends with SIGTERM while a client is connected: a clean exit.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::common::{create_disks, qemu_io, start_cairnd};

const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Greeting read, client flags (fixed newstyle + no zeroes) sent.
fn hello(s: &mut UnixStream) {
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
}

fn send_option(s: &mut UnixStream, option: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Reads an option reply: (reply type, payload).
fn option_reply(s: &mut UnixStream) -> (u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    (kind, d)
}

/// A session in transmission on `export` with simple replies only.
fn go(socket: &Path, export: &str) -> UnixStream {
    let mut s = connect(socket);
    hello(&mut s);
    let mut d = u32::try_from(export.len()).unwrap().to_be_bytes().to_vec();
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    send_option(&mut s, OPT_GO, &d);
    loop {
        let (kind, _) = option_reply(&mut s);
        if kind == REP_ACK {
            return s;
        }
        assert_eq!(kind, 3, "NBD_REP_INFO before the ACK");
    }
}

fn request(s: &mut UnixStream, cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
    let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&cmd.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    s.write_all(&r).unwrap();
}

/// Reads a simple reply: (error, cookie).
fn simple_reply(s: &mut UnixStream) -> (u32, u64) {
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()), SIMPLE_REPLY_MAGIC);
    (u32::from_be_bytes(r[4..8].try_into().unwrap()), u64::from_be_bytes(r[8..].try_into().unwrap()))
}

/// True when the server closed the connection (EOF, or reset once we wrote into it).
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// A 4 KiB write then a read of it, on a good session.
fn still_works(s: &mut UnixStream, cookie: u64) {
    request(s, 1, 0, cookie, 4096, 4096);
    s.write_all(&[cookie as u8; 4096]).unwrap();
    assert_eq!(simple_reply(s), (0, cookie));
    request(s, 0, 0, cookie + 1, 4096, 4096);
    assert_eq!(simple_reply(s), (0, cookie + 1));
    let mut data = [0u8; 4096];
    s.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|&b| b == cookie as u8));
}

#[tokio::test]
async fn malformed_input_closes_only_the_offending_connection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_disks(&data, &[("d", 1 << 20)]).await;
    let daemon = start_cairnd(&data, &[]);
    let sock = daemon.socket.clone();
    let mut good = go(&sock, "d");
    still_works(&mut good, 10);

    // Pure garbage instead of client flags and options.
    let mut s = connect(&sock);
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(b"\xff\xff\xff\xffGARBAGE GARBAGE GARBAGE").unwrap();
    assert!(closed(&mut s), "unknown client flags close the connection");

    // Bad option magic.
    let mut s = connect(&sock);
    hello(&mut s);
    s.write_all(b"NOTMAGIC\0\0\0\x07\0\0\0\0").unwrap();
    assert!(closed(&mut s));

    // Oversize option length (a 1 GiB option is refused without reading it).
    let mut s = connect(&sock);
    hello(&mut s);
    let mut m = IHAVEOPT.to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&m).unwrap();
    assert!(closed(&mut s));

    // Truncated option header, then hang up: nothing to answer, nothing breaks.
    let mut s = connect(&sock);
    hello(&mut s);
    s.write_all(&IHAVEOPT[..5]).unwrap();
    drop(s);

    // Unknown option: ERR_UNSUP, and the same session can still go into transmission.
    let mut s = connect(&sock);
    hello(&mut s);
    send_option(&mut s, 0x4242, b"junk");
    assert_eq!(option_reply(&mut s).0, REP_ERR_UNSUP);
    let mut d = 1u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"d\0\0");
    send_option(&mut s, OPT_GO, &d);
    while option_reply(&mut s).0 != REP_ACK {}

    // In transmission: unknown command and bad ranges get errors, the session goes on.
    request(&mut s, 0x99, 0, 1, 0, 0);
    assert_eq!(simple_reply(&mut s), (EINVAL, 1));
    request(&mut s, 0, 0, 2, 0, u32::MAX);
    assert_eq!(simple_reply(&mut s), (EINVAL, 2));
    request(&mut s, 0, 0, 3, u64::MAX - 10, 4096);
    assert_eq!(simple_reply(&mut s), (EINVAL, 3));
    request(&mut s, 1, 0, 4, 1 << 20, 1);
    s.write_all(b"x").unwrap();
    assert_eq!(simple_reply(&mut s), (ENOSPC, 4));
    request(&mut s, 0, 0xff00, 5, 0, 1);
    assert_eq!(simple_reply(&mut s), (EINVAL, 5));
    still_works(&mut s, 20);

    // A truncated request header, then garbage magic: that connection closes.
    s.write_all(&REQUEST_MAGIC.to_be_bytes()[..3]).unwrap();
    s.write_all(&[0u8; 40]).unwrap();
    assert!(closed(&mut s));

    // A write announcing more than the maximum payload: closed, it cannot be skipped.
    let mut s = go(&sock, "d");
    request(&mut s, 1, 0, 1, 0, 64 << 20);
    assert!(closed(&mut s));

    // The connection opened first, and new clients, are still served.
    still_works(&mut good, 30);
    qemu_io(&daemon.uri("d"), &["read -P 30 4096 4096"]);

    // SIGTERM with a client connected and idle: clean shutdown.
    daemon.stop();
    assert!(closed(&mut good));
}
