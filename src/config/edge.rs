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
        if limits.group_change_rate > 0 && limits.group_change_burst == 0 {
            return invalid(
                "limits.group_change_burst",
                "must be at least 1 when limits.group_change_rate is set".to_owned(),
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    fn invalid_key(text: &str) -> String {
        match Config::from_toml(text, Path::new("t.toml")) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn edge_keys_are_read_and_checked() {
        let config = Config::from_toml(
            "[limits]\nsend_rate = 5\nheader_timeout = 3\n[poll]\njitter_percent = 0\n\
             [cors]\nallowed_origins = [\"https://chat.example.com\"]\n[demo]\nenabled = true",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(config.limits.send_rate, 5);
        assert_eq!(config.limits.header_timeout, Duration::from_secs(3));
        assert!(config.cors.allows("https://chat.example.com"));
        assert!(!config.cors.allows("https://evil.example.com"));
        assert!(config.demo.enabled);
        assert!(
            !Config::default().demo.enabled,
            "the demo is off by default"
        );
        assert!(Config::default().cors.allowed_origins.is_empty());

        for (text, key) in [
            (
                "[limits]\nmax_header_bytes = 100",
                "limits.max_header_bytes",
            ),
            ("[limits]\nmax_query_bytes = 0", "limits.max_query_bytes"),
            ("[limits]\nheader_timeout = 0", "limits.header_timeout"),
            ("[limits]\nbody_timeout = 0", "limits.body_timeout"),
            (
                "[limits]\nsend_rate = 1\nsend_burst = 0",
                "limits.send_burst",
            ),
            ("[poll]\njitter_percent = 90", "poll.jitter_percent"),
            (
                "[cors]\nallowed_origins = [\"chat.example.com\"]",
                "cors.allowed_origins",
            ),
            (
                "[cors]\nallowed_origins = [\"https://a.example/\"]",
                "cors.allowed_origins",
            ),
        ] {
            assert_eq!(invalid_key(text), key, "{text}");
        }
    }
}
