//! The `tandem-compute` gRPC server: `tandem.v1.ComputeService` over
//! `tandem-core`, with a bounded CPU pool, limits, health, reflection and
//! Prometheus metrics. `main.rs` parses flags; everything else is here so
//! tests can run the real server in-process.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod pool;
pub mod server;
pub mod service;
pub mod status;

pub use server::{Config, serve};
