//! The restore point layer: collections, groups and freezes, hooks, creation, capture, deletion,
//! recovery, retention and restore as new disks. Uses every layer above it and the engine's state.

pub(crate) mod capture;
pub(crate) mod collection;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod group;
pub(crate) mod hooks;
pub(crate) mod recover;
pub(crate) mod restore;
pub(crate) mod retention;
