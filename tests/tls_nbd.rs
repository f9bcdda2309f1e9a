//! NBD over TLS (STARTTLS, FORCEDTLS) with real clients: libnbd's nbdinfo and QEMU (both
//! GnuTLS) connect with the test PKI's client certificate, a plaintext client is refused
//! (NBD_REP_ERR_TLS_REQD, whose message libnbd relays), so is a TLS client without a
//! certificate, and the daemon keeps serving TLS clients afterwards.

use std::path::Path;
use std::process::Command;

use crate::common::{create_disks, run_ok, start_cairnd, strs, tls_setup};

fn nbdinfo_tls(addr: &str, certs: &Path) -> String {
    let uri = format!("nbds://{addr}/d?tls-certificates={}", certs.display());
    run_ok(Command::new("nbdinfo").arg(&uri))
}

fn qemu_io_tls(addr: &str, certs: &Path, command: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let image = format!("driver=nbd,server.type=inet,server.host={host},server.port={port},export=d,tls-creds=tls0");
    run_ok(
        Command::new("qemu-io")
            .arg("--object")
            .arg(format!("tls-creds-x509,id=tls0,dir={},endpoint=client", certs.display()))
            .args(["--image-opts", "-c", command, &image]),
    )
}

#[tokio::test]
async fn tls_nbd_serves_libnbd_and_qemu_and_refuses_plaintext() {
    let (dir, certs, mut args) = tls_setup(true);
    let data = dir.path().join("data");
    create_disks(&data, &[("d", 4 << 20)]).await;
    args.extend(["--nbd".into(), "127.0.0.1:0".into()]);
    let daemon = start_cairnd(&data, &strs(&args));
    let addr = daemon.logged_addr("nbd listening");

    let info = nbdinfo_tls(&addr, &certs);
    let wrote = qemu_io_tls(&addr, &certs, "write -P 0x5c 1M 64k");
    let read = qemu_io_tls(&addr, &certs, "read -P 0x5c 1M 64k");
    // libnbd shows the server's error message in its debug output.
    let plain = Command::new("nbdinfo").arg(format!("nbd://{addr}/d")).env("LIBNBD_DEBUG", "1").output().unwrap();
    // A client without a certificate fails its TLS handshake; only that connection ends.
    let anonymous = dir.path().join("anonymous");
    std::fs::create_dir(&anonymous).unwrap();
    std::fs::copy(certs.join("ca-cert.pem"), anonymous.join("ca-cert.pem")).unwrap();
    let no_cert = Command::new("nbdinfo")
        .arg(format!("nbds://{addr}/d?tls-certificates={}", anonymous.display()))
        .output()
        .unwrap();
    let info_after = nbdinfo_tls(&addr, &certs);

    assert!(info.contains("export=\"d\"") && info.contains("4194304"), "{info}");
    assert!(wrote.contains("wrote 65536/65536"), "{wrote}");
    assert!(read.contains("read 65536/65536"), "{read}");
    assert!(!plain.status.success(), "plaintext nbdinfo was served");
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(err.contains("this server requires TLS"), "{err}");
    assert!(!no_cert.status.success(), "a client without a certificate was served");
    assert_eq!(info_after, info);
    daemon.stop();
}
