//! Restore points and disk restore points: records and their read view.

use serde::{Deserialize, Serialize};

use crate::base::ids::{CollectionId, DiskId, LineageId, Name, RestorePointId};
use crate::base::merkle::{self, Root};
use crate::catalog::Record;

/// Consistency levels, as Azure names them; ordered from weakest to strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub enum ConsistencyMode {
    /// Writes frozen across the group: what a power cut would leave, on every disk at once.
    #[default]
    CrashConsistent,
    /// Guest file systems frozen first.
    FileSystemConsistent,
    /// Applications flushed first.
    ApplicationConsistent,
}

impl std::str::FromStr for ConsistencyMode {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "CrashConsistent" | "crash" => Ok(Self::CrashConsistent),
            "FileSystemConsistent" | "filesystem" => Ok(Self::FileSystemConsistent),
            "ApplicationConsistent" | "application" => Ok(Self::ApplicationConsistent),
            other => Err(crate::Error::invalid(
                "consistency_mode",
                format!("{other:?}; expected CrashConsistent, FileSystemConsistent or ApplicationConsistent"),
            )),
        }
    }
}

/// Provisioning state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProvisioningState {
    Creating,
    Succeeded,
    Failed { reason: String },
}

/// Where a lineage starts: the disk restore point a restored disk was created from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageBase {
    pub lineage: LineageId,
    pub seq: u64,
}

/// One disk's part of a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRestorePoint {
    pub disk: DiskId,
    pub disk_name: Name,
    pub lineage: LineageId,
    /// The lineage's base (restored disks), for chunks the lineage never stored.
    #[serde(default)]
    pub base: Option<LineageBase>,
    pub size_bytes: u64,
    pub chunk_size_bytes: u64,
    /// Every chunk was read (first restore point, or change tracking was untrusted).
    pub full_scan: bool,
    /// Chunks captured (dirty in this increment).
    pub chunks_captured: u64,
    /// Chunks stored anew as full chunks (not found in the store).
    pub chunks_new: u64,
    /// Chunks found in the store already.
    pub chunks_deduplicated: u64,
    /// Chunks found all zeros.
    pub chunks_zero: u64,
    /// Chunks stored as deltas over an earlier full chunk.
    #[serde(default)]
    pub chunks_delta: u64,
    /// Bytes written to packs for this disk (compressed, with record headers).
    pub bytes_stored: u64,
    /// Raw bytes captured.
    pub bytes_captured: u64,
    /// Progress: raw bytes processed of the total to capture.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Change-tracking epoch this restore point closed on the disk.
    pub epoch: u64,
    /// The Merkle root of its content (see `base::merkle`), set when the capture succeeds.
    #[serde(default)]
    pub merkle_root: Option<Root>,
}

/// A restore point as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePointRecord {
    pub id: RestorePointId,
    pub name: Name,
    pub collection: CollectionId,
    pub description: String,
    /// Cut sequence number, shared by all its disk restore points.
    pub seq: u64,
    pub created_at_ms: u64,
    pub state: ProvisioningState,
    pub consistency_requested: ConsistencyMode,
    /// What was actually achieved (hooks may have failed or timed out).
    pub consistency_achieved: ConsistencyMode,
    /// Why the achieved level is below the requested one, if it is.
    #[serde(default)]
    pub consistency_note: Option<String>,
    /// Writes were blocked this long, in microseconds.
    pub freeze_window_us: u64,
    /// The group's configuration document at the freeze.
    pub configuration: String,
    pub disks: Vec<DiskRestorePoint>,
    pub excluded_disks: Vec<DiskId>,
    pub completed_at_ms: Option<u64>,
    /// The capture operation.
    pub operation: crate::base::ids::OperationId,
    /// The Merkle root over its configuration and its disks' roots, set when it succeeds.
    #[serde(default)]
    pub merkle_root: Option<Root>,
}

impl RestorePointRecord {
    /// The root its configuration and its disks' recorded roots make; `None` while a disk
    /// has none.
    pub fn root_of_disks(&self) -> Option<Root> {
        let disks: Option<Vec<(&str, Root)>> =
            self.disks.iter().map(|d| d.merkle_root.map(|r| (d.disk_name.as_str(), r))).collect();
        Some(merkle::restore_point_root(&self.configuration, disks?.into_iter()))
    }
}

impl Record for RestorePointRecord {
    const CF: &'static str = "restore_points";
    fn key(&self) -> [u8; 16] {
        self.id.to_bytes()
    }
}

/// What a caller asks for when creating a restore point.
#[derive(Debug, Clone, Default)]
pub struct CreateRestorePoint {
    pub name: String,
    pub description: String,
    pub exclude_disks: Vec<DiskId>,
    pub consistency: ConsistencyMode,
}
