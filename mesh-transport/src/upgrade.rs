//! Upgrades and tunnels: WebSocket (`Upgrade: websocket`, HTTP/1.1; extended `CONNECT` with
//! `:protocol websocket`, HTTP/2, RFC 8441) and `CONNECT` (RFC 9110 §9.3.6), spliced byte for
//! byte between the client's connection and the upstream's once the upstream agreed.
//!
//! **When it applies**: only to requests the engine's listener marked with an [`Upgrade`]
//! extension, which it does for the upgrades Istio enables on every HTTP connection manager
//! (`upgrade_configs: [{upgrade_type: websocket}]`) and for `CONNECT`. Other requests pay
//! one branch (hyper flags upgrade requests for the engine; the connector reads the
//! hop-by-hop bit set it computes anyway).
//!
//! | request | what happens |
//! |---|---|
//! | HTTP/1.1 `Connection: upgrade` + `Upgrade: websocket` | routed as any request; `Upgrade` and `Connection: upgrade` are kept towards an HTTP/1.1 upstream; its `101` is relayed with its `Upgrade`/`Connection`, then the two connections are spliced; any other answer is an ordinary response |
//! | HTTP/2 extended `CONNECT` with `:protocol websocket` (RFC 8441) | routed as any request; sent to the HTTP/1.1 upstream as a `GET` upgrade (as Envoy translates it, plus a `Sec-WebSocket-Key` when the client sent none, which RFC 8441 clients never do); the upstream's `101` becomes `200` on the client's stream, then spliced |
//! | `CONNECT host:port` (HTTP/1.1 or HTTP/2) | routed by that authority; the chosen endpoint gets a new plain TCP connection (TLS if the cluster originates it), the client gets `200`, then spliced (Envoy's terminated `CONNECT`, route `connect_config`) |
//! | another `Upgrade` type (with `Connection: upgrade`) | `403`, body `upgrade_failed`, connection closed (Envoy: `upgrade_failed`, no response flag) |
//! | `Upgrade: h2c`, or `Upgrade` without `Connection: upgrade` | not an upgrade: `Upgrade` is removed and the request forwarded (as before) |
//! | a WebSocket upgrade whose endpoint is HTTP/2-only | `403 upgrade_failed` (extended `CONNECT` towards upstreams is not implemented) |
//! | the upstream cannot be reached | the usual local replies (`503 UF`, `503 UC`, `502 UPE`) |
//!
//! **The tunnel** ends when either side has closed (each direction is shut down as its
//! source ends, so a WebSocket close handshake completes), on an error of either
//! connection, or when no byte moved either way for the limits' `streamIdleTimeout`
//! (Envoy applies its stream idle timeout to upgraded streams too). It is checked a quarter
//! period at a time, so it fires between 1× and 1.25× the timeout. The upstream connection
//! of a tunnel is never pooled. On drain a tunnel goes on until it ends or `drainTimeout`
//! has passed (then it is closed with the rest).
//!
//! **How the engine splices**: on HTTP/1.1 not through hyper's `with_upgrades` (it needs a
//! `Send` socket, and the engine's shares its counters with the connection through
//! `Rc`/`Cell`, which the per-read hot path relies on): hyper's connection ends after the
//! switching response, and its socket and the bytes it read past the request are spliced
//! by the connection's own task. On HTTP/2, hyper's upgraded stream (`hyper::upgrade::on`)
//! is spliced by a task of the worker.
//!
//! **Differences from Envoy**: the upgrade types are fixed (WebSocket and `CONNECT`, Istio's
//! defaults) rather than configured per route; `CONNECT` is always terminated (no
//! `CONNECT` forwarded to the upstream as a request); no extended `CONNECT` towards HTTP/2
//! upstreams.

use std::cell::Cell;
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::h1client::Io;

/// The upgrade a request asks for, as the engine's listener classified it: a request
/// extension, read by the connector. A request without it is never upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upgrade {
    /// HTTP/1.1 `Connection: upgrade` and `Upgrade: websocket`.
    WebSocket,
    /// HTTP/2 extended `CONNECT` with `:protocol websocket` (RFC 8441): the upstream gets an
    /// HTTP/1.1 WebSocket upgrade, and its `101` is answered `200`.
    ExtendedConnect,
    /// `CONNECT host:port`: a TCP tunnel to the chosen endpoint.
    Connect,
}

/// The upstream half of a tunnel: the connection the upstream agreed to switch (or the one
/// opened for a `CONNECT`), with the bytes already read past the response head.
///
/// Reading yields those bytes first, then the connection's. Carried to the engine in a
/// [`TunnelHandle`] response extension.
pub struct Tunnel {
    io: Io,
    leftover: Bytes,
}

