//! Reloading a node's TLS material in place: new handshakes use the new CA bundle and
//! certificate, open connections keep running, and unusable material is refused with the
//! old configuration still in force.

mod common;

use std::time::{Duration, SystemTime};

use common::{Fixture, recv};
use wraft_transport::certs::{ClusterCa, TlsIdentity, Validity};
use wraft_transport::client::{ClientConfig, ClientConnection};

fn bundle(cas: &[&ClusterCa]) -> String {
    cas.iter()
        .map(|c| c.cert_pem())
        .collect::<Vec<_>>()
        .join("")
}

fn client_of(ca: &ClusterCa, trust: &str) -> TlsIdentity {
    let issued = ca.issue_client("app", Validity::days_from_now(1)).unwrap();
    TlsIdentity::from_issued(trust, &issued).unwrap()
}

fn node_of(ca: &ClusterCa, id: u64, trust: &str) -> TlsIdentity {
    let issued = ca.issue_node(id, &[], Validity::days_from_now(1)).unwrap();
    TlsIdentity::from_issued(trust, &issued).unwrap()
}

async fn connects(addr: std::net::SocketAddr, tls: &TlsIdentity) -> bool {
    let cfg = ClientConfig {
        connect_timeout_ms: 1000,
        ..ClientConfig::default()
    };
    match ClientConnection::connect(addr, Some(1), tls, &cfg).await {
        // A refused client certificate surfaces on first use under TLS 1.3.
        Ok(c) => {
            let ok = tokio::time::timeout(Duration::from_secs(2), c.open_stream())
                .await
                .is_ok_and(|r| r.is_ok());
            let ok = ok && {
                tokio::time::sleep(Duration::from_millis(100)).await;
                c.connection().close_reason().is_none()
            };
            c.close().await;
            ok
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_reloaded_ca_bundle_admits_the_new_cas_clients_and_then_refuses_the_old_ones() {
    let f = Fixture::new([1, 2]);
    let ca2 = ClusterCa::generate("test-2", Validity::days_from_now(1)).unwrap();
    let both = bundle(&[&f.ca, &ca2]);
    let (t1, _in1) = f.bind(1, &f.node_tls(1));
    let (t2, mut in2) = f.bind(2, &f.node_tls(2));
    t1.send_msg(2, &1u32).unwrap();
    recv(&mut in2.raft, 5).await;
    let addr = t1.local_addr().unwrap();

    let new_client = client_of(&ca2, &both);
    let old_client = client_of(&f.ca, &both);
    assert!(!connects(addr, &new_client).await, "CA2 not trusted yet");

    // Overlap: trust both, same node certificate.
    let mut tls1 = f.node_tls(1);
    tls1.cas = node_of(&f.ca, 1, &both).cas;
    assert_eq!(tls1.cas.len(), 2);
    t1.reload_tls(&tls1).unwrap();
    assert!(
        connects(addr, &new_client).await,
        "CA2 client after overlap"
    );
    assert!(
        connects(addr, &old_client).await,
        "CA1 client during overlap"
    );

    // Node 1 moves to a CA2 certificate and drops CA1.
    t1.reload_tls(&node_of(&ca2, 1, ca2.cert_pem())).unwrap();
    assert!(connects(addr, &new_client).await, "CA2 client at the end");
    assert!(
        !connects(addr, &old_client).await,
        "CA1 client refused at the end"
    );

    // The raft link from node 1 to node 2 opened under CA1 keeps running.
    t1.send_msg(2, &2u32).unwrap();
    recv(&mut in2.raft, 5).await;
    t1.shutdown().await;
    t2.shutdown().await;
}

#[tokio::test]
async fn unusable_material_is_refused_and_the_old_configuration_stays() {
    let f = Fixture::new([1]);
    let (t1, _in1) = f.bind(1, &f.node_tls(1));
    let addr = t1.local_addr().unwrap();
    let client = f.client_tls("app");

    // A key that is not the certificate's.
    let a = f.ca.issue_node(1, &[], Validity::days_from_now(1)).unwrap();
    let b = f.ca.issue_node(1, &[], Validity::days_from_now(1)).unwrap();
    let mismatched = TlsIdentity::from_pem(f.ca.cert_pem(), &a.cert_pem, &b.key_pem).unwrap();
    let e = t1.reload_tls(&mismatched).unwrap_err().to_string();
    assert!(e.contains("private key does not fit"), "{e}");

    // An expired certificate.
    let now = SystemTime::now();
    let v = Validity::between(
        now - Duration::from_secs(2 * 86_400),
        now - Duration::from_secs(86_400),
    )
    .unwrap();
    let expired =
        TlsIdentity::from_issued(f.ca.cert_pem(), &f.ca.issue_node(1, &[], v).unwrap()).unwrap();
    let e = t1.reload_tls(&expired).unwrap_err().to_string();
    assert!(e.contains("expired"), "{e}");

    // A certificate its own bundle does not accept (CA removed before re-issuing).
    let ca2 = ClusterCa::generate("test-2", Validity::days_from_now(1)).unwrap();
    let orphan = node_of(&f.ca, 1, ca2.cert_pem());
    let e = t1.reload_tls(&orphan).unwrap_err().to_string();
    assert!(e.contains("not accepted by the CA bundle"), "{e}");

    // Another node's certificate.
    let e = t1.reload_tls(&f.node_tls(2)).unwrap_err().to_string();
    assert!(e.contains("names node 2"), "{e}");

    assert!(
        connects(addr, &client).await,
        "the old configuration still serves"
    );
    t1.shutdown().await;
}
