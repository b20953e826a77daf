//! The L4 listeners: one per `ProxyBootstrap.outboundPorts` entry, each serving the
//! VirtualService `tcp`/`tls` routes of the service port it captures
//! (`"db.default.svc.cluster.local:5432": 15432`: what arrives on local port 15432 is for
//! that service port, as if iptables had redirected it), and one per gateway `TCP`, `TLS`,
//! `PASSTHROUGH` or `AUTO_PASSTHROUGH` server port ([`crate::gateway`]: the `tcp`/`tls`
//! routes of the VirtualServices bound to its gateways, or the SNI's cluster name). Both
//! kinds run the same [`L4Handler`].
//!
//! ```text
//! accept ─► (terminating TLS server: handshake, certificate by SNI, client certificate;
//!           failure: close) ─► (SNI-routed port: read the ClientHello, keep its bytes) ─►
//!        L4RouteTable (tcp/tls routes, SNI, SNI cluster name) ─► Lb::pick (subsets,
//!        DestinationRule, locality, health) ─► maxConnections (else close, UO) ─► connect
//!        (connectTimeout, tcpKeepalive; failure: close, UF, outlier detection) ─► TLS
//!        origination when the DestinationRule or auto mTLS asks (never on AUTO_PASSTHROUGH)
//!        ─► splice (the ClientHello first, untouched; idleTimeout) ─► close
//! ```
//!
//! Every connection is counted in Istio's `istio_tcp_*` metrics (`reporter="source"`) with
//! its response flags: `NR` (no route, unknown service or port), `UH` (no healthy
//! endpoint), `UO` (`maxConnections` overflow), `UF` (connect failure or timeout, a
//! handshake that failed). Its bytes are added every 5 s (a Telemetry's `reportingInterval`)
//! and when it closes. With an
//! access log configured for the listener's side (`ProxyBootstrap.accessLog`, or a
//! Telemetry's `envoy` provider: [`crate::exporters`]), each connection writes one line when it
//! closes, as Envoy's TCP proxy does ([`ConnLog`]).
//!
//! # Which protocol a captured port speaks
//!
//! The service port's protocol decides: `TLS` and `HTTPS` ports are routed by SNI (`tls`
//! routes, then the TLS services of the port by hostname, then `tcp` routes, then the
//! service); every other port, `TCP`, `MONGO`, `MYSQL`, `REDIS`… and the HTTP family
//! included, is proxied as opaque TCP with the `tcp` routes. An HTTP port captured here is
//! therefore not routed by its `http` routes: HTTP traffic belongs on the outbound listener,
//! which routes it by `Host` (Istio's sidecar does the same for a port it cannot sniff).
//!
//! # Reload
//!
//! A reload rebuilds every listener's table and swaps it in (connections already open keep
//! their upstream); the balancer's snapshot is the outbound listener's, swapped with it.
//! Adding, removing or moving an `outboundPorts` entry takes effect at the next restart, as
//! for every listener.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mesh_core::ResponseFlags;
use mesh_core::compile::{Snapshot, resolve_host};
use mesh_core::ext::{SelectedUpstream, UpstreamCluster};
use mesh_core::limits::ConnectionPermit;
use mesh_core::rng::Rng;
use mesh_lb::{Lb, LbLayer};
use mesh_resilience::outlier::{ConnectOutcome, record_connect};
use mesh_routing::l4::{L4Connection, L4RouteTable, L4RouteTableHandle};
use mesh_telemetry::access_log::{AccessLog, LogEntry};
use mesh_telemetry::metrics::{IstioMetrics, TcpPeer};
use mesh_telemetry::sinks::Reloadable;
use mesh_transport::OwnAddrs;
use mesh_transport::l4::{
    self as engine_l4, Accepted, ClientHello, ConnectError, ConnectionHandler, L4WorkerContext,
    SpliceConfig,
};
use mesh_transport::tls::{DownstreamTls, UpstreamTls};
use tokio::io::{AsyncRead, AsyncWrite};
use tower_layer::Layer as _;

