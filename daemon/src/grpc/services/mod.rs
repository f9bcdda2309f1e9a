//! Owns the Cairn gRPC services, one file per service of `cairn.v1`. Uses the engine, the
//! gRPC conversions and the error table.

pub mod access;
pub mod collections;
pub mod disk_data;
pub mod disks;
pub mod groups;
pub mod operations;
pub mod quiesce;
pub mod restore_points;
pub mod restores;
pub mod store;
