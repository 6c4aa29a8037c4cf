//! Generated code for the `tandem.v1` protobuf package (see `proto/tandem/v1`).
#![forbid(unsafe_code)]

/// `tandem.v1`: ComputeService, JobService and their messages.
pub mod v1 {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("tandem.v1");
}

/// The encoded `FileDescriptorSet` of every file in `proto/tandem/v1` (with
/// imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tandem_descriptor.bin"));
