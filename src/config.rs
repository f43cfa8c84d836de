//! Configuration: TOML, every key documented in `config/carrier.toml`.
//!
//! Loaded and validated before any port is bound; a bad file is a usage
//! error (exit 2) naming the key or path.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use serde::Deserialize;

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
}

impl Default for HbaseConfig {
    fn default() -> Self {
        HbaseConfig {
            thrift: "127.0.0.1:9090".to_owned(),
            table_prefix: "carrier_".to_owned(),
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
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: "n1".to_owned(),
            peers: Vec::new(),
        }
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
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            default_timeout: Duration::from_secs(25),
            max_timeout: Duration::from_secs(55),
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
    /// Groups above this size would switch to fan-out on read (not built yet;
    /// every group fans out on write today).
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
    /// Members a group may have.
    pub max_group_members: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 64 * 1024,
            max_polls_per_user: 16,
            max_polls_per_node: 100_000,
            max_group_members: 200_000,
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
        let invalid = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                file: None,
                key: key.to_owned(),
                reason,
            })
        };

        match (&self.auth.secret, &self.auth.secret_file) {
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
            (None, Some(p)) if p.as_os_str().is_empty() => {
                return invalid("auth.secret_file", "must not be empty".to_owned());
            }
            _ => {}
        }

        if self.storage.path.as_os_str().is_empty() {
            return invalid("storage.path", "must not be empty".to_owned());
        }
        if self.storage.backend == Backend::Hbase && self.storage.hbase.thrift.trim().is_empty() {
            return invalid(
                "storage.hbase.thrift",
                "must name the Thrift server when backend = \"hbase\"".to_owned(),
            );
        }

        let poll = &self.poll;
        if poll.max_timeout < Duration::from_secs(1) {
            return invalid("poll.max_timeout", "must be at least 1 second".to_owned());
        }
        if poll.default_timeout > poll.max_timeout {
            return invalid(
                "poll.default_timeout",
                format!(
                    "{} s is more than poll.max_timeout ({} s)",
                    poll.default_timeout.as_secs(),
                    poll.max_timeout.as_secs()
                ),
            );
        }

        let nonzero: [(&str, u64); 8] = [
            ("send.max_batch", self.send.max_batch as u64),
            ("limits.max_body_bytes", self.limits.max_body_bytes as u64),
            (
                "limits.max_polls_per_user",
                self.limits.max_polls_per_user as u64,
            ),
            (
                "limits.max_polls_per_node",
                self.limits.max_polls_per_node as u64,
            ),
            (
                "limits.max_group_members",
                self.limits.max_group_members as u64,
            ),
            ("cache.mailbox_bytes", self.cache.mailbox_bytes),
            ("cache.history_bytes", self.cache.history_bytes),
            (
                "send.large_group_threshold",
                self.send.large_group_threshold as u64,
            ),
        ];
        if let Some((key, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return invalid(key, "must be greater than 0".to_owned());
        }

        let cluster = &self.cluster;
        if cluster.node_id.trim().is_empty() {
            return invalid("cluster.node_id", "must not be empty".to_owned());
        }
        if !cluster.peers.is_empty() {
            let mut ids = HashSet::new();
            for peer in &cluster.peers {
                if !ids.insert(peer.id.as_str()) {
                    return invalid(
                        "cluster.peers",
                        format!("the id {:?} appears more than once", peer.id),
                    );
                }
            }
            if !ids.contains(cluster.node_id.as_str()) {
                return invalid(
                    "cluster.node_id",
                    format!(
                        "{:?} is not among cluster.peers; list every node of the ring, this one included",
                        cluster.node_id
                    ),
                );
            }
        }
        Ok(())
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

    /// Where the generated secret lives (used only when no secret is configured).
    pub fn generated_secret_path(&self) -> PathBuf {
        self.storage.path.join(GENERATED_SECRET_FILE)
    }
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

/// Reads a key from `path` (`what` names it in errors), without trailing newlines.
fn read_secret_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = std::fs::read(path).map_err(|source| ConfigError::SecretIo {
        doing: if what == GENERATED {
            "cannot read the generated secret"
        } else {
            "cannot read auth.secret_file"
        },
        path: path.to_owned(),
        source,
    })?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::SecretTooShort {
            what,
            path: path.to_owned(),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// How errors name the generated secret file.
const GENERATED: &str = "the generated secret";

/// Reads `<dir>/secret`, creating it first if it does not exist.
///
/// The new secret is written to a private temporary file, synced, then
/// linked into place with `hard_link`, which (unlike `rename`) never replaces
/// an existing file: when two processes start together, exactly one secret
/// wins and both use it, and nobody ever reads a half-written file.
fn generated_secret(dir: &Path) -> Result<Vec<u8>, ConfigError> {
    let path = dir.join(GENERATED_SECRET_FILE);
    let io_err = |doing: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| ConfigError::SecretIo {
            doing,
            path,
            source,
        }
    };
    match std::fs::metadata(&path) {
        Ok(_) => return read_secret_file(&path, GENERATED),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot read the generated secret", &path)(e)),
    }

    std::fs::create_dir_all(dir).map_err(io_err("cannot create the storage folder", dir))?;
    let mut raw = [0u8; 48];
    rand::rng().fill_bytes(&mut raw);
    let text = URL_SAFE_NO_PAD.encode(raw);

    let tmp = dir.join(format!(
        ".{GENERATED_SECRET_FILE}.{}.{:016x}.tmp",
        std::process::id(),
        rand::rng().next_u64()
    ));
    let written = write_private(&tmp, text.as_bytes()).and_then(|()| {
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(()),
            // Another process got there first: use its secret.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            // A file system without hard links: fall back to rename.
            Err(_) => std::fs::rename(&tmp, &path),
        }
    });
    let _ = std::fs::remove_file(&tmp);
    written.map_err(io_err("cannot write the generated secret", &path))?;
    read_secret_file(&path, GENERATED)
}

