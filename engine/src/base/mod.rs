//! The base layer: errors, ids, the on-disk formats and failpoints. Uses nothing else of
//! the engine.

pub mod error;
#[doc(hidden)]
pub mod failpoint;
pub mod format;
pub(crate) mod ids;
pub(crate) mod stats;
