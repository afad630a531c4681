//! Errors as ntfy clients see them: `{"code":40007,"http":400,"error":"...","link":"..."}`.
//!
//! Every failure that reaches HTTP becomes an [`ApiError`] with ntfy's code and text
//! (docs/COMPATIBILITY.md §5), so clients that switch on `code` behave the same
//! against herald.
//! Internal failures map to `50001` and are logged, never shown in detail.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer in ntfy's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{http} {code}: {error}")]
pub struct ApiError {
    pub code: u32,
    pub http: u16,
    pub error: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<&'static str>,
}

macro_rules! api_errors {
    ($($name:ident = ($http:expr, $code:expr, $text:expr $(, $link:expr)?);)*) => {
        impl ApiError {
            $(
                #[doc = $text]
                pub const $name: ApiError = ApiError {
                    code: $code,
                    http: $http,
                    error: Cow::Borrowed($text),
                    link: api_errors!(@link $($link)?),
                };
            )*
        }
    };
    (@link) => { None };
    (@link $link:expr) => { Some($link) };
}

const LINK_DELAY: &str = "https://ntfy.sh/docs/publish/#scheduled-delivery";
const LINK_AUTH: &str = "https://ntfy.sh/docs/publish/#authentication";
const LINK_ACTIONS: &str = "https://ntfy.sh/docs/publish/#action-buttons";
const LINK_ATTACH: &str = "https://ntfy.sh/docs/publish/#attachments";
const LINK_JSON: &str = "https://ntfy.sh/docs/publish/#publish-as-json";
const LINK_SINCE: &str = "https://ntfy.sh/docs/subscribe/api/#fetch-cached-messages";
const LINK_LIMITS: &str = "https://ntfy.sh/docs/publish/#limitations";
const LINK_TEMPLATES: &str = "https://ntfy.sh/docs/publish/#message-templating";

