//! What a response's head and body cost to write to a loopback TCP socket as a `writev` of
//! two slices against a copy into one buffer and a `send` (mesh_transport's `coalesce`
//! module: hyper's HTTP/1.1 server writes head and body as separate slices, and the listener
//! copies them together up to 4 KiB).
//!
//! - `writev/N`: head (110 bytes) and a body of N bytes with one `writev`;
//! - `copy_send/N`: both copied into a reused buffer, then one `send`.
//!
//! A thread drains the peer end. The difference is the kernel's vectored-write path
//! (`vfs_writev`, `rw_verify_area`, the iovec copied in) against the copy: it decides the
//! threshold. 2026-12-05, this machine (`taskset -c 0 cargo bench -p mesh-benches --bench
//! coalesce`): copy and `send` 1.98 µs against `writev` 2.32 µs at 15 bytes of body, 2.19
//! against 2.43 at 1 KiB, 2.48 against 2.72 at 4 KiB; at 16 KiB the copy loses (6.05
//! against 5.91).
use std::hint::black_box;
use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn pair() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let client = TcpStream::connect(addr).expect("connect loopback");
    let (mut server, _) = listener.accept().expect("accept");
    client.set_nodelay(true).expect("nodelay");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(server.read(&mut buf), Ok(n) if n > 0) {}
    });
    client
}

fn bench(c: &mut Criterion) {
    let mut sock = pair();
    let head = vec![b'h'; 110];
    let mut group = c.benchmark_group("response_write");
    for body_len in [15usize, 1024, 4096, 16384] {
        let body = vec![b'b'; body_len];
        group.bench_with_input(BenchmarkId::new("writev", body_len), &body, |b, body| {
            b.iter(|| {
                let bufs = [IoSlice::new(&head), IoSlice::new(body)];
                black_box(sock.write_vectored(&bufs).expect("writev"))
            })
        });
        let mut scratch = Vec::with_capacity(head.len() + body_len);
        group.bench_with_input(BenchmarkId::new("copy_send", body_len), &body, |b, body| {
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(&head);
                scratch.extend_from_slice(body);
                black_box(sock.write(&scratch).expect("send"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
