//! The routing layer: matches each request against the current [`RouteTable`] and applies the
//! chosen `HTTPRoute`.
//!
//! # When to use
//!
//! First in the per-request stack, after authentication: it decides where a request goes,
//! and the layers below (fault, timeout, retry, mirror, balancer) act on what it decided.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use mesh_core::compile::compile;
//! use mesh_core::ext::route_destination;
//! use mesh_core::load::Loader;
//! use mesh_core::MeshBody;
//! use mesh_routing::{RouteLayer, RouteTable, RouteTableHandle};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut l = Loader::new();
//! l.add_str("mesh.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews.default.svc.cluster.local]
//!   location: MESH_INTERNAL
//!   resolution: STATIC
//!   ports: [{number: 9080, name: http, protocol: HTTP}]
//!   endpoints: [{address: 10.0.0.1}]
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - match: [{headers: {end-user: {exact: jason}}}]
//!     route: [{destination: {host: reviews, subset: v2}}]
//!   - route: [{destination: {host: reviews, subset: v1}}]
//! "#);
//! let snapshot = compile(l.finish().resources);
//! let handle = RouteTableHandle::new(RouteTable::sidecar(&snapshot).unwrap());
//!
//! // The inner service sees the chosen destination as a request extension.
//! let svc = ServiceBuilder::new()
//!     .layer(RouteLayer::new(handle.clone()).with_seed(7))
//!     .service_fn(|req: http::Request<String>| async move {
//!         let dest = route_destination(req.extensions()).cloned().unwrap();
//!         let body = MeshBody::<String>::inner(dest.subset.as_deref().unwrap_or("-").to_string());
//!         Ok::<_, Infallible>(http::Response::new(body))
//!     });
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let req = http::Request::builder()
//!     .uri("/reviews/1")
//!     .header("host", "reviews:9080")
//!     .header("end-user", "jason")
//!     .body(String::new())
//!     .unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert!(matches!(res.body(), MeshBody::Inner(b) if b == "v2"));
//!
//! let req = http::Request::builder().uri("/").header("host", "nowhere.default.svc.cluster.local:80")
//!     .body(String::new()).unwrap();
//! // Unknown hosts pass through under the default ALLOW_ANY policy.
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # });
//! ```
//!
//! # Ordering
//!
//! ```text
//! request ─► RouteLayer ─► fault ─► timeout ─► retry ─► MirrorLayer ─► balancer ─► connector
//! ```
//!
//! The router answers by itself for redirects, direct responses, CORS preflights and
//! requests it cannot route; everything else goes down the stack.
//!
//! # Reads and writes
//!
//! - Reads the request's [`SourceWorkload`] extension (else the [`RouterContext`]'s
//!   workload) for `sourceLabels` / `sourceNamespace`, and the
//!   [`JwtClaims`](mesh_core::ext::JwtClaims) extension for `@request.auth.claims.*` matches.
//! - Routes by the target's authority when the URI has one (absolute-form, HTTP/2's
//!   `:authority`), else by `Host` (RFC 9112 §3.2.2); a rewritten authority is written to
//!   both. (`mesh-proxy`'s engine makes the two agree before the router runs.)
//! - Writes one [`RouteDecision`] on forwarded requests: the [`RouteDestination`] (host,
//!   subset, port) and the route's [`RoutePolicy`] (timeout, retries, fault; compiled once
//!   per route and match block, shared). Read them with [`route_destination`] and
//!   [`route_policy`]. On passthrough requests, a standalone [`RouteDestination`] and
//!   [`Passthrough`]. [`Mirrors`] when the route mirrors the request.
//! - Local answers carry [`ResponseFlags`] (`NR` for no route: 404, or 502 under
//!   `REGISTRY_ONLY`) in the extension and the `x-mesh-response-flags` header.
//! - Applies the route's (and the chosen destination's) header operations to the request and
//!   the response, `rewrite`, and CORS response headers.
//!
//! # Differences from Istio/Envoy
//!
//! - None in route precedence: a virtual host with more than 8 routes is matched through a
//!   candidate index on its routes' literal path prefixes (`uri.exact`, `uri.prefix`, the
//!   literal start of `uri.regex`), which only skips routes that cannot match the path; the
//!   first matching route in configuration order still wins, as in Envoy.
//! - One table serves every port: the port comes from the Host header (or the service's only
//!   port, else 80), where Istio builds one route configuration per listener port.
//! - `headers` values are Envoy format strings, as Envoy reads them, but only the operators
//!   whose data the router has are evaluated (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(h)%`,
//!   `%PROTOCOL%`, `%START_TIME%`, `%HOSTNAME%`, `%ENVIRONMENT(v)%`, …); the other operators
//!   Envoy knows (upstream host, TLS peer, metadata) format to nothing, and the value is then
//!   not added. Response values are computed from the request. Unknown operators refuse the
//!   table, as Envoy refuses the route configuration.
//! - With several weighted destinations, destination-level header `set`s win over the
//!   route-level ones (as Istio arranges it for a single destination); Envoy applies the
//!   route's last for weighted clusters.
//! - Header matches on JWT claims (`@request.auth.claims.a.b`, `[a][b]`) read the
//!   [`JwtClaims`](mesh_core::ext::JwtClaims) extension that the JWT layer (`mesh-tls`)
//!   writes for a validated token: a string claim, or a list holding one, matches (Istio's
//!   `MetadataMatcherForJWTClaims`); without a validated token they do not match
//!   (`withoutHeaders` on a claim then does). On a sidecar's outbound side no JWT is
//!   validated, so they never match there, as with Istio's sidecars.
//! - Gateways: the routes of every VirtualService naming the same host are concatenated in
//!   source order; with [`RouterContext::servers`](crate::RouterContext::servers) set, a VirtualService host is served
//!   only where it meets a host of a server of a gateway it is bound to (Istio's
//!   `pickMatchingGatewayHosts`; the narrower name wins); the Host's port is ignored (as
//!   Istio's `host:*` domains do).
//! - On a sidecar, when several VirtualServices name the same host, the first in source order
//!   wins (Istio picks the oldest by creation time).
//!
//! [`RouterContext`]: crate::RouterContext
//! [`SourceWorkload`]: mesh_core::ext::SourceWorkload
//! [`RouteDestination`]: mesh_core::ext::RouteDestination
//! [`RoutePolicy`]: mesh_core::ext::RoutePolicy
//! [`RouteDecision`]: mesh_core::ext::RouteDecision
//! [`route_destination`]: mesh_core::ext::route_destination
//! [`route_policy`]: mesh_core::ext::route_policy
//! [`Passthrough`]: mesh_core::ext::Passthrough
//! [`ResponseFlags`]: mesh_core::ResponseFlags

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::task::{Context, Poll};

