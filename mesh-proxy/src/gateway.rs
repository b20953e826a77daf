//! The proxy as an ingress or egress gateway: the `Gateway`s that select the bootstrap
//! workload become listeners.
//!
//! Part of the one configuration pipeline ([`crate::pipeline`]): [`plan`] works out, from
//! the snapshot, which Gateways select this workload (their `selector` is a subset of the
//! bootstrap workload's labels; Gateways of every namespace, as Istio's default
//! `PILOT_SCOPE_GATEWAY_TO_NAMESPACE=false`), and one listener per server port:
//!
//! - it listens on the server's `bind`, else `ProxyBootstrap.gatewayAddress` (`0.0.0.0`), at
//!   the local port `gatewayPorts` maps the server port to, else the server port itself (as
//!   Envoy binds it);
//! - several servers on one port share the listener (Istio merges them); its route table
//!   ([`mesh_routing::RouteTable`] for the gateways with a server on the port) serves the
//!   VirtualServices bound to those gateways (`spec.gateways`, `match[].gateways`) for the
//!   hosts they share with the servers' `hosts` ([`mesh_routing::RouterContext::servers`]);
//!   a request for any other host gets 404 `NR`, as Envoy's gateway answers;
//! - `HTTP` servers serve plaintext; `tls.httpsRedirect` answers their hosts `301` to
//!   `https://` + Host + path (Envoy's `require_tls`);
//! - `HTTPS` servers with `tls.mode` `SIMPLE`, `MUTUAL` or `OPTIONAL_MUTUAL` terminate TLS
//!   with their files ([`mesh_tls::termination`]: certificate by SNI, client certificates,
//!   `subjectAltNames`, protocol versions, cipher suites), or with what `credentialName`
//!   names under `ProxyBootstrap.credentialsDir` ([`credential_files`]); `ISTIO_MUTUAL`
//!   serves the workload's own certificate and requires a mesh client certificate;
//! - `TCP`, `MONGO`, `MYSQL` and `REDIS` servers, `TLS` servers, and `HTTPS` servers in
//!   `tls.mode` `PASSTHROUGH` or `AUTO_PASSTHROUGH`, are L4 listeners ([`Plan::l4`],
//!   [`L4Mode`]), served exactly as the sidecar's `outboundPorts` listeners ([`crate::l4`]:
//!   the transport's L4 mode, one [`mesh_routing::l4::L4RouteTable`] per port):
//!   - `TCP`: the VirtualServices bound to the port's gateways route connections with their
//!     `tcp` routes;
//!   - `PASSTHROUGH`: their `tls` routes by the ClientHello's SNI (`sniHosts`), TLS left to
//!     the backend;
//!   - `TLS` in `SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL` or `ISTIO_MUTUAL` mode: TLS terminated
//!     as on an `HTTPS` port ([`GatewayTls`]: the same files, `credentialName` and rotation;
//!     no ALPN offered), then the plaintext routed by the `tcp` routes (Istio's filter chains
//!     for a terminating `TLS` server); a failed handshake closes the connection before it
//!     is routed;
//!   - `AUTO_PASSTHROUGH`: no VirtualService; the SNI (matching one of the servers' `hosts`)
//!     names the destination as Istio's cluster name `outbound_.<port>_.<subset>_.<host>`
//!     ([`mesh_routing::l4::L4RouteTable::auto_passthrough`]: a service visible to the
//!     gateway's namespace, one of its ports, a subset of its DestinationRule), reached
//!     through the balancer with the client's TLS untouched (Istio's SNI-DNAT clusters of an
//!     east-west gateway);
//!
//!   a connection no route takes is closed (`NR`). A port serves one kind of L4 server
//!   (terminated `TLS` servers from files share a port, each certificate chosen by SNI).
//!
//! Behind each listener runs the sidecar's outbound stack ([`crate::stack`]: routing, fault,
//! timeout, retry, mirror, balancer, breaker, outlier; telemetry reported as `source`, as
//! Istio's gateways report), with the workload's RequestAuthentications and
//! AuthorizationPolicies before the router (an Istio ingress gateway enforces the policies
//! that select it); see [`GatewayFront`].
//!
//! The certificate files are watched as the workload's are: [`GatewayTls::rotate`] re-reads
//! a port's files when one changed (new handshakes use them; files that cannot be used keep
//! the previous ones). A reload applies new routes, policies and certificates; a reload
//! that changes the set of gateway listeners (ports, addresses, plaintext or TLS) is refused
//! with an error saying a restart is needed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, StatusCode};
use mesh_core::Severity;
use mesh_core::body::ReplyBody;
use mesh_core::compile::{Named, Snapshot};
use mesh_core::error::{FieldPath, ResourceRef};
use mesh_core::ext::{ConnectionSni, DestinationAddr, PeerIdentity};
use mesh_core::flags::ResponseFlags;
use mesh_core::load::Issue;
use mesh_core::model::Kind;
use mesh_core::model::networking::{Gateway, Server, ServerTlsMode, ServerTlsSettings};
use mesh_core::selector::labels_match;
use mesh_core::validate::common::Protocol;
use mesh_routing::l4::L4RouteTable;
use mesh_routing::{BuildError, RouterContext, ServerHosts};
use mesh_tls::termination::{PortTermination, ServerFiles, ServerTermination};
use mesh_transport::tls::{Accepts, DownstreamTls, PeerTls, PeerTlsInfo};
use tower_layer::Layer;
use tower_service::Service;

/// The gateway listeners a configuration asks of this workload.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// One per server port, by port number.
    pub ports: Vec<PortPlan>,
    /// The L4 listeners (`TCP`-family servers, `TLS` servers, `PASSTHROUGH` and
    /// `AUTO_PASSTHROUGH` ones), by port number.
    pub l4: Vec<L4PortPlan>,
}

