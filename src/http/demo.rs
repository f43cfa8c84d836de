//! `/demo`: a small chat page, embedded in the binary, served only when
//! `demo.enabled` is set. Plain JS long-polling with `fetch`; it holds no
//! secret (users paste tokens minted with `carrier token`).

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderValue;

use super::error::ApiError;
use super::response::{Response, text};

const INDEX: &str = include_str!("demo/index.html");
const SCRIPT: &str = include_str!("demo/chat.js");

/// The files of the page, by the path segment after `/demo/`.
pub(super) fn file(enabled: bool, name: &str) -> Result<Response, ApiError> {
    if !enabled {
        return Err(ApiError::UnknownRoute);
    }
    let (content_type, body) = match name {
        "" | "index.html" => ("text/html; charset=utf-8", INDEX),
        "chat.js" => ("text/javascript; charset=utf-8", SCRIPT),
        _ => return Err(ApiError::UnknownRoute),
    };
    let mut response = text(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    );
    response.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' http: https:; style-src 'self' 'unsafe-inline'",
        ),
    );
    Ok(response)
}
