//! A UDP fault proxy between the nodes of a local cluster.
//!
//! Every node gets a **front** address on the proxy, and every node's config
//! names the other nodes by their fronts (so does the replicated address of a
//! learner added later: one address per node serves every sender). A datagram
//! arriving at node `D`'s front from node `S`'s endpoint (recognised by its
//! source address, which is `S`'s `node.listen`: a node sends everything from
//! its one QUIC endpoint) is relayed to `D`'s real address from an
//! **upstream** socket dedicated to that source, so `D` sees one stable
//! address per peer and answers go back the same way. QUIC never sees an
//! address change, so no connection migration happens through the proxy.
//!
//! Each datagram is judged by its logical direction, `S → D` (a request of
//! `S`'s connection to `D`, or an answer on `D`'s connection to `S`): the
//! link's [`LinkFault`] decides whether it is dropped or delayed. Datagrams
//! from unknown sources (clients, following a redirect to a front or given one)
//! count as coming from [`CLIENTS`]: relayed without faults unless a test sets
//! the links between [`CLIENTS`] and a node.
//!
//! Cost: one tokio task per front and one per upstream socket, one
//! `send_to` per relayed datagram (plus a task per delayed datagram). The
//! proxy holds no queue of its own beyond delayed datagrams in flight.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The id the links of every client (any source that is not a node) go by: node id 0, which no
/// node has.
pub const CLIENTS: u64 = 0;

/// Largest datagram relayed, bytes (QUIC never sends more than 64 KiB).
pub const DATAGRAM_BYTES_MAX: usize = 65_536;

/// What happens to the datagrams of one direction of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFault {
    /// Probability in `0.0..=1.0` that a datagram is dropped (1.0 cuts the link).
    pub drop_probability: f64,
    /// Fixed delay added to every datagram, milliseconds.
    pub delay_ms: u64,
    /// Extra random delay in `0..=jitter_ms`, milliseconds (reorders datagrams).
    pub jitter_ms: u64,
}

impl LinkFault {
    /// A cut link: every datagram is dropped.
    pub const CUT: LinkFault = LinkFault {
        drop_probability: 1.0,
        delay_ms: 0,
        jitter_ms: 0,
    };

    fn is_clear(&self) -> bool {
        *self == LinkFault::default()
    }
}

/// Counters of the proxy's work since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams relayed.
    pub relayed: u64,
    /// Datagrams dropped by a fault.
    pub dropped: u64,
    /// Datagrams relayed late because of a delay fault.
    pub delayed: u64,
}

struct Shared {
    /// (from, to) → fault; absent = clear.
    links: Mutex<HashMap<(u64, u64), LinkFault>>,
    /// A node's real address → its id (the source of its datagrams).
    node_of: Mutex<HashMap<SocketAddr, u64>>,
    /// id → (front address, real address).
    nodes: Mutex<BTreeMap<u64, (SocketAddr, SocketAddr)>>,
    rng: Mutex<fastrand::Rng>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    relayed: AtomicU64,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

/// The proxy. Create it inside a tokio runtime; dropping it stops every relay.
pub struct FaultProxy {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FaultProxy {
    /// An empty proxy whose drop decisions come from a generator seeded with
    /// `seed` (which datagram is dropped still depends on timing).
    pub fn new(seed: u64) -> FaultProxy {
        FaultProxy {
            shared: Arc::new(Shared {
                links: Mutex::new(HashMap::new()),
                node_of: Mutex::new(HashMap::new()),
                nodes: Mutex::new(BTreeMap::new()),
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
                tasks: Mutex::new(Vec::new()),
                relayed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                delayed: AtomicU64::new(0),
            }),
        }
    }

    /// The front address of node `id`, whose real QUIC address is `real`;
    /// binds the front on `127.0.0.1:0` and starts relaying the first time.
    /// Must run inside a tokio runtime. Panics if `id` was registered with
    /// another real address, or if binding fails.
    pub fn front(&self, id: u64, real: SocketAddr) -> SocketAddr {
        let mut nodes = lock(&self.shared.nodes);
        if let Some((front, known)) = nodes.get(&id) {
            assert_eq!(
                *known, real,
                "node {id} registered twice with different addresses"
            );
            return *front;
        }
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a proxy front");
        std_sock.set_nonblocking(true).expect("nonblocking front");
        let front_addr = std_sock.local_addr().expect("front address");
        let sock = UdpSocket::from_std(std_sock).expect("front socket in the runtime");
        nodes.insert(id, (front_addr, real));
        lock(&self.shared.node_of).insert(real, id);
        let task = tokio::spawn(run_front(self.shared.clone(), id, real, Arc::new(sock)));
        lock(&self.shared.tasks).push(task);
        front_addr
    }

