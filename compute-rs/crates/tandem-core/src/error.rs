//! The one error type of the core. Each variant knows its `ErrorReason`
//! and the ErrorInfo metadata it carries; its gRPC status code comes from the
//! error catalogue (`proto/tandem/v1/errors.proto`, compiled into [`Reason`]
//! by build.rs). The message is the `Display` text, which is what the gRPC
//! status message and the Python exception both show. Caller-supplied values
//! appear in messages and metadata only as [`Quoted`].

use std::collections::BTreeMap;
use std::fmt;

// `Reason`, generated from the catalogue (see build.rs).
include!(concat!(env!("OUT_DIR"), "/reasons.rs"));

/// The gRPC code the error catalogue gives a reason (`(tandem.v1.reason).code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatalogueCode {
    /// Every error with this reason travels with this code.
    Fixed(Code),
    /// The code is chosen per error (`INJECTED_FAULT` only).
    Any,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most bytes of a caller-supplied value (op name, param name or value,
/// job id) that an error message or an ErrorInfo metadata value quotes.
/// Errors go back to the caller in the gRPC status message and metadata: a
/// plain grpcio client rejects response metadata over 16 KiB (it reports
/// RESOURCE_EXHAUSTED instead of the real error), and a log line carrying a
/// 1 MiB op name helps no one.
pub const QUOTE_LIMIT: usize = 64;

/// A caller-supplied value as errors quote it: the value itself when it is
/// at most [`QUOTE_LIMIT`] bytes, else its first bytes (cut on a UTF-8 char
/// boundary) followed by `…(N bytes)`. The one way errors quote caller
/// input: every error field holding caller input has this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted {
    prefix: String,
    len: usize,
}

impl Quoted {
    /// Quotes `value`.
    pub fn new(value: &str) -> Quoted {
        let mut end = value.len().min(QUOTE_LIMIT);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        Quoted { prefix: value[..end].to_owned(), len: value.len() }
    }

    /// The length of the whole value, in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the value was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the value was longer than [`QUOTE_LIMIT`] and got cut.
    pub fn is_cut(&self) -> bool {
        self.prefix.len() < self.len
    }

    /// The quoted text (what is kept), without the length marker.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The form for messages: escaped in double quotes, then the marker
    /// when cut, e.g. `"nope.op"` or `"aaaa"…(1048576 bytes)`.
    pub fn quoted(&self) -> impl fmt::Display + '_ {
        QuotedForm(self)
    }

    fn marker(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_cut() { write!(f, "…({} bytes)", self.len) } else { Ok(()) }
    }
}

/// Plain form, for metadata values and `step N (op)`: `nope.op` or
/// `aaaa…(1048576 bytes)`.
impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)?;
        self.marker(f)
    }
}

struct QuotedForm<'a>(&'a Quoted);

impl fmt::Display for QuotedForm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.prefix)?;
        self.0.marker(f)
    }
}

/// gRPC status codes (google.rpc.Code numbering), without a gRPC dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // google.rpc.Code's own names; see its documentation.
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