use http::header::{HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use mesh_core::ResponseFlags;
use mesh_core::authority::split_port;
use mesh_core::body::ReplyBody;
use mesh_core::ext::stream_info;
use mesh_core::ext::{
    Passthrough, RouteDecision, RouteDestination, RoutePolicy, SourceWorkload, local_reply,
    slots_mut,
};
use mesh_core::rng::Rng;
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::action::{CorsDecision, Formatted};
use crate::mirror::Mirrors;
use crate::table::{
    Action, CompiledRoute, Forward, RouteTable, RouteTableHandle, Selected, TableCache, view_of,
};

/// Applies [`Route`]: routes requests on the table behind a [`RouteTableHandle`].
///
/// Cheap to clone (two `Arc`s); each service it makes has its own random number generator
/// for weighted choices and mirror sampling.
#[derive(Clone, Debug)]
pub struct RouteLayer {
    handle: RouteTableHandle,
    seed: Option<u64>,
    counter: Arc<AtomicU64>,
}

/// Routes requests by the current [`RouteTable`]; see the [module docs](self).
#[derive(Debug)]
pub struct Route<S> {
    inner: S,
    /// The handle's table, cached: a pointer comparison per request.
    table: TableCache,
    rng: Rng,
    seed: Option<u64>,
    counter: Arc<AtomicU64>,
}

/// Response future of [`Route`].
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F, B> {
    #[pin]
    state: State<F, B>,
}

#[pin_project(project = StateProj)]
#[derive(Debug)]
enum State<F, B> {
    Inner {
        #[pin]
        fut: F,
        /// Boxed: most routes have none, and every layer above moves this future.
        post: Option<Box<PostOps>>,
    },
    Ready {
        res: Option<Response<B>>,
    },
}

/// What to do to the response of a forwarded request.
#[derive(Debug)]
struct PostOps {
    route: Arc<CompiledRoute>,
    dest: usize,
    cors_origin: Option<HeaderValue>,
    /// The formatted response values (empty unless some are formatted).
    route_values: Formatted,
    dest_values: Formatted,
}

/// What the router decided, computed while the request is borrowed; borrows the table.
enum Plan<'t, B> {
    Local(Response<B>),
    Forward {
        route: &'t Arc<CompiledRoute>,
        fwd: &'t Forward,
        dest: usize,
        port: Option<u16>,
        new_path: Option<String>,
        cors_origin: Option<HeaderValue>,
        mirrors: Option<Mirrors>,
        policy: &'t Arc<RoutePolicy>,
    },
    Passthrough {
        host: Arc<str>,
        port: Option<u16>,
    },
}