/// Creates `path` readable and writable by its owner only, writes, syncs.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
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
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn reference_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/carrier.toml")
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    fn invalid_key(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn no_path_gives_the_defaults() {
        assert_eq!(Config::load(None).unwrap(), Config::default());
    }

    #[test]
    fn reference_file_loads() {
        Config::load(Some(&reference_path())).unwrap();
    }

    #[test]
    fn minimal_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/minimal.toml");
        let config = Config::load(Some(&path)).unwrap();
        assert!(config.auth.secret.is_some());
    }

    #[test]
    fn reference_file_states_the_defaults() {
        let file = Config::load(Some(&reference_path())).unwrap();
        let defaults = Config::default();
        assert_eq!(file.server.listen, defaults.server.listen);
        assert_eq!(file.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(file.storage.backend, Backend::Embedded);
        assert_eq!(file.storage.path, defaults.storage.path);
        assert_eq!(file.poll.default_timeout, defaults.poll.default_timeout);
        assert_eq!(file.poll.max_timeout, defaults.poll.max_timeout);
        assert_eq!(file.limits.max_body_bytes, defaults.limits.max_body_bytes);
        // And every other key too.
        assert_eq!(file, defaults);
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn keys_override_defaults() {
        let config = parse(
            r#"
            [server]
            listen = "0.0.0.0:9000"
            [storage]
            backend = "hbase"
            [storage.hbase]
            thrift = "hbase:9090"
            [poll]
            default_timeout = 5
            max_timeout = 10
            [send]
            prev_wait = 250
            [cluster]
            node_id = "b"
            peers = [{ id = "a", addr = "10.0.0.1:80" }, { id = "b", addr = "10.0.0.2:80" }]
            "#,
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        assert_eq!(config.storage.backend, Backend::Hbase);
        assert_eq!(config.storage.hbase.thrift, "hbase:9090");
        assert_eq!(config.poll.max_timeout, Duration::from_secs(10));
        assert_eq!(config.send.prev_wait, Duration::from_millis(250));
        assert_eq!(config.cluster.peers.len(), 2);
    }

    #[test]
    fn unknown_key_names_dotted_key_and_file() {
        for (text, key, table) in [
            ("bogus = 1", "bogus", None),
            (
                "[server]\nlisten = \"127.0.0.1:1\"\nlisten_typo = 1",
                "listen_typo",
                Some("server"),
            ),
            (
                "[storage.hbase]\nthrfit = \"x\"",
                "thrfit",
                Some("storage.hbase"),
            ),
            ("[metrics]\nlisten = \"x\"", "metrics", None),
            (
                "[[cluster.peers]]\nid = \"a\"\naddr = \"127.0.0.1:1\"\nport = 2",
                "port",
                Some("cluster.peers"),
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains("test.toml"), "{message}");
            assert!(message.contains(&format!("`{key}`")), "{message}");
            let full = table.map_or(key.to_owned(), |t| format!("{t}.{key}"));
            assert!(
                message.contains(&format!("unknown key `{full}`")),
                "{message}"
            );
        }
    }

    #[test]
    fn unknown_key_in_inline_table_is_not_misnamed() {
        let text = "[cluster]\npeers = [{ id = \"n1\", addr = \"127.0.0.1:1\", port = 2 }]";
        let message = parse(text).unwrap_err().to_string();
        assert!(message.contains("unknown key `port`"), "{message}");
        assert!(!message.contains("cluster.port"), "{message}");
    }

    #[test]
    fn bad_values_are_parse_errors() {
        for text in [
            "[server]\nlisten = \"nowhere\"",
            "[storage]\nbackend = \"postgres\"",
            "[poll]\nmax_timeout = -1",
            "[limits]\nmax_body_bytes = \"big\"",
            "[server",
        ] {
            assert!(
                matches!(parse(text), Err(ConfigError::Parse { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = Path::new("/nonexistent/carrier.toml");
        let err = Config::load(Some(path)).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string().contains("/nonexistent/carrier.toml"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let both = format!("[auth]\nsecret = \"{SECRET}\"\nsecret_file = \"f\"");
        assert_eq!(invalid_key(&both), "auth.secret");
        assert_eq!(invalid_key("[auth]\nsecret = \"short\""), "auth.secret");
        assert_eq!(
            invalid_key("[poll]\nmax_timeout = 0\ndefault_timeout = 0"),
            "poll.max_timeout"
        );
        assert_eq!(
            invalid_key("[poll]\ndefault_timeout = 60"),
            "poll.default_timeout"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_body_bytes = 0"),
            "limits.max_body_bytes"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_polls_per_user = 0"),
            "limits.max_polls_per_user"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_polls_per_node = 0"),
            "limits.max_polls_per_node"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_group_members = 0"),
            "limits.max_group_members"
        );
        assert_eq!(
            invalid_key("[cache]\nmailbox_bytes = 0"),
            "cache.mailbox_bytes"
        );
        assert_eq!(
            invalid_key("[cache]\nhistory_bytes = 0"),
            "cache.history_bytes"
        );
        assert_eq!(invalid_key("[send]\nmax_batch = 0"), "send.max_batch");
        assert_eq!(invalid_key("[cluster]\nnode_id = \"\""), "cluster.node_id");
        let dup = "[cluster]\nnode_id = \"a\"\npeers = [{ id = \"a\", addr = \"127.0.0.1:1\" }, { id = \"a\", addr = \"127.0.0.1:2\" }]";
        assert_eq!(invalid_key(dup), "cluster.peers");
        let absent = "[cluster]\nnode_id = \"c\"\npeers = [{ id = \"a\", addr = \"127.0.0.1:1\" }]";
        assert_eq!(invalid_key(absent), "cluster.node_id");
    }

    #[test]
    fn invalid_message_names_file_and_key_but_not_the_secret() {
        let err = parse("[auth]\nsecret = \"hunter2\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.toml") && err.contains("auth.secret"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_redacts_the_secret() {
        let config = parse(&format!("[auth]\nsecret = \"{SECRET}\"")).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn literal_secret_is_its_utf8_bytes() {
        let config = parse(&format!("[auth]\nsecret = \"{SECRET}\"")).unwrap();
        assert_eq!(config.secret().unwrap(), SECRET.as_bytes());
    }

    #[test]
    fn secret_file_is_read_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let mut config = Config::default();
        config.auth.secret_file = Some(file.clone());
        assert_eq!(config.secret().unwrap(), SECRET.as_bytes());

        std::fs::write(&file, "too short\n").unwrap();
        let err = config.secret().unwrap_err();
        assert!(
            matches!(err, ConfigError::SecretTooShort { len: 9, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );

        config.auth.secret_file = Some(dir.path().join("absent"));
        let err = config.secret().unwrap_err();
        assert!(matches!(err, ConfigError::SecretIo { .. }), "{err:?}");
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn missing_secret_is_generated_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.path = dir.path().join("nested/data");
        let first = config.secret().unwrap();
        assert_eq!(first.len(), 64, "48 random bytes, base64url");
        assert!(
            first
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        );

        let path = config.generated_secret_path();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(config.secret().unwrap(), first, "reused, not regenerated");

        let mut other = Config::default();
        other.storage.path = tempfile::tempdir().unwrap().path().join("d");
        assert_ne!(other.secret().unwrap(), first, "random, not a constant");
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(&config.storage.path).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn concurrent_first_uses_agree_on_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.path = dir.path().join("data");
        let secrets: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| config.secret().unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.windows(2).all(|w| w[0] == w[1]));
    }
}
