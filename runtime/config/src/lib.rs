//! Node configuration: a TOML file, every bound named with its unit.
//!
//! A minimal file names the node, its data directory, its address, its
//! certificates and the initial members; everything else has a documented
//! default. Unknown keys are rejected (a typo must not silently fall back to a
//! default), and [`NodeConfig::validate`] names the offending key.
//!
//! ```toml
//! [node]
//! id = 1
//! data_dir = "/var/lib/wraft/n1"
//! listen = "127.0.0.1:7001"
//!
//! [cluster]
//! members = { 1 = "127.0.0.1:7001", 2 = "node-2.wraft.svc:7002", 3 = "127.0.0.1:7003" }
//!
//! [tls]
//! dir = "/etc/wraft/certs"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
pub use wraft_proto::PeerAddr;

mod checks;
mod sections;

pub use sections::*;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, including the key and line.
        message: String,
    },
    /// A value is out of its allowed range or inconsistent with another.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `raft.heartbeat_interval_ms`.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Upper bound of `node.worker_threads`.
pub const WORKER_THREADS_MAX: u64 = 1024;

/// The whole node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity and addresses of this node.
    pub node: NodeSection,
    /// Cluster membership used on first start.
    pub cluster: ClusterSection,
    /// Certificates for mutual TLS.
    pub tls: TlsSection,
    /// Consensus timing and bounds.
    #[serde(default)]
    pub raft: RaftSection,
    /// Durability settings.
    #[serde(default)]
    pub storage: StorageSection,
    /// Snapshot creation, retention and transfer.
    #[serde(default)]
    pub snapshot: SnapshotSection,
    /// Sandbox limits for guests.
    #[serde(default)]
    pub guest: GuestSection,
    /// Client-facing limits.
    #[serde(default)]
    pub client: ClientSection,
    /// The HTTP/JSON API and web console.
    #[serde(default)]
    pub http: HttpSection,
}

impl NodeConfig {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_overrides(path, &[])
    }

    /// Read a config file, apply `key=value` overrides (dotted keys, values
    /// in TOML syntax, bare words taken as strings — e.g.
    /// `raft.heartbeat_interval_ms=30`, `node.data_dir=/tmp/n1`), then parse
    /// and validate the result exactly as a file.
    pub fn load_with_overrides(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let cfg = Self::read_with_overrides(path, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// [`NodeConfig::load_with_overrides`] without [`NodeConfig::validate`]: the file must
    /// parse (TOML, known keys, well-formed addresses), but ranges are left to the caller,
    /// e.g. to list every [`NodeConfig::problems`] at once.
    pub fn read_with_overrides(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = apply_overrides(&text, overrides).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Parse and validate TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Render as TOML (used by `wraft demo` and tests to write config files).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The address book: every known node id with its address.
    pub fn address_book(&self) -> BTreeMap<u64, PeerAddr> {
        let mut book = self.cluster.peers.clone();
        book.extend(self.cluster.members.iter().map(|(k, v)| (*k, v.clone())));
        book
    }
}

/// Apply `key=value` overrides to TOML text.
fn apply_overrides(text: &str, overrides: &[String]) -> Result<String, String> {
    if overrides.is_empty() {
        return Ok(text.to_owned());
    }
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    for o in overrides {
        let (key, raw) = o
            .split_once('=')
            .ok_or_else(|| format!("override {o:?} is not key=value"))?;
        let key = key.trim();
        let raw = raw.trim();
        // Parse the value as TOML; a bare word that is not valid TOML is a string.
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
        let mut parts = key.split('.').peekable();
        let mut table = &mut doc;
        while let Some(part) = parts.next() {
            if part.is_empty() {
                return Err(format!("override key {key:?} has an empty part"));
            }
            if parts.peek().is_none() {
                table.insert(part.to_owned(), value.clone());
                break;
            }
            let entry = table
                .entry(part.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| format!("override key {key:?}: {part:?} is not a section"))?;
        }
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
