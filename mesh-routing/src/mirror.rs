//! Traffic mirroring (`mirror`, `mirrors`, `mirrorPercentage`): fire-and-forget copies of a
//! request to other destinations.
//!
//! The [`RouteLayer`](crate::RouteLayer) decides *whether* a request is mirrored and *where*
//! (sampling each mirror's percentage with its seeded generator) and records it in the
//! [`Mirrors`] request extension. [`MirrorLayer`] does the sending: for each target it
//! clones the request (headers, and the body through [`ShadowBody`]), appends `-shadow` to
//! its host as Envoy does (`reviews:9080` → `reviews-shadow:9080`), sets the target's
//! [`RouteDecision`], and hands a clone of the inner service to a [`Spawn`]er. The main
//! request is never delayed and never fails because of a mirror; mirror responses are
//! dropped.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::{Arc, Mutex};
//! use mesh_core::compile::compile;
//! use mesh_core::ext::route_destination;
//! use mesh_core::load::Loader;
//! use mesh_core::MeshBody;
//! use mesh_routing::{MirrorLayer, RouteLayer, RouteTable};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let mut l = Loader::new();
//! l.add_str("vs.yaml", r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: web}
//! spec:
//!   hosts: [web.example.com]
//!   http:
//!   - route: [{destination: {host: web-v1.example.com}}]
//!     mirror: {host: web-v2.example.com}
//! "#);
//! let table = RouteTable::sidecar(&compile(l.finish().resources)).unwrap();
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(RouteLayer::from_table(table))
//!     // Any executor: here the mirrored request runs on the test's runtime.
//!     .layer(MirrorLayer::new(|task| { tokio::spawn(task); }))
//!     .service_fn(move |req: http::Request<String>| {
//!         let log = log.clone();
//!         async move {
//!             let dest = route_destination(req.extensions()).unwrap().host.to_string();
//!             log.lock().unwrap().push((dest, req.headers()["host"].to_str().unwrap().to_string()));
//!             Ok::<_, Infallible>(http::Response::new(MeshBody::<String>::empty()))
//!         }
//!     });
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let req = http::Request::builder().uri("/").header("host", "web.example.com")
//!     .body(String::new()).unwrap();
//! svc.oneshot(req).await.unwrap();
//! tokio::task::yield_now().await; // let the spawned mirror run
//! let seen = seen.lock().unwrap();
//! assert!(seen.contains(&("web-v1.example.com".into(), "web.example.com".into())));
//! assert!(seen.contains(&("web-v2.example.com".into(), "web.example.com-shadow".into())));
//! # });
//! ```
//!
//! # Ordering
//!
//! Below the retry layer, where one is used (the request path: docs/architecture.md in the
//! repository), above the balancer. A request is mirrored once even when retried: the
//! extension remembers that it fired.
//!
//! # Reads and writes
//!
//! Reads (and fires once) [`Mirrors`]. On each mirrored copy (a new request, with no other
//! extension): writes a [`RouteDecision`] whose destination is the target and whose
//! [`RoutePolicy`] is the route's timeout with retries disabled (Envoy does not retry
//! shadows) and no fault, and adds `-shadow` to the Host.
//!
//! # Differences from Istio/Envoy
//!
//! - The body is copied only when the request body type can be copied ([`ShadowBody`]);
//!   Envoy buffers and copies any body. A body that cannot be copied is not mirrored.
//! - The spawned mirror is not bounded by the route timeout unless a timeout layer sits
//!   below this one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::{Request, Uri};
use mesh_core::ext::{RouteDecision, RouteDestination, RoutePolicy, slots_mut};
use mesh_core::policy::RetryPolicy;
use tower_layer::Layer;
use tower_service::Service;

/// The mirrors chosen for a request, written by the router and read by [`MirrorLayer`].
#[derive(Debug, Clone)]
pub struct Mirrors {
    pub(crate) targets: Arc<[RouteDestination]>,
    pub(crate) policy: RoutePolicy,
    pub(crate) fired: Arc<AtomicBool>,
}