/// A response extension holding the upstream half of a tunnel, for whoever serves the
/// response to the client (the engine splices it with the client's connection). Clones share
/// the one tunnel; the first [`take`](TunnelHandle::take) gets it. Dropped untaken, the
/// upstream connection closes.
#[derive(Clone)]
pub struct TunnelHandle(Arc<Mutex<Option<Tunnel>>>);

/// An `AsyncRead + AsyncWrite` that counts the bytes read through it in a counter shared by
/// both halves of a splice: the idle check of [`splice`].
struct Counted<T> {
    inner: T,
    moved: Rc<Cell<u64>>,
}

// === impl Tunnel ===

impl Tunnel {
    /// The upstream connection with the bytes read past the response head.
    pub(crate) fn new(io: Io, leftover: Bytes) -> Self {
        Tunnel { io, leftover }
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("leftover", &self.leftover.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.leftover.is_empty() {
            let n = buf.remaining().min(this.leftover.len());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// === impl TunnelHandle ===

impl TunnelHandle {
    /// Wraps a tunnel for a response extension.
    pub(crate) fn new(tunnel: Tunnel) -> Self {
        TunnelHandle(Arc::new(Mutex::new(Some(tunnel))))
    }

    /// Takes the tunnel (`None` if a clone took it already).
    pub fn take(&self) -> Option<Tunnel> {
        match self.0.lock() {
            Ok(mut t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

impl std::fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelHandle")
    }
}

// === impl Counted ===

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.moved.set(this.moved.get().wrapping_add(n as u64));
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Splices the client's connection `down` (after sending the upstream `early`: bytes the
/// client sent behind its request head, already read by the HTTP server) with the upstream's
/// `up`, both ways, until both directions have ended, either fails, or nothing moved for
/// `idle`. Dropping both connections at the end closes them.
pub(crate) async fn splice<D>(down: D, early: Bytes, mut up: Tunnel, idle: Duration)
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    if !early.is_empty() && up.write_all(&early).await.is_err() {
        return;
    }
    let moved = Rc::new(Cell::new(0u64));
    let mut down = Counted {
        inner: down,
        moved: moved.clone(),
    };
    let mut up = Counted {
        inner: up,
        moved: moved.clone(),
    };
    let mut copy = pin!(tokio::io::copy_bidirectional(&mut down, &mut up));
    // one timer for the tunnel, re-armed every quarter of the timeout (as the connection
    // watchdog): fires between 1× and 1.25× the timeout
    let period = (idle / 4).max(Duration::from_millis(1));
    let ticks = idle.as_nanos().div_ceil(period.as_nanos()).max(1);
    let mut tick = pin!(tokio::time::sleep(period));
    let (mut seen, mut quiet) = (moved.get(), 0u128);
    loop {
        tokio::select! {
            biased;
            _ = copy.as_mut() => return,
            () = tick.as_mut() => {
                let now = moved.get();
                if now == seen {
                    quiet += 1;
                    if quiet >= ticks {
                        tracing::debug!("tunnel idle for streamIdleTimeout: closed");
                        return;
                    }
                } else {
                    (seen, quiet) = (now, 0);
                }
                tick.as_mut().reset(tokio::time::Instant::now() + period);
            }
        }
    }
}

/// A random `Sec-WebSocket-Key` (16 random bytes, base64: RFC 6455 §4.1), for an RFC 8441
/// client's request sent to an HTTP/1.1 upstream (those clients send none).
pub(crate) fn websocket_key() -> http::HeaderValue {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = [0u8; 18]; // 16 random bytes, two zero pad bytes
    raw[..8].copy_from_slice(&mesh_core::rng::entropy().to_le_bytes());
    raw[8..16].copy_from_slice(&mesh_core::rng::entropy().to_le_bytes());
    let mut out = BytesMut::with_capacity(24);
    for chunk in raw.chunks_exact(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.extend_from_slice(&[B64[((n >> shift) & 63) as usize]]);
        }
    }
    // 16 bytes are 22 base64 digits and `==`
    out.truncate(22);
    out.extend_from_slice(b"==");
    http::HeaderValue::from_maybe_shared(out.freeze())
        .unwrap_or_else(|_| http::HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_are_16_bytes_of_base64() {
        let k = websocket_key();
        let s = k.to_str().unwrap();
        assert_eq!(s.len(), 24);
        assert!(s.ends_with("=="));
        assert!(
            s[..22]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        );
        assert_ne!(websocket_key(), websocket_key());
    }
}
