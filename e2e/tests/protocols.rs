//! Protocols through the whole proxy: h2c prior-knowledge clients on the outbound port
//! (`protocol: auto`), HTTP/2 to upstreams whose ServiceEntry port protocol is `HTTP2` or
//! `GRPC` (Istio's protocol selection), and a smoke test of malformed requests (400/431)
//! that must only affect their own connection. The engine's own tests cover the limits in
//! detail; here they are checked once with the limits coming from the ProxyBootstrap.

use crate::support;

use http::Version;
use support::*;

/// Envoy's HTTP connection manager with `codec_type: AUTO` serves HTTP/1.1 and h2c with prior
/// knowledge on one port; the upstream protocol is the service port's (`HTTP` → HTTP/1.1),
/// not the client's. Several streams run concurrently on the one client connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_client_through_the_proxy() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{x-user: {{exact: tester}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
",
        bootstrap(1, ""),
        service_entry("reviews", 9080, "HTTP", &[&v1, &v2]),
        destination_rule("reviews", &["v1", "v2"], ""),
    );
    let p = start(&yaml).await;
    let tx = h2(p.out).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        let mut tx = tx.clone();
        streams.push(tokio::spawn(async move {
            let user = if i % 2 == 0 { "tester" } else { "someone" };
            // HTTP/2 names the destination with :authority, which the URI carries
            let req = http::Request::builder()
                .version(Version::HTTP_2)
                .uri("http://reviews.default.svc.cluster.local:9080/")
                .header("x-user", user)
                .body(full(""))
                .unwrap();
            bounded(tx.ready()).await.unwrap();
            let r = read(bounded(tx.send_request(req)).await.unwrap()).await;
            (user, r)
        }));
    }
    for s in streams {
        let (user, r) = bounded(s).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let expected = if user == "tester" { "v2" } else { "v1" };
        assert_eq!(r.backend(), expected, "{user}: {r:?}");
        assert_eq!(
            r.headers["x-upstream-version"], "HTTP/1.1",
            "an HTTP port is spoken to in HTTP/1.1"
        );
    }
    assert_eq!((v1.hits(), v2.hits()), (10, 10));
}

/// Istio's protocol selection: a service port declared `HTTP2` or `GRPC` (or named `grpc-…`)
/// is reached over HTTP/2 (h2c here, no TLS), whatever the client spoke; an `HTTP` port over
/// HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_grpc_service_ports_are_reached_over_http2() {
    let (h2up, grpc, h1up) = (
        backend("h2").await,
        backend("grpc").await,
        backend("h1").await,
    );
    let yaml = format!(
        "{}{}{}{}",
        bootstrap(1, ""),
        service_entry("h2svc", 8080, "HTTP2", &[&h2up]),
        service_entry("grpcsvc", 8080, "GRPC", &[&grpc]),
        service_entry("h1svc", 8080, "HTTP", &[&h1up]),
    );
    let p = start(&yaml).await;

    // an HTTP/1.1 client
    let mut c = H1::connect(p.out).await;
    for (host, name, version) in [
        ("h2svc", "h2", "HTTP/2.0"),
        ("grpcsvc", "grpc", "HTTP/2.0"),
        ("h1svc", "h1", "HTTP/1.1"),
    ] {
        for _ in 0..3 {
            let r = c.get(host, &[]).await;
            assert_eq!((r.status.as_u16(), r.backend()), (200, name), "{r:?}");
            assert_eq!(r.headers["x-upstream-version"], version, "{host}: {r:?}");
        }
    }
    // an h2c client
    let mut tx = h2(p.out).await;
    for (host, version) in [("h2svc:8080", "HTTP/2.0"), ("h1svc:8080", "HTTP/1.1")] {
        let req = http::Request::builder()
            .uri(format!("http://{host}/"))
            .body(full(""))
            .unwrap();
        bounded(tx.ready()).await.unwrap();
        let r = read(bounded(tx.send_request(req)).await.unwrap()).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.headers["x-upstream-version"], version, "{host}: {r:?}");
    }
    assert_eq!((h2up.hits(), grpc.hits(), h1up.hits()), (4, 3, 4));
}

