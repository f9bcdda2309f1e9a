//! Disk restore point exports (`COLLECTION/RESTORE_POINT/DISK`) of the real cairnd, read by
//! real clients: nbdcopy with multi-conn gets exactly what was captured, qemu-img and nbdinfo
//! maps match the restore point's allocation, `qemu:dirty-bitmap:OLDER` lists exactly the
//! chunks written in between, and writes, unknown names and failed restore points are refused
//! without disturbing other connections. A bitmap whose restore point is deleted after the
//! client selected it answers EIO, the server's failure, not EINVAL.

use std::path::Path;
use std::process::Command;

use cairn_engine::{IoBackendKind, IoBuf, OperationState, ProvisioningState};

use crate::common::nbd::{
    CMD_BLOCK_STATUS, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, Client, EPERM, REP_ACK, REP_ERR_UNKNOWN, REP_META_CONTEXT,
    Reply, meta_context_data,
};
use crate::common::{
    Cairnd, collection, disk, grpc, merge_runs, nbdinfo_map_runs, open, pattern, qemu_img_map_runs, read_all, read_rp,
    restore_point, run_ok, start_cairnd, wait_op,
};

const MIB: u64 = 1 << 20;
const DISK_BYTES: u64 = 64 * MIB;

/// `(offset, length, is_data)` runs.
type Runs = Vec<(u64, u64, bool)>;

/// What the data dir holds once [`capture`] has run.
struct Captured {
    rp1: Vec<u8>,
    rp2: Vec<u8>,
    /// The live disk at the end, which differs from both.
    live: Vec<u8>,
    chunk_bytes: u64,
    /// rp2's allocation from the engine (zero chunks are holes).
    rp2_runs: Runs,
    /// The chunks written between rp1 and rp2, by the test's own account.
    written_between: Vec<u64>,
}

/// Writes to `vm1` of collection `c`: rp1, more writes, rp2, more writes, then a restore
/// point `broken` whose capture is canceled (Failed). Closes the engine.
async fn capture(data: &Path) -> Captured {
    let engine = open(data, IoBackendKind::Auto).await;
    let id = disk(&engine, "vm1", DISK_BYTES).await.id;
    let (_, coll) = collection(&engine, "c", vec![id]).await;
    let d = engine.disk(id).unwrap();
    let write = |offset: u64, bytes: Vec<u8>| {
        let d = d.clone();
        async move { d.write(offset, IoBuf::from_slice(&bytes), false).await.unwrap() }
    };
    write(0, pattern(1, 2 * MIB as usize)).await;
    write(8 * MIB, pattern(2, 4096)).await;
    // Allocated in the file but all zeros: a zero chunk, so a hole of the export.
    write(20 * MIB, vec![0; MIB as usize]).await;
    write(40 * MIB, pattern(3, 7 * MIB as usize)).await;
    let rp1 = restore_point(&engine, coll.id, "rp1", vec![]).await;

    let between: [(u64, usize); 4] =
        [(MIB + 4096, 4096), (8 * MIB, 12 << 10), (30 * MIB, 64 << 10), (63 * MIB, MIB as usize)];
    for (i, &(offset, len)) in between.iter().enumerate() {
        write(offset, pattern(10 + i as u64, len)).await;
    }
    let rp2 = restore_point(&engine, coll.id, "rp2", vec![]).await;
    let chunk_bytes = rp2.disks[0].chunk_size_bytes;
    let mut written_between: Vec<u64> = between
        .iter()
        .flat_map(|&(offset, len)| offset / chunk_bytes..(offset + len as u64).div_ceil(chunk_bytes))
        .collect();
    written_between.dedup();

    // After rp2: the live disk moves on, over data both restore points hold.
    write(0, pattern(20, 4 * MIB as usize)).await;
    write(41 * MIB, pattern(21, MIB as usize)).await;
    let req = cairn_engine::CreateRestorePoint { name: "broken".into(), ..Default::default() };
    let (broken, op) = engine.create_restore_point(coll.id, req).await.unwrap();
    engine.cancel_operation(op.id).unwrap();
    assert_eq!(wait_op(&engine, op.id).await.state, OperationState::Canceled);
    assert!(matches!(engine.restore_point(broken.id).unwrap().state, ProvisioningState::Failed { .. }));

    let reader = engine.disk_restore_point(rp2.id, id).unwrap();
    let size = reader.size_bytes();
    let allocated = reader.allocated_chunks().unwrap();
    let rp2_runs = chunk_runs(allocated.iter().map(|(i, _)| *i), chunk_bytes, size);
    assert_eq!(engine.changed_chunks(rp1.id, rp2.id, id).unwrap(), written_between, "the engine agrees");
    let captured = Captured {
        rp1: read_rp(&engine, rp1.id, id).await,
        rp2: read_rp(&engine, rp2.id, id).await,
        live: read_all(&d).await,
        chunk_bytes,
        rp2_runs,
        written_between,
    };
    drop((reader, d));
    engine.close().await.unwrap();
    captured
}

