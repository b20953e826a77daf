//! The assembled proxy: listeners, admin, configuration reloads and drain.
//!
//! [`Proxy::start`] loads the configuration (any error stops start-up, naming the file,
//! line, resource and field), starts the outbound listener (and the inbound one when the
//! bootstrap asks for it) on the data-plane engine, and the admin listener. [`Proxy::reload`]
//! re-reads the files: a configuration that loads and validates replaces the running one
//! atomically (in-flight requests finish on the old one); one that does not is logged and
//! the last good configuration keeps serving. [`Proxy::drain`] is what SIGTERM does.
//!
//! The listeners share one [`OwnAddrs`]: the outbound and inbound connectors never connect
//! to any of the proxy's listening addresses (outbound, inbound, admin), so a request
//! addressed to the proxy itself (`Host: 127.0.0.1:15001` under `ALLOW_ANY`) is answered
//! `508 Loop Detected` (flag `UF`) instead of looping; see [`crate::engine::loops`].
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = mesh_proxy::proxy::Proxy::start(vec!["mesh.yaml".into()])?;
//! println!("outbound on {:?}, admin on {:?}", proxy.outbound_addr(), proxy.admin_addr());
//! proxy.drain_blocking();
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::ConfigError;
use mesh_core::compile::Snapshot;
use mesh_core::config::{self, Compiled};
use mesh_core::ext::SelectedEndpoint;
use mesh_core::model::bootstrap::ProxyBootstrap;

use arc_swap::ArcSwap;

use crate::admin::AdminServer;
use crate::engine::{Engine, EngineConfig, Limits, OwnAddrs, Readiness, WorkerContext};
use crate::stack::Layers;

/// Why the proxy could not start, or a reload was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The configuration is valid but its routes cannot be compiled (e.g. a regex over the
    /// size limit).
    #[error("{0}")]
    Routes(#[from] mesh_routing::BuildError),
    /// A listener could not be bound or a thread started.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// State shared by the proxy, its admin endpoint and its reload loop.
#[derive(Debug)]
pub struct ProxyState {
    files: Vec<PathBuf>,
    snapshot: ArcSwap<Snapshot>,
    layers: Layers,
    readiness: Mutex<Vec<Readiness>>,
    draining: AtomicBool,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<ProxyState>,
    outbound: Option<Engine>,
    inbound: Option<Engine>,
    admin: Option<AdminServer>,
}

/// Maps the bootstrap's `limits` onto the engine's.
pub fn engine_limits(b: &ProxyBootstrap) -> Limits {
    let l = &b.limits;
    Limits {
        max_request_headers_kb: l.max_request_headers_kb,
        max_request_headers_count: l.max_request_headers_count,
        request_headers_timeout: l.request_headers_timeout.get(),
        stream_idle_timeout: l.stream_idle_timeout.get(),
        connect_timeout: l.connect_timeout.get(),
        tls_handshake_timeout: l.tls_handshake_timeout.get(),
        http2_max_concurrent_streams: l.http2_max_concurrent_streams,
        drain_timeout: l.drain_timeout.get(),
    }
}

fn socket_addr(address: &str, port: u16) -> io::Result<SocketAddr> {
    (address, port).to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot resolve {address}"),
        )
    })
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

// === impl Proxy ===

impl Proxy {
    /// Loads the configuration files and starts the proxy.
    pub fn start(files: Vec<PathBuf>) -> Result<Proxy, StartError> {
        let compiled = config::load_files(&files)?;
        for w in &compiled.warnings {
            tracing::warn!("{w}");
        }
        Proxy::start_compiled(compiled, files)
    }