/// One L4 gateway listener: `TCP` (and `MONGO`, `MYSQL`, `REDIS`) servers, routed by the
/// bound VirtualServices' `tcp` routes; `TLS` servers that terminate TLS, then routed by
/// `tcp` routes; `TLS`/`HTTPS` servers in `PASSTHROUGH` mode, routed by SNI with their `tls`
/// routes; `AUTO_PASSTHROUGH` servers, routed by the SNI's cluster name.
#[derive(Debug, Clone)]
pub struct L4PortPlan {
    /// The servers' port number.
    pub number: u16,
    /// The address to listen on (`bind`, else `gatewayAddress`).
    pub address: IpAddr,
    /// The local port (`gatewayPorts`, else `number`; 0: any free port).
    pub local_port: u16,
    /// The gateways with a server on the port, `<ns>/<name>`.
    pub gateways: Vec<String>,
    /// How its connections are routed.
    pub mode: L4Mode,
}

/// How an L4 gateway listener routes its connections.
#[derive(Debug, Clone)]
pub enum L4Mode {
    /// Opaque TCP: `tcp` routes.
    Tcp,
    /// `PASSTHROUGH`: `tls` routes by the ClientHello's SNI, TLS untouched.
    Sni,
    /// A `TLS` server in `SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL` or `ISTIO_MUTUAL` mode: TLS
    /// terminated ([`PortTlsPlan::Files`] or [`PortTlsPlan::IstioMutual`]), then the
    /// plaintext routed by `tcp` routes.
    Terminate(PortTlsPlan),
    /// `AUTO_PASSTHROUGH`: the SNI (matching one of the servers' `hosts`, here) names the
    /// destination as Istio's cluster name ([`mesh_routing::l4::sni_cluster`]), TLS
    /// untouched, no VirtualService.
    AutoPassthrough(Vec<String>),
}

/// One gateway listener.
#[derive(Debug, Clone)]
pub struct PortPlan {
    /// The servers' port number.
    pub number: u16,
    /// The address to listen on (`bind`, else `gatewayAddress`).
    pub address: IpAddr,
    /// The local port (`gatewayPorts`, else `number`; 0: any free port).
    pub local_port: u16,
    /// The gateways with a server on the port, `<ns>/<name>`.
    pub gateways: Vec<String>,
    /// Their servers' hosts, for the route table.
    pub servers: Vec<ServerHosts>,
    /// Plaintext or TLS.
    pub tls: PortTlsPlan,
    /// The hosts (without namespace part) of the plaintext servers with `httpsRedirect`.
    pub redirect: Vec<String>,
}

/// How a gateway listener handles TLS.
#[derive(Debug, Clone)]
pub enum PortTlsPlan {
    /// Plaintext HTTP (HTTP/1.1 and h2c).
    Plaintext,
    /// `SIMPLE`/`MUTUAL`/`OPTIONAL_MUTUAL`: each server's `tls` with its files.
    Files(Vec<(ServerTlsSettings, ServerFiles, Vec<String>)>),
    /// `ISTIO_MUTUAL`: the workload's certificate, mesh client certificates required.
    IstioMutual,
}

/// What a server asks of its port, while planning.
enum Serves {
    Http(PortTlsPlan),
    L4(L4Mode),
}