/// Byte runs of a disk of `size` bytes where the chunks `set` (ascending) are data.
fn chunk_runs(set: impl IntoIterator<Item = u64>, chunk_bytes: u64, size: u64) -> Runs {
    let set: Vec<u64> = set.into_iter().collect();
    merge_runs((0..size.div_ceil(chunk_bytes)).map(|c| {
        let off = c * chunk_bytes;
        (off, chunk_bytes.min(size - off), set.binary_search(&c).is_ok())
    }))
}

fn nbdinfo_json(uri: &str) -> serde_json::Value {
    serde_json::from_str(&run_ok(Command::new("nbdinfo").args(["--json", uri]))).unwrap()
}

#[tokio::test]
async fn nbdcopy_with_multi_conn_reads_exactly_what_was_captured() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let captured = capture(&data).await;
    let daemon = start_cairnd(&data, &[]);

    for (rp, want) in [("rp1", &captured.rp1), ("rp2", &captured.rp2)] {
        let copy = dir.path().join(format!("{rp}.raw"));
        run_ok(
            Command::new("nbdcopy")
                .args(["--connections=4", "--requests=16"])
                .arg(daemon.uri(&format!("c/{rp}/vm1")))
                .arg(&copy),
        );
        crate::common::assert_same(&std::fs::read(&copy).unwrap(), want, rp);
    }
    assert!(captured.rp2 != captured.live && captured.rp1 != captured.rp2, "the test wrote in between");

    // Advertised: read-only, nothing that writes, multi-conn; block status contexts as listed.
    let v = nbdinfo_json(&daemon.uri("c/rp2/vm1"));
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "c/rp2/vm1");
    assert_eq!(e["export-size"], DISK_BYTES);
    for (key, want) in [
        ("is_read_only", true),
        ("can_flush", true),
        ("can_fua", false),
        ("can_trim", false),
        ("can_zero", false),
        ("can_fast_zero", false),
        ("can_df", true),
        ("can_cache", true),
        ("can_multi_conn", true),
    ] {
        assert_eq!(e[key], want, "{key} in {v}");
    }
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], captured.chunk_bytes);
    assert_eq!(e["contexts"], serde_json::json!(["base:allocation", "qemu:dirty-bitmap:rp1"]));
    let rp1 = nbdinfo_json(&daemon.uri("c/rp1/vm1"));
    assert_eq!(rp1["exports"][0]["contexts"], serde_json::json!(["base:allocation"]));

    // LIST: the live disk and every disk restore point of a succeeded restore point.
    let list = run_ok(
        Command::new("nbdinfo")
            .args(["--list", "--json"])
            .arg(format!("nbd+unix://?socket={}", daemon.socket.display())),
    );
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let mut names: Vec<&str> =
        v["exports"].as_array().unwrap().iter().map(|e| e["export-name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["c/rp1/vm1", "c/rp2/vm1", "vm1"]);
    daemon.stop();
}

/// `(offset, length, flags)` rows of `nbdinfo --map` output.
fn nbdinfo_map_flags(text: &str) -> Vec<(u64, u64, u32)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn maps_match_the_allocation_and_the_dirty_bitmap_lists_the_chunks_written_between() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let captured = capture(&data).await;
    let daemon = start_cairnd(&data, &[]);
    let uri = daemon.uri("c/rp2/vm1");

    let qemu_map =
        qemu_img_map_runs(&run_ok(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &uri])));
    let nbdinfo_map = nbdinfo_map_runs(&run_ok(Command::new("nbdinfo").args(["--map", &uri])));
    assert_eq!(qemu_map, captured.rp2_runs);
    assert_eq!(nbdinfo_map, captured.rp2_runs);
    assert!(!all_data(&captured.rp2_runs, 20 * MIB, MIB), "zero chunks are holes");

    // The dirty bitmap: exactly the chunks written between rp1 and rp2, the rest clean.
    let want = chunk_runs(captured.written_between.iter().copied(), captured.chunk_bytes, DISK_BYTES);
    let dirty = nbdinfo_map_flags(&run_ok(Command::new("nbdinfo").args(["--map=qemu:dirty-bitmap:rp1", &uri])));
    assert!(dirty.iter().all(|r| r.2 <= 1), "only the dirty flag: {dirty:?}");
    assert_eq!(merge_runs(dirty.iter().map(|&(o, l, f)| (o, l, f == 1))), want);

    // QEMU's own client, the way pull-mode backup tools read a bitmap (x-dirty-bitmap shows
    // the dirty extents as "data": false).
    let opts = format!(
        "driver=nbd,export=c/rp2/vm1,server.type=unix,server.path={},x-dirty-bitmap=qemu:dirty-bitmap:rp1",
        daemon.socket.display()
    );
    let qemu_dirty =
        qemu_img_map_runs(&run_ok(Command::new("qemu-img").args(["map", "--output=json", "--image-opts", &opts])));
    let inverted: Runs = qemu_dirty.iter().map(|&(o, l, d)| (o, l, !d)).collect();
    assert_eq!(inverted, want);

    // The dirty-bitmap wildcards list what may be selected.
    let mut s = Client::connect(&daemon.socket).await;
    s.hello().await;
    let listed = s.list_meta("c/rp2/vm1", &["qemu:dirty-bitmap:"]).await;
    assert_eq!(listed, vec!["qemu:dirty-bitmap:rp1".to_owned()]);
    let listed = s.list_meta("c/rp2/vm1", &["qemu:", "base:"]).await;
    assert_eq!(listed, vec!["base:allocation".to_owned(), "qemu:dirty-bitmap:rp1".to_owned()]);
    assert!(s.list_meta("c/rp1/vm1", &["qemu:"]).await.is_empty());
    daemon.stop();
}

