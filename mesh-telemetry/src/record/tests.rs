use std::convert::Infallible;
use std::sync::Mutex;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full, StreamBody};
use mesh_core::ext::{RouteDecision, RouteDestination, RoutePolicy, SelectedEndpoint, local_reply};
use tower::{ServiceBuilder, ServiceExt};

use super::*;

/// What a sink saw, owned.
#[derive(Debug, Clone)]
struct Seen {
    how: End,
    status: Option<u16>,
    flags: String,
    grpc: bool,
    grpc_status: Option<u32>,
    request_bytes: u64,
    response_bytes: u64,
    host: Option<String>,
    dest: Option<String>,
    endpoint: Option<SocketAddr>,
    attempts: u32,
    first_byte: bool,
    trace: bool,
    messages: (u64, u64),
}

#[derive(Default)]
struct Log(Mutex<Vec<Seen>>);

impl Sink for Log {
    fn complete(&self, c: &Completed<'_>) {
        self.0.lock().unwrap().push(Seen {
            how: c.how,
            status: c.status.map(|s| s.as_u16()),
            flags: c.flags.to_string(),
            grpc: c.grpc,
            grpc_status: c.grpc_status,
            request_bytes: c.request_bytes,
            response_bytes: c.response_bytes,
            host: c.authority.map(str::to_owned),
            dest: c.info.destination.as_ref().map(|d| d.host.to_string()),
            endpoint: c.info.endpoint().map(|e| e.addr),
            attempts: c.info.attempts,
            first_byte: c.details.is_some_and(|d| d.first_byte.is_some()),
            trace: c.trace.is_some(),
            messages: (c.request_messages, c.response_messages),
        });
    }
}

impl Log {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn layer(log: &Arc<Log>) -> RecordLayer {
    RecordLayer::new(vec![log.clone() as Arc<dyn Sink>])
}

fn decision(host: &str) -> RouteDecision {
    RouteDecision {
        dest: RouteDestination {
            host: host.into(),
            subset: None,
            port: Some(80),
        },
        policy: Arc::new(RoutePolicy::default()),
    }
}

#[tokio::test]
async fn reports_once_at_the_end_of_the_body_with_what_the_layers_recorded() {
    let log = Arc::new(Log::default());
    let svc = ServiceBuilder::new().layer(layer(&log)).service_fn(
        |req: Request<Full<Bytes>>| async move {
            // what the router and the balancer do when a StreamInfo is present
            let info = mesh_core::ext::stream_info(req.extensions()).unwrap();
            info.set_route(&decision("reviews.default.svc.cluster.local"));
            info.set_endpoint(&SelectedEndpoint::new("10.0.0.1:80".parse().unwrap()));
            info.set_endpoint(&SelectedEndpoint::new("10.0.0.2:80".parse().unwrap()));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        },
    );
    let req = Request::builder()
        .header("host", "reviews")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert!(log.take().is_empty(), "nothing before the body ends");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    let seen = log.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let s = &seen[0];
    assert_eq!(
        (s.how, s.status, s.flags.as_str()),
        (End::Complete, Some(200), "-")
    );
    assert_eq!(s.host.as_deref(), Some("reviews"));
    assert_eq!(s.dest.as_deref(), Some("reviews.default.svc.cluster.local"));
    assert_eq!(
        s.endpoint,
        Some("10.0.0.2:80".parse().unwrap()),
        "the last attempt's"
    );
    assert_eq!(s.attempts, 2);
    assert!(s.first_byte && !s.trace && !s.grpc);
    // head ("GET / HTTP/1.1\r\n" + "host: reviews\r\n" + "\r\n") and the 3 body bytes
    assert_eq!(s.request_bytes, 16 + 15 + 2 + 3);
    // "HTTP/1.1 200 OK\r\n" + "\r\n" and the 5 body bytes
    assert_eq!(s.response_bytes, 17 + 2 + 5);
}

#[tokio::test]
async fn a_local_reply_carries_its_flags_and_an_empty_body_reports_at_once() {
    let log = Arc::new(Log::default());
    let svc =
        ServiceBuilder::new()
            .layer(layer(&log))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(local_reply::<Full<Bytes>>(
                    http::StatusCode::NOT_FOUND,
                    ResponseFlags::NO_ROUTE,
                    "",
                ))
            });
    let _res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    let seen = log.take();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].status, seen[0].flags.as_str()), (Some(404), "NR"));
    assert!(seen[0].dest.is_none() && seen[0].attempts == 0);
}