/// What identifies a listener: a reload that changes one needs a restart (port, address,
/// local port, what it serves: `http`, `https`, `tcp`, `sni`, `tls` (terminated, then TCP)
/// or `auto` (`AUTO_PASSTHROUGH`)).
pub type ListenerKey = (u16, IpAddr, u16, &'static str);

// === impl Plan ===

impl Plan {
    /// The listeners' identities (port, address, local port, what it serves).
    pub fn listener_keys(&self) -> Vec<ListenerKey> {
        let http = self.ports.iter().map(|p| {
            let kind = match p.tls {
                PortTlsPlan::Plaintext => "http",
                _ => "https",
            };
            (p.number, p.address, p.local_port, kind)
        });
        let l4 = self.l4.iter().map(|p| {
            let kind = match p.mode {
                L4Mode::Tcp => "tcp",
                L4Mode::Sni => "sni",
                L4Mode::Terminate(_) => "tls",
                L4Mode::AutoPassthrough(_) => "auto",
            };
            (p.number, p.address, p.local_port, kind)
        });
        http.chain(l4).collect()
    }
}

impl L4PortPlan {
    /// This port's route table: the `tcp` (or, routed by SNI, `tls`) routes of the
    /// VirtualServices bound to its gateways; for `AUTO_PASSTHROUGH`, the SNI cluster names
    /// of the services it sees.
    pub fn table(&self, snapshot: &Snapshot) -> Result<L4RouteTable, BuildError> {
        match &self.mode {
            L4Mode::AutoPassthrough(hosts) => {
                Ok(L4RouteTable::auto_passthrough(snapshot, self.number, hosts))
            }
            _ => L4RouteTable::gateway(
                snapshot,
                self.gateways.iter().cloned(),
                self.number,
                matches!(self.mode, L4Mode::Sni),
            ),
        }
    }

    /// The TLS it terminates (`TLS` servers in a terminating mode).
    pub fn tls(&self) -> Option<&PortTlsPlan> {
        match &self.mode {
            L4Mode::Terminate(t) => Some(t),
            _ => None,
        }
    }
}

impl PortPlan {
    /// The router context of this port's route table.
    pub fn router_context(&self, snapshot: &Snapshot) -> RouterContext {
        let mut ctx = RouterContext::gateway(snapshot, self.gateways.iter().cloned());
        ctx.servers = self.servers.clone();
        ctx.port = Some(self.number);
        ctx
    }
}

/// Whether `gw` selects the bootstrap workload (Istio: `selector` a subset of the gateway
/// pod's labels).
pub fn selects(gw: &Named<Gateway>, snapshot: &Snapshot) -> bool {
    labels_match(&gw.spec.selector, &snapshot.bootstrap.workload.labels)
}

/// The files a `credentialName` resolves to: `<credentialsDir>/<namespace>/<name>/tls.crt`
/// and `tls.key` (Istio's `kubernetes.io/tls` secret keys), and for the CA `ca.crt` of the
/// same directory, else of `<name>-cacert` (Istio's separate CA secret). `ca` names the
/// CA's secret instead (`caCertCredentialName`).
pub fn credential_files(dir: &Path, namespace: &str, name: &str, ca: Option<&str>) -> ServerFiles {
    let base = dir.join(namespace).join(name);
    let ca_certificates = match ca {
        Some(ca) => Some(dir.join(namespace).join(ca).join("ca.crt")),
        None => {
            let own = base.join("ca.crt");
            let separate = dir
                .join(namespace)
                .join(format!("{name}-cacert"))
                .join("ca.crt");
            Some(if own.exists() || !separate.exists() {
                own
            } else {
                separate
            })
        }
    };
    ServerFiles {
        certificate: base.join("tls.crt"),
        private_key: base.join("tls.key"),
        ca_certificates,
        fields: ["credentialName", "credentialName", "credentialName"],
    }
}

fn set(o: &Option<String>) -> Option<&str> {
    o.as_deref().filter(|s| !s.is_empty())
}

/// Works out the gateway listeners of `snapshot` for its bootstrap workload. Problems are
/// issues of the Gateways' fields (errors refuse the configuration); warnings name the
/// servers that are not served yet.
pub fn plan(snapshot: &Snapshot, has_identity: bool) -> (Plan, Vec<Issue>) {
    let boot = &snapshot.bootstrap;
    let mut issues = Vec::new();
    let mut plan = Plan::default();
    let default_addr: IpAddr = boot
        .gateway_address
        .parse()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    for gw in snapshot.gateways.iter().filter(|g| selects(g, snapshot)) {
        let qualified = format!("{}/{}", gw.namespace, gw.name);
        let resource = ResourceRef {
            kind: Kind::Gateway,
            namespace: gw.namespace.clone(),
            name: gw.name.clone(),
        };
        let mut issue = |severity, field: String, message: String| {
            issues.push(Issue {
                severity,
                resource: resource.clone(),
                field: FieldPath::parse(&field),
                message,
            })
        };
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            let Some(port) = &server.port else { continue };
            let Ok(number) = u16::try_from(port.number) else {
                continue; // refused by validation
            };
            let proto = Protocol::parse(&port.protocol);
            let tls = server.tls.as_ref();
            let mode = tls.and_then(|t| t.mode);
            // the TLS a terminating server serves (HTTPS, or TLS then TCP routes)
            let mut terminated = |mode: ServerTlsMode| -> Option<PortTlsPlan> {
                let t = tls?;
                if mode == ServerTlsMode::IstioMutual {
                    if !has_identity {
                        issue(
                            Severity::Error,
                            format!("{at}.tls.mode"),
                            "ISTIO_MUTUAL serves the workload's certificate: the ProxyBootstrap has no identity".into(),
                        );
                        return None;
                    }
                    return Some(PortTlsPlan::IstioMutual);
                }
                match server_files(t, server, gw, boot.credentials_dir.as_deref()) {
                    Ok(files) => Some(PortTlsPlan::Files(vec![(
                        t.clone(),
                        files,
                        server.hosts.clone(),
                    )])),
                    Err((field, message)) => {
                        issue(Severity::Error, format!("{at}.tls.{field}"), message);
                        None
                    }
                }
            };
            let serves = if proto.is_http() {
                Serves::Http(PortTlsPlan::Plaintext)
            } else if proto == Protocol::Https || proto == Protocol::Tls {
                match mode {
                    // PASSTHROUGH (the default): routed by SNI
                    None | Some(ServerTlsMode::Passthrough) => Serves::L4(L4Mode::Sni),
                    Some(ServerTlsMode::AutoPassthrough) => {
                        Serves::L4(L4Mode::AutoPassthrough(server.hosts.clone()))
                    }
                    Some(m) => {
                        let Some(t) = terminated(m) else { continue };
                        if proto == Protocol::Https {
                            Serves::Http(t)
                        } else {
                            Serves::L4(L4Mode::Terminate(t))
                        }
                    }
                }
            } else if matches!(
                proto,
                Protocol::Tcp | Protocol::Mongo | Protocol::MySql | Protocol::Redis
            ) {
                Serves::L4(L4Mode::Tcp)
            } else {
                continue; // UDP and unknown protocols: the support table warns
            };
            let address = match set(&server.bind) {
                None => default_addr,
                Some(b) => match b.parse::<IpAddr>() {
                    Ok(a) => a,
                    Err(_) => {
                        issue(
                            Severity::Error,
                            format!("{at}.bind"),
                            format!("bind {b:?}: this version binds IP addresses only"),
                        );
                        continue;
                    }
                },
            };
            let local_port = boot
                .gateway_ports
                .get(&number.to_string())
                .copied()
                .unwrap_or(number);
            let redirect: Vec<String> = if tls.is_some_and(|t| t.https_redirect) {
                server
                    .hosts
                    .iter()
                    .map(|h| strip_ns(h).to_ascii_lowercase())
                    .collect()
            } else {
                Vec::new()
            };
            let port_tls = match serves {
                Serves::Http(t) => t,
                Serves::L4(mode) => {
                    if plan.ports.iter().any(|p| p.number == number) {
                        issue(
                            Severity::Error,
                            format!("{at}.port.number"),
                            "a port serves HTTP or TCP/TLS, not both: this server conflicts with an HTTP server on the same port".into(),
                        );
                        continue;
                    }
                    let Some(p) = plan.l4.iter_mut().find(|p| p.number == number) else {
                        plan.l4.push(L4PortPlan {
                            number,
                            address,
                            local_port,
                            gateways: vec![qualified.clone()],
                            mode,
                        });
                        continue;
                    };
                    let same = match (&mut p.mode, mode) {
                        (L4Mode::Tcp, L4Mode::Tcp)
                        | (L4Mode::Sni, L4Mode::Sni)
                        | (
                            L4Mode::Terminate(PortTlsPlan::IstioMutual),
                            L4Mode::Terminate(PortTlsPlan::IstioMutual),
                        ) => true,
                        (L4Mode::AutoPassthrough(v), L4Mode::AutoPassthrough(w)) => {
                            v.extend(w);
                            true
                        }
                        (
                            L4Mode::Terminate(PortTlsPlan::Files(v)),
                            L4Mode::Terminate(PortTlsPlan::Files(mut w)),
                        ) => {
                            v.append(&mut w);
                            true
                        }
                        _ => false,
                    };
                    if !same || p.address != address {
                        issue(
                            Severity::Error,
                            format!("{at}.port.number"),
                            "servers on one L4 port are all TCP, all TLS passthrough, all AUTO_PASSTHROUGH, all TLS from files or all ISTIO_MUTUAL, on one address: this server conflicts with an earlier one on the same port".into(),
                        );
                    } else if !p.gateways.contains(&qualified) {
                        p.gateways.push(qualified.clone());
                    }
                    continue;
                }
            };
            if plan.l4.iter().any(|p| p.number == number) {
                issue(
                    Severity::Error,
                    format!("{at}.port.number"),
                    "a port serves HTTP or TCP/TLS, not both: this server conflicts with a TCP or TLS server on the same port".into(),
                );
                continue;
            }
            let hosts = ServerHosts {
                gateway: qualified.clone(),
                hosts: server.hosts.clone(),
            };
            match plan.ports.iter_mut().find(|p| p.number == number) {
                None => plan.ports.push(PortPlan {
                    number,
                    address,
                    local_port,
                    gateways: vec![qualified.clone()],
                    servers: vec![hosts],
                    tls: port_tls,
                    redirect,
                }),
                Some(p) => {
                    let conflict = match (&mut p.tls, port_tls) {
                        (PortTlsPlan::Plaintext, PortTlsPlan::Plaintext) => None,
                        (PortTlsPlan::IstioMutual, PortTlsPlan::IstioMutual) => None,
                        (PortTlsPlan::Files(v), PortTlsPlan::Files(mut w)) => {
                            v.append(&mut w);
                            None
                        }
                        _ => Some(
                            "a port serves plaintext HTTP, TLS from files or ISTIO_MUTUAL, not a mix: this server conflicts with an earlier one on the same port",
                        ),
                    };
                    if let Some(m) = conflict {
                        issue(Severity::Error, format!("{at}.port.number"), m.into());
                        continue;
                    }
                    if p.address != address {
                        issue(
                            Severity::Error,
                            format!("{at}.bind"),
                            format!(
                                "servers on port {number} bind different addresses ({} and {address}): not served by this version",
                                p.address
                            ),
                        );
                        continue;
                    }
                    if !p.gateways.contains(&qualified) {
                        p.gateways.push(qualified.clone());
                    }
                    p.servers.push(hosts);
                    p.redirect.extend(redirect);
                }
            }
        }
    }
    plan.ports.sort_by_key(|p| p.number);
    plan.l4.sort_by_key(|p| p.number);
    (plan, issues)
}