// === impl RouteLayer ===

impl RouteLayer {
    /// A layer routing on `handle`'s table, with a random seed.
    pub fn new(handle: RouteTableHandle) -> Self {
        RouteLayer {
            handle,
            seed: None,
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A layer over a fixed table (no reloads).
    pub fn from_table(table: RouteTable) -> Self {
        RouteLayer::new(RouteTableHandle::new(table))
    }

    /// Seeds the random choices (weights, mirror percentages) for reproducible runs: the
    /// n-th service made from this layer (or cloned from one) draws from a generator seeded
    /// by `seed` and n (`mesh_core::rng::seed`).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The handle whose table this layer routes on.
    pub fn handle(&self) -> &RouteTableHandle {
        &self.handle
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            table: self.handle.cache(),
            rng: Rng::nth(self.seed, &self.counter),
            seed: self.seed,
            counter: self.counter.clone(),
        }
    }
}

// === impl Route ===

impl<S> Route<S> {
    /// Routes requests to `inner` by `handle`'s table.
    pub fn new(inner: S, handle: RouteTableHandle) -> Self {
        RouteLayer::new(handle).layer(inner)
    }
}

impl<S: Clone> Clone for Route<S> {
    fn clone(&self) -> Self {
        Route {
            inner: self.inner.clone(),
            table: self.table.clone(),
            rng: Rng::nth(self.seed, &self.counter),
            seed: self.seed,
            counter: self.counter.clone(),
        }
    }
}

fn plan<'t, B, R: ReplyBody>(
    table: &'t RouteTable,
    req: &Request<B>,
    rng: &mut Rng,
) -> Plan<'t, R> {
    let source = table.source(req.extensions().get::<SourceWorkload>());
    let mut view = view_of(req, source);
    let (route, block, port) = match table.select(&mut view) {
        Selected::Route { route, block, port } => (route, block, port),
        Selected::NoRoute => {
            return Plan::Local(local_reply(
                StatusCode::NOT_FOUND,
                ResponseFlags::NO_ROUTE,
                "",
            ));
        }
        Selected::BlackHole => {
            return Plan::Local(local_reply(
                StatusCode::BAD_GATEWAY,
                ResponseFlags::NO_ROUTE,
                "",
            ));
        }
        Selected::Passthrough { port } => {
            let host = split_port(view.authority).0;
            return Plan::Passthrough {
                host: host.into(),
                port,
            };
        }
    };
    let matched_uri = block
        .and_then(|i| route.blocks.get(i))
        .and_then(|b| b.uri.as_ref());
    let cors_origin = match route.cors.as_ref().map(|c| c.decide(&view)) {
        None | Some(CorsDecision::None) => None,
        Some(CorsDecision::Simple(origin)) => Some(origin),
        Some(CorsDecision::Answer(res)) => {
            let (parts, ()) = res.into_parts();
            let mut res = Response::from_parts(parts, R::local(bytes::Bytes::new()));
            // (the CORS filter's own answer: no upstream's, no upstream service time; logged
            // with Envoy's details)
            let ext = res.extensions_mut();
            ext.insert(mesh_core::ext::LocalReplyText(bytes::Bytes::new()));
            ext.insert(mesh_core::ext::ResponseCodeDetails::cors_response());
            return Plan::Local(res);
        }
    };
    let mut local = match &route.action {
        Action::Redirect(r) => r.respond(&view, matched_uri),
        Action::Direct(d) => d.respond(),
        Action::Forward(fwd) => {
            let dest = fwd.choose(req.headers(), rng);
            let new_path = fwd.rewrite.as_ref().map(|rw| rw.apply(&view, matched_uri));
            let mirrors = (!route.mirrors.is_empty())
                .then(|| {
                    let targets: Vec<RouteDestination> = route
                        .mirrors
                        .iter()
                        .filter(|m| m.fraction >= 1.0 || rng.next_f64() < m.fraction)
                        .map(|m| fill_port(&m.dest, port))
                        .collect();
                    (!targets.is_empty()).then(|| Mirrors {
                        targets: targets.into(),
                        policy: (*route.policy).clone(),
                        fired: Arc::new(AtomicBool::new(false)),
                    })
                })
                .flatten();
            let policy = block
                .and_then(|i| route.block_policies.get(i))
                .unwrap_or(&route.policy);
            return Plan::Forward {
                route,
                fwd,
                dest,
                port,
                new_path,
                cors_origin,
                mirrors,
                policy,
            };
        }
    };
    let values = route.headers.response.format(req);
    route.headers.response.apply(local.headers_mut(), values);
    if let (Some(c), Some(o)) = (&route.cors, &cors_origin) {
        c.on_response(o, local.headers_mut());
    }
    Plan::Local(local)
}