#[tokio::test]
async fn grpc_status_from_trailers_and_protocol_from_content_type() {
    let log = Arc::new(Log::default());
    let svc =
        ServiceBuilder::new()
            .layer(layer(&log))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("14"));
                let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                    Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                    Ok(Frame::trailers(trailers)),
                ];
                Ok::<_, Infallible>(Response::new(StreamBody::new(futures_iter(frames))))
            });
    let req = Request::builder()
        .header("content-type", "application/grpc+proto")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    let seen = log.take();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].grpc);
    assert_eq!(seen[0].grpc_status, Some(14));
}

#[tokio::test]
async fn a_grpc_call_s_messages_are_counted_each_way() {
    // the response's messages as they go by, split across frames; the request's as the
    // connector noted them into the record
    let log = Arc::new(Log::default());
    let svc = ServiceBuilder::new().layer(layer(&log)).service_fn(
        |req: Request<Full<Bytes>>| async move {
            // as the connector: a gRPC call's messages only
            if mesh_core::grpc::is_grpc_request(&req)
                && let Some(info) = mesh_core::ext::stream_info(req.extensions())
            {
                info.note_request_messages(3);
            }
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02h"))),
                Ok(Frame::data(Bytes::from_static(b"i\0\0\0"))),
                Ok(Frame::data(Bytes::from_static(b"\0\0"))),
            ];
            Ok::<_, Infallible>(Response::new(StreamBody::new(futures_iter(frames))))
        },
    );
    for (content_type, want) in [("application/grpc", (3, 2)), ("text/plain", (0, 0))] {
        let req = Request::builder()
            .method("POST")
            .header("content-type", content_type)
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
        let seen = log.take();
        assert_eq!(seen[0].messages, want, "{content_type}");
    }
}

#[tokio::test]
async fn a_body_dropped_right_after_its_trailers_is_complete_not_dc() {
    // hyper's HTTP/2 server and tonic's client stop polling after the trailers frame
    let log = Arc::new(Log::default());
    let svc =
        ServiceBuilder::new()
            .layer(layer(&log))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                    Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                    Ok(Frame::trailers(trailers)),
                ];
                Ok::<_, Infallible>(Response::new(StreamBody::new(futures_iter(frames))))
            });
    let req = Request::builder()
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    let data = body.frame().await.unwrap().unwrap();
    assert!(data.is_data());
    let trailers = body.frame().await.unwrap().unwrap();
    assert!(trailers.is_trailers());
    drop(body);
    let seen = log.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].how, End::Complete);
    assert_eq!(seen[0].flags, "-");
    assert_eq!(seen[0].grpc_status, Some(0));
}

#[tokio::test]
async fn a_grpc_status_in_the_answer_to_a_plain_http_request_is_not_read() {
    let log = Arc::new(Log::default());
    let svc =
        ServiceBuilder::new()
            .layer(layer(&log))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                let mut res = Response::new(Full::<Bytes>::default());
                res.headers_mut()
                    .insert("grpc-status", HeaderValue::from_static("14"));
                Ok::<_, Infallible>(res)
            });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    res.into_body().collect().await.unwrap();
    let seen = log.take();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].grpc);
    assert_eq!(seen[0].grpc_status, None);
}

#[tokio::test]
async fn a_response_dropped_before_its_end_is_reported_as_dropped_with_dc() {
    let log = Arc::new(Log::default());
    let svc =
        ServiceBuilder::new()
            .layer(layer(&log))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                    vec![Ok(Frame::data(Bytes::from_static(b"a")))];
                Ok::<_, Infallible>(Response::new(StreamBody::new(futures_iter(frames))))
            });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    drop(res);
    let seen = log.take();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].how, seen[0].status), (End::Dropped, Some(200)));
    assert_eq!(seen[0].flags, "DC");
}

