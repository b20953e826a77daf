//! Spans through the layers alone (no proxy): trace layer → record layer with a
//! [`SpanRecorder`] → a service, exported to the SDK's in-memory exporter. The span's ids
//! are the ones the trace layer propagated to the service; an unsampled trace makes none.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_core::ext::SelectedEndpoint;
use mesh_core::stream_info::UpstreamConnection;
use mesh_telemetry::record::{RecordBody, RecordLayer, Sink};
use mesh_telemetry::sinks::{Reloadable, Side, SpanRecorder};
use mesh_telemetry::span::{SpanOptions, SpanSink};
use mesh_telemetry::trace::{TraceConfig, TraceLayer};
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tower::util::BoxService;
use tower::{ServiceBuilder, ServiceExt};

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

type Svc = BoxService<Request<Full<Bytes>>, Response<RecordBody<Full<Bytes>>>, Infallible>;

/// The stack, and what it is watched with.
struct Harness {
    svc: Svc,
    /// The headers the service received.
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    exporter: InMemorySpanExporter,
    sink: SpanSink,
}

fn stack(side: Side, status: StatusCode) -> Harness {
    let exporter = InMemorySpanExporter::default();
    let sink = SpanSink::new(
        exporter.clone(),
        SpanOptions {
            node_id: "sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local".into(),
            ..SpanOptions::default()
        },
    )
    .unwrap();
    let recorder: Arc<dyn Sink> = Arc::new(SpanRecorder::new(
        side,
        Arc::new(Reloadable::new(Some(Arc::new(sink.clone())))),
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new(
            TraceConfig::default().with_sampling_percent(0.0),
        ))
        .layer(RecordLayer::new(vec![recorder]))
        .service_fn(move |req: Request<Full<Bytes>>| {
            s.lock().unwrap().push(req.headers().clone());
            async move {
                let mut res = Response::new(Full::new(Bytes::from_static(b"hello")));
                *res.status_mut() = status;
                Ok::<_, Infallible>(res)
            }
        });
    Harness {
        svc: BoxService::new(svc),
        seen,
        exporter,
        sink,
    }
}

fn get(traceparent: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/reviews/1?x=1")
        .header("host", "reviews:9080")
        .header("traceparent", traceparent)
        .header("x-request-id", "req-7")
        .header("user-agent", "test/1")
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn a_sampled_request_makes_a_span_with_the_propagated_ids_and_http_attributes() {
    let Harness {
        svc,
        seen,
        exporter,
        sink,
    } = stack(Side::Outbound, StatusCode::OK);
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = svc.oneshot(get(caller)).await.unwrap();
    // the span is made when the response body ends
    res.into_body().collect().await.ok().unwrap();
    sink.flush();

    let sent = seen.lock().unwrap()[0]["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.span_kind, SpanKind::Client);
    assert_eq!(
        s.span_context.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    assert_eq!(
        s.span_context.span_id(),
        SpanId::from_hex(&sent[36..52]).unwrap(),
        "the span's id is the parent the service was told about"
    );
    assert_eq!(
        s.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert!(s.span_context.is_sampled());
    assert_eq!(s.name, "reviews:9080/*");
    assert!(s.end_time >= s.start_time);
    assert_eq!(
        attr(s, "url.full").unwrap().as_str(),
        "http://reviews:9080/reviews/1?x=1"
    );
    assert_eq!(attr(s, "http.request.method").unwrap().as_str(), "GET");
    assert_eq!(attr(s, "http.response.status_code"), Some(&Value::I64(200)));
    assert_eq!(attr(s, "network.protocol.version").unwrap().as_str(), "1.1");
    assert_eq!(attr(s, "user_agent.original").unwrap().as_str(), "test/1");
    assert_eq!(attr(s, "guid:x-request-id").unwrap().as_str(), "req-7");
    assert_eq!(attr(s, "component").unwrap().as_str(), "proxy");
    assert_eq!(attr(s, "response_flags").unwrap().as_str(), "-");
    // the bodies' bytes, as Envoy's tags (no heads)
    assert_eq!(attr(s, "response_size"), Some(&Value::I64(5)));
    assert_eq!(attr(s, "request_size"), Some(&Value::I64(0)));
    assert_eq!(attr(s, "url.scheme").unwrap().as_str(), "http");
    assert_eq!(attr(s, "server.address").unwrap().as_str(), "reviews");
    assert_eq!(attr(s, "server.port"), Some(&Value::I64(9080)));
    assert!(attr(s, "error.type").is_none());
    assert_eq!(s.status, Status::Unset);
}

/// A stack whose service records, as the balancer and the connector do, the endpoint
/// `10.0.0.7:9080` and a connection to it (TLS when `tls_upstream`), and answers `status`;
/// the record layer tells a TLS downstream by a `&'static str` extension `"tls"`.
fn traced(side: Side, status: StatusCode, tls_upstream: bool) -> Harness {
    let exporter = InMemorySpanExporter::default();
    let sink = SpanSink::new(exporter.clone(), SpanOptions::default()).unwrap();
    let recorder: Arc<dyn Sink> = Arc::new(SpanRecorder::new(
        side,
        Arc::new(Reloadable::new(Some(Arc::new(sink.clone())))),
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new(
            TraceConfig::default().with_sampling_percent(0.0),
        ))
        .layer(
            RecordLayer::new(vec![recorder])
                .with_downstream_tls(|ext| ext.get::<&'static str>() == Some(&"tls")),
        )
        .service_fn(move |req: Request<Full<Bytes>>| {
            s.lock().unwrap().push(req.headers().clone());
            let info = mesh_core::ext::stream_info(req.extensions()).unwrap();
            info.set_endpoint(&SelectedEndpoint::new("10.0.0.7:9080".parse().unwrap()));
            assert!(info.wants_connection(), "a span sink reads the details");
            info.set_connection(UpstreamConnection {
                local: Some("10.0.0.1:40000".parse().unwrap()),
                tls: tls_upstream,
                sent: Instant::now(),
            });
            async move {
                let mut res = Response::new(Full::new(Bytes::from_static(b"hello")));
                *res.status_mut() = status;
                Ok::<_, Infallible>(res)
            }
        });
    Harness {
        svc: BoxService::new(svc),
        seen,
        exporter,
        sink,
    }
}

async fn one_span(h: Harness, req: Request<Full<Bytes>>) -> SpanData {
    let res = h.svc.oneshot(req).await.unwrap();
    res.into_body().collect().await.ok().unwrap();
    h.sink.flush();
    let mut spans = h.exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    spans.remove(0)
}

#[tokio::test]
async fn a_client_span_for_a_4xx_is_an_error_and_over_tls_its_url_is_https() {
    let h = traced(Side::Outbound, StatusCode::NOT_FOUND, true);
    let s = one_span(
        h,
        get("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(s.span_kind, SpanKind::Client);
    // the connector originated TLS (Istio's mTLS, or TLS origination)
    assert_eq!(
        attr(&s, "url.full").unwrap().as_str(),
        "https://reviews:9080/reviews/1?x=1"
    );
    assert_eq!(attr(&s, "url.scheme").unwrap().as_str(), "https");
    assert_eq!(attr(&s, "error.type").unwrap().as_str(), "404");
    assert!(matches!(s.status, Status::Error { .. }));
    assert_eq!(
        attr(&s, "network.peer.address").unwrap().as_str(),
        "10.0.0.7"
    );
    assert_eq!(attr(&s, "network.peer.port"), Some(&Value::I64(9080)));
    assert!(
        attr(&s, "http.request.resend_count").is_none(),
        "one attempt"
    );

    // plaintext to the upstream: http
    let h = traced(Side::Outbound, StatusCode::OK, false);
    let s = one_span(
        h,
        get("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(
        attr(&s, "url.full").unwrap().as_str(),
        "http://reviews:9080/reviews/1?x=1"
    );
}

#[tokio::test]
async fn a_server_span_for_a_4xx_is_not_an_error() {
    let h = traced(Side::Inbound, StatusCode::NOT_FOUND, false);
    let s = one_span(
        h,
        get("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(
        attr(&s, "http.response.status_code"),
        Some(&Value::I64(404))
    );
    assert!(attr(&s, "error.type").is_none());
    assert_eq!(s.status, Status::Unset);
}

#[tokio::test]
async fn a_server_span_s_scheme_is_the_forwarded_one_else_the_connection_s_and_it_carries_tracestate()
 {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let with = |tls: bool, headers: &[(&str, &str)]| {
        let mut req = get(traceparent);
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        if tls {
            req.extensions_mut().insert("tls");
        }
        req
    };
    // over TLS, with the caller's tracestate
    let s = one_span(
        traced(Side::Inbound, StatusCode::OK, false),
        with(
            true,
            &[("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")],
        ),
    )
    .await;
    assert_eq!(attr(&s, "url.scheme").unwrap().as_str(), "https");
    assert_eq!(attr(&s, "url.path").unwrap().as_str(), "/reviews/1");
    assert_eq!(attr(&s, "url.query").unwrap().as_str(), "x=1");
    assert_eq!(
        s.span_context.trace_state().header(),
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    );
    // the original client's scheme wins over the hop's
    let s = one_span(
        traced(Side::Inbound, StatusCode::OK, false),
        with(true, &[("x-forwarded-proto", "http")]),
    )
    .await;
    assert_eq!(attr(&s, "url.scheme").unwrap().as_str(), "http");
    let s = one_span(
        traced(Side::Inbound, StatusCode::OK, false),
        with(
            false,
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        ),
    )
    .await;
    assert_eq!(attr(&s, "url.scheme").unwrap().as_str(), "https");
    assert_eq!(attr(&s, "client.address").unwrap().as_str(), "203.0.113.7");
    // plaintext, nothing forwarded
    let s = one_span(
        traced(Side::Inbound, StatusCode::OK, false),
        with(false, &[]),
    )
    .await;
    assert_eq!(attr(&s, "url.scheme").unwrap().as_str(), "http");
    assert_eq!(s.span_context.trace_state().header(), "");
}

#[tokio::test]
async fn an_unsampled_request_makes_no_span() {
    let Harness {
        svc,
        seen,
        exporter,
        sink,
    } = stack(Side::Outbound, StatusCode::OK);
    let res = svc
        .oneshot(get(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ))
        .await
        .unwrap();
    res.into_body().collect().await.ok().unwrap();
    sink.flush();
    assert_eq!(seen.lock().unwrap().len(), 1, "the request went through");
    assert!(exporter.get_finished_spans().unwrap().is_empty());
}

#[tokio::test]
async fn a_server_span_for_a_5xx_is_an_error() {
    let Harness {
        svc,
        exporter,
        sink,
        ..
    } = stack(Side::Inbound, StatusCode::SERVICE_UNAVAILABLE);
    let res = svc
        .oneshot(get(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .await
        .unwrap();
    res.into_body().collect().await.ok().unwrap();
    sink.flush();
    let spans = exporter.get_finished_spans().unwrap();
    let s = &spans[0];
    assert_eq!(s.span_kind, SpanKind::Server);
    assert_eq!(attr(s, "url.path").unwrap().as_str(), "/reviews/1");
    assert!(matches!(s.status, Status::Error { .. }));
}