/// A host without its `ns/` part.
fn strip_ns(h: &str) -> &str {
    h.split_once('/').map_or(h, |(_, h)| h)
}

/// The files of a server's `tls`: `credentialName` under `credentialsDir`, else the file
/// fields. `Err((field, message))`.
fn server_files(
    t: &ServerTlsSettings,
    _server: &Server,
    gw: &Named<Gateway>,
    dir: Option<&str>,
) -> Result<ServerFiles, (String, String)> {
    if let Some(name) = set(&t.credential_name) {
        let Some(dir) = dir else {
            return Err((
                "credentialName".into(),
                "credentialName is read from files under ProxyBootstrap.credentialsDir, which is not set".into(),
            ));
        };
        let mut f = credential_files(
            Path::new(dir),
            &gw.namespace,
            name,
            set(&t.ca_cert_credential_name),
        );
        if set(&t.ca_certificates).is_some() {
            f.ca_certificates = set(&t.ca_certificates).map(PathBuf::from);
            f.fields[2] = "caCertificates";
        }
        return Ok(f);
    }
    let cert = set(&t.server_certificate).ok_or_else(|| {
        (
            "serverCertificate".to_string(),
            "a server certificate (serverCertificate or credentialName) is required".to_string(),
        )
    })?;
    let key = set(&t.private_key).ok_or_else(|| {
        (
            "privateKey".to_string(),
            "a private key is required".to_string(),
        )
    })?;
    let ca = match set(&t.ca_cert_credential_name) {
        Some(ca) => match dir {
            Some(dir) => Some(Path::new(dir).join(&gw.namespace).join(ca).join("ca.crt")),
            None => {
                return Err((
                    "caCertCredentialName".into(),
                    "caCertCredentialName is read from files under ProxyBootstrap.credentialsDir, which is not set".into(),
                ));
            }
        },
        None => set(&t.ca_certificates).map(PathBuf::from),
    };
    Ok(ServerFiles {
        certificate: cert.into(),
        private_key: key.into(),
        ca_certificates: ca,
        fields: ["serverCertificate", "privateKey", "caCertificates"],
    })
}

