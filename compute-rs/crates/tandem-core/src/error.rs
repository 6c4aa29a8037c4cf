//! The one error type of the core. Each variant knows its `ErrorReason`
//! (named as in `proto/tandem/v1/errors.proto`), its gRPC status code and the
//! ErrorInfo metadata it carries. The message is the `Display` text, which is
//! what the gRPC status message and the Python exception both show.

use std::collections::BTreeMap;
use std::fmt;

/// Mirror of `tandem.v1.ErrorReason`; `as_str` is the proto enum value name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    UnknownOp,
    ParamInvalid,
    ParamOutOfRange,
    PayloadTooLarge,
    InputCorrupt,
    OutputTooLarge,
    RequestInvalid,
    Overloaded,
    Timeout,
    ShuttingDown,
    Cancelled,
    InternalError,
    InjectedFault,
}

impl Reason {
    /// The `ErrorReason` enum value name, e.g. `"UNKNOWN_OP"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownOp => "UNKNOWN_OP",
            Reason::ParamInvalid => "PARAM_INVALID",
            Reason::ParamOutOfRange => "PARAM_OUT_OF_RANGE",
            Reason::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Reason::InputCorrupt => "INPUT_CORRUPT",
            Reason::OutputTooLarge => "OUTPUT_TOO_LARGE",
            Reason::RequestInvalid => "REQUEST_INVALID",
            Reason::Overloaded => "OVERLOADED",
            Reason::Timeout => "TIMEOUT",
            Reason::ShuttingDown => "SHUTTING_DOWN",
            Reason::Cancelled => "CANCELLED",
            Reason::InternalError => "INTERNAL_ERROR",
            Reason::InjectedFault => "INJECTED_FAULT",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// gRPC status codes (google.rpc.Code numbering), without a gRPC dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The canonical upper-case name, e.g. `"INVALID_ARGUMENT"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// Parses a canonical name (as `as_str` gives).
    pub fn from_name(name: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// Everything that can go wrong running a pipeline.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("unknown op {op:?}{hint}")]
    UnknownOp { op: String, hint: &'static str },

    #[error("param {param:?}: {detail}")]
    ParamInvalid { param: String, detail: String },

    #[error("param {param:?} = {value} is out of range [{min}, {max}]")]
    ParamOutOfRange { param: String, value: String, min: i64, max: i64 },

    /// `actual` is `None` when the size is not known (e.g. a gRPC-compressed
    /// request that inflates past the limit).
    #[error("{}", payload_message(field, *limit, *actual))]
    PayloadTooLarge { field: String, limit: u64, actual: Option<u64> },

    #[error("corrupt input: {detail}")]
    InputCorrupt { detail: String },

    /// `actual` is `None` when decoding stopped at the limit (a bomb: the
    /// real size is never learned).
    #[error("{what} exceeds the limit of {limit} {unit}{}{}",
        .param.as_ref().map(|p| format!(" (param {p:?})")).unwrap_or_default(),
        .actual.map(|a| format!(" (is {a})")).unwrap_or_default())]
    OutputTooLarge { what: String, unit: &'static str, param: Option<String>, limit: u64, actual: Option<u64> },

    #[error("{detail}")]
    RequestInvalid { field: String, detail: String, limit: Option<u64>, actual: Option<u64> },

    #[error("server overloaded: every worker is busy and the wait queue is full; retry after {retry_after_ms} ms")]
    Overloaded { retry_after_ms: u64 },

    #[error("deadline exceeded{}", if *.started { " while running" } else { " before the work started" })]
    Timeout { started: bool },

    #[error("cancelled")]
    Cancelled,

    #[error("server is shutting down")]
    ShuttingDown,

    #[error("internal error: {detail}")]
    Internal { detail: String },

    #[error("injected {}: {message}", .code.as_str())]
    InjectedFault { code: Code, message: String },

    /// An error raised by one step of a pipeline.
    #[error("step {index} ({op}): {source}")]
    Step { index: usize, op: String, source: Box<Error> },
}

/// Result with the core error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps this error with the pipeline step it happened in.
    pub fn in_step(self, index: usize, op: &str) -> Error {
        match self {
            // Not step-specific: keep them unwrapped.
            e @ (Error::Step { .. }
            | Error::Overloaded { .. }
            | Error::Timeout { .. }
            | Error::Cancelled
            | Error::ShuttingDown) => e,
            e => Error::Step { index, op: op.to_owned(), source: Box::new(e) },
        }
    }

