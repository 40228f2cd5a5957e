//! [`PeerAddr`]: where a node can be reached — an IP socket address or a DNS name with a port.
//!
//! Node addresses travel in the config file, the replicated log (`Command::SetAddress`), node
//! snapshots, client requests (`Request::AddLearner`) and redirects (`RequestError::NotLeader`).
//! A name is kept as a name everywhere and resolved only when a connection is made, so a node
//! whose name moves to a new IP (a Kubernetes StatefulSet pod after a restart) is found again
//! on the next reconnect.
//!
//! # Encoding
//!
//! In human-readable formats (TOML, JSON) an address is the string `host:port` (`[v6]:port` for
//! IPv6). In postcard it is an enum whose first two variants are exactly serde's encoding of
//! [`std::net::SocketAddr`] (`V4`, `V6`), followed by a third, `Name(host, port)`:
//!
//! ```text
//!   0 ip[4] port           V4 — byte-identical to a SocketAddr::V4
//!   1 ip[16] port flow scope   V6 — byte-identical to a SocketAddr::V6
//!   2 len host-bytes port  Name
//! ```
//!
//! So every log entry, snapshot and request written when addresses were `SocketAddr` decodes
//! unchanged, and an IP address is still written the old way; only a name uses the appended
//! variant, which a binary from before names refuses to decode (it could not dial it either).
//! Pinned by the tests at the bottom of this file.

use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest DNS name accepted, bytes (RFC 1035: 253 characters in text form).
pub const HOST_NAME_BYTES_MAX: usize = 253;
/// Longest label of a DNS name, bytes (RFC 1035).
const LABEL_BYTES_MAX: usize = 63;

/// A node's address: an IP socket address, or a DNS name and a port, resolved at connect time.
///
/// ```
/// use wraft_proto::PeerAddr;
/// let a: PeerAddr = "node-1.wraft.svc:7000".parse().unwrap();
/// assert_eq!(a.port(), 7000);
/// assert_eq!(a.to_string(), "node-1.wraft.svc:7000");
/// let b: PeerAddr = "10.0.0.5:7000".parse().unwrap();
/// assert_eq!(b.socket_addr(), Some("10.0.0.5:7000".parse().unwrap()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerAddr {
    /// An IP address and port; used as is.
    Ip(SocketAddr),
    /// A DNS name (checked syntax, kept as written) and a port; resolved on every connect.
    Name {
        /// The host name, e.g. `node-1.wraft.svc`.
        host: String,
        /// The UDP port.
        port: u16,
    },
}

