//! The assembled proxy: listeners, admin, configuration reloads and drain.
//!
//! [`Proxy::start`] runs the configuration pipeline ([`crate::pipeline`], the one `validate`
//! runs; any error stops start-up, naming the file, line, resource and field; warnings,
//! such as fields this version does not enforce, are logged), starts the outbound listener
//! (and the inbound one when the bootstrap asks for it, an L4 listener per `outboundPorts`
//! entry, [`crate::l4`], a gateway listener per server port of the Gateways that select
//! the workload: [`crate::gateway`], and one per `ingress[]` entry of the workload's
//! Sidecar: [`crate::ingress`]) on the data-plane engine, and the admin listener.
//! [`Proxy::reload`] runs the pipeline again: a configuration that passes replaces the
//! running one atomically (in-flight requests finish on the old one); one that does not is
//! logged and the last good configuration keeps serving. A reload that would lose every
//! resource, or the `ProxyBootstrap`, or that changes the gateway or Sidecar ingress
//! listeners (a restart binds them), is refused too: the usual cause of the first two is a file caught in the middle of
//! a write. [`Proxy::drain`] is what SIGTERM does.
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

use mesh_core::compile::Snapshot;
use mesh_core::config::Compiled;
use mesh_core::health::{HealthFlags, cluster_name, flags_text};
use mesh_core::model::bootstrap::ProxyBootstrap;
use mesh_core::{ConfigError, Diagnostic};

use arc_swap::ArcSwap;

use crate::admin::AdminServer;
use crate::engine::{
    BoundEngine, Engine, EngineConfig, Limits, OwnAddrs, Readiness, WorkerContext,
};
use crate::gateway::{GatewayTls, HttpsRedirectLayer};
use crate::inbound::{InboundClusters, InboundTarget};
use crate::l4::{CapturedPort, L4Handler, L4Shared};
use crate::pipeline::{self, Built};
use crate::security::{PortTls, WorkloadTls};
use crate::stack::{GatewayLayers, Layers};
use mesh_core::ext::{ConnectionSni, DestinationAddr, PeerIdentity};
use mesh_core::grpc::GrpcLocalReply;
use mesh_core::hcm::ConnectionManagerLayer;
use mesh_resilience::{CircuitBreaker, CircuitBreakerLayer, RateLimit, RateLimitLayer};
use mesh_routing::l4::{L4RouteTable, L4RouteTableHandle};
use mesh_routing::{RouteLayer, RouteTableHandle};
use mesh_telemetry::metrics::Reporter;
use mesh_telemetry::record::{Record, RecordBody, RecordLayer};
use mesh_telemetry::trace::{Trace, TraceLayer};
use mesh_tls::authz::{Authorizer, Authz, AuthzLayer};
use mesh_tls::jwt::{Authenticator, JwtAuthn, JwtAuthnLayer};
use mesh_transport::l4::L4WorkerContext;
use mesh_transport::tls::{DownstreamTls, PeerTls, PeerTlsInfo, UpstreamTls};
use tower_layer::Layer as _;

/// Each gateway port's swappable parts, with the address it listens on.
fn gateway_ports(
    gateways: crate::pipeline::Gateways,
    workload_tls: &Arc<WorkloadTls>,
) -> Vec<(SocketAddr, GatewayPort)> {
    let crate::pipeline::Gateways {
        plan, routes, tls, ..
    } = gateways;
    plan.ports
        .iter()
        .zip(routes)
        .zip(tls.ports)
        .map(|((p, table), built)| {
            (
                SocketAddr::new(p.address, p.local_port),
                GatewayPort {
                    number: p.number,
                    routes: RouteTableHandle::new(table),
                    redirect: HttpsRedirectLayer::new(p.redirect.clone()),
                    tls: GatewayTls::new(&p.tls, built, workload_tls.clone(), false).map(Arc::new),
                },
            )
        })
        .collect()
}

/// The TLS of each Sidecar ingress listener with `tls` (taking its configuration from
/// `plan`), served as a gateway server's; `None` for the others.
fn ingress_tls(
    plan: &mut crate::ingress::Plan,
    workload_tls: &Arc<WorkloadTls>,
) -> Vec<Option<Arc<GatewayTls>>> {
    let built = std::mem::take(&mut plan.terminations);
    plan.listeners
        .iter()
        .zip(built.into_iter().chain(std::iter::repeat_with(|| None)))
        .map(|(l, t)| {
            let p = l.port_plan()?;
            GatewayTls::new(
                &p.tls,
                t,
                workload_tls.clone(),
                l.serve == crate::ingress::Serve::Tcp,
            )
            .map(Arc::new)
        })
        .collect()
}

/// An L4 gateway listener (`TCP`, `TLS` or passthrough servers): its address, server port,
/// route table and the TLS it terminates (if any).
#[derive(Debug, Clone)]
struct GatewayL4Port {
    addr: SocketAddr,
    number: u16,
    routes: L4RouteTableHandle,
    tls: Option<Arc<GatewayTls>>,
}

/// The L4 gateway listeners of `gateways` (taking their route tables and TLS).
fn gateway_l4_ports(
    gateways: &mut crate::pipeline::Gateways,
    workload_tls: &Arc<WorkloadTls>,
) -> Vec<GatewayL4Port> {
    let tables = std::mem::take(&mut gateways.l4);
    let tls = std::mem::take(&mut gateways.tls.l4);
    gateways
        .plan
        .l4
        .iter()
        .zip(tables)
        .zip(tls.into_iter().chain(std::iter::repeat_with(|| None)))
        .map(|((p, table), built)| GatewayL4Port {
            addr: SocketAddr::new(p.address, p.local_port),
            number: p.number,
            routes: L4RouteTableHandle::new(table),
            tls: p
                .tls()
                .and_then(|t| GatewayTls::new(t, built, workload_tls.clone(), true))
                .map(Arc::new),
        })
        .collect()
}

/// Why the proxy could not start, or a reload was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The configuration is valid but its routes cannot be compiled (kept for
    /// compatibility: the pipeline now reports these as [`StartError::Config`]
    /// diagnostics, with file and line).
    #[error("{0}")]
    Routes(#[from] mesh_routing::BuildError),
    /// A reload was refused though the configuration is valid (it would drop every
    /// resource, or the `ProxyBootstrap`: a truncated write, usually).
    #[error("{0}")]
    Refused(String),
    /// A listener could not be bound or a thread started.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A listener's address is already in use: another socket listens on it (another
    /// process, say a proxy still running on an old configuration). The proxy does not share
    /// a port with anyone but its own workers, and starts none of its listeners.
    #[error(
        "{listener} listener {addr}: address already in use (another process listens on it; stop that process or choose another port)"
    )]
    AddrInUse {
        /// Which listener.
        listener: ListenerKind,
        /// The address it was to listen on.
        addr: SocketAddr,
    },
}

/// Which of the proxy's listeners (in errors and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenerKind {
    /// `spec.outbound`: the application sends its requests here.
    Outbound,
    /// `spec.inbound`: peers reach the local application here.
    Inbound,
    /// `spec.admin`: `/ready`, `/stats/prometheus`, `/config_dump`, `/clusters`.
    Admin,
    /// A gateway listener: a server port of the Gateways that select this workload.
    Gateway,
    /// `spec.outboundPorts`: an L4 listener for one service port (TCP/TLS routes).
    OutboundPort,
    /// A Sidecar `ingress[]` listener ([`crate::ingress`]).
    SidecarIngress,
}

impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerKind::Outbound => "outbound",
            ListenerKind::Inbound => "inbound",
            ListenerKind::Admin => "admin",
            ListenerKind::Gateway => "gateway",
            ListenerKind::OutboundPort => "outboundPorts",
            ListenerKind::SidecarIngress => "Sidecar ingress",
        })
    }
}

