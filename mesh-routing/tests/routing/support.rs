//! Shared helpers for the routing tests: build snapshots from YAML and drive the router with
//! an inner service that records what it received.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use mesh_core::MeshBody;
use mesh_core::compile::{Snapshot, compile};
use mesh_core::ext::{Passthrough, RouteDestination, RoutePolicy, route_destination, route_policy};
use mesh_core::load::Loader;
use mesh_routing::{RouteLayer, RouteTable, RouterContext};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

pub type Svc = BoxCloneService<Request<String>, Response<MeshBody<String>>, Infallible>;

/// A ServiceEntry for `<name>.<ns>.svc.cluster.local` with the given ports.
pub fn service(name: &str, ns: &str, ports: &[u32]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{{number: {p}, name: http-{p}, protocol: HTTP}}"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}.{ns}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{}]\n  endpoints: [{{address: 10.0.0.1}}]\n---\n",
        ports.join(", ")
    )
}

/// Loads and compiles YAML; panics on load errors.
pub fn snap(yaml: &str) -> Snapshot {
    let mut l = Loader::new();
    l.add_str("test.yaml", yaml);
    let loaded = l.finish();
    assert!(
        loaded
            .diagnostics
            .iter()
            .all(|d| d.severity != mesh_core::Severity::Error),
        "{:#?}",
        loaded.diagnostics
    );
    compile(loaded.resources)
}

/// What the inner service saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub parts: http::request::Parts,
    pub body: String,
}

impl Seen {
    pub fn dest(&self) -> Option<&RouteDestination> {
        route_destination(&self.parts.extensions)
    }
    pub fn host(&self) -> &str {
        self.dest().map(|d| &*d.host).unwrap_or("")
    }
    pub fn subset(&self) -> Option<&str> {
        self.dest().and_then(|d| d.subset.as_deref())
    }
    pub fn port(&self) -> Option<u16> {
        self.dest().and_then(|d| d.port)
    }
    pub fn policy(&self) -> Option<&RoutePolicy> {
        route_policy(&self.parts.extensions)
    }
    pub fn passthrough(&self) -> bool {
        self.parts.extensions.get::<Passthrough>().is_some()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn path(&self) -> &str {
        self.parts.uri.path_and_query().map_or("/", |p| p.as_str())
    }
}

/// A router over a recording inner service.
#[derive(Clone)]
pub struct Harness {
    pub svc: Svc,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Harness {
    pub fn new(layer: RouteLayer) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let inner = tower::service_fn(move |req: Request<String>| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                log.lock().unwrap().push(Seen { parts, body });
                let mut res = Response::new(MeshBody::inner("upstream".to_string()));
                res.headers_mut().insert("x-upstream", "1".parse().unwrap());
                Ok::<_, Infallible>(res)
            }
        });
        Harness {
            svc: BoxCloneService::new(layer.layer(inner)),
            seen,
        }
    }

    pub fn sidecar(snapshot: &Snapshot) -> Self {
        Harness::new(RouteLayer::from_table(RouteTable::sidecar(snapshot).unwrap()).with_seed(1))
    }

    pub fn with_ctx(snapshot: &Snapshot, ctx: &RouterContext) -> Self {
        Harness::new(RouteLayer::from_table(RouteTable::new(snapshot, ctx).unwrap()).with_seed(1))
    }

    /// Sends `req`; returns the response and what the inner service saw (if it was called).
    pub async fn send(&self, req: Request<String>) -> (Response<MeshBody<String>>, Option<Seen>) {
        let before = self.seen.lock().unwrap().len();
        let res = self.svc.clone().oneshot(req).await.unwrap();
        let seen = self.seen.lock().unwrap();
        let s = (seen.len() > before).then(|| seen[seen.len() - 1].clone());
        (res, s)
    }

    /// `GET path` with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> (Response<MeshBody<String>>, Option<Seen>) {
        self.send(req(host, path).body(String::new()).unwrap())
            .await
    }
}

pub fn req(host: &str, path: &str) -> http::request::Builder {
    Request::builder().uri(path).header("host", host)
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
