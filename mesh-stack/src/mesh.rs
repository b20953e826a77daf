//! [`Mesh`]: a configuration that went through the proxy's pipeline, and the live handles
//! every stack built from it reads.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::compile::Snapshot;
use mesh_core::load::Loader;
use mesh_core::{ConfigError, Diagnostic};
use mesh_lb::discover::{Discover, EndpointFeed, FeedDiscover};
use mesh_proxy::pipeline::{self, Built};
use mesh_proxy::security::{Security, WorkloadTls};
use mesh_proxy::stack::Layers;
use mesh_routing::RouteTableHandle;
use mesh_telemetry::metrics::{IstioMetrics, MetricsService};
use mesh_tls::authz::Authorizer;
use mesh_tls::jwt::Authenticator;

use crate::client::{ClientLayer, ConnectorClient};
use crate::server::{MeshAcceptor, ServerLayer};

/// A mesh configuration in force in this process, and the handles that change it.
///
/// Built from Istio YAML by the same pipeline as `mesh-proxy validate` and `run`
/// ([`mesh_proxy::pipeline`]): a configuration `validate` refuses is refused here with the
/// same diagnostics (file, line, resource, field), and the warnings are the same.
///
/// Cheap to clone (clones share everything). Every stack made from it
/// ([`client`](Self::client), [`client_layer`](Self::client_layer),
/// [`server_layer`](Self::server_layer)) reads the configuration in force per request:
/// [`reload`](Self::reload) swaps it for all of them at once, and requests in flight finish
/// on what they loaded. A bad reload changes nothing.
#[derive(Clone)]
pub struct Mesh {
    shared: Arc<Shared>,
}

struct Shared {
    layers: Layers,
    feed: EndpointFeed,
    tls: Arc<WorkloadTls>,
    security: ArcSwap<Security>,
    authz: Arc<ArcSwap<Authorizer>>,
    jwt: Arc<ArcSwap<Authenticator>>,
    warnings: ArcSwap<Vec<Diagnostic>>,
}

/// Why a [`Mesh`] could not be made.
#[derive(Debug)]
#[non_exhaustive]
pub enum MeshError {
    /// The configuration is invalid (or asks for what this version cannot enforce): the
    /// diagnostics `mesh-proxy validate` prints.
    Config(ConfigError),
    /// The workload's TLS configuration could not be built.
    Tls(rustls::Error),
}

// === impl Mesh ===

impl Mesh {
    /// The configuration of the YAML `text` (named `name` in diagnostics).
    pub fn from_yaml(name: &str, text: &str) -> Result<Mesh, MeshError> {
        let mut loader = Loader::new();
        loader.add_str(name, text);
        Mesh::from_loader(loader)
    }

    /// The configuration of `files` (their documents merged, as `mesh-proxy run --config`
    /// with several files).
    pub fn from_files<P: AsRef<Path>>(files: &[P]) -> Result<Mesh, MeshError> {
        Mesh::from_built(pipeline::build_files(files).map_err(MeshError::Config)?)
    }

    /// The configuration of a loader's sources (files, strings).
    pub fn from_loader(loader: Loader) -> Result<Mesh, MeshError> {
        Mesh::from_built(pipeline::build(loader).map_err(MeshError::Config)?)
    }

    /// The configuration of a pipeline's result.
    pub fn from_built(built: Built) -> Result<Mesh, MeshError> {
        let (source, feed) = FeedDiscover::new();
        let sources: Vec<Arc<dyn Discover>> = vec![Arc::new(source)];
        let layers = Layers::with_sources(&built.compiled.snapshot, built.routes, sources);
        let tls = Arc::new(WorkloadTls::new(built.security.clone()).map_err(MeshError::Tls)?);
        Ok(Mesh {
            shared: Arc::new(Shared {
                layers,
                feed,
                tls,
                authz: Arc::new(ArcSwap::new(built.security.authz.clone())),
                jwt: Arc::new(ArcSwap::new(built.security.jwt.clone())),
                security: ArcSwap::from_pointee(built.security),
                warnings: ArcSwap::from_pointee(warnings(&built.compiled)),
            }),
        })
    }

    /// Replaces the configuration with the YAML `text`; see [`apply`](Self::apply).
    pub fn reload_yaml(&self, name: &str, text: &str) -> Result<(), ConfigError> {
        let mut loader = Loader::new();
        loader.add_str(name, text);
        self.reload(loader)
    }

    /// Replaces the configuration with the loader's: on an error nothing changes (the
    /// configuration in force stays, as a bad `SIGHUP` reload of `mesh-proxy`).
    pub fn reload(&self, loader: Loader) -> Result<(), ConfigError> {
        let built = pipeline::build(loader)?;
        self.apply(built);
        Ok(())
    }

    /// Puts a configuration in force for every stack made from this mesh: new requests
    /// route, balance and authorize by it; requests in flight finish on the old one.
    pub fn apply(&self, built: Built) {
        let s = &self.shared;
        s.layers.store(&built.compiled.snapshot, built.routes);
        s.authz.store(built.security.authz.clone());
        s.jwt.store(built.security.jwt.clone());
        s.tls.store(built.security.clone());
        s.security.store(Arc::new(built.security));
        s.warnings.store(Arc::new(warnings(&built.compiled)));
    }

    /// The warnings of the configuration in force (fields this version does not enforce,
    /// Istio's validation warnings), as `mesh-proxy validate` prints them.
    pub fn warnings(&self) -> Arc<Vec<Diagnostic>> {
        self.shared.warnings.load_full()
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.layers.lb().snapshot()
    }

