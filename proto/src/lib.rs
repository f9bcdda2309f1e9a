//! Cairn's gRPC API, package `cairn.v1`, generated from `proto/cairn/v1/*.proto` (generated
//! code: the daemon converts these types to engine types in one module), plus the two
//! conventions both ends of the API share by hand: the bearer token ([`token`]) and size
//! strings ([`size`]), so that cairnd and the `cairn` CLI need nothing else in common.
#![forbid(unsafe_code)]

pub mod size;
pub mod token;

/// Package `cairn.v1`.
pub mod v1 {
    #![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
    tonic::include_proto!("cairn.v1");
}

/// The encoded `FileDescriptorSet` of every Cairn .proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cairn_descriptor.bin"));
