//! Generated code for the `tandem.v1` protobuf package (see `proto/tandem/v1`).
#![forbid(unsafe_code)]

/// `tandem.v1`: ComputeService, JobService and their messages.
pub mod v1 {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("tandem.v1");
}

/// The encoded `FileDescriptorSet` of `tandem/v1/compute.proto` and its
/// imports (not `jobs.proto`), custom options kept: what tandem-compute's
/// server reflection describes.
pub const COMPUTE_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/compute_descriptor.bin"));
