//! Trace propagation through the whole proxy (Envoy's tracing as Istio's sidecars run it,
//! istio.io/latest/docs/tasks/observability/distributed-tracing): the upstream sees the
//! caller's trace continued with the proxy's span, an `x-request-id`, and the sampling rate of
//! `ProxyBootstrap.tracing`; malformed trace headers never cost the request.

use crate::support;

use std::sync::{Arc, Mutex};

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use support::*;

/// A backend that keeps the headers of the last request it received.
async fn recording() -> (Backend, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        s.lock().unwrap().push(req.headers().clone());
        Box::pin(async move { Response::new(full("ok")) })
    });
    (backend_with("traced", handler).await, seen)
}

fn last(seen: &Mutex<Vec<HeaderMap>>) -> HeaderMap {
    seen.lock().unwrap().last().cloned().unwrap()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

fn config(sampling: &str, backend: &Backend) -> String {
    bootstrap(1, &format!("  tracing: {{sampling: {sampling}}}\n"))
        + &service_entry("ratings", 9080, "HTTP", &[backend])
}

#[tokio::test]
async fn the_upstream_sees_the_caller_s_trace_continued_by_the_proxy_s_span() {
    let (b, seen) = recording().await;
    let p = start(&config("0", &b)).await;
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get_once(
        p.out,
        "ratings:9080",
        &[("traceparent", caller), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = last(&seen);
    let tp = header(&h, "traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
        "same trace, caller's decision kept (sampling 0 does not override it): {tp}"
    );
    let span = &tp[36..52];
    assert_ne!(span, "00f067aa0ba902b7", "the proxy's own span");
    assert_eq!(header(&h, "tracestate"), "congo=t61rcWkgMzE");
    // W3C in, W3C out (B3 is written for B3 callers)
    assert_eq!(header(&h, "x-b3-traceid"), "", "{h:?}");
    assert_eq!(header(&h, "x-request-id").len(), 36, "generated: {h:?}");

    // an x-request-id of the caller's is kept
    get_once(p.out, "ratings:9080", &[("x-request-id", "caller-id-1")]).await;
    assert_eq!(header(&last(&seen), "x-request-id"), "caller-id-1");
}

#[tokio::test]
async fn malformed_trace_headers_start_a_new_trace_and_never_fail_the_request() {
    let (b, seen) = recording().await;
    let p = start(&config("100", &b)).await;
    for bad in [
        ("traceparent", "00-zzzz-00f067aa0ba902b7-01"),
        ("b3", "not-a-b3-header"),
        ("x-b3-traceid", "xyz"),
        (
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ),
    ] {
        let r = get_once(p.out, "ratings:9080", &[bad]).await;
        assert_eq!(r.status, 200, "{bad:?}");
        let h = last(&seen);
        // the format the caller used comes back well-formed: a new trace, sampled (100 %)
        let trace = match bad.0 {
            "traceparent" => {
                let tp = header(&h, "traceparent");
                assert_eq!(tp.len(), 55, "{bad:?}: {tp}");
                assert!(tp.ends_with("-01"), "sampling 100 %: {tp}");
                tp[3..35].to_string()
            }
            "b3" => {
                let b3 = header(&h, "b3");
                assert!(b3.len() >= 51 && b3[32..].starts_with('-'), "{b3}");
                assert_eq!(&b3[49..51], "-1", "sampled: {b3}");
                b3[..32].to_string()
            }
            _ => {
                assert_eq!(header(&h, "x-b3-sampled"), "1");
                assert_eq!(header(&h, "x-b3-spanid").len(), 16);
                header(&h, "x-b3-traceid").to_string()
            }
        };
        assert_eq!(trace.len(), 32, "{bad:?}: {h:?}");
        assert_ne!(trace, "00000000000000000000000000000000");
    }
}

#[tokio::test]
async fn a_reload_changes_the_sampling_rate() {
    let (b, seen) = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    write(&file, &config("100", &b));
    let p = start_files(vec![file.clone()]).await;
    get_once(p.out, "ratings:9080", &[]).await;
    assert!(header(&last(&seen), "traceparent").ends_with("-01"));
    write(&file, &config("0", &b));
    p.proxy.reload().unwrap();
    for _ in 0..20 {
        get_once(p.out, "ratings:9080", &[]).await;
        assert!(header(&last(&seen), "traceparent").ends_with("-00"));
    }
}
