//! Span export over OTLP/HTTP (feature `otlp`) to a local OTLP receiver started by the test:
//! a hyper server on port 0 that decodes the protobuf `ExportTraceServiceRequest` with
//! `opentelemetry-proto`, as an OpenTelemetry collector's `otlphttp` receiver does.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use mesh_telemetry::otlp::{OtlpConfig, exporter};
use mesh_telemetry::span::{RequestSpan, SpanOptions, SpanSink};
use mesh_telemetry::trace::TraceContext;
use opentelemetry::trace::SpanKind;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::mpsc;

/// What the receiver got: path, content type, decoded request.
type Received = (String, String, ExportTraceServiceRequest);

async fn receiver() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ct = req
                            .headers()
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let decoded = ExportTraceServiceRequest::decode(body).unwrap();
                        let _ = tx.send((path, ct, decoded));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn spans_reach_an_otlp_http_receiver_as_protobuf_on_v1_traces() {
    let (addr, mut rx) = receiver().await;
    let config = OtlpConfig::new(format!("http://{addr}"));
    assert_eq!(
        config.traces_url().unwrap().to_string(),
        format!("http://{addr}/v1/traces")
    );
    let sink = SpanSink::new(
        exporter(&config).unwrap(),
        SpanOptions {
            service_name: "reviews.default".into(),
            ..SpanOptions::default()
        },
    )
    .unwrap();
    let ctx = TraceContext {
        trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        span_id: 0x0102_0304_0506_0708,
        parent_span_id: Some(0x00f0_67aa_0ba9_02b7),
        sampled: true,
    };
    let start = SystemTime::now();
    let mut span = RequestSpan::new(SpanKind::Client, ctx, start, "GET", "ratings:9080", "/r");
    span.status = 200;
    span.end = start + Duration::from_millis(2);
    sink.record(&span);

    let (path, ct, req) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("an export within 30s")
        .unwrap();
    assert_eq!(path, "/v1/traces");
    assert_eq!(ct, "application/x-protobuf");
    let rs = &req.resource_spans[0];
    let service = rs
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .unwrap();
    assert_eq!(
        format!("{:?}", service.value),
        format!(
            "{:?}",
            Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                        "reviews.default".into()
                    )
                )
            })
        )
    );
    let s = &rs.scope_spans[0].spans[0];
    assert_eq!(s.trace_id, ctx.trace_id.to_be_bytes());
    assert_eq!(s.span_id, ctx.span_id.to_be_bytes());
    assert_eq!(s.parent_span_id, 0x00f0_67aa_0ba9_02b7u64.to_be_bytes());
    assert_eq!(s.name, "ratings:9080/*");
    // SPAN_KIND_CLIENT
    assert_eq!(s.kind, 3);
}

#[test]
fn endpoints_with_a_path_are_kept_and_https_is_refused() {
    assert_eq!(
        OtlpConfig::new("http://c:4318/custom/traces")
            .traces_url()
            .unwrap()
            .to_string(),
        "http://c:4318/custom/traces"
    );
    assert!(OtlpConfig::new("https://c:4318").traces_url().is_err());
    assert!(OtlpConfig::new("c:4318").traces_url().is_err());
}
