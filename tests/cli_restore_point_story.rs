//! The `cairn` CLI against the real cairnd: every noun, table and JSON output, `--wait`,
//! sizes with units, exit codes (0 ok, 1 failed, 2 usage) and completions.

use crate::common::{cairn_cli, grpc, grpc_write, merkle_root_of_image, pattern, run_ok, start_cairnd};

fn json(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = run_ok(cmd.args(["--output", "json"]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd:?} printed no JSON ({e}):\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_disks_groups_collections_restore_points_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let cli = || cairn_cli(dir.path());

    let d = json(cli().args(["disk", "create", "os", "--size", "8M"]));
    assert_eq!(d["size_bytes"], 8 << 20);
    run_ok(cli().args(["disk", "create", "scratch", "--size", "4K"]));
    let d = json(cli().args(["disk", "resize", "scratch", "--size", "1M"]));
    assert_eq!(d["size_bytes"], 1 << 20);
    let table = run_ok(cli().args(["disk", "list"]));
    assert!(table.starts_with("NAME") && table.contains("os") && table.contains("scratch"), "{table}");
    run_ok(cli().args(["disk", "delete", "scratch"]));
    assert_eq!(json(cli().args(["disk", "list"])).as_array().unwrap().len(), 1);

    let g = json(cli().args(["group", "create", "vm", "--disk", "os", "--configuration", "{}"]));
    assert_eq!(g["disk_ids"].as_array().unwrap().len(), 1);
    run_ok(cli().args(["group", "show", "vm"]));
    let c = json(cli().args(["collection", "create", "vm-rps", "--group", "vm", "--max-restore-points", "5"]));
    assert_eq!(c["max_restore_points"], 5);

    let ch = grpc(dir.path()).await;
    grpc_write(&ch, "os", 0, pattern(7, 1 << 20)).await;
    let rp1 = json(cli().args(["rp", "create", "vm-rps", "rp1", "--wait"]));
    assert_eq!(rp1["provisioning_state"], "Succeeded", "{rp1}");
    let mut image = pattern(7, 1 << 20);
    image.resize(8 << 20, 0);
    let root = merkle_root_of_image(&image, 256 << 10).to_string();
    assert_eq!(rp1["disks"][0]["merkle_root"], root.as_str(), "{rp1}");
    assert_eq!(rp1["merkle_root"].as_str().map(str::len), Some(64), "{rp1}");
    grpc_write(&ch, "os", 4 << 20, pattern(8, 4096)).await;
    let rp2 = json(cli().args(["rp", "create", "vm-rps", "rp2", "--description", "second"]));
    assert!(rp2["bytes_stored"].as_u64().unwrap() < rp1["bytes_stored"].as_u64().unwrap(), "{rp2}");
    let listed = json(cli().args(["rp", "list", "vm-rps"]));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let shown = json(cli().args(["rp", "show", "vm-rps", "rp2", "--instance-view"]));
    assert_eq!(shown["description"], "second");
    assert_ne!(shown["merkle_root"], rp1["merkle_root"], "{shown}");
    let table = run_ok(cli().args(["rp", "show", "vm-rps", "rp1"]));
    assert!(table.contains(&format!("merkle_root: {}", rp1["merkle_root"].as_str().unwrap())), "{table}");
    assert!(shown["instance_view"]["operation"]["state"] == "Succeeded", "{shown}");
    let diff = json(cli().args(["rp", "diff", "vm-rps", "rp1", "rp2", "--disk", "os"]));
    assert_eq!(diff["changed_blocks"][0]["offset"], 4 << 20, "{diff}");

    let r = json(cli().args(["restore", "vm-rps", "rp1", "--disk", "os", "--name", "os-copy"]));
    assert_eq!(r["operations"][0]["state"], "Succeeded", "{r}");
    let r = json(cli().args(["restore", "vm-rps", "rp2", "--group", "vm2", "--no-wait"]));
    assert_eq!(r["disks"][0]["name"], "vm2-os", "{r}");
    let op_id = r["operations"][0]["id"].as_str().unwrap().to_owned();
    let op = json(cli().args(["op", "watch", &op_id]));
    assert_eq!(op["state"], "Succeeded");
    run_ok(cli().args(["op", "show", &op_id]));
    assert!(json(cli().args(["op", "list"])).as_array().unwrap().len() >= 4);

    run_ok(cli().args(["rp", "create", "vm-rps", "rp3"]));
    run_ok(cli().args(["rp", "delete", "vm-rps", "rp3"]));
    run_ok(cli().args(["collection", "list"]));
    run_ok(cli().args(["collection", "show", "vm-rps"]));

    // Failures: one line on stderr and exit 1; usage errors exit 2.
    let out = cli().args(["disk", "show", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: NOT_FOUND") && err.trim_end().lines().count() == 1, "{err}");
    let out = cli().args(["disk", "create", "x", "--size", "10Q"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli().args(["rp", "delete", "vm-rps", "rp2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "rp2 is the origin of the restored group's disks");
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAILED_PRECONDITION"));
    let out = cairn_cli(&dir.path().join("absent")).args(["disk", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(run_ok(cli().args(["completions", "bash"])).contains("cairn"));
    drop(ch);
    daemon.stop();
}