    /// Shortcut for `InputCorrupt`.
    pub fn corrupt(detail: impl fmt::Display) -> Error {
        Error::InputCorrupt { detail: detail.to_string() }
    }

    /// The innermost error (through `Step` wrappers).
    pub fn root(&self) -> &Error {
        match self {
            Error::Step { source, .. } => source.root(),
            e => e,
        }
    }

    /// The machine-readable reason.
    pub fn reason(&self) -> Reason {
        match self {
            Error::UnknownOp { .. } => Reason::UnknownOp,
            Error::ParamInvalid { .. } => Reason::ParamInvalid,
            Error::ParamOutOfRange { .. } => Reason::ParamOutOfRange,
            Error::PayloadTooLarge { .. } => Reason::PayloadTooLarge,
            Error::InputCorrupt { .. } => Reason::InputCorrupt,
            Error::OutputTooLarge { .. } => Reason::OutputTooLarge,
            Error::RequestInvalid { .. } => Reason::RequestInvalid,
            Error::Overloaded { .. } => Reason::Overloaded,
            Error::Timeout { .. } => Reason::Timeout,
            Error::Cancelled => Reason::Cancelled,
            Error::ShuttingDown => Reason::ShuttingDown,
            Error::Internal { .. } => Reason::InternalError,
            Error::InjectedFault { .. } => Reason::InjectedFault,
            Error::Step { source, .. } => source.reason(),
        }
    }

    /// The gRPC status code.
    pub fn code(&self) -> Code {
        match self {
            Error::UnknownOp { .. }
            | Error::ParamInvalid { .. }
            | Error::ParamOutOfRange { .. }
            | Error::PayloadTooLarge { .. }
            | Error::InputCorrupt { .. }
            | Error::OutputTooLarge { .. }
            | Error::RequestInvalid { .. } => Code::InvalidArgument,
            Error::Overloaded { .. } => Code::ResourceExhausted,
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::Cancelled => Code::Cancelled,
            Error::ShuttingDown => Code::Unavailable,
            Error::Internal { .. } => Code::Internal,
            Error::InjectedFault { code, .. } => *code,
            Error::Step { source, .. } => source.code(),
        }
    }

    /// Suggested retry delay, for retryable overload errors.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self.root() {
            Error::Overloaded { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The google.rpc.ErrorInfo metadata (keys from errors.proto).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        self.fill_metadata(&mut m);
        m
    }

    fn fill_metadata(&self, m: &mut BTreeMap<String, String>) {
        let mut put = |k: &str, v: String| {
            m.insert(k.to_owned(), v);
        };
        match self {
            Error::UnknownOp { op, .. } => put("op", op.clone()),
            Error::ParamInvalid { param, .. } => put("param", param.clone()),
            Error::ParamOutOfRange { param, min, max, value } => {
                put("param", param.clone());
                put("limit", format!("[{min}, {max}]"));
                put("actual", value.clone());
            }
            Error::PayloadTooLarge { field, limit, actual } => {
                put("field", field.clone());
                put("limit", limit.to_string());
                if let Some(a) = actual {
                    put("actual", a.to_string());
                }
            }
            Error::InputCorrupt { .. } | Error::Cancelled | Error::ShuttingDown => {}
            Error::OutputTooLarge { param, limit, actual, .. } => {
                if let Some(p) = param {
                    put("param", p.clone());
                }
                put("limit", limit.to_string());
                if let Some(a) = actual {
                    put("actual", a.to_string());
                }
            }
            Error::RequestInvalid { field, limit, actual, .. } => {
                put("field", field.clone());
                if let Some(l) = limit {
                    put("limit", l.to_string());
                }
                if let Some(a) = actual {
                    put("actual", a.to_string());
                }
            }
            Error::Overloaded { retry_after_ms } => put("retry_after_ms", retry_after_ms.to_string()),
            Error::Timeout { .. } | Error::Internal { .. } | Error::InjectedFault { .. } => {}
            Error::Step { index, op, source } => {
                source.fill_metadata(m);
                m.insert("step".to_owned(), index.to_string());
                m.insert("op".to_owned(), op.clone());
            }
        }
    }
}

fn payload_message(field: &str, limit: u64, actual: Option<u64>) -> String {
    match actual {
        Some(a) => format!("{field} is {a} bytes, more than the limit of {limit} bytes"),
        None => format!("{field} is larger than the limit of {limit} bytes"),
    }
}
