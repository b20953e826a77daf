//! Sidecar ingress listeners: the `ingress[]` of the `Sidecar` that selects the workload
//! (the selection the egress part uses, [`mesh_core::scope::select`]), one inbound
//! listener each, as Istio's `buildSidecarInboundListeners` builds them when a Sidecar has
//! ingress listeners.
//!
//! - **Where**: on `bind` if set, else the bootstrap's `inbound.address`; at the local port
//!   `inboundPorts` maps `port.number` to, else `port.number` itself. An `inboundPorts`
//!   entry for that workload port is served by the ingress listener (it is not a second
//!   listener); the other entries and the main inbound listener stay (Istio's passthrough
//!   chains for the ports the Sidecar does not name).
//! - **To**: `defaultEndpoint`: `127.0.0.1:PORT` and `[::1]:PORT` as written; `0.0.0.0:PORT`,
//!   `[::]:PORT`, `:PORT` or none (then `port.number`) at `inbound.localApp`'s host, as
//!   Istio forwards to the instance's IP. `unix://` endpoints are refused: this version
//!   forwards to TCP endpoints only.
//! - **How**: `HTTP`, `HTTP2`, `GRPC`, `GRPC-Web`, `HTTP_PROXY` ports through the inbound HTTP
//!   stack (the port's PeerAuthentication `portLevelMtls` keyed by `port.number`,
//!   RequestAuthentication, AuthorizationPolicy, the inbound rate limit, telemetry with
//!   `reporter="destination"`); every other port (`TCP`, `TLS`, `HTTPS` without
//!   termination, `MONGO`, …, unset) as L4: the port's mTLS terminated as the
//!   PeerAuthentication says, the AuthorizationPolicies decided on the connection
//!   ([`Authorizer::decide_tcp`]: Istio's TCP semantics), the bytes spliced to the endpoint,
//!   each connection counted in Istio's `istio_tcp_*` metrics with `reporter="destination"`
//!   (`source_principal` from the client certificate, `connection_security_policy`
//!   `mutual_tls` with one; flag `UF` when the endpoint refuses; a connection whose TLS
//!   handshake fails is not counted). `UDP` ports get no listener (a warning).
//! - **Errors** (refusing the configuration, with file, line, resource and field): two
//!   listeners on one address and local port, a `unix://` endpoint. A Sidecar with
//!   `ingress` and a bootstrap without `inbound` makes no listener (a warning).
//!
//! - **`tls`** (Sidecar ingress TLS, `SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`): terminated with
//!   the listener's `serverCertificate`/`privateKey` (clients checked against
//!   `caCertificates`), as a gateway server's ([`crate::gateway::GatewayTls`]: the same
//!   files, re-read when they change) instead of the workload's mTLS; an `HTTPS` port is then
//!   served as HTTP, a `TLS` port as TCP. `PASSTHROUGH`: the TLS is left to the endpoint.
//!
//! - **`connectionPool`** (and the Sidecar's `inboundConnectionPool`): the port's inbound
//!   cluster's pool ([`crate::inbound`]): the HTTP stack's circuit breaker and connections
//!   to the endpoint; on an L4 port, `tcp.maxConnections` (a connection over it is closed,
//!   flag `UO`), `connectTimeout` and `tcpKeepalive`.
//!
//! `captureMode` is a warning.
//!
//! A reload that changes the ingress listeners (a port, its address, local port, protocol
//! family or endpoint) is refused: a restart binds them. Policies and certificates apply.

use std::cell::Cell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::l4::{ConnEnd, ConnLog};
use arc_swap::ArcSwap;
use mesh_core::compile::Snapshot;
use mesh_core::error::{FieldPath, ResourceRef};
use mesh_core::ext::PeerIdentity;
use mesh_core::load::Issue;
use mesh_core::model::Kind;
use mesh_core::model::networking::{ServerTlsMode, ServerTlsSettings};
use mesh_core::validate::common::Protocol;
use mesh_core::{ResponseFlags, Severity};
use mesh_telemetry::access_log::AccessLog;
use mesh_telemetry::metrics::{IstioMetrics, TcpInbound};
use mesh_telemetry::sinks::Reloadable;
use mesh_tls::authz::{Attributes, Authorizer};
use mesh_tls::termination::{PortTermination, ServerFiles, ServerTermination};
use mesh_transport::OwnAddrs;
use mesh_transport::l4::{self as engine_l4, Accepted, ConnectionHandler, L4WorkerContext};
use mesh_transport::tls::{Accepts, DownstreamTls};