#[tokio::test]
async fn an_error_of_the_inner_service_is_reported_without_a_status() {
    let log = Arc::new(Log::default());
    let svc =
        ServiceBuilder::new()
            .layer(layer(&log))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, _>("refused")
            });
    assert!(svc.oneshot(Request::new(Full::default())).await.is_err());
    let seen = log.take();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].how, seen[0].status), (End::Error, None));
    assert!(!seen[0].first_byte);
}

#[tokio::test]
async fn without_sinks_nothing_is_recorded_and_no_stream_info_is_inserted() {
    let svc = ServiceBuilder::new()
        .layer(RecordLayer::new(Vec::new()))
        .service_fn(|req: Request<Full<Bytes>>| async move {
            assert!(mesh_core::ext::stream_info(req.extensions()).is_none());
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        });
    svc.oneshot(Request::new(Full::default())).await.unwrap();
}

#[tokio::test]
async fn the_trace_layer_outside_hands_its_context_to_the_record() {
    let log = Arc::new(Log::default());
    let svc = ServiceBuilder::new()
        .layer(crate::TraceLayer::new(
            crate::TraceConfig::default().with_seed(1),
        ))
        .layer(layer(&log))
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        });
    svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert!(log.take()[0].trace);
}

/// What a sink of a fixed [`Interest`] saw of each call: the request's details, owned.
type Saw = Option<(String, String, Option<String>, Option<String>, bool)>;

/// A sink of a fixed interest (or, with `sampled_only`, interested in sampled requests
/// only), keeping the details of each call.
struct Fixed {
    interest: Interest,
    sampled_only: bool,
    calls: Mutex<Vec<Saw>>,
}

impl Fixed {
    fn new(interest: Interest) -> Arc<Fixed> {
        Arc::new(Fixed {
            interest,
            sampled_only: false,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn take(&self) -> Vec<Saw> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Sink for Fixed {
    fn interest(&self, trace: Option<&TraceContext>) -> Interest {
        if self.sampled_only && !trace.is_some_and(|t| t.sampled) {
            return Interest::Nothing;
        }
        self.interest
    }

    fn complete(&self, c: &Completed<'_>) {
        let owned = |v: &Option<HeaderValue>| v.as_ref().map(|v| v.to_str().unwrap().to_owned());
        self.calls.lock().unwrap().push(c.details.map(|d| {
            (
                d.method.to_string(),
                d.uri.to_string(),
                owned(&d.request_id),
                owned(&d.user_agent),
                d.first_byte.is_some(),
            )
        }));
    }
}

fn detailed_request() -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri("/reviews/1?x=1")
        .header("host", "reviews")
        .header("user-agent", "curl/8")
        .header("x-request-id", "r-1")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap()
}

async fn send_through(sinks: Vec<Arc<dyn Sink>>, req: Request<Full<Bytes>>) -> bool {
    let svc = ServiceBuilder::new()
        .layer(RecordLayer::new(sinks))
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let recorded = mesh_core::ext::stream_info(req.extensions()).is_some();
            let mut res = Response::new(Full::new(Bytes::from_static(b"hello")));
            res.extensions_mut().insert(recorded);
            Ok::<_, Infallible>(res)
        });
    let res = svc.oneshot(req).await.unwrap();
    let recorded = res.extensions().get::<bool>().copied().unwrap();
    res.into_body().collect().await.unwrap();
    recorded
}

#[tokio::test]
async fn details_are_captured_only_when_a_sink_reads_them() {
    // Istio's metrics read the outcome only: no copy of the method, URI or headers, no
    // clock read for the time to first byte
    let outcome = Fixed::new(Interest::Outcome);
    assert!(send_through(vec![outcome.clone()], detailed_request()).await);
    assert_eq!(outcome.take(), [None]);

    // beside an access log, every sink of the request sees them
    let (outcome, log) = (Fixed::new(Interest::Outcome), Fixed::new(Interest::Details));
    send_through(vec![outcome.clone(), log.clone()], detailed_request()).await;
    let want = Some((
        "POST".to_owned(),
        "/reviews/1?x=1".to_owned(),
        Some("r-1".to_owned()),
        Some("curl/8".to_owned()),
        true,
    ));
    assert_eq!(log.take(), std::slice::from_ref(&want));
    assert_eq!(outcome.take(), [want]);
}

#[tokio::test]
async fn a_sink_interested_in_nothing_is_not_called_and_with_none_interested_nothing_is_recorded() {
    let (off, on) = (Fixed::new(Interest::Nothing), Fixed::new(Interest::Outcome));
    assert!(send_through(vec![off.clone(), on.clone()], detailed_request()).await);
    assert_eq!((off.take().len(), on.take().len()), (0, 1));

    // no sink interested: the request is passed on as without sinks
    let off = Fixed::new(Interest::Nothing);
    assert!(!send_through(vec![off.clone(), off.clone()], detailed_request()).await);
    assert!(off.take().is_empty());
}

#[tokio::test]
async fn a_sink_is_asked_with_the_trace_context_of_the_request() {
    for (percent, calls) in [(100.0, 1), (0.0, 0)] {
        let spans = Arc::new(Fixed {
            interest: Interest::Details,
            sampled_only: true,
            calls: Mutex::new(Vec::new()),
        });
        let svc = ServiceBuilder::new()
            .layer(crate::TraceLayer::new(
                crate::TraceConfig::default()
                    .with_seed(3)
                    .with_sampling_percent(percent),
            ))
            .layer(RecordLayer::new(vec![spans.clone() as Arc<dyn Sink>]))
            .service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            });
        svc.oneshot(detailed_request()).await.unwrap();
        assert_eq!(spans.take().len(), calls, "sampling {percent} %");
    }
}

