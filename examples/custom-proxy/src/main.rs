//! An egress gateway built from the mesh's layers and `mesh-transport`, unlike `mesh-proxy`:
//! no YAML, no routing table. Requests name their destination by Host; only the hosts on
//! the allow-list go out (to the address the list gives), within one rate limit for the
//! whole gateway, and every request is counted in Istio's `istio_requests_total`.
//!
//! ```text
//! client ─► Engine (workers, limits, h1/h2c) ─► Trace ─► Record ─► AllowList ─► RateLimit ─► Connector ─► upstream
//! ```
//!
//! ```sh
//! custom-proxy --listen 127.0.0.1:8080 --allow api.example.com=10.0.0.7:443 --rate 100/1s
//! ```
//!
//! It prints `listening on ADDR`, serves until its standard input closes, then drains and
//! prints the gateway's `istio_requests_total` lines.

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use mesh_core::ResponseFlags;
use mesh_core::ext::{SelectedEndpoint, local_reply};
use mesh_core::ratelimit::RateLimitPolicy;
use mesh_resilience::RateLimitLayer;
use mesh_telemetry::metrics::{IstioMetrics, LocalWorkload, Reporter};
use mesh_telemetry::record::RecordLayer;
use mesh_telemetry::trace::{TraceConfig, TraceLayer};
use mesh_transport::{Engine, EngineConfig, EngineResponse, WorkerContext};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;

type BoxError = Box<dyn Error + Send + Sync>;

fn main() {
    if let Err(e) = run() {
        eprintln!("custom-proxy: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), BoxError> {
    let (mut listen, mut allow, mut rate) = ("127.0.0.1:0".parse()?, HashMap::new(), None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?.parse()?,
            "--allow" => {
                let v = value()?;
                let (host, addr) = v.split_once('=').ok_or("--allow HOST=ADDR")?;
                allow.insert(host.to_ascii_lowercase(), addr.parse::<SocketAddr>()?);
            }
            "--rate" => {
                let v = value()?;
                let (n, per) = v.split_once("/").ok_or("--rate N/SECONDSs")?;
                let per = per.strip_suffix('s').ok_or("--rate N/SECONDSs")?.parse()?;
                rate = Some(RateLimitPolicy::new(
                    n.parse()?,
                    n.parse()?,
                    Duration::from_secs(per),
                ));
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let allow: Arc<HashMap<String, SocketAddr>> = Arc::new(allow);

    // built once, shared by every worker: the bucket, the metrics, the trace sampling
    let metrics = Arc::new(IstioMetrics::new(LocalWorkload::named(
        "egress-gateway",
        "default",
    )));
    let record = RecordLayer::new(vec![metrics.sink(Reporter::Source)]);
    let trace = TraceLayer::new(TraceConfig::default());
    let limit = match rate {
        Some(policy) => RateLimitLayer::new().with_policy(Arc::new(policy)),
        None => RateLimitLayer::new(),
    };

    // each worker wraps its own connector (its own connection pool)
    let factory = Arc::new(move |ctx: &WorkerContext| {
        let limited = limit.layer(ctx.connector());
        let allow = allow.clone();
        let allow_list = service_fn(move |mut req: Request<Incoming>| {
            // `Host` or `:authority`, as the listener checked it; the list's names are exact
            let to = mesh_core::authority::of_request(&req)
                .and_then(|a| allow.get(&a.to_ascii_lowercase()).copied());
            let limited = limited.clone();
            async move {
                let Some(addr) = to else {
                    let denied: EngineResponse = local_reply(
                        StatusCode::FORBIDDEN,
                        ResponseFlags::NO_ROUTE,
                        "egress denied",
                    );
                    return Ok(denied);
                };
                req.extensions_mut().insert(SelectedEndpoint::new(addr));
                limited.oneshot(req).await
            }
        });
        trace.layer(record.layer(allow_list))
    });

    let engine = Engine::start(EngineConfig::new(listen), factory)?;
    println!("listening on {}", engine.local_addr());
    // serve until standard input closes (a supervisor, or the test, holds it open)
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    engine.drain_blocking();
    let text = metrics.encode_to_string();
    for line in text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        println!("{line}");
    }
    Ok(())
}