fn fill_port(d: &RouteDestination, port: Option<u16>) -> RouteDestination {
    RouteDestination {
        host: d.host.clone(),
        subset: d.subset.clone(),
        port: d.port.or(port),
    }
}

/// Sets the request's authority (Host header, and the URI's authority when it has one).
fn set_authority<B>(req: &mut Request<B>, value: &HeaderValue) {
    req.headers_mut().insert(HOST, value.clone());
    if req.uri().authority().is_some()
        && let Ok(a) = Authority::try_from(value.as_bytes())
    {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(a);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

fn set_path<B>(req: &mut Request<B>, path: &str) {
    let Ok(pq) = PathAndQuery::try_from(path) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

impl<S, B, R> Service<Request<B>> for Route<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: ReplyBody,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let table = self.table.load();
        let post = match plan::<B, R>(table, &req, &mut self.rng) {
            Plan::Local(res) => {
                return ResponseFuture {
                    state: State::Ready { res: Some(res) },
                };
            }
            Plan::Passthrough { host, port } => {
                let dest = RouteDestination {
                    host,
                    subset: None,
                    port,
                };
                let ext = req.extensions_mut();
                if let Some(info) = stream_info(ext) {
                    info.set_destination(&dest, true);
                }
                ext.insert(dest);
                ext.insert(Passthrough);
                None
            }
            Plan::Forward {
                route,
                fwd,
                dest,
                port,
                new_path,
                cors_origin,
                mirrors,
                policy,
            } => {
                let chosen = &fwd.dests[dest];
                if let Some(p) = &new_path {
                    set_path(&mut req, p);
                }
                route.headers.request.apply_request(&mut req);
                chosen.headers.request.apply_request(&mut req);
                if let Some(a) = fwd.authority.as_ref().or(chosen.headers.authority.as_ref()) {
                    set_authority(&mut req, a);
                }
                let ext = req.extensions_mut();
                let decision = RouteDecision {
                    dest: fill_port(&chosen.dest, port),
                    policy: policy.clone(),
                };
                if let Some(info) = stream_info(ext) {
                    info.set_route(&decision);
                }
                slots_mut(ext).decision = Some(decision);
                if let Some(m) = mirrors {
                    ext.insert(m);
                }
                let needs_post = cors_origin.is_some()
                    || !route.headers.response.is_empty()
                    || !chosen.headers.response.is_empty();
                // response values that format request data are computed now
                needs_post.then(|| {
                    Box::new(PostOps {
                        route_values: route.headers.response.format(&req),
                        dest_values: chosen.headers.response.format(&req),
                        route: route.clone(),
                        dest,
                        cors_origin,
                    })
                })
            }
        };
        ResponseFuture {
            state: State::Inner {
                fut: self.inner.call(req),
                post,
            },
        }
    }
}

// === impl ResponseFuture ===

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Ready { res } => match res.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => panic!("ResponseFuture polled after completion"),
            },
            StateProj::Inner { fut, post } => {
                let mut res = match fut.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(res)) => res,
                };
                if let Some(p) = post.take() {
                    let headers = res.headers_mut();
                    p.route.headers.response.apply(headers, p.route_values);
                    if let Action::Forward(fwd) = &p.route.action
                        && let Some(d) = fwd.dests.get(p.dest)
                    {
                        d.headers.response.apply(headers, p.dest_values);
                    }
                    if let (Some(c), Some(o)) = (&p.route.cors, &p.cors_origin) {
                        c.on_response(o, headers);
                    }
                }
                Poll::Ready(Ok(res))
            }
        }
    }
}

mesh_core::accessors!(Route);
