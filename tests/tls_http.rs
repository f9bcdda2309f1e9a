//! cairnd's HTTP listener with TLS configured: real curl reaches `/healthz` and `/metrics`
//! over https with the test CA, and a plain http request to the same port is refused.

use std::process::Command;

use crate::common::{start_cairnd, strs, tls_setup};

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().unwrap()
}

#[test]
fn tls_https_healthz_answers_and_plain_http_is_refused() {
    let (dir, certs, flags) = tls_setup(false);
    let daemon = start_cairnd(&dir.path().join("data"), &strs(&flags));
    let addr = daemon.http_addr();
    let ca = certs.join("ca-cert.pem");
    let ca = ca.to_str().unwrap();

    let plain = curl(&[&format!("http://{addr}/healthz")]);
    let health = curl(&["--cacert", ca, &format!("https://{addr}/healthz")]);
    let metrics = curl(&["--cacert", ca, &format!("https://{addr}/metrics")]);

    assert!(!plain.status.success(), "plain http got {:?}", String::from_utf8_lossy(&plain.stdout));
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok");
    assert!(metrics.status.success(), "{}", String::from_utf8_lossy(&metrics.stderr));
    assert!(String::from_utf8_lossy(&metrics.stdout).contains("# TYPE"), "metrics over https");
    daemon.stop();
}
