//! Load on the real cairnd: hundreds of NBD connections writing at once while restore points
//! freeze the group, and hundreds of concurrent gRPC calls. Nothing deadlocks: every freeze
//! completes with writes queued at the gates, every write is acknowledged and reads back,
//! every restore point reads back as the disks were at its freeze. The daemon's resident
//! memory is printed (a bound on it is a benchmark's business, not a test's).

use cairn_proto::v1 as pb;
use pb::read_disk_request::Source;

use crate::common::nbd::{CMD_FLUSH, CMD_WRITE, Client};
use crate::common::{
    assert_same, grpc, grpc_disk, grpc_group_and_collection, grpc_read, grpc_wait_op, pattern, start_cairnd,
};

const MIB: u64 = 1 << 20;
const CONNECTIONS: u64 = 256;
const WRITES_PER_CONNECTION: u64 = 8;
const BLOCK: u64 = 4096;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_clients_and_freezes_at_once_complete_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_cairnd(dir.path(), &[]);
    let ch = grpc(dir.path()).await;
    // Each connection owns its blocks: connection i writes block i*W+j of disk a or b.
    let size = CONNECTIONS * WRITES_PER_CONNECTION * BLOCK;
    grpc_disk(&ch, "a", size.max(MIB)).await;
    grpc_disk(&ch, "b", size.max(MIB)).await;
    grpc_group_and_collection(&ch, "g", &["a", "b"], "c").await;
    let rss_idle = rss_kib(daemon.pid());

    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let mut c = Client::connect(&daemon.socket).await;
        c.hello().await;
        c.go(if i % 2 == 0 { "a" } else { "b" }).await.unwrap();
        clients.push(c);
    }
    let writers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                for j in 0..WRITES_PER_CONNECTION {
                    let block = i as u64 * WRITES_PER_CONNECTION + j;
                    c.request(CMD_WRITE, 0, j + 1, block * BLOCK, BLOCK as u32).await;
                    c.send(&pattern(block, BLOCK as usize)).await;
                    assert_eq!(c.simple_reply().await, (0, j + 1), "write {j} of connection {i}");
                }
                c.request(CMD_FLUSH, 0, 100, 0, 0).await;
                assert_eq!(c.simple_reply().await, (0, 100), "flush of connection {i}");
            })
        })
        .collect();
    // Freezes while the writes are queued (one creation at a time per collection, as the
    // model wants), and a storm of gRPC calls beside them.
    let freezes = {
        let ch = ch.clone();
        tokio::spawn(async move {
            let mut ops = Vec::new();
            for k in 0..3 {
                let req = pb::CreateRestorePointRequest {
                    collection: "c".into(),
                    name: format!("rp{k}"),
                    ..Default::default()
                };
                let r = pb::restore_points_client::RestorePointsClient::new(ch.clone()).create_restore_point(req).await;
                ops.push(grpc_wait_op(&ch, &r.unwrap().into_inner().operation.unwrap().id).await);
            }
            ops
        })
    };
    let calls: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let ch = ch.clone();
            tokio::spawn(async move {
                let mut disks = pb::disks_client::DisksClient::new(ch.clone());
                let listed = disks.list_disks(pb::ListDisksRequest::default()).await.unwrap().into_inner();
                assert_eq!(listed.disks.len(), 2, "call {i}");
                let mut rps = pb::restore_points_client::RestorePointsClient::new(ch);
                let req = pb::ListRestorePointsRequest { collection: "c".into(), ..Default::default() };
                rps.list_restore_points(req).await.unwrap();
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    for c in calls {
        c.await.unwrap();
    }
    let rss_loaded = rss_kib(daemon.pid());
    let ops = freezes.await.unwrap();

    let mut want = [vec![0u8; size.max(MIB) as usize], vec![0u8; size.max(MIB) as usize]];
    for i in 0..CONNECTIONS {
        for j in 0..WRITES_PER_CONNECTION {
            let block = i * WRITES_PER_CONNECTION + j;
            let at = (block * BLOCK) as usize;
            want[(i % 2) as usize][at..at + BLOCK as usize].copy_from_slice(&pattern(block, BLOCK as usize));
        }
    }
    for op in &ops {
        assert_eq!(op.state(), pb::OperationState::Succeeded, "{op:?}");
    }
    assert_same(&grpc_read(&ch, Source::Disk("a".into())).await.0, &want[0], "disk a after the load");
    assert_same(&grpc_read(&ch, Source::Disk("b".into())).await.0, &want[1], "disk b after the load");
    // Each restore point is a cut: per disk, every block holds either zeros or its write.
    for k in 0..3 {
        for (d, name) in ["a", "b"].iter().enumerate() {
            let src = Source::DiskRestorePoint(pb::DiskRestorePointRef {
                collection: "c".into(),
                restore_point: format!("rp{k}"),
                disk: (*name).into(),
            });
            let got = grpc_read(&ch, src).await.0;
            let mut included = Vec::new();
            for (b, (g, w)) in got.chunks(BLOCK as usize).zip(want[d].chunks(BLOCK as usize)).enumerate() {
                assert!(
                    g == w || g.iter().all(|&x| x == 0),
                    "rp{k} disk {name} block {b}: neither zeros nor its write"
                );
                included.push(g == w && w.iter().any(|&x| x != 0));
            }
            // A connection's writes are sequential: a cut holds a prefix of them.
            for i in (d as u64..CONNECTIONS).step_by(2) {
                let mine = &included[(i * WRITES_PER_CONNECTION) as usize..((i + 1) * WRITES_PER_CONNECTION) as usize];
                assert!(
                    mine.windows(2).all(|p| p[0] || !p[1]),
                    "rp{k}: connection {i}'s writes are not a prefix: {mine:?}"
                );
            }
        }
    }
    eprintln!(
        "cairnd resident memory: {rss_idle} KiB idle, {rss_loaded} KiB with {CONNECTIONS} NBD connections and \
         {CONNECTIONS} concurrent gRPC calls"
    );
    drop(ch);
    daemon.stop();
}