/// State shared by the proxy, its admin endpoint and its reload loop.
#[derive(Debug)]
pub struct ProxyState {
    files: Vec<PathBuf>,
    snapshot: ArcSwap<Snapshot>,
    layers: Layers,
    readiness: Mutex<Vec<(ListenerKind, Readiness)>>,
    draining: AtomicBool,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The running configuration's fields that this version does not enforce.
    unenforced: ArcSwap<Vec<Diagnostic>>,
    /// Whether the running configuration has a `ProxyBootstrap` document.
    has_bootstrap: AtomicBool,
    /// The inbound listener's mTLS (identity, PeerAuthentication mode).
    workload_tls: Arc<WorkloadTls>,
    /// The inbound listener's AuthorizationPolicies, swapped on reload.
    authz: Arc<ArcSwap<Authorizer>>,
    /// The inbound listener's RequestAuthentications (JWT), swapped on reload.
    jwt: Arc<ArcSwap<Authenticator>>,
    /// The `outboundPorts` listeners' route tables (fixed at start), swapped on reload.
    l4_routes: Vec<(CapturedPort, L4RouteTableHandle)>,
    /// The gateway listeners' swappable parts, by server port (same order as their plan).
    gateways: Vec<GatewayPort>,
    /// The L4 gateway listeners' route tables and TLS, by server port, swapped on reload.
    gateway_l4: Vec<GatewayL4Port>,
    /// The gateway listeners' identities: a reload that changes them needs a restart.
    gateway_keys: Vec<crate::gateway::ListenerKey>,
    /// The Sidecar ingress listeners: a reload that changes them needs a restart.
    ingress: crate::ingress::Plan,
    /// Their own TLS (`tls`), by listener (same order; `None`: the workload's mTLS).
    ingress_tls: Vec<Option<Arc<GatewayTls>>>,
}

/// What a reload swaps in one gateway listener.
#[derive(Clone)]
struct GatewayPort {
    number: u16,
    routes: RouteTableHandle,
    redirect: HttpsRedirectLayer,
    tls: Option<Arc<GatewayTls>>,
}

impl std::fmt::Debug for GatewayPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayPort")
            .field("number", &self.number)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<ProxyState>,
    outbound: Option<Engine>,
    inbound: Option<Engine>,
    /// `inboundPorts`: one inbound listener per workload port.
    inbound_ports: Vec<(u16, Engine)>,
    /// The gateway listeners, by server port.
    gateway_ports: Vec<(u16, Engine)>,
    /// `outboundPorts`: one L4 listener per captured service port.
    outbound_ports: Vec<(CapturedPort, Engine)>,
    /// The Sidecar ingress listeners, by `port.number`.
    ingress: Vec<(u16, Engine)>,
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
        max_downstream_connections: l.max_downstream_connections,
        ..Limits::default()
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

/// The error of binding `listener` to `addr`: [`StartError::AddrInUse`] when another socket
/// listens there.
fn bind_err(listener: ListenerKind, addr: SocketAddr) -> impl FnOnce(io::Error) -> StartError {
    move |source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            StartError::AddrInUse { listener, addr }
        } else {
            StartError::Io {
                what: format!("{listener} listener {addr}"),
                source,
            }
        }
    }
}

/// Every listening socket of the proxy, bound but not served yet: [`bind`](Self::bind)
/// binds them all (or none: an error drops, and so closes, those already bound), then
/// [`Proxy::start_compiled`] starts each on its socket. A new kind of listener (gateway
/// ports) is one more field, bound here like the others.
#[derive(Debug)]
struct BoundListeners {
    outbound: Option<BoundEngine>,
    /// The inbound listener and the local application it forwards to.
    inbound: Option<(BoundEngine, SocketAddr)>,
    /// `inboundPorts`: (workload port, its listener, the application's address for it).
    inbound_ports: Vec<(u16, BoundEngine, SocketAddr)>,
    /// Gateway listeners: (server port, its listener).
    gateways: Vec<(u16, BoundEngine)>,
    /// L4 gateway listeners (`TCP`, `TLS`, passthrough): (server port, its listener).
    gateway_l4: Vec<(u16, BoundEngine)>,
    /// `outboundPorts`: (the captured service port, its L4 listener).
    outbound_ports: Vec<(CapturedPort, BoundEngine)>,
    /// Sidecar ingress listeners: (the plan, its listener, the endpoint's address, its own
    /// TLS if it has `tls`).
    ingress: Vec<(
        crate::ingress::ListenerPlan,
        BoundEngine,
        SocketAddr,
        Option<Arc<GatewayTls>>,
    )>,
    admin: std::net::TcpListener,
}

