//! The crash campaign: the real cairnd under a workload, ended again and again at a random
//! moment or held at one of the engine's failpoints (`return(hold)`), by a power cut (its
//! data dir is on the power-loss file system, `cairn_test_support::powerloss`, which keeps
//! only what was fsynced, and names only once their directory was) or by a SIGKILL (the
//! page cache survives). After each end it restarts on what survived and checks it against
//! the model the test keeps:
//!
//! - every write acknowledged before a flush is there, exact; a sector written since holds
//!   its old content or one of the writes to it, nothing else;
//! - no restore point is left `Creating`; every `Succeeded` one reads back exactly as the
//!   disks were at its freeze, and one seen `Succeeded` stays so; one whose deletion was
//!   acknowledged is gone; a restored disk whose restore was acknowledged exists and reads
//!   as its restore point with the writes made to it since (while it hydrated), flushed ones
//!   exact; a deleted disk is gone;
//! - a verify of the whole store finds no corrupt record and every restore point's chunk map
//!   hashes to the Merkle root it recorded, and no read during the workload served wrong bytes;
//! - change tracking missed nothing: a new restore point reads back equal to the disks.
//!
//! The workload, per round: flushed gRPC writes, unflushed NBD writes, restore point
//! deletion (one by one, or by a retention run), a grow, a restore (with hydration) and
//! writes to the restored disk, a restore point creation, reads of a restore point, GC and verify.
//!
//! `CAIRN_CAMPAIGN_ROUNDS` sets the rounds (the default suite runs 6) or
//! `CAIRN_CAMPAIGN_MINUTES` the time; `CAIRN_CAMPAIGN_SEED` repeats a run's choices (each
//! round's kill point, kind of end and workload; the moments themselves follow timing);
//! `CAIRN_CAMPAIGN_TOTALS=FILE` adds the figures to a running total in FILE
//! (`scripts/campaign` is the long mode: minutes and totals).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::v1 as pb;
use pb::read_disk_request::Source;

use crate::common::nbd::{CMD_WRITE, Client};
use crate::common::powerloss::{CutMode, PowerLossFs, Rng};
use crate::common::{
    Cairnd, assert_same, grpc, grpc_disk, grpc_group_and_collection, grpc_read, grpc_wait_op, pattern,
    spawn_cairnd_env, try_grpc_read, try_grpc_wait_op,
};

const MIB: u64 = 1 << 20;
const DISK_BYTES: u64 = 4 * MIB;
const DISKS: [&str; 2] = ["a", "b"];
const SECTOR: usize = 512;

/// The failpoints the workload passes, each a place to hold the daemon at for the end.
const FAILPOINTS: &[&str] = &[
    "capture::after_commit",
    "capture::after_pack_seal",
    "capture::before_batch",
    "capture::before_commit",
    "catalog::commit",
    "create::before_freeze",
    "create::before_record",
    "delete::before_commit",
    "disk::sync",
    "gc::after_rewrite_seal",
    "gc::after_sweep",
    "hydrate::after_batch",
    "pack::after_sync",
    "restore::before_admin",
    "restore_point::read_resolved",
    "verify::after_record",
    "verify::after_snapshot",
];

/// Those the workload passes more than once a round: held at the first, second or third hit.
const MANY_HITS: &[&str] = &[
    "capture::after_commit",
    "capture::before_batch",
    "capture::before_commit",
    "catalog::commit",
    "disk::sync",
    "pack::after_sync",
    "restore_point::read_resolved",
    "verify::after_record",
];

type Fallible<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What the test knows of one disk.
#[derive(Clone, Debug)]
struct DiskModel {
    /// Content as of the last acknowledged flush.
    durable: Vec<u8>,
    /// Content with every write sent so far.
    live: Vec<u8>,
    /// Writes since the last flush (acknowledged or in flight): each may or may not be there.
    unflushed: Vec<(usize, Vec<u8>)>,
}

impl DiskModel {
    fn new(len: usize) -> Self {
        Self { durable: vec![0; len], live: vec![0; len], unflushed: Vec::new() }
    }

    fn written(&mut self, off: usize, data: &[u8]) {
        self.live[off..off + data.len()].copy_from_slice(data);
        self.unflushed.push((off, data.to_vec()));
    }

    /// An acknowledged grow: the new bytes read as zeros.
    fn grown(&mut self, len: usize) {
        self.durable.resize(len, 0);
        self.live.resize(len, 0);
    }

