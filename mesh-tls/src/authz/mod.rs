//! AuthorizationPolicy: Istio's access control on a workload's inbound requests, as a tower
//! layer (Envoy's `envoy.filters.http.rbac` and `ext_authz` as istiod configures them).
//!
//! [`Authorizer::compile`] selects the policies that apply to a workload (Istio's selection:
//! the root namespace's policies without selector apply mesh-wide, the workload namespace's
//! without selector namespace-wide, `selector.matchLabels` to matching workloads; policies
//! with `targetRef(s)` attach to gateways and waypoints, never to a sidecar, and are skipped)
//! and compiles them once per configuration load. [`AuthzLayer`] decides on every request
//! in Istio's order (`pilot/pkg/security/authz/builder`):
//!
//! 1. `CUSTOM`: a matching policy asks its provider ([`ExternalAuthorizer`]); a denial is
//!    `403` with flag `UAEX`. Without an authorizer, `CUSTOM` policies are refused at load.
//! 2. `DENY`: any matching policy denies.
//! 3. `ALLOW`: without `ALLOW` policies the request is allowed; with some, one must match.
//! 4. `AUDIT` policies never change the decision: the first that matches is recorded as
//!    [`Audited`] in the request's and the response's extensions.
//!
//! A denial is `403 RBAC: access denied` with flag `RBAC` (as Envoy's RBAC filter answers);
//! the inner service never sees the request.
//!
//! Matching, as Istio's `model.go` and `generator.go`: a rule matches when any `from`, any
//! `to` and every `when` matches; in a `source` or `operation` the fields are ANDed, the
//! values of a field ORed, and a `not*` field matches when none of its values does.
//! Strings use Istio's `*` rules (exact, `prefix*`, `*suffix`, `*` = present); `principals`
//! are `<trust-domain>/ns/<ns>/sa/<sa>` of the mTLS peer, `namespaces` its namespace,
//! `trustDomains` its trust domain, `serviceAccounts` `<ns>/<sa>` (or `<sa>` of the policy's
//! namespace); `ipBlocks` and `source.ip` the direct peer's address;
//! `remoteIpBlocks` and `remote.ip` the original client's, which is the direct peer's here
//! (no `x-forwarded-for` is trusted: Istio's default `numTrustedProxies: 0`); `hosts` the
//! whole `Host` header, case-insensitively (port included: write `example.com` and
//! `example.com:*`, as Istio's security best practices say);
//! `ports` and `destination.port` the [`DestinationAddr`](mesh_core::ext::DestinationAddr);
//! `paths` the path without query, after normalisation ([`normalize_path`], Istio's default
//! `BASE`; the normalised path is also what the inner service receives, whether policies
//! apply or not, as Envoy normalises every request), with Istio's `*`
//! rules or `{*}`/`{**}` templates. `when` keys: `request.headers[…]`, `source.ip`,
//! `remote.ip`, `source.namespace`, `source.principal`, `source.serviceAccount`,
//! `source.trustDomain`, `destination.ip`, `destination.port`, `connection.sni`, and the
//! JWT's (the [`RequestAuth`](crate::jwt::RequestAuth) that [`crate::jwt`] validated):
//! `requestPrincipals`/`notRequestPrincipals` (`<iss>/<sub>`, with the `*` rules; without
//! a token there is no request principal), `request.auth.principal`,
//! `request.auth.audiences`, `request.auth.presenter` (`azp`) and
//! `request.auth.claims[name]` (nested: `[a][b]`; a list-valued claim matches when any
//! element does, as Istio's `ListMatcher`).
//!
//! Not enforced, so refused (security fails closed): any other `when` key
//! (`experimental.envoy.filters.*`).
//!
//! Reads [`PeerIdentity`](mesh_core::ext::PeerIdentity),
//! [`RequestAuth`](crate::jwt::RequestAuth),
//! [`ClientAddr`](mesh_core::ext::ClientAddr), [`DestinationAddr`](mesh_core::ext::DestinationAddr)
//! and [`ConnectionSni`](mesh_core::ext::ConnectionSni); writes [`Audited`] and, on a
//! denial, the response's [`ResponseFlags`].
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use mesh_core::ext::PeerIdentity;
//! use mesh_core::identity::SpiffeId;
//! use mesh_core::model::security::AuthorizationPolicy;
//! use mesh_core::selector::Labels;
//! use mesh_tls::authz::{Authorizer, AuthzLayer, PolicyRef, Workload};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // istio.io "HTTP Traffic": only `sleep` may GET
//! let spec: AuthorizationPolicy = serde_json::from_value(serde_json::json!({
//!     "action": "ALLOW",
//!     "rules": [{
//!         "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
//!         "to": [{"operation": {"methods": ["GET"]}}]
//!     }]
//! })).unwrap();
//! let labels = Labels::default();
//! let workload = Workload { root_namespace: "istio-system", namespace: "default", labels: &labels };
//! let policies = [PolicyRef { namespace: "default", name: "get-only", spec: &spec }];
//! let authz = Authorizer::compile(&policies, &workload, None).unwrap();
//!
//! let app = ServiceBuilder::new()
//!     .layer(AuthzLayer::new(authz))
//!     .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hi")))) });
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let mut req = Request::get("/ratings").body(()).unwrap();
//! req.extensions_mut().insert(PeerIdentity::new(SpiffeId::new("cluster.local", "default", "sleep")));
//! assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
//!
//! let denied = app.oneshot(Request::post("/ratings").body(()).unwrap()).await.unwrap();
//! assert_eq!(denied.status(), 403);
//! assert_eq!(denied.headers()["x-mesh-response-flags"], "RBAC");
//! # });
//! ```