impl BoundListeners {
    fn bind(
        boot: &ProxyBootstrap,
        captured_ports: Vec<CapturedPort>,
        limits: &Limits,
        workload_tls: &Arc<WorkloadTls>,
        gateways: &[(SocketAddr, GatewayPort)],
        gateway_l4: &[GatewayL4Port],
        (ingress, ingress_tls): (&crate::ingress::Plan, &[Option<Arc<GatewayTls>>]),
    ) -> Result<BoundListeners, StartError> {
        let concurrency = boot.concurrency as usize;
        // every listener of this proxy, so that no connector forwards into one of them
        let own_addrs = OwnAddrs::new();
        // `limits.maxDownstreamConnections` counts the connections of every listener
        let connections = mesh_transport::DownstreamConnections::new();
        // the `server` of the answers the engines make before the layers (a malformed
        // request's 400, a loop's 508), each kind of listener's name
        let names = crate::stack::ListenerKinds::new(&boot.proxy_headers);
        let server = |layer: mesh_core::hcm::ConnectionManagerLayer| layer.server().cloned();
        // `workload_port`: the inbound listener's (its portLevelMtls mode)
        let engine = |listener: ListenerKind, address: &str, port: u16, workload_port: u16| {
            let addr = socket_addr(address, port).map_err(io_err(format!("{listener} address")))?;
            let downstream_tls: Option<Arc<dyn DownstreamTls>> = match listener {
                ListenerKind::Inbound => Some(Arc::new(PortTls::new(
                    workload_tls.clone(),
                    u32::from(workload_port),
                ))),
                _ => None,
            };
            let upstream_tls: Option<Arc<dyn UpstreamTls>> = match listener {
                ListenerKind::Outbound => Some(workload_tls.clone()),
                _ => None,
            };
            let cfg = EngineConfig {
                concurrency,
                limits: limits.clone(),
                own_addrs: own_addrs.clone(),
                downstream_tls,
                upstream_tls,
                connections: connections.clone(),
                server: match listener {
                    ListenerKind::Outbound => server(names.outbound),
                    ListenerKind::Inbound => server(names.inbound),
                    _ => None,
                },
                ..EngineConfig::new(addr)
            };
            Engine::bind(cfg).map_err(bind_err(listener, addr))
        };
        let outbound = match &boot.outbound {
            Some(out) => Some(engine(ListenerKind::Outbound, &out.address, out.port, 0)?),
            None => None,
        };
        let inbound = match &boot.inbound {
            Some(inb) => {
                let app: SocketAddr = inb
                    .local_app
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| StartError::Io {
                        what: format!("inbound localApp {:?}", inb.local_app),
                        source: io::Error::new(io::ErrorKind::InvalidInput, "not a host:port"),
                    })?;
                Some((
                    engine(ListenerKind::Inbound, &inb.address, inb.port, app.port())?,
                    app,
                ))
            }
            None => None,
        };
        // `inboundPorts`: workload port → a listener that forwards to that port of the
        // application's address, under the port's PeerAuthentication mode
        let mut inbound_ports = Vec::new();
        if let (Some(inb), Some((_, app))) = (&boot.inbound, &inbound) {
            for (workload, local) in &boot.inbound_ports {
                let Ok(workload) = workload.parse::<u16>() else {
                    continue; // refused by validation
                };
                if ingress.serves(workload) {
                    continue; // the Sidecar's ingress listener for the port takes it
                }
                let e = engine(ListenerKind::Inbound, &inb.address, *local, workload)?;
                inbound_ports.push((workload, e, SocketAddr::new(app.ip(), workload)));
            }
        }
        // gateway listeners: the servers' TLS (if any), the connector's like the outbound one
        let mut gateway_engines = Vec::new();
        for (addr, port) in gateways {
            let cfg = EngineConfig {
                concurrency,
                limits: limits.clone(),
                own_addrs: own_addrs.clone(),
                downstream_tls: port.tls.clone().map(|t| -> Arc<dyn DownstreamTls> { t }),
                upstream_tls: Some(workload_tls.clone()),
                server: server(names.gateway),
                ..EngineConfig::new(*addr)
            };
            let e = Engine::bind(cfg).map_err(bind_err(ListenerKind::Gateway, *addr))?;
            gateway_engines.push((port.number, e));
        }
        let mut gateway_l4_engines = Vec::new();
        for port in gateway_l4 {
            let cfg = EngineConfig {
                concurrency,
                limits: limits.clone(),
                own_addrs: own_addrs.clone(),
                ..EngineConfig::new(port.addr)
            };
            let e = Engine::bind(cfg).map_err(bind_err(ListenerKind::Gateway, port.addr))?;
            gateway_l4_engines.push((port.number, e));
        }
        // `outboundPorts`: on the outbound listener's address (loopback without one)
        let l4_address = boot
            .outbound
            .as_ref()
            .map_or("127.0.0.1", |o| o.address.as_str());
        let mut outbound_ports = Vec::new();
        for captured in captured_ports {
            let e = engine(
                ListenerKind::OutboundPort,
                l4_address,
                captured.local_port,
                0,
            )?;
            outbound_ports.push((captured, e));
        }
        // Sidecar ingress listeners: HTTP ones terminate the port's mTLS in the engine, L4
        // ones in their handler (crate::ingress)
        let mut ingress_engines = Vec::new();
        if let Some((_, app)) = &inbound {
            for (i, l) in ingress.listeners.iter().enumerate() {
                let addr = SocketAddr::new(l.address, l.local_port);
                let own_tls = ingress_tls.get(i).cloned().flatten();
                let downstream_tls: Option<Arc<dyn DownstreamTls>> = match (l.serve, &own_tls) {
                    (crate::ingress::Serve::Http, Some(t)) => Some(t.clone()),
                    (crate::ingress::Serve::Http, None) => Some(Arc::new(PortTls::new(
                        workload_tls.clone(),
                        u32::from(l.number),
                    ))),
                    (crate::ingress::Serve::Tcp, _) => None,
                };
                let cfg = EngineConfig {
                    concurrency,
                    limits: limits.clone(),
                    own_addrs: own_addrs.clone(),
                    downstream_tls,
                    connections: connections.clone(),
                    server: server(names.inbound),
                    ..EngineConfig::new(addr)
                };
                let e = Engine::bind(cfg).map_err(bind_err(ListenerKind::SidecarIngress, addr))?;
                ingress_engines.push((l.clone(), e, l.endpoint.resolve(*app), own_tls));
            }
        }
        let admin_addr =
            socket_addr(&boot.admin.address, boot.admin.port).map_err(io_err("admin address"))?;
        let admin =
            AdminServer::bind(admin_addr).map_err(bind_err(ListenerKind::Admin, admin_addr))?;
        if let Ok(a) = admin.local_addr() {
            own_addrs.add(a);
        }
        Ok(BoundListeners {
            outbound,
            inbound,
            inbound_ports,
            gateways: gateway_engines,
            gateway_l4: gateway_l4_engines,
            outbound_ports,
            ingress: ingress_engines,
            admin,
        })
    }
}

// === impl Proxy ===

impl Proxy {
    /// Runs the configuration pipeline on the files and starts the proxy.
    pub fn start(files: Vec<PathBuf>) -> Result<Proxy, StartError> {
        let built = pipeline::build_files(&files)?;
        Proxy::start_built(built, files)
    }

    /// Starts the proxy from an already compiled configuration (the pipeline's build step
    /// runs on it); `files` are what [`reload`](Self::reload) re-reads (may be empty: then
    /// reload only re-applies).
    pub fn start_compiled(compiled: Compiled, files: Vec<PathBuf>) -> Result<Proxy, StartError> {
        Proxy::start_built(pipeline::build_compiled(compiled)?, files)
    }

    /// Starts the proxy from a configuration that went through the whole pipeline.
    pub fn start_built(built: Built, files: Vec<PathBuf>) -> Result<Proxy, StartError> {
        let Built {
            compiled,
            routes,
            l4,
            security,
            gateways,
            mut ingress,
        } = built;
        log_warnings(&compiled.warnings);
        let snapshot = compiled.snapshot;
        let boot = snapshot.bootstrap.clone();
        let limits = engine_limits(&boot);
        let authz = Arc::new(ArcSwap::new(security.authz.clone()));
        crate::jwks::start(&security.jwt);
        let jwt = Arc::new(ArcSwap::new(security.jwt.clone()));
        let workload_tls = Arc::new(WorkloadTls::new(security).map_err(|e| StartError::Io {
            what: "inbound TLS".into(),
            source: io::Error::other(e),
        })?);
        // Every socket is bound before any listener serves or is announced (and before the
        // layers start their DNS thread): a start-up that fails on one address (say, in use)
        // leaves none of the others listening.
        let captured = crate::l4::captured_ports(&snapshot);
        let l4_routes: Vec<(CapturedPort, L4RouteTableHandle)> = captured
            .iter()
            .cloned()
            .zip(l4.into_iter().map(L4RouteTableHandle::new))
            .collect();
        let mut gateways = gateways;
        let gateway_keys = gateways.plan.listener_keys();
        let gateway_l4 = gateway_l4_ports(&mut gateways, &workload_tls);
        let gateway_ports = gateway_ports(gateways, &workload_tls);
        let ingress_tls = ingress_tls(&mut ingress, &workload_tls);
        let bound = BoundListeners::bind(
            &boot,
            captured,
            &limits,
            &workload_tls,
            &gateway_ports,
            &gateway_l4,
            (&ingress, &ingress_tls),
        )?;
        let gateway_ports: Vec<GatewayPort> = gateway_ports.into_iter().map(|(_, p)| p).collect();
        let layers = Layers::new(&snapshot, routes);
        let state = Arc::new(ProxyState {
            files,
            snapshot: ArcSwap::new(snapshot.clone()),
            layers: layers.clone(),
            readiness: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            unenforced: ArcSwap::from_pointee(compiled.unenforced),
            has_bootstrap: AtomicBool::new(compiled.has_bootstrap),
            workload_tls,
            authz,
            jwt,
            gateways: gateway_ports,
            gateway_l4,
            gateway_keys,
            l4_routes,
            ingress,
            ingress_tls,
        });
        let mut proxy = Proxy {
            state,
            outbound: None,
            inbound: None,
            inbound_ports: Vec::new(),
            gateway_ports: Vec::new(),
            outbound_ports: Vec::new(),
            ingress: Vec::new(),
            admin: None,
        };
        let app = bound.inbound.as_ref().map(|(_, app)| *app);
        if let Err(e) = proxy.start_listeners(bound, layers) {
            proxy.stop_now();
            return Err(e);
        }
        if let Some(engine) = &proxy.outbound {
            tracing::info!(addr = %engine.local_addr(), workers = engine.workers(), "outbound listener up");
        }
        if let (Some(engine), Some(app)) = (&proxy.inbound, app) {
            tracing::info!(addr = %engine.local_addr(), app = %app, "inbound listener up");
        }
        if let Some(admin) = &proxy.admin {
            tracing::info!(addr = %admin.local_addr(), "admin listener up");
        }
        Ok(proxy)
    }

