//! Loopback throughput of one QUIC stream: raw quinn (default transport
//! config, self-signed cert) next to a wraft bulk stream (mutual TLS, a
//! dedicated `wraft-bulk/1` connection, tuned windows), raw and with
//! CRC32C-framed 1 MiB chunks, plus raft ping round trips measured on the
//! separate raft link while the bulk transfer runs.
//!
//! ```text
//! cargo run --release -p wraft-transport --example bulk_bench            # 64 MiB and 1 GiB
//! cargo run --release -p wraft-transport --example bulk_bench -- 64      # sizes in MiB
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use wraft_transport::certs::{ClusterCa, TlsIdentity, Validity};
use wraft_transport::frame;
use wraft_transport::{AddressBook, Membership, Transport, TransportConfig, quinn};

const CHUNK: usize = 1 << 20;

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Send `total` bytes over `send` in 1 MiB chunks, optionally as CRC32C frames.
async fn pump(mut send: quinn::SendStream, total: u64, framed: bool) -> Result<(), BoxErr> {
    let data = Bytes::from(vec![0x5au8; CHUNK]);
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        if framed {
            let h = frame::encode_header(0x30, &data[..n], CHUNK as u32)?;
            send.write_chunk(Bytes::copy_from_slice(&h)).await?;
        }
        send.write_chunk(data.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    Ok(())
}

/// Drain `recv`, verifying frames if `framed`; returns bytes of payload seen.
async fn drain(mut recv: quinn::RecvStream, framed: bool) -> Result<u64, BoxErr> {
    let mut total = 0u64;
    if framed {
        while let Some(f) = frame::read_frame(&mut recv, CHUNK as u32).await? {
            total += f.payload.len() as u64;
        }
    } else {
        while let Some(c) = recv.read_chunk(usize::MAX, true).await? {
            total += c.bytes.len() as u64;
        }
    }
    Ok(total)
}

async fn raw_quinn(total: u64) -> Result<Duration, BoxErr> {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = key.cert.der().clone();
    let pkey = rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], pkey)?;
    let server_cfg =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client_cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
    let client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let accept = tokio::spawn(async move {
        let conn = server.accept().await.ok_or("no connection")?.await?;
        let (_s, r) = conn.accept_bi().await?;
        let n = drain(r, false).await?;
        Ok::<_, BoxErr>((n, server, conn))
    });
    let conn = client.connect_with(client_cfg, addr, "localhost")?.await?;
    let (s, _r) = conn.open_bi().await?;
    let start = Instant::now();
    pump(s, total, false).await?;
    let (n, _server, _c) = accept.await??;
    let elapsed = start.elapsed();
    assert_eq!(n, total);
    conn.close(0u32.into(), b"");
    Ok(elapsed)
}

struct Pair {
    t1: Transport,
    t2: Transport,
    in1: wraft_transport::Inbound,
    in2: wraft_transport::Inbound,
}

fn wraft_pair(mtu_upper_bound_bytes: u16) -> Result<Pair, BoxErr> {
    let ca = ClusterCa::generate("bench", Validity::days_from_now(1))?;
    let membership = Membership::new([1, 2]);
    let book = AddressBook::default();
    let bind = |id| -> Result<_, BoxErr> {
        let tls = TlsIdentity::from_issued(
            ca.cert_pem(),
            &ca.issue_node(id, &[], Validity::days_from_now(1))?,
        )?;
        let mut cfg = TransportConfig::new(id, "127.0.0.1:0".parse()?);
        cfg.mtu_upper_bound_bytes = mtu_upper_bound_bytes;
        let (t, i) = Transport::bind(cfg, &tls, membership.clone(), book.clone())?;
        book.insert(id, t.local_addr()?);
        Ok((t, i))
    };
    let (t1, in1) = bind(1)?;
    let (t2, in2) = bind(2)?;
    Ok(Pair { t1, t2, in1, in2 })
}

struct WraftRun {
    elapsed: Duration,
    ping_rtts: Vec<Duration>,
}

