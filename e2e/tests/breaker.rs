//! Circuit breaking through the whole proxy (istio.io/latest/docs/tasks/traffic-management/
//! circuit-breaking): the task's DestinationRule (`maxConnections: 1`,
//! `http1MaxPendingRequests: 1`, `maxRequestsPerConnection: 1`) and a flood of concurrent
//! requests against one slow upstream. The layer's timing is tested under paused time in
//! `mesh-resilience`; here the proxy must apply the limits across its workers, with Envoy's
//! overflow answer, and the upstream must never see more than they allow.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, Response};
use hyper::body::Incoming;
use support::*;
use tokio::sync::watch;

/// The upstream: holds every request until the gate opens, counting the requests it holds
/// at once (`now`, and the most ever in `most`).
struct Slow {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

impl Slow {
    fn new() -> (Slow, Handler) {
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (gate, open) = watch::channel(false);
        let (n, m) = (now.clone(), most.clone());
        let handler: Handler = Arc::new(move |_req: Request<Incoming>| {
            let (n, m, mut open) = (n.clone(), m.clone(), open.clone());
            Box::pin(async move {
                let held = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(held, Ordering::SeqCst);
                let _ = open.wait_for(|o| *o).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Response::builder()
                    .header("x-backend", "httpbin")
                    .body(full("httpbin"))
                    .unwrap()
            })
        });
        (Slow { now, most, gate }, handler)
    }
}

/// The replies of concurrent requests, in the order they came.
type Replies = Arc<std::sync::Mutex<Vec<Reply>>>;

/// Sends `n` GETs of `httpbin:8000` at once through the proxy at `out`; their replies as
/// they come, and the clients to await.
fn concurrent_gets(out: SocketAddr, n: usize) -> (Replies, Vec<tokio::task::JoinHandle<()>>) {
    concurrent_gets_of(out, "httpbin:8000", n)
}

/// Sends `n` GETs of `host` at once to the listener at `to`.
fn concurrent_gets_of(
    to: SocketAddr,
    host: &'static str,
    n: usize,
) -> (Replies, Vec<tokio::task::JoinHandle<()>>) {
    let replies: Replies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients = (0..n)
        .map(|_| {
            let replies = replies.clone();
            tokio::spawn(async move {
                let r = get_once(to, host, &[]).await;
                replies.lock().unwrap().push(r);
            })
        })
        .collect();
    (replies, clients)
}

impl Slow {
    /// Waits until `answered` replies came while the upstream holds `held` requests.
    async fn wait_for(&self, replies: &Replies, answered: usize, held: usize) {
        let what = format!("{answered} overflow answers while the upstream holds {held}");
        eventually(&what, || {
            let (r, now) = (replies.clone(), self.now.clone());
            async move { r.lock().unwrap().len() == answered && now.load(Ordering::SeqCst) == held }
        })
        .await;
    }
}

/// The task's DestinationRule.
const TASK_DR: &str = "  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
";

/// "Tripping the circuit breaker": of ten requests at once, one is sent, one waits for the
/// connection, eight get `503` with `x-envoy-overloaded` and flag `UO` at once. Then the
/// upstream answers, and the waiting request goes on the freed connection. With two workers
/// the limits are the cluster's, not each worker's.
#[tokio::test]
async fn a_flood_trips_the_breaker() {
    for workers in [1, 2] {
        flood(workers).await;
    }
}

async fn flood(workers: u32) {
    let (slow, handler) = Slow::new();
    let upstream = backend_with("httpbin", handler).await;
    let yaml = bootstrap(workers, "")
        + &service_entry("httpbin", 8000, "HTTP", &[&upstream])
        + &destination_rule("httpbin", &["httpbin"], TASK_DR);
    let p = start(&yaml).await;
    let (replies, clients) = concurrent_gets(p.out, 10);
    slow.wait_for(&replies, 8, 1).await;
    for r in replies.lock().unwrap().iter() {
        assert_overflow(r);
    }
    slow.gate.send_replace(true);
    for c in clients {
        bounded(c).await.unwrap();
    }
    {
        let replies = replies.lock().unwrap();
        let ok: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
        assert_eq!(
            ok.len(),
            2,
            "the first and the pending one ({workers} workers)"
        );
        assert!(ok.iter().all(|r| r.backend() == "httpbin"));
    }
    assert_eq!(upstream.hits(), 2);
    assert_eq!(
        slow.most.load(Ordering::SeqCst),
        1,
        "the upstream never held two at once"
    );
    // maxRequestsPerConnection: 1
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    // the overflows are the cluster's, on /clusters and /stats/prometheus
    cluster_overflows(
        p.admin,
        "outbound|8000||httpbin.default.svc.cluster.local",
        8,
    )
    .await;
    // and the route's (the service's `default` route: no VirtualService)
    support::prom::scraped_samples(
        p.admin,
        &[(
            r#"mesh_proxy_route_response_flags_total{reporter="source",route="default",destination_service="httpbin.default.svc.cluster.local",flag="UO"}"#,
            8.0,
        )],
    )
    .await;
    drop(p);
}

/// `http2MaxRequests` bounds the requests in flight whatever the protocol: with an h2c
/// client and an HTTP/2 upstream (`GRPC` port), the third of three concurrent requests
/// overflows while two are held.
#[tokio::test]
async fn http2_max_requests_bounds_requests_in_flight() {
    let (slow, handler) = Slow::new();
    let upstream = backend_with("httpbin", handler).await;
    let yaml = bootstrap(1, "")
        + &service_entry("httpbin", 8000, "GRPC", &[&upstream])
        + &destination_rule(
            "httpbin",
            &["httpbin"],
            "  trafficPolicy:\n    connectionPool:\n      http: {http2MaxRequests: 2}\n",
        );
    let p = start(&yaml).await;
    let (replies, clients) = concurrent_gets(p.out, 3);
    slow.wait_for(&replies, 1, 2).await;
    {
        let replies = replies.lock().unwrap();
        assert_eq!(replies[0].status, 503, "{:?}", replies[0]);
        assert_eq!(replies[0].flags(), "UO");
    }
    slow.gate.send_replace(true);
    for c in clients {
        bounded(c).await.unwrap();
    }
    assert_eq!(
        replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.status == 200)
            .count(),
        2
    );
    assert_eq!(slow.most.load(Ordering::SeqCst), 2);
}