    /// Make the cluster's traffic go through the proxy: every member of `cfg` is named by its
    /// front (registered with its real address, an IP address, the first time). For
    /// `Cluster::start_with`.
    pub fn front_members(&self, cfg: &mut wraft_config::NodeConfig) {
        cfg.cluster.members = cfg
            .cluster
            .members
            .iter()
            .map(|(id, real)| {
                let real = real.socket_addr().expect("local members are IP addresses");
                (*id, self.front(*id, real).into())
            })
            .collect();
    }

    /// The front address of every registered node.
    pub fn fronts(&self) -> BTreeMap<u64, SocketAddr> {
        lock(&self.shared.nodes)
            .iter()
            .map(|(id, (front, _))| (*id, *front))
            .collect()
    }

    /// Set the fault of direction `from → to` (a clear fault removes it).
    pub fn set(&self, from: u64, to: u64, fault: LinkFault) {
        let mut links = lock(&self.shared.links);
        if fault.is_clear() {
            links.remove(&(from, to));
        } else {
            links.insert((from, to), fault);
        }
    }

    /// The fault of direction `from → to`.
    pub fn get(&self, from: u64, to: u64) -> LinkFault {
        lock(&self.shared.links)
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }

    /// Cut every link between a node of `side` and a node outside it, both
    /// directions (`nodes` lists every node).
    pub fn partition(&self, side: &[u64], nodes: &[u64]) {
        for a in side {
            for b in nodes.iter().filter(|b| !side.contains(b)) {
                self.set(*a, *b, LinkFault::CUT);
                self.set(*b, *a, LinkFault::CUT);
            }
        }
    }

    /// Clear every fault.
    pub fn heal(&self) {
        lock(&self.shared.links).clear();
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            relayed: self.shared.relayed.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            delayed: self.shared.delayed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for t in lock(&self.shared.tasks).drain(..) {
            t.abort();
        }
    }
}

/// Relay datagrams arriving at node `to`'s front.
async fn run_front(shared: Arc<Shared>, to: u64, real: SocketAddr, front: Arc<UdpSocket>) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let Ok((len, src)) = front.recv_from(&mut buf).await else {
            // ICMP errors surface here on some platforms; keep serving.
            continue;
        };
        let from = lock(&shared.node_of).get(&src).copied();
        let up = match upstreams.get(&src) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let u = Arc::new(u);
                upstreams.insert(src, u.clone());
                let task = tokio::spawn(run_upstream(
                    shared.clone(),
                    from,
                    to,
                    src,
                    u.clone(),
                    front.clone(),
                ));
                lock(&shared.tasks).push(task);
                u
            }
        };
        relay(&shared, from, Some(to), &buf[..len], up, real).await;
    }
}

/// Relay the answers node `to` sends to the upstream socket of source `src`
/// back to `src` through `to`'s front.
async fn run_upstream(
    shared: Arc<Shared>,
    from: Option<u64>,
    to: u64,
    src: SocketAddr,
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let Ok((len, _)) = up.recv_from(&mut buf).await else {
            continue;
        };
        relay(&shared, Some(to), from, &buf[..len], front.clone(), src).await;
    }
}

/// Send `data` from `sock` to `dest`, unless the fault of `from → to` drops it.
async fn relay(
    shared: &Shared,
    from: Option<u64>,
    to: Option<u64>,
    data: &[u8],
    sock: Arc<UdpSocket>,
    dest: SocketAddr,
) {
    let link = (from.unwrap_or(CLIENTS), to.unwrap_or(CLIENTS));
    let fault = lock(&shared.links).get(&link).copied().unwrap_or_default();
    let mut delay_ms = fault.delay_ms;
    if fault.drop_probability > 0.0 || fault.jitter_ms > 0 {
        let mut rng = lock(&shared.rng);
        if fault.drop_probability >= 1.0 || rng.f64() < fault.drop_probability {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if fault.jitter_ms > 0 {
            delay_ms += rng.u64(0..=fault.jitter_ms);
        }
    }
    shared.relayed.fetch_add(1, Ordering::Relaxed);
    if delay_ms == 0 {
        let _ = sock.send_to(data, dest).await;
        return;
    }
    shared.delayed.fetch_add(1, Ordering::Relaxed);
    let data = data.to_vec();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = sock.send_to(&data, dest).await;
    });
}
