//! Hands the balancer's choice to a client that only knows URIs.
//!
//! The balancer (`mesh-lb`) writes the endpoint it picked into the request's extensions
//! ([`SelectedUpstream`], or a standalone [`SelectedEndpoint`]); `mesh-transport`'s connector
//! reads it there. A client of your own (`hyper_util`'s legacy client, `reqwest`, a tonic
//! channel) sends a request where its URI says: [`EndpointUriLayer`], below the balancer,
//! rewrites the URI's authority to the chosen endpoint (`http://reviews/x` →
//! `http://10.0.0.7:9080/x`) and keeps the name the client used in `Host`, as a sidecar
//! forwards it. A request without a chosen endpoint passes unchanged.
//!
//! ```
//! use std::convert::Infallible;
//! use mesh_core::ext::SelectedEndpoint;
//! use mesh_core::uri::EndpointUriLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let client = ServiceBuilder::new().layer(EndpointUriLayer::new()).service_fn(
//!     |req: http::Request<()>| async move {
//!         Ok::<_, Infallible>(format!("{} host={:?}", req.uri(), req.headers()["host"]))
//!     },
//! );
//! let mut req = http::Request::get("http://reviews/books?id=1").body(()).unwrap();
//! req.extensions_mut().insert(SelectedEndpoint::new("10.0.0.7:9080".parse().unwrap()));
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let sent = client.oneshot(req).await.unwrap();
//! assert_eq!(sent, "http://10.0.0.7:9080/books?id=1 host=\"reviews\"");
//! # });
//! ```

use std::net::SocketAddr;
use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::ext::SelectedEndpoint;
#[cfg(doc)]
use crate::ext::SelectedUpstream;

/// Rewrites requests' URIs to the endpoint the balancer chose; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct EndpointUriLayer {
    _priv: (),
}

/// The service of [`EndpointUriLayer`].
#[derive(Debug, Clone)]
pub struct EndpointUri<S> {
    inner: S,
    /// The authorities of the endpoints chosen last, each formatted once and then shared
    /// (cloning an `Authority` counts a reference): formatting and parsing the address was
    /// most of this layer's cost per request. At most [`CACHED`] entries.
    authorities: Vec<(SocketAddr, Authority)>,
    /// The entry a new endpoint replaces once the cache is full.
    next: usize,
}

/// How many endpoints' authorities an [`EndpointUri`] keeps.
const CACHED: usize = 32;

impl EndpointUriLayer {
    /// The layer.
    pub const fn new() -> Self {
        EndpointUriLayer { _priv: () }
    }
}

impl<S> Layer<S> for EndpointUriLayer {
    type Service = EndpointUri<S>;

    fn layer(&self, inner: S) -> EndpointUri<S> {
        EndpointUri {
            inner,
            authorities: Vec::new(),
            next: 0,
        }
    }
}

crate::accessors!(EndpointUri);

impl<S> EndpointUri<S> {
    /// `addr` as a URI authority, from the cache or formatted (and cached).
    fn authority(&mut self, addr: SocketAddr) -> Option<Authority> {
        if let Some((_, a)) = self.authorities.iter().find(|(s, _)| *s == addr) {
            return Some(a.clone());
        }
        let a = Authority::try_from(addr.to_string()).ok()?;
        if self.authorities.len() < CACHED {
            self.authorities.push((addr, a.clone()));
        } else if let Some(slot) = self.authorities.get_mut(self.next) {
            *slot = (addr, a.clone());
            self.next = (self.next + 1) % CACHED;
        }
        Some(a)
    }
}

impl<S, B> Service<Request<B>> for EndpointUri<S>
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
        let addr = match crate::ext::selected_upstream(req.extensions()) {
            Some(u) => Some(u.endpoint().addr),
            None => req.extensions().get::<SelectedEndpoint>().map(|e| e.addr),
        };
        if let Some(authority) = addr.and_then(|a| self.authority(a)) {
            retarget(&mut req, authority);
        }
        self.inner.call(req)
    }
}

/// Points `req` at `authority` (an endpoint's address), keeping the authority it named in
/// `Host`.
fn retarget<B>(req: &mut Request<B>, authority: Authority) {
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str().rsplit('@').next().unwrap_or(""))
    {
        req.headers_mut().insert(header::HOST, v);
    }
    if let Ok(uri) = with_authority(req.uri(), authority) {
        *req.uri_mut() = uri;
    }
}

/// `uri` with `authority`, its scheme (`http` when it has none) and its path and query (`/`
/// when it has none): an origin-form target made absolute, or an absolute one pointed
/// elsewhere.
pub fn with_authority(uri: &Uri, authority: Authority) -> Result<Uri, http::uri::InvalidUriParts> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(uri.scheme().cloned().unwrap_or(Scheme::HTTP));
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str) -> SelectedEndpoint {
        SelectedEndpoint::new(addr.parse().unwrap_or_else(|_| unreachable!()))
    }

    fn authority(addr: &str) -> Authority {
        Authority::try_from(ep(addr).addr.to_string()).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn cached_authorities_stay_each_endpoints_own() {
        // more endpoints than the cache holds, twice round (the second round finds some
        // cached, some evicted): every request still goes to the endpoint chosen for it
        let mut svc =
            EndpointUriLayer::new().layer(tower::service_fn(|req: Request<()>| async move {
                Ok::<_, std::convert::Infallible>(req.uri().clone())
            }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|_| unreachable!());
        for _round in 0..2 {
            for i in 0..(CACHED + 5) {
                let addr = format!("10.0.0.{i}:80");
                let mut req = Request::get("http://reviews/x")
                    .body(())
                    .unwrap_or_default();
                req.extensions_mut().insert(ep(&addr));
                let uri = rt.block_on(svc.call(req));
                assert_eq!(
                    uri.ok(),
                    Some(
                        format!("http://{addr}/x")
                            .parse::<Uri>()
                            .unwrap_or_default()
                    )
                );
            }
        }
        assert_eq!(svc.authorities.len(), CACHED);
    }

    #[test]
    fn origin_form_and_existing_host_and_ipv6() {
        // an origin-form request with a Host: the Host stays, the URI gets the endpoint
        let mut req = Request::get("/a?b")
            .header("host", "reviews:9080")
            .body(())
            .unwrap_or_default();
        retarget(&mut req, authority("[::1]:8080"));
        assert_eq!(req.uri(), "http://[::1]:8080/a?b");
        assert_eq!(req.headers()["host"], "reviews:9080");
        // https stays https
        let mut req = Request::get("https://api.example.com/x")
            .body(())
            .unwrap_or_default();
        retarget(&mut req, authority("10.1.1.1:443"));
        assert_eq!(req.uri(), "https://10.1.1.1:443/x");
        assert_eq!(req.headers()["host"], "api.example.com");
    }
}
