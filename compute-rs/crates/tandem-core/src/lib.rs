//! Tandem's compute core: the op registry, the ops, parameter validation,
//! limits and the error catalogue. No gRPC here: `tandem-compute` serves it
//! over gRPC and `tandem-py` exposes it to Python, byte for byte the same.
#![forbid(unsafe_code)]

pub mod cancel;
pub mod error;
pub mod limits;
pub mod ops;
pub mod params;
pub mod registry;

pub use cancel::{CancelFlag, Ctx};
pub use error::{CatalogueCode, Code, Error, QUOTE_LIMIT, Quoted, Reason, Result};
pub use limits::Limits;
pub use params::{ParamSpec, ParamType, Params};
pub use registry::{Op, Output, Pipeline, PipelineOutput, Registry, StepRequest, StepStats, catch_panic};
