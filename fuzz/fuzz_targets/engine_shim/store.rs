//! `crate::store` of the engine as the fuzz target sees it: the real delta codec.

#[path = "../../../engine/src/store/delta.rs"]
pub mod delta;
