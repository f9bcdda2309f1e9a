//! Where cairnd serves gRPC: the default unix socket is private to the owner, `--grpc` on
//! loopback TCP works, a public address without TLS and an unknown config key fail at start.

use std::os::unix::fs::PermissionsExt;

use cairn_proto::v1 as pb;

use crate::common::{start_cairnd, start_fails};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_listens_on_a_private_socket_or_loopback_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &["--region", "west"]);
    let mode = std::fs::metadata(dir.path().join("cairn.sock")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    daemon.stop();
    assert!(!dir.path().join("cairn.sock").exists(), "socket removed at shutdown");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = start_cairnd(dir.path(), &["--grpc", &addr, "--region", "west"]);
    let ch = cairn_cli::client::connect(&addr).await.unwrap();
    let g = pb::groups_client::GroupsClient::new(ch.clone())
        .create_group(pb::CreateGroupRequest { name: "g".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let c = pb::collections_client::CollectionsClient::new(ch)
        .create_or_update_collection(pb::CreateOrUpdateCollectionRequest {
            name: "c".into(),
            group: g.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.region, "west");
    daemon.stop();
}

#[test]
fn bad_listen_addresses_and_config_keys_fail_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let err = start_fails(dir.path(), &["--grpc", "0.0.0.0:0"]);
    assert!(err.contains("--tls-cert") && err.contains("--allow-plaintext"), "{err}");
    let config = dir.path().join("cairnd.toml");
    std::fs::write(&config, "region = \"west\"\ngrcp = \"unix:/tmp/x\"\n").unwrap();
    let err = start_fails(dir.path(), &["--config", config.to_str().unwrap()]);
    assert!(err.contains("grcp"), "{err}");
}
