//! Peer addresses given as DNS names: the transport resolves them on every dial, so a link
//! follows a name that moves to another address (a restarted Kubernetes pod), and a name that
//! does not resolve yet is retried with the link's backoff. A table resolver stands in for DNS.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Fixture, Logs, config, recv};
use wraft_transport::frame;
use wraft_transport::{AddressBook, PeerAddr, Resolve, ResolveFuture, Transport};

/// Names → addresses, changeable while the transport runs.
#[derive(Clone, Debug, Default)]
struct TableResolver(Arc<Mutex<HashMap<String, SocketAddr>>>);

impl TableResolver {
    fn set(&self, name: &str, addr: SocketAddr) {
        self.0.lock().unwrap().insert(name.to_owned(), addr);
    }
}

impl Resolve for TableResolver {
    fn resolve<'a>(&'a self, addr: &'a PeerAddr) -> ResolveFuture<'a> {
        Box::pin(async move {
            let host = addr.host();
            self.0
                .lock()
                .unwrap()
                .get(&host)
                .map(|a| vec![*a])
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{host}: no such name"),
                    )
                })
        })
    }
}

fn bind(f: &Fixture, id: u64, book: AddressBook) -> (Transport, wraft_transport::Inbound) {
    Transport::bind(
        config(id, "127.0.0.1:0".parse().unwrap()),
        &f.node_tls(id),
        f.membership.clone(),
        book,
    )
    .unwrap()
}

/// Send to node 2 until one message of ours arrives on `inbound`, within `secs`.
async fn send_until_received(
    t1: &Transport,
    inbound: &mut wraft_transport::Inbound,
    secs: u64,
) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut i = 0u32;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message reached node 2 within {secs} s"
        );
        i += 1;
        let _ = t1.send_msg(2, &i);
        if let Ok(Some((from, p))) =
            tokio::time::timeout(Duration::from_millis(100), inbound.raft.recv()).await
        {
            assert_eq!(from, 1);
            return frame::decode_payload::<u32>(&p).unwrap();
        }
    }
}

#[tokio::test]
async fn link_follows_a_peer_name_that_moves_to_another_address_on_reconnect() {
    let f = Fixture::new([1, 2]);
    let names = TableResolver::default();
    let name: PeerAddr = "node-2.wraft.test:7000".parse().unwrap();
    let book1 = AddressBook::with_resolver(names.clone(), [(2u64, name.clone())]);
    let (t1, _in1) = bind(&f, 1, book1);

    let (t2a, mut in2a) = bind(&f, 2, AddressBook::default());
    names.set("node-2.wraft.test", t2a.local_addr().unwrap());
    t1.send_msg(2, &0u32).unwrap();
    let (from, _) = recv(&mut in2a.raft, 5).await;
    assert_eq!(from, 1);

    // Node 2 comes back on another port (a new pod IP, in production) under the same name.
    t2a.shutdown().await;
    let (t2b, mut in2b) = bind(&f, 2, AddressBook::default());
    names.set("node-2.wraft.test", t2b.local_addr().unwrap());
    send_until_received(&t1, &mut in2b, 10).await;
    assert_eq!(
        t1.addresses().get(2),
        Some(name),
        "the book keeps the name, not what it resolved to"
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve_yet_is_retried_and_its_failure_logged_once() {
    let (logs, _guard) = Logs::install();
    let f = Fixture::new([1, 2]);
    let names = TableResolver::default();
    let book1 = AddressBook::with_resolver(
        names.clone(),
        [(2u64, "node-2.wraft.test:7000".parse::<PeerAddr>().unwrap())],
    );
    let (t1, _in1) = bind(&f, 1, book1);
    let (t2, mut in2) = bind(&f, 2, AddressBook::default());

    // Several dials fail while the name is unknown (backoff 20..200 ms).
    for i in 0..10u32 {
        let _ = t1.send_msg(2, &i);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let text = logs.text();
    assert_eq!(
        text.matches("cannot resolve peer name").count(),
        1,
        "one warning per change, not per dial:\n{text}"
    );
    assert!(text.contains("no such name"), "{text}");

    names.set("node-2.wraft.test", t2.local_addr().unwrap());
    send_until_received(&t1, &mut in2, 10).await;
    assert!(logs.contains("peer name resolves to a new address"));
}
