//! Istio's standard metrics through the whole proxy (istio.io/latest/docs/reference/config/
//! metrics): requests through the outbound listener (`reporter="source"`: 200, 404 `NR`,
//! 503 `UH`, 504 `UT`) and the inbound listener over mTLS and in plaintext
//! (`reporter="destination"`, `connection_security_policy`), scraped from the admin
//! listener's `/stats/prometheus`, label values asserted per scenario, and the exposition
//! checked by Prometheus' own parser and linter (`promtool check metrics`, Debian's
//! `prometheus` package; the test fails when it is missing).

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_tls::ca::MeshCa;
use rustls::pki_types::ServerName;
use support::mtls::*;
use support::prom::{promtool_check, require_promtool, scraped_samples};
use support::*;

/// The `istio_requests_total` sample whose labels contain all of `want`, with its value.
fn requests<'a>(text: &'a str, want: &[&str]) -> Option<(&'a str, f64)> {
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .find(|l| want.iter().all(|w| l.contains(w)))
        .map(|l| (l, l.rsplit(' ').next().unwrap().parse().unwrap()))
}

/// Scrapes until, for each `(labels, n)`, a request sample with all of `labels` counts `n`
/// (the proxy records a request when its response body has ended, which the client may see
/// first); polls, bounded by [`LIMIT`].
async fn scraped(admin: SocketAddr, wants: &[(&[&str], f64)]) -> String {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let (status, text) = admin_get(admin, "/stats/prometheus").await;
        assert_eq!(status, 200);
        if wants
            .iter()
            .all(|(want, n)| requests(&text, want).is_some_and(|(_, v)| v == *n))
        {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no samples {wants:?} in\n{text}"
        );
        // polling interval, not a synchronisation
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn assert_labels(line: &str, want: &[&str]) {
    for w in want {
        assert!(line.contains(w), "{w} not in\n{line}");
    }
}

fn vs(host: &str, http: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
{http}"
    )
}

/// A handler that never answers.
fn hanging() -> Handler {
    Arc::new(|_req: Request<Incoming>| {
        Box::pin(async {
            std::future::pending::<()>().await;
            Response::new(full(""))
        })
    })
}

