//! The one place where failures become HTTP statuses and the contract's
//! error codes.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::json;

use super::response::{Response, json_response};
use crate::auth::AuthError;
use crate::service;

/// Everything a request can fail with, before or inside the service.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidField(String),
    #[error("{0}")]
    InvalidCursor(String),
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    #[error("no such route")]
    UnknownRoute,
    #[error("this route accepts {0} only")]
    MethodNotAllowed(&'static str),
    /// The node owning the request could not be reached, or disagrees
    /// about who owns it (the ring is changing).
    #[error("{0}")]
    PeerUnavailable(String),
    /// An internal call without a valid signature.
    #[error("{0}")]
    BadSignature(crate::cluster::SignatureError),
    /// The request head is over `limits.max_header_bytes`.
    #[error("the request head is over the limit of {0} bytes")]
    HeadTooLarge(usize),
    #[error("the request body is over the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// A per-user rate limit (of what, and how long to wait); the client
    /// may retry after the wait.
    #[error("too many {0}; retry in {secs} s", secs = retry_secs(*.1))]
    RateLimited(&'static str, std::time::Duration),
    /// The node is overloaded (its limit of sends in progress, or sends
    /// lately too slow); the client may retry after a second.
    #[error("{}; retry in 1 s", overload_text(.0))]
    Overloaded(crate::service::rate::Shed),
    #[error(transparent)]
    Service(#[from] service::Error),
}

fn overload_text(shed: &crate::service::rate::Shed) -> String {
    use crate::service::rate::Shed;
    match shed {
        Shed::Full(n) => format!("this node has {n} sends in progress, its limit"),
        Shed::Slow(avg) => format!(
            "this node is overloaded: sends lately took {} ms on average",
            avg.as_millis()
        ),
    }
}

impl ApiError {
    pub fn field(message: impl Into<String>) -> ApiError {
        ApiError::InvalidField(message.into())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use service::Error as S;
        match self {
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::InvalidField(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
            ApiError::InvalidCursor(_) => (StatusCode::BAD_REQUEST, "invalid_cursor"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::UnknownRoute => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RateLimited(..) | ApiError::Overloaded(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            ApiError::PeerUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::BadSignature(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::HeadTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_header_fields_too_large",
            ),
            ApiError::Service(e) => match e {
                S::InvalidField(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
                S::InvalidCursor => (StatusCode::BAD_REQUEST, "invalid_cursor"),
                S::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
                S::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                S::IdempotencyConflict | S::GroupConflict => {
                    (StatusCode::CONFLICT, "idempotency_conflict")
                }
                S::PrevMissing => (StatusCode::CONFLICT, "prev_missing"),
                S::TooManyPolls(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
                S::Unavailable(_) | S::ShuttingDown | S::Rejoining | S::Moved | S::PushInFlight => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
                S::NotOwner => (StatusCode::MISDIRECTED_REQUEST, "not_owner"),
                S::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }

    pub fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            // Bad input is the client's business: not logged. Ours is.
            ApiError::Service(service::Error::Internal(detail)) => {
                tracing::error!(%detail, "internal error");
                "internal error".to_owned()
            }
            ApiError::Service(service::Error::Unavailable(cause)) => {
                tracing::warn!(%cause, "storage unavailable");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let body = json!({"error": {"code": code, "message": message}});
        let mut response = json_response(status, Bytes::from(body.to_string()));
        let headers = response.headers_mut();
        match &self {
            ApiError::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::RateLimited(_, wait) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_secs(*wait)));
            }
            // RFC 6750, section 3: a 401 names the scheme, and says
            // `invalid_token` when one was given but refused.
            ApiError::Unauthorized(AuthError::Missing) => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="carrier""#),
                );
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="carrier", error="invalid_token""#),
                );
            }
            _ if status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// `Retry-After` is whole seconds: round up, so a client that waits it out
/// finds a token.
fn retry_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}
