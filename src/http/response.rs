//! Response building: complete bodies with `Content-Length`, never cached,
//! never buffered by a proxy that honours `X-Accel-Buffering`.

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};

pub(crate) type Response = hyper::Response<Full<Bytes>>;

pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = hyper::Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A JSON value as a `200` (or other) response.
pub(crate) fn json_value(status: StatusCode, value: &impl serde::Serialize) -> Response {
    // Our own types and `serde_json::Value` always serialize.
    let body = serde_json::to_vec(value).unwrap_or_default();
    json_response(status, Bytes::from(body))
}

pub(crate) fn no_content() -> Response {
    let mut response = json_response(StatusCode::NO_CONTENT, Bytes::new());
    response.headers_mut().remove(CONTENT_TYPE);
    response
}

pub(crate) fn text(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut response = json_response(status, body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Joins JSON texts into one JSON array.
pub(crate) fn json_array(items: &[Bytes]) -> BytesMut {
    let len = items.iter().map(|i| i.len() + 1).sum::<usize>() + 2;
    let mut out = BytesMut::with_capacity(len);
    out.extend_from_slice(b"[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]");
    out
}
