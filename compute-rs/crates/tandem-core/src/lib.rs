//! Tandem's compute core: the op registry, the ops, parameter validation,
//! limits and the error catalogue. No gRPC here: `tandem-compute` serves it
//! over gRPC and `tandem-py` exposes it to Python, byte for byte the same.
//!
//! A team adds its own Rust ops through the public registry API: declare an
//! [`Op`] with [`ParamSpec`]s, add it with [`Registry::with_op`], and serve
//! it with `tandem_compute::run` in a compute binary of its own (see the
//! [`registry`] module and `compute-rs/crates/example-acme-compute`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cancel;
pub mod error;
pub mod ident;
pub mod limits;
pub mod ops;
pub mod params;
pub mod registry;

pub use cancel::{CancelFlag, Ctx};
pub use error::{CatalogueCode, Code, Error, QUOTE_LIMIT, Quoted, Reason, Result};
pub use limits::{Limits, read_capped};
pub use params::{ParamSpec, ParamType, Params};
pub use registry::{
    DefinitionError, JSON, OCTET_STREAM, Op, Output, Pipeline, PipelineOutput, Registry, StepEvent, StepRequest,
    StepStats, catch_panic,
};
