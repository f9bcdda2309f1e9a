//! Copies between two real daemons on loopback (different data dirs, regions and PKIs; the
//! replication listener over TLS with a per-peer token), driven by the `cairn` CLI: a full and
//! an incremental copy with the source's Merkle roots, the incremental one within 1.1x of its
//! increment by the target's own counters; a restore on the target with the source stopped;
//! refusal of an unconfigured peer, a wrong token, a wrong pinned certificate and a collection
//! the peer may not copy.

use std::path::Path;

use cairn_proto::v1 as pb;

use crate::common::{
    cairn_cli, free_loopback_addr, grpc, grpc_read, grpc_restore_point, grpc_write, pattern, run_ok, start_cairnd,
    strs, tls_setup,
};

const MIB: usize = 1 << 20;

fn json(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = run_ok(cmd.args(["--output", "json"]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd:?} printed no JSON ({e}):\n{out}"))
}

fn fails(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{cmd:?}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_between_daemons_are_exact_incremental_and_refused_to_strangers() {
    let (west_pki, west_certs, west_tls) = tls_setup(false);
    let (_east_pki, east_certs, east_tls) = tls_setup(false);
    let (west_dir, east_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replication = free_loopback_addr();
    let token = write(&west_pki.path().join("east.token"), "east-to-west-0123456789\n");
    let wrong = write(&west_pki.path().join("wrong.token"), "not-the-token\n");
    let west_conf = write(
        &west_dir.path().join("west.toml"),
        &format!(
            "region = \"west\"\nreplication_listen = \"{replication}\"\n[[peers]]\nname = \"east\"\n\
             accept_token_file = \"{token}\"\ncollections = [\"vm-rps\"]\n"
        ),
    );
    let peer = |name: &str, ca: &Path, token: &str| {
        format!(
            "[[peers]]\nname = \"{name}\"\nendpoint = \"https://{replication}\"\nca = \"{}\"\ntoken_file = \"{token}\"\n",
            ca.join("ca-cert.pem").display()
        )
    };
    let east_conf = write(
        &east_dir.path().join("east.toml"),
        &format!(
            "region = \"east\"\n{}{}{}",
            peer("west", &west_certs, &token),
            peer("west-wrong-token", &west_certs, &wrong),
            peer("west-wrong-ca", &east_certs, &token)
        ),
    );
    let args = |conf: &str, tls: &[String]| [vec!["--config".to_owned(), conf.to_owned()], tls.to_vec()].concat();
    let west_args = args(&west_conf, &west_tls);
    let west = start_cairnd(west_dir.path(), &strs(&west_args));
    let east_args = args(&east_conf, &east_tls);
    let east = start_cairnd(east_dir.path(), &strs(&east_args));
    let (w, e) = (|| cairn_cli(west_dir.path()), || cairn_cli(east_dir.path()));

    // The source: a VM with one disk, a restore point.
    run_ok(w().args(["disk", "create", "os", "--size", "8M"]));
    run_ok(w().args(["group", "create", "vm", "--disk", "os", "--configuration", "{\"cpus\":2}"]));
    run_ok(w().args(["collection", "create", "vm-rps", "--group", "vm"]));
    run_ok(w().args(["disk", "create", "other", "--size", "1M"]));
    run_ok(w().args(["group", "create", "vm2", "--disk", "other"]));
    run_ok(w().args(["collection", "create", "secret", "--group", "vm2"]));
    let wch = grpc(west_dir.path()).await;
    let mut image = pattern(1, 6 * MIB);
    image.resize(8 * MIB, 0);
    grpc_write(&wch, "os", 0, image[..6 * MIB].to_vec()).await;
    let src1 = grpc_restore_point(&wch, "vm-rps", "rp1", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    grpc_restore_point(&wch, "secret", "s1", pb::ConsistencyMode::CrashConsistent).await.unwrap();

    // A full copy, then an incremental one.
    let coll = json(e().args(["collection", "create", "vm-west", "--source", "west:vm-rps"]));
    assert_eq!((coll["source"].as_str(), coll["group_id"].as_str()), (Some("west:vm-rps"), Some("")), "{coll}");
    let c1 = json(e().args(["rp", "copy", "vm-west", "rp1", "--wait"]));
    assert_eq!(c1["provisioning_state"], "Succeeded", "{c1}");
    assert_eq!(c1["merkle_root"].as_str(), Some(src1.merkle_root.as_str()), "{c1}");
    assert_eq!(c1["configuration"], "{\"cpus\":2}");

    for (at, seed) in [(0usize, 7u64), (2 * MIB + 4096, 8), (5 * MIB, 9)] {
        let block = pattern(seed, 4096);
        image[at..at + 4096].copy_from_slice(&block);
        grpc_write(&wch, "os", at as u64, block).await;
    }
    let src2 = grpc_restore_point(&wch, "vm-rps", "rp2", pb::ConsistencyMode::CrashConsistent).await.unwrap();
    let c2 = json(e().args(["rp", "copy", "vm-west", "rp2", "--name", "rp2-copy", "--wait"]));

    assert_eq!(c2["merkle_root"].as_str(), Some(src2.merkle_root.as_str()), "{c2}");
    let (sent, increment) = (c2["bytes_stored"].as_u64().unwrap(), src2.disks[0].bytes_stored);
    assert!(sent * 10 <= increment * 11, "the target stored {sent} bytes for an increment of {increment}");

    // Strangers are refused, each for its own reason.
    let err = fails(e().args(["collection", "create", "x", "--source", "nowhere:vm-rps"]));
    assert!(err.contains("INVALID_ARGUMENT") && err.contains("not a peer configured"), "{err}");
    run_ok(e().args(["collection", "create", "by-token", "--source", "west-wrong-token:vm-rps"]));
    let err = fails(e().args(["rp", "copy", "by-token", "rp1"]));
    assert!(err.contains("FAILED_PRECONDITION") && err.contains("no configured peer presents this token"), "{err}");
    run_ok(e().args(["collection", "create", "by-ca", "--source", "west-wrong-ca:vm-rps"]));
    let err = fails(e().args(["rp", "copy", "by-ca", "rp1"]));
    assert!(err.contains("west-wrong-ca"), "{err}");
    run_ok(e().args(["collection", "create", "stolen", "--source", "west:secret"]));
    let err = fails(e().args(["rp", "copy", "stolen", "s1"]));
    assert!(err.contains("may not copy collection secret"), "{err}");
    let refused = json(e().args(["rp", "list", "by-token"]));
    assert_eq!(refused.as_array().map(Vec::len), Some(0), "a refused copy records nothing");

    // The source goes away; the copy restores on the target.
    drop(wch);
    west.stop();
    run_ok(e().args(["restore", "vm-west", "rp2-copy", "--disk", "os", "--name", "os-east"]));
    let ech = grpc(east_dir.path()).await;
    let (got, _) = grpc_read(&ech, pb::read_disk_request::Source::Disk("os-east".into())).await;
    assert!(got == image, "the restored copy reads as the source disk at rp2");
    drop(ech);
    east.stop();
}
