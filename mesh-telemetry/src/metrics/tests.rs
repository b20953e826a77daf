use std::time::{Duration, Instant};

use http::{StatusCode, Version};
use mesh_core::ext::{
    EndpointMeta, RouteDecision, RouteDestination, RoutePolicy, SelectedEndpoint, SelectedUpstream,
    UpstreamCluster, UpstreamPool,
};
use mesh_core::identity::SpiffeId;
use mesh_core::stream_info::{Recorded, StreamInfo};

use super::*;
use crate::record::End;

fn local() -> LocalWorkload {
    let mut l = LocalWorkload::named("productpage-v1", "bookinfo");
    l.labels.insert("app".into(), "productpage".into());
    l.labels.insert("version".into(), "v1".into());
    l.principal = Some("spiffe://cluster.local/ns/bookinfo/sa/productpage".into());
    l
}

fn upstream(tls: bool) -> SelectedUpstream {
    let mut labels = Labels::new();
    labels.insert("app".into(), "reviews".into());
    labels.insert("version".into(), "v2".into());
    let ep = SelectedEndpoint::new("10.0.0.7:9080".parse().unwrap())
        .with_istio_tls(tls)
        .with_identity(Some(Arc::new(SpiffeId::new(
            "cluster.local",
            "bookinfo",
            "reviews",
        ))))
        .with_meta(Some(Arc::new(EndpointMeta {
            labels,
            namespace: "bookinfo".into(),
            workload: Some("reviews-v2".into()),
        })));
    SelectedUpstream::new(
        ep,
        UpstreamCluster {
            name: "outbound|9080|v2|reviews.bookinfo.svc.cluster.local".into(),
            health: Arc::new(mesh_core::health::HealthCell::detached()),
            pool: UpstreamPool::default(),
            outlier: None,
            limits: None,
        },
    )
}

fn routed(up: Option<&SelectedUpstream>) -> Recorded {
    let info = StreamInfo::new();
    info.set_route(&RouteDecision {
        dest: RouteDestination {
            host: "reviews.bookinfo.svc.cluster.local".into(),
            subset: Some("v2".into()),
            port: Some(9080),
        },
        policy: Arc::new(RoutePolicy::default()),
    });
    if let Some(u) = up {
        info.set_upstream(u);
    }
    info.snapshot()
}

struct Req {
    status: Option<u16>,
    flags: ResponseFlags,
    info: Recorded,
    authority: Option<&'static str>,
    peer: Option<PeerIdentity>,
    millis: u64,
    grpc: Option<u32>,
    /// gRPC messages sent and received.
    messages: (u64, u64),
    /// What earlier reports of the call carried.
    reported: (u64, u64),
}

impl Req {
    fn new(status: u16, info: Recorded) -> Req {
        Req {
            status: Some(status),
            flags: ResponseFlags::empty(),
            info,
            authority: Some("reviews:9080"),
            peer: None,
            millis: 3,
            grpc: None,
            messages: (0, 0),
            reported: (0, 0),
        }
    }

    fn record(&self, m: &IstioMetrics, reporter: Reporter) {
        self.with_completed(End::Complete, |done| m.record(reporter, done));
    }

    /// Reports the call open, as the record layer's timer does.
    fn progress(&self, m: &Arc<IstioMetrics>, reporter: Reporter) {
        let sink = m.sink(reporter);
        self.with_completed(End::Open, |done| sink.progress(done));
    }

    fn with_completed(&self, how: End, f: impl FnOnce(&Completed<'_>)) {
        let start = Instant::now();
        let done = Completed {
            start,
            end: start + Duration::from_millis(self.millis),
            how,
            details: None,
            version: Version::HTTP_11,
            authority: self.authority,
            grpc: self.grpc.is_some(),
            request_bytes: 100,
            status: self.status.map(|s| StatusCode::from_u16(s).unwrap()),
            flags: self.flags,
            grpc_status: self.grpc,
            response_bytes: 2000,
            request_messages: self.messages.0,
            response_messages: self.messages.1,
            messages_reported: self.reported,
            trace: None,
            info: &self.info,
            client_addr: None,
            peer: self.peer.as_ref(),
        };
        f(&done);
    }
}

/// The `istio_requests_total` line whose labels contain every one of `want`.
fn requests_line<'a>(text: &'a str, want: &[&str]) -> Option<&'a str> {
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .find(|l| want.iter().all(|w| l.contains(w)))
}