/// Envoy's circuit breakers on HTTP/2 (`intro/arch_overview/upstream/circuit_breaking`):
/// `max_connections` counts HTTP/2 connections, and once `max_concurrent_streams` is set a
/// request finding every connection full waits as pending under `max_pending_requests`.
/// `maxConcurrentStreams: 1`, `maxConnections: 2`, `http1MaxPendingRequests: 1` and four
/// slow requests at once to an h2c upstream: it sees two connections carrying one stream
/// each, one request waits and is sent when a stream ends, one gets Envoy's overflow
/// answer (`503`, `x-envoy-overloaded`, `UO`), counted in the cluster's overflows.
#[tokio::test]
async fn http2_connections_count_against_max_connections_and_the_rest_pend() {
    let (slow, handler) = Slow::new();
    let upstream = backend_with("httpbin", handler).await;
    let yaml = bootstrap(1, "")
        + &service_entry("httpbin", 8000, "GRPC", &[&upstream])
        + &destination_rule(
            "httpbin",
            &["httpbin"],
            "  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 2}
      http: {maxConcurrentStreams: 1, http1MaxPendingRequests: 1}
",
        );
    let p = start(&yaml).await;
    let (replies, clients) = concurrent_gets(p.out, 4);
    slow.wait_for(&replies, 1, 2).await;
    {
        assert_overflow(&replies.lock().unwrap()[0]);
    }
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    slow.gate.send_replace(true);
    for c in clients {
        bounded(c).await.unwrap();
    }
    let ok = replies
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.status == 200)
        .count();
    assert_eq!(ok, 3, "two sent at once, then the pending one");
    assert_eq!(upstream.hits(), 3);
    assert_eq!(
        slow.most.load(Ordering::SeqCst),
        2,
        "one stream on each connection"
    );
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        2,
        "no third connection"
    );
    let cluster = "outbound|8000||httpbin.default.svc.cluster.local";
    let (_, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert!(
        stats.contains(&format!(
            "mesh_proxy_cluster_overflows_total{{cluster_name=\"{cluster}\"}} 1\n"
        )),
        "{stats}"
    );
    assert!(
        stats.contains(&format!(
            "mesh_proxy_cluster_pending_requests{{cluster_name=\"{cluster}\"}} 0\n"
        )),
        "{stats}"
    );
    drop(p);
}