/// Why a string is not a [`PeerAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a node address: {reason} (expected HOST:PORT, e.g. 10.0.0.5:7000, [fd00::5]:7000 or node-1.wraft.svc:7000)"
)]
pub struct PeerAddrError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PeerAddr {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            PeerAddr::Ip(a) => a.port(),
            PeerAddr::Name { port, .. } => *port,
        }
    }

    /// The host as written: an IP address or a name.
    pub fn host(&self) -> String {
        match self {
            PeerAddr::Ip(a) => a.ip().to_string(),
            PeerAddr::Name { host, .. } => host.clone(),
        }
    }

    /// The socket address if this is an IP address (no resolution needed), else `None`.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            PeerAddr::Ip(a) => Some(*a),
            PeerAddr::Name { .. } => None,
        }
    }

    /// True if this address is a DNS name.
    pub fn is_name(&self) -> bool {
        matches!(self, PeerAddr::Name { .. })
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> PeerAddr {
        PeerAddr::Ip(a)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Ip(a) => write!(f, "{a}"),
            PeerAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Check `host` as a DNS name: dot-separated labels of ASCII letters, digits, `-` and `_`
/// (seen in service names), none empty or longer than 63 bytes, not starting or ending with
/// `-`, at most 253 bytes, and not all digits and dots (that is a malformed IPv4 address).
fn check_host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.len() > HOST_NAME_BYTES_MAX {
        return Err(format!(
            "the host name is {} bytes, longer than {HOST_NAME_BYTES_MAX}",
            host.len()
        ));
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err("the host name has an empty label".into());
        }
        if label.len() > LABEL_BYTES_MAX {
            return Err(format!(
                "label {label:?} is longer than {LABEL_BYTES_MAX} bytes"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("the host name contains {c:?}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("the host looks like an IPv4 address but is not a valid one".into());
    }
    Ok(())
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<PeerAddr, PeerAddrError> {
        let err = |reason: String| PeerAddrError {
            input: s.to_owned(),
            reason,
        };
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(PeerAddr::Ip(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| err("no :PORT".into()))?;
        let port: u16 = port
            .parse()
            .map_err(|_| err(format!("port {port:?} is not a number in 0..=65535")))?;
        if host.starts_with('[') || host.contains(':') {
            return Err(err(format!("{host:?} is not a valid IPv6 address")));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(PeerAddr::Ip(SocketAddr::new(ip, port)));
        }
        check_host_name(host).map_err(err)?;
        Ok(PeerAddr::Name {
            host: host.to_owned(),
            port,
        })
    }
}

/// The postcard shape: serde's `SocketAddr` variants first, the name appended.
#[derive(Serialize, Deserialize)]
enum Wire {
    V4(SocketAddrV4),
    V6(SocketAddrV6),
    Name(String, u16),
}

impl Serialize for PeerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_str(self);
        }
        let wire = match self {
            PeerAddr::Ip(SocketAddr::V4(a)) => Wire::V4(*a),
            PeerAddr::Ip(SocketAddr::V6(a)) => Wire::V6(*a),
            PeerAddr::Name { host, port } => Wire::Name(host.clone(), *port),
        };
        wire.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PeerAddr, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            return s.parse().map_err(serde::de::Error::custom);
        }
        Ok(match Wire::deserialize(d)? {
            Wire::V4(a) => PeerAddr::Ip(SocketAddr::V4(a)),
            Wire::V6(a) => PeerAddr::Ip(SocketAddr::V6(a)),
            Wire::Name(host, port) => {
                check_host_name(&host).map_err(serde::de::Error::custom)?;
                PeerAddr::Name { host, port }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ips_names_and_refuses_garbage() {
        let ok = [
            ("10.0.0.5:7000", "10.0.0.5:7000"),
            ("[fd00::5]:7000", "[fd00::5]:7000"),
            ("localhost:7", "localhost:7"),
            (
                "node-1.wraft.svc.cluster.local:7000",
                "node-1.wraft.svc.cluster.local:7000",
            ),
            ("_srv.example.:1", "_srv.example.:1"),
        ];
        for (input, shown) in ok {
            let a: PeerAddr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(a.to_string(), shown);
        }
        for bad in [
            "node-1",
            "node-1:",
            "node-1:70000",
            ":7000",
            "no de:7000",
            "a..b:1",
            "-a:1",
            "1.2.3.999:7",
            "fd00::5:7000x",
            "[fd00::5:7000",
        ] {
            let e = bad.parse::<PeerAddr>().unwrap_err();
            assert!(e.to_string().contains("HOST:PORT"), "{bad}: {e}");
        }
        let long = format!("{}:1", "a.".repeat(130));
        assert!(long.parse::<PeerAddr>().is_err());
    }

    /// Logs, snapshots and requests written when addresses were `SocketAddr` decode unchanged,
    /// and IP addresses are still written byte for byte as before.
    #[test]
    fn postcard_encoding_of_ip_addresses_is_the_socket_addr_encoding() {
        for s in ["127.0.0.1:9", "10.1.2.3:65535", "[::1]:7000", "[fd00::5]:1"] {
            let old: SocketAddr = s.parse().unwrap();
            let old_bytes = postcard::to_stdvec(&old).unwrap();
            let new = PeerAddr::from(old);
            assert_eq!(postcard::to_stdvec(&new).unwrap(), old_bytes, "{s}");
            let decoded: PeerAddr = postcard::from_bytes(&old_bytes).unwrap();
            assert_eq!(decoded, new);
        }
        let name: PeerAddr = "node-2.wraft:7000".parse().unwrap();
        let bytes = postcard::to_stdvec(&name).unwrap();
        assert_eq!(bytes[0], 2, "names use the appended variant");
        assert_eq!(postcard::from_bytes::<PeerAddr>(&bytes).unwrap(), name);
        // An old reader refuses a name instead of misreading it.
        assert!(postcard::from_bytes::<SocketAddr>(&bytes).is_err());
    }

    #[test]
    fn a_malformed_name_on_the_wire_is_refused() {
        let bytes = postcard::to_stdvec(&Wire::Name("bad host".into(), 1)).unwrap();
        assert!(postcard::from_bytes::<PeerAddr>(&bytes).is_err());
    }
}