/// What a details sink saw of the new fields, owned.
#[derive(Debug, Default, Clone, PartialEq)]
struct More {
    xff: Option<String>,
    xfp: Option<String>,
    tracestate: Option<String>,
    sni: Option<String>,
    tls: bool,
    request_body: Option<u64>,
    response_body: Option<u64>,
    request_head: u64,
    response_head: u64,
    connection: Option<mesh_core::stream_info::UpstreamConnection>,
    service_time: Option<std::time::Duration>,
    transport_failure: Option<&'static str>,
}

#[derive(Default)]
struct MoreLog(Mutex<Vec<More>>);

impl Sink for MoreLog {
    fn complete(&self, c: &Completed<'_>) {
        let owned = |v: &Option<HeaderValue>| v.as_ref().map(|v| v.to_str().unwrap().to_owned());
        let d = c.details.unwrap();
        self.0.lock().unwrap().push(More {
            xff: owned(&d.x_forwarded_for),
            xfp: owned(&d.x_forwarded_proto),
            tracestate: owned(&d.tracestate),
            sni: d.requested_server_name.as_deref().map(str::to_owned),
            tls: d.downstream_tls,
            request_body: c.request_body_bytes(),
            response_body: c.response_body_bytes(),
            request_head: d.request_head_bytes,
            response_head: d.response_head_bytes,
            connection: c.info.connection,
            service_time: c.upstream_service_time(),
            transport_failure: d.upstream_transport_failure_reason,
        });
    }
}

/// A service that records an upstream connection the way the connector does (when the
/// record asks for it), waits 20 ms, and answers `hello` with trailers.
async fn connector_like(
    req: Request<Full<Bytes>>,
) -> Result<
    Response<
        StreamBody<
            futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
        >,
    >,
    Infallible,