/// Reads the files of every TLS port of `plan` and builds their configurations; problems
/// are errors of the Gateways' fields. `Ok` holds one entry per port of `plan.ports`, then
/// one per port of `plan.l4` (`None` for plaintext, `ISTIO_MUTUAL` and L4 ports that do not
/// terminate TLS).
pub fn prepare_tls(snapshot: &Snapshot, plan: &Plan) -> Result<PreparedTls, Vec<Issue>> {
    let mut issues = Vec::new();
    let mut prepare = |number: u16, tls: Option<&PortTlsPlan>| {
        let Some(PortTlsPlan::Files(servers)) = tls else {
            return None;
        };
        match build_port(servers) {
            Ok(t) => Some(t),
            Err((k, field, message)) => {
                // the server at fault: the k-th TLS server of the port, found again by its
                // settings in the gateways of the port
                let (resource, at) = locate(snapshot, number, &servers[k].0);
                issues.push(Issue {
                    severity: Severity::Error,
                    resource,
                    field: FieldPath::parse(&format!(
                        "{at}.tls{}",
                        field.map(|f| format!(".{f}")).unwrap_or_default()
                    )),
                    message,
                });
                None
            }
        }
    };
    let ports = plan
        .ports
        .iter()
        .map(|p| prepare(p.number, Some(&p.tls)))
        .collect();
    let l4 = plan.l4.iter().map(|p| prepare(p.number, p.tls())).collect();
    if issues.is_empty() {
        Ok(PreparedTls { ports, l4 })
    } else {
        Err(issues)
    }
}

/// What [`prepare_tls`] built: the TLS configuration of each port that terminates TLS with
/// files.
#[derive(Debug, Default)]
pub struct PreparedTls {
    /// By HTTP port (same order as [`Plan::ports`]).
    pub ports: Vec<Option<PortTermination>>,
    /// By L4 port (same order as [`Plan::l4`]).
    pub l4: Vec<Option<PortTermination>>,
}

type PortError = (usize, Option<String>, String);

fn build_port(
    servers: &[(ServerTlsSettings, ServerFiles, Vec<String>)],
) -> Result<PortTermination, PortError> {
    let mut built = Vec::with_capacity(servers.len());
    for (k, (tls, files, hosts)) in servers.iter().enumerate() {
        let s =
            ServerTermination::new(tls, files, hosts).map_err(|e| (k, Some(e.field), e.message))?;
        built.push(s);
    }
    PortTermination::new(built).map_err(|m| (servers.len() - 1, Some("mode".into()), m))
}

/// The Gateway and field path of the server whose `tls` is `tls` on port `number`.
fn locate(snapshot: &Snapshot, number: u16, tls: &ServerTlsSettings) -> (ResourceRef, String) {
    for gw in snapshot.gateways.iter().filter(|g| selects(g, snapshot)) {
        for (i, s) in gw.spec.servers.iter().enumerate() {
            let on_port = s
                .port
                .as_ref()
                .is_some_and(|sp| sp.number == u32::from(number));
            if on_port && s.tls.as_ref() == Some(tls) {
                return (
                    ResourceRef {
                        kind: Kind::Gateway,
                        namespace: gw.namespace.clone(),
                        name: gw.name.clone(),
                    },
                    format!("spec.servers[{i}]"),
                );
            }
        }
    }
    (
        ResourceRef {
            kind: Kind::Gateway,
            namespace: String::new(),
            name: String::new(),
        },
        "spec.servers".into(),
    )
}

// === GatewayTls ===

/// The TLS of one gateway listener: its servers' certificates (swapped on reload and when
/// their files change), or the workload's for `ISTIO_MUTUAL`. An L4 listener's (a `TLS`
/// server that terminates, then TCP) offers no ALPN protocol, as Istio's TLS servers.
#[derive(Debug)]
pub struct GatewayTls {
    state: ArcSwap<PortTlsState>,
    identity: Arc<crate::security::WorkloadTls>,
    stamps: Mutex<Vec<(PathBuf, Stamp)>>,
    l4: bool,
}

#[derive(Debug)]
enum PortTlsState {
    Files {
        servers: Vec<(ServerTlsSettings, ServerFiles, Vec<String>)>,
        config: Arc<rustls::ServerConfig>,
    },
    IstioMutual,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn stamps_of(state: &PortTlsState) -> Vec<(PathBuf, Stamp)> {
    let PortTlsState::Files { servers, .. } = state else {
        return Vec::new();
    };
    servers
        .iter()
        .flat_map(|(_, f, _)| {
            [
                Some(&f.certificate),
                Some(&f.private_key),
                f.ca_certificates.as_ref(),
            ]
            .into_iter()
            .flatten()
        })
        .map(|p| (p.clone(), stamp(p)))
        .collect()
}

impl GatewayTls {
    /// The TLS of a port that serves `tls` (`built`: its configuration from
    /// [`prepare_tls`]); `None` for a plaintext port. `l4`: the port serves TCP after the
    /// handshake (no ALPN offered).
    pub fn new(
        tls: &PortTlsPlan,
        built: Option<PortTermination>,
        identity: Arc<crate::security::WorkloadTls>,
        l4: bool,
    ) -> Option<GatewayTls> {
        let state = Self::state(tls, built, l4)?;
        let stamps = Mutex::new(stamps_of(&state));
        Some(GatewayTls {
            state: ArcSwap::from_pointee(state),
            identity,
            stamps,
            l4,
        })
    }