async fn wraft_bulk(
    p: &mut Pair,
    total: u64,
    framed: bool,
    with_pings: bool,
) -> Result<WraftRun, BoxErr> {
    let mut bulk_rx = std::mem::replace(&mut p.in2.bulk, tokio::sync::mpsc::channel(1).1);
    let accept = tokio::spawn(async move {
        let s = bulk_rx.recv().await.ok_or("no bulk stream")?;
        let n = drain(s.recv, framed).await?;
        Ok::<_, BoxErr>((n, bulk_rx))
    });
    // Raft pings: node 1 -> node 2, echoed back; RTT measured on node 1.
    let mut raft2 = std::mem::replace(&mut p.in2.raft, tokio::sync::mpsc::channel(1).1);
    let t2 = p.t2.clone();
    let echo = tokio::spawn(async move {
        while let Some((from, payload)) = raft2.recv().await {
            if payload.is_empty() {
                break;
            }
            let _ = t2.send(from, payload);
        }
        raft2
    });
    let s = p.t1.open_bulk(2).await?;
    let start = Instant::now();
    let sender = tokio::spawn(pump(s.send, total, framed));
    let mut rtts = Vec::new();
    if with_pings {
        let mut seq = 0u64;
        while !sender.is_finished() {
            let sent_at = Instant::now();
            p.t1.send_msg(2, &seq)?;
            loop {
                let (_, back) = tokio::time::timeout(Duration::from_secs(10), p.in1.raft.recv())
                    .await?
                    .ok_or("raft closed")?;
                if frame::decode_payload::<u64>(&back)? == seq {
                    break;
                }
            }
            rtts.push(sent_at.elapsed());
            seq += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    sender.await??;
    let (n, bulk_rx) = accept.await??;
    let elapsed = start.elapsed();
    assert_eq!(n, total);
    p.t1.send(2, Bytes::new())?;
    p.in2.raft = echo.await?;
    p.in2.bulk = bulk_rx;
    Ok(WraftRun {
        elapsed,
        ping_rtts: rtts,
    })
}

fn mibps(total: u64, d: Duration) -> f64 {
    total as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxErr> {
    let sizes: Vec<u64> = match std::env::args().nth(1) {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().parse::<u64>())
            .collect::<Result<_, _>>()?,
        None => vec![64, 1024],
    };
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    println!("loadavg at start: {}", load());
    println!(
        "| size | raw quinn (defaults) | wraft bulk | wraft bulk + CRC32C frames | wraft bulk, MTU bound 65527 | raft ping RTT during bulk p50 / p99 / max (n) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut pair = wraft_pair(1452)?;
    let mut jumbo = wraft_pair(65527)?;
    for mib in sizes {
        let total = mib << 20;
        let raw = raw_quinn(total).await?;
        let plain = wraft_bulk(&mut pair, total, false, false).await?;
        let framed = wraft_bulk(&mut pair, total, true, false).await?;
        let big_mtu = wraft_bulk(&mut jumbo, total, false, false).await?;
        let mut pinged = wraft_bulk(&mut pair, total, false, true).await?;
        pinged.ping_rtts.sort();
        let r = &pinged.ping_rtts;
        println!(
            "| {mib} MiB | {:.0} MiB/s | {:.0} MiB/s | {:.0} MiB/s | {:.0} MiB/s | {:?} / {:?} / {:?} ({}; bulk at {:.0} MiB/s) |",
            mibps(total, raw),
            mibps(total, plain.elapsed),
            mibps(total, framed.elapsed),
            mibps(total, big_mtu.elapsed),
            pct(r, 0.5),
            pct(r, 0.99),
            r.last().copied().unwrap_or_default(),
            r.len(),
            mibps(total, pinged.elapsed),
        );
    }
    println!("loadavg at end: {}", load());
    for p in [pair, jumbo] {
        p.t1.shutdown().await;
        p.t2.shutdown().await;
    }
    Ok(())
}
