//! Request fields that name a resource (its id or its name) to engine ids and records.

use cairn_engine::{
    CollectionId, CollectionRecord, DiskId, Engine, GroupId, OperationId, RestorePointId, RestorePointRecord,
};
use tonic::Status;

use crate::errors::{grpc_status, invalid};

fn required<'a>(field: &str, what: &str, s: &'a str) -> Result<&'a str, Status> {
    let s = s.trim();
    if s.is_empty() {
        return Err(invalid(field, format!("must name a {what} (its id or name)")));
    }
    Ok(s)
}

fn uuid(s: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(s).ok()
}

/// A live disk named by id or name.
pub fn disk_id(engine: &Engine, field: &str, s: &str) -> Result<DiskId, Status> {
    let s = required(field, "disk", s)?;
    match uuid(s) {
        Some(u) => Ok(DiskId::from(u)),
        None => engine.disk_by_name(s).map(|d| d.id()).map_err(grpc_status),
    }
}

pub fn group_id(engine: &Engine, field: &str, s: &str) -> Result<GroupId, Status> {
    let s = required(field, "group", s)?;
    match uuid(s) {
        Some(u) => Ok(GroupId::from(u)),
        None => engine.group_by_name(s).map(|g| g.id).map_err(grpc_status),
    }
}

pub fn collection_record(engine: &Engine, field: &str, s: &str) -> Result<CollectionRecord, Status> {
    let s = required(field, "collection", s)?;
    match uuid(s) {
        Some(u) => engine.collection(CollectionId::from(u)).map_err(grpc_status),
        None => engine.collection_by_name(s).map_err(grpc_status),
    }
}

/// A restore point named by id (the collection may then be empty) or by name in its
/// collection.
pub fn restore_point_record(
    engine: &Engine,
    collection: &str,
    restore_point: &str,
) -> Result<RestorePointRecord, Status> {
    restore_point_in(engine, ("collection", collection), ("restore_point", restore_point))
}

/// Like [`restore_point_record`], for requests whose fields have other names:
/// `(field, value)` of the collection and of the restore point.
pub fn restore_point_in(
    engine: &Engine,
    (collection_field, collection): (&str, &str),
    (field, restore_point): (&str, &str),
) -> Result<RestorePointRecord, Status> {
    let rp = required(field, "restore point", restore_point)?;
    if let Some(u) = uuid(rp) {
        let record = engine.restore_point(RestorePointId::from(u)).map_err(grpc_status)?;
        if !collection.trim().is_empty() {
            let coll = collection_record(engine, collection_field, collection)?;
            if coll.id != record.collection {
                return Err(Status::not_found(format!("restore point {rp} not found in collection {}", coll.name)));
            }
        }
        return Ok(record);
    }
    let coll = collection_record(engine, collection_field, collection)?;
    engine.restore_point_by_name(coll.id, rp).map_err(grpc_status)
}

/// A disk of a restore point, by its id or its name at capture time.
pub fn restore_point_disk(r: &RestorePointRecord, field: &str, s: &str) -> Result<DiskId, Status> {
    let s = required(field, "disk", s)?;
    r.disks
        .iter()
        .find(|d| d.disk.to_string() == s || d.disk_name.as_str() == s)
        .map(|d| d.disk)
        .ok_or_else(|| Status::not_found(format!("disk {s} not found in restore point {}", r.name)))
}

pub fn operation_id(field: &str, s: &str) -> Result<OperationId, Status> {
    let s = s.trim();
    uuid(s).map(OperationId::from).ok_or_else(|| invalid(field, format!("{s:?} is not an operation id (a UUID)")))
}
