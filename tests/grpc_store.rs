//! The Store service against the real cairnd, over gRPC and through the CLI: GC after
//! deleting a restore point reclaims its bytes and reports them in the operation; verify of a
//! clean store finds nothing and, after a byte of a pack is flipped, names the corrupt record
//! and the restore point it affects (and `cairn verify` exits 1); retention dry run, then
//! applied.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_engine::{GcReport, VerifyReport};
use cairn_proto::v1 as pb;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{cairn_cli, grpc, grpc_read, grpc_wait_op, grpc_write, pattern, run_ok, start_cairnd};

const MIB: u64 = 1 << 20;
/// Offset of the first record's stored bytes in a pack: pack header + record header.
const FIRST_RECORD_DATA: u64 = 32 + 64;

fn store(ch: &Channel) -> pb::store_client::StoreClient<Channel> {
    pb::store_client::StoreClient::new(ch.clone())
}

/// A disk `d` of 8 MiB in group `vm`, with collection `c` over it.
async fn disk_group_collection(ch: &Channel) {
    pb::disks_client::DisksClient::new(ch.clone())
        .create_disk(pb::CreateDiskRequest { name: "d".into(), size_bytes: 8 * MIB, ..Default::default() })
        .await
        .unwrap();
    crate::common::grpc_group_and_collection(ch, "vm", &["d"], "c").await;
}