api_errors! {
    BAD_REQUEST = (400, 40000, "invalid request");
    EMAIL_DISABLED = (400, 40001, "e-mail notifications are not enabled", "https://ntfy.sh/docs/config/#e-mail-notifications");
    DELAY_NO_CACHE = (400, 40002, "cannot disable cache for delayed message");
    DELAY_NO_EMAIL = (400, 40003, "delayed e-mail notifications are not supported");
    DELAY_CANNOT_PARSE = (400, 40004, "invalid delay parameter: unable to parse delay", LINK_DELAY);
    DELAY_TOO_SMALL = (400, 40005, "invalid delay parameter: too small, please refer to the docs", LINK_DELAY);
    DELAY_TOO_LARGE = (400, 40006, "invalid delay parameter: too large, please refer to the docs", LINK_DELAY);
    PRIORITY_INVALID = (400, 40007, "invalid priority parameter", "https://ntfy.sh/docs/publish/#message-priority");
    SINCE_INVALID = (400, 40008, "invalid since parameter", LINK_SINCE);
    TOPIC_INVALID = (400, 40009, "invalid request: topic invalid");
    TOPIC_DISALLOWED = (400, 40010, "invalid request: topic name is not allowed");
    MESSAGE_NOT_UTF8 = (400, 40011, "invalid request: message must be UTF-8 encoded");
    ATTACHMENT_URL_INVALID = (400, 40013, "invalid request: attachment URL is invalid", LINK_ATTACH);
    ATTACHMENTS_NOT_ALLOWED = (400, 40014, "invalid request: attachments not allowed", "https://ntfy.sh/docs/config/#attachments");
    ATTACHMENT_EXPIRES_BEFORE_DELIVERY = (400, 40015, "invalid request: attachment expiry before delayed delivery date", "https://ntfy.sh/docs/publish/#scheduled-delivery");
    WEBSOCKET_REQUIRED = (400, 40016, "invalid request: client not using the websocket protocol", "https://ntfy.sh/docs/subscribe/api/#websockets");
    JSON_MESSAGE_INVALID = (400, 40017, "invalid request: request body must be message JSON", LINK_JSON);
    ACTIONS_INVALID = (400, 40018, "invalid request: actions invalid", LINK_ACTIONS);
    ICON_URL_INVALID = (400, 40021, "invalid request: icon URL is invalid", "https://ntfy.sh/docs/publish/#icons");
    JSON_INVALID = (400, 40024, "invalid request: request body must be valid JSON", LINK_JSON);
    PHONE_CALLS_DISABLED = (400, 40032, "invalid request: calling is disabled", "https://ntfy.sh/docs/config/#phone-calls");
    DELAY_NO_CALL = (400, 40037, "invalid request: delayed call notifications are not supported");
    // The Matrix push gateway (api::matrix), ntfy's codes.
    MATRIX_JSON_INVALID = (400, 40019, "invalid request: Matrix JSON invalid", "https://ntfy.sh/docs/config/#matrix-push-gateway");
    MATRIX_TOO_LARGE = (413, 41302, "Matrix request is larger than the max allowed length");
    BASE_URL_MISSING = (500, 50003, "internal server error: base-url must be be configured for this feature", "https://ntfy.sh/docs/config/");
    // Message templates (src/template), ntfy's codes.
    TEMPLATE_RESULT_TOO_LARGE = (400, 40041, "invalid request: message or title is too large after replacing template", LINK_TEMPLATES);
    TEMPLATE_BODY_NOT_JSON = (400, 40042, "invalid request: message body must be JSON if templating is enabled", LINK_TEMPLATES);
    TEMPLATE_INVALID = (400, 40043, "invalid request: could not parse template", LINK_TEMPLATES);
    TEMPLATE_DISALLOWED = (400, 40044, "invalid request: template contains disallowed function calls, e.g. template, call, or define", LINK_TEMPLATES);
    TEMPLATE_EXECUTION_FAILED = (400, 40045, "invalid request: template execution failed", LINK_TEMPLATES);
    TEMPLATE_FILE_NOT_FOUND = (400, 40047, "invalid request: template file not found", LINK_TEMPLATES);
    TEMPLATE_FILE_INVALID = (400, 40048, "invalid request: template file invalid", LINK_TEMPLATES);
    TEMPLATE_TIMEOUT = (400, 40055, "invalid request: template execution timed out", LINK_TEMPLATES);
    TEMPLATE_TOO_LARGE = (400, 40056, "invalid request: template too large", LINK_TEMPLATES);
    WEB_PUSH_INVALID = (400, 40038, "invalid request: web push payload malformed");
    WEB_PUSH_ENDPOINT_UNKNOWN = (400, 40039, "invalid request: web push endpoint unknown");
    WEB_PUSH_TOO_MANY_TOPICS = (400, 40040, "invalid request: too many web push topics");
    SEQUENCE_ID_INVALID = (400, 40049, "invalid request: sequence ID invalid", "https://ntfy.sh/docs/publish/#updating-deleting-notifications");
    EMAIL_ADDRESS_INVALID = (400, 40050, "invalid request: invalid e-mail address");
    UNAUTHORIZED = (401, 40101, "unauthorized", LINK_AUTH);
    FORBIDDEN = (403, 40301, "forbidden", LINK_AUTH);
    NOT_FOUND = (404, 40401, "page not found");
    METHOD_NOT_ALLOWED = (405, 40501, "method not allowed");
    ENTITY_TOO_LARGE = (413, 41301, "attachment too large, or bandwidth limit reached", LINK_LIMITS);
    JSON_TOO_LARGE = (413, 41303, "JSON body too large", LINK_JSON);
    TOO_MANY_REQUESTS = (429, 42901, "limit reached: too many requests", LINK_LIMITS);
    TOO_MANY_EMAILS = (429, 42902, "limit reached: too many emails", LINK_LIMITS);
    TOO_MANY_SUBSCRIPTIONS = (429, 42903, "limit reached: too many active subscriptions", LINK_LIMITS);
    TOO_MANY_TOPICS = (429, 42904, "limit reached: the total number of topics on the server has been reached, please contact the admin", LINK_LIMITS);
    TOO_MANY_MESSAGES = (429, 42908, "limit reached: daily message quota reached", LINK_LIMITS);
    ATTACHMENT_BANDWIDTH = (429, 42905, "limit reached: daily bandwidth reached", LINK_LIMITS);
    // A herald addition: a `Range` outside the file (ntfy serves no ranges).
    RANGE_NOT_SATISFIABLE = (416, 41601, "requested range not satisfiable");
    TOO_MANY_NEW_TOPICS = (429, 42911, "limit reached: too many new topics, please wait", LINK_LIMITS);
    // ntfy (Go's net/http) answers these in plain text; herald keeps its JSON shape,
    // with codes in ntfy's pattern (status × 100 + n).
    URI_TOO_LONG = (414, 41401, "request URI too long");
    HEADERS_TOO_LARGE = (431, 43101, "request header fields too large");
    // A herald addition (ntfy has no body deadline): `body-read-timeout` passed.
    BODY_TIMEOUT = (408, 40801, "request timeout: request body not received in time");
    TOO_MANY_CONNECTIONS = (503, 50302, "service unavailable: too many connections");
    INTERNAL = (500, 50001, "internal server error");
    UNAVAILABLE = (503, 50301, "service unavailable: shutting down or storage unavailable");
    // ntfy's only 507 is 50701 (UnifiedPush without a subscriber), so a full disk
    // takes the next code in that pattern rather than reuse one with another meaning.
    INSUFFICIENT_STORAGE = (507, 50702, "insufficient storage: the server's disk is full, message not stored");
    // Access control (src/auth): ntfy's codes for users, tokens and the ACL.
    NO_TOKEN_PROVIDED = (400, 40023, "invalid request: no token provided");
    PERMISSION_INVALID = (400, 40025, "invalid request: incorrect permission string");
    USER_NOT_FOUND = (400, 40031, "invalid request: user does not exist");
    USERNAME_INVALID = (400, 40046, "invalid username");
    USER_EXISTS = (409, 40901, "conflict: user already exists");
    PROVISIONED_USER = (409, 40905, "conflict: cannot change or delete provisioned user");
    PROVISIONED_TOKEN = (409, 40906, "conflict: cannot change or delete provisioned token");
    TOO_MANY_AUTH_FAILURES = (429, 42909, "limit reached: too many auth failures", LINK_LIMITS);
    // Too many password checks waiting (auth::gate). ntfy's generic rate-limit code,
    // not 42909: nothing failed, the same request may well succeed in a moment. The
    // text differs from 42901's so the two can be told apart (metrics, Retry-After).
    PASSWORD_CHECKS_BUSY = (429, 42901, "limit reached: too many requests, password checks busy", LINK_LIMITS);
    // Idempotent publishing, a herald extension (src/idempotency): the statuses of
    // the IETF draft and Stripe; codes in ntfy's pattern, clear of ntfy's 409xx.
    IDEMPOTENCY_KEY_INVALID = (400, 40000, "invalid request: idempotency key must be 1 to 255 printable ASCII characters");
    IDEMPOTENCY_IN_FLIGHT = (409, 40950, "conflict: a request with this idempotency key is still being processed, retry later");
    IDEMPOTENCY_MISMATCH = (422, 42201, "unprocessable entity: idempotency key already used for a different request");
}

