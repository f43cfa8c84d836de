//! CORS: which browser pages may call the API. Preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is the only use of `OPTIONS`; the API
//! itself stays `GET` and `POST`.

use hyper::Method;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    HeaderMap, HeaderValue, ORIGIN, VARY,
};

use super::Ctx;
use super::response::{Response, no_content};

/// Request headers a page may send: the bearer token and the JSON body's type.
const ALLOWED_HEADERS: &str = "authorization, content-type";
/// Response headers a page may read besides the simple ones.
const EXPOSED_HEADERS: &str = "retry-after, idempotent-replayed, allow";

/// The request's `Origin`, when the configuration allows it.
pub(super) fn allowed_origin(ctx: &Ctx, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    let text = origin.to_str().ok()?;
    ctx.cors.allows(text).then(|| origin.clone())
}

/// The answer to a preflight for a route accepting `methods`, or `None`
/// when this is not a preflight this node grants (it then gets the usual
/// `405`, and the browser refuses the call).
pub(super) fn preflight(
    ctx: &Ctx,
    method: &Method,
    headers: &HeaderMap,
    methods: &'static str,
) -> Option<Response> {
    if method != Method::OPTIONS {
        return None;
    }
    let origin = allowed_origin(ctx, headers)?;
    let wanted = headers.get(ACCESS_CONTROL_REQUEST_METHOD)?.to_str().ok()?;
    if !methods.split(", ").any(|m| m == wanted) {
        return None;
    }
    let mut response = no_content();
    let h = response.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(ctx.cors.max_age));
    h.insert(
        VARY,
        HeaderValue::from_static("origin, access-control-request-method"),
    );
    Some(response)
}

/// Lets the page at `origin` read this response.
pub(super) fn allow(response: &mut Response, origin: HeaderValue) {
    let h = response.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    h.insert(VARY, HeaderValue::from_static("origin"));
}
