//! The client side of Cairn's gRPC API without the daemon: connecting to a daemon
//! ([`client`]), used by the `cairn` binary (`src/main.rs`) and the end-to-end tests.
#![forbid(unsafe_code)]

pub mod client;
