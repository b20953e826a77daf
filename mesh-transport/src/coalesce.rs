//! Vectored writes to a TCP socket as one `send` when they are small.
//!
//! hyper's HTTP/1.1 server writes a response's head and its body (and each chunk's size
//! line, data and CRLF) as separate slices, through `writev`. On Linux a `writev` costs more
//! kernel time than a `send` of the same bytes: the VFS path (`vfs_writev`,
//! `rw_verify_area`, `fdget_pos`, `fput`) and copying the iovec array in: 0.35 µs per write
//! here for a small response, 0.25 µs at 4 KiB, while at 16 KiB the copy costs more than it
//! saves (`cargo bench -p mesh-benches --bench coalesce`, 2026-12-05). So two or more slices
//! of at most [`COALESCE`] bytes in all are copied into the worker thread's scratch buffer
//! and sent at once; larger writes keep `writev`. The upstream HTTP/1.1 client copies small
//! bodies next to the head in its own buffer likewise (`h1client::COALESCE`).
//!
//! A worker's TCP connections ([`crate::defer::DeferredTcp`], plain or under TLS) copy
//! their small writes into the connection's buffer instead in a busy turn, sent at the
//! turn's end; what they write at once comes here.
//!
//! rustls writes its records with `write_vectored` too, one `writev` per flush even of a
//! single record: the stream under every TLS connection, downstream and upstream, is a
//! `DeferredTcp` as well, so a record goes out with a `send`.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Vectored writes up to this many bytes in all are copied and sent with one `send`.
pub(crate) const COALESCE: usize = 4 * 1024;

thread_local! {
    /// The thread's copy buffer (reused: its capacity stays at most [`COALESCE`] bytes).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes `bufs` to `io` as [`AsyncWrite::poll_write_vectored`] does: returns how many
/// bytes were written, from the front. Two or more non-empty slices of at most
/// [`COALESCE`] bytes in all go out with one `poll_write` of a copy; one non-empty slice
/// goes out with `poll_write` as it is; anything else with `poll_write_vectored`.
pub(crate) fn poll_write_coalesced<W: AsyncWrite + ?Sized>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut total = 0;
    let mut non_empty = 0;
    let mut last = &[][..];
    for b in bufs {
        if !b.is_empty() {
            total += b.len();
            non_empty += 1;
            last = b;
        }
    }
    match non_empty {
        0 => Poll::Ready(Ok(0)),
        1 => io.poll_write(cx, last),
        _ if total <= COALESCE => SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            for b in bufs {
                scratch.extend_from_slice(b);
            }
            io.poll_write(cx, scratch)
        }),
        _ => io.poll_write_vectored(cx, bufs),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// Records each call (`'w'` for `poll_write`, `'v'` for `poll_write_vectored`) and
    /// accepts at most `cap` bytes per call.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<char>,
        out: Vec<u8>,
        cap: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.cap);
            self.calls.push('w');
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls.push('v');
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.cap - n);
                self.out.extend_from_slice(&b[..k]);
                n += k;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(rec: &mut Recorder, parts: &[&[u8]]) -> usize {
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match poll_write_coalesced(Pin::new(rec), &mut cx, &slices) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_small_head_and_body_go_out_in_one_write_in_order() {
        let mut rec = Recorder {
            cap: usize::MAX,
            ..Default::default()
        };
        let n = write(
            &mut rec,
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"", b"ok"],
        );
        assert_eq!(rec.calls, ['w']);
        assert_eq!(rec.out, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(n, rec.out.len());
    }

    #[test]
    fn a_partial_write_of_the_copy_counts_bytes_from_the_front() {
        let mut rec = Recorder {
            cap: 5,
            ..Default::default()
        };
        let n = write(&mut rec, &[b"abc", b"defg"]);
        assert_eq!((n, &rec.out[..]), (5, &b"abcde"[..]));
        assert_eq!(rec.calls, ['w']);
    }

    #[test]
    fn one_slice_is_written_as_it_is_and_none_writes_nothing() {
        let mut rec = Recorder {
            cap: usize::MAX,
            ..Default::default()
        };
        let big = vec![7u8; COALESCE * 2];
        assert_eq!(write(&mut rec, &[b"", &big, b""]), big.len());
        assert_eq!(write(&mut rec, &[b"", b""]), 0);
        assert_eq!(rec.calls, ['w']);
        assert_eq!(rec.out, big);
    }

    #[tokio::test]
    async fn a_socket_written_through_the_copy_delivers_small_and_large_vectored_writes_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // off a worker a `DeferredTcp` writes at once, its vectored writes through the copy
        let mut tcp = crate::defer::DeferredTcp::new(client);
        assert!(tcp.is_write_vectored());
        let big: Vec<u8> = (0..COALESCE * 3).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        for parts in [&[&b"head "[..], b"", b"body"][..], &[b"x", &big, b"y"]] {
            let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut slices = &mut slices[..];
            while !slices.is_empty() {
                let n = tcp.write_vectored(slices).await.unwrap();
                IoSlice::advance_slices(&mut slices, n);
            }
            expected.extend(parts.iter().flat_map(|p| p.iter().copied()));
        }
        tcp.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn slices_over_the_limit_keep_the_vectored_write() {
        let mut rec = Recorder {
            cap: usize::MAX,
            ..Default::default()
        };
        let body = vec![1u8; COALESCE];
        let n = write(&mut rec, &[b"head", &body]);
        assert_eq!(rec.calls, ['v']);
        assert_eq!(n, COALESCE + 4);
        assert_eq!(&rec.out[..4], b"head");
    }
}