    fn state(tls: &PortTlsPlan, built: Option<PortTermination>, l4: bool) -> Option<PortTlsState> {
        match (tls, built) {
            (PortTlsPlan::Plaintext, _) => None,
            (PortTlsPlan::IstioMutual, _) => Some(PortTlsState::IstioMutual),
            (PortTlsPlan::Files(servers), Some(t)) => Some(PortTlsState::Files {
                servers: servers.clone(),
                config: Self::config(&t, l4),
            }),
            (PortTlsPlan::Files(_), None) => None,
        }
    }

    fn config(t: &PortTermination, l4: bool) -> Arc<rustls::ServerConfig> {
        if !l4 {
            return t.config().clone();
        }
        let mut c = (**t.config()).clone();
        c.alpn_protocols.clear();
        Arc::new(c)
    }

    /// Applies a reloaded configuration's TLS for the port.
    pub fn store(&self, tls: &PortTlsPlan, built: Option<PortTermination>) {
        if let Some(state) = Self::state(tls, built, self.l4) {
            let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            *stamps = stamps_of(&state);
            self.state.store(Arc::new(state));
        }
    }

    /// Re-reads the servers' files if one changed; new handshakes use them. Files that
    /// cannot be used keep the previous ones (and are tried again next time). Returns
    /// whether the certificates changed.
    pub fn rotate(&self) -> bool {
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if stamps.iter().all(|(p, s)| stamp(p) == *s) {
            return false;
        }
        let current = self.state.load_full();
        let PortTlsState::Files { servers, .. } = &*current else {
            return false;
        };
        match build_port(servers) {
            Ok(t) => {
                let state = PortTlsState::Files {
                    servers: servers.clone(),
                    config: Self::config(&t, self.l4),
                };
                *stamps = stamps_of(&state);
                self.state.store(Arc::new(state));
                tracing::info!("gateway certificates re-read");
                true
            }
            Err((_, _, m)) => {
                tracing::warn!(error = %m, "gateway certificate files changed but cannot be used; keeping the current ones");
                false
            }
        }
    }
}

impl DownstreamTls for GatewayTls {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        match &**self.state.load() {
            PortTlsState::Files { config, .. } => config.clone(),
            PortTlsState::IstioMutual if self.l4 => {
                // the workload's configuration offers HTTP's ALPN: none after TLS on L4
                let mut c = (*self.identity.server_config()).clone();
                c.alpn_protocols.clear();
                Arc::new(c)
            }
            PortTlsState::IstioMutual => self.identity.server_config(),
        }
    }

    fn accepts(&self) -> Accepts {
        Accepts::TlsOnly
    }
}

// === the front of a gateway listener's stack ===

/// What the policies read of a connection, computed once per connection.
#[derive(Debug, Clone)]
struct ConnectionFacts {
    peer: Arc<PeerTlsInfo>,
    identity: Option<PeerIdentity>,
    sni: Option<ConnectionSni>,
}

/// The front of a gateway listener's stack: fills in what AuthorizationPolicy reads (the
/// client certificate's SPIFFE identity, the SNI, the destination), drops a client's own
/// `x-forwarded-client-cert` (Envoy's `SANITIZE`), treats the request as external as
/// Istio's gateways do (`use_remote_address`: the client's address appended to
/// `x-forwarded-for`, `x-forwarded-proto` the connection's scheme,
/// `x-envoy-external-address`, the client's `x-request-id` dropped for one of the
/// gateway's), and hands the request on.
#[derive(Debug, Clone)]
pub struct GatewayFront<S> {
    inner: S,
    destination: DestinationAddr,
    last: Option<ConnectionFacts>,
}

impl<S> GatewayFront<S> {
    /// Wraps `inner` for a listener on `listener`.
    pub fn new(inner: S, listener: SocketAddr) -> Self {
        GatewayFront {
            inner,
            destination: DestinationAddr(listener),
            last: None,
        }
    }

    fn facts(&mut self, peer: &Arc<PeerTlsInfo>) -> ConnectionFacts {
        if let Some(f) = &self.last
            && Arc::ptr_eq(&f.peer, peer)
        {
            return f.clone();
        }
        let facts = ConnectionFacts {
            peer: peer.clone(),
            identity: peer
                .peer_certificates
                .first()
                .and_then(|c| mesh_tls::peer::spiffe_id(c).ok())
                .map(PeerIdentity::new),
            sni: peer
                .server_name
                .as_deref()
                .map(|s| ConnectionSni(Arc::from(s))),
        };
        self.last = Some(facts.clone());
        facts
    }
}

/// `x-forwarded-client-cert`.
const XFCC: http::HeaderName = http::HeaderName::from_static("x-forwarded-client-cert");
/// `x-forwarded-for`.
const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
const XFP: http::HeaderName = mesh_core::hcm::X_FORWARDED_PROTO;
/// `x-envoy-external-address`.
const EXTERNAL_ADDRESS: http::HeaderName =
    http::HeaderName::from_static("x-envoy-external-address");
