//! The restore point layer: collections, group freezes, hooks, creation, capture, deletion,
//! recovery, retention and restore as new disks. Each service is a function over the shared
//! [`Context`](crate::context::Context) (creation also takes the hook registry); the facade
//! hands its calls on to them. Uses every layer before it but maintenance.

pub(crate) mod capture;
pub(crate) mod collection;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod group;
pub(crate) mod hooks;
pub(crate) mod recover;
pub(crate) mod restore;
pub(crate) mod retention;