    fn flushed(&mut self) {
        self.durable.clone_from(&self.live);
        self.unflushed.clear();
    }

    /// Checks what came back after an end, sector by sector, and takes it as the content;
    /// returns the sectors compared.
    fn settle(&mut self, disk: &str, got: &[u8], growing: Option<usize>) -> u64 {
        if growing == Some(got.len()) {
            self.grown(got.len());
        }
        assert_eq!(got.len(), self.durable.len(), "disk {disk}: size after the end");
        for s in (0..got.len()).step_by(SECTOR) {
            let sector = &got[s..s + SECTOR];
            if sector == &self.durable[s..s + SECTOR] {
                continue;
            }
            let written = self.unflushed.iter().any(|(off, data)| {
                s >= *off && s + SECTOR <= off + data.len() && sector == &data[s - off..s - off + SECTOR]
            });
            assert!(
                written,
                "disk {disk}: sector at {s} holds neither its flushed content nor a later write to it \
                 (first bytes {:?}, flushed {:?})",
                &sector[..8],
                &self.durable[s..s + 8]
            );
        }
        self.durable = got.to_vec();
        self.live = got.to_vec();
        self.unflushed.clear();
        (got.len() / SECTOR) as u64
    }
}

/// A restore point the test asked for.
#[derive(Debug)]
struct RpModel {
    /// The disks at its freeze.
    content: BTreeMap<&'static str, Vec<u8>>,
    /// Seen `Succeeded`: it must stay so.
    succeeded: bool,
}

/// A disk restored from a restore point: its content starts as the restore point's, then
/// takes writes like any disk (while it still hydrates).
#[derive(Debug)]
struct RestoredModel {
    disk: DiskModel,
    /// The restore returned: the disk must exist.
    acknowledged: bool,
}

#[derive(Debug, Default)]
struct Model {
    disks: BTreeMap<&'static str, DiskModel>,
    rps: BTreeMap<String, RpModel>,
    restored: BTreeMap<String, RestoredModel>,
    /// Acknowledged deletions: these must never come back.
    deleted_rps: BTreeSet<String>,
    deleted_disks: BTreeSet<String>,
    /// Restore points a deletion or a retention run may have taken when the end came.
    deleting: BTreeSet<String>,
    /// A grow sent and not acknowledged: the disk and its new size.
    growing: Option<(&'static str, usize)>,
    /// Wrong bytes or corruption the workload met (it must not panic: it dies with the daemon).
    violations: Vec<String>,
}

/// The figures of a campaign.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Figures {
    runs: u64,
    iterations: u64,
    power_cuts: u64,
    kills: u64,
    /// `failpoint#hit` where the daemon was held and ended, and how often.
    kill_points: BTreeMap<String, u64>,
    random_moments: u64,
    operations_checked: u64,
    acknowledged_sectors_checked: u64,
    unsynced_writes_at_cuts: u64,
    /// The three that must stay 0 (a run that sees one fails, and adds nothing to the totals).
    losses: u64,
    half_made_restore_points_seen: u64,
    /// Reads during the workload that served wrong bytes, and verifies that found corruption.
    corrupt_bytes_served_as_good: u64,
}

fn lock(m: &Mutex<Model>) -> std::sync::MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rp_source(rp: &str, disk: &str) -> Source {
    Source::DiskRestorePoint(pb::DiskRestorePointRef {
        collection: "c".into(),
        restore_point: rp.into(),
        disk: disk.into(),
    })
}

async fn list_rps(ch: &tonic::transport::Channel) -> Fallible<Vec<pb::RestorePoint>> {
    let req = pb::ListRestorePointsRequest { collection: "c".into(), ..Default::default() };
    Ok(pb::restore_points_client::RestorePointsClient::new(ch.clone())
        .list_restore_points(req)
        .await?
        .into_inner()
        .restore_points)
}

async fn delete_rp(ch: &tonic::transport::Channel, name: &str) -> Fallible<()> {
    let req = pb::DeleteRestorePointRequest { collection: "c".into(), restore_point: name.into() };
    pb::restore_points_client::RestorePointsClient::new(ch.clone()).delete_restore_point(req).await?;
    Ok(())
}