    /// Starts the engines and the admin server on their bound sockets (the admin last: its
    /// `/ready` sees every engine's readiness).
    /// The layers every inbound listener's stack shares.
    fn inbound_layers(&self) -> InboundLayers {
        InboundLayers {
            tls: self.state.workload_tls.clone(),
            jwt: self.state.jwt.clone(),
            authz: self.state.authz.clone(),
            limit: self.state.layers.inbound_rate_limit(),
            trace: self.state.layers.inbound_trace().clone(),
            record: self.state.layers.telemetry().inbound(),
            hcm: self.state.layers.inbound_connection_manager(),
            clusters: self.state.layers.inbound_clusters().clone(),
        }
    }

    fn start_listeners(&mut self, bound: BoundListeners, layers: Layers) -> Result<(), StartError> {
        let BoundListeners {
            outbound,
            inbound,
            inbound_ports,
            gateways,
            gateway_l4,
            outbound_ports,
            ingress,
            admin,
        } = bound;
        self.state.layers.telemetry().exporters().set_local_addrs(
            outbound.as_ref().map(|b| b.local_addr()),
            inbound.as_ref().map(|(b, _)| b.local_addr()),
        );
        let metrics = self.state.layers.telemetry().metrics();
        if let Some(b) = &outbound {
            metrics.set_listener_addr(Reporter::Source, b.local_addr());
        }
        if let Some((b, _)) = &inbound {
            metrics.set_listener_addr(Reporter::Destination, b.local_addr());
        }
        if let Some(b) = outbound {
            let addr = b.local_addr();
            let factory = Arc::new(move |ctx: &WorkerContext| layers.stack(ctx));
            let engine = b
                .start(factory)
                .map_err(io_err(format!("outbound listener {addr}")))?;
            self.state
                .push_readiness(ListenerKind::Outbound, engine.readiness());
            self.outbound = Some(engine);
        }
        if let Some((b, app)) = inbound {
            let addr = b.local_addr();
            let layers = self.inbound_layers();
            let factory = Arc::new(move |ctx: &WorkerContext| {
                inbound_stack(ctx, app, addr, app.port(), &layers)
            });
            let engine = b
                .start(factory)
                .map_err(io_err(format!("inbound listener {addr}")))?;
            self.state
                .push_readiness(ListenerKind::Inbound, engine.readiness());
            self.inbound = Some(engine);
        }
        for (port, b, app) in inbound_ports {
            let addr = b.local_addr();
            let layers = self.inbound_layers();
            let factory = Arc::new(move |ctx: &WorkerContext| {
                inbound_stack(ctx, app, addr, app.port(), &layers)
            });
            let engine = b
                .start(factory)
                .map_err(io_err(format!("inbound listener {addr} (port {port})")))?;
            self.state
                .push_readiness(ListenerKind::Inbound, engine.readiness());
            tracing::info!(addr = %addr, app = %app, "inbound listener for port {port} up");
            self.inbound_ports.push((port, engine));
        }
        for (port, b) in gateways {
            let addr = b.local_addr();
            let Some(gw) = self.state.gateways.iter().find(|g| g.number == port) else {
                continue;
            };
            let gw_layers = GatewayLayers {
                route: RouteLayer::new(gw.routes.clone()),
                redirect: gw.redirect.clone(),
                rate_limit: RateLimitLayer::new(),
                jwt: self.state.jwt.clone(),
                authz: self.state.authz.clone(),
                listener: addr,
            };
            let shared = self.state.layers.clone();
            let factory =
                Arc::new(move |ctx: &WorkerContext| shared.gateway_stack(ctx, &gw_layers));
            let engine = b
                .start(factory)
                .map_err(io_err(format!("gateway listener {addr} (port {port})")))?;
            self.state
                .push_readiness(ListenerKind::Gateway, engine.readiness());
            tracing::info!(addr = %addr, tls = gw.tls.is_some(), "gateway listener for port {port} up");
            self.gateway_ports.push((port, engine));
        }
        for (port, b) in gateway_l4 {
            let addr = b.local_addr();
            let Some(gw) = self.state.gateway_l4.iter().find(|g| g.number == port) else {
                continue;
            };
            let sni = gw.routes.load_full().reads_sni();
            let tls = gw.tls.clone().map(|t| -> Arc<dyn DownstreamTls> { t });
            let terminates = tls.is_some();
            let engine = self.start_l4(b, &gw.routes, tls, ListenerKind::Gateway)?;
            tracing::info!(addr = %addr, sni, terminates, "L4 gateway listener for port {port} up");
            self.gateway_ports.push((port, engine));
        }
        for ((captured, b), (_, routes)) in outbound_ports.into_iter().zip(&self.state.l4_routes) {
            let addr = b.local_addr();
            let engine = self.start_l4(b, routes, None, ListenerKind::OutboundPort)?;
            tracing::info!(addr = %addr, service = %captured.key, "outboundPorts listener up");
            self.outbound_ports.push((captured, engine));
        }
        for (l, b, endpoint, own_tls) in ingress {
            let addr = b.local_addr();
            let port = l.number;
            let engine = match l.serve {
                crate::ingress::Serve::Http => {
                    let layers = self.inbound_layers();
                    let factory = Arc::new(move |ctx: &WorkerContext| {
                        inbound_stack(ctx, endpoint, addr, port, &layers)
                    });
                    b.start(factory)
                }
                crate::ingress::Serve::Tcp => {
                    let tls: Arc<dyn DownstreamTls> = match own_tls {
                        Some(t) => t,
                        None => Arc::new(PortTls::new(
                            self.state.workload_tls.clone(),
                            u32::from(port),
                        )),
                    };
                    let shared = crate::ingress::TcpIngress {
                        tls,
                        authz: self.state.authz.clone(),
                        endpoint,
                        number: port,
                        handshake_timeout: self
                            .state
                            .snapshot()
                            .bootstrap
                            .limits
                            .tls_handshake_timeout
                            .get(),
                        metrics: self.state.layers.telemetry().metrics().clone(),
                        access_log: self
                            .state
                            .layers
                            .telemetry()
                            .exporters()
                            .access_log(mesh_telemetry::sinks::Side::Inbound)
                            .clone(),
                        clusters: self.state.layers.inbound_clusters().clone(),
                    };
                    let factory = Arc::new(move |ctx: &L4WorkerContext| {
                        crate::ingress::TcpIngressHandler::new(&shared, ctx)
                    });
                    b.start_l4(factory)
                }
            }
            .map_err(io_err(format!(
                "Sidecar ingress listener {addr} (port {port})"
            )))?;
            self.state
                .push_readiness(ListenerKind::SidecarIngress, engine.readiness());
            tracing::info!(addr = %addr, endpoint = %endpoint, serve = %l.serve, "Sidecar ingress listener for port {port} up");
            self.ingress.push((port, engine));
        }
        let addr = admin.local_addr().map_err(io_err("admin listener"))?;
        let admin = AdminServer::start_on(admin, self.state.clone())
            .map_err(io_err(format!("admin listener {addr}")))?;
        self.admin = Some(admin);
        Ok(())
    }

