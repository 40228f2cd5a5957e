//! `wraft node`'s SIGHUP handler: reload the node's TLS material (CA bundle, certificate, key)
//! from its certificate directory, as `systemctl reload wraft` (`ExecReload=kill -HUP`) asks.
//! The node also reloads by itself when the files change; SIGHUP is for file systems where
//! change notification does not reach (network mounts, some container volumes) and for
//! operators who want to say when.

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use wraft_node::TlsReloader;

/// Reload `tls` on every SIGHUP until the returned task is aborted or the runtime stops.
/// The outcome of each reload (what changed, or why it was refused and the old configuration
/// kept) is logged on `wraft::node`. Fails only if the signal cannot be hooked.
pub fn reload_tls_on_sighup(tls: TlsReloader) -> std::io::Result<JoinHandle<()>> {
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(target: "wraft::node", dir = %tls.dir().display(), "SIGHUP: reloading TLS");
            let tls = tls.clone();
            let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
        }
    }))
}
