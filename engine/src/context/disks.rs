//! Live disks on the context: create, look up, list, grow, delete, and their files.

use std::path::Path;
use std::sync::Arc;

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::format::DEFAULT_CHUNK_SIZE;
use crate::base::ids::{DiskId, LineageId, Name};
use crate::context::{Context, DiskEntry, State};
use crate::disk::{self, CreateDisk, Disk, DiskRecord};

impl Context {
    /// Creates a sparse disk.
    pub(crate) async fn create_disk(&self, req: CreateDisk) -> Result<DiskRecord> {
        let name = Name::new(req.name)?;
        disk::check_size(req.size_bytes)?;
        let chunk_size_bytes = req.chunk_size_bytes.unwrap_or(DEFAULT_CHUNK_SIZE);
        disk::check_chunk_size(chunk_size_bytes)?;

        let _admin = self.admin.lock().await;
        if self.state().disk_named(name.as_str()).is_some() {
            return Err(Error::already_exists(format!("disk {name}")));
        }
        let record = DiskRecord {
            id: DiskId::new(),
            name,
            lineage: LineageId::new(),
            size_bytes: req.size_bytes,
            chunk_size_bytes,
            direct_io: req.direct_io,
            group: None,
            created_at_ms: now_ms(),
            source: None,
            hydrated: false,
        };
        let dir = self.disks_dir.clone();
        let disk = Disk::create(&dir, &record, self.io.clone(), None)?;
        let mut batch = self.catalog.batch();
        batch.put(&record)?;
        if let Err(e) = self.catalog.commit(batch) {
            remove_disk_files(&dir, record.id);
            return Err(e);
        }
        self.state_mut().disks.insert(record.id, DiskEntry { disk: Arc::new(disk), group: None });
        tracing::info!(disk = %record.name, id = %record.id, size = record.size_bytes, "disk created");
        Ok(record)
    }

    /// A live disk by id.
    pub(crate) fn disk(&self, id: DiskId) -> Result<Arc<Disk>> {
        self.state().disks.get(&id).map(|e| e.disk.clone()).ok_or_else(|| Error::not_found(format!("disk {id}")))
    }

    /// A live disk by name.
    pub(crate) fn disk_by_name(&self, name: &str) -> Result<Arc<Disk>> {
        let state = self.state();
        let id = state.disk_named(name).ok_or_else(|| Error::not_found(format!("disk {name}")))?;
        state.disks.get(&id).map(|e| e.disk.clone()).ok_or_else(|| Error::not_found(format!("disk {name}")))
    }

    /// A disk's record as it stands.
    pub(crate) fn disk_record(&self, id: DiskId) -> Result<DiskRecord> {
        self.state().record(id).ok_or_else(|| Error::not_found(format!("disk {id}")))
    }

    /// Every disk, by id.
    pub(crate) fn list_disks(&self) -> Vec<DiskRecord> {
        let state = self.state();
        state.disks.keys().filter_map(|id| state.record(*id)).collect()
    }

    /// Grows a disk (shrinking is refused: it would destroy data).
    pub(crate) async fn resize_disk(&self, id: DiskId, new_size_bytes: u64) -> Result<DiskRecord> {
        disk::check_size(new_size_bytes)?;
        let _admin = self.admin.lock().await;
        let disk = self.disk(id)?;
        let old = disk.size_bytes();
        if new_size_bytes < old {
            return Err(Error::invalid(
                "size_bytes",
                format!("{new_size_bytes} is smaller than the current size {old}; disks only grow"),
            ));
        }
        if new_size_bytes > old {
            disk.grow(new_size_bytes).await?;
            let record = self.disk_record(id)?;
            let mut batch = self.catalog.batch();
            batch.put(&record)?;
            self.catalog.commit(batch)?;
            tracing::info!(disk = %record.name, old, new = new_size_bytes, "disk resized");
        }
        self.disk_record(id)
    }

    /// Deletes a disk and its files. A disk in a group must leave the group first.
    pub(crate) async fn delete_disk(&self, id: DiskId) -> Result<()> {
        let _admin = self.admin.lock().await;
        let record = self.disk_record(id)?;
        if let Some(g) = record.group {
            let group = self.state().groups.get(&g).map(|g| g.name.to_string()).unwrap_or_else(|| g.to_string());
            return Err(Error::FailedPrecondition(format!(
                "disk {} belongs to group {group}; remove it from the group first",
                record.name
            )));
        }
        let mut batch = self.catalog.batch();
        batch.delete::<DiskRecord>(id.to_bytes())?;
        self.catalog.commit(batch)?;
        self.state_mut().disks.remove(&id);
        remove_disk_files(&self.disks_dir, id);
        tracing::info!(disk = %record.name, %id, "disk deleted");
        Ok(())
    }
}

pub(crate) fn remove_disk_files(dir: &Path, id: DiskId) {
    for path in [disk::data_path(dir, id), disk::tracking_path(dir, id), disk::local_path(dir, id)] {
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove disk file");
        }
    }
}

/// Removes files under `disks/` that belong to no catalogued disk (a create that crashed
/// before its commit, or a delete that crashed after it).
pub(crate) fn remove_orphan_files(dir: &Path, state: &State) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list disks directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list disks directory", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.split('.').next()) else {
            continue;
        };
        let known = stem.parse::<DiskId>().is_ok_and(|id| state.disks.contains_key(&id));
        if !known {
            tracing::warn!(file = %entry.path().display(), "removing orphan disk file");
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "could not remove orphan file");
            }
        }
    }
    Ok(())
}