/// Runs a detached task (a mirrored request). Implemented for closures, e.g.
/// `|task| { tokio::spawn(task); }`.
pub trait Spawn: Send + Sync + 'static {
    /// Starts `task` and returns at once.
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>);
}

/// A request body that can be copied for a mirrored request.
///
/// Implemented for the common in-memory bodies. A proxy whose bodies stream implements it
/// for its own body type (returning `None` for a body it cannot copy, which skips the
/// mirror).
pub trait ShadowBody: Sized {
    /// A copy of the body for a mirrored request, or `None` to skip mirroring.
    fn shadow(&self) -> Option<Self>;

    /// A copy of the body for a mirrored request, given the original mutably: a streaming
    /// body can turn itself into a tee that hands each frame to the copy as the original
    /// is read. Defaults to [`shadow`](Self::shadow).
    fn tee(&mut self) -> Option<Self> {
        self.shadow()
    }
}

/// Applies [`Mirror`].
#[derive(Clone)]
pub struct MirrorLayer {
    spawn: Arc<dyn Spawn>,
}

/// Sends the mirrored copies of requests the router marked; see the [module docs](self).
#[derive(Clone)]
pub struct Mirror<S> {
    inner: S,
    spawn: Arc<dyn Spawn>,
}

// === impl Mirrors ===

impl Mirrors {
    /// The destinations this request is mirrored to.
    pub fn targets(&self) -> &[RouteDestination] {
        &self.targets
    }
}

// === impl Spawn ===

impl<F> Spawn for F
where
    F: Fn(Pin<Box<dyn Future<Output = ()> + Send + 'static>>) + Send + Sync + 'static,
{
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) {
        self(task)
    }
}

// === impl ShadowBody ===

