//! RequestAuthentication: Istio's JWT validation on a workload's inbound requests, as a
//! tower layer (Envoy's `envoy.filters.http.jwt_authn` as istiod configures it in
//! `pilot/pkg/security/authn/policy_applier.go`).
//!
//! [`Authenticator::compile`] selects the RequestAuthentications that apply to a workload
//! (as AuthorizationPolicy's: root namespace without selector mesh-wide, the workload's
//! namespace without selector namespace-wide, `selector.matchLabels` matching workloads,
//! `targetRef(s)` skipped as they attach to gateways and waypoints) and compiles their
//! `jwtRules` once per configuration load. [`JwtAuthnLayer`] then checks every request:
//!
//! - **no token** (none at any rule's locations): the request goes on without a request
//!   principal (Istio's `allow_missing`); an AuthorizationPolicy with
//!   `requestPrincipals: ["*"]` is what requires one;
//! - **tokens**: each must be valid for the rule of its issuer (found at a location of that
//!   rule), or the request is refused with Envoy's answer: `401` and the status text as
//!   body (`Jwt is expired`, `Jwt verification fails`, `Jwt issuer is not configured`,
//!   `Jwks doesn't have key to match kid or alg from Jwt`, …; [`JwtStatus`]), `403` for
//!   `Audiences in Jwt are not allowed` (Envoy's `filter.cc`), with
//!   `www-authenticate: Bearer realm="<url>", error="invalid_token"`.
//!
//! Checks in `jwt_verify_lib`'s order: the token's form, its issuer, `nbf`/`exp` with
//! Envoy's 60 s clock skew, the audiences (any of the rule's; none configured: any), then
//! the signature with a key of the rule's JWKS whose `kid` and `alg` fit. Algorithms:
//! RS256/384/512, PS256/384/512, ES256, ES384, EdDSA (Ed25519), with `jsonwebtoken` on
//! ring; `none` and the HMAC algorithms are refused (`Jwt header [alg] is not supported`).
//!
//! Token locations: `fromHeaders` (name and prefix), `fromParams`, `fromCookies`; with none
//! of them, Envoy's defaults `Authorization: Bearer <token>` and `?access_token=`. Keys:
//! inline `jwks`, or `jwksUri`: `file://` (read at load, so `validate` checks it, and
//! re-read at every refresh) or `http://`/`https://` (fetched by mesh-proxy off the request
//! path, refreshed every 20 minutes as Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`; until
//! the first fetch succeeds, a token of that issuer is refused with `Jwks remote fetch is
//! failed`). Refused at load (security fails closed): another scheme, a rule without
//! issuer, one without keys (OpenID discovery) and `spaceDelimitedClaims`.
//!
//! On success: the client's own `outputPayloadToHeader`/`outputClaimToHeaders` headers are
//! removed, then written from the token (the payload base64url as received; string,
//! number and boolean claims), and the token's header is removed unless
//! `forwardOriginalToken` (a token in a query parameter or a cookie stays, as Envoy leaves
//! it). The validated identity is a [`RequestAuth`] in the request's extensions: the
//! principal `<iss>/<sub>` and the claims, read by [`crate::authz`] for
//! `requestPrincipals`, `notRequestPrincipals` and the `request.auth.*` conditions.
//!
//! A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is let
//! through unchecked, as Istio configures Envoy (`bypass_cors_preflight: true`, in
//! `convertToEnvoyJwtConfig`).
//!
//! Reads the request's headers and URI; writes [`RequestAuth`] and, for the router's JWT claim
//! routes, [`mesh_core::ext::JwtClaims`].
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use mesh_core::model::security::RequestAuthentication;
//! use mesh_core::selector::Labels;
//! use mesh_tls::jwt::{Authenticator, JwtAuthnLayer, JwtWorkload, RequestAuthRef};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let spec: RequestAuthentication = serde_json::from_value(serde_json::json!({
//!     "jwtRules": [{
//!         "issuer": "testing@secure.istio.io",
//!         "jwks": r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#
//!     }]
//! })).unwrap();
//! let labels = Labels::default();
//! let workload = JwtWorkload { root_namespace: "istio-system", namespace: "foo", labels: &labels };
//! let policies = [RequestAuthRef { namespace: "foo", name: "jwt-example", spec: &spec }];
//! let jwt = Authenticator::compile(&policies, &workload).unwrap();
//!
//! let app = ServiceBuilder::new()
//!     .layer(JwtAuthnLayer::new(jwt))
//!     .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hi")))) });
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // no token: allowed through (an AuthorizationPolicy decides whether one is required)
//! assert_eq!(app.clone().oneshot(Request::get("/").body(()).unwrap()).await.unwrap().status(), 200);
//! // a malformed token: refused
//! let bad = Request::get("/").header("authorization", "Bearer not-a-jwt").body(()).unwrap();
//! assert_eq!(app.oneshot(bad).await.unwrap().status(), 401);
//! # });
//! ```