/// `x-request-id`.
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What Envoy's connection manager does to an external request when it uses the remote
/// address, as at Istio's gateways (`use_remote_address: true`; since Envoy 1.33 no network
/// counts as internal unless configured, so every request is external), checked against
/// envoy 1.40:
/// - the client's address is appended to `x-forwarded-for` (`1.2.3.4, 5.6.7.8` becomes
///   `1.2.3.4, 5.6.7.8,<client>`; several fields are joined with `,`);
/// - `x-forwarded-proto` is the connection's scheme (`https` when the gateway terminated
///   TLS), whatever the client wrote;
/// - `x-envoy-external-address` is the client's address;
/// - the client's `x-request-id` is dropped, so that the trace layer generates one
///   (`preserve_external_request_id` is off).
///
/// One difference: for a client on a loopback address Envoy appends its own node address
/// to `x-forwarded-for`; here the client's address is appended whatever it is.
fn edge_headers(headers: &mut http::HeaderMap, client: Option<std::net::IpAddr>, tls: bool) {
    if let Some(ip) = client {
        let ip = ip.to_string();
        let mut xff = Vec::new();
        for v in headers.get_all(&XFF).iter().filter(|v| !v.is_empty()) {
            xff.extend_from_slice(v.as_bytes());
            xff.push(b',');
        }
        xff.extend_from_slice(ip.as_bytes());
        // (the client's own bytes were a valid value, the joins and the address are)
        if let Ok(v) = HeaderValue::from_bytes(&xff) {
            headers.insert(XFF, v);
        }
        if let Ok(v) = HeaderValue::from_str(&ip) {
            headers.insert(EXTERNAL_ADDRESS, v);
        }
    }
    let scheme = if tls { "https" } else { "http" };
    headers.insert(XFP, HeaderValue::from_static(scheme));
    headers.remove(REQUEST_ID);
}

impl<S, B> Service<Request<B>> for GatewayFront<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        req.headers_mut().remove(XFCC);
        let client = mesh_core::ext::client_addr(req.extensions()).map(|c| c.0.ip());
        let tls = req.extensions().get::<PeerTls>().is_some();
        edge_headers(req.headers_mut(), client, tls);
        if let Some(p) = req.extensions().get::<PeerTls>().map(|p| p.0.clone()) {
            let f = self.facts(&p);
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

// === httpsRedirect ===

/// `tls.httpsRedirect` of a plaintext gateway port: a request for one of the hosts answers
/// `301` to `https://` + Host + path (Envoy's `require_tls: ALL`, `createSslRedirectPath`).
#[derive(Debug, Clone, Default)]
pub struct HttpsRedirectLayer {
    hosts: Arc<ArcSwap<Vec<String>>>,
}

/// The service of [`HttpsRedirectLayer`].
#[derive(Debug, Clone)]
pub struct HttpsRedirect<S> {
    inner: S,
    hosts: Arc<ArcSwap<Vec<String>>>,
}

/// The future of [`HttpsRedirect`].
#[pin_project::pin_project(project = RedirectProj)]
#[derive(Debug)]
pub enum RedirectFuture<F, R> {
    /// Forwarded.
    Inner {
        /// The inner future.
        #[pin]
        fut: F,
    },
    /// Redirected.
    Redirect {
        /// The answer.
        res: Option<Response<R>>,
    },
}

impl HttpsRedirectLayer {
    /// Redirects requests for `hosts` (lowercase; `*.example.com` and `*` allowed).
    pub fn new(hosts: Vec<String>) -> Self {
        HttpsRedirectLayer {
            hosts: Arc::new(ArcSwap::from_pointee(hosts)),
        }
    }

    /// Replaces the hosts (a reload).
    pub fn store(&self, hosts: Vec<String>) {
        self.hosts.store(Arc::new(hosts));
    }
}

impl<S> Layer<S> for HttpsRedirectLayer {
    type Service = HttpsRedirect<S>;

    fn layer(&self, inner: S) -> HttpsRedirect<S> {
        HttpsRedirect {
            inner,
            hosts: self.hosts.clone(),
        }
    }
}

impl<S, B, R> Service<Request<B>> for HttpsRedirect<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: ReplyBody,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = RedirectFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let hosts = self.hosts.load();
        if !hosts.is_empty()
            && let Some(authority) = mesh_core::authority::of_request(&req)
        {
            let (host, _) = mesh_core::authority::split_port(authority);
            if hosts
                .iter()
                .any(|h| mesh_core::compile::host_matches(h, host))
            {
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let location = format!("https://{authority}{path}");
                let mut res = mesh_core::ext::local_reply::<R>(
                    StatusCode::MOVED_PERMANENTLY,
                    ResponseFlags::empty(),
                    "",
                );
                if let Ok(v) = HeaderValue::from_str(&location) {
                    res.headers_mut().insert(http::header::LOCATION, v);
                }
                mesh_core::ext::ResponseCodeDetails::mark_direct(&mut res, bytes::Bytes::new());
                return RedirectFuture::Redirect { res: Some(res) };
            }
        }
        drop(hosts);
        RedirectFuture::Inner {
            fut: self.inner.call(req),
        }
    }
}

impl<F, R, E> std::future::Future for RedirectFuture<F, R>
where
    F: std::future::Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RedirectProj::Inner { fut } => fut.poll(cx),
            RedirectProj::Redirect { res } => match res.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

