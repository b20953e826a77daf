//! In-process trace forwarding (issue 14: "the trace context of an inbound request is
//! forwarded automatically to the outbound calls made while serving it"): a small
//! in-process server whose handler calls another service through its own client stack.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Request, Response};
use mesh_telemetry::current::{self, CurrentTraceLayer};
use mesh_telemetry::trace::{TraceConfig, TraceContext, TraceLayer, trace_context};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type Client = BoxCloneService<Request<()>, HeaderMap, Infallible>;

/// The client of the service: trace propagation, then "the network", which records what
/// the upstream would receive.
fn client(sent: Arc<Mutex<Vec<HeaderMap>>>) -> Client {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(TraceLayer::new(TraceConfig::default().with_seed(1)))
            .service_fn(move |req: Request<()>| {
                let sent = sent.clone();
                async move {
                    sent.lock().unwrap().push(req.headers().clone());
                    Ok::<_, Infallible>(req.headers().clone())
                }
            }),
    )
}

/// The server: its hop's trace context, the current-trace scope, and a handler that makes
/// two outbound calls (one with a trace header of its own) and reports its inbound context.
fn server(client: Client) -> BoxCloneService<Request<()>, Response<TraceContext>, Infallible> {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(TraceLayer::new(TraceConfig::default().with_seed(2)))
            .layer(CurrentTraceLayer::new())
            .service_fn(move |req: Request<()>| {
                let client = client.clone();
                async move {
                    let inbound = *trace_context(req.extensions()).unwrap();
                    client.clone().oneshot(Request::new(())).await?;
                    let own = Request::builder()
                        .header(
                            "traceparent",
                            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                        )
                        .body(())
                        .unwrap();
                    client.oneshot(own).await?;
                    Ok::<_, Infallible>(Response::new(inbound))
                }
            }),
    )
}

fn h<'a>(m: &'a HeaderMap, name: &str) -> &'a str {
    m.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

#[tokio::test]
async fn the_outbound_call_continues_the_inbound_trace_with_a_span_of_its_own() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let svc = server(client(sent.clone()));
    let inbound = Request::builder()
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-request-id", "req-1")
        .body(())
        .unwrap();
    let served = svc.oneshot(inbound).await.unwrap().into_body();
    let sent = sent.lock().unwrap();

    // the call made without trace headers: the inbound trace, a new span whose parent is
    // the server's span, the inbound decision and request id
    let tp = h(&sent[0], "traceparent");
    assert_eq!(&tp[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-", "{tp}");
    assert!(tp.ends_with("-01"), "sampled as inbound: {tp}");
    let span = u64::from_str_radix(&tp[36..52], 16).unwrap();
    assert_ne!(span, served.span_id, "a span of its own");
    assert_ne!(span, 0x00f0_67aa_0ba9_02b7);
    assert_eq!(served.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
    assert_eq!(h(&sent[0], "x-request-id"), "req-1");

    // a call that carries its own trace keeps it
    assert!(
        h(&sent[1], "traceparent").starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{:?}",
        sent[1]
    );
}

#[tokio::test]
async fn the_parent_of_the_outbound_span_is_the_server_s_span() {
    // read the outbound context in the client's extensions
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let client = ServiceBuilder::new()
        .layer(TraceLayer::new(TraceConfig::default()))
        .service_fn(move |req: Request<()>| {
            *s.lock().unwrap() = trace_context(req.extensions()).copied();
            async { Ok::<_, Infallible>(()) }
        });
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new(
            TraceConfig::default().with_sampling_percent(0.0),
        ))
        .layer(CurrentTraceLayer::new())
        .service_fn(move |req: Request<()>| {
            let client = client.clone();
            async move {
                client.oneshot(Request::new(())).await?;
                Ok::<_, Infallible>(*trace_context(req.extensions()).unwrap())
            }
        });
    // a new trace at the server, not sampled (0 %): the outbound call keeps that decision
    let server_ctx = svc.oneshot(Request::new(())).await.unwrap();
    let out = seen.lock().unwrap().unwrap();
    assert_eq!(out.trace_id, server_ctx.trace_id);
    assert_eq!(out.parent_span_id, Some(server_ctx.span_id));
    assert!(!out.sampled && !server_ctx.sampled);
}

#[tokio::test]
async fn outside_a_served_request_a_call_starts_its_own_trace() {
    assert!(current::current().is_none());
    let sent = Arc::new(Mutex::new(Vec::new()));
    let headers = client(sent.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(h(&headers, "traceparent").len(), 55);
    assert_eq!(h(&headers, "x-request-id").len(), 36, "generated");
}

#[tokio::test]
async fn a_spawned_task_carries_the_context_with_scope() {
    let inbound = current::Inbound {
        ctx: TraceContext {
            trace_id: 42,
            span_id: 7,
            parent_span_id: None,
            sampled: true,
        },
        request_id: None,
    };
    let sent = Arc::new(Mutex::new(Vec::new()));
    let c = client(sent.clone());
    let task = tokio::spawn(current::scope(inbound, async move {
        c.oneshot(Request::new(())).await.unwrap()
    }));
    let headers = task.await.unwrap();
    assert!(
        h(&headers, "traceparent").starts_with("00-0000000000000000000000000000002a-"),
        "{headers:?}"
    );
}