> {
    let info = mesh_core::ext::stream_info(req.extensions()).unwrap();
    info.set_endpoint(&SelectedEndpoint::new("10.0.0.7:9080".parse().unwrap()));
    if info.wants_connection() {
        info.set_connection(mesh_core::stream_info::UpstreamConnection {
            local: Some("10.0.0.1:40000".parse().unwrap()),
            tls: true,
            sent: Instant::now(),
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut res = Response::new(StreamBody::new(futures_iter(frames)));
    res.headers_mut()
        .insert("x-backend", HeaderValue::from_static("v1"));
    Ok(res)
}

#[tokio::test]
async fn details_carry_the_forwarding_headers_sni_tls_head_sizes_and_upstream_connection() {
    let log = Arc::new(MoreLog::default());
    let svc = ServiceBuilder::new()
        .layer(
            RecordLayer::new(vec![log.clone() as Arc<dyn Sink>])
                .with_downstream_tls(|ext| ext.get::<&'static str>() == Some(&"tls")),
        )
        .service_fn(connector_like);
    let mut req = Request::builder()
        .method("POST")
        .uri("/r?x=1")
        .header("host", "reviews")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-forwarded-proto", "https")
        .header("tracestate", "congo=t61rcWkgMzE")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    req.extensions_mut().insert("tls");
    req.extensions_mut()
        .insert(ConnectionSni(Arc::from("outbound_.9080_._.reviews")));
    let res = svc.oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    let seen = log.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let m = &seen[0];
    assert_eq!(m.xff.as_deref(), Some("10.1.2.3"), "the first field");
    assert_eq!(m.xfp.as_deref(), Some("https"));
    assert_eq!(m.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    assert_eq!(m.sni.as_deref(), Some("outbound_.9080_._.reviews"));
    assert!(m.tls);
    // "POST /r?x=1 HTTP/1.1\r\n" + the fields (name: value\r\n each) + "\r\n"
    let fields = 15 + 27 + 27 + 26 + 31;
    assert_eq!(m.request_head, 22 + fields + 2);
    assert_eq!(m.request_body, Some(3));
    // "HTTP/1.1 200 OK\r\n" + "x-backend: v1\r\n" + "\r\n", and the trailers
    assert_eq!(m.response_head, 17 + 15 + 2 + 17);
    assert_eq!(
        m.response_body,
        Some(5),
        "the body without head nor trailers"
    );
    let conn = m.connection.unwrap();
    assert_eq!(conn.local, Some("10.0.0.1:40000".parse().unwrap()));
    assert!(conn.tls);
    let t = m.service_time.unwrap();
    assert!(t >= std::time::Duration::from_millis(20), "{t:?}");
}

#[tokio::test]
async fn without_a_probe_an_sni_or_peer_identity_says_tls_and_plaintext_is_not() {
    let log = Arc::new(MoreLog::default());
    let svc = ServiceBuilder::new()
        .layer(RecordLayer::new(vec![log.clone() as Arc<dyn Sink>]))
        .service_fn(connector_like);
    let plain = Request::new(Full::default());
    svc.clone()
        .oneshot(plain)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let mut mtls = Request::new(Full::default());
    mtls.extensions_mut()
        .insert(PeerIdentity::new(mesh_core::identity::SpiffeId::new(
            "cluster.local",
            "default",
            "productpage",
        )));
    svc.oneshot(mtls)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let seen = log.0.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .map(|m| (m.tls, m.sni.clone()))
            .collect::<Vec<_>>(),
        [(false, None), (true, None)]
    );
    assert!(seen[0].xff.is_none() && seen[0].tracestate.is_none());
}

#[tokio::test]
async fn the_upstream_connection_is_asked_for_only_by_a_details_sink() {
    // Istio's metrics alone: the connector is not asked (no clock read for it)
    let outcome = Fixed::new(Interest::Outcome);
    let svc = ServiceBuilder::new()
        .layer(RecordLayer::new(vec![outcome.clone() as Arc<dyn Sink>]))
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let wants = mesh_core::ext::stream_info(req.extensions())
                .unwrap()
                .wants_connection();
            let mut res = Response::new(Full::<Bytes>::default());
            res.extensions_mut().insert(wants);
            Ok::<_, Infallible>(res)
        });
    let res = svc.clone().oneshot(detailed_request()).await.unwrap();
    assert_eq!(res.extensions().get::<bool>(), Some(&false));
    let details = Fixed::new(Interest::Details);
    let svc = ServiceBuilder::new()
        .layer(RecordLayer::new(vec![
            outcome.clone() as Arc<dyn Sink>,
            details.clone(),
        ]))
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let wants = mesh_core::ext::stream_info(req.extensions())
                .unwrap()
                .wants_connection();
            let mut res = Response::new(Full::<Bytes>::default());
            res.extensions_mut().insert(wants);
            Ok::<_, Infallible>(res)
        });
    let res = svc.oneshot(detailed_request()).await.unwrap();
    assert_eq!(res.extensions().get::<bool>(), Some(&true));
}