#[test]
fn outbound_labels_come_from_the_workload_the_route_and_the_endpoint() {
    let m = IstioMetrics::new(local());
    let up = upstream(true);
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let line = requests_line(&text, &[r#"response_code="200""#]).expect(&text);
    for want in [
        r#"reporter="source""#,
        r#"source_workload="productpage-v1""#,
        r#"source_canonical_service="productpage""#,
        r#"source_canonical_revision="v1""#,
        r#"source_workload_namespace="bookinfo""#,
        r#"source_principal="spiffe://cluster.local/ns/bookinfo/sa/productpage""#,
        r#"source_app="productpage""#,
        r#"source_version="v1""#,
        r#"source_cluster="unknown""#,
        r#"destination_workload="reviews-v2""#,
        r#"destination_workload_namespace="bookinfo""#,
        r#"destination_principal="spiffe://cluster.local/ns/bookinfo/sa/reviews""#,
        r#"destination_app="reviews""#,
        r#"destination_version="v2""#,
        r#"destination_service="reviews.bookinfo.svc.cluster.local""#,
        r#"destination_canonical_service="reviews""#,
        r#"destination_canonical_revision="v2""#,
        r#"destination_service_name="reviews""#,
        r#"destination_service_namespace="bookinfo""#,
        r#"destination_cluster="unknown""#,
        r#"request_protocol="http""#,
        r#"grpc_response_status="""#,
        r#"response_flags="-""#,
        r#"connection_security_policy="unknown""#,
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
    assert!(line.ends_with("} 2"), "{line}");
    assert_eq!(m.series(), 1);
}

#[test]
fn without_mtls_the_principals_are_unknown() {
    let m = IstioMetrics::new(local());
    Req::new(200, routed(Some(&upstream(false)))).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let line = requests_line(&text, &[]).unwrap();
    assert!(line.contains(r#"source_principal="unknown""#), "{line}");
    assert!(
        line.contains(r#"destination_principal="unknown""#),
        "{line}"
    );
    // the namespace from the endpoint's metadata then
    assert!(line.contains(r#"destination_workload_namespace="bookinfo""#));
}

#[test]
fn no_route_and_no_healthy_upstream_name_what_they_can() {
    let m = IstioMetrics::new(local());
    // 404 NR: no route, so no cluster: Istio falls back on the Host header
    let mut nr = Req::new(404, Recorded::default());
    nr.flags = ResponseFlags::NO_ROUTE;
    nr.record(&m, Reporter::Source);
    // 503 UH: a route and a cluster, no endpoint
    let mut uh = Req::new(503, routed(None));
    uh.flags = ResponseFlags::NO_HEALTHY_UPSTREAM;
    uh.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let nr = requests_line(&text, &[r#"response_flags="NR""#]).expect(&text);
    assert!(nr.contains(r#"response_code="404""#));
    assert!(nr.contains(r#"destination_service="reviews:9080""#), "{nr}");
    assert!(
        nr.contains(r#"destination_service_name="reviews:9080""#),
        "{nr}"
    );
    assert!(nr.contains(r#"destination_workload="unknown""#), "{nr}");
    let uh = requests_line(&text, &[r#"response_flags="UH""#]).expect(&text);
    assert!(uh.contains(r#"response_code="503""#));
    assert!(uh.contains(r#"destination_service="reviews.bookinfo.svc.cluster.local""#));
    assert!(
        uh.contains(r#"destination_canonical_revision="latest""#),
        "{uh}"
    );
    assert!(text.contains(r#"mesh_proxy_response_flags_total{reporter="source",flag="NR"} 1"#));
    assert!(text.contains(r#"mesh_proxy_response_flags_total{reporter="source",flag="UH"} 1"#));
}

#[test]
fn passthrough_is_istio_s_passthrough_cluster() {
    let m = IstioMetrics::new(local());
    let info = StreamInfo::new();
    info.set_destination(
        &RouteDestination {
            host: "example.com".into(),
            subset: None,
            port: Some(80),
        },
        true,
    );
    info.set_endpoint(&SelectedEndpoint::new("93.184.216.34:80".parse().unwrap()));
    let mut r = Req::new(200, info.snapshot());
    r.authority = Some("example.com");
    r.record(&m, Reporter::Source);
    r.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let line = requests_line(&text, &[]).unwrap();
    assert!(
        line.contains(r#"destination_service="example.com""#),
        "{line}"
    );
    assert!(line.contains(r#"destination_service_name="PassthroughCluster""#));
    assert_eq!(m.cache.read().unwrap().len(), 1, "cached once");
}

#[test]
fn inbound_labels_come_from_the_peer_s_certificate_and_the_workload() {
    let m = IstioMetrics::new(local());
    let mut r = Req::new(200, Recorded::default());
    r.authority = Some("productpage:9080");
    r.peer = Some(PeerIdentity::new(SpiffeId::new(
        "cluster.local",
        "frontend",
        "gateway",
    )));
    r.record(&m, Reporter::Destination);
    let mut plain = Req::new(403, Recorded::default());
    plain.flags = ResponseFlags::RBAC_DENIED;
    plain.authority = Some("productpage:9080");
    plain.record(&m, Reporter::Destination);
    let text = m.encode_to_string();
    let line = requests_line(&text, &[r#"response_code="200""#]).expect(&text);
    for want in [
        r#"reporter="destination""#,
        r#"source_workload="unknown""#,
        r#"source_canonical_revision="latest""#,
        r#"source_workload_namespace="frontend""#,
        r#"source_principal="spiffe://cluster.local/ns/frontend/sa/gateway""#,
        r#"source_app="unknown""#,
        r#"destination_workload="productpage-v1""#,
        r#"destination_workload_namespace="bookinfo""#,
        r#"destination_principal="spiffe://cluster.local/ns/bookinfo/sa/productpage""#,
        r#"destination_app="productpage""#,
        r#"destination_service="productpage:9080""#,
        r#"destination_service_namespace="bookinfo""#,
        r#"connection_security_policy="mutual_tls""#,
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
    let denied = requests_line(&text, &[r#"response_code="403""#]).expect(&text);
    assert!(
        denied.contains(r#"connection_security_policy="none""#),
        "{denied}"
    );
    assert!(denied.contains(r#"source_principal="unknown""#));
    assert!(denied.contains(r#"destination_principal="unknown""#));
    assert!(denied.contains(r#"response_flags="RBAC""#));
}

#[test]
fn grpc_requests_carry_their_status() {
    let m = IstioMetrics::new(local());
    let mut r = Req::new(200, Recorded::default());
    r.grpc = Some(14);
    r.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let line = requests_line(&text, &[]).unwrap();
    assert!(line.contains(r#"request_protocol="grpc""#));
    assert!(line.contains(r#"grpc_response_status="14""#));
}

#[test]
fn histograms_have_envoy_s_buckets_cumulative_with_sum_and_count() {
    let m = IstioMetrics::new(local());
    for millis in [0, 3, 3, 7000, 4_000_000] {
        let mut r = Req::new(200, Recorded::default());
        r.millis = millis;
        r.record(&m, Reporter::Source);
    }
    let text = m.encode_to_string();
    let bucket = |le: &str| {
        let needle = format!("le=\"{le}\"}}");
        text.lines()
            .find(|l| {
                l.starts_with("istio_request_duration_milliseconds_bucket{") && l.contains(&needle)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no bucket {le} in {text}"))
    };
    assert_eq!(bucket("0.5"), 1, "0 ms");
    assert_eq!(bucket("1"), 1);
    assert_eq!(bucket("5"), 3);
    assert_eq!(bucket("5000"), 3);
    assert_eq!(bucket("10000"), 4);
    assert_eq!(bucket("3600000"), 4);
    assert_eq!(bucket("+Inf"), 5);
    let les: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_request_duration_milliseconds_bucket{"))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(les.len(), 20);
    assert_eq!(
        les[..19]
            .iter()
            .map(|l| l.parse::<f64>().unwrap())
            .collect::<Vec<_>>(),
        BUCKETS
    );
    assert!(text.contains("istio_request_duration_milliseconds_sum{"));
    assert!(text.lines().any(
        |l| l.starts_with("istio_request_duration_milliseconds_sum{") && l.ends_with(" 4007006")
    ));
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_request_bytes_count{") && l.ends_with(" 5"))
    );
    assert!(text.contains("# TYPE istio_response_bytes histogram"));
}

#[test]
fn the_series_cap_drops_and_counts() {
    let m = IstioMetrics::new(local()).with_max_series(2);
    for code in [200, 201, 202, 203] {
        Req::new(code, Recorded::default()).record(&m, Reporter::Source);
    }
    Req::new(200, Recorded::default()).record(&m, Reporter::Source);
    assert_eq!(m.series(), 2);
    assert_eq!(m.dropped(), 2);
    let text = m.encode_to_string();
    assert!(text.contains("mesh_proxy_metrics_dropped_total 2"));
    assert!(
        requests_line(&text, &[r#"response_code="200""#])
            .unwrap()
            .ends_with("} 2")
    );
}

#[test]
fn label_values_are_escaped() {
    let m = IstioMetrics::new(local());
    let mut r = Req::new(200, Recorded::default());
    r.authority = Some("a\"b\\c");
    r.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    assert!(text.contains(r#"destination_service="a\"b\\c""#), "{text}");
}

#[test]
fn a_new_local_workload_makes_new_series_and_keeps_the_old() {
    let m = IstioMetrics::new(local());
    Req::new(200, Recorded::default()).record(&m, Reporter::Source);
    let mut l = local();
    l.name = "productpage-v2".into();
    m.set_local(l);
    Req::new(200, Recorded::default()).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    assert!(requests_line(&text, &[r#"source_workload="productpage-v1""#]).is_some());
    assert!(requests_line(&text, &[r#"source_workload="productpage-v2""#]).is_some());
}

#[test]
fn registries_recorded_in_turn_on_one_thread_keep_their_own_local_workload() {
    // a thread keeps one registry's local workload at hand: the other's requests must not
    // take it
    let a = IstioMetrics::new(local());
    let mut other = local();
    other.name = "ratings-v1".into();
    let b = IstioMetrics::new(other);
    for _ in 0..2 {
        Req::new(200, Recorded::default()).record(&a, Reporter::Source);
        Req::new(200, Recorded::default()).record(&b, Reporter::Source);
    }
    let (ta, tb) = (a.encode_to_string(), b.encode_to_string());
    let line = |t: &str, w: &str| {
        requests_line(t, &[&format!("source_workload=\"{w}\"")]).map(str::to_owned)
    };
    assert!(
        line(&ta, "productpage-v1").unwrap().ends_with("} 2"),
        "{ta}"
    );
    assert!(line(&tb, "ratings-v1").unwrap().ends_with("} 2"), "{tb}");
    assert!(line(&ta, "ratings-v1").is_none() && line(&tb, "productpage-v1").is_none());
}

#[test]
fn equal_label_sets_from_different_endpoints_are_one_series() {
    // two endpoints of one service with the same labels: one series, as in Istio
    let m = IstioMetrics::new(local());
    Req::new(200, routed(Some(&upstream(true)))).record(&m, Reporter::Source);
    Req::new(200, routed(Some(&upstream(true)))).record(&m, Reporter::Source);
    assert_eq!(m.series(), 1);
    let text = m.encode_to_string();
    assert!(requests_line(&text, &[]).unwrap().ends_with("} 2"));
}

#[test]
fn service_names_and_spiffe_namespaces_as_istio_reads_them() {
    assert_eq!(
        service_name("reviews.bookinfo.svc.cluster.local"),
        "reviews"
    );
    assert_eq!(service_name("api.example.com"), "api.example.com");
    assert_eq!(service_name("reviews"), "reviews");
    assert_eq!(
        spiffe_namespace("spiffe://cluster.local/ns/bookinfo/sa/reviews"),
        Some("bookinfo")
    );
    assert_eq!(spiffe_namespace("cluster.local/ns/x"), Some("x"));
    assert_eq!(spiffe_namespace("spiffe://td/sa/x"), None);
}

#[tokio::test]
async fn the_service_answers_with_the_exposition() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let m = Arc::new(IstioMetrics::new(local()));
    Req::new(200, Recorded::default()).record(&m, Reporter::Source);
    let res = MetricsService::new(m.clone())
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.headers()[http::header::CONTENT_TYPE], CONTENT_TYPE);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, m.encode_to_string().as_bytes());
    assert!(requests_line(std::str::from_utf8(&body).unwrap(), &[]).is_some());
}

#[test]
fn tcp_connections_and_bytes_are_counted_per_peer_and_flags() {
    let m = IstioMetrics::new(local());
    let up = upstream(false);
    let host: Arc<str> = "reviews.bookinfo.svc.cluster.local".into();
    let peer = TcpPeer {
        upstream: Some(&up),
        service: Some(&host),
        flags: ResponseFlags::empty(),
    };
    let a = m.tcp_open(&peer);
    let b = m.tcp_open(&peer);
    a.add(10, 20);
    a.add(1, 0);
    b.add(5, 5);
    drop(a);
    let overflow = m.tcp_open(&TcpPeer {
        upstream: None,
        service: Some(&host),
        flags: ResponseFlags::UPSTREAM_OVERFLOW,
    });
    drop(overflow);
    let text = m.encode_to_string();
    let line = |name: &str, flags: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains("request_protocol=\"tcp\"")
                    && l.contains(&format!("response_flags=\"{flags}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} {flags} not in\n{text}"))
    };
    assert_eq!(line("istio_tcp_connections_opened_total{", "-"), 2);
    assert_eq!(line("istio_tcp_connections_closed_total{", "-"), 1);
    assert_eq!(line("istio_tcp_received_bytes_total{", "-"), 16);
    assert_eq!(line("istio_tcp_sent_bytes_total{", "-"), 25);
    assert_eq!(line("istio_tcp_connections_opened_total{", "UO"), 1);
    assert_eq!(line("istio_tcp_connections_closed_total{", "UO"), 1);
    assert!(text.contains("destination_service=\"reviews.bookinfo.svc.cluster.local\""));
    assert!(text.contains("reporter=\"source\""));
    drop(b);
}

#[test]
fn one_endpoint_reached_through_two_clusters_is_one_tcp_series() {
    // two balancer records of one endpoint (a subset's cluster and the whole service's):
    // one line per family, counting both, never the same label set twice
    let m = IstioMetrics::new(local());
    let (first, second) = (upstream(false), upstream(false));
    let host: Arc<str> = "reviews.bookinfo.svc.cluster.local".into();
    let open = |up| {
        m.tcp_open(&TcpPeer {
            upstream: Some(up),
            service: Some(&host),
            flags: ResponseFlags::empty(),
        })
    };
    let (a, b) = (open(&first), open(&second));
    a.add(3, 4);
    b.add(5, 6);
    drop((a, b));
    let text = m.encode_to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_tcp_"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let value = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(value("istio_tcp_connections_opened_total{"), Some(2));
    assert_eq!(value("istio_tcp_connections_closed_total{"), Some(2));
    assert_eq!(value("istio_tcp_received_bytes_total{"), Some(8));
    assert_eq!(value("istio_tcp_sent_bytes_total{"), Some(10));
}

#[test]
fn the_series_a_thread_keeps_at_hand_are_its_registry_s_and_its_peer_s() {
    // one thread, two registries, alternating requests of the same peer and key: each
    // registry counts its own (a series at hand is found only by its registry)
    let (a, b) = (IstioMetrics::new(local()), IstioMetrics::new(local()));
    let req = Req::new(200, routed(Some(&upstream(true))));
    for _ in 0..3 {
        req.record(&a, Reporter::Source);
        req.record(&b, Reporter::Source);
    }
    req.record(&a, Reporter::Source);
    assert!(
        requests_line(&a.encode_to_string(), &[])
            .unwrap()
            .ends_with("} 4")
    );
    assert!(
        requests_line(&b.encode_to_string(), &[])
            .unwrap()
            .ends_with("} 3")
    );
    // the same registry, alternating peers (authorities) and reporters: each its own series
    let m = IstioMetrics::new(local());
    let mut other = Req::new(200, Recorded::default());
    other.authority = Some("ratings:9080");
    let mine = Req::new(200, Recorded::default());
    for _ in 0..5 {
        mine.record(&m, Reporter::Source);
        other.record(&m, Reporter::Source);
        mine.record(&m, Reporter::Destination);
    }
    let text = m.encode_to_string();
    for want in [
        [
            r#"reporter="source""#,
            r#"destination_service="reviews:9080""#,
        ],
        [
            r#"reporter="source""#,
            r#"destination_service="ratings:9080""#,
        ],
        [r#"reporter="destination""#, r#"response_code="200""#],
    ] {
        let line = requests_line(&text, &want).unwrap_or_else(|| panic!("{want:?}: {text}"));
        assert!(line.ends_with("} 5"), "{line}");
    }
    assert_eq!(m.series(), 3);
}

/// A record of a request routed by route `name` (`None`: unnamed) to `host`, with
/// `attempts` picks of the balancer.
fn routed_by(name: Option<&Arc<str>>, host: &Arc<str>, attempts: u32) -> Recorded {
    let info = StreamInfo::new();
    info.set_route(&RouteDecision {
        dest: RouteDestination {
            host: host.clone(),
            subset: None,
            port: Some(9080),
        },
        policy: Arc::new(RoutePolicy {
            route_name: name.cloned(),
            ..RoutePolicy::default()
        }),
    });
    let up = upstream(false);
    for _ in 0..attempts {
        info.set_upstream(&up);
    }
    info.snapshot()
}

/// The value of the sample `line` (name and labels, as printed).
fn value(text: &str, line: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn retries_and_flags_are_counted_per_route() {
    let m = IstioMetrics::new(local());
    let (reviews, ratings): (Arc<str>, Arc<str>) = (
        "reviews.bookinfo.svc.cluster.local".into(),
        "ratings.bookinfo.svc.cluster.local".into(),
    );
    let (v2, default): (Arc<str>, Arc<str>) = ("reviews-v2".into(), "default".into());
    // a 503 retried twice, then given up (URX); a request retried once that succeeded
    let mut exhausted = Req::new(503, routed_by(Some(&v2), &reviews, 3));
    exhausted.flags = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
    exhausted.record(&m, Reporter::Source);
    Req::new(200, routed_by(Some(&v2), &reviews, 2)).record(&m, Reporter::Source);
    // an overflow on another service's default route; an injected abort on an unnamed route
    let mut overflow = Req::new(503, routed_by(Some(&default), &ratings, 1));
    overflow.flags = ResponseFlags::UPSTREAM_OVERFLOW;
    overflow.record(&m, Reporter::Source);
    overflow.record(&m, Reporter::Source);
    let mut fault = Req::new(500, routed_by(None, &ratings, 0));
    fault.flags = ResponseFlags::FAULT_INJECTED;
    fault.record(&m, Reporter::Source);
    // no route at all; a denial on the inbound side
    let mut nr = Req::new(404, Recorded::default());
    nr.flags = ResponseFlags::NO_ROUTE;
    nr.record(&m, Reporter::Source);
    let mut denied = Req::new(403, Recorded::default());
    denied.flags = ResponseFlags::RBAC_DENIED;
    denied.record(&m, Reporter::Destination);
    let text = m.encode_to_string();
    let route = |reporter: &str, route: &str, host: &str| {
        format!("reporter=\"{reporter}\",route=\"{route}\",destination_service=\"{host}\"")
    };
    let v2_labels = route("source", "reviews-v2", &reviews);
    for (line, want) in [
        (
            format!("mesh_proxy_route_upstream_retries_total{{{v2_labels}}}"),
            3,
        ),
        (
            format!("mesh_proxy_route_response_flags_total{{{v2_labels},flag=\"URX\"}}"),
            1,
        ),
        (
            format!(
                "mesh_proxy_route_response_flags_total{{{},flag=\"UO\"}}",
                route("source", "default", &ratings)
            ),
            2,
        ),
        (
            format!(
                "mesh_proxy_route_upstream_retries_total{{{}}}",
                route("source", "default", &ratings)
            ),
            0,
        ),
        (
            format!(
                "mesh_proxy_route_response_flags_total{{{},flag=\"FI\"}}",
                route("source", "unknown", &ratings)
            ),
            1,
        ),
        (
            format!(
                "mesh_proxy_route_response_flags_total{{{},flag=\"NR\"}}",
                route("source", "unknown", "unknown")
            ),
            1,
        ),
        (
            format!(
                "mesh_proxy_route_response_flags_total{{{},flag=\"RBAC\"}}",
                route("destination", "unknown", "unknown")
            ),
            1,
        ),
        (
            r#"mesh_proxy_upstream_retries_total{reporter="source"}"#.to_string(),
            3,
        ),
        (
            r#"mesh_proxy_response_flags_total{reporter="source",flag="UO"}"#.to_string(),
            2,
        ),
    ] {
        assert_eq!(value(&text, &line), Some(want), "{line} in\n{text}");
    }
    // only what happened: no URX line for the route that never gave up
    assert!(!text.contains(&format!(
        "{},flag=\"URX\"",
        route("source", "default", &ratings)
    )));
    assert!(text.contains("# TYPE mesh_proxy_route_response_flags_total counter"));
    assert!(text.contains("# TYPE mesh_proxy_route_upstream_retries_total counter"));
}

#[test]
fn requests_without_a_decision_make_no_route_series() {
    let m = IstioMetrics::new(local());
    let host: Arc<str> = "reviews.bookinfo.svc.cluster.local".into();
    let name: Arc<str> = "r".into();
    for _ in 0..3 {
        Req::new(200, routed_by(Some(&name), &host, 1)).record(&m, Reporter::Source);
    }
    assert_eq!(m.series(), 1, "the istio_requests_total series only");
    let text = m.encode_to_string();
    assert!(
        !text.contains("mesh_proxy_route_upstream_retries_total{"),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"mesh_proxy_upstream_retries_total{reporter="source"}"#
        ),
        Some(0)
    );
}

#[test]
fn a_reloaded_route_of_the_same_name_counts_in_the_same_series_under_the_cap() {
    // a reload compiles new strings for the same route: one label set, one series
    let m = IstioMetrics::new(local()).with_max_series(3);
    for _ in 0..2 {
        let (name, host): (Arc<str>, Arc<str>) =
            ("r".into(), "reviews.bookinfo.svc.cluster.local".into());
        let mut r = Req::new(200, routed_by(Some(&name), &host, 2));
        r.record(&m, Reporter::Source);
        r.record(&m, Reporter::Source);
        r.flags = ResponseFlags::UPSTREAM_OVERFLOW;
        r.record(&m, Reporter::Source);
    }
    // the request series (200 and 200 UO) and the route's: 3, the cap
    assert_eq!(m.series(), 3);
    let text = m.encode_to_string();
    let labels =
        r#"reporter="source",route="r",destination_service="reviews.bookinfo.svc.cluster.local""#;
    assert_eq!(
        value(
            &text,
            &format!("mesh_proxy_route_upstream_retries_total{{{labels}}}")
        ),
        Some(6)
    );
    assert_eq!(
        value(
            &text,
            &format!("mesh_proxy_route_response_flags_total{{{labels},flag=\"UO\"}}")
        ),
        Some(2)
    );
    // a new route over the cap: counted as dropped, the totals still count it
    let (other, host): (Arc<str>, Arc<str>) = ("other".into(), "ratings".into());
    let mut r = Req::new(200, routed_by(Some(&other), &host, 1));
    r.flags = ResponseFlags::UPSTREAM_OVERFLOW;
    r.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    assert!(!text.contains(r#"route="other""#), "{text}");
    assert!(m.dropped() >= 1);
    assert_eq!(
        value(
            &text,
            r#"mesh_proxy_response_flags_total{reporter="source",flag="UO"}"#
        ),
        Some(3)
    );
    assert_eq!(m.series(), 3);
}

#[test]
fn passthrough_routes_are_istio_s_passthrough_cluster_whatever_the_host() {
    let m = IstioMetrics::new(local());
    for host in ["a.example.com", "b.example.com"] {
        let info = StreamInfo::new();
        info.set_destination(
            &RouteDestination {
                host: host.into(),
                subset: None,
                port: Some(80),
            },
            true,
        );
        info.set_endpoint(&SelectedEndpoint::new("93.184.216.34:80".parse().unwrap()));
        info.set_endpoint(&SelectedEndpoint::new("93.184.216.35:80".parse().unwrap()));
        Req::new(200, info.snapshot()).record(&m, Reporter::Source);
    }
    let text = m.encode_to_string();
    assert_eq!(
        value(
            &text,
            r#"mesh_proxy_route_upstream_retries_total{reporter="source",route="unknown",destination_service="PassthroughCluster"}"#
        ),
        Some(2),
        "{text}"
    );
    assert!(!text.contains("example.com\",flag"), "{text}");
}

#[test]
fn the_inbound_service_is_the_first_selecting_service_whatever_the_host() {
    let mut l = LocalWorkload::named("reviews-v1", "default");
    assert_eq!(l.inbound_service(), None, "no service: Host");
    l.services = vec![
        Arc::from("details.default.svc.cluster.local"),
        Arc::from("reviews.default.svc.cluster.local"),
    ];
    assert_eq!(
        l.inbound_service().map(|s| s.to_string()).as_deref(),
        Some("details.default.svc.cluster.local")
    );
}

/// `LocalWorkload::from_snapshot`: the `MESH_INTERNAL` ServiceEntries of the workload's
/// namespace whose `workloadSelector` selects it, with a port on the application's (its
/// `targetPort`, else its `number`), sorted.
#[test]
fn the_services_selecting_the_workload_are_those_on_the_application_s_port() {
    let yaml = "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {name: p}
spec:
  workload: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
  inbound: {localApp: '127.0.0.1:9080'}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9080}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: alias, namespace: default}
spec:
  hosts: [a-reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: admin, namespace: default}
spec:
  hosts: [admin.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: elsewhere, namespace: prod}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: default}
spec:
  hosts: [ext.example.com]
  location: MESH_EXTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
";
    let mut loader = mesh_core::load::Loader::new();
    loader.add_str("mesh.yaml", yaml);
    let loaded = loader.finish();
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let snapshot = mesh_core::compile::compile(loaded.resources);
    let local = LocalWorkload::from_snapshot(&snapshot);
    let services: Vec<&str> = local.services.iter().map(|s| &**s).collect();
    assert_eq!(
        services,
        [
            "a-reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ]
    );
}

#[test]
fn a_telemetry_s_overrides_turn_metrics_off_by_reporter_and_metric() {
    // Istio's Telemetry `metrics[].overrides[].disabled` (mesh_core::telemetry): a metric
    // turned off is neither recorded nor exposed for that reporter
    let m = IstioMetrics::new(local());
    let up = upstream(false);
    let mut client = MetricSet::ALL;
    for off in [IstioMetric::RequestCount, IstioMetric::TcpSentBytes] {
        client = MetricSet::from_bits(client.bits() & !(1 << (off as u16)));
    }
    m.set_enabled(Reporter::Source, client);
    assert!(!m.enabled(Reporter::Source).has(IstioMetric::RequestCount));
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    let host: Arc<str> = "reviews.bookinfo.svc.cluster.local".into();
    let c = m.tcp_open(&TcpPeer {
        upstream: Some(&up),
        service: Some(&host),
        flags: ResponseFlags::empty(),
    });
    c.add(3, 4);
    drop(c);
    let text = m.encode_to_string();
    let has = |family: &str| text.lines().any(|l| l.starts_with(family));
    assert!(!has("istio_requests_total{"), "{text}");
    assert!(has("istio_request_duration_milliseconds_count{"), "{text}");
    assert!(!has("istio_tcp_sent_bytes_total{"), "{text}");
    assert!(has("istio_tcp_received_bytes_total{"), "{text}");
    // while off, not recorded either: turned back on, the count has only the requests
    // made while it was on (here none: the duration histogram was on, and it is the count)
    m.set_enabled(Reporter::Source, MetricSet::NONE);
    Req::new(503, routed(Some(&up))).record(&m, Reporter::Source);
    let c = m.tcp_open(&TcpPeer {
        upstream: Some(&up),
        service: Some(&host),
        flags: ResponseFlags::UPSTREAM_OVERFLOW,
    });
    drop(c);
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Destination);
    m.set_enabled(Reporter::Source, MetricSet::ALL);
    let text = m.encode_to_string();
    assert!(
        requests_line(&text, &[r#"response_code="503""#]).is_none(),
        "{text}"
    );
    let source = requests_line(&text, &[r#"reporter="source""#]).expect(&text);
    assert!(
        source.ends_with(" 1"),
        "the 200 counted in the duration histogram while only the count was off: {source}"
    );
    assert!(
        !text.contains("response_flags=\"UO\""),
        "no TCP series made while off: {text}"
    );
    let sent = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
        .expect(&text);
    assert!(sent.ends_with(" 0"), "not counted while off: {sent}");
    assert!(requests_line(&text, &[r#"reporter="destination""#]).is_some());
}

/// `tagOverrides` for `metrics` as the merge makes them ([`MetricTags`]).
/// `list` (name, `UPSERT` value or `REMOVE`) as the tag overrides of each of `metrics`.
pub(super) fn overrides(metrics: &[IstioMetric], list: &[(&str, Option<&str>)]) -> MetricTags {
    let list: Arc<[mesh_core::telemetry::LabelOverride]> = list
        .iter()
        .map(|(n, v)| mesh_core::telemetry::LabelOverride {
            name: n.to_string(),
            value: v.map(Arc::from),
        })
        .collect();
    MetricTags(metrics.iter().map(|m| (*m, list.clone())).collect())
}

/// The lines of `family` (`istio_requests_total{`) in `text`.
fn family<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(family)).collect()
}

#[tokio::test]
async fn tag_overrides_remove_set_and_add_labels_of_their_metrics_and_reporter_only() {
    // Istio's customize-metrics task: grpc_response_status removed from REQUEST_COUNT, and
    // a request_host label; the other metrics and the other reporter keep the standard
    // set. Through the record layer: the sink asks for the details its expressions read.
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt};
    let m = Arc::new(IstioMetrics::new(local()));
    m.set_label_overrides(
        Reporter::Source,
        &overrides(
            &[IstioMetric::RequestCount],
            &[
                ("grpc_response_status", None),
                ("request_host", Some("request.host")),
                (
                    "response_code",
                    Some("'class_' + string(response.code / 100)"),
                ),
                ("user_agent", Some("request.headers['user-agent']")),
                ("source_x", Some("upstream_peer.app")),
            ],
        ),
    );
    let svc = ServiceBuilder::new()
        .layer(crate::RecordLayer::new(vec![
            m.sink(Reporter::Source),
            m.sink(Reporter::Destination),
        ]))
        .service_fn(|req: http::Request<Full<bytes::Bytes>>| async move {
            let status = match req.uri().path() {
                "/created" => 201,
                _ => 200,
            };
            let res = http::Response::builder()
                .status(status)
                .body(Full::new(bytes::Bytes::from("ok")))
                .unwrap();
            Ok::<_, std::convert::Infallible>(res)
        });
    for (host, path) in [
        ("reviews:9080", "/"),
        ("reviews:9080", "/created"),
        ("ratings:9080", "/"),
    ] {
        let req = http::Request::builder()
            .uri(path)
            .header("host", host)
            .header("user-agent", "curl/8")
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let text = m.encode_to_string();
    let source: Vec<&str> = family(&text, "istio_requests_total{")
        .into_iter()
        .filter(|l| l.contains(r#"reporter="source""#))
        .collect();
    assert_eq!(
        source.len(),
        2,
        "one series per host, 2xx as one class: {source:#?}"
    );
    let by_host = |host: &str| {
        source
            .iter()
            .find(|l| l.contains(&format!(r#"request_host="{host}""#)))
            .unwrap_or_else(|| panic!("{host}: {source:#?}"))
    };
    let reviews = by_host("reviews:9080");
    assert!(reviews.ends_with(" 2"), "{reviews}");
    assert!(by_host("ratings:9080").ends_with(" 1"));
    assert!(reviews.contains(r#"response_code="class_2""#), "{reviews}");
    assert!(reviews.contains(r#"user_agent="curl/8""#), "{reviews}");
    assert!(!reviews.contains("grpc_response_status"), "{reviews}");
    assert!(
        reviews.contains(r#"request_host="reviews:9080",source_x="unknown",user_agent="curl/8"}"#),
        "new labels last, in name order; an attribute the proxy does not fill is unknown: {reviews}"
    );
    assert!(
        reviews.contains(r#"source_workload="productpage-v1""#),
        "the standard labels stay: {reviews}"
    );
    // the duration histogram has no override: standard labels, every request
    let counts: Vec<&str> = family(&text, "istio_request_duration_milliseconds_count{")
        .into_iter()
        .filter(|l| l.contains(r#"reporter="source""#))
        .collect();
    assert_eq!(counts.len(), 3, "per host and code: {counts:#?}");
    assert!(
        counts
            .iter()
            .all(|l| l.contains("grpc_response_status=\"\"") && !l.contains("request_host"))
    );
    // the other reporter: standard
    let dest: Vec<&str> = family(&text, "istio_requests_total{")
        .into_iter()
        .filter(|l| l.contains(r#"reporter="destination""#))
        .collect();
    assert_eq!(dest.len(), 3, "{dest:#?}");
    assert!(
        dest.iter()
            .all(|l| l.contains("grpc_response_status") && !l.contains("request_host"))
    );
}

#[test]
fn series_of_one_label_set_under_old_and_new_overrides_are_one_line() {
    // a reload that overrides a label with the value it had: the series recorded before
    // and after have the same labels, and the exposition has one line with both counts
    let m = IstioMetrics::new(local());
    let up = upstream(false);
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    m.set_label_overrides(
        Reporter::Source,
        &overrides(
            &[IstioMetric::RequestCount, IstioMetric::RequestDuration],
            &[("reporter", Some("'source'"))],
        ),
    );
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let lines = family(&text, "istio_requests_total{");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].ends_with(" 2"), "{}", lines[0]);
    let counts = family(&text, "istio_request_duration_milliseconds_count{");
    assert_eq!(counts.len(), 1, "{counts:#?}");
    assert!(counts[0].ends_with(" 2"), "{}", counts[0]);
    // the sizes had no override: their standard series has both requests
    let sizes = family(&text, "istio_request_bytes_count{");
    assert_eq!(sizes.len(), 1, "{sizes:#?}");
    assert!(sizes[0].ends_with(" 2"), "{}", sizes[0]);
    // and removed again: back to the standard series, the same line
    m.set_label_overrides(Reporter::Source, &MetricTags::default());
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let lines = family(&text, "istio_requests_total{");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].ends_with(" 3"), "{}", lines[0]);
}

#[test]
fn tag_overrides_of_tcp_metrics_are_evaluated_when_the_connection_opens() {
    let m = IstioMetrics::new(local());
    m.set_label_overrides(
        Reporter::Source,
        &overrides(
            &[IstioMetric::TcpSentBytes, IstioMetric::TcpOpenedConnections],
            &[
                ("response_flags", None),
                ("upstream_cluster", Some("xds.cluster_name")),
                ("upstream_ip", Some("upstream.address")),
                ("response_code", Some("'ignored: not a TCP label'")),
            ],
        ),
    );
    let up = upstream(false);
    let host: Arc<str> = "reviews.bookinfo.svc.cluster.local".into();
    for _ in 0..2 {
        let c = m.tcp_open(&TcpPeer {
            upstream: Some(&up),
            service: Some(&host),
            flags: ResponseFlags::empty(),
        });
        c.add(3, 4);
    }
    let text = m.encode_to_string();
    let sent = family(&text, "istio_tcp_sent_bytes_total{");
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert!(sent[0].ends_with(" 8"), "{}", sent[0]);
    assert!(
        sent[0].contains(
            r#",upstream_cluster="outbound|9080|v2|reviews.bookinfo.svc.cluster.local",upstream_ip="10.0.0.7:9080"}"#
        ),
        "{}",
        sent[0]
    );
    assert!(!sent[0].contains("response_flags") && !sent[0].contains("response_code"));
    let opened = family(&text, "istio_tcp_connections_opened_total{");
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert!(opened[0].ends_with(" 2") && opened[0].contains("upstream_cluster"));
    // the others: standard labels, counted once per connection
    let received = family(&text, "istio_tcp_received_bytes_total{");
    assert_eq!(received.len(), 1, "{received:#?}");
    assert!(received[0].ends_with(" 6") && received[0].contains("response_flags=\"-\""));
    let closed = family(&text, "istio_tcp_connections_closed_total{");
    assert!(closed[0].ends_with(" 2") && !closed[0].contains("upstream_cluster"));
}

/// The sum of the samples of `family` (`istio_requests_total{`) in `text`.
fn total(text: &str, family: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_reload_between_the_mask_and_the_rules_loses_no_request() {
    // the rules in force override other metrics than the mask the request read: each metric
    // is still counted once, with the labels the rules in force give it
    let m = IstioMetrics::new(local());
    let remove = [("grpc_response_status", None)];
    m.set_label_overrides(
        Reporter::Source,
        &overrides(&[IstioMetric::RequestCount], &remove),
    );
    let b = labels::LabelRules::new(&overrides(&[IstioMetric::RequestSize], &remove), |_| 99);
    m.label_rules[Reporter::Source as usize].store(Some(Arc::new(b)));
    let up = upstream(false);
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    for family in [
        "istio_requests_total{",
        "istio_request_duration_milliseconds_count{",
        "istio_request_bytes_count{",
        "istio_response_bytes_count{",
    ] {
        assert_eq!(total(&text, family), 1, "{family}: {text}");
    }
    let sizes = family(&text, "istio_request_bytes_count{");
    assert!(!sizes[0].contains("grpc_response_status"), "{}", sizes[0]);
    let count = family(&text, "istio_requests_total{");
    assert!(count[0].contains("grpc_response_status"), "{}", count[0]);
}

#[test]
fn a_removed_label_s_values_share_one_series_under_the_cap() {
    // removing a label is how an operator cuts series: the values it had are one series,
    // counted once against the cap
    let m = IstioMetrics::new(local());
    m.set_label_overrides(
        Reporter::Source,
        &overrides(
            &[
                IstioMetric::RequestCount,
                IstioMetric::RequestDuration,
                IstioMetric::RequestSize,
                IstioMetric::ResponseSize,
            ],
            &[("response_code", None)],
        ),
    );
    let up = upstream(false);
    for code in [200, 201, 204, 301, 404, 500, 502, 503] {
        Req::new(code, routed(Some(&up))).record(&m, Reporter::Source);
    }
    let text = m.encode_to_string();
    let lines = family(&text, "istio_requests_total{");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].ends_with(" 8") && !lines[0].contains("response_code"));
    assert_eq!(m.series(), 1, "{text}");
}

#[test]
fn a_label_with_an_empty_value_and_its_removal_are_one_series() {
    // Prometheus takes `grpc_response_status=""` for no such label: the series from before
    // a reload that removed it and the one after are one line (Istio's task removes it)
    let m = IstioMetrics::new(local());
    let up = upstream(false);
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    m.set_label_overrides(
        Reporter::Source,
        &overrides(
            &[IstioMetric::RequestCount],
            &[("grpc_response_status", None)],
        ),
    );
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let lines = family(&text, "istio_requests_total{");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].ends_with(" 2"), "{}", lines[0]);
}

#[test]
fn every_label_removed_leaves_the_bucket_bound_alone() {
    let m = IstioMetrics::new(local());
    let all: Vec<(&str, Option<&str>)> = mesh_core::telemetry::STANDARD_LABELS
        .iter()
        .map(|n| (*n, None))
        .collect();
    m.set_label_overrides(
        Reporter::Source,
        &overrides(&[IstioMetric::RequestDuration], &all),
    );
    Req::new(200, routed(None)).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    assert!(
        text.contains("istio_request_duration_milliseconds_bucket{le=\"0.5\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("istio_request_duration_milliseconds_count{} 1\n"),
        "{text}"
    );
}

#[test]
fn connection_mtls_is_the_downstream_s_on_tcp_as_on_http() {
    // Envoy's `connection.mtls` is the downstream connection's: false on the outbound side,
    // whose mTLS is its upstream's
    let m = IstioMetrics::new(local());
    m.set_label_overrides(
        Reporter::Source,
        &overrides(
            &[IstioMetric::TcpOpenedConnections],
            &[("mtls", Some("connection.mtls"))],
        ),
    );
    let up = upstream(true);
    let host: Arc<str> = "reviews.bookinfo.svc.cluster.local".into();
    drop(m.tcp_open(&TcpPeer {
        upstream: Some(&up),
        service: Some(&host),
        flags: ResponseFlags::empty(),
    }));
    let text = m.encode_to_string();
    let opened = family(&text, "istio_tcp_connections_opened_total{");
    assert!(opened[0].contains(",mtls=\"false\"}"), "{}", opened[0]);
    assert!(
        opened[0].contains("connection_security_policy=\"unknown\""),
        "{}",
        opened[0]
    );
}

/// The labels Istio's stats filter gives the message counts: up to `destination_cluster`
/// (istio/proxy's `testdata/metric/client_request_messages.yaml.tmpl`).
const NOT_ON_MESSAGES: [&str; 5] = [
    "request_protocol=",
    "response_code=",
    "grpc_response_status=",
    "response_flags=",
    "connection_security_policy=",
];

#[test]
fn a_grpc_call_s_messages_have_the_peer_s_labels_only_as_istio_s() {
    // istio_request_messages_total / istio_response_messages_total: the reporter and the
    // peer's labels, whatever the call's answer; turned off as any standard metric
    let m = IstioMetrics::new(local());
    let up = upstream(false);
    let mut call = Req::new(200, routed(Some(&up)));
    call.grpc = Some(0);
    call.messages = (3, 2);
    call.record(&m, Reporter::Source);
    let mut failed = Req::new(200, routed(Some(&up)));
    failed.grpc = Some(14);
    failed.messages = (3, 2);
    failed.record(&m, Reporter::Source);
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let sent = family(&text, "istio_request_messages_total{");
    let got = family(&text, "istio_response_messages_total{");
    assert_eq!((sent.len(), got.len()), (1, 1), "{text}");
    assert!(sent[0].ends_with(" 6") && got[0].ends_with(" 4"), "{text}");
    let requests = requests_line(&text, &["grpc_response_status=\"14\""]).expect(&text);
    let (request_labels, _) = requests.split_once("} ").unwrap();
    let (labels, _) = sent[0].split_once("} ").unwrap();
    for l in NOT_ON_MESSAGES {
        assert!(!labels.contains(l), "{l} in {labels}");
    }
    // the request series' labels up to destination_cluster, in Istio's order
    let until = request_labels.find(",connection_security_policy=").unwrap();
    assert_eq!(
        labels.trim_start_matches("istio_request_messages_total{"),
        request_labels[..until].trim_start_matches("istio_requests_total{")
    );
    assert!(
        labels.ends_with(r#",destination_cluster="unknown""#),
        "{labels}"
    );
    let mut off = MetricSet::ALL;
    off = MetricSet::from_bits(off.bits() & !MetricSet::bit(IstioMetric::GrpcRequestMessages));
    m.set_enabled(Reporter::Source, off);
    call.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    assert!(
        family(&text, "istio_request_messages_total{").is_empty(),
        "{text}"
    );
    assert!(family(&text, "istio_response_messages_total{")[0].ends_with(" 6"));
    // overridden as the others (ALL_METRICS reaches them): a label the messages do not
    // have is neither removed nor set (Istio's `overrideTags` goes over the metric's own)
    m.set_enabled(Reporter::Source, MetricSet::ALL);
    m.set_label_overrides(
        Reporter::Source,
        &overrides(
            &[IstioMetric::GrpcRequestMessages],
            &[
                ("source_app", None),
                ("response_code", Some("'x'")),
                ("method", Some("'Get'")),
            ],
        ),
    );
    call.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let sent = family(&text, "istio_request_messages_total{");
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let over = sent
        .iter()
        .find(|l| !l.contains("source_app"))
        .expect(&text);
    assert!(over.ends_with(r#",method="Get"} 3"#), "{over}");
    assert!(!over.contains("response_code"), "{over}");
}

#[test]
fn an_open_call_s_reports_add_what_is_new_and_its_end_the_rest() {
    // Istio's stats filter adds a stream's messages every reporting interval: each report
    // adds what the earlier ones did not, the end the rest
    let m = Arc::new(IstioMetrics::new(local()));
    let up = upstream(false);
    let mut call = Req::new(200, routed(Some(&up)));
    call.grpc = None; // not answered yet: no status
    call.status = None;
    call.messages = (2, 1);
    call.progress(&m, Reporter::Source);
    let count = |m: &IstioMetrics, family_name: &str| -> Vec<String> {
        family(&m.encode_to_string(), family_name)
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().1.to_owned())
            .collect()
    };
    assert_eq!(count(&m, "istio_request_messages_total{"), ["2"]);
    assert_eq!(count(&m, "istio_response_messages_total{"), ["1"]);
    assert!(
        family(&m.encode_to_string(), "istio_requests_total{").is_empty(),
        "an open call is not a request yet"
    );
    call.reported = (2, 1);
    call.messages = (5, 1);
    call.progress(&m, Reporter::Source);
    assert_eq!(count(&m, "istio_request_messages_total{"), ["5"]);
    call.reported = (5, 1);
    call.messages = (5, 4);
    call.status = Some(200);
    call.grpc = Some(0);
    call.record(&m, Reporter::Source);
    assert_eq!(count(&m, "istio_request_messages_total{"), ["5"]);
    assert_eq!(count(&m, "istio_response_messages_total{"), ["4"]);
    assert_eq!(count(&m, "istio_requests_total{"), ["1"]);
    // the sink asks for reports at the reporting interval, while a message count is made
    let sink = m.sink(Reporter::Source);
    assert_eq!(sink.progress_interval(), Some(Duration::from_secs(5)));
    m.set_tcp_reporting_interval(Duration::from_millis(100));
    assert_eq!(sink.progress_interval(), Some(Duration::from_millis(100)));
    let only_requests = MetricSet::from_bits(MetricSet::bit(IstioMetric::RequestCount));
    m.set_enabled(Reporter::Source, only_requests);
    assert_eq!(sink.progress_interval(), None);
}

#[test]
fn a_reload_between_an_open_call_s_reports_loses_and_doubles_nothing() {
    // reports under overrides, then a reload back to Istio's labels: each report adds what
    // is new to the label set in force, and the sets sum to the call's counts
    let m = Arc::new(IstioMetrics::new(local()));
    let both = [
        IstioMetric::GrpcRequestMessages,
        IstioMetric::GrpcResponseMessages,
    ];
    m.set_label_overrides(
        Reporter::Source,
        &overrides(&both, &[("destination_app", None)]),
    );
    let up = upstream(false);
    let mut call = Req::new(200, routed(Some(&up)));
    call.grpc = Some(0);
    call.messages = (4, 1);
    call.progress(&m, Reporter::Source);
    m.set_label_overrides(Reporter::Source, &MetricTags::default());
    call.reported = (4, 1);
    call.messages = (6, 3);
    call.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let sent = family(&text, "istio_request_messages_total{");
    assert_eq!(sent.len(), 2, "{text}");
    let over = sent
        .iter()
        .find(|l| !l.contains("destination_app"))
        .unwrap();
    let standard = sent.iter().find(|l| l.contains("destination_app")).unwrap();
    assert!(
        over.ends_with(" 4") && standard.ends_with(" 2"),
        "{sent:#?}"
    );
    let got = family(&text, "istio_response_messages_total{");
    let total: u64 = got
        .iter()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 3, "{got:#?}");
}

#[test]
fn the_message_counts_a_thread_keeps_at_hand_are_its_registry_s_and_its_peer_s() {
    // one thread, two registries, alternating calls of the same peer: each registry counts
    // its own (the peer's identity at hand holds its registry's local workload)
    let (a, b) = (
        Arc::new(IstioMetrics::new(local())),
        Arc::new(IstioMetrics::new(local())),
    );
    let (plain, mtls) = (upstream(false), upstream(true));
    let mut call = Req::new(200, routed(Some(&plain)));
    call.grpc = Some(0);
    call.messages = (2, 1);
    for _ in 0..3 {
        call.record(&a, Reporter::Source);
        call.progress(&b, Reporter::Source);
    }
    call.record(&a, Reporter::Source);
    for (m, count) in [(&a, " 8"), (&b, " 6")] {
        let text = m.encode_to_string();
        let sent = family(&text, "istio_request_messages_total{");
        assert!(sent.len() == 1 && sent[0].ends_with(count), "{text}");
    }
    // one registry: peers (a plain and an mTLS endpoint, another service, the inbound
    // side) alternating on the thread, each its own set
    let m = Arc::new(IstioMetrics::new(local()));
    let mut secure = Req::new(200, routed(Some(&mtls)));
    secure.grpc = Some(0);
    secure.messages = (3, 1);
    let mut other = Req::new(200, Recorded::default());
    other.authority = Some("ratings:9080");
    other.grpc = Some(0);
    other.messages = (5, 5);
    for _ in 0..4 {
        call.record(&m, Reporter::Source);
        other.record(&m, Reporter::Source);
        secure.progress(&m, Reporter::Source);
        call.record(&m, Reporter::Destination);
    }
    let text = m.encode_to_string();
    let lines = family(&text, "istio_request_messages_total{");
    assert_eq!(lines.len(), 4, "{text}");
    for (want, count) in [
        (
            r#"destination_principal="unknown",destination_app="reviews""#,
            " 8",
        ),
        (
            r#"destination_principal="spiffe://cluster.local/ns/bookinfo/sa/reviews""#,
            " 12",
        ),
        (r#"destination_service="ratings:9080""#, " 20"),
        (r#"reporter="destination""#, " 8"),
    ] {
        let found: Vec<_> = lines.iter().filter(|l| l.contains(want)).collect();
        assert!(
            found.len() == 1 && found[0].ends_with(count),
            "{want}: {lines:#?}"
        );
    }
    // a reload of the local workload: the calls from then on have its labels
    let mut reloaded = local();
    reloaded.name = "productpage-v2".into();
    m.set_local(reloaded);
    call.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let line = family(&text, "istio_request_messages_total{")
        .into_iter()
        .find(|l| l.contains(r#"source_workload="productpage-v2""#))
        .expect(&text);
    assert!(line.ends_with(" 2"), "{line}");
}

/// The two gRPC message metrics alone.
fn messages_only() -> MetricSet {
    MetricSet::from_bits(
        MetricSet::bit(IstioMetric::GrpcRequestMessages)
            | MetricSet::bit(IstioMetric::GrpcResponseMessages),
    )
}

#[test]
fn a_side_without_request_metrics_counts_a_call_s_messages_and_its_drop() {
    // the request series off: the messages still go to the peer's set (through the
    // thread's slots), and a call's end the cap refuses is the one dropped request
    let m = Arc::new(IstioMetrics::new(local()).with_max_series(1));
    m.set_enabled(Reporter::Source, messages_only());
    let up = upstream(false);
    let mut call = Req::new(200, routed(Some(&up)));
    call.grpc = Some(0);
    call.messages = (2, 1);
    call.record(&m, Reporter::Source);
    call.record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let sent = family(&text, "istio_request_messages_total{");
    let got = family(&text, "istio_response_messages_total{");
    assert!(sent.len() == 1 && sent[0].ends_with(" 4"), "{text}");
    assert!(got.len() == 1 && got[0].ends_with(" 2"), "{text}");
    assert!(family(&text, "istio_requests_total{").is_empty(), "{text}");
    assert_eq!((m.series(), m.dropped()), (1, 0));
    let mut other = Req::new(200, Recorded::default());
    other.authority = Some("ratings:9080");
    other.grpc = Some(0);
    other.messages = (1, 1);
    other.progress(&m, Reporter::Source);
    assert_eq!(m.dropped(), 0, "a report of an open call is not a drop");
    other.record(&m, Reporter::Source);
    assert_eq!((m.series(), m.dropped()), (1, 1));
}

#[test]
fn a_call_beyond_the_cap_is_one_dropped_request_however_many_of_its_sets_are_refused() {
    // a peer known from a plain request, then only the message metrics, one of them
    // overridden: the call's end is refused its overridden set and its standard set, and
    // counts one dropped request
    let m = Arc::new(IstioMetrics::new(local()).with_max_series(1));
    let up = upstream(false);
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    assert_eq!((m.series(), m.dropped()), (1, 0));
    m.set_enabled(Reporter::Source, messages_only());
    m.set_label_overrides(
        Reporter::Source,
        &overrides(&[IstioMetric::GrpcRequestMessages], &[("source_app", None)]),
    );
    let mut call = Req::new(200, routed(Some(&up)));
    call.grpc = Some(0);
    call.messages = (3, 3);
    call.record(&m, Reporter::Source);
    assert_eq!((m.series(), m.dropped()), (1, 1));
    let text = m.encode_to_string();
    assert!(
        family(&text, "istio_request_messages_total{").is_empty(),
        "{text}"
    );
    assert!(
        family(&text, "istio_response_messages_total{").is_empty(),
        "{text}"
    );
}

#[test]
fn message_label_sets_count_against_the_cap_and_open_call_reports_are_not_drops() {
    // each label set of the message counts is a series under the cap; an open call's
    // reports beyond it are not counted dropped, its end is
    let m = Arc::new(IstioMetrics::new(local()).with_max_series(1));
    let up = upstream(false);
    let mut call = Req::new(200, routed(Some(&up)));
    call.grpc = Some(0);
    call.messages = (2, 2);
    call.progress(&m, Reporter::Source);
    assert_eq!(
        (m.series(), m.dropped()),
        (1, 0),
        "the message set is the one series"
    );
    call.progress(&m, Reporter::Source);
    call.record(&m, Reporter::Source);
    // the request's own series is refused: one request dropped
    assert_eq!((m.series(), m.dropped()), (1, 1));
    let text = m.encode_to_string();
    assert!(family(&text, "istio_requests_total{").is_empty(), "{text}");
    // another peer's call: its message set refused, its reports not counted, its end once
    let other = upstream(true);
    let mut second = Req::new(200, routed(Some(&other)));
    second.peer = None;
    second.grpc = Some(0);
    second.messages = (1, 1);
    second.authority = Some("other:9080");
    second.progress(&m, Reporter::Source);
    second.progress(&m, Reporter::Source);
    assert_eq!(m.dropped(), 1, "reports of an open call are not drops");
}

#[test]
fn istio_s_peer_metadata_is_the_endpoint_s_configuration() {
    // Istio's task adds `destination_x: upstream_peer.labels['app']` (its page writes a
    // trailing `.value`, which Istio's CEL refuses too): here the endpoint's labels
    let m = IstioMetrics::new(local());
    m.set_label_overrides(
        Reporter::Source,
        &overrides(
            &[IstioMetric::RequestCount],
            &[
                ("destination_x", Some("upstream_peer.labels['app']")),
                (
                    "peer",
                    Some("upstream_peer.workload + '.' + upstream_peer.namespace"),
                ),
            ],
        ),
    );
    let up = upstream(false);
    Req::new(200, routed(Some(&up))).record(&m, Reporter::Source);
    let text = m.encode_to_string();
    let line = requests_line(&text, &[]).expect(&text);
    assert!(
        line.contains(r#",destination_x="reviews",peer="reviews-v2.bookinfo"}"#),
        "{line}"
    );
}
