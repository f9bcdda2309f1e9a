//! The system layer: the unsafe system calls the engine needs beyond `std` (see below).
//! Uses nothing else of the engine.
//!
//! Thin, safe wrappers over the few system facilities the engine needs beyond `std`:
//! aligned I/O buffers, atomic words over a shared file mapping, hole punching,
//! preallocation and SEEK_DATA/SEEK_HOLE, early writeback, the idle scheduling policy. The only `unsafe` outside `io/uring.rs` lives here.

mod buf;
mod fs;
mod mapped_words;
mod sched;
mod writeback;

pub use buf::IoBuf;
pub(crate) use fs::{
    advise_random, allocate, allocate_if_sparse, allocated_bytes, create_dir_durable, next_data, next_hole, punch_hole,
    read_cached, sync_dir, will_need,
};
pub(crate) use mapped_words::MappedWords;
pub(crate) use sched::{critical, enter_idle};
pub(crate) use writeback::start_writeback;