#[tokio::test]
async fn a_local_reply_has_no_upstream_service_time() {
    // no connection recorded (the request never went out): no service time
    let log = Arc::new(MoreLog::default());
    let svc = ServiceBuilder::new()
        .layer(RecordLayer::new(vec![log.clone() as Arc<dyn Sink>]))
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(local_reply::<Full<Bytes>>(
                http::StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::NO_HEALTHY_UPSTREAM,
                "no healthy upstream",
            ))
        });
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    res.into_body().collect().await.unwrap();
    let seen = log.0.lock().unwrap().clone();
    assert!(seen[0].connection.is_none() && seen[0].service_time.is_none());
    assert_eq!(seen[0].request_body, Some(0));
    assert_eq!(seen[0].response_body, Some(19), "\"no healthy upstream\"");
}

/// A stream of `frames`, ready at once.
fn futures_iter<T>(items: Vec<T>) -> futures_util::stream::Iter<std::vec::IntoIter<T>> {
    futures_util::stream::iter(items)
}

#[tokio::test]
async fn a_connect_failure_s_transport_failure_reason_is_in_the_details() {
    // the connector's `503 UF` after a failed TLS handshake carries why
    let log = Arc::new(MoreLog::default());
    let reply = |flags: ResponseFlags| {
        let mut res = local_reply::<Full<Bytes>>(
            http::StatusCode::SERVICE_UNAVAILABLE,
            flags,
            "upstream connect error",
        );
        res.extensions_mut()
            .insert(mesh_core::ext::TransportFailure(
                "TLS_error:|x:TLS_error_end",
            ));
        res
    };
    for flags in [
        ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
        // read only from a connect failure's answer
        ResponseFlags::NO_HEALTHY_UPSTREAM,
    ] {
        let svc = ServiceBuilder::new()
            .layer(RecordLayer::new(vec![log.clone() as Arc<dyn Sink>]))
            .service_fn(move |_req: Request<Full<Bytes>>| async move {
                Ok::<_, Infallible>(reply(flags))
            });
        let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let seen = log.0.lock().unwrap().clone();
    assert_eq!(
        seen[0].transport_failure,
        Some("TLS_error:|x:TLS_error_end")
    );
    assert_eq!(seen[1].transport_failure, None);
}

/// What a sink was handed: how, request messages, response messages, the messages
/// reported before.
type Report = (End, u64, u64, (u64, u64));

/// A sink asking for reports of open gRPC calls every `every`.
struct Progressing {
    every: Option<Duration>,
    seen: Mutex<Vec<Report>>,
    /// When each report came, in whole seconds of tokio's clock since the sink was made.
    at: Mutex<Vec<u64>>,
    made: tokio::time::Instant,
}

impl Progressing {
    fn new(every: Option<Duration>) -> Arc<Self> {
        Arc::new(Progressing {
            every,
            seen: Mutex::default(),
            at: Mutex::default(),
            made: tokio::time::Instant::now(),
        })
    }

    fn take(&self) -> Vec<Report> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// The seconds at which the reports since the last call came.
    fn times(&self) -> Vec<u64> {
        std::mem::take(&mut *self.at.lock().unwrap())
    }

    fn note(&self, c: &Completed<'_>) {
        let row = (
            c.how,
            c.request_messages,
            c.response_messages,
            c.messages_reported,
        );
        self.seen.lock().unwrap().push(row);
        let secs = self.made.elapsed().as_secs();
        self.at.lock().unwrap().push(secs);
    }
}

impl Sink for Progressing {
    fn complete(&self, c: &Completed<'_>) {
        self.note(c);
    }
    fn progress_interval(&self) -> Option<Duration> {
        self.every
    }
    fn progress(&self, c: &Completed<'_>) {
        self.note(c);
    }
}

type FrameTx = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

type Streaming = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    Response<http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>>,
    Infallible,
>;

/// A service answering a gRPC call once `head` is sent, with a body of the frames sent on
/// the returned channel, after noting 3 request messages (as the connector does).
fn streaming() -> (Streaming, tokio::sync::oneshot::Sender<()>, FrameTx) {
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let parts = Arc::new(Mutex::new(Some((head_rx, rx))));
    let svc = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let parts = parts.lock().unwrap().take();
        async move {
            if let Some(info) = mesh_core::ext::stream_info(req.extensions()) {
                info.note_request_messages(3);
            }
            let (head, mut rx) = parts.expect("one call");
            let _ = head.await;
            let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Ok::<_, Infallible>(Response::new(StreamBody::new(frames).boxed_unsync()))
        }
    });
    (Streaming::new(svc), head_tx, tx)
}

