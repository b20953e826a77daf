//! What trace propagation (`mesh_telemetry::TraceLayer`) costs per request: extracting the
//! caller's context, drawing the hop's span id, writing `traceparent` and the B3 headers,
//! and `x-request-id`. The header map is built outside the timing (criterion's batched
//! setup), as hyper hands one to the layer:
//!
//! - `new_trace`: a request without trace headers nor `x-request-id` (a new trace, a request
//!   id generated);
//! - `w3c`: a request with `traceparent`, `tracestate` and `x-request-id`;
//! - `b3_multi`: a request with the four `x-b3-*` headers and `x-request-id`.
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_telemetry::{TraceConfig, TraceLayer};

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("reviews:9080"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    for (k, v) in pairs {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn trace(c: &mut Criterion) {
    let layer = TraceLayer::new(TraceConfig::default().with_seed(1));
    let mut g = c.benchmark_group("trace");
    let cases: [(&str, HeaderMap); 3] = [
        ("new_trace", headers(&[])),
        (
            "w3c",
            headers(&[
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("x-request-id", "2f1c6b0e-5b7a-4d7e-9a51-8a3c1f0d9e42"),
            ]),
        ),
        (
            "b3_multi",
            headers(&[
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
                ("x-b3-sampled", "1"),
                ("x-request-id", "2f1c6b0e-5b7a-4d7e-9a51-8a3c1f0d9e42"),
            ]),
        ),
    ];
    for (name, h) in cases {
        g.bench_function(name, |b| {
            b.iter_batched(
                || h.clone(),
                |mut h| {
                    black_box(layer.propagate(&mut h));
                    h
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, trace);
criterion_main!(benches);
