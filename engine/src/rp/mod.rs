//! The restore point layer: collections, group freezes, hooks, creation, capture, deletion,
//! recovery, retention, restore as new disks, revert in place, and copies between daemons. Each service is a function over the shared
//! [`Context`](crate::context::Context) (creation and revert also take the hook registry); the facade
//! hands its calls on to them. Uses every layer before it but maintenance.

pub(crate) mod capture;
pub(crate) mod collection;
pub(crate) mod copy;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod group;
pub(crate) mod hooks;
pub(crate) mod recover;
pub(crate) mod restore;
pub(crate) mod retention;
pub(crate) mod revert;
