//! Cairn's gRPC API, package `cairn.v1`, generated from `proto/cairn/v1/*.proto` (generated
//! code only: the daemon converts these types to engine types in one module).
#![forbid(unsafe_code)]

/// Package `cairn.v1`.
pub mod v1 {
    #![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
    tonic::include_proto!("cairn.v1");
}

/// The encoded `FileDescriptorSet` of every Cairn .proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cairn_descriptor.bin"));