async fn create_rp(ch: &Channel, name: &str) {
    let r = pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .create_restore_point(pb::CreateRestorePointRequest {
            collection: "c".into(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let end = grpc_wait_op(ch, &r.operation.unwrap().id).await;
    assert_eq!(end.state(), pb::OperationState::Succeeded, "{end:?}");
}

/// Waits for an operation that must succeed; returns its result.
async fn result(ch: &Channel, op: &pb::Operation) -> serde_json::Value {
    let end = grpc_wait_op(ch, &op.id).await;
    assert_eq!(end.state(), pb::OperationState::Succeeded, "{end:?}");
    serde_json::from_str(&end.result_json).unwrap_or_else(|e| panic!("result of {end:?}: {e}"))
}

async fn verify(ch: &Channel, collection: &str, restore_point: &str) -> VerifyReport {
    let op = store(ch)
        .verify(pb::VerifyRequest { collection: collection.into(), restore_point: restore_point.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.kind(), pb::OperationKind::Verify);
    serde_json::from_value(result(ch, &op).await).unwrap()
}

async fn stats(ch: &Channel) -> pb::StoreStats {
    store(ch).get_store_stats(pb::GetStoreStatsRequest {}).await.unwrap().into_inner()
}

fn packs(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("packs")).unwrap().map(|e| e.unwrap().path()).collect()
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_after_deleting_a_restore_point_reclaims_its_bytes_and_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    disk_group_collection(&ch).await;
    grpc_write(&ch, "d", 0, pattern(1, (4 * MIB) as usize)).await;
    create_rp(&ch, "rp1").await;
    let image2 = pattern(2, (4 * MIB) as usize);
    grpc_write(&ch, "d", 0, image2.clone()).await;
    create_rp(&ch, "rp2").await;
    let before = stats(&ch).await;
    pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .delete_restore_point(pb::DeleteRestorePointRequest { collection: "c".into(), restore_point: "rp1".into() })
        .await
        .unwrap();

    let op = store(&ch).collect_garbage(pb::CollectGarbageRequest { live_share_percent: None }).await.unwrap();
    let report: GcReport = serde_json::from_value(result(&ch, &op.into_inner()).await).unwrap();

    assert!(report.records_freed == 16 && report.bytes_reclaimed > 3 * MIB, "{report:?} (store before: {before:?})");
    let after = stats(&ch).await;
    assert_eq!((before.records - after.records, after.records, after.referenced_records), (16, 16, 16), "{after:?}");
    assert!(after.pack_bytes + 3 * MIB < before.pack_bytes, "{before:?} -> {after:?}");
    let source = pb::read_disk_request::Source::DiskRestorePoint(pb::DiskRestorePointRef {
        collection: "c".into(),
        restore_point: "rp2".into(),
        disk: "d".into(),
    });
    assert_eq!(&grpc_read(&ch, source).await.0[..image2.len()], &image2[..], "rp2 reads back after GC");
    let bad = store(&ch).collect_garbage(pb::CollectGarbageRequest { live_share_percent: Some(101) }).await;
    let e = bad.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("live_share_percent"), "{e:?}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_flipped_byte_and_names_the_restore_point_over_grpc_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    disk_group_collection(&ch).await;
    grpc_write(&ch, "d", 0, pattern(3, (4 * MIB) as usize)).await;
    create_rp(&ch, "rp1").await;
    let clean = verify(&ch, "", "").await;
    assert!(clean.corrupt.is_empty() && clean.records_checked == 16, "{clean:?}");
    let clean_rp = verify(&ch, "c", "rp1").await;
    assert!(clean_rp.corrupt.is_empty() && clean_rp.records_checked > 0, "{clean_rp:?}");
    let out = run_ok(cairn_cli(dir.path()).args(["verify"]));
    assert!(out.contains("0 corrupt; 2 Merkle roots, 0 mismatched"), "{out}");
    daemon.stop();
    let pack = packs(dir.path());
    assert_eq!(pack.len(), 1, "{pack:?}");
    flip(&pack[0], FIRST_RECORD_DATA + 1000);
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;

    let report = verify(&ch, "", "").await;
    let cli = cairn_cli(dir.path()).args(["verify"]).output().unwrap();
    let cli_rp =
        cairn_cli(dir.path()).args(["verify", "--restore-point", "c/rp1", "--output", "json"]).output().unwrap();

    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    let affected: Vec<String> =
        report.corrupt[0].affected.iter().map(|a| format!("{}/{}", a.restore_point_name, a.disk_name)).collect();
    assert_eq!(affected, ["rp1/d"], "{report:?}");
    let (out, err) = (String::from_utf8_lossy(&cli.stdout), String::from_utf8_lossy(&cli.stderr));
    assert_eq!(cli.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("rp1/d") && out.contains(&report.corrupt[0].chunk), "{out}");
    assert!(err.contains("1 corrupt"), "{err}");
    assert_eq!(cli_rp.status.code(), Some(1), "{}", String::from_utf8_lossy(&cli_rp.stderr));
    let op: serde_json::Value = serde_json::from_slice(&cli_rp.stdout).unwrap();
    assert_eq!(op["result"]["corrupt"][0]["affected"][0]["restore_point_name"], "rp1", "{op}");
    let e = store(&ch)
        .verify(pb::VerifyRequest { collection: "c".into(), restore_point: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = store(&ch).verify(pb::VerifyRequest { collection: "c".into(), restore_point: String::new() }).await;
    assert_eq!(e.unwrap_err().code(), Code::InvalidArgument);
    daemon.stop();
}

fn rp_names(data_dir: &Path) -> Vec<String> {
    let out = run_ok(cairn_cli(data_dir).args(["rp", "list", "c", "--output", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_dry_run_then_apply_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let cli = || cairn_cli(dir.path());
    run_ok(cli().args(["disk", "create", "d", "--size", "4M"]));
    run_ok(cli().args(["group", "create", "vm", "--disk", "d"]));
    run_ok(cli().args(["collection", "create", "c", "--group", "vm"]));
    for rp in ["rp1", "rp2", "rp3"] {
        run_ok(cli().args(["rp", "create", "c", rp]));
    }

    let dry = run_ok(cli().args(["rp", "retain", "c", "--keep-last", "1", "--dry-run", "--output", "json"]));
    let after_dry = rp_names(dir.path());
    let applied = run_ok(cli().args(["rp", "retain", "c", "--keep-last", "1", "--keep-daily", "0"]));
    let after = rp_names(dir.path());
    let nothing = cli().args(["rp", "retain", "c"]).output().unwrap();
    let stats: serde_json::Value =
        serde_json::from_str(&run_ok(cli().args(["store", "stats", "--output", "json"]))).unwrap();
    let gc: serde_json::Value =
        serde_json::from_str(&run_ok(cli().args(["gc", "--live-share", "30", "--output", "json"]))).unwrap();

    let dry: serde_json::Value = serde_json::from_str(&dry).unwrap();
    let fates: Vec<(String, bool)> = dry["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap().to_owned(), d["keep"].as_bool().unwrap()))
        .collect();
    assert_eq!(fates, [("rp3".into(), true), ("rp2".into(), false), ("rp1".into(), false)], "{dry}");
    assert_eq!(dry["decisions"][1]["reasons"][0], "kept by no rule", "{dry}");
    assert_eq!(after_dry, ["rp1", "rp2", "rp3"]);
    assert!(applied.contains("2 restore points deleted"), "{applied}");
    assert_eq!(after, ["rp3"]);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("INVALID_ARGUMENT"), "{nothing:?}");
    assert!(stats["records"].is_u64() && stats["pack_bytes"].is_u64(), "{stats}");
    assert_eq!(gc["state"], "Succeeded", "{gc}");
    assert!(gc["result"]["records_freed"].is_u64(), "{gc}");
    daemon.stop();
}
