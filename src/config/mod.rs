//! Configuration: TOML, every key documented in `config/carrier.toml`.
//!
//! Loaded and validated before any port is bound; a bad file is a usage
//! error (exit 2) naming the key or path.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod edge;
mod secret;
mod validate;
pub use edge::{CorsConfig, DemoConfig};
use secret::{generated_secret, read_secret_file};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: the listening socket and shutdown.
    pub server: ServerConfig,
    /// `[auth]`: the HS256 key that signs and checks bearer tokens.
    pub auth: AuthConfig,
    /// `[storage]`: where messages live.
    pub storage: StorageConfig,
    /// `[cluster]`: this node's name and the ring it belongs to.
    pub cluster: ClusterConfig,
    /// `[poll]`: long-poll hold times.
    pub poll: PollConfig,
    /// `[send]`: ordering and group commit of sends.
    pub send: SendConfig,
    /// `[limits]`: bounds that protect the node.
    pub limits: LimitsConfig,
    /// `[cache]`: memory given to the read caches.
    pub cache: CacheConfig,
    /// `[cors]`: which browser origins may call the API.
    pub cors: CorsConfig,
    /// `[demo]`: the demo chat page at `/demo`.
    pub demo: DemoConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Client API, /metrics, /healthz and /readyz.
    pub listen: SocketAddr,
    /// How long shutdown waits for in-flight requests after answering parked polls.
    #[serde(with = "secs")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 key (its UTF-8 bytes), at least 32 bytes.
    pub secret: Option<String>,
    /// A file holding the key (one trailing newline ignored), relative to the
    /// working directory; mutually exclusive with `secret`.
    pub secret_file: Option<PathBuf>,
    /// When set, `/metrics` answers only `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                file: None,
                key: key.to_owned(),
                reason,
            })
        };
        match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => {
                return invalid(
                    "auth.secret",
                    "set either `auth.secret` or `auth.secret_file`, not both".to_owned(),
                );
            }
            // The length only: the secret itself never appears in a message.
            (Some(s), None) if s.len() < MIN_SECRET_BYTES => {
                return invalid(
                    "auth.secret",
                    format!(
                        "the secret is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                        s.len()
                    ),
                );
            }
            (Some(s), None) if secret::is_placeholder(s.as_bytes()) => {
                return invalid("auth.secret", secret::PLACEHOLDER_REASON.to_owned());
            }
            (None, Some(p)) if p.as_os_str().is_empty() => {
                return invalid("auth.secret_file", "must not be empty".to_owned());
            }
            _ => {}
        }
        // An empty token would look like a guard and let everyone in.
        if self
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return invalid(
                "auth.metrics_token",
                "must not be empty: remove the key to leave /metrics open".to_owned(),
            );
        }
        Ok(())
    }
}

/// Written by hand so that logging a [`Config`] never prints the secret.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The built-in fjall store in `storage.path`: one node, no other service.
    #[default]
    Embedded,
    /// HBase through its Thrift1 server (`[storage.hbase]`).
    Hbase,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `"embedded"` or `"hbase"`.
    pub backend: Backend,
    /// The embedded store's folder; also where a generated secret is kept.
    pub path: PathBuf,
    /// Used only when `backend = "hbase"`.
    pub hbase: HbaseConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Embedded,
            path: PathBuf::from("./data"),
            hbase: HbaseConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HbaseConfig {
    /// `host:port` of the HBase Thrift1 server.
    pub thrift: String,
    /// Prepended to every table name, so several deployments share a cluster.
    pub table_prefix: String,
    /// Thrift connections kept open at most; also the most calls in flight.
    pub pool_size: usize,
    /// How long dialling the Thrift server may take.
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    /// The longest one call may take (each socket read and write, and the
    /// wait for a free connection): past it the request gets 503.
    #[serde(with = "millis")]
    pub call_timeout: Duration,
    /// Idle connections older than this are dialled again (the Thrift
    /// server closes idle ones after 60 s by default).
    #[serde(with = "secs")]
    pub max_idle: Duration,
}

