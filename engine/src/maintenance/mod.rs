//! The maintenance layer: GC, verify, and the upkeep of operation records, as engine jobs.
//! Uses every layer above it and the engine's state.

pub(crate) mod gc;
pub(crate) mod operations;
pub(crate) mod verify;
