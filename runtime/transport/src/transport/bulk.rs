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