/// Istio's default idle timeout of its TCP proxy (`tcp.idleTimeout` unset): one hour.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// An `outboundPorts` entry, parsed: the service host (short names resolved in the
/// workload's namespace) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPort {
    /// The key as written (`db.default.svc.cluster.local:5432`).
    pub key: String,
    /// The service's host.
    pub host: String,
    /// The service port.
    pub port: u16,
    /// The local port it listens on.
    pub local_port: u16,
}

/// What every worker of one L4 listener shares.
#[derive(Clone)]
pub struct L4Shared {
    /// The listener's route table, swapped on reload.
    pub routes: L4RouteTableHandle,
    /// The balancer (shared with the outbound listener: one snapshot, one health table).
    pub lb: LbLayer,
    /// Istio's metrics.
    pub metrics: Arc<IstioMetrics>,
    /// Decides TLS origination per endpoint (DestinationRule `tls`, auto mTLS).
    pub tls: Option<Arc<dyn UpstreamTls>>,
    /// The TLS the listener terminates before routing (a gateway's `TLS` server in
    /// `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL` mode); `None`: the bytes are routed as they
    /// come.
    pub terminate: Option<Arc<dyn DownstreamTls>>,
    /// How long a TLS listener waits for a complete ClientHello, or a terminating one for
    /// the handshake (`limits.tlsHandshakeTimeout`).
    pub hello_timeout: Duration,
    /// The client side's access log (the outbound and gateway listeners'; swapped on
    /// reload, [`crate::exporters`]): a line per connection ([`ConnLog`]).
    pub access_log: Arc<Reloadable<AccessLog>>,
}

/// A connection's access log line, as Envoy's TCP proxy writes one per connection in the
/// listener's format when it closes: Istio's text line reads `"- - -" 0` for the method, path,
/// protocol and response code, then the flags, the bytes each way, the duration, the upstream
/// host and cluster, the upstream local address, the listener's and the client's addresses,
/// the SNI. Made when the connection is accepted; [`ConnLog::end`] writes the line (nothing
/// when no access log is configured).
#[derive(Debug)]
pub struct ConnLog {
    log: Arc<Reloadable<AccessLog>>,
    start: SystemTime,
    began: Instant,
    local: SocketAddr,
    peer: SocketAddr,
    sni: Option<Box<str>>,
    /// Whether the downstream presented a client certificate (an access log filter's
    /// `connection.mtls`).
    mtls: bool,
}

