//! The accepting side: every incoming connection is authenticated by its certificate, checked
//! against its ALPN, then served by what the ALPN carries.
//!
//! ```text
//! accept_loop ─▶ handshake (the TLS verifiers refuse foreign CAs, expired certs, non-members)
//!             ─▶ serve_connection: identity from the certificate, ALPN allowed for it?
//!                  wraft-raft/1   (node)           ─▶ serve_raft: a task per uni stream:
//!                                                     hello {from, to} must name the certificate's
//!                                                     node and us; then raft frames ─▶ Inbound::raft
//!                  wraft-bulk/1   (node)           ─▶ serve_bulk: each bidi stream ─▶ Inbound::bulk
//!                  wraft-client/1 (client or node) ─▶ serve_clients: each bidi stream ─▶ Inbound::clients
//! ```
//!
//! A refused peer's connection is closed with `CODE_REFUSED` and the reason, which is also
//! logged and counted. A bad frame stops only its stream (`CODE_BAD_FRAME`); the connection and
//! its other streams keep working. Membership is re-checked on every raft frame, so a node
//! removed after its handshake stops being heard at its next message.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use quinn::{Connection, RecvStream, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::inbound::Sinks;
use super::link::Hello;
use super::{BulkStream, CODE_BAD_FRAME, CODE_REFUSED, CODE_SHUTDOWN, ClientStream, LOG, Shared};
use crate::certs::{Identity, NodeId, identity_of};
use crate::frame::{self, FrameError, KIND_HELLO, KIND_RAFT};
use crate::tls::{self, Alpn, Refusal};

/// Accept connections until the transport shuts down, each handshake and connection in its own
/// task.
pub(super) async fn accept_loop(shared: Shared, sinks: Sinks) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = shutdown.changed() => None,
        };
        let Some(incoming) = incoming else { break };
        let shared = shared.clone();
        let sinks = sinks.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(shared, sinks, conn).await,
                Err(e) if handshake_abandoned(&e) => {
                    shared
                        .counters
                        .handshakes_abandoned
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(target: LOG, %remote, error = %e, "incoming handshake abandoned by the peer");
                }
                // The verifier already logged the certificate reason, if that was it.
                Err(e) => {
                    warn!(target: tls::AUTH_LOG_TARGET, %remote, error = %e, "incoming handshake failed")
                }
            }
        });
    }
}

/// Whether a failed incoming handshake is one the peer simply gave up on, with no certificate
/// problem: it closed without a TLS alert (a client that raced several nodes and kept another,
/// or whose deadline passed), reset, or went silent (a dial left over from before a restart).
/// Nothing there for an operator to act on. A close carrying a TLS alert (QUIC crypto error
/// codes 0x100–0x1ff: the peer refused our certificate) and every local failure (our verifier
/// refused theirs) are refusals.
pub(crate) fn handshake_abandoned(e: &quinn::ConnectionError) -> bool {
    use quinn::ConnectionError as E;
    match e {
        E::ConnectionClosed(close) => !(0x100..0x200).contains(&u64::from(close.error_code)),
        E::ApplicationClosed(_) | E::Reset | E::TimedOut | E::LocallyClosed => true,
        E::VersionMismatch | E::TransportError(_) | E::CidsExhausted => false,
    }
}

fn peer_identity(conn: &Connection) -> Option<Identity> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    identity_of(certs.first()?).ok()
}

fn negotiated_alpn(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Record the refusal and close the connection with `CODE_REFUSED` and the reason.
fn refuse(shared: &Shared, conn: &Connection, r: Refusal) {
    let context = format!("connection from {}", conn.remote_address());
    shared.auth.record(&r, &context);
    let reason = r.to_string();
    conn.close(VarInt::from_u32(CODE_REFUSED), reason.as_bytes());
}

async fn serve_connection(shared: Shared, sinks: Sinks, conn: Connection) {
    let Some(identity) = peer_identity(&conn) else {
        refuse(
            &shared,
            &conn,
            Refusal::NoIdentity("no verified peer certificate".into()),
        );
        return;
    };
    let alpn = match tls::check_alpn_identity(negotiated_alpn(&conn).as_deref(), &identity) {
        Ok(a) => a,
        Err(r) => return refuse(&shared, &conn, r),
    };
    let remote = conn.remote_address();
    debug!(target: LOG, %remote, %identity, %alpn, "accepted connection");
    match (alpn, identity) {
        (Alpn::Raft, Identity::Node(from)) => serve_raft(shared, sinks.raft, conn, from).await,
        (Alpn::Bulk, Identity::Node(from)) => serve_bulk(sinks.bulk, conn, from).await,
        (Alpn::Client, identity) => serve_clients(sinks.clients, conn, identity, remote).await,
        // check_alpn_identity refused clients on Raft/Bulk.
        (Alpn::Raft | Alpn::Bulk, Identity::Client(_)) => {}
    }
}

/// Hand every bidirectional stream of a bulk connection from node `from` to `sink`.
async fn serve_bulk(sink: mpsc::Sender<BulkStream>, conn: Connection, from: NodeId) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                if sink
                    .send(BulkStream {
                        peer: from,
                        send,
                        recv,
                    })
                    .await
                    .is_err()
                {
                    conn.close(VarInt::from_u32(CODE_SHUTDOWN), b"bulk receiver gone");
                    return;
                }
            }
            Err(e) => {
                debug!(target: LOG, peer = from, error = %e, "bulk connection ended");
                return;
            }
        }
    }
}

