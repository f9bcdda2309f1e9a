//! The store layer: chunk records, deltas, packs and the pack stores, the chunk index, its counters.
//! Uses base, sys and catalog.

pub(crate) mod chunk;
pub(crate) mod chunk_store;
pub(crate) mod counters;
pub(crate) mod delta;
pub mod pack;

pub use pack::{LocalPackStore, PackStore};