mod authn;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, StatusCode};
use mesh_core::body::ReplyBody;
use mesh_core::ext::local_reply;
use mesh_core::flags::ResponseFlags;
use pin_project::pin_project;
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

pub use authn::{
    Authenticator, CLOCK_SKEW_SECS, DEFAULT_FETCH_TIMEOUT, JwtError, JwtWorkload, KeySet,
    RemoteJwks, RequestAuthRef,
};

/// Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL` default: how often a `jwksUri` is fetched
/// again.
pub const JWKS_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// A request's validated JWT: written by [`JwtAuthn`] into the request's extensions, read by
/// [`crate::authz`] (`requestPrincipals`, `request.auth.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    /// Istio's request principal, `<iss>/<sub>`.
    pub principal: Arc<str>,
    /// The token's claims (its payload).
    pub claims: Arc<serde_json::Map<String, Value>>,
}

impl RequestAuth {
    /// The claim at `path` (`["groups"]`, or nested `["a", "b"]` for
    /// `request.auth.claims[a][b]`).
    pub fn claim(&self, path: &[impl AsRef<str>]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.claims.get(first.as_ref())?;
        for k in rest {
            v = v.as_object()?.get(k.as_ref())?;
        }
        Some(v)
    }
}

/// Why a token was refused: `jwt_verify_lib`'s statuses, whose texts Envoy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtStatus {
    /// Not three base64url sections.
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    /// The header is not base64url.
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBadBase64,
    /// The header is not a JSON object.
    #[error("Jwt header is an invalid JSON")]
    HeaderBadJson,
    /// No `alg`.
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderBadAlg,
    /// An `alg` not supported (`none`, HMAC, unknown).
    #[error("Jwt header [alg] is not supported")]
    HeaderNotImplementedAlg,
    /// A `kid` that is not a string.
    #[error("Jwt header [kid] field is not a string")]
    HeaderBadKid,
    /// The payload is not base64url.
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBadBase64,
    /// The payload is not a JSON object.
    #[error("Jwt payload is an invalid JSON")]
    PayloadBadJson,
    /// `iss` is not a string.
    #[error("Jwt payload [iss] field is not a string")]
    PayloadIssNotString,
    /// `sub` is not a string.
    #[error("Jwt payload [sub] field is not a string")]
    PayloadSubNotString,
    /// `aud` is neither a string nor a list of strings.
    #[error("Jwt payload [aud] field is not a string or string list")]
    PayloadAudNotString,
    /// `nbf` is not a non-negative integer.
    #[error("Jwt payload [nbf] field is not an integer")]
    PayloadNbfNotInteger,
    /// `exp` is not a non-negative integer.
    #[error("Jwt payload [exp] field is not an integer")]
    PayloadExpNotInteger,
    /// The signature is not base64url.
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBadBase64,
    /// No rule has the token's issuer (at the location it was found).
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// `nbf` is later than now plus the clock skew.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// `exp` plus the clock skew is past.
    #[error("Jwt is expired")]
    Expired,
    /// None of the token's audiences is the rule's.
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    /// No key of the JWKS fits the token's `kid` and `alg`.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    KidAlgMismatch,
    /// The signature does not verify.
    #[error("Jwt verification fails")]
    VerificationFail,
    /// The issuer's `jwksUri` has not been fetched yet.
    #[error("Jwks remote fetch is failed")]
    JwksFetchFail,
}

impl JwtStatus {
    /// Envoy's answer: `403` for audiences, `401` otherwise.
    pub fn status_code(self) -> StatusCode {
        match self {
            JwtStatus::AudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The body Envoy answers with (`jwt_verify_lib` `getStatusString`).
    pub fn message(self) -> &'static str {
        match self {
            JwtStatus::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            JwtStatus::HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            JwtStatus::HeaderBadJson => "Jwt header is an invalid JSON",
            JwtStatus::HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            JwtStatus::HeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            JwtStatus::HeaderBadKid => "Jwt header [kid] field is not a string",
            JwtStatus::PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            JwtStatus::PayloadBadJson => "Jwt payload is an invalid JSON",
            JwtStatus::PayloadIssNotString => "Jwt payload [iss] field is not a string",
            JwtStatus::PayloadSubNotString => "Jwt payload [sub] field is not a string",
            JwtStatus::PayloadAudNotString => {
                "Jwt payload [aud] field is not a string or string list"
            }
            JwtStatus::PayloadNbfNotInteger => "Jwt payload [nbf] field is not an integer",
            JwtStatus::PayloadExpNotInteger => "Jwt payload [exp] field is not an integer",
            JwtStatus::SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            JwtStatus::UnknownIssuer => "Jwt issuer is not configured",
            JwtStatus::NotYetValid => "Jwt not yet valid",
            JwtStatus::Expired => "Jwt is expired",
            JwtStatus::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            JwtStatus::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            JwtStatus::VerificationFail => "Jwt verification fails",
            JwtStatus::JwksFetchFail => "Jwks remote fetch is failed",
        }
    }
}

/// Applies RequestAuthentications; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct JwtAuthnLayer {
    rules: Arc<ArcSwap<Authenticator>>,
}

