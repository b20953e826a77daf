//! The admin listener: `/ready`, `/healthz`, `/config_dump`, `/clusters`, `/stats/prometheus`.
//!
//! A small HTTP/1.1 server on its own thread (not on the data-plane workers), as Envoy's admin:
//!
//! | path | answer |
//! |---|---|
//! | `/ready` | 200 `LIVE` once the listeners are up and a configuration is loaded; 503 before and while draining |
//! | `/healthz` | 200 while the process runs |
//! | `/config_dump` | the effective configuration (the compiled snapshot) as JSON |
//! | `/clusters` | services, subsets and endpoints with their state, and each cluster's circuit-breaker counts, as JSON |
//! | `/stats/prometheus` | the proxy's own counters and Istio's standard metrics in Prometheus text format (0.0.4) |
//!
//! Bind it to loopback: like Envoy's admin it is unauthenticated.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::proxy::ProxyState;

/// A running admin server; stops when dropped or [`stop`](AdminServer::stop)ped.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

// === impl AdminServer ===

impl AdminServer {
    /// Binds `addr` (port 0 picks one) and serves on a thread of its own: [`bind`](Self::bind)
    /// then [`start_on`](Self::start_on).
    pub fn start(addr: SocketAddr, state: Arc<ProxyState>) -> io::Result<AdminServer> {
        AdminServer::start_on(AdminServer::bind(addr)?, state)
    }

    /// Binds the admin listening socket (port 0 picks one) without serving yet. Fails with
    /// [`io::ErrorKind::AddrInUse`] when another socket listens on `addr`: the socket has
    /// `SO_REUSEADDR` (a restart is not blocked by connections in TIME_WAIT) but not
    /// `SO_REUSEPORT`, so no other process can share the port.
    pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        std::net::TcpListener::bind(addr)
    }

    /// Serves on an already bound listening socket (see [`bind`](Self::bind)), on a thread
    /// of its own.
    pub fn start_on(
        std_listener: std::net::TcpListener,
        state: Arc<ProxyState>,
    ) -> io::Result<AdminServer> {
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, mut stop_rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("mesh-admin".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    loop {
                        tokio::select! {
                            _ = stop_rx.changed() => break,
                            accepted = listener.accept() => {
                                let stream = match accepted {
                                    Ok((stream, _)) => stream,
                                    Err(e) => {
                                        // out of descriptors or memory (EMFILE…): the error
                                        // repeats until one is free, so pause rather than spin
                                        if !matches!(
                                            e.kind(),
                                            io::ErrorKind::ConnectionAborted
                                                | io::ErrorKind::ConnectionReset
                                                | io::ErrorKind::Interrupted
                                        ) {
                                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                        }
                                        continue;
                                    }
                                };
                                let state = state.clone();
                                tokio::spawn(async move {
                                    let svc = hyper::service::service_fn(move |req| {
                                        let state = state.clone();
                                        async move { Ok::<_, Infallible>(handle(&state, &req)) }
                                    });
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(TokioIo::new(stream), svc)
                                        .await;
                                });
                            }
                        }
                    }
                });
            })?;
        Ok(AdminServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn handle(state: &ProxyState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/ready" => {
            if state.is_ready() {
                text(StatusCode::OK, "LIVE\n")
            } else if state.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
            }
        }
        "/healthz" => text(StatusCode::OK, "OK\n"),
        "/config_dump" => json(&state.config_dump()),
        "/clusters" => json(&state.clusters()),
        "/stats/prometheus" | "/stats" => {
            let mut r = text(StatusCode::OK, state.prometheus());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(mesh_telemetry::metrics::CONTENT_TYPE),
            );
            r
        }
        "/" => text(
            StatusCode::OK,
            "mesh-proxy admin: /ready /healthz /config_dump /clusters /stats/prometheus\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
