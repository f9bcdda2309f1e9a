//! What Cairn's tests share: the end-to-end tests (`tests/`), the daemon's unit tests and the
//! benchmarks. It drives processes, sockets and a FUSE file system (`powerloss`) and links no
//! RocksDB: helpers that open an engine in-process stay with the end-to-end tests
//! (`tests/common.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    reason = "test code: a failure should stop the test loudly"
)]

pub mod child;
mod clients;
mod daemon;
mod grpc;
mod image;
pub mod loopfs;
pub mod nbd;
pub mod pki;
pub mod powerloss;

pub use clients::*;
pub use daemon::*;
pub use grpc::*;
pub use image::*;
