//! Owns cairnd's HTTP endpoint: its listener and routes, `/healthz` and `/metrics`. Uses the
//! engine, `net` and `errors`.

pub mod metrics;
mod routes;

pub use routes::{DEFAULT_HTTP_ADDR, HttpListener, ListenError};
