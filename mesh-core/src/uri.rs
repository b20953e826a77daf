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
use std::sync::Arc;
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
    /// The authorities of the endpoints chosen last and the `Host` values of the names
    /// requested last, each made once and then shared (cloning an `Authority` or a
    /// `HeaderValue` counts a reference): formatting the address, parsing it back and
    /// copying the name into a new header value were most of this layer's cost per request.
    /// Behind an `Arc`, written on a miss only (a copy then if a clone shares it): a clone
    /// of the service (the retry layer keeps one per retriable request) counts a reference
    /// instead of copying the lists.
    cache: Arc<Cache>,
}

/// What an [`EndpointUri`] keeps (at most [`CACHED`] entries each).
#[derive(Debug, Clone, Default)]
struct Cache {
    authorities: Vec<(SocketAddr, Authority)>,
    /// The entry a new endpoint replaces once the list is full.
    next: usize,
    /// `Host` values, each the authority a request named (without user information).
    hosts: Vec<HeaderValue>,
    /// The entry a new name replaces once the list is full.
    next_host: usize,
}

/// How many endpoints' authorities (and names' `Host` values) an [`EndpointUri`] keeps.
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
            cache: Arc::default(),
        }
    }
}

crate::accessors!(EndpointUri);

/// Puts `value` into `list` (at most [`CACHED`] entries; once full, over the entry `next`
/// names, which then moves on).
fn remember<T>(list: &mut Vec<T>, next: &mut usize, value: T) {
    if list.len() < CACHED {
        list.push(value);
    } else if let Some(slot) = list.get_mut(*next) {
        *slot = value;
        *next = (*next + 1) % CACHED;
    }
}

impl<S> EndpointUri<S> {
    /// `addr` as a URI authority, from the cache or formatted (and cached).
    fn authority(&mut self, addr: SocketAddr) -> Option<Authority> {
        if let Some((_, a)) = self.cache.authorities.iter().find(|(s, _)| *s == addr) {
            return Some(a.clone());
        }
        let a = Authority::try_from(addr.to_string()).ok()?;
        let c = Arc::make_mut(&mut self.cache);
        remember(&mut c.authorities, &mut c.next, (addr, a.clone()));
        Some(a)
    }

    /// The `Host` value naming `authority` (without its user information), from the cache
    /// or made (and cached).
    fn host(&mut self, authority: &Authority) -> Option<HeaderValue> {
        let name = host_of(authority);
        if let Some(v) = self
            .cache
            .hosts
            .iter()
            .find(|v| v.as_bytes() == name.as_bytes())
        {
            return Some(v.clone());
        }
        let v = HeaderValue::from_str(name).ok()?;
        let c = Arc::make_mut(&mut self.cache);
        remember(&mut c.hosts, &mut c.next_host, v.clone());
        Some(v)
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
            if !req.headers().contains_key(header::HOST)
                && let Some(v) = req.uri().authority().and_then(|a| self.host(a))
            {
                req.headers_mut().insert(header::HOST, v);
            }
            if let Ok(uri) = with_authority(req.uri(), authority) {
                *req.uri_mut() = uri;
            }
        }
        self.inner.call(req)
    }
}

/// `authority` without its user information: what `Host` names.
fn host_of(authority: &Authority) -> &str {
    let a = authority.as_str();
    match a.as_bytes().iter().rposition(|&b| b == b'@') {
        Some(at) => &a[at + 1..],
        None => a,
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

    /// What [`Echo`] answers: the URI and the `Host` it was sent.
    type Sent = (Uri, Option<HeaderValue>);

    /// A client answering with what it was sent.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Sent;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Sent, std::convert::Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            let sent = (req.uri().clone(), req.headers().get(header::HOST).cloned());
            std::future::ready(Ok(sent))
        }
    }

    fn svc() -> EndpointUri<Echo> {
        EndpointUriLayer::new().layer(Echo)
    }

    /// `req` sent to `addr` through `svc`: the URI and `Host` the client got.
    fn send(
        svc: &mut EndpointUri<Echo>,
        mut req: Request<()>,
        addr: &str,
    ) -> (String, Option<String>) {
        req.extensions_mut().insert(ep(addr));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|_| unreachable!());
        let Ok((uri, host)) = rt.block_on(svc.call(req));
        let host = host.map(|h| h.to_str().unwrap_or_default().to_owned());
        (uri.to_string(), host)
    }

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap_or_default()
    }

    #[test]
    fn cached_authorities_stay_each_endpoints_own() {
        // more endpoints than the cache holds, twice round (the second round finds some
        // cached, some evicted): every request still goes to the endpoint chosen for it
        let mut svc = svc();
        for _round in 0..2 {
            for i in 0..(CACHED + 5) {
                let addr = format!("10.0.0.{i}:80");
                let sent = send(&mut svc, get("http://reviews/x"), &addr);
                assert_eq!(sent, (format!("http://{addr}/x"), Some("reviews".into())));
            }
        }
        assert_eq!(svc.cache.authorities.len(), CACHED);
    }

    #[test]
    fn cached_hosts_stay_each_names_own_and_clones_share_then_part() {
        // more names than the cache holds, twice round, through the service and a clone
        // of it (which shares the cache until one of them writes)
        let mut svc = svc();
        let mut clone = svc.clone();
        for round in 0..2 {
            for i in 0..(CACHED + 5) {
                let name = format!("svc-{i}.ns:90{}", i % 10);
                let which = if (i + round) % 2 == 0 {
                    &mut svc
                } else {
                    &mut clone
                };
                let sent = send(which, get(&format!("http://{name}/x")), "10.0.0.1:80");
                assert_eq!(sent, ("http://10.0.0.1:80/x".into(), Some(name)));
            }
        }
        assert_eq!(svc.cache.hosts.len(), CACHED);
        assert!(!Arc::ptr_eq(&svc.cache, &clone.cache));
        let copy = svc.clone();
        assert!(
            Arc::ptr_eq(&svc.cache, &copy.cache),
            "a clone counts a reference"
        );
    }

    #[test]
    fn origin_form_existing_host_user_info_and_ipv6() {
        let mut svc = svc();
        // an origin-form request with a Host: the Host stays, the URI gets the endpoint
        let mut req = get("/a?b");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("reviews:9080"));
        assert_eq!(
            send(&mut svc, req, "[::1]:8080"),
            ("http://[::1]:8080/a?b".into(), Some("reviews:9080".into()))
        );
        // https stays https
        assert_eq!(
            send(&mut svc, get("https://api.example.com/x"), "10.1.1.1:443"),
            (
                "https://10.1.1.1:443/x".into(),
                Some("api.example.com".into())
            )
        );
        // user information is not part of Host
        assert_eq!(
            send(
                &mut svc,
                get("http://u:p@api.example.com:8443/x"),
                "10.1.1.1:443"
            ),
            (
                "http://10.1.1.1:443/x".into(),
                Some("api.example.com:8443".into())
            )
        );
        // no endpoint chosen: unchanged
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|_| unreachable!());
        let Ok((uri, host)) = rt.block_on(svc.call(get("http://reviews/x")));
        assert_eq!((uri.to_string(), host), ("http://reviews/x".into(), None));
    }
}
