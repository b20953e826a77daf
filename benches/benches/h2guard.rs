//! What the HTTP/2 abuse guards (`mesh_transport::h2guard`) cost per request on a downstream
//! h2c connection: the listener hands every read and every write to the frame-header scanner.
//!
//! - `request`: one request's frames, as the client sends them (a HEADERS frame of a small
//!   GET) and as the proxy answers them (HEADERS, then a DATA frame with END_STREAM), each
//!   fed in one read or write;
//! - `request_bytewise`: the same bytes one at a time (the worst split: every header copied
//!   into the scanner's 9-byte buffer).
//!
//! Goal: a few tens of nanoseconds per request (a proxied request costs ~20k instructions).
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_transport::fuzzing::H2Guards;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn guards() -> H2Guards {
    let mut g = H2Guards::default();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    assert!(g.received(&hello).is_none());
    g
}

fn bench(c: &mut Criterion) {
    let mut get = vec![0x82, 0x86, 0x84, 0x01, 7];
    get.extend_from_slice(b"reviews");
    let request = frame(0x1, 0x5, 1, &get);
    let mut response = frame(0x1, 0x4, 1, &[0x88, 0x0f, 0x10, 0x02, b'o', b'k']);
    response.extend(frame(0x0, 0x1, 1, b"ok"));

    let mut g = guards();
    c.bench_function("h2guard/request", |b| {
        b.iter(|| {
            let tripped = g.received(black_box(&request));
            g.sent(black_box(&response));
            tripped
        })
    });
    let mut g = guards();
    c.bench_function("h2guard/request_bytewise", |b| {
        b.iter(|| {
            for byte in request.chunks(1) {
                if g.received(black_box(byte)).is_some() {
                    return true;
                }
            }
            for byte in response.chunks(1) {
                g.sent(black_box(byte));
            }
            false
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