/// How an ingress listener serves its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serve {
    /// The inbound HTTP stack.
    Http,
    /// Opaque TCP to the endpoint.
    Tcp,
}

impl std::fmt::Display for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Serve::Http => "http",
            Serve::Tcp => "tcp",
        })
    }
}

/// Where an ingress listener forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An address as written (`127.0.0.1:PORT`, `[::1]:PORT`).
    Addr(SocketAddr),
    /// This port of `inbound.localApp`'s host (`0.0.0.0:PORT`, `[::]:PORT`, unset).
    AppHost(u16),
}

impl Endpoint {
    /// The address, with `app` the resolved `inbound.localApp`.
    pub fn resolve(self, app: SocketAddr) -> SocketAddr {
        match self {
            Endpoint::Addr(a) => a,
            Endpoint::AppHost(p) => SocketAddr::new(app.ip(), p),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::AppHost(p) => write!(f, "localApp host:{p}"),
        }
    }
}

/// `tls` of an ingress listener that terminates TLS (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`).
#[derive(Debug, Clone, PartialEq)]
pub struct IngressTls {
    /// The settings as written.
    pub settings: ServerTlsSettings,
    /// Its certificate files.
    pub files: ServerFiles,
}

/// One Sidecar ingress listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerPlan {
    /// `port.number`: the workload port peers address (PeerAuthentication's port key).
    pub number: u16,
    /// The address to listen on (`bind`, else `inbound.address`).
    pub address: IpAddr,
    /// The local port (`inboundPorts[number]`, else `number`; 0: any free port).
    pub local_port: u16,
    /// HTTP or L4.
    pub serve: Serve,
    /// Where the traffic goes.
    pub endpoint: Endpoint,
    /// TLS termination with the listener's own certificate (Istio's Sidecar ingress TLS),
    /// instead of the workload's mTLS.
    pub tls: Option<IngressTls>,
}

impl ListenerPlan {
    /// The gateway port plan whose TLS this listener's is ([`crate::gateway::GatewayTls`]
    /// serves it: same files, same rotation), if it terminates TLS.
    pub fn port_plan(&self) -> Option<crate::gateway::PortPlan> {
        let tls = self.tls.as_ref()?;
        Some(crate::gateway::PortPlan {
            number: self.number,
            address: self.address,
            local_port: self.local_port,
            gateways: Vec::new(),
            servers: Vec::new(),
            tls: crate::gateway::PortTlsPlan::Files(vec![(
                tls.settings.clone(),
                tls.files.clone(),
                vec!["*".to_string()],
            )]),
            redirect: Vec::new(),
        })
    }
}

/// The ingress listeners of a configuration, in the Sidecar's order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The listeners.
    pub listeners: Vec<ListenerPlan>,
    /// Each listener's TLS configuration, its files read (same order; `None`: no `tls`).
    pub terminations: Vec<Option<PortTermination>>,
    /// The Sidecar they come from, `<ns>/<name>`.
    pub sidecar: Option<String>,
}

impl Plan {
    /// The workload ports served by ingress listeners (their `inboundPorts` entries make no
    /// listener of their own).
    pub fn serves(&self, number: u16) -> bool {
        self.listeners.iter().any(|l| l.number == number)
    }