async fn delete_disk(ch: &tonic::transport::Channel, name: &str) -> Fallible<()> {
    let req = pb::DeleteDiskRequest { disk: name.into() };
    pb::disks_client::DisksClient::new(ch.clone()).delete_disk(req).await?;
    Ok(())
}

/// One round's work, step by step; the model learns of each step before it is sent (as
/// possibly done) and after it is acknowledged (as done). Ends early with the daemon.
async fn workload(
    ch: tonic::transport::Channel,
    socket: PathBuf,
    model: Arc<Mutex<Model>>,
    round: u64,
    seed: u64,
) -> Fallible<()> {
    let mut rng = Rng::new(seed);
    let mut pick = |n: usize| rng.below(n as u64) as usize;
    let mut rng2 = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut extent = |max_blocks: u64| {
        let len = (1 + rng2.below(max_blocks)) as usize * 4096;
        let off = rng2.below((DISK_BYTES as usize - len) as u64 / 4096) as usize * 4096;
        (off, len, rng2.next_u64())
    };

    // Flushed writes: acknowledged means durable, with everything written before.
    for _ in 0..1 + pick(3) {
        let disk = DISKS[pick(2)];
        let (off, len, fill) = extent(64);
        let data = pattern(fill, len);
        lock(&model).disks.get_mut(disk).unwrap().written(off, &data);
        let msg = pb::WriteDiskRequest { disk: disk.into(), offset: off as u64, data, zero_length: 0 };
        pb::disk_data_client::DiskDataClient::new(ch.clone()).write_disk(futures::stream::iter([msg])).await?;
        lock(&model).disks.get_mut(disk).unwrap().flushed();
    }
    // Unflushed writes: each may survive a power cut, or not.
    let disk = DISKS[pick(2)];
    let mut nbd = Client::connect(&socket).await;
    nbd.hello().await;
    nbd.go(disk).await.map_err(|e| format!("NBD go: {e}"))?;
    for cookie in 1..=1 + pick(3) as u64 {
        let (off, len, fill) = extent(16);
        let data = pattern(fill, len);
        lock(&model).disks.get_mut(disk).unwrap().written(off, &data);
        nbd.request(CMD_WRITE, 0, cookie, off as u64, len as u32).await;
        nbd.send(&data).await;
        if nbd.simple_reply().await != (0, cookie) {
            return Err("NBD write failed".into());
        }
    }
    drop(nbd);

    // Keep the collection small: delete the oldest restore points and last rounds' restores.
    let (old_rps, old_disks): (Vec<String>, Vec<String>) = {
        let m = lock(&model);
        let succeeded: Vec<String> = m.rps.iter().filter(|(_, r)| r.succeeded).map(|(n, _)| n.clone()).collect();
        (succeeded.into_iter().rev().skip(2).collect(), m.restored.keys().cloned().collect())
    };
    // Restored disks first: a restore point stays while a restored disk reads through it.
    for name in old_disks {
        delete_disk(&ch, &name).await?;
        let mut m = lock(&model);
        m.restored.remove(&name);
        m.deleted_disks.insert(name);
    }
    if pick(2) == 0 {
        for name in old_rps {
            lock(&model).deleting.insert(name.clone());
            delete_rp(&ch, &name).await?;
            let mut m = lock(&model);
            m.deleting.remove(&name);
            m.rps.remove(&name);
            m.deleted_rps.insert(name);
        }
    } else {
        // Retention keeps the newest three; any restore point may go until it answers.
        let names: Vec<String> = lock(&model).rps.keys().cloned().collect();
        lock(&model).deleting.extend(names);
        let policy = pb::RetentionPolicy { keep_last: 3, ..Default::default() };
        let req = pb::ApplyRetentionRequest { collection: "c".into(), policy: Some(policy), dry_run: false };
        let decisions =
            pb::store_client::StoreClient::new(ch.clone()).apply_retention(req).await?.into_inner().decisions;
        let mut m = lock(&model);
        for d in decisions.iter().filter(|d| !d.keep) {
            m.rps.remove(&d.name);
            m.deleted_rps.insert(d.name.clone());
        }
        m.deleting.clear();
    }
    // Sometimes a grow of disk b (up to twice its size).
    let len = lock(&model).disks["b"].live.len();
    if pick(4) == 0 && len < 2 * DISK_BYTES as usize {
        let new_len = len + MIB as usize;
        lock(&model).growing = Some(("b", new_len));
        let req = pb::ResizeDiskRequest { disk: "b".into(), size_bytes: new_len as u64 };
        pb::disks_client::DisksClient::new(ch.clone()).resize_disk(req).await?;
        let mut m = lock(&model);
        m.disks.get_mut("b").unwrap().grown(new_len);
        m.growing = None;
    }

    // A restore, then a restore point (the freeze keeps the unflushed writes: they are live).
    let base =
        lock(&model).rps.iter().rev().find(|(_, r)| r.succeeded).map(|(n, r)| (n.clone(), r.content["a"].clone()));
    if let Some((rp, content)) = base {
        let name = format!("x{round}");
        let disk = DiskModel { durable: content.clone(), live: content, unflushed: Vec::new() };
        lock(&model).restored.insert(name.clone(), RestoredModel { disk, acknowledged: false });
        let req = pb::RestoreDiskRequest {
            collection: "c".into(),
            restore_point: rp,
            disk: "a".into(),
            name: name.clone(),
            ..Default::default()
        };
        pb::restores_client::RestoresClient::new(ch.clone()).restore_disk(req).await?;
        lock(&model).restored.get_mut(&name).unwrap().acknowledged = true;
        // Writes to it while it hydrates: one flushed, one not.
        let (off, len, fill) = extent(32);
        let data = pattern(fill, len);
        lock(&model).restored.get_mut(&name).unwrap().disk.written(off, &data);
        let msg = pb::WriteDiskRequest { disk: name.clone(), offset: off as u64, data, zero_length: 0 };
        pb::disk_data_client::DiskDataClient::new(ch.clone()).write_disk(futures::stream::iter([msg])).await?;
        lock(&model).restored.get_mut(&name).unwrap().disk.flushed();
        let (off, len, fill) = extent(8);
        let data = pattern(fill, len);
        lock(&model).restored.get_mut(&name).unwrap().disk.written(off, &data);
        let mut nbd = Client::connect(&socket).await;
        nbd.hello().await;
        nbd.go(&name).await.map_err(|e| format!("NBD go: {e}"))?;
        nbd.request(CMD_WRITE, 0, 1, off as u64, len as u32).await;
        nbd.send(&data).await;
        if nbd.simple_reply().await != (0, 1) {
            return Err("NBD write to the restored disk failed".into());
        }
    }
    let name = format!("r{round}");
    let content = lock(&model).disks.iter().map(|(d, m)| (*d, m.live.clone())).collect();
    lock(&model).rps.insert(name.clone(), RpModel { content, succeeded: false });
    let req = pb::CreateRestorePointRequest { collection: "c".into(), name: name.clone(), ..Default::default() };
    let op =
        pb::restore_points_client::RestorePointsClient::new(ch.clone()).create_restore_point(req).await?.into_inner();
    let op = try_grpc_wait_op(&ch, &op.operation.ok_or("no operation")?.id).await?;
    if op.state() == pb::OperationState::Succeeded {
        lock(&model).rps.get_mut(&name).unwrap().succeeded = true;
        // Reads of it must be exact.
        let want = lock(&model).rps[&name].content["b"].clone();
        let got = try_grpc_read(&ch, rp_source(&name, "b")).await?.0;
        if got != want {
            lock(&model).violations.push(format!("restore point {name} read back wrong during the workload"));
        }
    }

    // Upkeep: GC (rewriting every pack not wholly live) and a verify.
    let gc = pb::CollectGarbageRequest { live_share_percent: Some(100) };
    let op = pb::store_client::StoreClient::new(ch.clone()).collect_garbage(gc).await?.into_inner();
    try_grpc_wait_op(&ch, &op.id).await?;
    let op = pb::store_client::StoreClient::new(ch.clone()).verify(pb::VerifyRequest::default()).await?.into_inner();
    let op = try_grpc_wait_op(&ch, &op.id).await?;
    if op.state() == pb::OperationState::Succeeded {
        let report: serde_json::Value = serde_json::from_str(&op.result_json)?;
        let mismatched = report["root_mismatches"].as_array().map(Vec::len);
        if report["corrupt"].as_array().map(Vec::len) != Some(0) || mismatched != Some(0) {
            lock(&model).violations.push(format!("verify during the workload: {report}"));
        }
    }
    Ok(())
}