#[tokio::test]
async fn outbound_requests_are_counted_with_istio_s_labels_per_outcome() {
    let v1 = backend("v1").await;
    let slow = backend_with("slow", hanging()).await;
    let yaml = bootstrap(1, "")
        + &service_entry("reviews", 9080, "HTTP", &[&v1])
        + &destination_rule("reviews", &["v1", "v9"], "")
        + &vs(
            "reviews",
            "  - match: [{uri: {prefix: /ok}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /empty}}]
    route: [{destination: {host: reviews, subset: v9}}]
",
        )
        + &service_entry("ratings", 9080, "HTTP", &[&slow])
        + &vs(
            "ratings",
            "  - timeout: 0.2s\n    route: [{destination: {host: ratings}}]\n",
        );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let get = |host: &str, path: &str| {
        Request::builder()
            .uri(path)
            .header("host", host)
            .body(full(""))
            .unwrap()
    };
    for _ in 0..2 {
        let r = c.send(get("reviews", "/ok")).await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "v1"), "{r:?}");
    }
    let r = c.send(get("reviews", "/nowhere")).await;
    assert_eq!((r.status.as_u16(), r.flags()), (404, "NR"), "{r:?}");
    let r = c.send(get("reviews", "/empty")).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, "UH"), "{r:?}");
    let r = get_once(p.out, "ratings:9080", &[]).await;
    assert_eq!((r.status.as_u16(), r.flags()), (504, "UT"), "{r:?}");

    let text = scraped(p.admin, &[(&[r#"response_flags="UT""#], 1.0)]).await;
    let source = [
        r#"reporter="source""#,
        r#"source_workload="productpage-v1""#,
        r#"source_workload_namespace="default""#,
        r#"source_app="productpage""#,
        r#"source_version="v1""#,
        r#"source_canonical_service="productpage""#,
        r#"source_principal="unknown""#,
        r#"request_protocol="http""#,
        r#"connection_security_policy="unknown""#,
        r#"grpc_response_status="""#,
    ];
    let (ok, n) = requests(&text, &[r#"response_code="200""#]).expect(&text);
    assert_eq!(n, 2.0, "{ok}");
    assert_labels(ok, &source);
    assert_labels(
        ok,
        &[
            r#"response_flags="-""#,
            r#"destination_service="reviews.default.svc.cluster.local""#,
            r#"destination_service_name="reviews""#,
            r#"destination_service_namespace="default""#,
            r#"destination_workload_namespace="default""#,
            r#"destination_app="reviews""#,
            r#"destination_version="v1""#,
            r#"destination_canonical_service="reviews""#,
            r#"destination_canonical_revision="v1""#,
            // an inline ServiceEntry endpoint has no workload name
            r#"destination_workload="unknown""#,
            r#"destination_principal="unknown""#,
        ],
    );
    let (nr, n) = requests(&text, &[r#"response_code="404""#]).expect(&text);
    assert_eq!(n, 1.0);
    assert_labels(nr, &source);
    assert_labels(
        nr,
        &[
            r#"response_flags="NR""#,
            // no route: Istio's fallback on the Host header
            r#"destination_service="reviews""#,
            r#"destination_workload="unknown""#,
        ],
    );
    let (uh, n) = requests(&text, &[r#"response_code="503""#]).expect(&text);
    assert_eq!(n, 1.0);
    assert_labels(
        uh,
        &[
            r#"response_flags="UH""#,
            r#"destination_service="reviews.default.svc.cluster.local""#,
            r#"destination_workload="unknown""#,
        ],
    );
    let (ut, _) = requests(&text, &[r#"response_code="504""#]).expect(&text);
    assert_labels(
        ut,
        &[
            r#"response_flags="UT""#,
            r#"destination_service="ratings.default.svc.cluster.local""#,
            r#"destination_service_name="ratings""#,
        ],
    );
    // the histograms, with their series for each outcome
    for family in [
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} histogram")),
            "{text}"
        );
        let count = text
            .lines()
            .filter(|l| l.starts_with(&format!("{family}_count{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>();
        assert_eq!(count, 5.0, "{family}");
    }
    // the route timeout is 200 ms: the 504 is in no bucket below it
    let ut_le_100 = text.lines().find(|l| {
        l.starts_with("istio_request_duration_milliseconds_bucket{")
            && l.contains(r#"response_flags="UT""#)
            && l.contains(r#"le="100""#)
    });
    assert!(ut_le_100.unwrap().ends_with(" 0"), "{ut_le_100:?}");
    // the decisions, and the proxy's own gauges, still there
    assert!(text.contains(r#"mesh_proxy_response_flags_total{reporter="source",flag="NR"} 1"#));
    assert!(text.contains(r#"mesh_proxy_response_flags_total{reporter="source",flag="UT"} 1"#));
    // the proxy's own health: the two client connections (one still open)
    assert_eq!(
        sample(
            &text,
            r#"mesh_proxy_downstream_connections_total{listener="outbound"}"#
        ),
        2.0
    );
    assert!(
        sample(
            &text,
            r#"mesh_proxy_downstream_connections_active{listener="outbound"}"#
        ) >= 1.0
    );
    assert!(text.contains("mesh_proxy_config_generation "));
    assert!(text.contains("mesh_proxy_unenforced_fields "));
    promtool_check(&text);
}

/// The decisions per route and the pool per cluster, through the proxy: a route with
/// `retries: {attempts: 2, retryOn: 5xx}` whose upstream fails a request once (retried, then
/// 200) and another always (retried twice, then `503 URX`) counts three retries and one
/// `URX` under its name and service; the cluster's pooled connections are the ones the
/// upstream accepted, all idle once the requests are over.
#[tokio::test]
async fn retries_and_flags_are_counted_per_route_and_the_pool_per_cluster() {
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = failed_once.clone();
    let (gate, opened_gate) = tokio::sync::watch::channel(false);
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let fail = match req.uri().path() {
            "/fail" => true,
            "/once" => !once.swap(true, std::sync::atomic::Ordering::SeqCst),
            _ => false,
        };
        let hold = req.uri().path() == "/hold";
        let mut gate = opened_gate.clone();
        Box::pin(async move {
            if hold {
                let _ = gate.wait_for(|open| *open).await;
            }
            let status = if fail { 503 } else { 200 };
            Response::builder()
                .status(status)
                .header("x-backend", "ratings")
                .body(full("ratings"))
                .unwrap()
        })
    });
    let upstream = backend_with("ratings", handler).await;
    let yaml = bootstrap(1, "")
        + &service_entry("ratings", 9080, "HTTP", &[&upstream])
        + &vs(
            "ratings",
            "  - name: flaky\n    retries: {attempts: 2, retryOn: 5xx}\n    route: [{destination: {host: ratings}}]\n",
        );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let get = |path: &str| {
        Request::builder()
            .uri(path)
            .header("host", "ratings")
            .body(full(""))
            .unwrap()
    };
    let r = c.send(get("/once")).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "ratings"), "{r:?}");
    let r = c.send(get("/fail")).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, "URX"), "{r:?}");
    assert_eq!(upstream.hits(), 5, "2 + 3 attempts");
    let route = r#"reporter="source",route="flaky",destination_service="ratings.default.svc.cluster.local""#;
    let retries = format!("mesh_proxy_route_upstream_retries_total{{{route}}}");
    let urx = format!("mesh_proxy_route_response_flags_total{{{route},flag=\"URX\"}}");
    let text = scraped_samples(
        p.admin,
        &[
            (&retries, 3.0),
            (&urx, 1.0),
            (
                r#"mesh_proxy_upstream_retries_total{reporter="source"}"#,
                3.0,
            ),
            (
                r#"mesh_proxy_response_flags_total{reporter="source",flag="URX"}"#,
                1.0,
            ),
        ],
    )
    .await;
    // one line per flag that happened: no other flag on the route
    let route_flags: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("mesh_proxy_route_response_flags_total{"))
        .collect();
    assert_eq!(route_flags, [format!("{urx} 1")], "{text}");
    // the pool: every connection the upstream accepted was opened for this cluster, and
    // each is idle once its exchange is over
    let cluster = r#"cluster_name="outbound|9080||ratings.default.svc.cluster.local""#;
    let accepted = upstream
        .connections
        .load(std::sync::atomic::Ordering::SeqCst) as f64;
    assert!(accepted >= 1.0);
    let opened = format!("mesh_proxy_cluster_upstream_connections_opened_total{{{cluster}}}");
    let open = format!("mesh_proxy_cluster_upstream_connections_open{{{cluster}}}");
    let idle = format!("mesh_proxy_cluster_upstream_connections_idle{{{cluster}}}");
    let text = scraped_samples(p.admin, &[(&opened, accepted)]).await;
    let open_now = sample(&text, &open);
    assert!(open_now >= 1.0 && open_now <= accepted, "{text}");
    scraped_samples(p.admin, &[(&idle, open_now)]).await;
    // a request held upstream takes an idle connection: busy, still open
    let held = tokio::spawn({
        let mut c = c;
        async move { c.send(get("/hold")).await }
    });
    scraped_samples(p.admin, &[(&open, open_now), (&idle, open_now - 1.0)]).await;
    gate.send_replace(true);
    let r = bounded(held).await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    let text = scraped_samples(p.admin, &[(&open, open_now), (&idle, open_now)]).await;
    // no retry was refused: the cluster's retry overflows are zero, by limit
    for limit in ["maxRetries", "retryBudget"] {
        assert_eq!(
            sample(
                &text,
                &format!("mesh_proxy_cluster_retry_overflows_total{{{cluster},limit=\"{limit}\"}}")
            ),
            0.0
        );
    }
    promtool_check(&text);
}

/// A GET over mTLS (or plaintext with `tls: None`) to the inbound listener.
async fn get_inbound(addr: SocketAddr, tls: Option<&tokio_rustls::TlsConnector>) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = Request::builder()
        .uri("/")
        .header("host", "reviews:9080")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = match tls {
        Some(tls) => {
            let name = ServerName::try_from("reviews.default.svc.cluster.local").unwrap();
            let stream = tls.connect(name, tcp).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        }
        None => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        }
    };
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    status
}

/// Istio's inbound `destination_service` is the service that selects the workload (the
/// first of its inbound cluster's metadata), whatever `Host` the client called it by: with a
/// ServiceEntry whose `workloadSelector` matches the proxy's workload on the application's
/// port, a request to `reviews:9080` counts under `reviews.default.svc.cluster.local`, named
/// `reviews`; a `Host` the client made up adds no series of its own.
#[tokio::test]
async fn the_inbound_destination_service_is_the_service_selecting_the_workload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = backend("app").await;
    // its port on the application's (`localApp`), as Istio's inbound cluster lists it
    let selecting = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP, targetPort: {}}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
",
        app.port()
    );
    let p = start(&reviews_config(dir.path(), &ca, &app, &selecting)).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    assert_eq!(bounded(get_inbound(inbound, None)).await, 200);
    let made_up = || async {
        let r = get_once(inbound, "anything.example:1234", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
    };
    made_up().await;
    let text = scraped(p.admin, &[(&[r#"reporter="destination""#], 2.0)]).await;
    let (plain, count) = requests(&text, &[r#"reporter="destination""#]).expect(&text);
    assert_eq!(count, 2.0, "one series for both requests: {text}");
    assert_labels(
        plain,
        &[
            r#"destination_service="reviews.default.svc.cluster.local""#,
            r#"destination_service_name="reviews""#,
            r#"destination_service_namespace="default""#,
            r#"destination_workload="reviews-v1""#,
        ],
    );
    promtool_check(&text);
}

#[tokio::test]
async fn inbound_requests_are_reported_by_the_destination_with_the_peer_s_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = backend("app").await;
    // no PeerAuthentication: PERMISSIVE, mTLS and plaintext on one port
    let p = start(&reviews_config(dir.path(), &ca, &app, "")).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let tls = client_tls(&ca, "productpage");
    assert_eq!(bounded(get_inbound(inbound, Some(&tls))).await, 200);
    assert_eq!(bounded(get_inbound(inbound, None)).await, 200);
    let text = scraped(
        p.admin,
        &[
            (
                &[
                    r#"reporter="destination""#,
                    r#"connection_security_policy="none""#,
                ],
                1.0,
            ),
            (
                &[
                    r#"reporter="destination""#,
                    r#"connection_security_policy="mutual_tls""#,
                ],
                1.0,
            ),
        ],
    )
    .await;
    let (mtls, _) = requests(
        &text,
        &[
            r#"reporter="destination""#,
            r#"connection_security_policy="mutual_tls""#,
        ],
    )
    .expect(&text);
    let destination = [
        r#"response_code="200""#,
        r#"destination_workload="reviews-v1""#,
        r#"destination_workload_namespace="default""#,
        r#"destination_app="reviews""#,
        r#"destination_service="reviews:9080""#,
        r#"destination_service_namespace="default""#,
        // no metadata exchange: the peer's workload is unknown
        r#"source_workload="unknown""#,
        r#"source_app="unknown""#,
    ];
    assert_labels(mtls, &destination);
    assert_labels(
        mtls,
        &[
            r#"source_principal="spiffe://cluster.local/ns/default/sa/productpage""#,
            // the namespace from the peer's SPIFFE id, as Istio's fallback
            r#"source_workload_namespace="default""#,
            r#"destination_principal="spiffe://cluster.local/ns/default/sa/reviews""#,
        ],
    );
    let (plain, _) = requests(
        &text,
        &[
            r#"reporter="destination""#,
            r#"connection_security_policy="none""#,
        ],
    )
    .expect(&text);
    assert_labels(plain, &destination);
    assert_labels(
        plain,
        &[
            r#"source_principal="unknown""#,
            r#"source_workload_namespace="unknown""#,
            r#"destination_principal="unknown""#,
        ],
    );
    promtool_check(&text);
}

#[test]
fn promtool_rejects_a_broken_exposition() {
    // without promtool the check proves nothing: fail here, saying so (the panic of a
    // missing promtool must not pass for a rejection below)
    require_promtool();
    // the check itself can fail: a sample without a value is a parse error
    let broken = "# TYPE istio_requests_total counter\nistio_requests_total{reporter=\"source\"}\n";
    let failed = std::panic::catch_unwind(|| promtool_check(broken));
    let Err(panic) = failed else {
        panic!("promtool accepted a broken exposition");
    };
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(
        message.starts_with("promtool check metrics:") || message.starts_with("promtool failed:"),
        "not promtool's rejection: {message}"
    );
}
