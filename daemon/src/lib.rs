//! The Cairn daemon's protocol adapters: each maps one wire protocol onto engine calls and
//! never touches files or RocksDB itself. The `cairnd` binary wires them to an engine.
#![forbid(unsafe_code)]

pub mod config;
pub mod errors;
pub mod grpc;
pub mod http;
pub mod nbd;
pub mod net;