    /// Starts the proxy from an already compiled configuration; `files` are what
    /// [`reload`](Self::reload) re-reads (may be empty: then reload only re-applies).
    pub fn start_compiled(compiled: Compiled, files: Vec<PathBuf>) -> Result<Proxy, StartError> {
        let snapshot = compiled.snapshot;
        let boot = snapshot.bootstrap.clone();
        let limits = engine_limits(&boot);
        let layers = Layers::new(&snapshot)?;
        let state = Arc::new(ProxyState {
            files,
            snapshot: ArcSwap::new(snapshot.clone()),
            layers: layers.clone(),
            readiness: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let mut proxy = Proxy {
            state: state.clone(),
            outbound: None,
            inbound: None,
            admin: None,
        };
        let concurrency = boot.concurrency as usize;
        // every listener of this proxy, so that no connector forwards into one of them
        let own_addrs = OwnAddrs::new();

        if let Some(out) = &boot.outbound {
            let addr = socket_addr(&out.address, out.port).map_err(io_err("outbound address"))?;
            let cfg = EngineConfig {
                concurrency,
                limits: limits.clone(),
                own_addrs: own_addrs.clone(),
                ..EngineConfig::new(addr)
            };
            let factory = Arc::new(move |ctx: &WorkerContext| layers.stack(ctx));
            let engine =
                Engine::start(cfg, factory).map_err(io_err(format!("outbound listener {addr}")))?;
            tracing::info!(addr = %engine.local_addr(), workers = engine.workers(), "outbound listener up");
            proxy.state.push_readiness(engine.readiness());
            proxy.outbound = Some(engine);
        }
        if let Some(inb) = &boot.inbound {
            let addr = socket_addr(&inb.address, inb.port).map_err(io_err("inbound address"))?;
            let app: SocketAddr = inb
                .local_app
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| StartError::Io {
                    what: format!("inbound localApp {:?}", inb.local_app),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "not a host:port"),
                })?;
            let cfg = EngineConfig {
                concurrency,
                limits: limits.clone(),
                own_addrs: own_addrs.clone(),
                ..EngineConfig::new(addr)
            };
            let engine = Engine::start(
                cfg,
                Arc::new(move |ctx: &WorkerContext| inbound_stack(ctx, app)),
            )
            .map_err(io_err(format!("inbound listener {addr}")))?;
            tracing::info!(addr = %engine.local_addr(), app = %app, "inbound listener up");
            proxy.state.push_readiness(engine.readiness());
            proxy.inbound = Some(engine);
        }
        let admin_addr =
            socket_addr(&boot.admin.address, boot.admin.port).map_err(io_err("admin address"))?;
        let admin = AdminServer::start(admin_addr, state)
            .map_err(io_err(format!("admin listener {admin_addr}")))?;
        tracing::info!(addr = %admin.local_addr(), "admin listener up");
        own_addrs.add(admin.local_addr());
        proxy.admin = Some(admin);
        Ok(proxy)
    }

    /// The outbound listener's address, if the bootstrap has one.
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.outbound.as_ref().map(Engine::local_addr)
    }

    /// The inbound listener's address, if the bootstrap has one.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound.as_ref().map(Engine::local_addr)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The shared state (current snapshot, counters).
    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }

    /// Re-reads the configuration files; see [`ProxyState::reload`].
    pub fn reload(&self) -> Result<u64, StartError> {
        self.state.reload()
    }

    /// Stops accepting, lets in-flight requests finish within `drainTimeout`, stops the
    /// listeners and the admin endpoint.
    pub async fn drain(mut self) {
        self.state.draining.store(true, Ordering::SeqCst);
        let out = self.outbound.take();
        let inb = self.inbound.take();
        if let Some(e) = out {
            e.drain().await;
        }
        if let Some(e) = inb {
            e.drain().await;
        }
        if let Some(a) = self.admin.take() {
            let _ = tokio::task::spawn_blocking(move || a.stop()).await;
        }
    }

    /// [`drain`](Self::drain) from synchronous code.
    pub fn drain_blocking(mut self) {
        self.state.draining.store(true, Ordering::SeqCst);
        if let Some(e) = self.outbound.take() {
            e.drain_blocking();
        }
        if let Some(e) = self.inbound.take() {
            e.drain_blocking();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
    }
}

/// The inbound stack: every request goes to the local application.
fn inbound_stack(ctx: &WorkerContext, app: SocketAddr) -> InboundStack {
    InboundStack {
        connector: ctx.connector(),
        app,
    }
}

/// The inbound listener's stack: forwards to the local application.
#[derive(Debug, Clone)]
pub struct InboundStack {
    connector: crate::engine::Connector,
    app: SocketAddr,
}

impl tower_service::Service<http::Request<hyper::body::Incoming>> for InboundStack {
    type Response = crate::engine::EngineResponse;
    type Error = std::convert::Infallible;
    type Future = crate::engine::ConnectorFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<hyper::body::Incoming>>::poll_ready(
            &mut self.connector,
            cx,
        )
    }

    fn call(&mut self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(SelectedEndpoint {
            addr: self.app,
            http2: false,
            service_account: None,
            istio_tls: false,
        });
        self.connector.call(req)
    }
}

// === impl ProxyState ===

impl ProxyState {
    fn push_readiness(&self, r: Readiness) {
        if let Ok(mut v) = self.readiness.lock() {
            v.push(r);
        }
    }

    /// Whether every listener accepts, a configuration is loaded, and the proxy is not draining.
    pub fn is_ready(&self) -> bool {
        if self.is_draining() {
            return false;
        }
        self.readiness
            .lock()
            .map(|v| v.iter().all(Readiness::is_ready))
            .unwrap_or(false)
    }

