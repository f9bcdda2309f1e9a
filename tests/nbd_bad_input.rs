//! Malformed NBD input against the real cairnd: every bad connection gets the spec's answer
//! or is closed alone, while a good connection opened before keeps working and new clients
//! are still served. Ends with SIGTERM while a client is connected: a clean exit.

use std::path::Path;

use tokio::net::UnixStream;

use crate::common::nbd::{CMD_READ, CMD_WRITE, Client, EINVAL, ENOSPC, IHAVEOPT, OPT_GO, REP_ERR_UNSUP, REQUEST_MAGIC};
use crate::common::{create_disks, qemu_io, start_cairnd};

/// A session in transmission on `export` with simple replies only.
async fn go(socket: &Path, export: &str) -> Client<UnixStream> {
    let mut s = Client::connect(socket).await;
    s.hello().await;
    s.go(export).await.unwrap();
    s
}

/// A 4 KiB write then a read of it, on a good session.
async fn still_works(s: &mut Client<UnixStream>, cookie: u64) {
    s.request(CMD_WRITE, 0, cookie, 4096, 4096).await;
    s.send(&[cookie as u8; 4096]).await;
    assert_eq!(s.simple_reply().await, (0, cookie));
    let data = s.read(cookie + 1, 4096, 4096).await;
    assert!(data.iter().all(|&b| b == cookie as u8));
}

#[tokio::test]
async fn malformed_input_closes_only_the_offending_connection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_disks(&data, &[("d", 1 << 20)]).await;
    let daemon = start_cairnd(&data, &[]);
    let sock = daemon.socket.clone();
    let mut good = go(&sock, "d").await;
    still_works(&mut good, 10).await;

    // Pure garbage instead of client flags and options.
    let mut s = Client::connect(&sock).await;
    s.greeting().await;
    s.send(b"\xff\xff\xff\xffGARBAGE GARBAGE GARBAGE").await;
    assert!(s.closed().await, "unknown client flags close the connection");

    // Bad option magic.
    let mut s = Client::connect(&sock).await;
    s.hello().await;
    s.send(b"NOTMAGIC\0\0\0\x07\0\0\0\0").await;
    assert!(s.closed().await);

    // Oversize option length (a 1 GiB option is refused without reading it).
    let mut s = Client::connect(&sock).await;
    s.hello().await;
    let mut m = IHAVEOPT.to_vec();
    m.extend_from_slice(&OPT_GO.to_be_bytes());
    m.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.send(&m).await;
    assert!(s.closed().await);

    // Truncated option header, then hang up: nothing to answer, nothing breaks.
    let mut s = Client::connect(&sock).await;
    s.hello().await;
    s.send(&IHAVEOPT[..5]).await;
    drop(s);

    // Unknown option: ERR_UNSUP, and the same session can still go into transmission.
    let mut s = Client::connect(&sock).await;
    s.hello().await;
    s.option(0x4242, b"junk").await;
    assert_eq!(s.option_reply().await.1, REP_ERR_UNSUP);
    s.go("d").await.unwrap();

    // In transmission: unknown command and bad ranges get errors, the session goes on.
    s.request(0x99, 0, 1, 0, 0).await;
    assert_eq!(s.simple_reply().await, (EINVAL, 1));
    s.request(CMD_READ, 0, 2, 0, u32::MAX).await;
    assert_eq!(s.simple_reply().await, (EINVAL, 2));
    s.request(CMD_READ, 0, 3, u64::MAX - 10, 4096).await;
    assert_eq!(s.simple_reply().await, (EINVAL, 3));
    s.request(CMD_WRITE, 0, 4, 1 << 20, 1).await;
    s.send(b"x").await;
    assert_eq!(s.simple_reply().await, (ENOSPC, 4));
    s.request(CMD_READ, 0xff00, 5, 0, 1).await;
    assert_eq!(s.simple_reply().await, (EINVAL, 5));
    still_works(&mut s, 20).await;

    // A truncated request header, then garbage magic: that connection closes.
    s.send(&REQUEST_MAGIC.to_be_bytes()[..3]).await;
    s.send(&[0u8; 40]).await;
    assert!(s.closed().await);

    // A write announcing more than the maximum payload: closed, it cannot be skipped.
    let mut s = go(&sock, "d").await;
    s.request(CMD_WRITE, 0, 1, 0, 64 << 20).await;
    assert!(s.closed().await);

    // The connection opened first, and new clients, are still served.
    still_works(&mut good, 30).await;
    qemu_io(&daemon.uri("d"), &["read -P 30 4096 4096"]);

    // SIGTERM with a client connected and idle: clean shutdown.
    daemon.stop();
    assert!(good.closed().await);
}