impl Default for HbaseConfig {
    fn default() -> Self {
        HbaseConfig {
            thrift: "127.0.0.1:9090".to_owned(),
            table_prefix: "carrier_".to_owned(),
            pool_size: 64,
            connect_timeout: Duration::from_millis(3000),
            call_timeout: Duration::from_millis(5000),
            max_idle: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id; one of `peers` when peers are given.
    pub node_id: String,
    /// Every node of the ring, this one included; empty for a single node.
    pub peers: Vec<PeerConfig>,
    /// Time between two renewals of this node's lease (and readings of
    /// its peers').
    #[serde(with = "millis")]
    pub heartbeat_interval: Duration,
    /// A renewal, or a call to a peer while joining, not done within this
    /// time failed.
    #[serde(with = "millis")]
    pub heartbeat_timeout: Duration,
    /// How long a peer's lease may go unrenewed before it leaves the ring.
    /// A node stops writing after three quarters of it without a renewal.
    #[serde(with = "millis")]
    pub lease: Duration,
    /// How long a send waits for the node owning a recipient's mailbox to
    /// take the recipient's copy before it answers anyway (the copy stays
    /// in the durable outbox until it lands).
    #[serde(with = "millis")]
    pub remote_wait: Duration,
    /// How long a forwarded request (other than a long poll) may take.
    #[serde(with = "millis")]
    pub forward_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: "n1".to_owned(),
            peers: Vec::new(),
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_millis(750),
            lease: Duration::from_millis(2500),
            remote_wait: Duration::from_millis(3000),
            forward_timeout: Duration::from_millis(10_000),
        }
    }
}

impl ClusterConfig {
    /// Whether other nodes share the store with this one.
    pub fn is_multi_node(&self) -> bool {
        self.peers.len() > 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The node's `cluster.node_id`; unique in the ring.
    pub id: String,
    /// Where the other nodes reach it.
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Hold time when the client gives no `timeout`.
    #[serde(with = "secs")]
    pub default_timeout: Duration,
    /// The longest hold a client may ask for; stay under the shortest idle
    /// cut-off of the proxies in front of your clients.
    #[serde(with = "secs")]
    pub max_timeout: Duration,
    /// Each hold is shortened by a random share of up to this many percent,
    /// so a crowd of clients does not re-poll in lockstep.
    pub jitter_percent: u8,
    /// Learn, per user and device, when something in between cuts polls
    /// before their hold ends, and hold that device's polls for less.
    pub learn_cuts: bool,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            default_timeout: Duration::from_secs(25),
            max_timeout: Duration::from_secs(55),
            jitter_percent: 10,
            learn_cuts: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendConfig {
    /// How long a send waits for the `prev_message_id` it names.
    #[serde(with = "millis")]
    pub prev_wait: Duration,
    /// Most sends committed with one disk sync.
    pub max_batch: usize,
    /// Groups of at least this many members fan out on read
    /// (`service/fanout.rs`).
    pub large_group_threshold: usize,
}

impl Default for SendConfig {
    fn default() -> Self {
        SendConfig {
            prev_wait: Duration::from_millis(2000),
            max_batch: 1024,
            large_group_threshold: 1000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Parked polls one user may hold (all devices together).
    pub max_polls_per_user: usize,
    /// Parked polls this node holds at most.
    pub max_polls_per_node: usize,
    /// Sends in progress on this node at most (its clients' and those
    /// forwarded to it); more are refused with `429` and `Retry-After`.
    pub max_sends_in_flight: usize,
    /// When sends lately took longer than this on average, new ones are
    /// refused with `429` and `Retry-After` until they are faster again.
    #[serde(with = "millis")]
    pub send_latency_target: Duration,
    /// Members a group may have.
    pub max_group_members: usize,
    /// A client must send its whole request head within this time (slowloris).
    #[serde(with = "secs")]
    pub header_timeout: Duration,
    /// A client must send its whole body within this time.
    #[serde(with = "secs")]
    pub body_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; at least 1024.
    pub max_header_bytes: usize,
    /// Longest query string, in bytes.
    pub max_query_bytes: usize,
    /// Sends per second one user may make, on average; 0: no limit.
    pub send_rate: u32,
    /// Sends one user may make at once above the rate.
    pub send_burst: u32,
    /// Group creations and member changes per second one user may make, on
    /// average; 0: no limit.
    pub group_change_rate: u32,
    /// Group creations and member changes one user may make at once.
    pub group_change_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 64 * 1024,
            max_polls_per_user: 16,
            max_polls_per_node: 100_000,
            max_sends_in_flight: 1024,
            send_latency_target: Duration::from_secs(1),
            max_group_members: 200_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_query_bytes: 4096,
            send_rate: 0,
            send_burst: 50,
            group_change_rate: 1,
            group_change_burst: 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bytes held by the cache of mailbox tails.
    pub mailbox_bytes: u64,
    /// Bytes held by the cache of recent conversation pages.
    pub history_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mailbox_bytes: 64 << 20,
            history_bytes: 64 << 20,
        }
    }
}

/// The shortest secret accepted, in bytes (HS256's own key size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Name of the generated secret inside `storage.path`.
pub const GENERATED_SECRET_FILE: &str = "secret";

/// Why a configuration cannot be used. Every variant names the file or the
/// key at fault; `main` prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file is not valid TOML, has an unknown key or an ill-typed value.
    #[error("invalid config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A value parsed but breaks a rule (`key` is its dotted name).
    #[error("{}`{key}`: {reason}", in_file(file.as_deref()))]
    Invalid {
        /// The file it came from; `None` for values built in code.
        file: Option<PathBuf>,
        key: String,
        reason: String,
    },
    /// `auth.secret_file`, or the generated secret, could not be read or
    /// written; `doing` says which (`"cannot read auth.secret_file"`).
    #[error("{doing} {}: {source}", path.display())]
    SecretIo {
        doing: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// `auth.secret_file`, or the generated secret, holds too short a key.
    #[error("{what} {} holds {len} bytes; at least {MIN_SECRET_BYTES} are needed", path.display())]
    SecretTooShort {
        what: &'static str,
        path: PathBuf,
        len: usize,
    },
}

fn in_file(file: Option<&Path>) -> String {
    match file {
        Some(path) => format!("invalid config file {}: ", path.display()),
        None => "invalid config value ".to_owned(),
    }
}

impl Config {
    /// The configuration to run with: the built-in defaults when `path` is
    /// `None`, else the file (missing keys take their defaults), validated.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            let config = Config::default();
            config.validate()?;
            return Ok(config);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, reason, .. } => ConfigError::Invalid {
                file: Some(origin.to_owned()),
                key,
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks the rules serde cannot express. Errors name the dotted key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.auth.validate()?;
        self.storage.validate()?;
        self.poll.validate()?;
        self.validate_nonzero()?;
        self.validate_edge()?;
        self.cluster.validate(self.storage.backend)
    }

    /// The HS256 key, per the contract:
    ///
    /// - `auth.secret`: its UTF-8 bytes;
    /// - `auth.secret_file`: the file's bytes, trailing newline ignored;
    /// - neither: a random secret kept in `<storage.path>/secret` (mode
    ///   0600), generated on first use and reused after, so `serve` and
    ///   `token` with one configuration agree.
    ///
    /// Never log the result.
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        if let Some(secret) = &self.auth.secret {
            return Ok(secret.as_bytes().to_vec());
        }
        if let Some(path) = &self.auth.secret_file {
            return read_secret_file(path, "auth.secret_file");
        }
        generated_secret(&self.storage.path)
    }

