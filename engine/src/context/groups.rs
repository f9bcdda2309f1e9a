//! Groups on the context: create, change, look up, list, delete, with their disks' membership
//! committed in the same batch.

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::ids::{DiskId, GroupId, Name};
use crate::catalog::group::{CreateGroup, GroupRecord, check_configuration};
use crate::context::{Context, State};

impl Context {
    fn check_members(&self, state: &State, group: Option<GroupId>, disks: &[DiskId]) -> Result<()> {
        for (i, id) in disks.iter().enumerate() {
            if disks[..i].contains(id) {
                return Err(Error::invalid("disks", format!("disk {id} is listed twice")));
            }
            let entry = state.disks.get(id).ok_or_else(|| Error::not_found(format!("disk {id}")))?;
            if let Some(other) = entry.group
                && Some(other) != group
            {
                let other = state.groups.get(&other).map_or_else(|| other.to_string(), |g| g.name.to_string());
                return Err(Error::FailedPrecondition(format!(
                    "disk {} already belongs to group {other}",
                    entry.disk.name()
                )));
            }
        }
        Ok(())
    }

    /// Creates a group of disks with its configuration document.
    pub(crate) async fn create_group(&self, req: CreateGroup) -> Result<GroupRecord> {
        let name = Name::new(req.name)?;
        check_configuration(&req.configuration)?;
        let _admin = self.admin.lock().await;
        let record = GroupRecord {
            id: GroupId::new(),
            name,
            disks: req.disks,
            configuration: req.configuration,
            created_at_ms: now_ms(),
        };
        {
            let state = self.state();
            if state.group_named(record.name.as_str()).is_some() {
                return Err(Error::already_exists(format!("group {}", record.name)));
            }
            self.check_members(&state, None, &record.disks)?;
        }
        self.commit_group(&record, &[])?;
        tracing::info!(group = %record.name, id = %record.id, disks = record.disks.len(), "group created");
        Ok(record)
    }

    /// Replaces a group's disks and/or configuration.
    pub(crate) async fn update_group(
        &self,
        id: GroupId,
        disks: Option<Vec<DiskId>>,
        configuration: Option<String>,
    ) -> Result<GroupRecord> {
        if let Some(doc) = &configuration {
            check_configuration(doc)?;
        }
        let _admin = self.admin.lock().await;
        let old = self.group(id)?;
        let mut record = old.clone();
        if let Some(disks) = disks {
            self.check_members(&self.state(), Some(id), &disks)?;
            record.disks = disks;
        }
        if let Some(doc) = configuration {
            record.configuration = doc;
        }
        let left: Vec<DiskId> = old.disks.iter().filter(|d| !record.disks.contains(d)).copied().collect();
        self.commit_group(&record, &left)?;
        Ok(record)
    }

    /// Writes a group record, sets its disks' membership and clears that of `left`, atomically.
    fn commit_group(&self, record: &GroupRecord, left: &[DiskId]) -> Result<()> {
        let mut batch = self.catalog.batch();
        batch.put(record)?;
        let mut changed = Vec::new();
        {
            let state = self.state();
            for (id, group) in record.disks.iter().map(|d| (*d, Some(record.id))).chain(left.iter().map(|d| (*d, None)))
            {
                let mut r = state.record(id).ok_or_else(|| Error::not_found(format!("disk {id}")))?;
                r.group = group;
                batch.put(&r)?;
                changed.push((id, group));
            }
        }
        self.catalog.commit(batch)?;
        let mut state = self.state_mut();
        for (id, group) in changed {
            if let Some(e) = state.disks.get_mut(&id) {
                e.group = group;
            }
        }
        state.groups.insert(record.id, record.clone());
        Ok(())
    }

    /// A group by id.
    pub(crate) fn group(&self, id: GroupId) -> Result<GroupRecord> {
        self.state().groups.get(&id).cloned().ok_or_else(|| Error::not_found(format!("group {id}")))
    }

    /// A group by name.
    pub(crate) fn group_by_name(&self, name: &str) -> Result<GroupRecord> {
        let state = self.state();
        let id = state.group_named(name).ok_or_else(|| Error::not_found(format!("group {name}")))?;
        state.groups.get(&id).cloned().ok_or_else(|| Error::not_found(format!("group {name}")))
    }

    /// Every group, by id.
    pub(crate) fn list_groups(&self) -> Vec<GroupRecord> {
        self.state().groups.values().cloned().collect()
    }

    /// Deletes a group; its disks stay, outside any group.
    pub(crate) async fn delete_group(&self, id: GroupId) -> Result<()> {
        let _admin = self.admin.lock().await;
        let record = self.group(id)?;
        let mut batch = self.catalog.batch();
        batch.delete::<GroupRecord>(id.to_bytes())?;
        {
            let state = self.state();
            for d in &record.disks {
                if let Some(mut r) = state.record(*d) {
                    r.group = None;
                    batch.put(&r)?;
                }
            }
        }
        self.catalog.commit(batch)?;
        let mut state = self.state_mut();
        for d in &record.disks {
            if let Some(e) = state.disks.get_mut(d) {
                e.group = None;
            }
        }
        state.groups.remove(&id);
        tracing::info!(group = %record.name, %id, "group deleted");
        Ok(())
    }
}