    /// Whether the proxy is draining (SIGTERM received).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The running configuration.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The outbound layers (route table, balancer).
    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// The configuration files reload reads.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Re-reads the files: on success the new configuration replaces the running one (in-flight
    /// requests finish on the old) and its generation is returned; on error the running one
    /// stays and the error is returned (and kept for `/stats/prometheus` and logs).
    pub fn reload(&self) -> Result<u64, StartError> {
        match config::load_files(&self.files) {
            Ok(compiled) => {
                for w in &compiled.warnings {
                    tracing::warn!("{w}");
                }
                self.apply(compiled)
                    .map_err(|e| self.reject(StartError::Routes(e)))
            }
            Err(e) => Err(self.reject(StartError::Config(e))),
        }
    }

    fn reject<E: std::fmt::Display>(&self, e: E) -> E {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!("reload rejected, keeping the running configuration:\n{e}");
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
        e
    }

    /// Replaces the running configuration with a compiled one; returns its generation. A
    /// configuration whose routes cannot be compiled is refused (the running one stays).
    pub fn apply(&self, compiled: Compiled) -> Result<u64, mesh_routing::BuildError> {
        let old = self.snapshot();
        if old.bootstrap.outbound != compiled.snapshot.bootstrap.outbound
            || old.bootstrap.inbound != compiled.snapshot.bootstrap.inbound
            || old.bootstrap.admin != compiled.snapshot.bootstrap.admin
            || old.bootstrap.concurrency != compiled.snapshot.bootstrap.concurrency
        {
            tracing::warn!(
                "listener, admin or concurrency changes take effect at the next restart"
            );
        }
        let generation = compiled.snapshot.generation;
        self.layers.store(&compiled.snapshot)?;
        self.snapshot.store(compiled.snapshot);
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = None;
        }
        tracing::info!(
            generation,
            resources = compiled.resources,
            "configuration applied"
        );
        Ok(generation)
    }

    /// `/config_dump`: the effective configuration.
    pub fn config_dump(&self) -> serde_json::Value {
        let snap = self.snapshot();
        serde_json::json!({
            "generation": snap.generation,
            "files": self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "snapshot": serde_json::to_value(&*snap).unwrap_or_default(),
        })
    }

    /// `/clusters`: every service, its ports, subsets and endpoints.
    pub fn clusters(&self) -> serde_json::Value {
        let snap = self.snapshot();
        let ns = snap.bootstrap.workload.namespace.clone();
        let services: Vec<serde_json::Value> = snap
            .services
            .iter()
            .map(|svc| {
                let subsets: Vec<serde_json::Value> = snap
                    .destination_rule(&svc.hostname, &ns)
                    .map(|dr| {
                        dr.spec
                            .subsets
                            .iter()
                            .map(|s| {
                                // `address:port` on the service's default (or first) port, as
                                // Envoy lists hosts: endpoints may share an address
                                let port = svc.default_port().or(svc.ports.first());
                                let eps: Vec<String> = svc
                                    .subset_endpoints(&s.labels)
                                    .map(|e| match port {
                                        Some(p) => format!("{}:{}", e.address, svc.endpoint_port(e, p)),
                                        None => e.address.clone(),
                                    })
                                    .collect();
                                serde_json::json!({"name": s.name, "labels": s.labels, "endpoints": eps})
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let endpoints: Vec<serde_json::Value> = svc
                    .endpoints
                    .iter()
                    .map(|e| {
                        let ports: serde_json::Map<String, serde_json::Value> = svc
                            .ports
                            .iter()
                            .map(|p| (p.number.to_string(), svc.endpoint_port(e, p).into()))
                            .collect();
                        serde_json::json!({
                            "address": e.address,
                            "ports": ports,
                            "labels": e.labels,
                            "locality": e.locality.to_string(),
                            "weight": e.weight,
                            "serviceAccount": e.service_account,
                            "health": "HEALTHY",
                        })
                    })
                    .collect();
                serde_json::json!({
                    "host": svc.hostname,
                    "namespace": svc.namespace,
                    "resolution": svc.resolution,
                    "location": svc.location,
                    "ports": svc.ports,
                    "subsets": subsets,
                    "endpoints": endpoints,
                })
            })
            .collect();
        serde_json::json!({ "generation": snap.generation, "services": services })
    }

    /// `/stats/prometheus`: the proxy's own gauges and counters.
    pub fn prometheus(&self) -> String {
        let snap = self.snapshot();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# TYPE mesh_proxy_ready gauge\nmesh_proxy_ready {}",
            u8::from(self.is_ready())
        );
        let _ = writeln!(
            s,
            "# TYPE mesh_proxy_config_generation gauge\nmesh_proxy_config_generation {}",
            snap.generation
        );
        let _ = writeln!(
            s,
            "# TYPE mesh_proxy_config_reloads_total counter\nmesh_proxy_config_reloads_total{{result=\"success\"}} {}\nmesh_proxy_config_reloads_total{{result=\"failure\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# TYPE mesh_proxy_services gauge\nmesh_proxy_services {}",
            snap.services.len()
        );
        s
    }

    /// The last reload error, if the last reload failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }
}

/// How often `run` checks the configuration files for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
