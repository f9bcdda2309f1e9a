//! The one module where proto types meet engine types: records to messages, enums both ways,
//! and request fields that name a resource (an id or a name) to engine ids.

use cairn_engine::{
    CollectionId, CollectionRecord, ConsistencyMode, DiskId, DiskRecord, Engine, GroupId, GroupRecord, OperationId,
    OperationKind, OperationRecord, OperationState, ProvisioningState, RestorePointId, RestorePointRecord,
    RetentionDecision, RetentionPolicy, ScriptHook, StoreStats,
};
use cairn_proto::v1 as pb;
use tonic::Status;

use crate::errors::{grpc_status, invalid};

// ---- records to messages -----------------------------------------------------------------

pub fn disk(engine: &Engine, r: &DiskRecord) -> pb::Disk {
    let allocated_bytes = engine.disk(r.id).and_then(|d| d.allocated_bytes()).unwrap_or(0);
    pb::Disk {
        id: r.id.to_string(),
        name: r.name.to_string(),
        size_bytes: r.size_bytes,
        chunk_size_bytes: r.chunk_size_bytes,
        direct_io: r.direct_io,
        group_id: r.group.map(|g| g.to_string()).unwrap_or_default(),
        created_at_ms: r.created_at_ms,
        source: r
            .source
            .as_ref()
            .map(|s| pb::DiskSource { restore_point_id: s.restore_point.to_string(), disk_id: s.disk.to_string() }),
        hydrated: r.hydrated,
        allocated_bytes,
    }
}

pub fn group(r: &GroupRecord) -> pb::Group {
    pb::Group {
        id: r.id.to_string(),
        name: r.name.to_string(),
        disk_ids: r.disks.iter().map(ToString::to_string).collect(),
        configuration: r.configuration.clone(),
        created_at_ms: r.created_at_ms,
    }
}

pub fn hook(h: &ScriptHook) -> pb::ScriptHook {
    pb::ScriptHook { command: h.command.clone(), timeout_ms: h.timeout_ms }
}

pub fn collection(r: &CollectionRecord, restore_point_count: usize) -> pb::Collection {
    pb::Collection {
        id: r.id.to_string(),
        name: r.name.to_string(),
        group_id: r.group.to_string(),
        region: r.region.clone(),
        max_restore_points: r.max_restore_points,
        hook: r.hook.as_ref().map(hook),
        created_at_ms: r.created_at_ms,
        restore_point_count: u32::try_from(restore_point_count).unwrap_or(u32::MAX),
    }
}

pub fn consistency(m: ConsistencyMode) -> pb::ConsistencyMode {
    match m {
        ConsistencyMode::CrashConsistent => pb::ConsistencyMode::CrashConsistent,
        ConsistencyMode::FileSystemConsistent => pb::ConsistencyMode::FileSystemConsistent,
        ConsistencyMode::ApplicationConsistent => pb::ConsistencyMode::ApplicationConsistent,
    }
}

/// A requested consistency mode; unspecified means crash consistent.
pub fn consistency_from(field: &str, v: i32) -> Result<ConsistencyMode, Status> {
    match pb::ConsistencyMode::try_from(v) {
        Ok(pb::ConsistencyMode::Unspecified | pb::ConsistencyMode::CrashConsistent) => {
            Ok(ConsistencyMode::CrashConsistent)
        }
        Ok(pb::ConsistencyMode::FileSystemConsistent) => Ok(ConsistencyMode::FileSystemConsistent),
        Ok(pb::ConsistencyMode::ApplicationConsistent) => Ok(ConsistencyMode::ApplicationConsistent),
        Err(_) => Err(invalid(field, format!("{v} is not a consistency mode"))),
    }
}

pub fn restore_point(r: &RestorePointRecord, view: Option<pb::RestorePointInstanceView>) -> pb::RestorePoint {
    let (state, failure_reason) = match &r.state {
        ProvisioningState::Creating => (pb::ProvisioningState::Creating, String::new()),
        ProvisioningState::Succeeded => (pb::ProvisioningState::Succeeded, String::new()),
        ProvisioningState::Failed { reason } => (pb::ProvisioningState::Failed, reason.clone()),
    };
    pb::RestorePoint {
        id: r.id.to_string(),
        name: r.name.to_string(),
        collection_id: r.collection.to_string(),
        description: r.description.clone(),
        seq: r.seq,
        created_at_ms: r.created_at_ms,
        provisioning_state: state.into(),
        failure_reason,
        consistency_mode_requested: consistency(r.consistency_requested).into(),
        consistency_mode: consistency(r.consistency_achieved).into(),
        consistency_note: r.consistency_note.clone().unwrap_or_default(),
        freeze_window_us: r.freeze_window_us,
        configuration: r.configuration.clone(),
        disks: r
            .disks
            .iter()
            .map(|d| pb::DiskRestorePoint {
                disk_id: d.disk.to_string(),
                disk_name: d.disk_name.to_string(),
                size_bytes: d.size_bytes,
                chunk_size_bytes: d.chunk_size_bytes,
                full_scan: d.full_scan,
                chunks_captured: d.chunks_captured,
                chunks_new: d.chunks_new,
                chunks_deduplicated: d.chunks_deduplicated,
                chunks_zero: d.chunks_zero,
                chunks_delta: d.chunks_delta,
                bytes_stored: d.bytes_stored,
                bytes_captured: d.bytes_captured,
            })
            .collect(),
        excluded_disk_ids: r.excluded_disks.iter().map(ToString::to_string).collect(),
        completed_at_ms: r.completed_at_ms.unwrap_or(0),
        operation_id: r.operation.to_string(),
        instance_view: view,
    }
}