impl ShadowBody for String {
    fn shadow(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ShadowBody for Bytes {
    fn shadow(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ShadowBody for Vec<u8> {
    fn shadow(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ShadowBody for () {
    fn shadow(&self) -> Option<Self> {
        Some(())
    }
}

impl<D: Clone> ShadowBody for http_body_util::Full<D> {
    fn shadow(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ShadowBody for http_body_util::Empty<D> {
    fn shadow(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

/// The timeout layer's body (`mesh_core::request_end`): the copy is the wrapped body's,
/// and tells no one of its end (the route timeout waits for the client's body only).
impl<B: ShadowBody> ShadowBody for mesh_core::request_end::EndBody<B> {
    fn shadow(&self) -> Option<Self> {
        self.get_ref().shadow().map(Self::plain)
    }

    fn tee(&mut self) -> Option<Self> {
        self.get_mut().tee().map(Self::plain)
    }
}

/// The retry layer's body (`mesh_core::replay`): a mirror copies the client's body from its
/// beginning, through the wrapped body's own [`ShadowBody`]; a body already being read (a
/// retry's copy) is not mirrored again.
impl<B: ShadowBody> ShadowBody for mesh_core::replay::ReplayBody<B> {
    fn shadow(&self) -> Option<Self> {
        if self.is_empty_body() {
            return Some(Self::empty());
        }
        None
    }

    fn tee(&mut self) -> Option<Self> {
        if self.is_empty_body() {
            return Some(Self::empty());
        }
        self.original_mut()?.tee().map(Self::plain)
    }
}

// === impl MirrorLayer ===

impl MirrorLayer {
    /// A layer starting mirrored requests with `spawn`.
    pub fn new(spawn: impl Spawn) -> Self {
        MirrorLayer {
            spawn: Arc::new(spawn),
        }
    }
}

impl std::fmt::Debug for MirrorLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror {
            inner,
            spawn: self.spawn.clone(),
        }
    }
}

// === impl Mirror ===

impl<S> Mirror<S> {
    /// Mirrors marked requests to clones of `inner`, started by `spawn`.
    pub fn new(inner: S, spawn: impl Spawn) -> Self {
        MirrorLayer::new(spawn).layer(inner)
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Mirror<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Envoy's `shadowAppendedHost`: `-shadow` before the port.
pub(crate) fn shadow_host(host: &str) -> String {
    match mesh_core::authority::split_port(host) {
        (h, Some(p)) => format!("{h}-shadow:{p}"),
        (h, None) => format!("{h}-shadow"),
    }
}

fn shadow_request<B>(
    req: &Request<B>,
    body: B,
    target: &RouteDestination,
    policy: &RoutePolicy,
) -> Request<B> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    let mut uri = req.uri().clone();
    if let Some(a) = req.uri().authority() {
        let mut parts = uri.clone().into_parts();
        parts.authority = http::uri::Authority::try_from(shadow_host(a.as_str())).ok();
        if let Ok(u) = Uri::from_parts(parts) {
            uri = u;
        }
    }
    *copy.uri_mut() = uri;
    if let Some(h) = req.headers().get(HOST).and_then(|h| h.to_str().ok())
        && let Ok(v) = HeaderValue::from_str(&shadow_host(h))
    {
        copy.headers_mut().insert(HOST, v);
    }
    slots_mut(copy.extensions_mut()).decision = Some(RouteDecision {
        dest: target.clone(),
        policy: Arc::new(RoutePolicy {
            route_name: policy.route_name.clone(),
            timeout: policy.timeout,
            retries: Some(Arc::new(RetryPolicy {
                attempts: 0,
                ..RetryPolicy::default()
            })),
            fault: None,
            // a shadow request is sent by the router, below the filters: never limited
            rate_limit: None,
        }),
    });
    copy
}

impl<S, B> Service<Request<B>> for Mirror<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    S::Response: Send,
    B: ShadowBody + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(m) = req.extensions().get::<Mirrors>().cloned()
            && !m.fired.swap(true, Ordering::AcqRel)
        {
            for target in m.targets.iter() {
                let Some(body) = req.body_mut().tee() else {
                    continue;
                };
                let copy = shadow_request(&req, body, target, &m.policy);
                let mut svc = self.inner.clone();
                self.spawn.spawn(Box::pin(async move {
                    if std::future::poll_fn(|cx| svc.poll_ready(cx)).await.is_ok() {
                        let _ = svc.call(copy).await;
                    }
                }));
            }
        }
        self.inner.call(req)
    }
}

mesh_core::accessors!(Mirror);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadow_request_has_no_stream_info_of_the_original() {
        // telemetry's per-request record belongs to the original: a mirror's picks must not
        // overwrite the original's upstream (mesh_core::stream_info)
        let mut req = Request::new(());
        mesh_core::ext::slots_mut(req.extensions_mut()).info =
            Some(mesh_core::stream_info::StreamInfo::new());
        let target = RouteDestination {
            host: "shadow".into(),
            subset: None,
            port: None,
        };
        let copy = shadow_request(&req, (), &target, &RoutePolicy::default());
        assert!(mesh_core::ext::stream_info(copy.extensions()).is_none());
        assert!(mesh_core::ext::route_decision(copy.extensions()).is_some());
    }

    #[test]
    fn shadow_host_goes_before_the_port() {
        // Envoy shadowAppendedHost: "cluster1:8000" -> "cluster1-shadow:8000".
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
        // mesh_core::authority: a bare IPv6 literal has no port (RFC 3986 §3.2.2), an empty
        // port is no port (§3.2.3), a port that is not a number leaves the host whole
        assert_eq!(shadow_host("fe80::1:80"), "fe80::1:80-shadow");
        assert_eq!(shadow_host("reviews:"), "reviews-shadow");
        assert_eq!(shadow_host("reviews:http"), "reviews:http-shadow");
    }

    #[test]
    fn a_watched_body_s_copy_is_the_inner_copy_and_tells_no_one() {
        use mesh_core::request_end::{EndBody, RequestEnd};
        let end = RequestEnd::new();
        let mut watched = EndBody::new(Bytes::from_static(b"order"), end.clone());
        let copy = watched.tee().expect("a copy");
        assert!(!copy.is_watched());
        assert_eq!(copy.get_ref(), "order");
        let shadow = watched.shadow().expect("a copy");
        assert_eq!(shadow.into_plain().ok(), Some(Bytes::from_static(b"order")));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(end.poll_ended(&mut cx).is_pending(), "copies do not end it");
        drop(watched);
        assert!(end.poll_ended(&mut cx).is_ready());
    }
}
