//! The keys that face browsers and hostile clients: `[cors]`, `[demo]`, and
//! the rules for the edge limits of `[limits]` and `[poll]`.

use serde::Deserialize;

use super::{Config, ConfigError};

/// Smaller request heads would refuse ordinary bearer tokens.
pub(super) const MIN_HEADER_BYTES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins (`scheme://host[:port]`) whose pages may call the API; `"*"`
    /// allows any. Empty: no CORS headers, browsers allow same-origin only.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer, in seconds.
    pub max_age: u32,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age: 600,
        }
    }
}

impl CorsConfig {
    /// Whether a page from `origin` may call the API.
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Serve the demo chat page at `/demo`. It holds no secret: users paste
    /// tokens minted with `carrier token`.
    pub enabled: bool,
}

impl Config {
    pub(super) fn validate_edge(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                file: None,
                key: key.to_owned(),
                reason,
            })
        };
        let limits = &self.limits;
        if limits.max_header_bytes < MIN_HEADER_BYTES {
            return invalid(
                "limits.max_header_bytes",
                format!("must be at least {MIN_HEADER_BYTES}"),
            );
        }
        let nonzero: [(&str, u64); 3] = [
            ("limits.max_query_bytes", limits.max_query_bytes as u64),
            ("limits.header_timeout", limits.header_timeout.as_secs()),
            ("limits.body_timeout", limits.body_timeout.as_secs()),
        ];
        if let Some((key, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return invalid(key, "must be greater than 0".to_owned());
        }
        if limits.send_rate > 0 && limits.send_burst == 0 {
            return invalid(
                "limits.send_burst",
                "must be at least 1 when limits.send_rate is set".to_owned(),
            );
        }
        if self.poll.jitter_percent > 50 {
            return invalid("poll.jitter_percent", "must be at most 50".to_owned());
        }
        for origin in &self.cors.allowed_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && !origin.contains(char::is_whitespace));
            if !ok {
                return invalid(
                    "cors.allowed_origins",
                    format!(
                        "{origin:?} is not an origin like \"https://chat.example.com\" or \"*\""
                    ),
                );
            }
        }
        Ok(())
    }
}