/// Everything that can go wrong running a pipeline. Each variant has one
/// reason of the catalogue ([`Error::reason`]), which gives its gRPC code
/// ([`Error::code`]) and whether callers retry it; the `Display` text is the
/// status message and its fields the `google.rpc.ErrorInfo` metadata
/// ([`Error::metadata`]). An op returns the variants its docs mention; the
/// others come from the runner and the server.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// `UNKNOWN_OP`: no such op is served.
    #[error("unknown op {}{hint}", .op.quoted())]
    UnknownOp {
        /// The name asked for.
        op: Quoted,
        /// Appended to the message (e.g. that debug ops are disabled).
        hint: &'static str,
    },

    /// `PARAM_INVALID`: a param is unknown, missing, not of its type, or
    /// inconsistent with another (an op may return this one).
    /// `detail` quotes caller values only through [`Quoted`].
    #[error("param {}: {detail}", .param.quoted())]
    ParamInvalid {
        /// The param at fault.
        param: Quoted,
        /// What is wrong with it.
        detail: String,
    },

    /// `PARAM_OUT_OF_RANGE`: an int outside `[min, max]`, or a string
    /// longer than `max` bytes.
    #[error("param {} = {value} is out of range [{min}, {max}]", .param.quoted())]
    ParamOutOfRange {
        /// The param at fault.
        param: Quoted,
        /// The value given (for a string, its length).
        value: Quoted,
        /// The smallest value allowed.
        min: i64,
        /// The largest value allowed.
        max: i64,
    },

    /// `PAYLOAD_TOO_LARGE`: the request is over `max_request_bytes`.
    #[error("{}", payload_message(field, *limit, *actual))]
    PayloadTooLarge {
        /// What is too large (`request`).
        field: String,
        /// The limit in bytes.
        limit: u64,
        /// The size, or `None` when it is not known (e.g. a gRPC-compressed
        /// request that inflates past the limit).
        actual: Option<u64>,
    },

    /// `INPUT_CORRUPT`: input an op cannot read (bad or truncated encoding,
    /// wrong magic bytes, not UTF-8). [`Error::corrupt`] builds one.
    #[error("corrupt input: {detail}")]
    InputCorrupt {
        /// What is wrong, e.g. `zstd: unexpected end of frame`.
        detail: String,
    },

    /// `OP_FAILED`: input an op refuses for good for a reason of its own
    /// (not corrupt, not too large); INVALID_ARGUMENT, never retried.
    #[error("{detail}")]
    OpFailed {
        /// The message (after `step N (op): `).
        detail: String,
    },

    /// `OUTPUT_TOO_LARGE`: an output would pass a cap (a step's output over
    /// `max_output_bytes`, a decompression bomb, an image over the pixel
    /// caps). Memory stays bounded by the cap.
    #[error("{what} exceeds the limit of {limit} {unit}{}{}",
        .param.as_ref().map(|p| format!(" (param {p:?})")).unwrap_or_default(),
        .actual.map(|a| format!(" (is {a})")).unwrap_or_default())]
    OutputTooLarge {
        /// What would be too large (`output`, `decompressed output`, ...).
        what: String,
        /// The unit of `limit` and `actual` (`bytes`, `pixels`).
        unit: &'static str,
        /// The param that set the cap, if one did.
        param: Option<String>,
        /// The cap.
        limit: u64,
        /// The size, or `None` when decoding stopped at the cap (a bomb: the
        /// real size is never learned).
        actual: Option<u64>,
    },

    /// `REQUEST_INVALID`: the request itself is malformed (no steps, too
    /// many steps or batch items).
    #[error("{detail}")]
    RequestInvalid {
        /// The request field at fault.
        field: String,
        /// The message.
        detail: String,
        /// The limit passed, if one was.
        limit: Option<u64>,
        /// The value given, if a count.
        actual: Option<u64>,
    },

    /// `REQUEST_INVALID`: an identifier of the request (op name, param name
    /// or value, job id) is outside the limits every API edge checks
    /// ([`crate::ident`]). Metadata `field`, `limit` and `actual` (the
    /// value's length in bytes).
    #[error("{field}: {detail} (got {})", .value.quoted())]
    IdentifierInvalid {
        /// The request field at fault: `steps[0].op`, `steps[0].params`
        /// (a param name), `steps[0].params[level]` (its value), `job_id`.
        field: String,
        /// What is wrong, e.g. `is 200 bytes, longer than 128`.
        detail: String,
        /// The field's length limit in bytes.
        limit: u64,
        /// The value given.
        value: Quoted,
    },

    /// `OVERLOADED` (RESOURCE_EXHAUSTED, retried): the pool and its queue
    /// are full.
    #[error("server overloaded: every worker is busy and the wait queue is full; retry after {retry_after_ms} ms")]
    Overloaded {
        /// Suggested delay before a retry.
        retry_after_ms: u64,
    },

    /// `TIMEOUT` (DEADLINE_EXCEEDED): the call's deadline passed
    /// ([`Ctx::checkpoint`](crate::Ctx::checkpoint) returns it).
    #[error("deadline exceeded{}", if *.started { " while running" } else { " before the work started" })]
    Timeout {
        /// Whether the work had started.
        started: bool,
    },

    /// `CANCELLED`: the call was cancelled while running
    /// ([`Ctx::checkpoint`](crate::Ctx::checkpoint) returns it).
    #[error("cancelled")]
    Cancelled,

    /// `SHUTTING_DOWN` (UNAVAILABLE, retried): the server is stopping and
    /// its drain timeout cut the call off.
    #[error("server is shutting down")]
    ShuttingDown,

    /// `INTERNAL_ERROR` (INTERNAL, retried): a bug, e.g. a panic in an op.
    #[error("internal error: {detail}")]
    Internal {
        /// What went wrong.
        detail: String,
    },

    /// `UNAUTHENTICATED`: the call carries no usable credentials (no, a
    /// malformed, or an unknown bearer token) where the server requires
    /// them. Raised by the server, never by an op; the message never
    /// repeats the token.
    #[error("{detail}")]
    Unauthenticated {
        /// What is wrong, e.g. `the call has no authorization metadata`.
        detail: String,
        /// The limit passed (a too long `authorization` value), if one was.
        limit: Option<u64>,
        /// The length given, with `limit`.
        actual: Option<u64>,
    },

    /// `INJECTED_FAULT`: raised by `debug.fail` (tests only).
    #[error("injected {}: {message}", .code.as_str())]
    InjectedFault {
        /// The gRPC code asked for.
        code: Code,
        /// The message asked for.
        message: String,
    },

    /// An error raised by one step of a pipeline (the runner wraps every
    /// step's error in one; an op never returns it).
    #[error("step {index} ({op}): {source}")]
    Step {
        /// The step's index, from 0.
        index: usize,
        /// The step's op name.
        op: Quoted,
        /// The step's error.
        source: Box<Error>,
    },
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
            | Error::ShuttingDown
            | Error::Unauthenticated { .. }) => e,
            e => Error::Step { index, op: Quoted::new(op), source: Box::new(e) },
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
            Error::OpFailed { .. } => Reason::OpFailed,
            Error::OutputTooLarge { .. } => Reason::OutputTooLarge,
            Error::RequestInvalid { .. } | Error::IdentifierInvalid { .. } => Reason::RequestInvalid,
            Error::Overloaded { .. } => Reason::Overloaded,
            Error::Timeout { .. } => Reason::Timeout,
            Error::Cancelled => Reason::Cancelled,
            Error::ShuttingDown => Reason::ShuttingDown,
            Error::Internal { .. } => Reason::InternalError,
            Error::InjectedFault { .. } => Reason::InjectedFault,
            Error::Unauthenticated { .. } => Reason::Unauthenticated,
            Error::Step { source, .. } => source.reason(),
        }
    }

    /// The gRPC status code: the catalogue's code for the reason
    /// (`(tandem.v1.reason).code` in errors.proto), or the chosen code where
    /// the catalogue leaves it open (`INJECTED_FAULT`).
    pub fn code(&self) -> Code {
        match (self.reason().catalogue_code(), self.root()) {
            (CatalogueCode::Fixed(code), _) => code,
            (CatalogueCode::Any, Error::InjectedFault { code, .. }) => *code,
            // No other error has an open code (unit test
            // `every_error_travels_with_its_catalogue_code`); should the
            // catalogue open one, the error still reaches the caller.
            (CatalogueCode::Any, _) => Code::Unknown,
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
            Error::UnknownOp { op, .. } => put("op", op.to_string()),
            Error::ParamInvalid { param, .. } => put("param", param.to_string()),
            Error::ParamOutOfRange { param, min, max, value } => {
                put("param", param.to_string());
                put("limit", format!("[{min}, {max}]"));
                put("actual", value.to_string());
            }
            Error::PayloadTooLarge { field, limit, actual } => {
                put("field", field.clone());
                put("limit", limit.to_string());
                if let Some(a) = actual {
                    put("actual", a.to_string());
                }
            }
            Error::InputCorrupt { .. } | Error::OpFailed { .. } | Error::Cancelled | Error::ShuttingDown => {}
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
            Error::IdentifierInvalid { field, limit, value, .. } => {
                put("field", field.clone());
                put("limit", limit.to_string());
                put("actual", value.len().to_string());
            }
            Error::Unauthenticated { limit, actual, .. } => {
                put("field", "authorization".to_owned());
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
                m.insert("op".to_owned(), op.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, Registry, StepRequest};

    #[test]
    fn quoted_keeps_up_to_the_limit_and_marks_the_cut() {
        let at = |n: usize| Quoted::new(&"a".repeat(n));
        for n in [0, QUOTE_LIMIT - 1, QUOTE_LIMIT] {
            let q = at(n);
            assert!(!q.is_cut(), "{n} bytes");
            assert_eq!(q.to_string(), "a".repeat(n));
            assert_eq!(q.quoted().to_string(), format!("\"{}\"", "a".repeat(n)));
        }
        let q = at(QUOTE_LIMIT + 1);
        assert!(q.is_cut());
        assert_eq!(q.prefix(), "a".repeat(QUOTE_LIMIT));
        assert_eq!(q.to_string(), format!("{}…({} bytes)", "a".repeat(QUOTE_LIMIT), QUOTE_LIMIT + 1));
        assert_eq!(q.quoted().to_string(), format!("\"{}\"…({} bytes)", "a".repeat(QUOTE_LIMIT), QUOTE_LIMIT + 1));
        // A two-byte char across the limit is left out whole.
        let s = format!("{}é", "a".repeat(QUOTE_LIMIT - 1));
        let q = Quoted::new(&s);
        assert_eq!(q.prefix(), "a".repeat(QUOTE_LIMIT - 1));
        assert_eq!(q.to_string(), format!("{}…({} bytes)", "a".repeat(QUOTE_LIMIT - 1), QUOTE_LIMIT + 1));
        // A four-byte char ending exactly at the limit is kept.
        let s = format!("{}😀", "a".repeat(QUOTE_LIMIT - 4));
        assert!(!Quoted::new(&s).is_cut());
    }

    /// Every path that quotes a caller value, with a 1 MiB value (refused
    /// by the identifier checks) and with the longest value those let
    /// through (refused by the op lookup or the param parser): the message
    /// and every metadata value stay short.
    #[test]
    fn errors_never_echo_whole_caller_input() {
        let huge = "x".repeat(1 << 20);
        let zeros_then_40 = format!("{}40", "0".repeat(1 << 20));
        let op = "x".repeat(crate::registry::MAX_OP_NAME_BYTES);
        let value = "x".repeat(crate::params::MAX_PARAM_VALUE_BYTES);
        let zeros_then_40_at_limit = format!("{}40", "0".repeat(crate::params::MAX_PARAM_VALUE_BYTES - 2));
        let reg = Registry::new(Limits::default(), false);
        let cases: Vec<(&str, Vec<StepRequest>)> = vec![
            ("op name", vec![StepRequest::new(huge.as_str())]),
            ("op name, later step", vec![StepRequest::new("hash.sha256"), StepRequest::new(huge.as_str())]),
            ("param name", vec![StepRequest::new("compress.zstd").param(huge.as_str(), "1")]),
            ("int value", vec![StepRequest::new("compress.zstd").param("level", huge.as_str())]),
            ("int value in range syntax", vec![StepRequest::new("compress.zstd").param("level", zeros_then_40)]),
            ("enum value", vec![StepRequest::new("image.thumbnail").param("fit", huge.as_str())]),
            ("unknown op at the limit", vec![StepRequest::new("hash.sha256"), StepRequest::new(op.as_str())]),
            ("int value at the limit", vec![StepRequest::new("compress.zstd").param("level", value.as_str())]),
            (
                "int in range syntax at the limit",
                vec![StepRequest::new("compress.zstd").param("level", zeros_then_40_at_limit)],
            ),
            ("enum value at the limit", vec![StepRequest::new("image.thumbnail").param("fit", value.as_str())]),
        ];
        for (what, steps) in cases {
            let e = reg.run(&steps, b"", &reg.ctx()).unwrap_err();
            let msg = e.to_string();
            assert!(msg.len() < 300, "{what}: message of {} bytes: {msg}", msg.len());
            for (k, v) in e.metadata() {
                assert!(v.len() <= QUOTE_LIMIT + 20, "{what}: metadata {k} of {} bytes", v.len());
            }
            assert!(msg.contains("bytes)"), "{what}: the cut is marked: {msg}");
        }
        let debug = Registry::new(Limits::default(), true);
        let steps = [StepRequest::new("debug.fail").param("until_attempt", "0").param("code", huge.as_str())];
        let msg = debug.run(&steps, b"", &debug.ctx()).unwrap_err().to_string();
        assert!(msg.len() < 400, "{msg}");
        let steps = [StepRequest::new("debug.sleep").param("ms", "true")];
        let e = debug.run(&steps, b"", &debug.ctx()).unwrap_err();
        assert_eq!(e.to_string(), "step 0 (debug.sleep): param \"ms\": \"true\" is not a base-10 integer");
    }

    /// One error of every variant. The match below has no wildcard: a new
    /// variant does not compile until it is listed here.
    fn one_of_each() -> Vec<Error> {
        let all = vec![
            Error::UnknownOp { op: Quoted::new("x"), hint: "" },
            Error::ParamInvalid { param: Quoted::new("p"), detail: String::new() },
            Error::ParamOutOfRange { param: Quoted::new("p"), value: Quoted::new("9"), min: 0, max: 1 },
            Error::PayloadTooLarge { field: "request".to_owned(), limit: 1, actual: None },
            Error::corrupt("bad"),
            Error::OpFailed { detail: "no".to_owned() },
            Error::OutputTooLarge { what: "output".to_owned(), unit: "bytes", param: None, limit: 1, actual: None },
            Error::RequestInvalid { field: "steps".to_owned(), detail: String::new(), limit: None, actual: None },
            Error::IdentifierInvalid {
                field: "job_id".to_owned(),
                detail: String::new(),
                limit: 64,
                value: Quoted::new("*"),
            },
            Error::Overloaded { retry_after_ms: 100 },
            Error::Timeout { started: true },
            Error::Cancelled,
            Error::ShuttingDown,
            Error::Internal { detail: String::new() },
            Error::InjectedFault { code: Code::DataLoss, message: String::new() },
            Error::Unauthenticated { detail: String::new(), limit: Some(1), actual: Some(2) },
            Error::Step { index: 0, op: Quoted::new("x"), source: Box::new(Error::Cancelled) },
        ];
        for e in &all {
            match e {
                Error::UnknownOp { .. }
                | Error::ParamInvalid { .. }
                | Error::ParamOutOfRange { .. }
                | Error::PayloadTooLarge { .. }
                | Error::InputCorrupt { .. }
                | Error::OpFailed { .. }
                | Error::OutputTooLarge { .. }
                | Error::RequestInvalid { .. }
                | Error::IdentifierInvalid { .. }
                | Error::Overloaded { .. }
                | Error::Timeout { .. }
                | Error::Cancelled
                | Error::ShuttingDown
                | Error::Internal { .. }
                | Error::InjectedFault { .. }
                | Error::Unauthenticated { .. }
                | Error::Step { .. } => {}
            }
        }
        all
    }

    /// The code of every error the core can produce is the one the
    /// catalogue (errors.proto) gives its reason; only INJECTED_FAULT has an
    /// open code, and it travels with the code it was given.
    #[test]
    fn every_error_travels_with_its_catalogue_code() {
        for e in one_of_each() {
            match (e.reason().catalogue_code(), e.root()) {
                (CatalogueCode::Fixed(code), _) => assert_eq!(e.code(), code, "{e:?}"),
                (CatalogueCode::Any, Error::InjectedFault { code, .. }) => assert_eq!(e.code(), *code),
                (CatalogueCode::Any, _) => panic!("{:?} has no fixed code in errors.proto", e.reason()),
            }
        }
        // The whole catalogue: names round-trip, numbers are unique.
        let mut numbers = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert_eq!(Reason::from_number(r.number()), Some(r));
            assert!(numbers.insert(r.number()), "{r} numbered twice");
            assert_eq!(r.as_str().to_ascii_uppercase(), r.as_str());
        }
        assert_eq!(Reason::from_number(0), None, "UNSPECIFIED is never produced");
        // Spot checks against the catalogue text.
        assert_eq!(Reason::Overloaded.catalogue_code(), CatalogueCode::Fixed(Code::ResourceExhausted));
        assert!(Reason::Overloaded.retryable());
        assert_eq!(Reason::UnknownOp.catalogue_code(), CatalogueCode::Fixed(Code::InvalidArgument));
        assert!(!Reason::UnknownOp.retryable());
        assert_eq!(Reason::InjectedFault.catalogue_code(), CatalogueCode::Any);
    }
}