fn grpc_call() -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_open_grpc_call_is_reported_every_interval_with_its_counts_so_far() {
    // Istio's stats filter reports a gRPC stream's messages every reporting interval once
    // it knows the peer: from the record layer's timer, here once the head has come; an
    // interval without a new message is not reported; the end carries the rest
    let every = Duration::from_secs(5);
    let asks = Progressing::new(Some(every));
    let never = Progressing::new(None);
    let sinks: Vec<Arc<dyn Sink>> = vec![asks.clone(), never.clone()];
    let (svc, head, frames) = streaming();
    let svc = ServiceBuilder::new()
        .layer(RecordLayer::new(sinks).with_progress_reports(ReportsFrom::Head))
        .service(svc);
    let mut call = Box::pin(svc.oneshot(grpc_call()));
    // the head awaited (the answering endpoint not known for sure): no report at 5 s
    let waited = tokio::time::timeout(Duration::from_secs(6), call.as_mut()).await;
    assert!(waited.is_err(), "no head yet");
    assert!(asks.take().is_empty());
    head.send(()).unwrap();
    let res = call.await.unwrap();
    let mut body = res.into_body();
    // two messages at 6 s: a stream, whose report due at 5 s (an interval after the call's
    // start) is made at once, with the counts so far
    let two = Bytes::from_static(b"\0\0\0\0\x01a\0\0\0\0\x01b");
    frames.send(Ok(Frame::data(two))).await.unwrap();
    assert!(body.frame().await.is_some());
    // nothing new until 13 s: the 11 s report is not made
    let waited = tokio::time::timeout(Duration::from_secs(7), body.frame()).await;
    assert!(waited.is_err());
    assert_eq!(asks.take(), [(End::Open, 3, 2, (0, 0))]);
    assert_eq!(asks.times(), [6]);
    // a message at 13 s: the timer wakes the waiting body at 16 s (before the wait's end,
    // 18 s) for a report of what is new
    frames
        .send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01c"))))
        .await
        .unwrap();
    assert!(body.frame().await.is_some());
    let waited = tokio::time::timeout(Duration::from_secs(5), body.frame()).await;
    assert!(waited.is_err());
    assert_eq!(asks.take(), [(End::Open, 3, 3, (3, 2))]);
    assert_eq!(asks.times(), [16]);
    // the trailers: the end, with what the reports carried
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    frames.send(Ok(Frame::trailers(trailers))).await.unwrap();
    drop(frames);
    while body.frame().await.is_some() {}
    assert_eq!(asks.take(), [(End::Complete, 3, 3, (3, 3))]);
    assert_eq!(
        never.take(),
        [(End::Complete, 3, 3, (0, 0))],
        "a sink that asked for no report sees the end only, with nothing reported to it"
    );
}