/// The retry budget (`trafficPolicy.retryBudget`, here one retry in flight at most): while
/// one request's retry is held by the upstream, another request's failure is not retried;
/// the client gets the upstream's `503` with flag `UO` (Envoy's router on a retry
/// overflow), and the upstream never sees that retry.
#[tokio::test]
async fn a_retry_over_the_budget_is_not_sent() {
    // the 1st and 3rd requests to arrive fail at once, the 2nd (the first one's retry) is
    // held until the gate opens
    let arrived = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let (gate, open) = watch::channel(false);
    let (a, h) = (arrived.clone(), held.clone());
    let handler: Handler = Arc::new(move |_req: Request<Incoming>| {
        let (a, h, mut open) = (a.clone(), h.clone(), open.clone());
        Box::pin(async move {
            if a.fetch_add(1, Ordering::SeqCst) == 1 {
                h.fetch_add(1, Ordering::SeqCst);
                let _ = open.wait_for(|o| *o).await;
                return Response::new(full("retried"));
            }
            Response::builder().status(503).body(full("down")).unwrap()
        })
    });
    let upstream = backend_with("httpbin", handler).await;
    let yaml = bootstrap(1, "")
        + &service_entry("httpbin", 8000, "HTTP", &[&upstream])
        + &destination_rule(
            "httpbin",
            &["httpbin"],
            "  trafficPolicy:\n    retryBudget: {percent: 0, minRetryConcurrency: 1}\n",
        )
        + "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - retries: {attempts: 1, retryOn: 5xx}
    route: [{destination: {host: httpbin}}]
";
    let p = start(&yaml).await;
    let out = p.out;
    let first = tokio::spawn(async move { get_once(out, "httpbin:8000", &[]).await });
    let h = held.clone();
    eventually("the first request's retry is held upstream", || {
        let h = h.clone();
        async move { h.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let second = get_once(p.out, "httpbin:8000", &[]).await;
    assert_eq!(second.status, 503, "{second:?}");
    assert_eq!(second.body, "down", "the upstream's answer");
    assert_eq!(second.flags(), "UO");
    assert!(second.headers.get("x-envoy-overloaded").is_none());
    assert_eq!(arrived.load(Ordering::SeqCst), 3, "its retry was not sent");
    gate.send_replace(true);
    let first = bounded(first).await.unwrap();
    assert_eq!(
        (first.status.as_u16(), first.body.as_str()),
        (200, "retried")
    );
    assert_eq!(upstream.hits(), 3);
    // the retry budget refused it, not `maxRetries`; the route counts the overflow and the
    // first request's retry
    let cluster = r#"cluster_name="outbound|8000||httpbin.default.svc.cluster.local""#;
    let route = r#"reporter="source",route="unknown",destination_service="httpbin.default.svc.cluster.local""#;
    support::prom::scraped_samples(
        p.admin,
        &[
            (
                &format!(
                    "mesh_proxy_cluster_retry_overflows_total{{{cluster},limit=\"retryBudget\"}}"
                ),
                1.0,
            ),
            (
                &format!(
                    "mesh_proxy_cluster_retry_overflows_total{{{cluster},limit=\"maxRetries\"}}"
                ),
                0.0,
            ),
            (
                &format!("mesh_proxy_route_response_flags_total{{{route},flag=\"UO\"}}"),
                1.0,
            ),
            (
                &format!("mesh_proxy_route_upstream_retries_total{{{route}}}"),
                1.0,
            ),
        ],
    )
    .await;
}

/// `connectionPool.http.maxConcurrentStreams` (Envoy's HTTP/2 `max_concurrent_streams`):
/// with a limit of 2 and six slow requests at once to an HTTP/2 upstream (`GRPC` port, h2c),
/// the connector never opens more than two streams on one upstream connection and opens
/// more connections instead; every request is answered once the upstream lets them go.
#[tokio::test]
async fn max_concurrent_streams_spreads_streams_over_connections() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::convert::Infallible;
    // the upstream: counts its connections, the requests it holds, and the most streams
    // open at once on one connection
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let most_on_one = Arc::new(AtomicUsize::new(0));
    let (gate, open) = watch::channel(false);
    let (c, h, m) = (connections.clone(), held.clone(), most_on_one.clone());
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let on_this = Arc::new(AtomicUsize::new(0));
            let (h, m, open) = (h.clone(), m.clone(), open.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (h, m, on_this, mut open) =
                        (h.clone(), m.clone(), on_this.clone(), open.clone());
                    async move {
                        m.fetch_max(on_this.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = open.wait_for(|o| *o).await;
                        on_this.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(full("httpbin")))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let entry = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8000, name: grpc, protocol: GRPC}}
  endpoints:
  - address: 127.0.0.1
    ports: {{grpc: {}}}
",
        addr.port()
    );
    let yaml = bootstrap(1, "")
        + &entry
        + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin.default.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http: {maxConcurrentStreams: 2}
";
    let p = start(&yaml).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let out = p.out;
        clients.push(tokio::spawn(async move {
            get_once(out, "httpbin:8000", &[]).await
        }));
    }
    let h = held.clone();
    eventually("the upstream holds all six requests", || {
        let h = h.clone();
        async move { h.load(Ordering::SeqCst) == 6 }
    })
    .await;
    assert!(
        connections.load(Ordering::SeqCst) >= 3,
        "{} connections",
        connections.load(Ordering::SeqCst)
    );
    assert_eq!(most_on_one.load(Ordering::SeqCst), 2);
    gate.send_replace(true);
    for c in clients {
        let r = bounded(c).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "httpbin");
    }
    assert_eq!(most_on_one.load(Ordering::SeqCst), 2);
    drop(p);
    accept.abort();
}

