//! The `tandem-compute` gRPC server: `tandem.v1.ComputeService` over
//! `tandem-core`, with a bounded CPU pool, limits, health, reflection,
//! Prometheus metrics and a bounded drain on shutdown.
//!
//! Everything is here, so a binary is a few lines and tests run the real
//! server in-process:
//!
//! - [`run`] with [`Flags`]: the whole process (what `tandem-compute`'s
//!   `main` calls), serving the built-in ops plus any a team passes in;
//! - [`serve`] with a [`Config`]: just the gRPC server, on a listener and
//!   until a shutdown future resolves (tests, embedding).
//!
//! Security (issue #13): TLS or mTLS on the gRPC port ([`tls`]) and bearer
//! tokens ([`auth`]), their files re-read when they change ([`reload`]);
//! [`Flags::check_security`] refuses a public listen address without them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cli;
mod duration;
pub mod metrics;
pub mod pool;
pub mod reload;
pub mod server;
pub mod service;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use cli::{Flags, run};
pub use server::{CUT_OFF_GRACE, Config, DEFAULT_DRAIN_TIMEOUT, ServeError, serve};
pub use tls::TlsFiles;
