//! Opening bulk streams: one `wraft-bulk/1` connection per peer, dialed on first use and
//! re-dialed once closed, separate from the raft link so bulk data never shares its
//! flow-control window. Accepted bulk streams arrive on [`Inbound::bulk`](super::Inbound::bulk).

use quinn::Connection;
use tracing::info;

use super::endpoint::dial;
use super::{BulkStream, LOG, Transport, TransportError};
use crate::certs::NodeId;

impl Transport {
    /// Open a bidirectional stream to `to` on the bulk connection (dialed on
    /// first use with ALPN `wraft-bulk/1`, separate from the raft link so
    /// bulk data never shares its flow-control window). Waits for the
    /// handshake on first use, and for a stream credit if the peer's
    /// `max_concurrent_bidi_streams` are in use.
    pub async fn open_bulk(&self, to: NodeId) -> Result<BulkStream, TransportError> {
        let conn = self.bulk_connection(to).await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(BulkStream {
            peer: to,
            send,
            recv,
        })
    }

    /// Close the bulk connection to `to`, if one is open (the peer sees `CODE_LINK_CLOSED`), so
    /// that the next [`Transport::open_bulk`] dials afresh. For a caller that found the peer
    /// silent: a connection to a peer that died stays open until the QUIC idle timeout, and a
    /// stream opened on it meanwhile waits that long for nothing. Streams still open on it end.
    pub fn close_bulk(&self, to: NodeId) {
        let slot = self
            .inner
            .bulk_conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .cloned();
        if let Some(slot) = slot
            && let Ok(mut slot) = slot.try_lock()
            && let Some(c) = slot.take()
        {
            c.close(
                quinn::VarInt::from_u32(super::CODE_LINK_CLOSED),
                b"peer silent",
            );
            info!(target: LOG, peer = to, "bulk connection closed: the peer fell silent");
        }
    }

    async fn bulk_connection(&self, to: NodeId) -> Result<Connection, TransportError> {
        if *self.inner.shared.shutdown.borrow() {
            return Err(TransportError::ShutDown);
        }
        let slot = self
            .inner
            .bulk_conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(to)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let conn = dial(&self.inner.shared, to, crate::tls::Alpn::Bulk).await?;
        info!(target: LOG, peer = to, "bulk connection established");
        *slot = Some(conn.clone());
        Ok(conn)
    }
}