/// Two subsets of one DestinationRule select the same h2c endpoint and share its
/// connections: `open` (no limits) opens one and holds a stream on it; `limited`
/// (`maxConnections: 1`, `maxConcurrentStreams: 1`, `http1MaxPendingRequests: 1`) opens its
/// own, holds its stream, and its next request waits as pending. When `open`'s stream
/// ends, the pending request is woken and takes that stream, while `limited`'s own
/// connection still carries its held request (it used to wait for that one, or for its
/// route timeout: a stream's end woke only the cluster that opened the connection).
#[tokio::test]
async fn a_stream_ending_wakes_a_pending_request_of_another_subset() {
    let (first_done, first_gate) = watch::channel(false);
    let (held_done, held_gate) = watch::channel(false);
    let holding = Arc::new(AtomicUsize::new(0));
    let h = holding.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let which = req.headers()["x-which"].to_str().unwrap().to_owned();
        let (mut first, mut held, h) = (first_gate.clone(), held_gate.clone(), h.clone());
        Box::pin(async move {
            h.fetch_add(1, Ordering::SeqCst);
            match which.as_str() {
                "first" => drop(first.wait_for(|o| *o).await),
                "held" => drop(held.wait_for(|o| *o).await),
                _ => {}
            }
            h.fetch_sub(1, Ordering::SeqCst);
            Response::new(full(which))
        })
    });
    let upstream = backend_with("httpbin", handler).await;
    let yaml = bootstrap(1, "")
        + &service_entry("httpbin", 8000, "GRPC", &[&upstream])
        + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: default}