    /// Stops whatever [`start_listeners`](Self::start_listeners) started, at once, and waits
    /// for it: the sockets are closed when this returns.
    fn stop_now(&mut self) {
        if let Some(e) = self.outbound.take() {
            e.shutdown_now();
        }
        if let Some(e) = self.inbound.take() {
            e.shutdown_now();
        }
        for (_, e) in self.inbound_ports.drain(..) {
            e.shutdown_now();
        }
        for (_, e) in self.gateway_ports.drain(..) {
            e.shutdown_now();
        }
        for (_, e) in self.outbound_ports.drain(..) {
            e.shutdown_now();
        }
        for (_, e) in self.ingress.drain(..) {
            e.shutdown_now();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
    }

    /// The outbound listener's address, if the bootstrap has one.
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.outbound.as_ref().map(Engine::local_addr)
    }

    /// The inbound listener's address, if the bootstrap has one.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound.as_ref().map(Engine::local_addr)
    }

    /// The address of the inbound listener for workload port `port` (`inboundPorts`).
    pub fn inbound_port_addr(&self, port: u16) -> Option<SocketAddr> {
        self.inbound_ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, e)| e.local_addr())
    }

    /// The address of the Sidecar ingress listener for `port.number` `port`.
    pub fn ingress_addr(&self, port: u16) -> Option<SocketAddr> {
        self.ingress
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, e)| e.local_addr())
    }

    /// Starts an L4 listener (`outboundPorts`, a gateway's `TCP`, `TLS` or passthrough
    /// port): the engine's L4 mode with [`L4Handler`] on `routes`, the balancer, metrics and
    /// TLS origination of the HTTP listeners; `terminate`: the TLS the listener terminates.
    fn start_l4(
        &self,
        b: BoundEngine,
        routes: &L4RouteTableHandle,
        terminate: Option<Arc<dyn DownstreamTls>>,
        kind: ListenerKind,
    ) -> Result<Engine, StartError> {
        let addr = b.local_addr();
        let shared = L4Shared {
            routes: routes.clone(),
            lb: self.state.layers.lb().clone(),
            metrics: self.state.layers.telemetry().metrics().clone(),
            tls: Some(self.state.workload_tls.clone()),
            terminate,
            hello_timeout: self
                .state
                .snapshot()
                .bootstrap
                .limits
                .tls_handshake_timeout
                .get(),
            access_log: self
                .state
                .layers
                .telemetry()
                .exporters()
                .access_log(mesh_telemetry::sinks::Side::Outbound)
                .clone(),
        };
        let factory = Arc::new(move |ctx: &L4WorkerContext| L4Handler::new(&shared, ctx));
        let engine = b
            .start_l4(factory)
            .map_err(io_err(format!("{kind} listener {addr}")))?;
        self.state.push_readiness(kind, engine.readiness());
        Ok(engine)
    }

    /// The address of the gateway listener for server port `port`.
    pub fn gateway_addr(&self, port: u16) -> Option<SocketAddr> {
        self.gateway_ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, e)| e.local_addr())
    }

    /// The address of the `outboundPorts` listener of `key`, as written in the bootstrap
    /// (`"db.default.svc.cluster.local:5432"`).
    pub fn outbound_port_addr(&self, key: &str) -> Option<SocketAddr> {
        self.outbound_ports
            .iter()
            .find(|(c, _)| c.key == key)
            .map(|(_, e)| e.local_addr())
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

    /// Blocks until the spans and access log lines of the requests completed so far are
    /// exported and written (tests; the drain does it last). An export to a collector that
    /// does not answer takes up to `tracing.otlp.timeout`. It blocks the calling thread: from
    /// async code, call it through `spawn_blocking` or `block_in_place`.
    pub fn flush_telemetry(&self) {
        self.state.layers.telemetry().exporters().flush();
    }

    /// Stops accepting, lets in-flight requests finish within `drainTimeout`, stops the
    /// listeners and the admin endpoint.
    pub async fn drain(mut self) {
        self.state.draining.store(true, Ordering::SeqCst);
        let out = self.outbound.take();
        let inb = self.inbound.take();
        let ports = std::mem::take(&mut self.inbound_ports);
        let gateways = std::mem::take(&mut self.gateway_ports);
        for (_, e) in gateways {
            e.drain().await;
        }
        let l4 = std::mem::take(&mut self.outbound_ports);
        if let Some(e) = out {
            e.drain().await;
        }
        for (_, e) in l4 {
            e.drain().await;
        }
        if let Some(e) = inb {
            e.drain().await;
        }
        for (_, e) in ports {
            e.drain().await;
        }
        for (_, e) in std::mem::take(&mut self.ingress) {
            e.drain().await;
        }
        if let Some(a) = self.admin.take() {
            let _ = tokio::task::spawn_blocking(move || a.stop()).await;
        }
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            state.layers.telemetry().exporters().flush();
        })
        .await;
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
        for (_, e) in self.inbound_ports.drain(..) {
            e.drain_blocking();
        }
        for (_, e) in self.gateway_ports.drain(..) {
            e.drain_blocking();
        }
        for (_, e) in self.outbound_ports.drain(..) {
            e.drain_blocking();
        }
        for (_, e) in self.ingress.drain(..) {
            e.drain_blocking();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        self.flush_telemetry();
    }
}

/// The inbound stack: every request goes to the local application, if its JWTs are valid,
/// the AuthorizationPolicies allow it and the inbound `LocalRateLimit` (if any) has a token
/// for it (Istio's task inserts the local rate limit filter before the router, after
/// `jwt_authn` and RBAC).
fn inbound_stack(
    ctx: &WorkerContext,
    app: SocketAddr,
    listener: SocketAddr,
    workload_port: u16,
    layers: &InboundLayers,
) -> InboundStack {
    // the application is the inbound cluster's endpoint: its connection pool's circuit
    // breaker (`crate::inbound`) admits each request
    let forward = InboundForward {
        inner: CircuitBreakerLayer::new().layer(ctx.connector()),
        target: InboundTarget::new(layers.clusters.clone(), app, workload_port),
    };
    InboundStack {
        // the hop's trace context first (an Envoy sidecar's inbound listener traces too:
        // the application gets a traceparent and an x-request-id, spans are server spans)
        inner: layers.trace.layer(
            layers.record.layer(
                // (an Istio sidecar's inbound listener's headers: `server: istio-envoy`,
                // `x-forwarded-proto` when absent, `https` over mTLS)
                layers
                    .hcm
                    .layer(JwtAuthnLayer::shared(layers.jwt.clone()).layer(
                        AuthzLayer::shared(layers.authz.clone()).layer(layers.limit.layer(forward)),
                    )),
            ),
        ),
        tls: layers.tls.clone(),
        // the workload port the peer meant (Envoy's original destination under iptables):
        // the application's, or a Sidecar ingress listener's `port.number`; the address,
        // the listener's
        destination: DestinationAddr(SocketAddr::new(listener.ip(), workload_port)),
        last: None,
    }
}

/// The shared parts of every inbound listener's stack (the main one's and each
/// `inboundPorts` one's): cloned into each listener's worker factory.
#[derive(Clone)]
struct InboundLayers {
    tls: Arc<WorkloadTls>,
    jwt: Arc<ArcSwap<Authenticator>>,
    authz: Arc<ArcSwap<Authorizer>>,
    limit: RateLimitLayer,
    trace: TraceLayer,
    record: RecordLayer,
    hcm: ConnectionManagerLayer,
    clusters: Arc<InboundClusters>,
}

/// What the inbound stack learns once per connection from its TLS session.
#[derive(Debug, Clone)]
struct ConnectionFacts {
    peer: Arc<PeerTlsInfo>,
    /// `x-forwarded-client-cert` (`None`: no client certificate with a SPIFFE identity).
    xfcc: Option<http::HeaderValue>,
    /// The client's SPIFFE identity, for AuthorizationPolicy.
    identity: Option<PeerIdentity>,
    sni: Option<ConnectionSni>,
}

