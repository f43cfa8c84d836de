//! Configuration: TOML, every key documented in `config/carrier.toml`.
//!
//! Loaded and validated before any port is bound; a bad file is a usage
//! error (exit 2) naming the key or path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub cluster: ClusterConfig,
    pub poll: PollConfig,
    pub send: SendConfig,
    pub limits: LimitsConfig,
    pub cache: CacheConfig,
}

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 key (its UTF-8 bytes), at least 32 bytes.
    pub secret: Option<String>,
    /// A file holding the key; mutually exclusive with `secret`.
    pub secret_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Embedded,
    Hbase,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: Backend,
    /// The embedded store's folder; also where a generated secret is kept.
    pub path: PathBuf,
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HbaseConfig {
    pub thrift: String,
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub node_id: String,
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: String,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
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
