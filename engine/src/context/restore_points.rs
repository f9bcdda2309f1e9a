//! Reading restore points: records by id, name and collection, disk restore point readers,
//! and the chunks changed between two restore points of a disk.

use crate::base::error::{Error, Result};
use crate::base::ids::{CollectionId, DiskId, RestorePointId};
use crate::catalog::restore_point::RestorePointRecord;
use crate::chunk_map::reader::DiskRestorePointReader;
use crate::context::Context;

impl Context {
    pub(crate) fn restore_point(&self, id: RestorePointId) -> Result<RestorePointRecord> {
        self.catalog
            .get::<RestorePointRecord>(id.to_bytes())?
            .ok_or_else(|| Error::not_found(format!("restore point {id}")))
    }

    /// A collection's restore points, oldest first.
    pub(crate) fn list_restore_points(&self, collection: CollectionId) -> Result<Vec<RestorePointRecord>> {
        let mut rps: Vec<_> =
            self.catalog.list::<RestorePointRecord>()?.into_iter().filter(|r| r.collection == collection).collect();
        rps.sort_by_key(|r| r.seq);
        Ok(rps)
    }

    pub(crate) fn restore_point_by_name(&self, collection: CollectionId, name: &str) -> Result<RestorePointRecord> {
        self.list_restore_points(collection)?
            .into_iter()
            .find(|r| r.name.as_str() == name)
            .ok_or_else(|| Error::not_found(format!("restore point {name}")))
    }

    /// A reader of one disk restore point of a `Succeeded` restore point, its chunk map
    /// checked against its Merkle root (once per disk restore point while the engine is
    /// open): a reader never serves a map that changed under the restore point.
    pub(crate) fn disk_restore_point(&self, rp: RestorePointId, disk: DiskId) -> Result<DiskRestorePointReader> {
        let reader = self.disk_restore_point_unchecked(rp, disk)?;
        let checked = |s: &Self| s.roots_checked.lock().unwrap_or_else(|p| p.into_inner()).contains(&(rp, disk));
        if !checked(self) {
            reader.check_root()?;
            self.roots_checked.lock().unwrap_or_else(|p| p.into_inner()).insert((rp, disk));
        }
        Ok(reader)
    }

    /// A reader of one disk restore point, its root not checked: for verify, which reports a
    /// mismatch rather than failing, and for reads of the map alone.
    pub(crate) fn disk_restore_point_unchecked(
        &self,
        rp: RestorePointId,
        disk: DiskId,
    ) -> Result<DiskRestorePointReader> {
        DiskRestorePointReader::open(&self.catalog, &self.chunks, rp, disk)
    }

    /// Chunks of `disk` that changed from restore point `from` to restore point `to` (same
    /// disk, `from` older): like EBS ListChangedBlocks.
    pub(crate) fn changed_chunks(&self, from: RestorePointId, to: RestorePointId, disk: DiskId) -> Result<Vec<u64>> {
        let a = self.disk_restore_point_unchecked(from, disk)?;
        let b = self.disk_restore_point_unchecked(to, disk)?;
        if a.base().lineage != b.base().lineage {
            return Err(Error::invalid("from", "the two disk restore points are of different disk histories"));
        }
        if a.base().seq > b.base().seq {
            return Err(Error::invalid("from", "must be older than `to`"));
        }
        b.changed_since(&a)
    }
}
