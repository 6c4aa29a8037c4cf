//! `tandem-compute`: the compute gRPC server with the built-in ops. Every
//! flag is also an environment variable (see `--help` and
//! docs/ARCHITECTURE.md). A team's own compute binary is this file with its
//! ops in place of `[]` (see `compute-rs/crates/example-acme-compute`).
#![forbid(unsafe_code)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tandem_compute::run(tandem_compute::Flags::parse(), [])
}