spec:
  host: httpbin
  subsets:
  - name: open
    labels: {app: httpbin}
  - name: limited
    labels: {app: httpbin}
    trafficPolicy:
      connectionPool:
        tcp: {maxConnections: 1}
        http: {maxConcurrentStreams: 1, http1MaxPendingRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin]
  http:
  - match: [{headers: {x-subset: {exact: limited}}}]
    route: [{destination: {host: httpbin, subset: limited}}]
  - route: [{destination: {host: httpbin, subset: open}}]
";
    let p = start(&yaml).await;
    let out = p.out;
    let send = move |subset: &'static str, which: &'static str| {
        tokio::spawn(async move {
            get_once(
                out,
                "httpbin:8000",
                &[("x-subset", subset), ("x-which", which)],
            )
            .await
        })
    };
    let held_by = |n: usize, what: &'static str| {
        let h = holding.clone();
        eventually(what, move || {
            let h = h.clone();
            async move { h.load(Ordering::SeqCst) == n }
        })
    };
    let first = send("open", "first");
    held_by(1, "open's request held upstream").await;
    let held = send("limited", "held");
    held_by(2, "limited's first request held upstream").await;
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    let third = send("limited", "third");
    let cluster = "outbound|8000|limited|httpbin.default.svc.cluster.local";
    let pending = format!("mesh_proxy_cluster_pending_requests{{cluster_name=\"{cluster}\"}} 1\n");
    let admin = p.admin;
    eventually("limited's next request pending", || {
        let pending = pending.clone();
        async move {
            admin_get(admin, "/stats/prometheus")
                .await
                .1
                .contains(&pending)
        }
    })
    .await;
    first_done.send_replace(true);
    let first = bounded(first).await.unwrap();
    assert_eq!((first.status.as_u16(), first.body.as_str()), (200, "first"));
    // woken by open's stream end, on open's connection: limited's own still holds its request
    let third = bounded(third).await.unwrap();
    assert_eq!(
        (third.status.as_u16(), third.body.as_str()),
        (200, "third"),
        "{third:?}"
    );
    assert!(!held.is_finished());
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        2,
        "no third connection"
    );
    held_done.send_replace(true);
    let held = bounded(held).await.unwrap();
    assert_eq!(held.status, 200);
    drop(p);
}

/// Checks that `cluster` counts `n` overflows and no request in flight, on `/clusters` and
/// `/stats/prometheus`; the exposition.
async fn cluster_overflows(admin: SocketAddr, cluster: &str, n: u64) -> String {
    let (status, body) = admin_get(admin, "/clusters").await;
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cb = clusters["circuit_breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == cluster)
        .unwrap_or_else(|| panic!("{cluster} in {body}"));
    assert_eq!(cb["pending_overflows"], n, "{cb}");
    assert_eq!(cb["requests_active"], 0, "{cb}");
    let (_, stats) = admin_get(admin, "/stats/prometheus").await;
    assert!(
        stats.contains(&format!(
            "mesh_proxy_cluster_overflows_total{{cluster_name=\"{cluster}\"}} {n}\n"
        )),
        "{stats}"
    );
    stats
}

/// The overflow answer Envoy's router gives (`503`, `x-envoy-overloaded`, flag `UO`).
fn assert_overflow(r: &Reply) {
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.flags(), "UO");
    assert_eq!(r.headers["x-envoy-overloaded"], "true");
    assert_eq!(
        r.body,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
}

/// The Sidecar of `productpage` with `pool` (indented fields) as its `inboundConnectionPool`.
fn productpage_sidecar(pool: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: productpage, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: productpage}}}}
  inboundConnectionPool:
{pool}"
    )
}

/// The inbound listener of `productpage` to `app`, on `workers` workers.
fn inbound_bootstrap(workers: u32, app: &Backend) -> String {
    bootstrap(
        workers,
        &format!(
            "  inbound: {{address: 127.0.0.1, port: 0, localApp: '127.0.0.1:{}'}}\n",
            app.port()
        ),
    )
}