/// The listeners a plan asks for, by server port (for logs and errors).
pub fn describe(plan: &Plan) -> BTreeMap<u16, SocketAddr> {
    plan.ports
        .iter()
        .map(|p| (p.number, SocketAddr::new(p.address, p.local_port)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn snapshot(gateways: &str) -> Arc<Snapshot> {
        let yaml = format!(
            "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: gw}}
spec:
  workload: {{name: ingress, namespace: istio-system, labels: {{istio: ingressgateway}}}}
  gatewayPorts: {{\"80\": 18080}}
---
{gateways}"
        );
        mesh_core::config::load_str("gw.yaml", &yaml)
            .unwrap()
            .snapshot
    }

    /// The snapshot of Gateway `default/a` (selecting the bootstrap workload) with the
    /// `servers` entries given (YAML lines), and what follows them (more resources).
    fn gateway_a(servers: &str) -> Arc<Snapshot> {
        snapshot(&format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: a, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}"
        ))
    }

    /// `issues` is one error, of `field`.
    fn only_error(issues: &[Issue], field: &str) {
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].severity, Severity::Error);
        assert_eq!(issues[0].field.to_string(), field);
    }

    #[test]
    fn servers_become_one_listener_per_port_and_l4_servers_l4_listeners() {
        let s = gateway_a(
            "  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [a.example.com]
  - port: {number: 8080, name: http2, protocol: HTTP}
    hosts: [a.example.com]
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: b, namespace: team}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [team/b.example.com]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: elsewhere, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 9000, name: http, protocol: HTTP}
    hosts: ['*']
",
        );
        let (plan, issues) = plan(&s, false);
        assert!(issues.is_empty(), "{issues:?}");
        let ports: Vec<(u16, u16)> = plan
            .ports
            .iter()
            .map(|p| (p.number, p.local_port))
            .collect();
        // gatewayPorts maps 80; 8080 binds as it is (Envoy); 9000's gateway selects others
        assert_eq!(ports, [(80, 18080), (8080, 8080)]);
        assert_eq!(plan.ports[0].gateways, ["default/a", "team/b"]);
        assert_eq!(plan.ports[0].redirect, ["b.example.com"]);
        assert_eq!(plan.ports[0].address, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(
            plan.listener_keys()[2..],
            [(31400, IpAddr::from([0, 0, 0, 0]), 31400, "tcp")]
        );
        assert_eq!(plan.l4[0].gateways, ["default/a"]);
    }

    #[test]
    fn tls_servers_are_l4_listeners_passthrough_terminating_or_auto() {
        let s = gateway_a(
            "  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [nginx.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 8443, name: tls-term, protocol: TLS}
    hosts: [c.example.com]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /c.key}
  - port: {number: 8443, name: tls-term-2, protocol: TLS}
    hosts: [d.example.com]
    tls: {mode: MUTUAL, serverCertificate: /d.pem, privateKey: /d.key, caCertificates: /ca.pem}
  - port: {number: 15443, name: tls-auto, protocol: TLS}
    hosts: ['*.local']
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 15443, name: tls-mixed, protocol: TLS}
    hosts: ['*.example.com']
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /c.key}
",
        );
        let (plan, issues) = plan(&s, false);
        assert!(plan.ports.is_empty());
        let any = IpAddr::from([0, 0, 0, 0]);
        assert_eq!(
            plan.listener_keys(),
            [
                (443, any, 443, "sni"),
                (8443, any, 8443, "tls"),
                (15443, any, 15443, "auto")
            ]
        );
        // the two terminating servers share the port, each with its certificate
        let Some(PortTlsPlan::Files(servers)) = plan.l4[1].tls() else {
            panic!("{:?}", plan.l4[1]);
        };
        assert_eq!(servers.len(), 2);
        // a terminating server on the AUTO_PASSTHROUGH port is refused
        only_error(&issues, "spec.servers[5].port.number");
    }

    #[test]
    fn an_istio_mutual_tls_server_needs_an_identity() {
        let s = gateway_a(
            "  - port: {number: 9443, name: tls-mesh, protocol: TLS}
    hosts: [d.example.com]
    tls: {mode: ISTIO_MUTUAL}
",
        );
        let (plan, issues) = plan(&s, false);
        assert!(plan.l4.is_empty());
        let fields: Vec<String> = issues.iter().map(|i| i.field.to_string()).collect();
        assert_eq!(fields, ["spec.servers[0].tls.mode"]);
        let (plan, _) = super::plan(&s, true);
        assert!(matches!(
            plan.l4[..],
            [L4PortPlan {
                number: 9443,
                mode: L4Mode::Terminate(PortTlsPlan::IstioMutual),
                ..
            }]
        ));
    }

    #[test]
    fn http_and_tcp_servers_on_one_port_are_refused() {
        let s = gateway_a(
            "  - port: {number: 80, name: tcp, protocol: TCP}
    hosts: ['*']
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [a.example.com]
  - port: {number: 80, name: tls, protocol: TLS}
    hosts: [b.example.com]
    tls: {mode: PASSTHROUGH}
",
        );
        let (plan, issues) = plan(&s, false);
        assert_eq!(plan.l4.len(), 1);
        assert!(plan.ports.is_empty());
        let fields: Vec<String> = issues.iter().map(|i| i.field.to_string()).collect();
        assert_eq!(
            fields,
            ["spec.servers[1].port.number", "spec.servers[2].port.number"]
        );
        assert!(issues.iter().all(|i| i.severity == Severity::Error));
    }

    #[test]
    fn plaintext_and_tls_servers_on_one_port_are_refused() {
        let s = gateway_a(
            "  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [a.example.com]
  - port: {number: 80, name: https, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: ISTIO_MUTUAL}
",
        );
        let (_, issues) = plan(&s, true);
        only_error(&issues, "spec.servers[1].port.number");
    }

    #[test]
    fn istio_mutual_without_an_identity_is_refused() {
        let s = gateway_a(
            "  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: ISTIO_MUTUAL}
",
        );
        let (plan, issues) = plan(&s, false);
        assert!(plan.ports.is_empty());
        assert_eq!(issues[0].field.to_string(), "spec.servers[0].tls.mode");
    }

    #[test]
    fn credential_files_follow_istio_secret_keys() {
        let dir = Path::new("/creds");
        let f = credential_files(dir, "istio-system", "web", None);
        assert_eq!(f.certificate, Path::new("/creds/istio-system/web/tls.crt"));
        assert_eq!(f.private_key, Path::new("/creds/istio-system/web/tls.key"));
        // neither exists: the secret's own ca.crt is named (and reported if read)
        assert_eq!(
            f.ca_certificates.as_deref(),
            Some(Path::new("/creds/istio-system/web/ca.crt"))
        );
        let f = credential_files(dir, "istio-system", "web", Some("web-ca"));
        assert_eq!(
            f.ca_certificates.as_deref(),
            Some(Path::new("/creds/istio-system/web-ca/ca.crt"))
        );
    }
}