/// The service of [`JwtAuthnLayer`].
#[derive(Debug, Clone)]
pub struct JwtAuthn<S> {
    inner: S,
    rules: Arc<ArcSwap<Authenticator>>,
}

mesh_core::accessors!(JwtAuthn);

/// The future of [`JwtAuthn`].
#[pin_project(project = Proj)]
#[derive(Debug)]
pub enum ResponseFuture<F, R> {
    /// The inner service's answer.
    Inner {
        /// Its future.
        #[pin]
        fut: F,
    },
    /// The layer's own answer (a refused token).
    Refused {
        /// The response, until it is taken.
        res: Option<Response<R>>,
    },
}

// === impl JwtAuthnLayer ===

impl JwtAuthnLayer {
    /// A layer that applies `rules`.
    pub fn new(rules: Authenticator) -> Self {
        JwtAuthnLayer::shared(Arc::new(ArcSwap::from_pointee(rules)))
    }

    /// A layer that applies whatever `rules` holds when a request comes (a reload stores
    /// new rules there).
    pub fn shared(rules: Arc<ArcSwap<Authenticator>>) -> Self {
        JwtAuthnLayer { rules }
    }
}

impl<S> Layer<S> for JwtAuthnLayer {
    type Service = JwtAuthn<S>;

    fn layer(&self, inner: S) -> JwtAuthn<S> {
        JwtAuthn {
            inner,
            rules: self.rules.clone(),
        }
    }
}

// === impl JwtAuthn ===

impl<S, B, R> Service<Request<B>> for JwtAuthn<S>
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
        // a client never chooses its own request principal (nor claims)
        req.extensions_mut().remove::<RequestAuth>();
        req.extensions_mut().remove::<mesh_core::ext::JwtClaims>();
        let rules = self.rules.load();
        // Istio sets `bypass_cors_preflight`: a CORS preflight carries no credentials
        if rules.is_empty() || is_cors_preflight(&req) {
            return ResponseFuture::Inner {
                fut: self.inner.call(req),
            };
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let uri = req.uri().clone();
        match rules.authenticate(req.headers_mut(), &uri, now) {
            Ok(auth) => {
                drop(rules);
                if let Some(a) = auth {
                    // the router's view of the claims (JWT claim based routing)
                    req.extensions_mut()
                        .insert(mesh_core::ext::JwtClaims(a.claims.clone()));
                    req.extensions_mut().insert(a);
                }
                ResponseFuture::Inner {
                    fut: self.inner.call(req),
                }
            }
            Err(status) => ResponseFuture::Refused {
                res: Some(refusal(status, &req)),
            },
        }
    }
}

/// Envoy's `isCorsPreflightRequest`: `OPTIONS` with non-empty `Origin` and
/// `Access-Control-Request-Method`.
fn is_cors_preflight<B>(req: &Request<B>) -> bool {
    let present = |h: http::header::HeaderName| {
        req.headers()
            .get(h)
            .is_some_and(|v| !v.as_bytes().is_empty())
    };
    req.method() == http::Method::OPTIONS
        && present(http::header::ORIGIN)
        && present(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Envoy's local reply for a refused token, with `www-authenticate` (`filter.cc`).
fn refusal<B, R: ReplyBody>(status: JwtStatus, req: &Request<B>) -> Response<R> {
    let mut res = local_reply(
        status.status_code(),
        ResponseFlags::empty(),
        status.message(),
    );
    let host = mesh_core::authority::of_request(req).unwrap_or_default();
    let scheme = req.uri().scheme_str().unwrap_or("http");
    // Envoy's realm is the original URI, at most 256 characters
    let mut realm = format!("{scheme}://{host}{}", req.uri().path());
    if realm.len() > 256 {
        let mut end = 256;
        while !realm.is_char_boundary(end) {
            end -= 1;
        }
        realm.truncate(end);
    }
    let realm = realm.replace('"', "%22");
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer realm=\"{realm}\", error=\"invalid_token\""
    )) {
        res.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    res
}

// === impl ResponseFuture ===

impl<F, R, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { fut } => fut.poll(cx),
            Proj::Refused { res } => match res.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