/// The checks after a restart, on a daemon with no failpoint armed. Counts what it checked.
async fn check_after_end(ch: &tonic::transport::Channel, model: &Mutex<Model>, figures: &mut Figures) {
    let disks: Vec<&'static str> = lock(model).disks.keys().copied().collect();
    for name in disks {
        let got = grpc_read(ch, Source::Disk(name.into())).await.0;
        let mut m = lock(model);
        let growing = m.growing.filter(|(d, _)| *d == name).map(|(_, len)| len);
        figures.acknowledged_sectors_checked += m.disks.get_mut(name).unwrap().settle(name, &got, growing);
    }
    lock(model).growing = None;
    let listed = list_rps(ch).await.unwrap();
    let (reads, restored, deleted) = {
        let mut m = lock(model);
        let mut reads = Vec::new();
        for rp in &listed {
            let state = rp.provisioning_state();
            assert_ne!(
                state,
                pb::ProvisioningState::Creating,
                "restore point {} left half-made after a restart",
                rp.name
            );
            assert!(
                !m.deleted_rps.contains(&rp.name),
                "restore point {} came back after its deletion was acknowledged",
                rp.name
            );
            let want =
                m.rps.get(&rp.name).unwrap_or_else(|| panic!("restore point {} the test never asked for", rp.name));
            if state == pb::ProvisioningState::Succeeded {
                reads.extend(want.content.iter().map(|(d, c)| (rp.name.clone(), *d, c.clone())));
            } else {
                assert!(!want.succeeded, "restore point {} had succeeded, now {state:?}", rp.name);
            }
        }
        for (name, rp) in &m.rps {
            assert!(
                !rp.succeeded || m.deleting.contains(name) || listed.iter().any(|r| &r.name == name),
                "restore point {name} had succeeded and is gone"
            );
        }
        let is = |r: &pb::RestorePoint, s| r.provisioning_state() == s;
        m.rps.retain(|name, _| listed.iter().any(|r| &r.name == name && is(r, pb::ProvisioningState::Succeeded)));
        for rp in m.rps.values_mut() {
            rp.succeeded = true;
        }
        let gone: Vec<String> = m.deleting.iter().filter(|n| !m.rps.contains_key(*n)).cloned().collect();
        m.deleted_rps.extend(gone);
        m.deleting.clear();
        let restored: Vec<(String, RestoredModel)> = std::mem::take(&mut m.restored).into_iter().collect();
        let deleted: Vec<String> = m.deleted_disks.iter().cloned().collect();
        (reads, restored, deleted)
    };
    for (rp, disk, want) in reads {
        assert_same(
            &grpc_read(ch, rp_source(&rp, disk)).await.0,
            &want,
            &format!("restore point {rp} disk {disk} after the end"),
        );
        figures.operations_checked += 1;
    }
    let live: Vec<String> = pb::disks_client::DisksClient::new(ch.clone())
        .list_disks(pb::ListDisksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .disks
        .into_iter()
        .map(|d| d.name)
        .collect();
    for name in &deleted {
        assert!(!live.contains(name), "disk {name} came back after its deletion was acknowledged");
    }
    for (name, mut r) in restored {
        if live.contains(&name) {
            let got = grpc_read(ch, Source::Disk(name.clone())).await.0;
            figures.acknowledged_sectors_checked += r.disk.settle(&name, &got, None);
            figures.operations_checked += 1;
            lock(model).restored.insert(name, RestoredModel { acknowledged: true, ..r });
        } else {
            assert!(!r.acknowledged, "restored disk {name} is gone though its restore was acknowledged");
        }
    }
    for rp in listed.iter().filter(|r| r.provisioning_state() == pb::ProvisioningState::Failed) {
        delete_rp(ch, &rp.name).await.unwrap();
    }

    let op = pb::store_client::StoreClient::new(ch.clone()).verify(pb::VerifyRequest::default()).await.unwrap();
    let op = grpc_wait_op(ch, &op.into_inner().id).await;
    assert_eq!(op.state(), pb::OperationState::Succeeded, "verify after the end: {op:?}");
    let report: serde_json::Value = serde_json::from_str(&op.result_json).unwrap();
    assert_eq!(report["corrupt"].as_array().map(Vec::len), Some(0), "verify after the end: {report}");
    assert_eq!(report["root_mismatches"].as_array().map(Vec::len), Some(0), "verify after the end: {report}");
    figures.operations_checked += 1;
}

/// A restore point made now reads back equal to the disks: change tracking lost in an end
/// would show as a stale chunk here.
async fn check_tracking(ch: &tonic::transport::Channel, name: &str, model: &Mutex<Model>, figures: &mut Figures) {
    let rp = crate::common::grpc_restore_point(ch, "c", name, pb::ConsistencyMode::CrashConsistent).await.unwrap();
    assert_eq!(rp.provisioning_state(), pb::ProvisioningState::Succeeded, "{rp:?}");
    let content: BTreeMap<_, _> = lock(model).disks.iter().map(|(d, m)| (*d, m.durable.clone())).collect();
    for (disk, want) in &content {
        assert_same(&grpc_read(ch, rp_source(name, disk)).await.0, want, &format!("restore point {name} disk {disk}"));
        figures.operations_checked += 1;
    }
    lock(model).rps.insert(name.to_owned(), RpModel { content, succeeded: true });
}

fn add_to_totals(path: &Path, run: &Figures) -> Figures {
    let mut t: Figures = std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    t.runs += run.runs;
    t.iterations += run.iterations;
    t.power_cuts += run.power_cuts;
    t.kills += run.kills;
    for (k, n) in &run.kill_points {
        *t.kill_points.entry(k.clone()).or_default() += n;
    }
    t.random_moments += run.random_moments;
    t.operations_checked += run.operations_checked;
    t.acknowledged_sectors_checked += run.acknowledged_sectors_checked;
    t.unsynced_writes_at_cuts += run.unsynced_writes_at_cuts;
    t.losses += run.losses;
    t.half_made_restore_points_seen += run.half_made_restore_points_seen;
    t.corrupt_bytes_served_as_good += run.corrupt_bytes_served_as_good;
    std::fs::write(path, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    t
}

fn summary(f: &Figures) -> String {
    format!(
        "{} iterations ({} power cuts, {} kills), {} distinct kill points hit, {} random moments, {} operations \
         checked, {} acknowledged sectors checked, {} unsynced writes at cuts; losses {}, half-made restore points \
         seen {}, corrupt bytes served as good {}",
        f.iterations,
        f.power_cuts,
        f.kills,
        f.kill_points.len(),
        f.random_moments,
        f.operations_checked,
        f.acknowledged_sectors_checked,
        f.unsynced_writes_at_cuts,
        f.losses,
        f.half_made_restore_points_seen,
        f.corrupt_bytes_served_as_good
    )
}

/// Waits (off the async workers) for the daemon to log one of `needles`.
fn wait_log(daemon: &mut Cairnd, needles: &[&str], timeout: Duration) -> Option<usize> {
    tokio::task::block_in_place(|| daemon.wait_for_any(needles, timeout).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_and_restore_points_survive_every_kind_of_end() {
    let env_u64 = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let minutes = env_u64("CAIRN_CAMPAIGN_MINUTES");
    let rounds = env_u64("CAIRN_CAMPAIGN_ROUNDS").unwrap_or(if minutes.is_some() { u64::MAX } else { 6 });
    let deadline = minutes.map(|m| std::time::Instant::now() + Duration::from_secs(m * 60));
    let seed = env_u64("CAIRN_CAMPAIGN_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash campaign: {rounds} rounds or {minutes:?} minutes, CAIRN_CAMPAIGN_SEED={seed}");
    let mut rng = Rng::new(seed);
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data_dir = mnt.join("data");
    let model = Arc::new(Mutex::new(Model {
        disks: DISKS.iter().map(|d| (*d, DiskModel::new(DISK_BYTES as usize))).collect(),
        ..Model::default()
    }));
    let mut figures = Figures { runs: 1, ..Figures::default() };
    let mut seed_dir: Option<tempfile::TempDir> = None;

    for round in 0.. {
        let last = round == rounds || deadline.is_some_and(|d| std::time::Instant::now() >= d);
        let fs = PowerLossFs::mount(&mnt, seed_dir.as_ref().map(tempfile::TempDir::path));
        // Check what the last end left, on a daemon with no failpoint, then stop it cleanly.
        let mut daemon = spawn_cairnd_env(&data_dir, &["--http", "127.0.0.1:0"], &[]);
        assert_eq!(wait_log(&mut daemon, &["cairnd ready"], Duration::from_secs(60)), Some(0), "cairnd starts");
        let ch = grpc(&data_dir).await;
        if round == 0 {
            for d in DISKS {
                grpc_disk(&ch, d, DISK_BYTES).await;
            }
            grpc_group_and_collection(&ch, "g", &DISKS, "c").await;
        } else {
            check_after_end(&ch, &model, &mut figures).await;
            check_tracking(&ch, &format!("t{round}"), &model, &mut figures).await;
        }
        drop(ch);
        daemon.stop();
        if last {
            drop(fs);
            break;
        }

        // The round: a workload, ended at a failpoint or at a random moment.
        let failpoint = rng.chance(0.6).then(|| {
            let fp = FAILPOINTS[rng.below(FAILPOINTS.len() as u64) as usize];
            (fp, if MANY_HITS.contains(&fp) { rng.below(3) } else { 0 })
        });
        let env = failpoint.map(|(fp, skip)| format!("{fp}={skip}*off->1*return(hold)"));
        let env: Vec<(&str, &str)> = env.iter().map(|v| ("CAIRN_FAILPOINTS", v.as_str())).collect();
        let mut daemon = spawn_cairnd_env(&data_dir, &["--http", "127.0.0.1:0"], &env);
        let started = wait_log(&mut daemon, &["cairnd ready", "failpoint holding"], Duration::from_secs(60));
        let mut held = started == Some(1);
        let task = if started == Some(0) {
            let ch = grpc(&data_dir).await;
            let t = tokio::spawn(workload(ch, daemon.socket.clone(), model.clone(), round, rng.next_u64()));
            match failpoint {
                // Held, or the workload ended without passing the point that often.
                Some(_) => loop {
                    let done = t.is_finished();
                    held = wait_log(&mut daemon, &["failpoint holding"], Duration::from_millis(200)).is_some();
                    if held || done {
                        break;
                    }
                },
                None => tokio::time::sleep(Duration::from_millis(rng.below(2000))).await,
            }
            Some(t)
        } else {
            assert!(held, "cairnd neither started nor held at its failpoint");
            None
        };
        let point = match (failpoint, held) {
            (Some((fp, skip)), true) => format!("{fp}#{}", skip + 1),
            _ => "a random moment".to_owned(),
        };
        match (failpoint, held) {
            (Some(_), true) => *figures.kill_points.entry(point.clone()).or_default() += 1,
            _ => figures.random_moments += 1,
        }

        // Whether the workload ended by itself, before the end came.
        let finished = task.as_ref().is_some_and(tokio::task::JoinHandle::is_finished);
        let mode = match rng.below(3) {
            0 => CutMode::Strict,
            1 => CutMode::Partial { keep: 0.5, seed: rng.next_u64() },
            _ => CutMode::ProcessCrash,
        };
        if matches!(mode, CutMode::ProcessCrash) {
            daemon.kill();
            // The machine stays up: what the kernel still holds dirty (pages of the shared
            // mappings) reaches the file system as it would by writeback.
            let root = std::fs::File::open(&mnt).unwrap();
            rustix::fs::syncfs(&root).unwrap();
            fs.cut();
            figures.kills += 1;
        } else {
            fs.cut();
            daemon.kill();
            figures.power_cuts += 1;
        }
        if let Some(t) = task {
            t.abort();
            match t.await {
                Ok(Err(e)) if finished => eprintln!("crash campaign round {round}: the workload stopped early: {e}"),
                Err(e) if finished => eprintln!("crash campaign round {round}: the workload panicked: {e}"),
                _ => {}
            }
        }
        eprintln!("crash campaign round {round}: ended at {point} by {mode:?} (armed: {failpoint:?})");
        let violations = std::mem::take(&mut lock(&model).violations);
        figures.corrupt_bytes_served_as_good += violations.len() as u64;
        assert!(violations.is_empty(), "round {round}: {violations:?}");
        let next = tempfile::tempdir_in(work.path()).unwrap();
        let c = fs.surviving(next.path(), mode);
        figures.unsynced_writes_at_cuts +=
            if matches!(mode, CutMode::ProcessCrash) { 0 } else { c.unsynced_ops_at_cut };
        figures.iterations += 1;
        seed_dir = Some(next);
    }
    eprintln!("crash campaign, this run: {}", summary(&figures));
    if let Ok(path) = std::env::var("CAIRN_CAMPAIGN_TOTALS") {
        let totals = add_to_totals(Path::new(&path), &figures);
        eprintln!("crash campaign, all runs in {path}: {} runs, {}", totals.runs, summary(&totals));
    }
}