/// Circuit breaking on the receiving side (Istio's Sidecar `inboundConnectionPool`, the
/// pool of the inbound cluster `inbound|<port>||`): the circuit-breaking task's limits
/// (`maxConnections: 1`, `http1MaxPendingRequests: 1`, `maxRequestsPerConnection: 1`) on
/// the workload's own inbound listener, served by two workers (the limits are the
/// cluster's, not a worker's). Of ten requests at once from peers, the application holds
/// one, one waits, eight get Envoy's overflow answer without reaching it; the overflows are
/// the inbound cluster's on `/clusters`, Istio's metrics count them with
/// `reporter="destination"`, and their access log lines name the inbound cluster and no
/// upstream host.
#[tokio::test]
async fn an_inbound_connection_pool_trips_the_breaker_before_the_application() {
    let (slow, handler) = Slow::new();
    let app = backend_with("productpage", handler).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = inbound_bootstrap(2, &app)
        + &format!("  accessLog: {{path: {}, encoding: TEXT}}\n", log.display())
        + &productpage_sidecar(
            "    tcp: {maxConnections: 1}
    http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
",
        );
    let p = start(&yaml).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let (replies, clients) = concurrent_gets_of(inbound, "productpage:9080", 10);
    slow.wait_for(&replies, 8, 1).await;
    for r in replies.lock().unwrap().iter() {
        assert_overflow(r);
    }
    slow.gate.send_replace(true);
    for c in clients {
        bounded(c).await.unwrap();
    }
    let ok = replies
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.status == 200 && r.backend() == "httpbin")
        .count();
    assert_eq!(ok, 2, "the first and the pending one");
    assert_eq!(app.hits(), 2);
    assert_eq!(slow.most.load(Ordering::SeqCst), 1);
    // maxRequestsPerConnection: 1 on the connections to the application
    assert_eq!(app.connections.load(Ordering::SeqCst), 2);
    let cluster = format!("inbound|{}||", app.port());
    let stats = cluster_overflows(p.admin, &cluster, 8).await;
    let overflowed: f64 = stats
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("response_code=\"503\"")
                && l.contains("response_flags=\"UO\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(overflowed, 8.0, "{stats}");
    let proxy = &p.proxy;
    eventually("the ten access log lines", || {
        proxy.flush_telemetry();
        let n = std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
        async move { n == 10 }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let uo: Vec<&str> = text.lines().filter(|l| l.contains(" 503 UO ")).collect();
    assert_eq!(uo.len(), 8, "{text}");
    assert!(
        uo.iter().all(|l| l.contains(&format!("\"-\" {cluster} "))),
        "{text}"
    );
    let sent: Vec<&str> = text.lines().filter(|l| l.contains(" 200 - ")).collect();
    assert_eq!(sent.len(), 2, "{text}");
    assert!(
        sent.iter()
            .all(|l| l.contains(&format!("\"{}\" {cluster} ", app.addr))),
        "{text}"
    );
    drop(p);
}

/// Istio applies a DestinationRule's `connectionPool` to the receiving side too
/// (`buildInboundCluster`: "when users specify circuit breakers, they need to be set on the
/// receiver end as well"): the rule of the service that selects the workload on the
/// application's port (`http2MaxRequests: 1`) bounds what the inbound listener sends the
/// application. A Sidecar's `inboundConnectionPool` replaces it (here a larger limit, 3).
#[tokio::test]
async fn the_service_s_destination_rule_pool_applies_on_the_receiving_side() {
    for sidecar_pool in [false, true] {
        let (slow, handler) = Slow::new();
        let app = backend_with("productpage", handler).await;
        let mut yaml = inbound_bootstrap(1, &app)
            + &format!(
                "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: productpage, namespace: default}}
spec:
  hosts: [productpage]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP, targetPort: {}}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: productpage}}}}
",
                app.port()
            )
            + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: productpage, namespace: default}
