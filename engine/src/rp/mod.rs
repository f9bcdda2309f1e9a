//! Restore points: collections, groups and their freeze, quiesce hooks, creation, capture,
//! deletion, recovery, retention and restore as new disks.

pub(crate) mod collection;
pub(crate) mod group;
pub(crate) mod hooks;
pub(crate) mod restore;
pub(crate) mod restore_point;
pub(crate) mod restore_points;
pub mod retention;
