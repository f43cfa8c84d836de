//! The rules serde cannot express, one `validate()` per section, checked
//! before any port is bound. Errors name the dotted key.

use std::collections::HashSet;
use std::time::Duration;

use super::{Backend, ClusterConfig, Config, ConfigError, PollConfig, StorageConfig};

fn invalid(key: &str, reason: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        file: None,
        key: key.to_owned(),
        reason: reason.into(),
    })
}

impl StorageConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return invalid("storage.path", "must not be empty");
        }
        let hbase = &self.hbase;
        if self.backend == Backend::Hbase && hbase.thrift.trim().is_empty() {
            return invalid(
                "storage.hbase.thrift",
                "must name the Thrift server when backend = \"hbase\"",
            );
        }
        if hbase.pool_size == 0 {
            return invalid("storage.hbase.pool_size", "must be at least 1");
        }
        if hbase.connect_timeout.is_zero() || hbase.call_timeout.is_zero() {
            return invalid(
                "storage.hbase.call_timeout",
                "connect_timeout and call_timeout must be above 0",
            );
        }
        if !hbase
            .table_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return invalid(
                "storage.hbase.table_prefix",
                "may hold only letters, digits, '_', '-' and '.' (HBase table names)",
            );
        }
        Ok(())
    }
}

impl PollConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_timeout < Duration::from_secs(1) {
            return invalid("poll.max_timeout", "must be at least 1 second");
        }
        if self.default_timeout > self.max_timeout {
            return invalid(
                "poll.default_timeout",
                format!(
                    "{} s is more than poll.max_timeout ({} s)",
                    self.default_timeout.as_secs(),
                    self.max_timeout.as_secs()
                ),
            );
        }
        Ok(())
    }
}

impl Config {
    /// Sizes and counts that must not be 0, across sections.
    pub(super) fn validate_nonzero(&self) -> Result<(), ConfigError> {
        let nonzero: [(&str, u64); 9] = [
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
                "limits.max_sends_in_flight",
                self.limits.max_sends_in_flight as u64,
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
            return invalid(key, "must be greater than 0");
        }
        Ok(())
    }
}

impl ClusterConfig {
    /// `backend`: several nodes need a store they share.
    pub(super) fn validate(&self, backend: Backend) -> Result<(), ConfigError> {
        if self.node_id.trim().is_empty() {
            return invalid("cluster.node_id", "must not be empty");
        }
        if !self.peers.is_empty() {
            self.validate_peers(backend)?;
        }
        for (key, value) in [
            ("cluster.heartbeat_interval", self.heartbeat_interval),
            ("cluster.heartbeat_timeout", self.heartbeat_timeout),
            ("cluster.forward_timeout", self.forward_timeout),
        ] {
            if value.is_zero() {
                return invalid(key, "must be greater than 0");
            }
        }
        // A node must get a renewal in (heartbeat_timeout) and try again
        // (heartbeat_interval) within the three quarters of the lease it
        // keeps writing on.
        if self.lease <= (self.heartbeat_interval + self.heartbeat_timeout) * 2 {
            return invalid(
                "cluster.lease",
                "must exceed twice heartbeat_interval + heartbeat_timeout",
            );
        }
        Ok(())
    }

    fn validate_peers(&self, backend: Backend) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        for peer in &self.peers {
            if !ids.insert(peer.id.as_str()) {
                return invalid(
                    "cluster.peers",
                    format!("the id {:?} appears more than once", peer.id),
                );
            }
        }
        if !ids.contains(self.node_id.as_str()) {
            return invalid(
                "cluster.node_id",
                format!(
                    "{:?} is not among cluster.peers; list every node of the ring, this one included",
                    self.node_id
                ),
            );
        }
        let mut addrs = HashSet::new();
        if let Some(peer) = self.peers.iter().find(|p| !addrs.insert(p.addr)) {
            return invalid(
                "cluster.peers",
                format!("the address {} appears more than once", peer.addr),
            );
        }
        if self.is_multi_node() && backend != Backend::Hbase {
            return invalid(
                "storage.backend",
                "several cluster.peers need backend = \"hbase\": nodes share one store",
            );
        }
        Ok(())
    }
}