fn all_data(runs: &Runs, start: u64, len: u64) -> bool {
    runs.iter().filter(|r| r.0 < start + len && r.0 + r.1 > start).all(|r| r.2)
}

fn refused(daemon: &Cairnd, export: &str) -> bool {
    !Command::new("nbdinfo").arg(daemon.uri(export)).output().unwrap().status.success()
}

#[tokio::test]
async fn writes_unknown_names_and_failed_restore_points_are_refused_and_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let captured = capture(&data).await;
    let daemon = start_cairnd(&data, &[]);
    let mut good = Client::connect(&daemon.socket).await;
    good.hello().await;
    good.go("c/rp1/vm1").await.unwrap();
    assert_eq!(good.read(1, 0, 65536).await, captured.rp1[..65536]);

    // WRITE, TRIM and WRITE_ZEROES: EPERM, and the session goes on.
    good.request(CMD_WRITE, 0, 2, 0, 4096).await;
    good.send(&[0xee; 4096]).await;
    assert_eq!(good.simple_reply().await, (EPERM, 2));
    good.request(CMD_TRIM, 0, 3, 0, 4096).await;
    assert_eq!(good.simple_reply().await, (EPERM, 3));
    good.request(CMD_WRITE_ZEROES, 0, 4, 0, 4096).await;
    assert_eq!(good.simple_reply().await, (EPERM, 4));
    let qemu_write = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xee 0 4k", &daemon.uri("c/rp2/vm1")])
        .output()
        .unwrap();
    assert!(
        !qemu_write.status.success() || String::from_utf8_lossy(&qemu_write.stdout).contains("failed"),
        "qemu-io could write: {qemu_write:?}"
    );

    // Unknown names, malformed names and a failed restore point: NBD_REP_ERR_UNKNOWN.
    for name in ["c/nope/vm1", "c/rp1/nope", "nope/rp1/vm1", "c/broken/vm1", "c/rp1", "c/rp1/vm1/x", "c//vm1"] {
        assert!(refused(&daemon, name), "{name} was served");
    }
    let mut s = Client::connect(&daemon.socket).await;
    s.hello().await;
    assert_eq!(s.go("c/broken/vm1").await, Err(REP_ERR_UNKNOWN));
    assert!(s.go("c/rp2/vm1").await.is_ok(), "the same session can still pick a good export");
    assert_eq!(s.read(1, 0, 4096).await, captured.rp2[..4096]);

    // The connection opened first still reads rp1, untouched by all of the above.
    assert_eq!(good.read(5, 0, 65536).await, captured.rp1[..65536]);
    assert_eq!(good.read(6, 40 * MIB, 65536).await, captured.rp1[40 * MIB as usize..][..65536]);
    daemon.stop();
}

#[tokio::test]
async fn a_bitmap_deleted_after_it_was_selected_answers_eio() {
    const OPT_STRUCTURED_REPLY: u32 = 8;
    const OPT_SET_META_CONTEXT: u32 = 10;
    const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
    const EIO: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    capture(&data).await;
    let daemon = start_cairnd(&data, &[]);
    let mut s = Client::connect(&daemon.socket).await;
    s.hello().await;
    s.option(OPT_STRUCTURED_REPLY, &[]).await;
    assert_eq!(s.option_reply().await.1, REP_ACK);
    s.option(OPT_SET_META_CONTEXT, &meta_context_data("c/rp2/vm1", &["qemu:dirty-bitmap:rp1"])).await;
    assert_eq!(s.option_reply().await.1, REP_META_CONTEXT);
    assert_eq!(s.option_reply().await.1, REP_ACK);

    let mut rps = cairn_proto::v1::restore_points_client::RestorePointsClient::new(grpc(&data).await);
    let delete = cairn_proto::v1::DeleteRestorePointRequest { collection: "c".into(), restore_point: "rp1".into() };
    rps.delete_restore_point(delete).await.unwrap();
    s.go("c/rp2/vm1").await.unwrap();
    s.request(CMD_BLOCK_STATUS, 0, 1, 0, 1 << 20).await;
    let reply = s.reply().await;

    let Reply::Chunk { kind, cookie, payload, .. } = reply else { panic!("an error chunk, not {reply:?}") };
    assert_eq!((kind, cookie), (REPLY_TYPE_ERROR, 1));
    assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), EIO);
    daemon.stop();
}