    /// The configuration with what is derived from it: the secret is read
    /// (or generated) here, once, so a bad one is a usage error before any
    /// port is bound and no later step derives it again.
    pub fn build(self) -> Result<Built, ConfigError> {
        let secret = self.secret()?;
        Ok(Built {
            config: self,
            secret,
        })
    }

    /// Where the generated secret lives (used only when no secret is configured).
    pub fn generated_secret_path(&self) -> PathBuf {
        self.storage.path.join(GENERATED_SECRET_FILE)
    }
}

/// A configuration and what is derived from it (see [`Config::build`]).
pub struct Built {
    pub config: Config,
    /// The HS256 key (see [`Config::secret`]).
    pub secret: Vec<u8>,
}

/// A toml error, headed by the full dotted key when toml names only its
/// last part (`unknown field `x``) and the table it sits in is clear.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let detail = err.to_string();
    let detail = detail.trim_end();
    let field = err
        .message()
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let Some(field) = field else {
        return detail.to_owned();
    };
    let key = match err
        .span()
        .and_then(|span| table_of_key_at(text, span.start))
    {
        Some(table) => format!("{table}.{field}"),
        None => field.to_owned(),
    };
    format!("unknown key `{key}`\n{detail}")
}

/// The `[table]` or `[[table]]` header governing a plain `key = value` line
/// whose key starts at `offset`. `None` when the key is a header itself, or
/// not at the start of its line (inline tables, dotted keys): guessing
/// there could name the wrong key.
fn table_of_key_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    if !text[line_start..offset].trim().is_empty() {
        return None;
    }
    let line = text[offset..].lines().next().unwrap_or("");
    let key_end = line.find(['=', ' ', '\t']).unwrap_or(line.len());
    if line[..key_end].contains('.') {
        return None;
    }
    text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix("[[").and_then(|r| r.split("]]").next());
        let inner = inner.or_else(|| l.strip_prefix('[').and_then(|r| r.split(']').next()));
        inner.map(|name| name.trim().to_owned())
    })
}

/// Durations written as whole seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Durations written as milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests;