    /// The listeners as `/config_dump` shows them (`sidecarIngress`): the Sidecar, and per
    /// listener its port, address, local port (as configured: `0` is a free port), what
    /// it serves and where it forwards.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sidecar": self.sidecar,
            "listeners": self
                .listeners
                .iter()
                .map(|l| serde_json::json!({
                    "port": l.number,
                    "address": l.address.to_string(),
                    "localPort": l.local_port,
                    "serve": l.serve.to_string(),
                    "endpoint": l.endpoint.to_string(),
                    "tls": l.tls.as_ref().map(|t| format!("{:?}", t.settings.mode.unwrap_or_default())),
                }))
                .collect::<Vec<_>>(),
        })
    }

    /// A readable list of the listeners (reload errors, logs).
    pub fn describe(&self) -> String {
        self.listeners
            .iter()
            .map(|l| {
                format!(
                    "{} on {} ({}{}) to {}",
                    l.number,
                    SocketAddr::new(l.address, l.local_port),
                    l.serve,
                    if l.tls.is_some() { ", TLS" } else { "" },
                    l.endpoint
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Works out the ingress listeners of `snapshot`'s workload; `taken` are the other
/// listeners' addresses (outbound, inbound, admin, gateways, `outboundPorts`, the
/// `inboundPorts` entries no ingress listener serves) with what they are, for the collision
/// check. Errors refuse the configuration.
pub fn plan(snapshot: &Snapshot, taken: &[(SocketAddr, String)]) -> (Plan, Vec<Issue>) {
    let boot = &snapshot.bootstrap;
    let mut issues = Vec::new();
    let mut out = Plan::default();
    // a `unix://` endpoint is refused in every Sidecar, whichever workload it selects (as
    // the support table judges every document): this version forwards to TCP only
    for sc in &snapshot.sidecars {
        for (i, ing) in sc.spec.ingress.iter().enumerate() {
            if let Some(de) = ing.default_endpoint.as_deref()
                && de.starts_with("unix://")
                && let Err(message) = endpoint(de)
            {
                issues.push(Issue {
                    severity: Severity::Error,
                    resource: ResourceRef {
                        kind: Kind::Sidecar,
                        namespace: sc.namespace.clone(),
                        name: sc.name.clone(),
                    },
                    field: FieldPath::parse(&format!("spec.ingress[{i}].defaultEndpoint")),
                    message,
                });
            }
        }
    }
    let (chosen, _) = mesh_core::scope::select(&snapshot.sidecars, boot);
    let Some(sc) = chosen else {
        return (out, issues);
    };
    if sc.spec.ingress.is_empty() {
        return (out, issues);
    }
    let resource = ResourceRef {
        kind: Kind::Sidecar,
        namespace: sc.namespace.clone(),
        name: sc.name.clone(),
    };
    let mut issue = |severity, field: String, message: String| {
        issues.push(Issue {
            severity,
            resource: resource.clone(),
            field: FieldPath::parse(&field),
            message,
        })
    };
    let Some(inbound) = &boot.inbound else {
        issue(
            Severity::Warning,
            "spec.ingress".into(),
            "the ProxyBootstrap has no `inbound` (address, localApp): no ingress listener is made"
                .into(),
        );
        return (out, issues);
    };
    out.sidecar = Some(format!("{}/{}", sc.namespace, sc.name));
    let default_addr: IpAddr = inbound
        .address
        .parse()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut seen: Vec<(SocketAddr, String)> = taken.to_vec();
    for (i, ing) in sc.spec.ingress.iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        let Some(port) = &ing.port else { continue };
        let Ok(number) = u16::try_from(port.number) else {
            continue; // refused by validation
        };
        let proto = Protocol::parse(port.protocol.as_deref().unwrap_or(""));
        // Sidecar ingress TLS: terminated with the listener's certificate; an HTTPS port is
        // then served as HTTP, a TLS port as TCP (PASSTHROUGH: the TLS is the endpoint's)
        let terminate = ing.tls.as_ref().filter(|t| {
            matches!(
                t.mode.unwrap_or_default(),
                ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
            )
        });
        let mut termination = None;
        let tls = match terminate {
            None => None,
            Some(t) => match ingress_tls(t) {
                Ok((plan, built)) => {
                    termination = Some(built);
                    Some(plan)
                }
                Err((field, message)) => {
                    issue(Severity::Error, format!("{at}.tls.{field}"), message);
                    continue;
                }
            },
        };
        let serve = if proto.is_http() || (proto == Protocol::Https && tls.is_some()) {
            Serve::Http
        } else if proto == Protocol::Udp {
            issue(
                Severity::Warning,
                format!("{at}.port.protocol"),
                format!("port {number} is UDP: this version proxies TCP only, no listener is made"),
            );
            continue;
        } else {
            Serve::Tcp
        };
        let address = match ing.bind.as_deref().filter(|b| !b.is_empty()) {
            None => default_addr,
            Some(b) => match b.parse::<IpAddr>() {
                Ok(a) => a,
                Err(_) => continue, // refused by validation
            },
        };
        let endpoint = match ing.default_endpoint.as_deref().filter(|d| !d.is_empty()) {
            None => Endpoint::AppHost(number),
            Some(de) => match endpoint(de) {
                Ok(e) => e,
                Err(message) => {
                    if !de.starts_with("unix://") {
                        issue(Severity::Error, format!("{at}.defaultEndpoint"), message);
                    }
                    continue;
                }
            },
        };
        let local_port = boot
            .inbound_ports
            .get(&number.to_string())
            .copied()
            .unwrap_or(number);
        let addr = SocketAddr::new(address, local_port);
        if local_port != 0
            && let Some((_, what)) = seen.iter().find(|(a, _)| collides(*a, addr))
        {
            issue(
                Severity::Error,
                format!("{at}.port.number"),
                format!(
                    "sidecar ingress port {number} would listen on {addr}, where the {what} listens"
                ),
            );
            continue;
        }
        seen.push((addr, format!("Sidecar ingress port {number}")));
        out.listeners.push(ListenerPlan {
            number,
            address,
            local_port,
            serve,
            endpoint,
            tls,
        });
        out.terminations.push(termination);
    }
    (out, issues)
}

/// The files of a terminating `tls`, read and checked: the plan and the rustls
/// configuration, or the field at fault and why.
fn ingress_tls(t: &ServerTlsSettings) -> Result<(IngressTls, PortTermination), (String, String)> {
    let set = |o: &Option<String>| o.as_deref().filter(|s| !s.is_empty()).map(PathBuf::from);
    let certificate = set(&t.server_certificate).ok_or_else(|| {
        (
            "serverCertificate".to_string(),
            "a server certificate is required to terminate TLS".to_string(),
        )
    })?;
    let private_key = set(&t.private_key).ok_or_else(|| {
        (
            "privateKey".to_string(),
            "a private key is required to terminate TLS".to_string(),
        )
    })?;
    let files = ServerFiles {
        certificate,
        private_key,
        ca_certificates: set(&t.ca_certificates),
        fields: ["serverCertificate", "privateKey", "caCertificates"],
    };
    let server =
        ServerTermination::new(t, &files, &["*".to_string()]).map_err(|e| (e.field, e.message))?;
    let built = PortTermination::new(vec![server]).map_err(|m| ("mode".to_string(), m))?;
    Ok((
        IngressTls {
            settings: t.clone(),
            files,
        },
        built,
    ))
}

/// Whether two listening addresses take the same socket (one of them on every address of
/// its family counts).
fn collides(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// `defaultEndpoint` (validation checked its form).
fn endpoint(de: &str) -> Result<Endpoint, String> {
    if de.starts_with("unix://") {
        return Err(format!(
            "defaultEndpoint {de:?}: unix domain sockets are not supported by this version (a TCP endpoint: 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT)"
        ));
    }
    let (host, port) = mesh_core::authority::split_host_port(de)
        .ok()
        .and_then(|(h, p)| Some((mesh_core::authority::unbracket(h), p?.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("defaultEndpoint {de:?}: not HOST:PORT"))?;
    match host {
        "" | "0.0.0.0" | "::" => Ok(Endpoint::AppHost(port)),
        h => h
            .parse::<IpAddr>()
            .map(|ip| Endpoint::Addr(SocketAddr::new(ip, port)))
            .map_err(|_| format!("defaultEndpoint {de:?}: not an IP address")),
    }
}

/// The addresses of the listeners other than the ingress ones (for [`plan`]'s collision
/// check): those the bootstrap names with a fixed port, and the gateway listeners.
pub fn taken(snapshot: &Snapshot, gateways: &crate::gateway::Plan) -> Vec<(SocketAddr, String)> {
    let boot = &snapshot.bootstrap;
    let ip = |a: &str| a.parse::<IpAddr>().ok();
    let mut out = Vec::new();
    let mut push = |addr: Option<IpAddr>, port: u16, what: String| {
        if let Some(a) = addr
            && port != 0
        {
            out.push((SocketAddr::new(a, port), what));
        }
    };
    if let Some(o) = &boot.outbound {
        push(ip(&o.address), o.port, "outbound".into());
        for (key, local) in &boot.outbound_ports {
            push(ip(&o.address), *local, format!("outboundPorts {key:?}"));
        }
    } else {
        for (key, local) in &boot.outbound_ports {
            push(ip("127.0.0.1"), *local, format!("outboundPorts {key:?}"));
        }
    }
    if let Some(i) = &boot.inbound {
        push(ip(&i.address), i.port, "inbound".into());
    }
    push(ip(&boot.admin.address), boot.admin.port, "admin".into());
    for (number, address, local, kind) in gateways.listener_keys() {
        push(
            Some(address),
            local,
            format!("gateway port {number} ({kind})"),
        );
    }
    out
}

/// The `inboundPorts` listeners' addresses that stay beside the ingress listeners (those of
/// the workload ports no ingress listener serves), for [`plan`]'s collision check.
pub fn inbound_ports_taken(snapshot: &Snapshot) -> Vec<(u16, SocketAddr)> {
    let boot = &snapshot.bootstrap;
    let Some(inb) = &boot.inbound else {
        return Vec::new();
    };
    let Ok(ip) = inb.address.parse::<IpAddr>() else {
        return Vec::new();
    };
    boot.inbound_ports
        .iter()
        .filter(|(_, local)| **local != 0)
        .filter_map(|(k, local)| Some((k.parse::<u16>().ok()?, SocketAddr::new(ip, *local))))
        .collect()
}

/// The whole ingress step: the plan, with every other listener's address checked.
pub fn plan_with(snapshot: &Snapshot, gateways: &crate::gateway::Plan) -> (Plan, Vec<Issue>) {
    let mut taken = taken(snapshot, gateways);
    // first without the inboundPorts entries, to learn which ports ingress serves
    let (first, _) = plan(snapshot, &taken);
    for (workload, addr) in inbound_ports_taken(snapshot) {
        if !first.serves(workload) {
            taken.push((addr, format!("inboundPorts {workload:?}")));
        }
    }
    plan(snapshot, &taken)
}

/// Resolves `inbound.localApp` (the first address), as the inbound listener does.
pub fn local_app(local_app: &str) -> Option<SocketAddr> {
    local_app.to_socket_addrs().ok().and_then(|mut a| a.next())
}

// === the L4 ingress handler ===

/// What every worker of one L4 ingress listener shares.
#[derive(Clone, Debug)]
pub struct TcpIngress {
    /// The port's TLS: the workload's mTLS under PeerAuthentication's mode for the port
    /// ([`crate::security::PortTls`]), or the listener's own certificate (`tls`).
    pub tls: Arc<dyn DownstreamTls>,
    /// The workload's AuthorizationPolicies, swapped on reload.
    pub authz: Arc<ArcSwap<Authorizer>>,
    /// Where the bytes go.
    pub endpoint: SocketAddr,
    /// `port.number`: the destination port policies see.
    pub number: u16,
    /// `limits.tlsHandshakeTimeout`, and how long a PERMISSIVE port waits for a first byte.
    pub handshake_timeout: Duration,
    /// Istio's metrics: each connection in `istio_tcp_*` with `reporter="destination"`.
    pub metrics: Arc<IstioMetrics>,
    /// The server side's access log ([`crate::exporters`]): a line per connection
    /// ([`crate::l4::ConnLog`]; upstream cluster `inbound|<port>||`, as Istio names the
    /// inbound cluster).
    pub access_log: Arc<Reloadable<AccessLog>>,
    /// The inbound clusters: the port's connection pool ([`crate::inbound`]:
    /// `tcp.maxConnections`, `connectTimeout`, `tcpKeepalive`).
    pub clusters: Arc<crate::inbound::InboundClusters>,
}

/// The connection handler of one worker of an L4 ingress listener.
#[derive(Clone)]
pub struct TcpIngressHandler(Rc<TcpWorker>);

struct TcpWorker {
    shared: TcpIngress,
    own: OwnAddrs,
    connect_timeout: Duration,
    /// Istio's name of the inbound cluster (`inbound|<port>||`), for the access log.
    cluster: Box<str>,
    /// The last server configuration without ALPN, by the one it was made from.
    config: Cell<Option<(Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>)>>,
}

impl TcpIngressHandler {
    /// The handler of one worker.
    pub fn new(shared: &TcpIngress, ctx: &L4WorkerContext) -> Self {
        TcpIngressHandler(Rc::new(TcpWorker {
            shared: shared.clone(),
            own: ctx.own_addrs().clone(),
            connect_timeout: ctx.limits().connect_timeout,
            cluster: mesh_core::health::inbound_cluster_name(shared.number).into(),
            config: Cell::new(None),
        }))
    }
}

impl ConnectionHandler for TcpIngressHandler {
    type Future = Pin<Box<dyn Future<Output = ()>>>;

    fn serve(&self, conn: Accepted) -> Self::Future {
        Box::pin(serve_tcp(self.0.clone(), conn))
    }
}

impl TcpWorker {
    /// The workload's server configuration without ALPN (an opaque TCP port speaks no
    /// HTTP; a client offering another protocol must not be refused for it).
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let base = self.shared.tls.server_config();
        let cached = self.config.take();
        let made = match cached {
            Some((b, c)) if Arc::ptr_eq(&b, &base) => c,
            _ => {
                let mut c = (*base).clone();
                c.alpn_protocols.clear();
                Arc::new(c)
            }
        };
        self.config.set(Some((base, made.clone())));
        made
    }

    /// The AuthorizationPolicies' decision on a connection.
    fn allowed(
        &self,
        client: SocketAddr,
        local: SocketAddr,
        peer: Option<&PeerIdentity>,
        sni: Option<&str>,
    ) -> bool {
        let headers = http::HeaderMap::new();
        let method = http::Method::GET;
        let attrs = Attributes {
            method: &method,
            path: "",
            host: std::borrow::Cow::Borrowed(""),
            headers: &headers,
            peer,
            source: Some(client),
            remote: Some(client),
            destination: Some(SocketAddr::new(local.ip(), self.shared.number)),
            sni,
            auth: None,
        };
        let d = self.shared.authz.load().decide_tcp(&attrs);
        if !d.allowed {
            tracing::debug!(peer = %client, port = self.shared.number, policy = ?d.policy, "sidecar ingress: connection denied (RBAC)");
        }
        d.allowed
    }
}

/// Serves one connection of an L4 ingress listener to its end.
async fn serve_tcp(w: Rc<TcpWorker>, conn: Accepted) {
    let timeout = w.shared.handshake_timeout;
    let tls = match w.shared.tls.accepts() {
        Accepts::TlsOnly => true,
        Accepts::PlaintextOnly => false,
        Accepts::TlsOrPlaintext => {
            let mut b = [0u8; 1];
            match tokio::time::timeout(timeout, conn.stream.peek(&mut b)).await {
                Ok(Ok(1)) => b[0] == 0x16,
                _ => return,
            }
        }
    };
    // (Istio's inbound `tcp_proxy` takes its idle timeout from the proxy's `IDLE_TIMEOUT`
    // metadata, not from the pool: its default, one hour)
    let splice = crate::l4::splice_config(&w.shared.metrics, crate::l4::DEFAULT_TCP_IDLE_TIMEOUT);
    let log = ConnLog::new(&w.shared.access_log, conn.local, conn.peer);
    if !tls {
        let allowed = w.allowed(conn.peer, conn.local, None, None);
        proxy(&w, conn.stream, None, allowed, &splice, &log).await;
        return;
    }
    let Accepted {
        stream,
        peer,
        local,
        ..
    } = conn;
    let acceptor = tokio_rustls::TlsAcceptor::from(w.server_config());
    let Ok(Ok(stream)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await else {
        return; // a stalled or failed handshake closes the connection
    };
    let (_, session) = stream.get_ref();
    let identity = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| mesh_tls::peer::spiffe_id(c).ok())
        .map(PeerIdentity::new);
    let sni = session.server_name().map(str::to_string);
    let allowed = w.allowed(peer, local, identity.as_ref(), sni.as_deref());
    let log = log
        .with_sni(sni.as_deref())
        .with_mtls(session.peer_certificates().is_some_and(|c| !c.is_empty()));
    proxy(&w, stream, identity.as_ref(), allowed, &splice, &log).await;
}

/// Proxies an accepted (and, on a TLS port, handshaken) connection to the endpoint, counted
/// in Istio's TCP metrics with `reporter="destination"` as Istio's inbound chain counts it
/// (`istio.stats` after the network RBAC filter, which closes a denied connection without a
/// response flag: Envoy's `rbac_filter.cc` sets only the termination details): a denied
/// connection is opened and closed with no flag and no bytes; one whose endpoint refuses
/// or times out has flag `UF`, one over the pool's `tcp.maxConnections` flag `UO`. Its
/// access log line is written when it closes.
async fn proxy<D>(
    w: &TcpWorker,
    down: D,
    peer: Option<&PeerIdentity>,
    allowed: bool,
    splice: &engine_l4::SpliceConfig,
    log: &ConnLog,
) where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // the port's inbound cluster, once per connection (its pool's limits and settings)
    let (up, flags) = match allowed {
        true => {
            let cluster = w.shared.clusters.for_port(w.shared.number);
            match crate::l4::connect_to(&cluster, w.shared.endpoint, w.connect_timeout, &w.own)
                .await
            {
                Ok(c) => (Some(c), ResponseFlags::empty()),
                Err(flags) => (None, flags),
            }
        }
        false => (None, ResponseFlags::empty()),
    };
    let stats = w
        .shared
        .metrics
        .tcp_open_inbound(&TcpInbound { peer, flags });
    let (up, permit) = match up {
        Some((up, permit)) => (Some(up), permit),
        None => (None, None),
    };
    let mut end = ConnEnd {
        // (over `maxConnections` no host was tried: Envoy's `-`)
        upstream: (allowed && flags != ResponseFlags::UPSTREAM_OVERFLOW)
            .then_some(w.shared.endpoint),
        cluster: Some(&w.cluster),
        flags,
        ..ConnEnd::default()
    };
    if let Some(up) = up {
        end.upstream_local = up.local_addr().ok();
        let done = engine_l4::splice(down, up, &[], splice, |rx, tx| stats.add(rx, tx)).await;
        end.received = done.received;
        end.sent = done.sent;
    }
    // the connection no longer counts under `maxConnections` before it is counted closed
    drop(permit);
    drop(stats);
    log.end(&end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_endpoints_map_as_istio_forwards_them() {
        assert_eq!(
            endpoint("127.0.0.1:8080"),
            Ok(Endpoint::Addr("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            endpoint("[::1]:8080"),
            Ok(Endpoint::Addr("[::1]:8080".parse().unwrap()))
        );
        for de in ["0.0.0.0:8080", "[::]:8080", ":8080"] {
            assert_eq!(endpoint(de), Ok(Endpoint::AppHost(8080)), "{de}");
        }
        let app: SocketAddr = "10.0.0.7:9080".parse().unwrap();
        assert_eq!(
            Endpoint::AppHost(8080).resolve(app).to_string(),
            "10.0.0.7:8080"
        );
        let unix = endpoint("unix:///var/run/app.sock").unwrap_err();
        assert!(unix.contains("unix domain sockets"), "{unix}");
    }

    #[test]
    fn listeners_collide_on_one_port_of_one_address_or_a_wildcard_of_its_family() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert!(collides(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(collides(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(collides(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(!collides(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!collides(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!collides(a("[::]:80"), a("127.0.0.1:80")));
        assert!(collides(a("[::]:80"), a("[::1]:80")));
    }
}