mod matcher;
mod policy;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode, Uri};
use mesh_core::body::ReplyBody;
use mesh_core::ext::local_reply;
use mesh_core::flags::ResponseFlags;
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

pub use matcher::normalize_path;
pub use policy::{
    Attributes, Authorizer, AuthzError, Decision, ExternalAuthorizer, PolicyRef, Workload,
};

/// The body of a denial, as Envoy's RBAC filter writes it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// The `AUDIT` policy (`<ns>/<name>`) that matched a request.
///
/// Written by [`Authz`] into the request's extensions (for the layers below) and the
/// response's (for telemetry and access logs); read by nothing in this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audited(pub Arc<str>);

/// Applies AuthorizationPolicies; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    policies: Arc<ArcSwap<Authorizer>>,
}

/// The service of [`AuthzLayer`].
#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    policies: Arc<ArcSwap<Authorizer>>,
}

mesh_core::accessors!(Authz);

/// The future of [`Authz`].
#[pin_project(project = Proj)]
#[derive(Debug)]
pub enum ResponseFuture<F, R> {
    /// The inner service's answer.
    Inner {
        /// Its future.
        #[pin]
        fut: F,
        /// The `AUDIT` policy to record on the response.
        audit: Option<Audited>,
    },
    /// The layer's own answer (a denial).
    Denied {
        /// The response, until it is taken.
        res: Option<Response<R>>,
    },
}

// === impl AuthzLayer ===

impl AuthzLayer {
    /// A layer that applies `authorizer`.
    pub fn new(authorizer: Authorizer) -> Self {
        AuthzLayer::shared(Arc::new(ArcSwap::from_pointee(authorizer)))
    }

    /// A layer that applies whatever `policies` holds when a request comes: a reload stores
    /// new policies there and every service of the layer applies them to its next request.
    pub fn shared(policies: Arc<ArcSwap<Authorizer>>) -> Self {
        AuthzLayer { policies }
    }

    /// Replaces the policies of every service of this layer (a configuration reload).
    pub fn store(&self, authorizer: Authorizer) {
        self.policies.store(Arc::new(authorizer));
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            policies: self.policies.clone(),
        }
    }
}

// === impl Authz ===

impl<S> Authz<S> {
    /// `inner`, behind `authorizer`.
    pub fn new(inner: S, authorizer: Authorizer) -> Self {
        AuthzLayer::new(authorizer).layer(inner)
    }
}

impl<S, B, R> Service<Request<B>> for Authz<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: ReplyBody,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Envoy normalises the path before its filters run (policies or not), and forwards
        // the normalised one
        if let Some(pq) = req.uri().path_and_query().map(|p| p.as_str())
            && let Some(norm) = normalize_path(pq)
        {
            let mut parts = req.uri().clone().into_parts();
            match norm.parse() {
                Ok(p) => parts.path_and_query = Some(p),
                Err(_) => {
                    return denied(
                        StatusCode::BAD_REQUEST,
                        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                        "",
                    );
                }
            }
            match Uri::from_parts(parts) {
                Ok(u) => *req.uri_mut() = u,
                Err(_) => {
                    return denied(
                        StatusCode::BAD_REQUEST,
                        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                        "",
                    );
                }
            }
        }
        let policies = self.policies.load();
        if policies.is_empty() {
            return ResponseFuture::Inner {
                fut: self.inner.call(req),
                audit: None,
            };
        }
        let decision = policies.decide(&Attributes::of(&req));
        drop(policies);
        if !decision.allowed {
            return if decision.external {
                denied(
                    StatusCode::FORBIDDEN,
                    ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
                    "",
                )
            } else {
                let mut res = local_reply(
                    StatusCode::FORBIDDEN,
                    ResponseFlags::RBAC_DENIED,
                    DENIED_BODY,
                );
                // the DENY rule that matched, for the access log (Envoy's RBAC details)
                if let Some(d) = decision.details {
                    res.extensions_mut()
                        .insert(mesh_core::ext::ResponseCodeDetails(d));
                }
                ResponseFuture::Denied { res: Some(res) }
            };
        }
        let audit = decision.audit.map(Audited);
        if let Some(a) = &audit {
            req.extensions_mut().insert(a.clone());
        }
        ResponseFuture::Inner {
            fut: self.inner.call(req),
            audit,
        }
    }
}

fn denied<F, R: ReplyBody>(
    status: StatusCode,
    flags: ResponseFlags,
    body: &'static str,
) -> ResponseFuture<F, R> {
    ResponseFuture::Denied {
        res: Some(local_reply(status, flags, body)),
    }
}

// === impl ResponseFuture ===

impl<F, R, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { fut, audit } => {
                let mut res = std::task::ready!(fut.poll(cx))?;
                if let Some(a) = audit.take() {
                    res.extensions_mut().insert(a);
                }
                Poll::Ready(Ok(res))
            }
            Proj::Denied { res } => match res.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