impl From<crate::template::TemplateError> for ApiError {
    fn from(e: crate::template::TemplateError) -> Self {
        use crate::template::TemplateError as T;
        match e {
            // Parse and execution details help the template's author, as in ntfy.
            T::Parse(detail) => ApiError::TEMPLATE_INVALID.with_detail(detail),
            T::Exec(detail) => ApiError::TEMPLATE_EXECUTION_FAILED.with_detail(detail),
            T::Disallowed => ApiError::TEMPLATE_DISALLOWED,
            T::Timeout => ApiError::TEMPLATE_TIMEOUT,
            T::TooLarge => ApiError::TEMPLATE_TOO_LARGE,
            T::NotJson => ApiError::TEMPLATE_BODY_NOT_JSON,
            T::NotFound => ApiError::TEMPLATE_FILE_NOT_FOUND,
            T::InvalidFile => ApiError::TEMPLATE_FILE_INVALID,
            T::ResultTooLarge => ApiError::TEMPLATE_RESULT_TOO_LARGE,
        }
    }
}

impl ApiError {
    /// The same error with `; detail` appended to its text (ntfy does this for actions).
    pub fn with_detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.error = Cow::Owned(format!("{}; {}", self.error, detail));
        self
    }

    /// The answer to a request body that could not be read: `408` when
    /// `body-read-timeout` passed (the client is too slow, not wrong), else `other`.
    pub(crate) fn body_read_error(
        error: &(dyn std::error::Error + 'static),
        other: ApiError,
    ) -> ApiError {
        if crate::listener::timed_body::is_body_timeout(error) {
            ApiError::BODY_TIMEOUT
        } else {
            other
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON body, newline-terminated as ntfy writes it.
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"code":50001,"http":500,"error":"internal server error"}"#.to_string()
        });
        s.push('\n');
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), self.to_json_line()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match err {
            // The store logs when the disk fills and when writes succeed again; a
            // line per refused publish would only fill the disk (or the log) faster.
            StoreError::Full(_) => ApiError::INSUFFICIENT_STORAGE,
            StoreError::Closed | StoreError::Unavailable(_) => {
                tracing::error!(error = %err, "store failure");
                ApiError::UNAVAILABLE
            }
            StoreError::Backend(_) | StoreError::Corrupt(_) => {
                tracing::error!(error = %err, "store failure");
                ApiError::INTERNAL
            }
        }
    }
}

