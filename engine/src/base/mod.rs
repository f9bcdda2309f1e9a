//! The base layer: errors, ids, the clock, every on-disk format and catalog key, failpoints.
//! Uses nothing else of the engine.

pub(crate) mod clock;
pub mod error;
#[doc(hidden)]
pub mod failpoint;
pub mod format;
pub(crate) mod ids;
pub mod merkle;
pub(crate) mod stats;
