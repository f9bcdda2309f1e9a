//! Restore as new disks: a disk restore point becomes a live disk at once, hydrated in the
//! background; a whole restore point becomes a new group of such disks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::ids::{DiskId, LineageId, Name, RestorePointId};
use crate::catalog::group::{CreateGroup, GroupRecord};
use crate::chunk_map::reader::DiskRestorePointReader;
use crate::context::Context;
use crate::context::DiskEntry;
use crate::disk::{Disk, DiskRecord, RestoreSource};
use crate::jobs::operation::{OperationKind, OperationRecord, OperationState};

/// Chunks hydrated between two syncs of the disk file.
const HYDRATE_BATCH: usize = 64;

/// What a caller asks for when restoring one disk.
#[derive(Debug, Clone)]
pub struct RestoreDisk {
    pub restore_point: RestorePointId,
    /// The disk (of the restore point) to restore.
    pub disk: DiskId,
    /// Name of the new disk.
    pub name: String,
    pub direct_io: bool,
}

/// Creates a disk from a disk restore point. The disk is usable at once; chunks not yet
/// local are read from the store, and a background operation hydrates them.
pub(crate) async fn restore_disk(ctx: &Arc<Context>, req: RestoreDisk) -> Result<(DiskRecord, OperationRecord)> {
    let name = Name::new(req.name)?;
    crate::failpoint!("restore::before_admin");
    let _admin = ctx.admin.lock().await;
    // Opened under the admin lock, which a deletion holds from its check that no lineage
    // reads through the restore point to its commit: the base cannot be deleted between
    // this look and the commit below that records the new lineage's base, and a later
    // deletion sees that lineage (the disk is in the state before the lock is released).
    let base = DiskRestorePointReader::open(&ctx.catalog, &ctx.chunks, req.restore_point, req.disk)?;
    // Hashed from the map, no data read: what the disk will serve is what was captured.
    base.check_root()?;
    if ctx.state().disks.values().any(|e| e.disk.name() == &name) {
        return Err(Error::already_exists(format!("disk {name}")));
    }
    let record = DiskRecord {
        id: DiskId::new(),
        name,
        lineage: LineageId::new(),
        size_bytes: base.size_bytes(),
        chunk_size_bytes: base.chunk_size_bytes(),
        direct_io: req.direct_io,
        group: None,
        created_at_ms: now_ms(),
        source: Some(RestoreSource { restore_point: req.restore_point, disk: req.disk }),
        hydrated: false,
    };
    let op = OperationRecord::start(OperationKind::Hydration, format!("disk/{}", record.id), record.size_bytes);
    let dir = ctx.disks_dir.clone();
    let disk = Disk::create(&dir, &record, ctx.io.clone(), Some(base.clone()))?;
    let mut batch = ctx.catalog.batch();
    batch.put(&record)?;
    batch.put(&op)?;
    let lineage_key = crate::base::format::meta_lineage_key(record.lineage.to_bytes());
    let base_json = serde_json::to_vec(&base.base()).map_err(|e| Error::invalid("base", e.to_string()))?;
    batch.put_raw("meta", &lineage_key, &base_json)?;
    if let Err(e) = ctx.catalog.commit(batch) {
        crate::context::disks::remove_disk_files(&dir, record.id);
        return Err(e);
    }
    let disk = Arc::new(disk);
    ctx.state_mut().disks.insert(record.id, DiskEntry { disk: disk.clone(), group: None });
    tracing::info!(disk = %record.name, from = %req.restore_point, "disk restored; hydrating in the background");
    start_hydration(ctx, disk, op.clone());
    Ok((record, op))
}

/// Restores every disk of a restore point and puts them in a new group with the
/// configuration the restore point saved. Disks are named `GROUP-DISK`.
pub(crate) async fn restore_group(
    ctx: &Arc<Context>,
    restore_point: RestorePointId,
    group_name: &str,
) -> Result<(GroupRecord, Vec<(DiskRecord, OperationRecord)>)> {
    let group_name = Name::new(group_name)?;
    let rp = ctx.restore_point(restore_point)?;
    if ctx.group_by_name(group_name.as_str()).is_ok() {
        return Err(Error::already_exists(format!("group {group_name}")));
    }
    let names: Vec<Name> =
        rp.disks.iter().map(|d| Name::new(format!("{group_name}-{}", d.disk_name))).collect::<Result<_>>()?;
    let mut restored = Vec::new();
    for (d, name) in rp.disks.iter().zip(names) {
        let req = RestoreDisk { restore_point, disk: d.disk, name: name.to_string(), direct_io: false };
        restored.push(restore_disk(ctx, req).await?);
    }
    let group = ctx
        .create_group(CreateGroup {
            name: group_name.to_string(),
            disks: restored.iter().map(|(d, _)| d.id).collect(),
            configuration: rp.configuration.clone(),
        })
        .await?;
    Ok((group, restored))
}