/// Each limit's refusal, in ntfy's codes. The global topic limit, connections and
/// the request-head bounds are refused by the HTTP layer itself, with the same codes.
impl From<crate::limits::Limit> for ApiError {
    fn from(limit: crate::limits::Limit) -> Self {
        use crate::limits::Limit;
        match limit {
            Limit::Requests => ApiError::TOO_MANY_REQUESTS,
            Limit::Messages => ApiError::TOO_MANY_MESSAGES,
            Limit::Subscriptions => ApiError::TOO_MANY_SUBSCRIPTIONS,
            Limit::TopicCreation => ApiError::TOO_MANY_NEW_TOPICS,
            Limit::GlobalTopics => ApiError::TOO_MANY_TOPICS,
            Limit::Connections => ApiError::TOO_MANY_CONNECTIONS,
            Limit::HeaderSize => ApiError::HEADERS_TOO_LARGE,
            Limit::UrlLength => ApiError::URI_TOO_LONG,
            Limit::HeaderTimeout => ApiError::BODY_TIMEOUT,
            Limit::BodySize => ApiError::JSON_TOO_LARGE,
            Limit::PasswordChecks => ApiError::PASSWORD_CHECKS_BUSY,
            Limit::Emails => ApiError::TOO_MANY_EMAILS,
        }
    }
}