/// Per-disk progress of a restore point, with its capture operation when still known.
pub fn instance_view(r: &RestorePointRecord, op: Option<&OperationRecord>) -> pb::RestorePointInstanceView {
    pb::RestorePointInstanceView {
        disks: r
            .disks
            .iter()
            .map(|d| pb::DiskRestorePointInstanceView {
                disk_id: d.disk.to_string(),
                disk_name: d.disk_name.to_string(),
                bytes_done: d.bytes_done,
                bytes_total: d.bytes_total,
                percent: percent(d.bytes_done, d.bytes_total, r.state != ProvisioningState::Creating),
            })
            .collect(),
        operation: op.map(operation),
    }
}

fn percent(done: u64, total: u64, ended: bool) -> f64 {
    if total == 0 {
        return if ended { 100.0 } else { 0.0 };
    }
    #[allow(clippy::cast_precision_loss, reason = "a percentage")]
    let p = done as f64 * 100.0 / total as f64;
    p.min(100.0)
}

pub fn operation(r: &OperationRecord) -> pb::Operation {
    let kind = match r.kind {
        OperationKind::Capture => pb::OperationKind::Capture,
        OperationKind::Hydration => pb::OperationKind::Hydration,
        OperationKind::Copy => pb::OperationKind::Copy,
        OperationKind::Gc => pb::OperationKind::Gc,
        OperationKind::Verify => pb::OperationKind::Verify,
    };
    let (state, error) = match &r.state {
        OperationState::Running => (pb::OperationState::Running, String::new()),
        OperationState::Succeeded => (pb::OperationState::Succeeded, String::new()),
        OperationState::Failed { error } => (pb::OperationState::Failed, error.clone()),
        OperationState::Canceled => (pb::OperationState::Canceled, String::new()),
    };
    pb::Operation {
        id: r.id.to_string(),
        kind: kind.into(),
        target: r.target.clone(),
        state: state.into(),
        percent: r.percent(),
        bytes_done: r.bytes_done,
        bytes_total: r.bytes_total,
        error,
        paused_reason: r.paused.clone().unwrap_or_default(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        result_json: r.result.as_ref().map(ToString::to_string).unwrap_or_default(),
        note: r.note.clone().unwrap_or_default(),
    }
}

pub fn store_stats(s: &StoreStats) -> pb::StoreStats {
    pb::StoreStats {
        records: s.records,
        record_bytes: s.record_bytes,
        referenced_records: s.referenced_records,
        referenced_bytes: s.referenced_bytes,
        references: s.references,
        packs: s.packs,
        pack_bytes: s.pack_bytes,
    }
}

/// A requested retention policy; a missing policy keeps nothing (which the engine refuses).
pub fn retention_policy(p: Option<&pb::RetentionPolicy>) -> RetentionPolicy {
    p.map_or_else(RetentionPolicy::default, |p| RetentionPolicy {
        keep_last: p.keep_last,
        keep_daily: p.keep_daily,
        keep_weekly: p.keep_weekly,
        keep_monthly: p.keep_monthly,
    })
}

pub fn retention_decision(d: &RetentionDecision) -> pb::RetentionDecision {
    pb::RetentionDecision {
        restore_point_id: d.restore_point.to_string(),
        name: d.name.clone(),
        created_at_ms: d.created_at_ms,
        keep: d.keep,
        reasons: d.reasons.clone(),
    }
}

// ---- request fields naming resources -----------------------------------------------------

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

// ---- paging ------------------------------------------------------------------------------

/// Default and largest page sizes of list calls.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
pub const MAX_PAGE_SIZE: usize = 10_000;

/// One page of `items`: the page token is the offset of the page's first item.
pub fn page<T>(items: Vec<T>, page_size: u32, page_token: &str) -> Result<(Vec<T>, String), Status> {
    let size = match usize::try_from(page_size).unwrap_or(usize::MAX) {
        0 => DEFAULT_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => return Err(invalid("page_size", format!("{n} is larger than {MAX_PAGE_SIZE}"))),
        n => n,
    };
    let start = if page_token.is_empty() {
        0
    } else {
        page_token
            .parse::<usize>()
            .ok()
            .filter(|&s| s <= items.len())
            .ok_or_else(|| invalid("page_token", format!("{page_token:?} is not a token this list returned")))?
    };
    let end = start.saturating_add(size).min(items.len());
    let next = if end < items.len() { end.to_string() } else { String::new() };
    Ok((items.into_iter().skip(start).take(end - start).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_the_whole_list() {
        let (a, t) = page((0..5).collect(), 2, "").unwrap();
        assert_eq!((a, t.as_str()), (vec![0, 1], "2"));
        let (b, t) = page((0..5).collect(), 2, &t).unwrap();
        assert_eq!((b, t.as_str()), (vec![2, 3], "4"));
        let (c, t) = page((0..5).collect(), 2, &t).unwrap();
        assert_eq!((c, t.as_str()), (vec![4], ""));
    }

    #[test]
    fn bad_page_token_and_size_are_invalid_arguments() {
        assert_eq!(page::<u8>(vec![], 0, "x").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(page::<u8>(vec![], 0, "9").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(page::<u8>(vec![], 20_000, "").unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn unknown_consistency_mode_names_the_field() {
        let e = consistency_from("consistency_mode", 42).unwrap_err();
        assert!(e.message().contains("consistency_mode"), "{}", e.message());
    }
}
