//! The headers an Istio sidecar's Envoy sets on every request and answer, through the real
//! proxy (`mesh_core::hcm`, checked against envoy 1.40 by `benches/conformance/envoy_diff.py`):
//! `server` (the outbound listener's `envoy`, the inbound's `istio-envoy`, whatever the
//! application answered, on the proxy's own answers too), `x-forwarded-proto` when the
//! request has none (`http`, or `https` on an inbound mTLS connection), and
//! `x-envoy-upstream-service-time` on the upstream's answers.

use crate::support;

use std::sync::Arc;

use http::Request;
use mesh_tls::ca::MeshCa;
use support::mtls::*;
use support::*;

/// An application that answers with the `x-forwarded-proto` it received (`-`: none) and
/// `server: gunicorn/19.9.0`.
fn xfp_echo() -> Handler {
    Arc::new(|req: Request<hyper::body::Incoming>| {
        let seen: Vec<String> = req
            .headers()
            .get_all("x-forwarded-proto")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let body = if seen.is_empty() {
            "-".to_owned()
        } else {
            seen.join(" | ")
        };
        Box::pin(async move {
            let mut res = http::Response::new(full(body));
            res.headers_mut()
                .insert("server", "gunicorn/19.9.0".parse().unwrap());
            res
        })
    })
}

#[tokio::test]
async fn the_outbound_listener_answers_as_envoy_and_adds_x_forwarded_proto_when_absent() {
    let app = backend_with("ratings", xfp_echo()).await;
    let p = start(
        &(bootstrap(1, "  mesh: {outboundTrafficPolicy: REGISTRY_ONLY}\n")
            + &service_entry("ratings", 9080, "HTTP", &[&app])),
    )
    .await;
    let r = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "http"), "{r:?}");
    let servers: Vec<_> = r.headers.get_all("server").iter().collect();
    assert_eq!(servers, ["envoy"], "the application's replaced: {r:?}");
    let ms = r.headers["x-envoy-upstream-service-time"].to_str().unwrap();
    assert!(ms.parse::<u64>().is_ok(), "milliseconds: {r:?}");
    // a value the application sent is kept (a sidecar does not use the remote address)
    let r = get_once(p.out, "ratings:9080", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(r.body, "https", "{r:?}");
    // the proxy's own answer too
    let r = get_once(p.out, "unknown.example", &[]).await;
    assert_eq!((r.status.as_u16(), r.flags()), (502, "NR"), "{r:?}");
    assert_eq!(r.headers["server"], "envoy");
    assert!(
        !r.headers.contains_key("x-envoy-upstream-service-time"),
        "no upstream answered: {r:?}"
    );
    // and the connection's own answer to a malformed request, made before the layers
    let text = raw(
        p.out,
        b"GET / HTTP/1.1\r\nHost: ratings:9080\r\nHost: other\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("\r\nserver: envoy\r\n"),
        "{text}"
    );
}

#[tokio::test]
async fn the_inbound_listener_answers_as_istio_envoy_and_says_https_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = backend_with("reviews", xfp_echo()).await;
    let p = start(&reviews_config(dir.path(), &ca, &app, "")).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let mut mtls = Client::mtls(inbound, &ca, "productpage").await;
    let r = mtls.send("GET", "/reviews/1", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "https"),
        "{r:?}"
    );
    assert_eq!(r.headers["server"], "istio-envoy", "{r:?}");
    // the client's sidecar said how its application called: kept
    let r = mtls
        .send("GET", "/reviews/1", &[("x-forwarded-proto", "http")])
        .await;
    assert_eq!(r.body, "http", "{r:?}");
    // plaintext (PERMISSIVE): http
    let r = Client::plain(inbound)
        .await
        .send("GET", "/reviews/1", &[])
        .await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "http"), "{r:?}");
    assert_eq!(r.headers["server"], "istio-envoy", "{r:?}");
}

/// Istio's `proxyHeaders` switches (`spec.proxyHeaders`): another `server` name, no
/// `x-envoy-attempt-count`, no Envoy debug headers; `server.disabled` lets the
/// application's `server` pass.
#[tokio::test]
async fn istios_proxy_headers_switches_turn_the_headers_off() {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let app = backend_with(
        "ratings",
        Arc::new(move |req: Request<hyper::body::Incoming>| {
            *s.lock().unwrap() = Some(req.headers().contains_key("x-envoy-attempt-count"));
            Box::pin(async move {
                let mut res = http::Response::new(full("ok"));
                res.headers_mut()
                    .insert("server", "gunicorn/19.9.0".parse().unwrap());
                res
            })
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let access_log = format!("  accessLog: {{path: {}, encoding: JSON}}\n", log.display());
    let switches = format!(
        "  proxyHeaders:\n    server: {{value: my-mesh}}\n    attemptCount: {{disabled: true}}\n    envoyDebugHeaders: {{disabled: true}}\n{access_log}"
    );
    let p =
        start(&(bootstrap(1, &switches) + &service_entry("ratings", 9080, "HTTP", &[&app]))).await;
    let r = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["server"], "my-mesh");
    assert!(
        !r.headers.contains_key("x-envoy-upstream-service-time"),
        "{r:?}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        Some(false),
        "no x-envoy-attempt-count"
    );
    // and the access log has no service time (Envoy's `-`: the header it logs is absent)
    assert_eq!(logged_service_time(&p, &log).await, serde_json::Value::Null);
    drop(p);
    std::fs::remove_file(&log).unwrap();
    let passed =
        format!("  proxyHeaders:\n    server: {{disabled: true, value: ignored}}\n{access_log}");
    let p =
        start(&(bootstrap(1, &passed) + &service_entry("ratings", 9080, "HTTP", &[&app]))).await;
    let r = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!(r.headers["server"], "gunicorn/19.9.0", "{r:?}");
    assert!(
        r.headers.contains_key("x-envoy-upstream-service-time"),
        "{r:?}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        Some(true),
        "x-envoy-attempt-count by default"
    );
    assert_eq!(
        logged_service_time(&p, &log).await,
        serde_json::Value::String(
            r.headers["x-envoy-upstream-service-time"]
                .to_str()
                .unwrap()
                .into()
        ),
        "the header the client got"
    );
}

/// The `upstream_service_time` of the one line of the JSON access log at `log`.
async fn logged_service_time(p: &Running, log: &std::path::Path) -> serde_json::Value {
    let proxy = &p.proxy;
    eventually("the access log line", || {
        proxy.flush_telemetry();
        let n = std::fs::read_to_string(log).map_or(0, |t| t.lines().count());
        async move { n == 1 }
    })
    .await;
    let line = std::fs::read_to_string(log).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    v["upstream_service_time"].clone()
}
