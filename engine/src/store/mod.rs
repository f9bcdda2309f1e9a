//! The chunk store: chunk records, deltas, packs and where they live, the index, its
//! counters, GC and verification.

pub(crate) mod chunk;
pub(crate) mod chunk_store;
pub(crate) mod counters;
pub(crate) mod delta;
pub(crate) mod gc;
pub mod pack;
pub(crate) mod verify;

pub use pack::{LocalPackStore, PackStore};