#[tokio::test(start_paused = true)]
async fn from_its_arrival_a_call_is_reported_while_its_answer_is_awaited() {
    // the server side (Istio's reads the peer from the request): a client stream's
    // messages are reported before the application answers
    let asks = Progressing::new(Some(Duration::from_secs(5)));
    let (svc, head, frames) = streaming();
    let svc = ServiceBuilder::new()
        .layer(
            RecordLayer::new(vec![asks.clone() as Arc<dyn Sink>])
                .with_progress_reports(ReportsFrom::Arrival),
        )
        .service(svc);
    let mut call = Box::pin(svc.oneshot(grpc_call()));
    let waited = tokio::time::timeout(Duration::from_secs(12), call.as_mut()).await;
    assert!(waited.is_err(), "no head yet");
    assert_eq!(asks.take(), [(End::Open, 3, 0, (0, 0))]);
    assert_eq!(asks.times(), [5], "the 10 s report has nothing new");
    head.send(()).unwrap();
    let mut body = call.await.unwrap().into_body();
    drop(frames);
    while body.frame().await.is_some() {}
    assert_eq!(asks.take(), [(End::Complete, 3, 0, (3, 0))]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_never_waits_is_reported_all_the_same() {
    // a fast upstream, a client reading slowly: the body is always ready when polled
    let asks = Progressing::new(Some(Duration::from_secs(5)));
    let (svc, head, frames) = streaming();
    let svc = ServiceBuilder::new()
        .layer(
            RecordLayer::new(vec![asks.clone() as Arc<dyn Sink>])
                .with_progress_reports(ReportsFrom::Head),
        )
        .service(svc);
    for _ in 0..3 {
        let one = Bytes::from_static(b"\0\0\0\0\x01m");
        frames.send(Ok(Frame::data(one))).await.unwrap();
    }
    drop(frames);
    head.send(()).unwrap();
    let mut body = svc.oneshot(grpc_call()).await.unwrap().into_body();
    assert!(body.frame().await.is_some());
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(body.frame().await.is_some());
    assert_eq!(asks.take(), [(End::Open, 3, 2, (0, 0))]);
    // the next report, due at 11 s, is made as the body is polled at 12 s, of what was
    // counted before that poll (nothing new); the third message goes with the end
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(body.frame().await.is_some());
    assert!(asks.take().is_empty());
    while body.frame().await.is_some() {}
    assert_eq!(asks.take(), [(End::Complete, 3, 3, (3, 2))]);
}

/// A call of `content_type` through `layer` (with a sink asking for reports every 5 s)
/// whose body sends `data` and stays open 30 s: what the sink saw while it was open, and
/// at its end.
async fn open_for_30_s(
    layer: impl Fn(Arc<dyn Sink>) -> RecordLayer,
    content_type: &'static str,
    data: &'static [u8],
) -> (Vec<Report>, Vec<Report>) {
    let asks = Progressing::new(Some(Duration::from_secs(5)));
    let (svc, head, frames) = streaming();
    let svc = ServiceBuilder::new()
        .layer(layer(asks.clone()))
        .service(svc);
    let mut req = grpc_call();
    req.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    head.send(()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let mut body = res.into_body();
    frames
        .send(Ok(Frame::data(Bytes::from_static(data))))
        .await
        .unwrap();
    assert!(body.frame().await.is_some());
    let waited = tokio::time::timeout(Duration::from_secs(30), body.frame()).await;
    assert!(waited.is_err());
    let open = asks.take();
    drop(frames);
    while body.frame().await.is_some() {}
    (open, asks.take())
}

#[tokio::test(start_paused = true)]
async fn without_progress_reports_an_open_call_is_reported_at_its_end_only() {
    let layer = |sink| RecordLayer::new(vec![sink]);
    let (open, end) = open_for_30_s(layer, "application/grpc", b"\0\0\0\0\x01a").await;
    assert!(open.is_empty(), "no report while open: {open:?}");
    assert_eq!(end, [(End::Complete, 3, 1, (0, 0))]);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_is_not_grpc_is_not_reported_open() {
    let layer = |sink| RecordLayer::new(vec![sink]).with_progress_reports(ReportsFrom::Head);
    let (open, end) = open_for_30_s(layer, "application/json", b"{}").await;
    assert!(open.is_empty(), "no report while open: {open:?}");
    assert_eq!(end, [(End::Complete, 3, 0, (0, 0))]);
    // and the same call as gRPC is reported while open
    let (open, _) = open_for_30_s(layer, "application/grpc", b"\0\0\0\0\x01a").await;
    assert_eq!(open, [(End::Open, 3, 1, (0, 0))]);
}