/// Hand every bidirectional stream (one request each) of a client connection to `sink`.
async fn serve_clients(
    sink: mpsc::Sender<ClientStream>,
    conn: Connection,
    identity: Identity,
    remote: SocketAddr,
) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let s = ClientStream {
                    identity: identity.clone(),
                    remote,
                    send,
                    recv,
                };
                if sink.send(s).await.is_err() {
                    conn.close(VarInt::from_u32(CODE_SHUTDOWN), b"client receiver gone");
                    return;
                }
            }
            Err(e) => {
                debug!(target: LOG, %identity, error = %e, "client connection ended");
                return;
            }
        }
    }
}

/// Read every uni stream of a raft connection from node `from`, each in its own task.
async fn serve_raft(
    shared: Shared,
    sink: mpsc::Sender<(NodeId, Bytes)>,
    conn: Connection,
    from: NodeId,
) {
    loop {
        let recv = match conn.accept_uni().await {
            Ok(r) => r,
            Err(e) => {
                debug!(target: LOG, peer = from, error = %e, "incoming raft connection ended");
                return;
            }
        };
        let shared = shared.clone();
        let sink = sink.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            read_raft_stream(shared, sink, conn, from, recv).await;
        });
    }
}

/// Count, log, and stop the stream with `CODE_BAD_FRAME`.
fn bad_frame(
    shared: &Shared,
    conn: &Connection,
    from: NodeId,
    recv: &mut RecvStream,
    e: &FrameError,
) {
    shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
    warn!(target: LOG, peer = from, remote = %conn.remote_address(), error = %e, "closing raft stream: bad frame");
    let _ = recv.stop(VarInt::from_u32(CODE_BAD_FRAME));
}

/// One raft stream: its hello, then raft frames into `sink` until the stream ends.
async fn read_raft_stream(
    shared: Shared,
    sink: mpsc::Sender<(NodeId, Bytes)>,
    conn: Connection,
    from: NodeId,
    mut recv: RecvStream,
) {
    if !accept_hello(&shared, &conn, from, &mut recv).await {
        return;
    }
    let max = shared.config.max_frame_bytes;
    loop {
        match frame::read_frame(&mut recv, max).await {
            Ok(Some(_)) if !shared.membership.contains(from) => {
                // Removed from the cluster after the handshake: stop listening to it.
                return refuse(&shared, &conn, Refusal::NotAMember(from));
            }
            Ok(Some(f)) if f.kind == KIND_RAFT => {
                shared
                    .counters
                    .raft_msgs_received
                    .fetch_add(1, Ordering::Relaxed);
                if sink.send((from, Bytes::from(f.payload))).await.is_err() {
                    let _ = recv.stop(VarInt::from_u32(CODE_SHUTDOWN));
                    return;
                }
            }
            Ok(Some(f)) => {
                return bad_frame(
                    &shared,
                    &conn,
                    from,
                    &mut recv,
                    &FrameError::UnexpectedKind {
                        expected: "raft",
                        found: f.kind,
                    },
                );
            }
            Ok(None) => return,
            Err(FrameError::Io(e)) => {
                debug!(target: LOG, peer = from, error = %e, "raft stream ended");
                return;
            }
            Err(e) => return bad_frame(&shared, &conn, from, &mut recv, &e),
        }
    }
}

/// Read the stream's first frame, which must be a hello naming the certificate's node and us.
/// False if the stream ended, or was stopped or its connection closed for a bad hello.
async fn accept_hello(
    shared: &Shared,
    conn: &Connection,
    from: NodeId,
    recv: &mut RecvStream,
) -> bool {
    let hello = match frame::read_frame(recv, shared.config.max_frame_bytes).await {
        Ok(Some(f)) if f.kind == KIND_HELLO => match f.decode::<Hello>() {
            Ok(h) => h,
            Err(e) => {
                bad_frame(shared, conn, from, recv, &e);
                return false;
            }
        },
        Ok(Some(f)) => {
            let e = FrameError::UnexpectedKind {
                expected: "hello",
                found: f.kind,
            };
            bad_frame(shared, conn, from, recv, &e);
            return false;
        }
        Ok(None) => return false,
        Err(e) => {
            bad_frame(shared, conn, from, recv, &e);
            return false;
        }
    };
    if hello.from != from {
        refuse(
            shared,
            conn,
            Refusal::IdMismatch {
                claimed: hello.from,
                cert: Identity::Node(from),
            },
        );
        return false;
    }
    if hello.to != shared.config.node_id {
        warn!(target: LOG, peer = from, addressed_to = hello.to, me = shared.config.node_id,
            "raft link addressed to another node (stale address book?); closing");
        conn.close(VarInt::from_u32(CODE_REFUSED), b"wrong destination node");
        return false;
    }
    true
}