    /// The route table handle the client stacks read (the proxy's own): store a table
    /// built elsewhere to change routing alone.
    pub fn routes(&self) -> &RouteTableHandle {
        self.shared.layers.routes()
    }

    /// Endpoints from the service's own discovery: a set published for a host (a
    /// ServiceEntry's host) replaces that service's endpoints for every client of this mesh,
    /// with no request dropped (requests in flight keep their endpoint); removing it goes
    /// back to the YAML's endpoints.
    pub fn endpoints(&self) -> &EndpointFeed {
        &self.shared.feed
    }

    /// The balancer layer (its health table: outlier detection's ejections; its circuit
    /// breakers' counts).
    pub fn lb(&self) -> &mesh_lb::LbLayer {
        self.shared.layers.lb()
    }

    /// The proxy's outbound layers this mesh's clients are made of.
    pub fn layers(&self) -> &Layers {
        &self.shared.layers
    }

    /// Istio's standard metrics of every client (`reporter="source"`) and server
    /// (`reporter="destination"`) stack of this mesh.
    pub fn metrics(&self) -> &Arc<IstioMetrics> {
        self.shared.layers.telemetry().metrics()
    }

    /// A service answering with the Prometheus exposition of [`metrics`](Self::metrics):
    /// mount it on the application's own router (`/stats/prometheus`, `/metrics`).
    pub fn metrics_service(&self) -> MetricsService {
        MetricsService::new(self.metrics().clone())
    }

    /// The client layer: put it around any client that sends a request to the endpoint the
    /// balancer picked (see [`crate::client`]).
    pub fn client_layer(&self) -> ClientLayer {
        ClientLayer::new(self.clone())
    }

    /// The full client stack over the project's connector (pooled HTTP/1.1 and HTTP/2,
    /// Istio's auto mTLS and DestinationRule `tls` when the bootstrap has an identity).
    /// Create it once and clone it: clones share the connection pool.
    pub fn client(&self) -> ConnectorClient {
        let connect_timeout = self.snapshot().bootstrap.limits.connect_timeout.get();
        let connector = mesh_transport::Connector::new(connect_timeout)
            .with_tls(self.shared.tls.clone() as Arc<dyn mesh_transport::tls::UpstreamTls>);
        self.shared.layers.wrap(connector)
    }

    /// The server layer: PeerAuthentication, RequestAuthentication (JWT),
    /// AuthorizationPolicy, `LocalRateLimit`, telemetry (see [`crate::server`]).
    pub fn server_layer(&self) -> ServerLayer {
        ServerLayer::new(self.clone())
    }

    /// The TLS acceptor of the workload's identity (ProxyBootstrap `spec.identity`), which
    /// requires a client certificate when the PeerAuthentication in force is `STRICT`;
    /// `None` without an identity (plaintext only).
    pub fn acceptor(&self) -> Option<MeshAcceptor> {
        MeshAcceptor::new(self)
    }

    pub(crate) fn tls(&self) -> Arc<dyn mesh_transport::tls::DownstreamTls> {
        self.shared.tls.clone()
    }

    pub(crate) fn security(&self) -> Arc<Security> {
        self.shared.security.load_full()
    }

    pub(crate) fn authz(&self) -> &Arc<ArcSwap<Authorizer>> {
        &self.shared.authz
    }

    pub(crate) fn jwt(&self) -> &Arc<ArcSwap<Authenticator>> {
        &self.shared.jwt
    }
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("generation", &self.snapshot().generation)
            .finish_non_exhaustive()
    }
}

// === impl MeshError ===

impl std::fmt::Display for MeshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeshError::Config(e) => write!(f, "{e}"),
            MeshError::Tls(e) => write!(f, "workload TLS: {e}"),
        }
    }
}

impl std::error::Error for MeshError {}

impl From<ConfigError> for MeshError {
    fn from(e: ConfigError) -> Self {
        MeshError::Config(e)
    }
}

/// The configuration's warnings, and what the in-process stacks leave to the sidecar: the
/// workload's Sidecar's inbound connection pools (`inboundConnectionPool`,
/// `ingress[].connectionPool`), which limit a proxy's connections to the application; the
/// server stack calls the service directly, with no connection between them to limit.
fn warnings(built: &mesh_core::config::Compiled) -> Vec<Diagnostic> {
    use mesh_core::error::{FieldPath, ResourceRef};
    use mesh_core::load::Issue;
    use mesh_core::model::Kind;
    let snapshot = &built.snapshot;
    let mut issues = Vec::new();
    if let (Some(sc), _) = mesh_core::scope::select(&snapshot.sidecars, &snapshot.bootstrap) {
        let resource = ResourceRef {
            kind: Kind::Sidecar,
            namespace: sc.namespace.clone(),
            name: sc.name.clone(),
        };
        let mut warn = |field: String| {
            issues.push(Issue {
                severity: mesh_core::Severity::Warning,
                resource: resource.clone(),
                field: FieldPath::parse(&field),
                message: "not applied in-process: the server stack calls your service directly, with no connection to limit (mesh-proxy applies it to its inbound listeners)".into(),
            });
        };
        if sc.spec.inbound_connection_pool.is_some() {
            warn("spec.inboundConnectionPool".into());
        }
        for (i, ing) in sc.spec.ingress.iter().enumerate() {
            if ing.connection_pool.is_some() {
                warn(format!("spec.ingress[{i}].connectionPool"));
            }
        }
    }
    let mut all = built.warnings.clone();
    all.extend(built.origins.locate(issues));
    all
}