/// The inbound listener's stack: fills in what AuthorizationPolicy reads (the peer's
/// identity, the destination, the SNI), sets `x-forwarded-client-cert` when the client came
/// over mTLS, validates JWTs ([`mesh_tls::jwt`]), applies the AuthorizationPolicies
/// ([`mesh_tls::authz`]) and forwards to the local application.
#[derive(Debug, Clone)]
pub struct InboundStack {
    inner: Trace<Record<InboundPolicies>>,
    tls: Arc<WorkloadTls>,
    destination: DestinationAddr,
    /// The last connection's facts (requests of one connection share them).
    last: Option<ConnectionFacts>,
}

/// The inbound stack inside its record layer: gRPC replies, JWTs, authorization, the rate
/// limit, then the application.
type InboundPolicies = GrpcLocalReply<JwtAuthn<Authz<RateLimit<InboundForward>>>>;

/// The end of the inbound stack: the local application, through its inbound cluster's
/// circuit breaker ([`crate::inbound`]).
#[derive(Debug, Clone)]
pub struct InboundForward {
    inner: CircuitBreaker<crate::engine::Connector>,
    target: InboundTarget,
}

impl InboundStack {
    /// The facts of the connection `peer`, computed once per connection.
    fn facts(&mut self, peer: &Arc<PeerTlsInfo>) -> ConnectionFacts {
        if let Some(f) = &self.last
            && Arc::ptr_eq(&f.peer, peer)
        {
            return f.clone();
        }
        let client = peer
            .peer_certificates
            .first()
            .and_then(|cert| Some((cert, mesh_tls::peer::spiffe_id(cert).ok()?)));
        let xfcc = client.as_ref().and_then(|(cert, client)| {
            let id = self.tls.current().identity.clone()?;
            let by = id.current().identity().to_string();
            let text = crate::security::xfcc(&by, cert.as_ref(), &client.to_string());
            http::HeaderValue::from_str(&text).ok()
        });
        let facts = ConnectionFacts {
            peer: peer.clone(),
            xfcc,
            identity: client.map(|(_, id)| PeerIdentity::new(id)),
            sni: peer
                .server_name
                .as_deref()
                .map(|s| ConnectionSni(Arc::from(s))),
        };
        self.last = Some(facts.clone());
        facts
    }
}

impl tower_service::Service<http::Request<hyper::body::Incoming>> for InboundStack {
    type Response = http::Response<RecordBody<mesh_core::MeshBody<crate::engine::UpstreamBody>>>;
    type Error = std::convert::Infallible;
    type Future = mesh_telemetry::record::ResponseFuture<
        mesh_core::grpc::ResponseFuture<
            mesh_tls::jwt::ResponseFuture<
                mesh_tls::authz::ResponseFuture<
                    mesh_resilience::ratelimit::ResponseFuture<InboundFuture>,
                    mesh_core::MeshBody<crate::engine::UpstreamBody>,
                >,
                mesh_core::MeshBody<crate::engine::UpstreamBody>,
            >,
        >,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        // a client's own x-forwarded-client-cert is never trusted (Envoy's SANITIZE_SET;
        // Istio's sidecars append to it): over mTLS it is replaced by the connection's
        let peer = req.extensions().get::<PeerTls>().map(|p| p.0.clone());
        let facts = peer.map(|p| self.facts(&p));
        match facts.as_ref().and_then(|f| f.xfcc.clone()) {
            Some(v) => {
                req.headers_mut().insert(XFCC, v);
            }
            None => {
                req.headers_mut().remove(XFCC);
            }
        }
        if let Some(f) = facts {
            if let Some(id) = f.identity {
                req.extensions_mut().insert(id);
            }
            if let Some(sni) = f.sni {
                req.extensions_mut().insert(sni);
            }
        }
        req.extensions_mut().insert(self.destination);
        self.inner.call(req)
    }
}

/// The future of [`InboundForward`].
pub type InboundFuture =
    mesh_resilience::breaker::ResponseFuture<crate::engine::Connector, hyper::body::Incoming>;

impl tower_service::Service<http::Request<hyper::body::Incoming>> for InboundForward {
    type Response = crate::engine::EngineResponse;
    type Error = std::convert::Infallible;
    type Future = InboundFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<hyper::body::Incoming>>::poll_ready(
            &mut self.inner,
            cx,
        )
    }

    fn call(&mut self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let up = self.target.upstream();
        // the access log's upstream cluster and host, and the pick in the request's slots
        // (no extension of its own), as the balancer records them outbound
        if let Some(info) = mesh_core::ext::stream_info(req.extensions()) {
            info.set_upstream(&up);
        }
        mesh_core::ext::slots_mut(req.extensions_mut()).upstream = Some(up);
        self.inner.call(req)
    }
}

/// `x-forwarded-client-cert`.
const XFCC: http::HeaderName = http::HeaderName::from_static("x-forwarded-client-cert");

// === impl ProxyState ===

impl ProxyState {
    /// Fetches every `jwksUri` of the RequestAuthentications in force now (a key rotation
    /// at the issuer, before the 20-minute refresh); returns how many were stored.
    pub fn refresh_jwks(&self) -> usize {
        crate::jwks::refresh_now(&self.jwt.load())
    }

    fn push_readiness(&self, listener: ListenerKind, r: Readiness) {
        if let Ok(mut v) = self.readiness.lock() {
            v.push((listener, r));
        }
    }

    /// Whether every listener accepts, a configuration is loaded, and the proxy is not draining.
    pub fn is_ready(&self) -> bool {
        if self.is_draining() {
            return false;
        }
        self.readiness
            .lock()
            .map(|v| v.iter().all(|(_, r)| r.is_ready()))
            .unwrap_or(false)
    }

    /// Re-reads the workload certificate files, and the files of DestinationRules' `tls`, if
    /// one changed (rotation): new handshakes use the new material, established connections
    /// live on. Returns whether some material changed.
    pub fn rotate_certificates(&self) -> bool {
        let mut changed = self.workload_tls.rotate();
        for t in self.gateways.iter().filter_map(|g| g.tls.as_ref()) {
            changed |= t.rotate();
        }
        for t in self.gateway_l4.iter().filter_map(|g| g.tls.as_ref()) {
            changed |= t.rotate();
        }
        for t in self.ingress_tls.iter().flatten() {
            changed |= t.rotate();
        }
        changed
    }

