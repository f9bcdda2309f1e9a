//! Restore point collections: all restore points of one group, in one region.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::base::clock::now_ms;
use crate::base::error::{Error, Result};
use crate::base::ids::{CollectionId, GroupId, Name};
use crate::catalog::Record;
use crate::catalog::restore_point::RestorePointRecord;
use crate::context::Context;

/// Largest `max_restore_points` a collection may set.
pub const MAX_RESTORE_POINTS_LIMIT: u32 = 10_000;
/// Default limit of restore points per collection (Azure's).
pub const DEFAULT_MAX_RESTORE_POINTS: u32 = 200;

/// A host script run around the freeze: `command quiesce` before it (stdout's last line may
/// name the consistency reached: `FileSystemConsistent` or `ApplicationConsistent`), and
/// `command thaw` after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptHook {
    /// Program and leading arguments; the phase is appended.
    pub command: Vec<String>,
    pub timeout_ms: u64,
}

/// A collection as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionRecord {
    pub id: CollectionId,
    pub name: Name,
    pub group: GroupId,
    pub region: String,
    pub max_restore_points: u32,
    #[serde(default)]
    pub hook: Option<ScriptHook>,
    pub created_at_ms: u64,
    /// A copy collection: its restore points are copies of restore points of a collection
    /// elsewhere (another daemon's, through a `CopySource`), never captures. Its `group` is an
    /// id of its own that names no group: it keys the collection's creation slot.
    #[serde(default)]
    pub source: Option<CollectionSource>,
}

/// Where a copy collection's restore points come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSource {
    /// The configured peer (a name from the daemon's configuration, never an address).
    pub peer: String,
    /// The collection's name on the peer.
    pub collection: String,
}

impl CollectionRecord {
    /// Fails FailedPrecondition for a copy collection: `what` needs the collection's group.
    pub(crate) fn require_group(&self, what: &str) -> Result<()> {
        match &self.source {
            Some(s) => Err(Error::FailedPrecondition(format!(
                "collection {} is a copy of {}:{}; {what} needs a collection of a local group",
                self.name, s.peer, s.collection
            ))),
            None => Ok(()),
        }
    }
}

impl Record for CollectionRecord {
    const CF: &'static str = "collections";
    fn key(&self) -> [u8; 16] {
        self.id.to_bytes()
    }
}

/// What a caller asks for when creating a collection.
#[derive(Debug, Clone, Default)]
pub struct CreateCollection {
    pub name: String,
    pub group: GroupId,
    /// `None`: this engine's region.
    pub region: Option<String>,
    /// `None`: 200.
    pub max_restore_points: Option<u32>,
    pub hook: Option<ScriptHook>,
}

/// What a caller may change in a collection (its group and region are fixed for life).
#[derive(Debug, Clone, Default)]
pub struct UpdateCollection {
    /// `None`: unchanged. Never below the restore points the collection holds.
    pub max_restore_points: Option<u32>,
    /// `None`: unchanged; `Some(None)`: no hook any more.
    pub hook: Option<Option<ScriptHook>>,
}

/// The limit of restore points a collection may be given.
pub(crate) fn check_max_restore_points(max: u32) -> Result<()> {
    if max == 0 || max > MAX_RESTORE_POINTS_LIMIT {
        return Err(Error::invalid(
            "max_restore_points",
            format!("{max} is not within 1..={MAX_RESTORE_POINTS_LIMIT}"),
        ));
    }
    Ok(())
}

/// A quiesce script hook as a collection may hold it.
pub(crate) fn check_hook(hook: Option<&ScriptHook>) -> Result<()> {
    let Some(h) = hook else { return Ok(()) };
    if h.command.first().is_none_or(|p| p.is_empty()) {
        return Err(Error::invalid("hook.command", "must name a program"));
    }
    if h.timeout_ms == 0 || h.timeout_ms > 3_600_000 {
        return Err(Error::invalid("hook.timeout_ms", format!("{} is not within 1..=3600000", h.timeout_ms)));
    }
    Ok(())
}

/// Changes a collection's limit of restore points and its quiesce hook, as Azure's
/// restorePointCollections CreateOrUpdate does for an existing collection. A limit below
/// the restore points it holds is refused (delete some first); lowering the limit waits
/// for no creation: it is refused while one runs, whose restore point would not be counted.
pub(crate) async fn update_collection(
    ctx: &Arc<Context>,
    id: CollectionId,
    req: UpdateCollection,
) -> Result<CollectionRecord> {
    if let Some(max) = req.max_restore_points {
        check_max_restore_points(max)?;
    }
    if let Some(hook) = &req.hook {
        check_hook(hook.as_ref())?;
    }
    let _admin = ctx.admin.lock().await;
    let mut record = collection(ctx, id)?;
    let lowering = req.max_restore_points.is_some_and(|m| m < record.max_restore_points);
    let _slot = if lowering { Some(ctx.jobs.begin_creation(record.group, record.name.as_str())?) } else { None };
    if let Some(max) = req.max_restore_points {
        let held = ctx.catalog.list::<RestorePointRecord>()?.iter().filter(|r| r.collection == id).count();
        if (max as usize) < held {
            return Err(Error::FailedPrecondition(format!(
                "collection {} holds {held} restore points, more than the max_restore_points {max} asked; delete \
                 some first",
                record.name
            )));
        }
        record.max_restore_points = max;
    }
    if let Some(hook) = req.hook {
        record.hook = hook;
    }
    let mut batch = ctx.catalog.batch();
    batch.put(&record)?;
    ctx.catalog.commit(batch)?;
    tracing::info!(collection = %record.name, max_restore_points = record.max_restore_points, hook = record.hook.is_some(), "collection updated");
    Ok(record)
}