/// Starts (or resumes) hydrating a restored disk as operation `op`.
pub(crate) fn start_hydration(ctx: &Arc<Context>, disk: Arc<Disk>, op: OperationRecord) {
    let cancel = ctx.jobs.register(op.id, true);
    let task_ctx = ctx.clone();
    ctx.jobs.spawn(op.id, async move { run_hydration(&task_ctx, disk, op, cancel).await });
}

/// Resumes hydration of every restored disk not hydrated yet (at open), as the operation
/// the last stop parked or cut short when there is one, so a client watching it sees it
/// go on; settles such operations whose disk is gone or hydrated.
pub(crate) fn resume_hydrations(ctx: &Arc<Context>) {
    let mut parked: Vec<OperationRecord> = match ctx.catalog.list::<OperationRecord>() {
        Ok(ops) => ops.into_iter().filter(|o| o.kind == OperationKind::Hydration && !o.state.is_terminal()).collect(),
        Err(e) => {
            tracing::error!(error = %e, "could not list operations; hydrations resume as new ones");
            Vec::new()
        }
    };
    let disks: Vec<Arc<Disk>> = ctx.state().disks.values().map(|e| e.disk.clone()).collect();
    for d in disks {
        let Some((_, _, false)) = d.hydration() else { continue };
        let target = format!("disk/{}", d.id());
        let mut op = match parked.iter().position(|o| o.target == target) {
            Some(i) => {
                let mut op = parked.swap_remove(i);
                op.note = Some("resumed after the engine restarted".into());
                op.paused = None;
                op
            }
            None => OperationRecord::start(OperationKind::Hydration, target, d.size_bytes()),
        };
        if let Err(e) = ctx.put_operation(&mut op) {
            tracing::error!(disk = %d.name(), error = %e, "could not record hydration; retried at next start");
            continue;
        }
        tracing::info!(disk = %d.name(), op = %op.id, "resuming hydration");
        start_hydration(ctx, d, op);
    }
    // Left over: their disk was deleted, or finished hydrating just before the stop.
    for mut op in parked {
        let hydrated = ctx
            .state()
            .disks
            .values()
            .any(|e| format!("disk/{}", e.disk.id()) == op.target && e.disk.hydration().is_some_and(|h| h.2));
        op.state = if hydrated {
            OperationState::Succeeded
        } else {
            OperationState::Failed { error: "the disk was deleted".into() }
        };
        if let Err(e) = ctx.put_operation(&mut op) {
            tracing::error!(op = %op.id, error = %e, "could not settle a hydration operation");
        }
    }
}

async fn run_hydration(ctx: &Arc<Context>, disk: Arc<Disk>, mut op: OperationRecord, cancel: Arc<AtomicBool>) {
    let result = hydrate(ctx, &disk, &mut op, &cancel).await;
    op.state = match &result {
        Ok(()) => OperationState::Succeeded,
        // Parked by the shutdown: it stays Running and resumes at the next start.
        Err(Error::Canceled) if ctx.jobs.closing() => {
            tracing::info!(disk = %disk.name(), op = %op.id, "hydration parked by the shutdown");
            return;
        }
        Err(Error::Canceled) => OperationState::Canceled,
        Err(e) => OperationState::Failed { error: e.to_string() },
    };
    if let Err(e) = &result {
        tracing::warn!(disk = %disk.name(), error = %e, "hydration stopped");
    }
    if let Err(e) = ctx.put_operation(&mut op) {
        tracing::error!(disk = %disk.name(), error = %e, "could not record the hydration's end");
    }
}

