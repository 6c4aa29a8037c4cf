//! The one mapping from `tandem_core::Error` to gRPC: a `tonic::Status` with
//! a `google.rpc.ErrorInfo` detail (and `RetryInfo` for RESOURCE_EXHAUSTED),
//! or a `tandem.v1.Error` for batch items.

use std::collections::HashMap;
use std::time::Duration;

use tandem_core::Error;
use tandem_proto::v1;
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo.domain` of every Tandem error.
pub const DOMAIN: &str = "tandem.dev";

/// Extra ErrorInfo metadata known only at the gRPC layer (e.g. `job_id`).
pub type Extra<'a> = &'a [(&'a str, &'a str)];

fn metadata(e: &Error, extra: Extra<'_>) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = e.metadata().into_iter().collect();
    for (k, v) in extra {
        if !v.is_empty() {
            m.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    m
}

/// The gRPC status for `e`.
pub fn to_status(e: &Error, extra: Extra<'_>) -> tonic::Status {
    let code = tonic::Code::from_i32(e.code() as i32);
    let mut details = ErrorDetails::with_error_info(e.reason().as_str(), DOMAIN, metadata(e, extra));
    if code == tonic::Code::ResourceExhausted {
        let ms = e.retry_after_ms().unwrap_or(100);
        details.set_retry_info(Some(Duration::from_millis(ms)));
    }
    tonic::Status::with_error_details(code, e.to_string(), details)
}

/// The `tandem.v1.Error` for `e` (batch items).
pub fn to_proto(e: &Error, extra: Extra<'_>) -> v1::Error {
    v1::Error {
        code: e.code() as i32,
        reason: v1::ErrorReason::from_str_name(e.reason().as_str())
            .unwrap_or(v1::ErrorReason::Unspecified) as i32,
        message: e.to_string(),
        metadata: metadata(e, extra),
    }
}