/// Envoy rejects malformed HTTP/1.1 (no Host, two Host fields or a list, userinfo in the
/// authority, `Content-Length` with `Transfer-Encoding`, garbage) with 400 and oversized heads (`max_request_headers_kb`,
/// `max_request_headers_count`, here from the ProxyBootstrap's `limits`) with 431, and
/// closes only that connection: a keep-alive connection opened before keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_or_431_and_other_connections_keep_working() {
    let up = backend("ok").await;
    let yaml = format!(
        "{}{}",
        bootstrap(
            1,
            "  limits: {maxRequestHeadersKb: 8, maxRequestHeadersCount: 20}\n"
        ),
        service_entry("ok", 80, "HTTP", &[&up]),
    );
    let p = start(&yaml).await;
    let mut good = H1::connect(p.out).await;
    assert_eq!(good.get("ok", &[]).await.backend(), "ok");

    let many: String = (0..40).map(|i| format!("x-h{i}: v\r\n")).collect();
    let big = format!("x-big: {}\r\n", "a".repeat(10 * 1024));
    let cases: [(&str, String, &str); 9] = [
        ("no Host", "GET / HTTP/1.1\r\n\r\n".into(), "400"),
        ("two Host fields", "GET / HTTP/1.1\r\nHost: ok\r\nHost: x\r\n\r\n".into(), "400"),
        ("a Host list", "GET / HTTP/1.1\r\nHost: ok, x\r\n\r\n".into(), "400"),
        ("userinfo in Host", "GET / HTTP/1.1\r\nHost: evil@ok\r\n\r\n".into(), "400"),
        ("userinfo in the target", "GET http://evil@ok/ HTTP/1.1\r\nHost: ok\r\n\r\n".into(), "400"),
        (
            "Content-Length with Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            "400",
        ),
        ("garbage request line", "GARBAGE\r\n\r\n".into(), "400"),
        ("40 headers over a limit of 20", format!("GET / HTTP/1.1\r\nHost: ok\r\n{many}\r\n"), "431"),
        ("a 10 KiB head over a limit of 8 KiB", format!("GET / HTTP/1.1\r\nHost: ok\r\n{big}\r\n"), "431"),
    ];
    for (what, bytes, status) in &cases {
        let answer = raw(p.out, bytes.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer:?}"
        );
        // the proxy's verdict, not the upstream's
        assert!(
            !answer.contains("x-backend"),
            "{what} reached the upstream: {answer:?}"
        );
        let r = good.get("ok", &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "ok"),
            "after {what}"
        );
    }
    assert_eq!(
        up.hits(),
        1 + cases.len(),
        "no malformed request reached the upstream"
    );
    // a new connection works too
    assert_eq!(get_once(p.out, "ok", &[]).await.backend(), "ok");
}

/// DestinationRule `connectionPool.http.maxRequestsPerConnection` (Envoy's
/// `max_requests_per_connection`): with 1, every request gets a new upstream connection (no
/// keep-alive, as Istio's locality failover task configures); with 3, a connection carries
/// three requests; without it, one connection carries them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_limits_upstream_reuse() {
    for (limit, expected) in [(Some(1), 6), (Some(3), 2), (None, 1)] {
        let b = backend("v1").await;
        let pool = match limit {
            Some(n) => format!(
                "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      http: {{maxRequestsPerConnection: {n}}}
"
            ),
            None => String::new(),
        };
        let yaml = format!(
            "{}{}{pool}",
            bootstrap(1, ""),
            service_entry("reviews", 9080, "HTTP", &[&b])
        );
        let p = start(&yaml).await;
        let mut c = H1::connect(p.out).await;
        for _ in 0..6 {
            let r = c.get("reviews", &[]).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        assert_eq!(
            b.connections.load(std::sync::atomic::Ordering::SeqCst),
            expected,
            "maxRequestsPerConnection {limit:?}"
        );
    }
}

/// The inbound cluster's protocol (Istio's `setUpstreamProtocol` on `inbound|<port>||`):
/// the application behind the inbound listener is spoken to in HTTP/2 when the service that
/// selects the workload declares the port `GRPC` (a gRPC server speaks nothing else), in
/// HTTP/1.1 when it declares `HTTP`, and in the client's protocol when nothing declares it
/// (no service, or a port whose name and protocol name none: Istio's protocol detection,
/// `use_downstream_protocol`) or it declares `TCP` (whose bytes Istio passes through).
#[tokio::test]
async fn the_inbound_listener_speaks_the_application_s_declared_protocol() {
    for (declared, from_h1, from_h2) in [
        (Some("protocol: GRPC"), "HTTP/2.0", "HTTP/2.0"),
        (Some("protocol: HTTP"), "HTTP/1.1", "HTTP/1.1"),
        (Some("protocol: TCP"), "HTTP/1.1", "HTTP/2.0"),
        (Some("name: grpc-api"), "HTTP/2.0", "HTTP/2.0"),
        (Some("name: web"), "HTTP/1.1", "HTTP/2.0"),
        (None, "HTTP/1.1", "HTTP/2.0"),
    ] {
        let app = backend("productpage").await;
        let mut yaml = bootstrap(
            1,
            &format!(
                "  inbound: {{address: 127.0.0.1, port: 0, localApp: '127.0.0.1:{}'}}\n",
                app.port()
            ),
        );
        if let Some(protocol) = declared {
            // (a port with a protocol is named `app`, which names none)
            let protocol = match protocol.starts_with("protocol") {
                true => format!("name: app, {protocol}"),
                false => protocol.to_string(),
            };
            yaml += &format!(
                "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: productpage, namespace: default}}
spec:
  hosts: [productpage]
  location: MESH_INTERNAL
  ports: [{{number: 9080, {protocol}, targetPort: {}}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: productpage}}}}
",
                app.port()
            );
        }
        let p = start(&yaml).await;
        let inbound = p.proxy.inbound_addr().unwrap();
        let r = get_once(inbound, "productpage:9080", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.headers["x-upstream-version"], from_h1,
            "{declared:?}, an HTTP/1.1 client"
        );
        let mut tx = h2(inbound).await;
        let req = http::Request::builder()
            .version(Version::HTTP_2)
            .uri("http://productpage:9080/")
            .body(full(""))
            .unwrap();
        bounded(tx.ready()).await.unwrap();
        let r = read(bounded(tx.send_request(req)).await.unwrap()).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.headers["x-upstream-version"], from_h2,
            "{declared:?}, an h2c client"
        );
        assert_eq!(app.hits(), 2);
    }
}