async fn hydrate(ctx: &Arc<Context>, disk: &Arc<Disk>, op: &mut OperationRecord, cancel: &AtomicBool) -> Result<()> {
    let cs = disk.chunk_size_bytes();
    let chunks = disk.size_bytes().div_ceil(cs);
    let mut written = Vec::with_capacity(HYDRATE_BATCH);
    let mut since = std::time::Instant::now();
    for c in 0..chunks {
        if cancel.load(Ordering::Acquire) {
            disk.hydrate_commit(&written).await?;
            return Err(Error::Canceled);
        }
        if !ctx.state().disks.contains_key(&disk.id()) {
            return Err(Error::Canceled); // the disk was deleted
        }
        ctx.wait_for_space(op, cancel).await?;
        let wrote = disk.hydrate_chunk(c).await?;
        if wrote {
            written.push(c);
        }
        let bytes = if wrote { (c * cs + cs).min(disk.size_bytes()) - c * cs } else { 0 };
        ctx.throughput.hydration.record(bytes, &mut since);
        op.bytes_done = ((c + 1) * cs).min(disk.size_bytes());
        if written.len() >= HYDRATE_BATCH || c + 1 == chunks {
            disk.hydrate_commit(&written).await?;
            written.clear();
            crate::failpoint!("hydrate::after_batch");
            ctx.put_operation(op)?;
        }
    }
    disk.finish_hydration()?;
    let mut record = ctx.disk_record(disk.id())?;
    record.hydrated = true;
    let mut batch = ctx.catalog.batch();
    batch.put(&record)?;
    ctx.catalog.commit(batch)?;
    tracing::info!(disk = %disk.name(), "hydration complete; the disk no longer reads from the store");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::restore_point::{CreateRestorePoint, RestorePointRecord};
    use crate::disk::CreateDisk;
    use crate::engine::{Engine, EngineConfig};
    use crate::rp::collection::CreateCollection;

    fn config(dir: &std::path::Path) -> EngineConfig {
        EngineConfig { io_backend: crate::io::IoBackendKind::Blocking, ..EngineConfig::new(dir) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_disk_whose_base_is_gone_fails_its_reads_and_the_other_disks_serve() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(config(dir.path())).await.unwrap();
        let req = CreateDisk { name: "a".into(), size_bytes: 1 << 20, chunk_size_bytes: None, direct_io: false };
        let a = engine.create_disk(req).await.unwrap().id;
        let data = crate::sys::IoBuf::from_slice(&[9u8; 4096]);
        engine.inner.disk(a).unwrap().write(0, data, false).await.unwrap();
        let group = CreateGroup { name: "vm".into(), disks: vec![a], configuration: "{}".into() };
        let group = engine.inner.create_group(group).await.unwrap().id;
        let coll = CreateCollection { name: "c".into(), group, ..Default::default() };
        let coll = engine.create_collection(coll).await.unwrap().id;
        let (rp, op) = engine
            .create_restore_point(coll, CreateRestorePoint { name: "rp".into(), ..Default::default() })
            .await
            .unwrap();
        while !engine.inner.operation(op.id).unwrap().state.is_terminal() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Hydration waits for free space for ever: the restored disk keeps reading its base.
        engine.set_free_space_watermark(u64::MAX);
        let req = RestoreDisk { restore_point: rp.id, disk: a, name: "r".into(), direct_io: false };
        let r = engine.restore_disk(req).await.unwrap().0.id;
        engine.close().await.unwrap();
        drop(engine);
        // The restore point's record goes, as a deletion racing the restore once could do.
        let catalog = crate::catalog::Catalog::open(&dir.path().join("catalog")).unwrap();
        let mut batch = catalog.batch();
        batch.delete::<RestorePointRecord>(rp.id.to_bytes()).unwrap();
        catalog.commit(batch).unwrap();
        drop(catalog);

        let engine = Engine::open(config(dir.path())).await.unwrap();
        engine.set_free_space_watermark(u64::MAX);

        assert_eq!(&engine.inner.disk(a).unwrap().read(0, 4096).await.unwrap()[..], &[9u8; 4096][..]);
        let err = engine.inner.disk(r).unwrap().read(0, 4096).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NotFound, "{err}");
        assert!(engine.problems().iter().any(|p| p.contains("disk r was restored")), "{:?}", engine.problems());
        engine.close().await.unwrap();
    }
}
