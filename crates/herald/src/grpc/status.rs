//! The gRPC edge's one mapping of errors to statuses: every domain error already
//! has its ntfy code (`crate::error`: `From<PublishError>`, `From<AuthError>`,
//! `From<Refusal>`, `From<HistoryError>`), so a [`Status`] is made from that
//! [`ApiError`]: the HTTP status picks the gRPC code, and the ntfy code travels in
//! the status details (`grpc-status-details-bin`, a `google.rpc.Status`) as a
//! `google.rpc.ErrorInfo`, with a `google.rpc.RetryInfo` when a retry delay applies.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::ApiError;

/// `ErrorInfo.domain` of every herald error.
pub(crate) const ERROR_DOMAIN: &str = "herald";

/// The gRPC code of an answer ntfy gives with HTTP status `http`.
pub(crate) fn code_of(http: u16) -> Code {
    match http {
        400 | 405 | 413 | 414 | 431 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 => Code::DeadlineExceeded,
        409 => Code::AlreadyExists,
        // An idempotency key already used for another request.
        422 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        // Draining, the store or Redis away, a full disk: try another node or later.
        503 | 507 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The gRPC code of `error`: by its HTTP status, except a first request with the
/// same idempotency key still under way (HTTP's 409), which asks for a retry.
fn grpc_code(error: &ApiError) -> Code {
    if *error == ApiError::IDEMPOTENCY_IN_FLIGHT {
        Code::Aborted
    } else {
        code_of(error.http)
    }
}

/// `error` as a status, with its ntfy code (and `retry`, if any) in the details.
pub(crate) fn status(error: &ApiError, retry: Option<Duration>) -> Status {
    let metadata = HashMap::from([
        ("code".to_string(), error.code.to_string()),
        ("http".to_string(), error.http.to_string()),
    ]);
    let mut details =
        ErrorDetails::with_error_info(format!("NTFY_{}", error.code), ERROR_DOMAIN, metadata);
    if let Some(retry) = retry {
        details.set_retry_info(Some(retry));
    }
    let mut status = Status::with_error_details(grpc_code(error), error.error.to_string(), details);
    if let Some(retry) = retry
        && let Ok(value) = crate::limits::retry_secs(retry).to_string().parse()
    {
        // For clients that do not read the details: whole seconds, as HTTP's header.
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// `error` as the `Error` of one `PublishBatch` result.
pub(crate) fn batch_error(error: &ApiError, retry: Option<Duration>) -> super::proto::Error {
    super::proto::Error {
        grpc_code: grpc_code(error) as i32,
        code: i32::try_from(error.code).unwrap_or(i32::MAX),
        http: i32::from(error.http),
        error: error.error.to_string(),
        retry_after_seconds: retry
            .map(|r| i64::try_from(crate::limits::retry_secs(r)).unwrap_or(i64::MAX))
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_http_status() {
        assert_eq!(code_of(400), Code::InvalidArgument);
        assert_eq!(code_of(401), Code::Unauthenticated);
        assert_eq!(code_of(403), Code::PermissionDenied);
        assert_eq!(code_of(404), Code::NotFound);
        assert_eq!(code_of(429), Code::ResourceExhausted);
        assert_eq!(code_of(503), Code::Unavailable);
        assert_eq!(code_of(500), Code::Internal);
    }

    #[test]
    fn details_carry_the_ntfy_code_and_retry() {
        let s = status(&ApiError::TOO_MANY_MESSAGES, Some(Duration::from_secs(7)));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let details = s.get_error_details();
        let info = details.error_info().cloned().expect("error info");
        assert_eq!(info.reason, "NTFY_42908");
        assert_eq!(info.domain, "herald");
        assert_eq!(info.metadata.get("code").map(String::as_str), Some("42908"));
        let retry = details.retry_info().and_then(|r| r.retry_delay);
        assert_eq!(retry, Some(Duration::from_secs(7)));
        assert_eq!(
            s.metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("7")
        );
    }
}
