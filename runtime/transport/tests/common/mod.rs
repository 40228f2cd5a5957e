//! Fixtures shared by the loopback tests: a generated cluster CA, transports
//! on 127.0.0.1:0 with short timeouts, raw quinn dialers for misbehaving
//! peers, and a log capture for asserting refusal reasons.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use wraft_transport::certs::{ClusterCa, TlsIdentity, Validity};
use wraft_transport::quinn;
use wraft_transport::quinn::crypto::rustls::QuicClientConfig;
use wraft_transport::tls::{self, Alpn, AuthCounters};
use wraft_transport::{AddressBook, Inbound, Membership, NodeId, Transport, TransportConfig};

/// A test cluster: one CA, a shared membership and address book.
pub struct Fixture {
    pub ca: ClusterCa,
    pub membership: Membership,
    pub book: AddressBook,
}

impl Fixture {
    pub fn new(members: impl IntoIterator<Item = NodeId>) -> Fixture {
        Fixture {
            ca: ClusterCa::generate("test", Validity::days_from_now(1)).unwrap(),
            membership: Membership::new(members),
            book: AddressBook::default(),
        }
    }

    pub fn node_tls(&self, id: NodeId) -> TlsIdentity {
        let issued = self
            .ca
            .issue_node(id, &[], Validity::days_from_now(1))
            .unwrap();
        TlsIdentity::from_issued(self.ca.cert_pem(), &issued).unwrap()
    }

    pub fn client_tls(&self, name: &str) -> TlsIdentity {
        let issued = self
            .ca
            .issue_client(name, Validity::days_from_now(1))
            .unwrap();
        TlsIdentity::from_issued(self.ca.cert_pem(), &issued).unwrap()
    }

    /// A node certificate for `id` that expired yesterday.
    pub fn expired_node_tls(&self, id: NodeId) -> TlsIdentity {
        let now = SystemTime::now();
        let v = Validity::between(
            now - Duration::from_secs(2 * 86_400),
            now - Duration::from_secs(86_400),
        )
        .unwrap();
        let issued = self.ca.issue_node(id, &[], v).unwrap();
        TlsIdentity::from_issued(self.ca.cert_pem(), &issued).unwrap()
    }

    /// Bind node `id` on 127.0.0.1:0 (or `addr`) and register its address.
    pub fn bind(&self, id: NodeId, tls: &TlsIdentity) -> (Transport, Inbound) {
        self.bind_with(config(id, "127.0.0.1:0".parse().unwrap()), tls)
    }

    pub fn bind_with(&self, cfg: TransportConfig, tls: &TlsIdentity) -> (Transport, Inbound) {
        let id = cfg.node_id;
        let (t, inbound) =
            Transport::bind(cfg, tls, self.membership.clone(), self.book.clone()).unwrap();
        self.book.insert(id, t.local_addr().unwrap());
        (t, inbound)
    }
}

/// Transport config with test-sized timeouts.
pub fn config(id: NodeId, addr: SocketAddr) -> TransportConfig {
    let mut c = TransportConfig::new(id, addr);
    c.reconnect_backoff_min_ms = 20;
    c.reconnect_backoff_max_ms = 200;
    c.connect_timeout_ms = 1000;
    c.keep_alive_interval_ms = 200;
    c.idle_timeout_ms = 2000;
    c
}

/// Receive one raft message or fail after `secs`.
pub async fn recv(inbound: &mut mpsc::Receiver<(NodeId, Bytes)>, secs: u64) -> (NodeId, Bytes) {
    tokio::time::timeout(Duration::from_secs(secs), inbound.recv())
        .await
        .expect("timed out waiting for a raft message")
        .expect("inbound channel closed")
}

/// Poll `cond` every 10 ms for up to `secs`.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Dial `addr` as a raw quinn client presenting `tls` with `alpn`, expecting
/// the server to be node `server`. Returns the endpoint (keep it alive) and
/// the handshake result.
pub async fn raw_dial(
    tls: &TlsIdentity,
    alpn: Alpn,
    addr: SocketAddr,
    server: NodeId,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let cfg = tls::client_config(tls, alpn, &AuthCounters::new()).unwrap();
    let cc = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg).unwrap()));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(cc, addr, &tls::server_name_for(server))
        .unwrap()
        .await;
    (ep, conn)
}

/// Captures `tracing` output of the current thread (tokio::test runs every
/// task on the test thread) so tests can assert on logged reasons.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn install() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let guard = tracing::subscriber::set_default(sub);
        (logs, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }
}

pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}