spec:
  host: productpage
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 1}
";
        if sidecar_pool {
            yaml += &productpage_sidecar("    http: {http2MaxRequests: 3}\n");
        }
        let p = start(&yaml).await;
        let inbound = p.proxy.inbound_addr().unwrap();
        // the rule's limit 1: of three, two overflow; the Sidecar's 3: of four, one
        let (sent, overflows, held) = if sidecar_pool { (4, 1, 3) } else { (3, 2, 1) };
        let (replies, clients) = concurrent_gets_of(inbound, "productpage:9080", sent);
        slow.wait_for(&replies, overflows, held).await;
        for r in replies.lock().unwrap().iter() {
            assert_overflow(r);
        }
        slow.gate.send_replace(true);
        for c in clients {
            bounded(c).await.unwrap();
        }
        assert_eq!(app.hits(), held, "sidecar pool: {sidecar_pool}");
        assert_eq!(slow.most.load(Ordering::SeqCst), held);
        drop(p);
    }
}

/// On a port that declares no protocol the inbound cluster speaks the client's (Istio's
/// protocol detection), and the circuit breaker counts what the connector opens: an h2c
/// client's three concurrent requests go as three streams of one HTTP/2 connection to the
/// application under `maxConnections: 1`, none refused (counted as HTTP/1.1 requests, the
/// second would wait and the third overflow).
#[tokio::test]
async fn an_inbound_pool_counts_http2_streams_of_one_connection_under_max_connections() {
    let (slow, handler) = Slow::new();
    let app = backend_with("productpage", handler).await;
    let yaml = inbound_bootstrap(1, &app)
        + &productpage_sidecar(
            "    tcp: {maxConnections: 1}
    http: {http1MaxPendingRequests: 1}
",
        );
    let p = start(&yaml).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let (replies, clients) = h2_gets(inbound, "http://productpage:9080/", 3);
    slow.wait_for(&replies, 0, 3).await;
    slow.gate.send_replace(true);
    for c in clients {
        bounded(c).await.unwrap();
    }
    for r in replies.lock().unwrap().iter() {
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(app.hits(), 3);
    assert_eq!(
        app.connections.load(Ordering::SeqCst),
        1,
        "one HTTP/2 connection"
    );
    drop(p);
}

/// Outbound, a DestinationRule's `useClientProtocol` sends an h2c client's requests as
/// HTTP/2 streams, and the circuit breaker counts them as such (the decision it shares with
/// the connector, `SelectedUpstream::http2_for`): three concurrent streams under
/// `maxConnections: 1` go on one connection, none waits or overflows.
#[tokio::test]
async fn use_client_protocol_streams_count_as_http2_under_max_connections() {
    let (slow, handler) = Slow::new();
    let upstream = backend_with("httpbin", handler).await;
    let yaml = bootstrap(1, "")
        + &service_entry("httpbin", 8000, "HTTP", &[&upstream])
        + &destination_rule(
            "httpbin",
            &["httpbin"],
            "  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {useClientProtocol: true, http1MaxPendingRequests: 1}
",
        );
    let p = start(&yaml).await;
    let replies = h2_gets(p.out, "http://httpbin:8000/", 3);
    slow.wait_for(&replies.0, 0, 3).await;
    slow.gate.send_replace(true);
    for c in replies.1 {
        bounded(c).await.unwrap();
    }
    for r in replies.0.lock().unwrap().iter() {
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(upstream.hits(), 3);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
}

/// `n` concurrent GETs of `uri` as streams of one h2c connection to `to`.
fn h2_gets(
    to: SocketAddr,
    uri: &'static str,
    n: usize,
) -> (Replies, Vec<tokio::task::JoinHandle<()>>) {
    let replies: Replies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tx = Arc::new(tokio::sync::OnceCell::new());
    let clients = (0..n)
        .map(|_| {
            let (tx, replies) = (tx.clone(), replies.clone());
            tokio::spawn(async move {
                let mut tx = tx.get_or_init(|| h2(to)).await.clone();
                let req = Request::builder()
                    .version(http::Version::HTTP_2)
                    .uri(uri)
                    .body(full(""))
                    .unwrap();
                bounded(tx.ready()).await.unwrap();
                let r = read(bounded(tx.send_request(req)).await.unwrap()).await;
                replies.lock().unwrap().push(r);
            })
        })
        .collect();
    (replies, clients)
}
