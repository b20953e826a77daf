//! The engine with the smallest stack, for measuring it with `shared/bench/compare.sh`.
//!
//! ```text
//! engine_bench LISTEN UPSTREAM      e.g. engine_bench 127.0.0.1:8080 127.0.0.1:9000
//!   WORKERS (env, default 1)        worker threads (0 = one per core)
//! ```
//!
//! Every request goes to UPSTREAM: the stack only puts a `SelectedEndpoint` in the request
//! (as `mesh-lb` does) and calls the connector. SIGTERM or SIGINT drains and exits.
//!
//! ```text
//! cargo build --release -p mesh-transport --example engine_bench
//! compare.sh direct haproxy floor "engine=$CARGO_TARGET_DIR/release/examples/engine_bench {LISTEN} {UP}"
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use mesh_core::ext::SelectedEndpoint;
use mesh_transport::{
    Connector, ConnectorFuture, Engine, EngineConfig, EngineResponse, Limits, WorkerContext,
};
use tower_service::Service;

/// Sends everything to one endpoint.
#[derive(Clone)]
struct ToOne {
    endpoint: SelectedEndpoint,
    connector: Connector,
}

impl Service<Request<Incoming>> for ToOne {
    type Response = EngineResponse;
    type Error = Infallible;
    type Future = ConnectorFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> ConnectorFuture {
        req.extensions_mut().insert(self.endpoint.clone());
        self.connector.call(req)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).and_then(|a| a.parse::<SocketAddr>().ok()),
    ) else {
        eprintln!("usage: engine_bench LISTEN UPSTREAM   (env WORKERS, default 1)");
        std::process::exit(2);
    };
    let workers = std::env::var("WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    let endpoint =
        SelectedEndpoint::new(upstream).with_http2(std::env::var_os("UPSTREAM_H2").is_some());
    let factory = Arc::new(move |ctx: &WorkerContext| ToOne {
        endpoint: endpoint.clone(),
        connector: ctx.connector(),
    });
    let config = EngineConfig {
        concurrency: workers,
        limits: Limits {
            drain_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
        ..EngineConfig::new(listen)
    };
    let engine = match Engine::start(config, factory) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("engine_bench: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "engine_bench: {} worker(s), {} -> {upstream}",
        engine.workers(),
        engine.local_addr()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("signal runtime");
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        engine.drain().await;
    });
}