/// This daemon's region.
pub(crate) fn region(ctx: &Arc<Context>) -> &str {
    &ctx.config.region
}

/// Creates a restore point collection for a group (one per group per region).
pub(crate) async fn create_collection(ctx: &Arc<Context>, req: CreateCollection) -> Result<CollectionRecord> {
    let name = Name::new(req.name)?;
    let max = req.max_restore_points.unwrap_or(DEFAULT_MAX_RESTORE_POINTS);
    crate::rp::collection::check_max_restore_points(max)?;
    crate::rp::collection::check_hook(req.hook.as_ref())?;
    let region = match req.region {
        Some(r) => Name::new(r).map_err(|_| Error::invalid("region", "must be a valid name"))?.to_string(),
        None => region(ctx).to_owned(),
    };
    let _admin = ctx.admin.lock().await;
    let group = ctx.group(req.group)?;
    let existing = list_collections(ctx)?;
    if existing.iter().any(|c| c.name == name) {
        return Err(Error::already_exists(format!("collection {name}")));
    }
    if let Some(c) = existing.iter().find(|c| c.group == group.id && c.region == region) {
        return Err(Error::FailedPrecondition(format!(
            "group {} already has collection {} in region {region}",
            group.name, c.name
        )));
    }
    let record = CollectionRecord {
        id: CollectionId::new(),
        name,
        group: group.id,
        region,
        max_restore_points: max,
        hook: req.hook,
        created_at_ms: now_ms(),
        source: None,
    };
    let mut batch = ctx.catalog.batch();
    batch.put(&record)?;
    ctx.catalog.commit(batch)?;
    tracing::info!(collection = %record.name, group = %group.name, "collection created");
    Ok(record)
}

/// Creates a copy collection in this daemon's region: restore points copied from `source`
/// land in it.
pub(crate) async fn create_copy_collection(
    ctx: &Arc<Context>,
    name: &str,
    source: CollectionSource,
    max_restore_points: Option<u32>,
) -> Result<CollectionRecord> {
    let name = Name::new(name)?;
    let max = max_restore_points.unwrap_or(DEFAULT_MAX_RESTORE_POINTS);
    check_max_restore_points(max)?;
    Name::new(&source.peer).map_err(|_| Error::invalid("source.peer", "must be a valid name"))?;
    Name::new(&source.collection).map_err(|_| Error::invalid("source.collection", "must be a valid name"))?;
    let _admin = ctx.admin.lock().await;
    let existing = list_collections(ctx)?;
    if existing.iter().any(|c| c.name == name) {
        return Err(Error::already_exists(format!("collection {name}")));
    }
    if let Some(c) = existing.iter().find(|c| c.source.as_ref() == Some(&source)) {
        return Err(Error::FailedPrecondition(format!(
            "collection {} is already the copy of {}:{}",
            c.name, source.peer, source.collection
        )));
    }
    let record = CollectionRecord {
        id: CollectionId::new(),
        name,
        group: GroupId::new(),
        region: region(ctx).to_owned(),
        max_restore_points: max,
        hook: None,
        created_at_ms: now_ms(),
        source: Some(source),
    };
    let mut batch = ctx.catalog.batch();
    batch.put(&record)?;
    ctx.catalog.commit(batch)?;
    tracing::info!(collection = %record.name, source = ?record.source, "copy collection created");
    Ok(record)
}

pub(crate) fn collection(ctx: &Arc<Context>, id: CollectionId) -> Result<CollectionRecord> {
    ctx.catalog.get::<CollectionRecord>(id.to_bytes())?.ok_or_else(|| Error::not_found(format!("collection {id}")))
}

pub(crate) fn collection_by_name(ctx: &Arc<Context>, name: &str) -> Result<CollectionRecord> {
    list_collections(ctx)?
        .into_iter()
        .find(|c| c.name.as_str() == name)
        .ok_or_else(|| Error::not_found(format!("collection {name}")))
}

pub(crate) fn list_collections(ctx: &Arc<Context>) -> Result<Vec<CollectionRecord>> {
    ctx.catalog.list::<CollectionRecord>()
}

/// Deletes a collection. With restore points in it, refused unless `cascade`, which
/// deletes them all (their chunk map entries and references) in the same batch.
pub(crate) async fn delete_collection(ctx: &Arc<Context>, id: CollectionId, cascade: bool) -> Result<()> {
    let _admin = ctx.admin.lock().await;
    let coll = collection(ctx, id)?;
    let _slot = ctx.jobs.begin_creation(coll.group, coll.name.as_str())?;
    let rps = ctx.list_restore_points(id)?;
    if !rps.is_empty() && !cascade {
        return Err(Error::FailedPrecondition(format!(
            "collection {} holds {} restore points; delete them first or cascade",
            coll.name,
            rps.len()
        )));
    }
    if let Some((rp, dependent)) = super::delete::restore_point_in_use_as_base(ctx, &rps)? {
        return Err(Error::FailedPrecondition(format!(
            "restore point {} is the origin of restored disk history {dependent} (a restored disk or its restore \
             points); delete those first",
            rp.name
        )));
    }
    // Newest first, each deletion its own batch: a crash midway leaves a smaller,
    // consistent collection, and the call can simply be repeated.
    for rp in rps.iter().rev() {
        super::delete::delete_restore_point_locked(ctx, rp).await?;
    }
    let mut batch = ctx.catalog.batch();
    batch.delete::<CollectionRecord>(id.to_bytes())?;
    ctx.catalog.commit(batch)?;
    tracing::info!(collection = %coll.name, restore_points = rps.len(), "collection deleted");
    Ok(())
}
