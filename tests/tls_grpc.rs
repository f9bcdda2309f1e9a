//! cairnd's gRPC over TLS with real clients (tonic's, the `cairn` CLI): client certificates
//! are required when a client CA is configured; in token mode the right bearer token works
//! and a wrong or missing one gets UNAUTHENTICATED while health stays open; bad TLS files
//! and unauthenticated public listeners fail at start, naming what is wrong.

use std::path::Path;
use std::process::Command;

use cairn_cli::client::{AuthChannel, Credentials, connect_with};
use cairn_proto::v1 as pb;

use crate::common::{daemon_bin, free_loopback_addr, run_ok, start_cairnd, start_fails, strs, tls_setup};

fn creds(certs: &Path, client_cert: bool, token: Option<&str>) -> Credentials {
    Credentials {
        tls_ca: Some(certs.join("ca-cert.pem")),
        tls_cert: client_cert.then(|| certs.join("client-cert.pem")),
        tls_key: client_cert.then(|| certs.join("client-key.pem")),
        token: token.map(str::to_owned),
    }
}

async fn create_and_list(ch: &AuthChannel, name: &str) -> Result<Vec<String>, tonic::Status> {
    let mut disks = pb::disks_client::DisksClient::new(ch.clone());
    disks.create_disk(pb::CreateDiskRequest { name: name.into(), size_bytes: 1 << 20, ..Default::default() }).await?;
    let list = disks.list_disks(pb::ListDisksRequest::default()).await?.into_inner();
    Ok(list.disks.into_iter().map(|d| d.name).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_grpc_with_a_client_ca_serves_certified_clients_only() {
    let (dir, certs, mut args) = tls_setup(true);
    let addr = free_loopback_addr();
    args.extend(["--grpc".into(), addr.clone()]);
    let daemon = start_cairnd(&dir.path().join("data"), &strs(&args));
    let url = format!("https://{addr}");

    let ch = connect_with(&url, &creds(&certs, true, None)).await.unwrap();
    let listed = create_and_list(&ch, "tls-disk").await.unwrap();
    // Without a client certificate the handshake (or, with TLS 1.3, the first call) fails.
    let refused = match connect_with(&url, &creds(&certs, false, None)).await {
        Ok(ch) => create_and_list(&ch, "nope").await.map_err(|s| s.code().to_string()),
        Err(e) => Err(e.to_string()),
    };
    let plain = cairn_cli::client::connect(&format!("http://{addr}")).await;
    let cli = run_ok(
        Command::new(daemon_bin("cairn"))
            .args(["--endpoint", &url, "--output", "json", "--tls-ca"])
            .arg(certs.join("ca-cert.pem"))
            .arg("--tls-cert")
            .arg(certs.join("client-cert.pem"))
            .arg("--tls-key")
            .arg(certs.join("client-key.pem"))
            .args(["disk", "list"]),
    );

    assert_eq!(listed, ["tls-disk"]);
    assert!(refused.is_err(), "a client without a certificate was served: {refused:?}");
    let plain_calls = match plain {
        Ok(ch) => pb::disks_client::DisksClient::new(ch).list_disks(pb::ListDisksRequest::default()).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain_calls, "plaintext gRPC was served on a TLS port");
    assert!(cli.contains("\"tls-disk\""), "{cli}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_grpc_token_mode_accepts_the_token_only_and_leaves_health_open() {
    let (dir, certs, mut args) = tls_setup(false);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef-token\n").unwrap();
    let addr = free_loopback_addr();
    args.extend(["--grpc".into(), addr.clone(), "--grpc-token-file".into(), token_file.to_str().unwrap().into()]);
    let daemon = start_cairnd(&dir.path().join("data"), &strs(&args));
    let url = format!("https://{addr}");

    let right = connect_with(&url, &creds(&certs, false, Some("0123456789abcdef-token"))).await.unwrap();
    let wrong = connect_with(&url, &creds(&certs, false, Some("0123456789abcdef-tokem"))).await.unwrap();
    let none = connect_with(&url, &creds(&certs, false, None)).await.unwrap();
    let listed = create_and_list(&right, "tok-disk").await;
    let wrong_code = create_and_list(&wrong, "x").await.unwrap_err().code();
    let none_code = create_and_list(&none, "y").await.unwrap_err().code();
    let health = tonic_health::pb::health_client::HealthClient::new(none.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: "cairn.v1.Disks".into() })
        .await
        .unwrap()
        .into_inner();
    let cli = |token_args: &[&str], env_token: Option<&str>| {
        let mut cmd = Command::new(daemon_bin("cairn"));
        cmd.args(["--endpoint", &url, "--output", "json", "--tls-ca"]).arg(certs.join("ca-cert.pem"));
        cmd.args(token_args).args(["disk", "list"]).env_remove("CAIRN_TOKEN");
        if let Some(t) = env_token {
            cmd.env("CAIRN_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let cli_file = cli(&["--token-file", token_file.to_str().unwrap()], None);
    let cli_env = cli(&[], Some("0123456789abcdef-token"));
    let cli_wrong = cli(&[], Some("wrong"));

    assert_eq!(listed.unwrap(), ["tok-disk"]);
    assert_eq!(wrong_code, tonic::Code::Unauthenticated);
    assert_eq!(none_code, tonic::Code::Unauthenticated);
    assert_eq!(health.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    assert!(String::from_utf8_lossy(&cli_file.stdout).contains("\"tok-disk\""), "{cli_file:?}");
    assert!(String::from_utf8_lossy(&cli_env.stdout).contains("\"tok-disk\""), "{cli_env:?}");
    assert!(!cli_wrong.status.success());
    assert!(String::from_utf8_lossy(&cli_wrong.stderr).to_lowercase().contains("unauthenticated"), "{cli_wrong:?}");
    daemon.stop();
}

#[test]
fn tls_bad_files_and_unauthenticated_public_listeners_fail_at_start() {
    let (dir, certs, flags) = tls_setup(false);
    let data = dir.path().join("data");
    let key = certs.join("server-key.pem");
    let key = key.to_str().unwrap();
    let missing = certs.join("missing-cert.pem");
    let missing = missing.to_str().unwrap();
    let config = dir.path().join("cairnd.toml");
    std::fs::write(&config, format!("tls_cert = {:?}\ntls_key = {key:?}\n", certs.join("client-key.pem"))).unwrap();

    let no_file = start_fails(&data, &["--tls-cert", missing, "--tls-key", key]);
    let not_a_cert = start_fails(&data, &["--config", config.to_str().unwrap()]);
    let mut public = flags.clone();
    public.extend(["--grpc".into(), "0.0.0.0:0".into(), "--http".into(), "127.0.0.1:0".into()]);
    let unauthenticated = start_fails(&data, &strs(&public));
    let half = start_fails(&data, &["--tls-cert", missing]);

    assert!(no_file.contains("missing-cert.pem"), "{no_file}");
    assert!(not_a_cert.contains("client-key.pem"), "{not_a_cert}");
    assert!(
        unauthenticated.contains("--grpc-token-file") && unauthenticated.contains("--tls-client-ca"),
        "{unauthenticated}"
    );
    assert!(half.contains("--tls-key"), "{half}");
}
