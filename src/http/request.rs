//! Reading requests: the body (bounded), JSON fields with precise errors,
//! query parameters.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use serde_json::{Map, Value};

use super::error::ApiError;

/// The whole body, refused early when it declares or reaches more than `max`
/// bytes, or when it has not all arrived within `within` (slow senders hold
/// a connection and memory).
pub(crate) async fn read_body(
    req: hyper::Request<Incoming>,
    max: usize,
    within: Duration,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::PayloadTooLarge(max));
    }
    let read = tokio::time::timeout(within, Limited::new(req.into_body(), max).collect()).await;
    let Ok(read) = read else {
        return Err(ApiError::InvalidJson(format!(
            "the body did not arrive within {} s",
            within.as_secs()
        )));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge(max)),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "could not read the body: {e}"
        ))),
    }
}

/// Whether `value` holds a float that an integer beyond 64 bits would have
/// become (a cheap first look: the text is read only if one does).
fn maybe_wide_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => n
            .as_f64()
            .is_some_and(|f| n.is_f64() && f.fract() == 0.0 && f.abs() >= 9.2e18),
        Value::Array(items) => items.iter().any(maybe_wide_integer),
        Value::Object(map) => map.values().any(maybe_wide_integer),
        _ => false,
    }
}

/// Whether the JSON text has an integer literal below `i64::MIN` or above
/// `u64::MAX`. Strings are skipped; the text is known to be valid JSON.
fn has_wide_integer(text: &[u8]) -> bool {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                if integer_too_wide(&text[start..i]) {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

fn integer_too_wide(literal: &[u8]) -> bool {
    if literal.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return false;
    }
    // JSON has no leading zeros: longer means larger.
    let (digits, limit): (&[u8], &[u8]) = match literal.strip_prefix(b"-") {
        Some(digits) => (digits, b"9223372036854775808"),
        None => (literal, b"18446744073709551615"),
    };
    digits.len() > limit.len() || (digits.len() == limit.len() && digits > limit)
}

/// A JSON object body.
pub(crate) struct Fields(Map<String, Value>);

impl Fields {
    pub(crate) fn parse(body: &[u8]) -> Result<Fields, ApiError> {
        match serde_json::from_slice::<Value>(body) {
            // serde_json keeps integers beyond 64 bits as floats: refused,
            // never stored altered.
            Ok(Value::Object(map))
                if map.values().any(maybe_wide_integer) && has_wide_integer(body) =>
            {
                Err(ApiError::field(
                    "an integer in the body does not fit in 64 bits; send it as a string",
                ))
            }
            Ok(Value::Object(map)) => Ok(Fields(map)),
            Ok(_) => Err(ApiError::InvalidJson(
                "the body must be a JSON object".into(),
            )),
            Err(e) => Err(ApiError::InvalidJson(format!("malformed JSON: {e}"))),
        }
    }

    /// The field, if present and not null.
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub(crate) fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name)
    }

    pub(crate) fn id<T: FromStr>(&self, name: &str) -> Result<T, ApiError> {
        self.opt_id(name)?
            .ok_or_else(|| ApiError::field(format!("`{name}` is required")))
    }

    pub(crate) fn opt_id<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| ApiError::field(format!("`{name}` must be a UUID"))),
            Some(_) => Err(ApiError::field(format!("`{name}` must be a UUID string"))),
        }
    }

    /// A list of ids; absent means empty.
    pub(crate) fn ids<T: FromStr>(&self, name: &str) -> Result<Vec<T>, ApiError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| ApiError::field(format!("`{name}` must hold UUID strings")))
                })
                .collect(),
            Some(_) => Err(ApiError::field(format!(
                "`{name}` must be an array of UUIDs"
            ))),
        }
    }

    pub(crate) fn string(&self, name: &str, max_len: usize) -> Result<String, ApiError> {
        match self.get(name) {
            Some(Value::String(s)) if s.len() <= max_len => Ok(s.clone()),
            Some(Value::String(_)) => Err(ApiError::field(format!(
                "`{name}` is longer than {max_len} bytes"
            ))),
            Some(_) => Err(ApiError::field(format!("`{name}` must be a string"))),
            None => Err(ApiError::field(format!("`{name}` is required"))),
        }
    }

    pub(crate) fn positive(&self, name: &str) -> Result<u64, ApiError> {
        match self.get(name).and_then(Value::as_u64) {
            Some(n) if n > 0 => Ok(n),
            _ if self.has(name) => Err(ApiError::field(format!(
                "`{name}` must be a positive integer"
            ))),
            _ => Err(ApiError::field(format!("`{name}` is required"))),
        }
    }
}

/// Query parameters; unknown ones are ignored (proxies and browsers add
/// cache busters).
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last value given for `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A non-negative integer parameter.
    pub(crate) fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::field(format!(
                    "query parameter `{name}` must be a non-negative integer"
                ))
            }),
        }
    }

    /// `limit`: default when absent, clamped to `max`, zero refused.
    pub(crate) fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.number("limit")? {
            None => Ok(default),
            Some(0) => Err(ApiError::field(
                "query parameter `limit` must be at least 1",
            )),
            Some(n) => Ok((n as usize).min(max)),
        }
    }

    pub(crate) fn id<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::field(format!("query parameter `{name}` must be a UUID"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_beyond_64_bits_are_refused_and_the_rest_kept() {
        for bad in [
            r#"{"body":{"n":18446744073709551616}}"#,
            r#"{"body":[1,-9223372036854775809]}"#,
            r#"{"body":{"deep":[{"n":123456789012345678901234567890}]}}"#,
        ] {
            assert!(Fields::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        for good in [
            r#"{"body":{"n":18446744073709551615,"m":-9223372036854775808}}"#,
            r#"{"body":{"f":1e19,"g":18446744073709551616.0,"s":"18446744073709551616"}}"#,
            r#"{"body":{"s":"a \" 99999999999999999999999 \\","n":1}}"#,
        ] {
            assert!(Fields::parse(good.as_bytes()).is_ok(), "{good}");
        }
    }

    #[test]
    fn query_values_are_decoded_and_last_wins() {
        let q = Query::parse(Some("limit=5&limit=7&cursor=%30%30&_=1"));
        assert_eq!(q.limit(100, 1000).unwrap(), 7);
        assert_eq!(q.get("cursor"), Some("00"));
        assert!(Query::parse(Some("limit=-1")).limit(1, 2).is_err());
        assert!(Query::parse(Some("limit=0")).limit(1, 2).is_err());
        assert_eq!(
            Query::parse(Some("limit=99999")).limit(1, 500).unwrap(),
            500
        );
        assert!(Query::parse(Some("timeout=abc")).number("timeout").is_err());
    }

    #[test]
    fn fields_say_which_field_is_wrong() {
        let f = Fields::parse(br#"{"to": 5, "n": 0, "ids": ["x"]}"#).unwrap();
        let e = f.id::<crate::domain::UserId>("to").unwrap_err().to_string();
        assert!(e.contains("`to`"), "{e}");
        assert!(f.positive("n").is_err());
        assert!(f.ids::<crate::domain::UserId>("ids").is_err());
        assert!(matches!(
            Fields::parse(b"[1]"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(Fields::parse(b"{"), Err(ApiError::InvalidJson(_))));
    }
}
