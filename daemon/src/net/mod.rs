//! Owns how cairnd meets the network: listen addresses and binding, the security rules every
//! listener binds under, TLS, and the gRPC bearer token. Uses no other module of the daemon.

pub mod listen;
pub mod security;
pub mod tls;
pub mod token;
