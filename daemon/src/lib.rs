//! The Cairn daemon's protocol adapters: each maps one wire protocol onto engine calls and
//! never touches files or RocksDB itself. The `cairnd` binary wires them to an engine.
//!
//! Modules, each using only those below it (and the engine):
//! - [`grpc`], [`nbd`], [`http`]: the three protocols, side by side; none uses another.
//! - [`errors`]: the one table of how an engine error appears on each protocol (it names
//!   NBD errnos by [`nbd::codec`]'s type, a pure module that uses nothing of the daemon).
//! - [`net`]: listen addresses, the security rules every listener binds under, TLS and the
//!   gRPC bearer token.
//! - [`config`]: cairnd's config file.
//! - [`replication`]: the configured peers, the replication service served to them and the
//!   client copies pull through (gRPC, like [`grpc`], on a listener of its own).
#![forbid(unsafe_code)]

pub mod config;
pub mod errors;
pub mod grpc;
pub mod http;
pub mod nbd;
pub mod net;
pub mod replication;
