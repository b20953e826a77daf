//! The streams of an upstream HTTP/2 connection: how many are open, and how many the
//! server allows (its `SETTINGS_MAX_CONCURRENT_STREAMS`, read from the frames it sends).
//!
//! hyper's client does not tell its user the server's settings, and queues a stream over the
//! server's limit on the connection rather than failing it. The pool needs the limit to
//! open another connection instead (as Envoy's pool does: a connection's capacity is the
//! lower of the cluster's `max_concurrent_streams` and the server's setting), so the
//! connection's reading side goes through [`SettingsReader`], which follows the frame
//! boundaries of what the server sends (a 9-byte header and the length it gives) and reads
//! the entries of each `SETTINGS` frame; payloads are skipped, not copied. A new connection
//! is handed out once the server's first `SETTINGS` (its connection preface, RFC 9113 §3.4)
//! has been read, or its reading side ended, so its limit holds from its first request
//! (as gRPC clients wait for the server's preface).
//!
//! A connection to a cluster with `tcp.maxConnections` holds its connection permit here
//! (given back when its reading side ends, or when the last of the pool, its requests and
//! its task lets go of it), and each stream's end wakes the HTTP/2 requests pending for a
//! stream at its endpoint, of whichever cluster ([`StreamWake`]: the clusters reaching an
//! endpoint, a DestinationRule's subsets, share its connections).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use mesh_core::limits::{ConnectionGauge, ConnectionPermit};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// `SETTINGS` (RFC 9113 §6.5).
const SETTINGS: u8 = 0x4;
/// The `ACK` flag of a `SETTINGS` frame.
const ACK: u8 = 0x1;
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// The stream counts of one upstream HTTP/2 connection, shared by the pool, the requests
/// on it (a [`StreamSlot`] each) and its reading side.
#[derive(Debug)]
pub(crate) struct H2Streams {
    /// Streams begun on it whose response has not ended (or been dropped).
    active: AtomicU32,
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` (`u32::MAX` until it says).
    server_max: AtomicU32,
    /// The server's first `SETTINGS` was read, or the reading side ended.
    settled: AtomicBool,
    settled_notify: Notify,
    /// The requests pending for a stream at the connection's endpoint: a stream's end wakes
    /// them.
    wake: Arc<StreamWake>,
    /// The connection's permit under `maxConnections` (taken when its reading side ends).
    permit: Mutex<Option<ConnectionPermit>>,
    /// Counts the connection in its cluster's pool gauges (open until its reading side
    /// ends, idle while no stream is open), set when it is made.
    gauge: OnceLock<ConnectionGauge>,
    /// The connection's local address, set once connected (telemetry's
    /// `%UPSTREAM_LOCAL_ADDRESS%`).
    local: OnceLock<SocketAddr>,
}

impl H2Streams {
    /// The streams of a connection with no connection limit, alone at its endpoint.
    #[cfg(test)]
    pub(crate) fn new() -> Arc<Self> {
        H2Streams::limited(None, Arc::default())
    }

    /// The streams of a connection counted against its cluster's `maxConnections` by
    /// `permit` (if it has one); its streams' ends wake the requests pending on `wake`.
    pub(crate) fn limited(permit: Option<ConnectionPermit>, wake: Arc<StreamWake>) -> Arc<Self> {
        Arc::new(H2Streams {
            active: AtomicU32::new(0),
            server_max: AtomicU32::new(u32::MAX),
            settled: AtomicBool::new(false),
            settled_notify: Notify::new(),
            wake,
            permit: Mutex::new(permit),
            gauge: OnceLock::new(),
            local: OnceLock::new(),
        })
    }

    /// Notes the connection's local address (once, when connected).
    pub(crate) fn set_local_addr(&self, addr: Option<SocketAddr>) {
        if let Some(a) = addr {
            let _ = self.local.set(a);
        }
    }

    /// The connection's reading side ended: no `SETTINGS` will come, and it no longer
    /// counts against `maxConnections`.
    fn ended(&self) {
        self.settle();
        if let Some(g) = self.gauge.get() {
            g.close();
        }
        if let Ok(mut p) = self.permit.lock() {
            drop(p.take());
        }
    }

    /// Waits until the server's first `SETTINGS` was read (or the connection's reading side
    /// ended); the connection's task must be running.
    pub(crate) async fn settled(&self) {
        loop {
            let notified = self.settled_notify.notified();
            if self.settled.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn settle(&self) {
        if !self.settled.swap(true, Ordering::AcqRel) {
            self.settled_notify.notify_waiters();
        }
    }

    /// Streams open on the connection.
    pub(crate) fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// The server's limit, once its `SETTINGS` said one.
    pub(crate) fn server_max(&self) -> u32 {
        self.server_max.load(Ordering::Acquire)
    }

    /// Takes a stream whatever the limits (a new connection's first).
    pub(crate) fn take(self: &Arc<Self>) -> StreamSlot {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.mark_idle();
        }
        StreamSlot(self.clone())
    }

    /// Counts the connection in its cluster's pool gauges (once, when it is made; busy
    /// with its first stream).
    pub(crate) fn set_gauge(&self, gauge: Option<ConnectionGauge>) {
        if let Some(g) = gauge {
            let _ = self.gauge.set(g);
            self.mark_idle();
        }
    }

    /// Counts the connection out of its pool gauges (a connection that never connected).
    pub(crate) fn close_gauge(&self) {
        if let Some(g) = self.gauge.get() {
            g.close();
        }
    }

    /// Marks the connection idle or busy in its pool gauge, as its open streams say now
    /// (read again rather than taken from the change that called it, and again after the
    /// mark is set: a stream taken and another ending at once on two threads leave the
    /// right mark).
    #[inline]
    fn mark_idle(&self) {
        if let Some(g) = self.gauge.get() {
            loop {
                let idle = self.active.load(Ordering::Acquire) == 0;
                g.set_idle(idle);
                if (self.active.load(Ordering::Acquire) == 0) == idle {
                    break;
                }
            }
        }
    }

    /// Takes a stream if fewer than the lower of `max` and the server's limit are open.
    pub(crate) fn try_take(self: &Arc<Self>, max: u32) -> Option<StreamSlot> {
        let limit = max.min(self.server_max());
        let was = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        if was == 0 {
            self.mark_idle();
        }
        Some(StreamSlot(self.clone()))
    }
}

impl StreamSlot {
    /// Keeps the stream if its connection is within the server's limit, now that it is
    /// known (a stream taken while the connection was being made); `None`: over it, the
    /// stream is given up (for another connection).
    pub(crate) fn within_server_limit(self) -> Option<StreamSlot> {
        (self.0.active() <= self.0.server_max()).then_some(self)
    }

    /// The local address of the stream's connection, once connected.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.0.local.get().copied()
    }
}

/// The HTTP/2 requests pending for a stream at one endpoint, of every cluster reaching it:
/// each of its connections' stream ends wakes them (one fence and one load when none waits).
#[derive(Debug, Default)]
pub(crate) struct StreamWake {
    waiting: AtomicU32,
    notify: Notify,
}

/// A request counted among an endpoint's [`StreamWake`] waiters, until dropped.
#[derive(Debug)]
pub(crate) struct Waiting(Arc<StreamWake>);

impl StreamWake {
    /// Counts a request waiting for a stream at the endpoint.
    pub(crate) fn enter(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        // against the store-load race with a stream's end: either the waiter, looking for a
        // stream after this, sees it free, or the stream's end sees the waiter
        std::sync::atomic::fence(Ordering::SeqCst);
        Waiting(self.clone())
    }

    /// Completes at the next stream end at the endpoint once enabled (enable it before
    /// looking for a stream, then await).
    pub(crate) fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    fn stream_ended(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open stream of a connection; the stream is counted until this is dropped (with the
/// response body, or the request's failure).
#[derive(Debug)]
pub(crate) struct StreamSlot(Arc<H2Streams>);

impl Drop for StreamSlot {
    #[inline]
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.mark_idle();
        }
        self.0.wake.stream_ended();
    }
}

/// Where the reader is in the server's frame sequence.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes of the current frame header read so far.
    header: [u8; 9],
    header_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u32,
    /// The current frame is a `SETTINGS` frame (not an `ACK`): its entries are read.
    settings: bool,
    entry: [u8; 6],
    entry_len: u8,
}

impl Frames {
    /// Follows `bytes`, the next bytes the server sent, recording what its `SETTINGS` say.
    fn feed(&mut self, mut bytes: &[u8], streams: &H2Streams) {
        while !bytes.is_empty() {
            if self.payload_left == 0 {
                let take = (9 - usize::from(self.header_len)).min(bytes.len());
                let at = usize::from(self.header_len);
                self.header[at..at + take].copy_from_slice(&bytes[..take]);
                self.header_len += take as u8;
                bytes = &bytes[take..];
                if self.header_len == 9 {
                    let h = self.header;
                    self.header_len = 0;
                    self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                    self.settings = h[3] == SETTINGS && h[4] & ACK == 0;
                    self.entry_len = 0;
                    if self.settings && self.payload_left == 0 {
                        streams.settle();
                    }
                }
                continue;
            }
            let take = (self.payload_left as usize).min(bytes.len());
            if self.settings {
                for &b in &bytes[..take] {
                    self.entry[usize::from(self.entry_len)] = b;
                    self.entry_len += 1;
                    if self.entry_len == 6 {
                        self.entry_len = 0;
                        let e = self.entry;
                        if u16::from_be_bytes([e[0], e[1]]) == MAX_CONCURRENT_STREAMS {
                            let v = u32::from_be_bytes([e[2], e[3], e[4], e[5]]);
                            streams.server_max.store(v, Ordering::Release);
                        }
                    }
                }
            }
            self.payload_left -= take as u32;
            bytes = &bytes[take..];
            if self.settings && self.payload_left == 0 {
                streams.settle();
            }
        }
    }
}

/// An upstream HTTP/2 connection's I/O whose reading side records the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` into the connection's [`H2Streams`].
#[derive(Debug)]
pub(crate) struct SettingsReader<T> {
    io: T,
    frames: Frames,
    streams: Arc<H2Streams>,
}

impl<T> SettingsReader<T> {
    pub(crate) fn new(io: T, streams: Arc<H2Streams>) -> Self {
        SettingsReader {
            io,
            frames: Frames::default(),
            streams,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsReader<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.frames.feed(&buf.filled()[before..], &this.streams);
            }
            // end of stream or error: no SETTINGS will come, and the connection is closed
            Poll::Ready(_) => this.streams.ended(),
            Poll::Pending => {}
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SettingsReader<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn setting(id: u16, value: u32) -> Vec<u8> {
        let mut e = id.to_be_bytes().to_vec();
        e.extend_from_slice(&value.to_be_bytes());
        e
    }

    /// The limit is read from the server's `SETTINGS` wherever the reads split the frames,
    /// `DATA` payloads that look like settings are skipped, an `ACK` is not read, and a
    /// later `SETTINGS` replaces the limit.
    #[test]
    fn the_server_s_max_concurrent_streams_is_read_across_any_split() {
        let mut wire = Vec::new();
        let mut first = setting(0x4, 65_535); // INITIAL_WINDOW_SIZE
        first.extend(setting(MAX_CONCURRENT_STREAMS, 7));
        wire.extend(frame(SETTINGS, 0, &first));
        wire.extend(frame(0x0, 0, &setting(MAX_CONCURRENT_STREAMS, 1))); // DATA
        wire.extend(frame(SETTINGS, ACK, &[]));
        wire.extend(frame(0x1, 0x4, &[0x88])); // HEADERS
        let later = frame(SETTINGS, 0, &setting(MAX_CONCURRENT_STREAMS, 3));
        for chunk in [1, 2, 5, 9, 13, wire.len()] {
            let streams = H2Streams::new();
            let mut frames = Frames::default();
            assert_eq!(streams.server_max(), u32::MAX, "none said yet");
            let (head, rest) = wire.split_at(first.len() + 8);
            frames.feed(head, &streams);
            assert!(!streams.settled.load(Ordering::Acquire), "one byte short");
            for c in rest.chunks(chunk) {
                frames.feed(c, &streams);
            }
            assert!(streams.settled.load(Ordering::Acquire));
            assert_eq!(streams.server_max(), 7, "chunks of {chunk}");
            frames.feed(&later, &streams);
            assert_eq!(streams.server_max(), 3);
        }
    }

    /// A connection takes streams up to the lower of the cluster's limit and the server's;
    /// a stream ended (its slot dropped) makes room for another.
    #[test]
    fn streams_are_taken_up_to_the_lower_limit() {
        let streams = H2Streams::new();
        let a = streams.try_take(2).unwrap();
        let _b = streams.try_take(2).unwrap();
        assert!(streams.try_take(2).is_none());
        assert_eq!(streams.active(), 2);
        drop(a);
        let _c = streams.try_take(2).unwrap();
        streams.server_max.store(1, Ordering::Release);
        assert!(
            streams.try_take(u32::MAX).is_none(),
            "the server's is lower"
        );
        assert_eq!(streams.active(), 2);
    }
}
