//! Engine records to proto messages, and the enums and policies of requests to engine types.

use cairn_engine::{
    CollectionRecord, ConsistencyMode, DiskRecord, Engine, GroupRecord, OperationKind, OperationRecord, OperationState,
    ProvisioningState, RestorePointRecord, RetentionDecision, RetentionPolicy, ScriptHook, StoreStats,
};
use cairn_proto::v1 as pb;
use tonic::Status;

use crate::errors::invalid;

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
        group_id: if r.source.is_some() { String::new() } else { r.group.to_string() },
        region: r.region.clone(),
        max_restore_points: r.max_restore_points,
        hook: r.hook.as_ref().map(hook),
        created_at_ms: r.created_at_ms,
        restore_point_count: u32::try_from(restore_point_count).unwrap_or(u32::MAX),
        source: r
            .source
            .as_ref()
            .map(|s| pb::CollectionSource { peer: s.peer.clone(), collection: s.collection.clone() }),
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
                merkle_root: d.merkle_root.map(|r| r.to_string()).unwrap_or_default(),
            })
            .collect(),
        excluded_disk_ids: r.excluded_disks.iter().map(ToString::to_string).collect(),
        completed_at_ms: r.completed_at_ms.unwrap_or(0),
        operation_id: r.operation.to_string(),
        instance_view: view,
        merkle_root: r.merkle_root.map(|r| r.to_string()).unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_consistency_mode_names_the_field() {
        let e = consistency_from("consistency_mode", 42).unwrap_err();
        assert!(e.message().contains("consistency_mode"), "{}", e.message());
    }
}