/// How a connection ended, for its [`ConnLog`] line.
#[derive(Debug, Default)]
pub struct ConnEnd<'a> {
    /// `%UPSTREAM_HOST%`: the endpoint connected (or tried).
    pub upstream: Option<SocketAddr>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`: this side of the upstream connection.
    pub upstream_local: Option<SocketAddr>,
    /// `%UPSTREAM_CLUSTER_RAW%`: Istio's cluster name.
    pub cluster: Option<&'a str>,
    /// `%RESPONSE_FLAGS%`.
    pub flags: ResponseFlags,
    /// `%BYTES_RECEIVED%`: from the client.
    pub received: u64,
    /// `%BYTES_SENT%`: to the client.
    pub sent: u64,
    /// `%REQUESTED_SERVER_NAME%`: the SNI.
    pub sni: Option<&'a str>,
}

impl ConnLog {
    /// The line of a connection accepted now on `local` from `peer`.
    pub fn new(log: &Arc<Reloadable<AccessLog>>, local: SocketAddr, peer: SocketAddr) -> Self {
        ConnLog {
            log: log.clone(),
            start: SystemTime::now(),
            began: Instant::now(),
            local,
            peer,
            sni: None,
            mtls: false,
        }
    }

    /// The line says the downstream presented a client certificate (`connection.mtls`).
    pub fn with_mtls(self, mtls: bool) -> Self {
        ConnLog { mtls, ..self }
    }

    /// The line with `sni` as its `%REQUESTED_SERVER_NAME%` (a terminated handshake's), unless
    /// [`ConnEnd::sni`] names one.
    pub fn with_sni(self, sni: Option<&str>) -> Self {
        ConnLog {
            sni: sni.map(Box::from),
            ..self
        }
    }

    /// Writes the line of the connection, ended as `end` says.
    pub fn end(&self, end: &ConnEnd<'_>) {
        let guard = self.log.load();
        let Some(log) = guard.as_ref() else { return };
        let flags = end.flags.to_string();
        let mut e = LogEntry::new(self.start);
        e.protocol = "";
        e.response_flags = if end.flags.is_empty() { "" } else { &flags };
        e.bytes_received = end.received;
        e.bytes_sent = end.sent;
        e.duration = Some(self.began.elapsed());
        e.upstream_host = end.upstream;
        e.upstream_cluster = end.cluster;
        e.upstream_local_address = end.upstream_local;
        e.downstream_local_address = Some(self.local);
        e.downstream_remote_address = Some(self.peer);
        e.requested_server_name = end.sni.or(self.sni.as_deref());
        e.mtls = self.mtls;
        log.log(&e);
    }
}

/// How a connection is spliced: `idle` as its idle timeout, its bytes reported as often
/// as the Telemetries say (`reportingInterval`).
pub(crate) fn splice_config(metrics: &IstioMetrics, idle: Duration) -> SpliceConfig {
    SpliceConfig {
        idle,
        report_every: metrics.tcp_reporting_interval(),
    }
}

/// The connection handler of one worker of an L4 listener.
#[derive(Clone)]
pub struct L4Handler(Rc<Worker>);

struct Worker {
    shared: L4Shared,
    lb: RefCell<Lb<()>>,
    rng: RefCell<Rng>,
    own: OwnAddrs,
    connect_timeout: Duration,
}

// === impl CapturedPort ===

/// The `outboundPorts` entries of the bootstrap, parsed (the keys validation refused are
/// left out).
pub fn captured_ports(snapshot: &Snapshot) -> Vec<CapturedPort> {
    let b = &snapshot.bootstrap;
    b.outbound_ports
        .iter()
        .filter_map(|(key, local)| {
            let (host, port) = mesh_core::authority::split_host_port(key).ok()?;
            let port: u16 = port?.parse().ok()?;
            let host = mesh_core::authority::unbracket(host).to_ascii_lowercase();
            Some(CapturedPort {
                key: key.clone(),
                host: resolve_host(&host, &b.workload.namespace, &b.mesh.cluster_domain),
                port,
                local_port: *local,
            })
        })
        .collect()
}

/// The route tables of every `outboundPorts` listener, in [`captured_ports`] order.
pub fn build_tables(snapshot: &Snapshot) -> Result<Vec<L4RouteTable>, mesh_routing::BuildError> {
    captured_ports(snapshot)
        .iter()
        .map(|c| L4RouteTable::sidecar(snapshot, &c.host, c.port))
        .collect()
}

// === impl L4Handler ===

impl L4Handler {
    /// The handler of one worker.
    pub fn new(shared: &L4Shared, ctx: &L4WorkerContext) -> Self {
        L4Handler(Rc::new(Worker {
            lb: RefCell::new(shared.lb.layer(())),
            rng: RefCell::new(Rng::new(None)),
            own: ctx.own_addrs().clone(),
            connect_timeout: ctx.limits().connect_timeout,
            shared: shared.clone(),
        }))
    }
}

impl ConnectionHandler for L4Handler {
    type Future = Pin<Box<dyn Future<Output = ()>>>;

    fn serve(&self, conn: Accepted) -> Self::Future {
        Box::pin(serve(self.0.clone(), conn))
    }
}

/// Serves one connection to its end.
async fn serve(w: Rc<Worker>, mut conn: Accepted) {
    let table = w.shared.routes.load_full();
    let log = ConnLog::new(&w.shared.access_log, conn.local, conn.peer);
    if let Some(tls) = &w.shared.terminate {
        // a terminating TLS server: the handshake (certificate by SNI, client certificates),
        // then the plaintext routed by the tcp routes
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
        let handshake = acceptor.accept(conn.stream);
        let Ok(Ok(stream)) = tokio::time::timeout(w.shared.hello_timeout, handshake).await else {
            tracing::debug!(peer = %conn.peer, "tcp: downstream TLS handshake failed");
            return;
        };
        // the SNI the handshake saw is logged, not routed on (tcp routes)
        let log = log.with_sni(stream.get_ref().1.server_name());
        let c = L4Connection::new(conn.peer, conn.local);
        forward(&w, &table, stream, c, &[], true, &log).await;
        return;
    }
    let mut hello = Vec::new();
    let mut sni = None;
    if table.reads_sni() {
        match engine_l4::read_client_hello(&mut conn.stream, &mut hello, w.shared.hello_timeout)
            .await
        {
            Ok(true) => {}
            _ => return, // closed (or silent) before a byte: nothing to route
        }
        if let ClientHello::Sni(name) = engine_l4::client_hello_sni(&hello) {
            sni = Some(name.to_ascii_lowercase());
        }
    }
    let c = L4Connection::new(conn.peer, conn.local).with_sni(sni.as_deref());
    // AUTO_PASSTHROUGH: the client's TLS goes to the endpoint untouched, never wrapped again
    let originate = !table.is_auto_passthrough();
    forward(&w, &table, conn.stream, c, &hello, originate, &log).await;
}

/// Routes connection `c` (its bytes on `down`, `hello` read from it already), picks an
/// endpoint, connects, originates TLS when `originate` and the destination asks, splices.
async fn forward<D>(
    w: &Worker,
    table: &L4RouteTable,
    down: D,
    c: L4Connection<'_>,
    hello: &[u8],
    originate: bool,
    log: &ConnLog,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let sni = c.sni;
    let dest = table.route(&c, &mut w.rng.borrow_mut()).cloned();
    let Some(dest) = dest else {
        w.refuse(log, sni, None, None, ResponseFlags::NO_ROUTE);
        return;
    };
    let picked = w.lb.borrow_mut().pick(&dest, None);
    let picked = match picked {
        Ok(p) => p,
        Err(ResponseFlags::NO_ROUTE)
            if !table.is_auto_passthrough()
                && let Some(target) = w.passthrough(&dest, sni) =>
        {
            passthrough(w, down, hello, &dest, target, log, sni).await;
            return;
        }
        Err(flags) => {
            tracing::debug!(host = %dest.host, port = ?dest.port, %flags, "tcp: no endpoint");
            w.refuse(log, sni, None, Some(&dest.host), flags);
            return;
        }
    };
    let up = picked.upstream.clone();
    let cluster = up.cluster();
    let addr = picked.endpoint.addr;
    let (stream, _permit) = match connect_to(cluster, addr, w.connect_timeout, &w.own).await {
        Ok(c) => c,
        Err(flags) => {
            w.refuse(log, sni, Some(&up), Some(&dest.host), flags);
            return;
        }
    };
    let idle = cluster.pool.tcp_idle_timeout;
    let config = splice_config(&w.shared.metrics, idle.unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT));
    let origination = w.shared.tls.as_ref().filter(|_| originate).and_then(|t| {
        let mut ext = http::Extensions::new();
        ext.insert(up.clone());
        t.client_tls(&ext, sni.or(Some(&*dest.host)), &picked.endpoint)
    });
    let stats = w.shared.metrics.tcp_open(&TcpPeer {
        upstream: Some(&up),
        service: Some(&dest.host),
        flags: ResponseFlags::empty(),
    });
    let report = |rx, tx| stats.add(rx, tx);
    let upstream_local = stream.local_addr().ok();
    let done = match origination {
        None => engine_l4::splice(down, stream, hello, &config, report).await,
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config);
            let handshake = connector.connect(tls.server_name, stream);
            match tokio::time::timeout(w.shared.hello_timeout, handshake).await {
                Ok(Ok(s)) => engine_l4::splice(down, s, hello, &config, report).await,
                _ => {
                    tracing::debug!(%addr, "tcp: TLS origination failed");
                    drop(stats);
                    w.refuse(
                        log,
                        sni,
                        Some(&up),
                        Some(&dest.host),
                        ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                    );
                    return;
                }
            }
        }
    };
    tracing::trace!(received = done.received, sent = done.sent, end = ?done.end, "tcp: closed");
    log.end(&ConnEnd {
        upstream: Some(addr),
        upstream_local,
        cluster: Some(&cluster.name),
        received: done.received,
        sent: done.sent,
        sni,
        ..ConnEnd::default()
    });
}

/// Connects to `addr`, an endpoint of `cluster`, as Envoy's `tcp_proxy` does: first a
/// connection permit under the cluster's `tcp.maxConnections` (none left: `Err` with flag
/// `UO`, no connection attempted), then the cluster's `connectTimeout` (else
/// `default_timeout`) and `tcpKeepalive` (failure: flag `UF`); the outcome is recorded for
/// the cluster's outlier detection. The permit is held for the connection's life.
pub(crate) async fn connect_to(
    cluster: &UpstreamCluster,
    addr: SocketAddr,
    default_timeout: Duration,
    own: &OwnAddrs,
) -> Result<(tokio::net::TcpStream, Option<ConnectionPermit>), ResponseFlags> {
    let permit = match &cluster.limits {
        Some(limits) => match limits.try_connection() {
            Some(p) => Some(p),
            None => {
                tracing::debug!(cluster = %cluster.name, "tcp: maxConnections reached");
                return Err(ResponseFlags::UPSTREAM_OVERFLOW);
            }
        },
        None => None,
    };
    let timeout = cluster.pool.connect_timeout.unwrap_or(default_timeout);
    match engine_l4::connect(addr, timeout, cluster.pool.tcp_keepalive, own).await {
        Ok(s) => {
            record_connect(cluster, ConnectOutcome::Connected);
            Ok((s, permit))
        }
        Err(e) => {
            match &e {
                ConnectError::Timeout(_) => record_connect(cluster, ConnectOutcome::TimedOut),
                ConnectError::Loop(_) => {} // the configuration's fault, not the endpoint's
                _ => record_connect(cluster, ConnectOutcome::Failed),
            }
            tracing::debug!(error = %e, cluster = %cluster.name, "tcp: upstream connect failed");
            Err(ResponseFlags::UPSTREAM_CONNECTION_FAILURE)
        }
    }
}

/// Forwards to `target` (`host:port`, resolved by DNS): a `resolution: NONE` service, or
/// a host outside the registry under `ALLOW_ANY` (Istio's `PassthroughCluster`).
async fn passthrough<D>(
    w: &Worker,
    down: D,
    hello: &[u8],
    dest: &mesh_core::ext::RouteDestination,
    target: (String, u16),
    log: &ConnLog,
    sni: Option<&str>,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = w.connect_timeout;
    let resolved = tokio::time::timeout(timeout, tokio::net::lookup_host(target.clone())).await;
    let mut stream = None;
    if let Ok(Ok(addrs)) = resolved {
        // each address in turn (`localhost` may resolve to ::1 first)
        for addr in addrs {
            if let Ok(s) = engine_l4::connect(addr, timeout, None, &w.own).await {
                stream = Some(s);
                break;
            }
        }
    }
    let Some(stream) = stream else {
        tracing::debug!(host = %target.0, port = target.1, "tcp: passthrough connect failed");
        w.refuse(
            log,
            sni,
            None,
            Some(&dest.host),
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
        );
        return;
    };
    let stats = w.shared.metrics.tcp_open(&TcpPeer {
        upstream: None,
        service: Some(&dest.host),
        flags: ResponseFlags::empty(),
    });
    let config = splice_config(&w.shared.metrics, DEFAULT_TCP_IDLE_TIMEOUT);
    let (upstream, upstream_local) = (stream.peer_addr().ok(), stream.local_addr().ok());
    let done = engine_l4::splice(down, stream, hello, &config, |rx, tx| stats.add(rx, tx)).await;
    log.end(&ConnEnd {
        upstream,
        upstream_local,
        cluster: Some("PassthroughCluster"),
        received: done.received,
        sent: done.sent,
        sni,
        ..ConnEnd::default()
    });
}

// === impl Worker ===

impl Worker {
    /// Where a destination the balancer has no endpoints for goes: a `resolution: NONE`
    /// service to the connection's SNI (a wildcard host) or its own host, a host outside
    /// the registry to itself under `outboundTrafficPolicy: ALLOW_ANY`; `None`: nowhere
    /// (closed, `NR`).
    fn passthrough(
        &self,
        dest: &mesh_core::ext::RouteDestination,
        sni: Option<&str>,
    ) -> Option<(String, u16)> {
        use mesh_core::model::networking::OutboundTrafficMode;
        use mesh_core::model::networking::Resolution;
        let snap = self.shared.lb.snapshot();
        let port = dest.port?;
        let ns = &snap.bootstrap.workload.namespace;
        let host = match snap.service(&dest.host, ns) {
            Some(s) if s.resolution == Resolution::None => {
                if dest.host.starts_with('*') {
                    // the SNI names the host of a wildcard service (Istio: its filter chain
                    // matched that name)
                    let sni = sni?;
                    let suffix = &dest.host[1..];
                    (sni.len() > suffix.len() && sni.ends_with(suffix)).then(|| sni.to_owned())?
                } else {
                    dest.host.to_string()
                }
            }
            None if snap.bootstrap.mesh.outbound_traffic_policy
                == OutboundTrafficMode::AllowAny
                && !dest.host.starts_with('*') =>
            {
                dest.host.to_string()
            }
            _ => return None,
        };
        Some((host, port))
    }

    /// Counts a connection closed without an upstream (opened and closed at once, with its
    /// flags) and writes its access log line, as Envoy's TCP proxy does.
    fn refuse(
        &self,
        log: &ConnLog,
        sni: Option<&str>,
        upstream: Option<&SelectedUpstream>,
        service: Option<&Arc<str>>,
        flags: ResponseFlags,
    ) {
        drop(self.shared.metrics.tcp_open(&TcpPeer {
            upstream,
            service,
            flags,
        }));
        log.end(&ConnEnd {
            upstream: upstream.map(|u| u.endpoint().addr),
            cluster: upstream.map(|u| &*u.cluster().name),
            flags,
            sni,
            ..ConnEnd::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_ports_resolve_short_names_in_the_workload_namespace() {
        let mut snap = mesh_core::compile::compile(Vec::new());
        snap.bootstrap.workload.namespace = "shop".into();
        snap.bootstrap
            .outbound_ports
            .insert("db:5432".into(), 15432);
        snap.bootstrap
            .outbound_ports
            .insert("cache.example.com:6379".into(), 16379);
        let c = captured_ports(&snap);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].host.as_str(), c[0].port, c[0].local_port),
            ("cache.example.com", 6379, 16379)
        );
        assert_eq!(
            (c[1].host.as_str(), c[1].port, c[1].local_port),
            ("db.shop.svc.cluster.local", 5432, 15432)
        );
    }
}