impl From<crate::limits::Refusal> for ApiError {
    fn from(refusal: crate::limits::Refusal) -> Self {
        ApiError::from(refusal.limit)
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(err: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match err {
            AuthError::Unauthorized => ApiError::UNAUTHORIZED,
            AuthError::Forbidden => ApiError::FORBIDDEN,
            AuthError::TooManyFailures => ApiError::TOO_MANY_AUTH_FAILURES,
            AuthError::PasswordChecksBusy => ApiError::PASSWORD_CHECKS_BUSY,
        }
    }
}

impl From<crate::core::HistoryError> for ApiError {
    fn from(err: crate::core::HistoryError) -> Self {
        use crate::core::HistoryError;
        match err {
            // The edge adds `Retry-After` (`core::HISTORY_RETRY_AFTER`) to this one.
            HistoryError::Busy { .. } => ApiError::TOO_MANY_REQUESTS,
            HistoryError::Store(e) => ApiError::from(e),
        }
    }
}

impl From<crate::core::rules::DueError> for ApiError {
    fn from(err: crate::core::rules::DueError) -> Self {
        use crate::core::rules::DueError;
        match err {
            DueError::TooSoon => ApiError::DELAY_TOO_SMALL,
            DueError::TooLate => ApiError::DELAY_TOO_LARGE,
        }
    }
}

impl From<crate::attachment::AttachmentError> for ApiError {
    fn from(e: crate::attachment::AttachmentError) -> Self {
        use crate::attachment::AttachmentError as E;
        match e {
            E::NotAllowed => ApiError::ATTACHMENTS_NOT_ALLOWED,
            E::ExpiresBeforeDelivery => ApiError::ATTACHMENT_EXPIRES_BEFORE_DELIVERY,
            E::TooLarge(_) => ApiError::ENTITY_TOO_LARGE,
            E::Bandwidth => ApiError::ATTACHMENT_BANDWIDTH,
            E::NotFound => ApiError::NOT_FOUND,
            E::RangeNotSatisfiable { .. } => ApiError::RANGE_NOT_SATISFIABLE,
            E::Body(e) => ApiError::body_read_error(e.as_ref(), ApiError::BAD_REQUEST),
            E::Store(crate::attachment::store::StoreFailure::Full(detail)) => {
                tracing::error!(%detail, "attachment storage full");
                ApiError::INSUFFICIENT_STORAGE
            }
            E::Store(e) => {
                tracing::error!(error = %e, "attachment storage failed");
                ApiError::INTERNAL
            }
        }
    }
}

impl From<crate::core::PublishError> for ApiError {
    fn from(err: crate::core::PublishError) -> Self {
        use crate::core::PublishError;
        match err {
            PublishError::Store(e) => ApiError::from(e),
            // The core logged it: the event may be stored, but it was not delivered.
            PublishError::Broker(_) => ApiError::UNAVAILABLE,
            PublishError::Aborted => ApiError::INTERNAL,
            PublishError::EmailDisabled => ApiError::EMAIL_DISABLED,
            PublishError::DelayedEmail => ApiError::DELAY_NO_EMAIL,
        }
    }
}

impl From<crate::idempotency::IdempotencyError> for ApiError {
    fn from(err: crate::idempotency::IdempotencyError) -> Self {
        use crate::idempotency::{IdempotencyError, KeyStoreError};
        match err {
            IdempotencyError::Publish(e) => ApiError::from(e),
            IdempotencyError::Mismatch => ApiError::IDEMPOTENCY_MISMATCH,
            IdempotencyError::InFlight { .. } => ApiError::IDEMPOTENCY_IN_FLIGHT,
            IdempotencyError::Store(e) => {
                tracing::error!(error = %e, "idempotency store failure");
                match e {
                    KeyStoreError::Unavailable(_) => ApiError::UNAVAILABLE,
                    KeyStoreError::Failed(_) => ApiError::INTERNAL,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_ntfy() {
        assert_eq!(
            ApiError::NOT_FOUND.to_json_line(),
            "{\"code\":40401,\"http\":404,\"error\":\"page not found\"}\n"
        );
        let e = ApiError::ACTIONS_INVALID.with_detail("too many");
        assert!(e.to_json_line().contains("actions invalid; too many"));
        assert!(e.to_json_line().contains("\"link\":"));
    }

    #[test]
    fn storage_failures_are_not_internal_errors() {
        use crate::store::StoreError;
        let full = ApiError::from(StoreError::Full("disk full".into()));
        assert_eq!((full.http, full.code), (507, 50702));
        let down = ApiError::from(StoreError::Unavailable("I/O error".into()));
        assert_eq!((down.http, down.code), (503, 50301));
        let bug = ApiError::from(StoreError::Backend("constraint".into()));
        assert_eq!((bug.http, bug.code), (500, 50001));
    }

    #[test]
    fn history_failures_keep_their_answers() {
        use crate::core::HistoryError;
        let busy = ApiError::from(HistoryError::Busy {
            retry_after: crate::core::HISTORY_RETRY_AFTER,
        });
        assert_eq!((busy.http, busy.code), (429, 42901));
        let closed = ApiError::from(HistoryError::Store(crate::store::StoreError::Closed));
        assert_eq!((closed.http, closed.code), (503, 50301));
    }

    #[test]
    fn auth_refusals_keep_ntfys_codes() {
        use crate::auth::AuthError;
        let answer = |e: AuthError| {
            let e = ApiError::from(e);
            (e.http, e.code)
        };
        assert_eq!(answer(AuthError::Unauthorized), (401, 40101));
        assert_eq!(answer(AuthError::Forbidden), (403, 40301));
        assert_eq!(answer(AuthError::TooManyFailures), (429, 42909));
    }

    #[test]
    fn limit_refusals_keep_ntfys_codes() {
        use crate::limits::{Limit, Refusal};
        let code = |limit: Limit| ApiError::from(Refusal::from(limit)).code;
        assert_eq!(code(Limit::Requests), 42901);
        assert_eq!(code(Limit::Subscriptions), 42903);
        assert_eq!(code(Limit::Emails), 42902);
        assert_eq!(code(Limit::GlobalTopics), 42904);
        assert_eq!(code(Limit::Messages), 42908);
        assert_eq!(code(Limit::TopicCreation), 42911);
        assert_eq!(code(Limit::BodySize), 41303);
        assert_eq!(code(Limit::UrlLength), 41401);
        assert_eq!(code(Limit::HeaderSize), 43101);
    }

    #[test]
    fn publish_failures_keep_their_answers() {
        use crate::broker::BrokerError;
        use crate::core::PublishError;
        use crate::store::StoreError;
        let full = ApiError::from(PublishError::Store(StoreError::Full("disk full".into())));
        assert_eq!((full.http, full.code), (507, 50702));
        let broker = ApiError::from(PublishError::Broker(BrokerError::Unavailable(
            "down".into(),
        )));
        assert_eq!((broker.http, broker.code), (503, 50301));
        let aborted = ApiError::from(PublishError::Aborted);
        assert_eq!((aborted.http, aborted.code), (500, 50001));
    }
}