    /// Reopens the access log files (log rotation; SIGUSR1 in `mesh-proxy run`).
    pub fn reopen_access_log(&self) {
        self.layers.telemetry().exporters().reopen();
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

    /// Re-reads the files through the pipeline: on success the new configuration replaces
    /// the running one (in-flight requests finish on the old) and its generation is
    /// returned; on error the running one stays and the error is returned (and kept for
    /// `/stats/prometheus` and logs). A configuration with no resource at all, or without
    /// the `ProxyBootstrap` the running one has, is refused: the usual cause is a file
    /// truncated by a write in progress, and applying it would fail every request.
    pub fn reload(&self) -> Result<u64, StartError> {
        match pipeline::build_files(&self.files) {
            Ok(built) => {
                if built.compiled.resources == 0 {
                    return Err(self.reject(StartError::Refused(
                        "the new configuration has no resources (an empty or truncated file?)"
                            .into(),
                    )));
                }
                if self.has_bootstrap.load(Ordering::Relaxed) && !built.compiled.has_bootstrap {
                    return Err(self.reject(StartError::Refused(
                        "the new configuration has no ProxyBootstrap document, the running one has (a truncated file?)"
                            .into(),
                    )));
                }
                self.check_gateways(&built)?;
                self.check_ingress(&built)?;
                Ok(self.apply_built(built))
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

    /// Replaces the running configuration with a compiled one (the pipeline's build step
    /// runs on it); returns its generation. A configuration whose routes cannot be built is
    /// refused (the running one stays).
    pub fn apply(&self, compiled: Compiled) -> Result<u64, StartError> {
        let built = pipeline::build_compiled(compiled)?;
        self.check_gateways(&built)?;
        self.check_ingress(&built)?;
        Ok(self.apply_built(built))
    }

    /// Refuses a configuration whose Sidecar ingress listeners (ports, addresses, what they
    /// serve, where they forward) differ from the running ones: they are bound at start-up,
    /// so it needs a restart; nothing of it is applied.
    fn check_ingress(&self, built: &Built) -> Result<(), StartError> {
        if built.ingress.listeners == self.ingress.listeners {
            return Ok(());
        }
        Err(self.reject(StartError::Refused(format!(
            "the new configuration changes the Sidecar ingress listeners (running: [{}]; new: [{}]): restart the proxy to apply it",
            self.ingress.describe(),
            built.ingress.describe()
        ))))
    }

    /// Refuses a configuration whose gateway listeners (ports, addresses, what they serve)
    /// differ from the running ones: they are bound at start-up, so it needs a restart.
    fn check_gateways(&self, built: &Built) -> Result<(), StartError> {
        let new = built.gateways.plan.listener_keys();
        if new == self.gateway_keys {
            return Ok(());
        }
        let show = |keys: &[crate::gateway::ListenerKey]| {
            keys.iter()
                .map(|(port, ip, local, kind)| {
                    format!("{port} on {} ({kind})", SocketAddr::new(*ip, *local))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(self.reject(StartError::Refused(format!(
            "the new configuration changes the gateway listeners (running: [{}]; new: [{}]): restart the proxy to apply it",
            show(&self.gateway_keys),
            show(&new)
        ))))
    }

    /// Replaces the running configuration with one that went through the pipeline; returns
    /// its generation.
    pub fn apply_built(&self, built: Built) -> u64 {
        let Built {
            compiled,
            routes,
            l4: _,
            security,
            gateways,
            ingress,
        } = built;
        log_warnings(&compiled.warnings);
        let old = self.snapshot();
        if old.bootstrap.outbound != compiled.snapshot.bootstrap.outbound
            || old.bootstrap.inbound != compiled.snapshot.bootstrap.inbound
            || old.bootstrap.inbound_ports != compiled.snapshot.bootstrap.inbound_ports
            || old.bootstrap.outbound_ports != compiled.snapshot.bootstrap.outbound_ports
            || old.bootstrap.admin != compiled.snapshot.bootstrap.admin
            || old.bootstrap.concurrency != compiled.snapshot.bootstrap.concurrency
            || old.bootstrap.limits != compiled.snapshot.bootstrap.limits
            || old.bootstrap.proxy_headers != compiled.snapshot.bootstrap.proxy_headers
        {
            tracing::warn!(
                "listener, admin, concurrency, limits or proxyHeaders changes take effect at the next restart"
            );
        }
        let generation = compiled.snapshot.generation;
        self.authz.store(security.authz.clone());
        // the running configuration's keys until the new one's first fetch succeeds
        security.jwt.inherit_keys(&self.jwt.load());
        crate::jwks::start(&security.jwt);
        self.jwt.store(security.jwt.clone());
        self.workload_tls.store(security);
        self.layers.store(&compiled.snapshot, routes);
        // the gateway listeners' routes, redirects and certificates (check_gateways made
        // sure the listeners are the same)
        let crate::pipeline::Gateways {
            plan,
            routes: gw_routes,
            tls: gw_tls,
            l4: gw_l4,
        } = gateways;
        let crate::gateway::PreparedTls {
            ports: gw_tls,
            l4: gw_l4_tls,
        } = gw_tls;
        for ((p, table), tls) in plan.l4.iter().zip(gw_l4).zip(gw_l4_tls) {
            if let Some(g) = self.gateway_l4.iter().find(|g| g.number == p.number) {
                g.routes.store(table);
                if let (Some(t), Some(plan)) = (&g.tls, p.tls()) {
                    t.store(plan, tls);
                }
            }
        }
        for ((p, table), tls) in plan.ports.iter().zip(gw_routes).zip(gw_tls) {
            if let Some(g) = self.gateways.iter().find(|g| g.number == p.number) {
                g.routes.store(table);
                g.redirect.store(p.redirect.clone());
                if let Some(t) = &g.tls {
                    t.store(&p.tls, tls);
                }
            }
        }
        // the Sidecar ingress listeners' own certificates (check_ingress made sure the
        // listeners are the same)
        for ((l, t), own) in ingress
            .listeners
            .iter()
            .zip(ingress.terminations)
            .zip(&self.ingress_tls)
        {
            if let (Some(own), Some(p)) = (own, l.port_plan()) {
                own.store(&p.tls, t);
            }
        }
        // the running `outboundPorts` listeners route on the new snapshot (after the
        // balancer has it: new routes may name new services)
        for (captured, handle) in &self.l4_routes {
            match L4RouteTable::sidecar(&compiled.snapshot, &captured.host, captured.port) {
                Ok(t) => handle.store(t),
                Err(e) => tracing::error!(
                    listener = %captured.key,
                    "outboundPorts routes not rebuilt, keeping the running ones: {e}"
                ),
            }
        }
        self.snapshot.store(compiled.snapshot);
        self.unenforced.store(Arc::new(compiled.unenforced));
        self.has_bootstrap
            .store(compiled.has_bootstrap, Ordering::Relaxed);
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = None;
        }
        tracing::info!(
            generation,
            resources = compiled.resources,
            "configuration applied"
        );
        generation
    }

    /// The running configuration's fields that this version accepts but does not enforce.
    pub fn unenforced(&self) -> Arc<Vec<Diagnostic>> {
        self.unenforced.load_full()
    }

    /// `/config_dump`: the effective configuration.
    pub fn config_dump(&self) -> serde_json::Value {
        let snap = self.snapshot();
        let unenforced: Vec<serde_json::Value> = self
            .unenforced()
            .iter()
            .map(|d| {
                serde_json::json!({
                    "file": &*d.file,
                    "line": d.line,
                    "column": d.column,
                    "resource": d.resource.as_ref().map(ToString::to_string),
                    "field": d.field.as_ref().map(ToString::to_string),
                    "message": d.message,
                })
            })
            .collect();
        serde_json::json!({
            "generation": snap.generation,
            "files": self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "unenforced": unenforced,
            "sidecarIngress": self.ingress.to_json(),
            "snapshot": serde_json::to_value(&*snap).unwrap_or_default(),
        })
    }

    /// `/clusters`: every service, its ports, subsets and endpoints, with the balancer's
    /// view of their health (`unhealthy`: the endpoints that an outlier detector, a health
    /// check or an operator took out, per Istio cluster, with how often outlier detection
    /// ejected them; an endpoint's `health` and `ejections` sum up its clusters).
    pub fn clusters(&self) -> serde_json::Value {
        let snap = self.snapshot();
        let ns = snap.bootstrap.workload.namespace.clone();
        let health = self.layers.lb().health();
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
                // every Istio cluster of the service: each port, without and with each subset
                let subset_names: Vec<Option<String>> = std::iter::once(None)
                    .chain(
                        snap.destination_rule(&svc.hostname, &ns)
                            .into_iter()
                            .flat_map(|dr| dr.spec.subsets.iter().map(|s| Some(s.name.clone()))),
                    )
                    .collect();
                // (cluster, address, flags, times ejected by outlier detection), for the
                // endpoints that are unhealthy or were ever ejected
                let mut unhealthy = Vec::new();
                for p in &svc.ports {
                    let Ok(port) = u16::try_from(p.number) else { continue };
                    for subset in &subset_names {
                        let cluster = cluster_name(port, subset.as_deref(), &svc.hostname);
                        for (addr, cell) in health.cells(&cluster) {
                            let ejections = cell.outlier().ejections.load(Ordering::Relaxed);
                            if !cell.is_healthy() || ejections > 0 {
                                unhealthy.push((cluster.clone(), addr, cell.flags(), ejections));
                            }
                        }
                    }
                }
                let endpoints: Vec<serde_json::Value> = svc
                    .endpoints
                    .iter()
                    .map(|e| {
                        // the endpoint's cells: its address on one of the service's ports
                        let mine = unhealthy.iter().filter(|(_, addr, _, _)| {
                            addr.ip().to_string() == e.address
                                && svc.ports.iter().any(|p| svc.endpoint_port(e, p) == addr.port())
                        });
                        let flags = mine
                            .clone()
                            .fold(HealthFlags::empty(), |acc, (_, _, f, _)| acc | *f);
                        let ejections: u32 = mine.map(|(_, _, _, n)| *n).sum();
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
                            "health": flags_text(flags),
                            "ejections": ejections,
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
                    "unhealthy": unhealthy
                        .iter()
                        .filter(|(_, _, flags, _)| !flags.is_empty())
                        .map(|(cluster, addr, flags, ejections)| serde_json::json!({
                            "cluster": cluster,
                            "address": addr.to_string(),
                            "health": flags_text(*flags),
                            "ejections": ejections,
                        }))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        use mesh_core::limits::RetryLimit;
        // the circuit breakers' counts per Istio cluster (Envoy's `/clusters` shows its
        // circuit breakers' thresholds and `upstream_rq_*_overflow` stats per cluster), and
        // the connector's pool
        let breakers: Vec<serde_json::Value> = self
            .layers
            .circuit_breakers()
            .iter()
            .map(|(cluster, c)| {
                serde_json::json!({
                    "cluster": &**cluster,
                    "requests_active": c.requests(),
                    "pending_active": c.pending(),
                    "connections_active": c.connections(),
                    "retries_active": c.retries(),
                    "pending_overflows": c.pending_overflows(),
                    "connection_overflows": c.connection_overflows(),
                    "retry_overflows": c.retry_overflows(),
                    "retry_overflows_by_limit": {
                        "maxRetries": c.retry_overflows_by(RetryLimit::MaxRetries),
                        "retryBudget": c.retry_overflows_by(RetryLimit::RetryBudget),
                    },
                    "upstream_connections": {
                        "open": c.pool_connections_open(),
                        "idle": c.pool_connections_idle(),
                        "opened": c.pool_connections_opened(),
                    },
                })
            })
            .collect();
        serde_json::json!({
            "generation": snap.generation,
            "services": services,
            "circuit_breakers": breakers,
        })
    }

    /// `/stats/prometheus`: the proxy's own gauges and counters, then Istio's standard
    /// metrics ([`mesh_telemetry::metrics`]).
    pub fn prometheus(&self) -> String {
        let snap = self.snapshot();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_ready Whether every listener accepts and the proxy is not draining.\n# TYPE mesh_proxy_ready gauge\nmesh_proxy_ready {}",
            u8::from(self.is_ready())
        );
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_config_generation The running configuration's generation.\n# TYPE mesh_proxy_config_generation gauge\nmesh_proxy_config_generation {}",
            snap.generation
        );
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_config_reloads_total Configuration reloads, by result.\n# TYPE mesh_proxy_config_reloads_total counter\nmesh_proxy_config_reloads_total{{result=\"success\"}} {}\nmesh_proxy_config_reloads_total{{result=\"failure\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_services Services in the running configuration.\n# TYPE mesh_proxy_services gauge\nmesh_proxy_services {}",
            snap.services.len()
        );
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_unenforced_fields Fields of the running configuration that this version accepts but does not enforce.\n# TYPE mesh_proxy_unenforced_fields gauge\nmesh_proxy_unenforced_fields {}",
            self.unenforced().len()
        );
        let listeners: Vec<(ListenerKind, (u64, u64))> = self
            .readiness
            .lock()
            .map(|v| v.iter().map(|(l, r)| (*l, r.connections())).collect())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_downstream_connections_total Connections accepted, per listener.\n# TYPE mesh_proxy_downstream_connections_total counter"
        );
        for (l, (accepted, _)) in &listeners {
            let _ = writeln!(
                s,
                "mesh_proxy_downstream_connections_total{{listener=\"{l}\"}} {accepted}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_downstream_connections_active Connections open now, per listener.\n# TYPE mesh_proxy_downstream_connections_active gauge"
        );
        for (l, (_, open)) in &listeners {
            let _ = writeln!(
                s,
                "mesh_proxy_downstream_connections_active{{listener=\"{l}\"}} {open}"
            );
        }
        self.encode_guards(&mut s);
        // per Istio cluster: circuit breakers, retry overflows by limit, pool gauges; per
        // endpoint: outlier ejections
        crate::stats::encode_clusters(&mut s, &self.layers.circuit_breakers());
        crate::stats::encode_endpoints(&mut s, &*self.layers.lb().health());
        self.layers.telemetry().exporters().encode(&mut s);
        self.layers.telemetry().metrics().encode(&mut s);
        s
    }

    /// What the listeners' guards did, per listener: connections refused by
    /// `limits.maxDownstreamConnections`, accept failures (out of descriptors or buffers),
    /// HTTP/2 connections closed with an error `GOAWAY` by cause (`mesh_transport::h2guard`).
    fn encode_guards(&self, s: &mut String) {
        let guards: Vec<(ListenerKind, mesh_transport::GuardStats)> = self
            .readiness
            .lock()
            .map(|v| v.iter().map(|(l, r)| (*l, r.guards())).collect())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_downstream_connections_refused_total Connections closed at accept because maxDownstreamConnections were open, per listener.\n# TYPE mesh_proxy_downstream_connections_refused_total counter"
        );
        for (l, g) in &guards {
            let _ = writeln!(
                s,
                "mesh_proxy_downstream_connections_refused_total{{listener=\"{l}\"}} {}",
                g.refused_over_cap
            );
        }
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_accept_errors_total Failed accepts for want of descriptors or buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM), each followed by a back-off, per listener.\n# TYPE mesh_proxy_accept_errors_total counter"
        );
        for (l, g) in &guards {
            let _ = writeln!(
                s,
                "mesh_proxy_accept_errors_total{{listener=\"{l}\"}} {}",
                g.accept_errors
            );
        }
        let _ = writeln!(
            s,
            "# HELP mesh_proxy_http2_goaways_total HTTP/2 connections closed with an error GOAWAY, per listener and cause.\n# TYPE mesh_proxy_http2_goaways_total counter"
        );
        for (l, g) in &guards {
            for (cause, n) in g.goaways() {
                let _ = writeln!(
                    s,
                    "mesh_proxy_http2_goaways_total{{listener=\"{l}\",cause=\"{}\"}} {n}",
                    cause.as_str()
                );
            }
        }
    }

    /// The last reload error, if the last reload failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }
}

/// At most this many configuration warnings are logged per start-up or reload (a large mesh
/// can have thousands of unenforced fields); `mesh-proxy validate` prints them all, and
/// `/config_dump` lists the unenforced ones.
pub const LOGGED_WARNINGS: usize = 100;

/// Logs a configuration's warnings, [`LOGGED_WARNINGS`] at most, then how many more.
fn log_warnings(warnings: &[Diagnostic]) {
    for w in warnings.iter().take(LOGGED_WARNINGS) {
        tracing::warn!("{w}");
    }
    if warnings.len() > LOGGED_WARNINGS {
        tracing::warn!(
            "... and {} more configuration warnings (`mesh-proxy validate` prints them all; /config_dump lists the fields not enforced)",
            warnings.len() - LOGGED_WARNINGS
        );
    }
}

/// How often `run` checks the configuration files for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
