//! Owns Cairn's gRPC API (package `cairn.v1`): the server and its listener, the services, and
//! the one module where proto types meet engine types. Uses the engine, `net` and `errors`.
//!
//! - [`server`]: every service plus the standard health service and server reflection, with
//!   the bearer token ([`crate::net::token`]) demanded by all but health, and the listener.
//! - [`services`]: one module per service, and what they share: the [`Context`] they hold
//!   and the guard every handler runs under, so a panic becomes INTERNAL for that call and
//!   never takes the connection or the daemon down.
//! - [`convert`]: records to messages, enums both ways, request fields to engine ids;
//!   engine errors become gRPC codes in [`crate::errors`].
//!
//! Long-running calls (restore point creation, restores, GC, verify) return their operation at
//! once. Streams end when the daemon shuts down.

pub mod convert;
pub mod server;
pub mod services;

pub use server::{GrpcAddr, GrpcListener, ListenError, routes};
pub use services::Context;
