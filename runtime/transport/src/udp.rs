//! UDP sockets handed to quinn, with kernel buffers sized for bursts.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Default send/receive buffer asked of the kernel, bytes.
pub(crate) const DEFAULT_UDP_BUFFER_BYTES: usize = 4 << 20;

/// Bind `addr` and ask for `buffer_bytes` of kernel send and receive buffer. The kernel may grant
/// less (it caps at `net.core.{r,w}mem_max`); that is logged, not an error, because the socket
/// still works, only with more drops under bursts.
pub(crate) fn bind(addr: SocketAddr, buffer_bytes: usize) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    if buffer_bytes > 0 {
        let sock = socket2::SockRef::from(&socket);
        // Some kernels refuse a size over their cap instead of capping it (ENOBUFS on the BSDs):
        // the socket still works with its default buffers, so that is logged, not fatal.
        let sized = sock
            .set_recv_buffer_size(buffer_bytes)
            .and_then(|()| sock.set_send_buffer_size(buffer_bytes));
        match (sized, sock.recv_buffer_size()) {
            (Err(e), _) => tracing::warn!(
                target: "wraft::transport", asked = buffer_bytes, error = %e,
                "cannot size the UDP socket buffers; using the kernel's defaults"
            ),
            // Linux reports twice what it reserves for payload (the other half is bookkeeping).
            (Ok(()), Ok(got)) if cfg!(target_os = "linux") && got / 2 < buffer_bytes => {
                tracing::debug!(
                    target: "wraft::transport", asked = buffer_bytes, granted = got / 2,
                    "UDP receive buffer capped by the kernel (net.core.rmem_max)"
                );
            }
            _ => {}
        }
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_socket_gets_the_buffer_it_asks_for_up_to_the_kernel_cap() {
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = socket2::SockRef::from(&plain).recv_buffer_size().unwrap();
        let sized = bind("127.0.0.1:0".parse().unwrap(), DEFAULT_UDP_BUFFER_BYTES).unwrap();
        let got = socket2::SockRef::from(&sized).recv_buffer_size().unwrap();
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        match cap {
            // Linux doubles the request, capped at rmem_max first.
            Some(cap) => assert_eq!(
                got,
                2 * cap.min(DEFAULT_UDP_BUFFER_BYTES),
                "default {default}"
            ),
            None => assert!(got >= default, "asked 4 MiB, got {got}, default {default}"),
        }
    }
}
