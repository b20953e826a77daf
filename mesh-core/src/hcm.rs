//! The headers Envoy's HTTP connection manager sets on every request and answer of an Istio
//! listener, beside its gRPC local replies ([`crate::grpc`]): one layer,
//! [`ConnectionManagerLayer`], whose service is [`GrpcLocalReply`] (one future per request
//! for all of it).
//!
//! - **`server`** on every answer, the upstream's and the proxy's own: Istio's listeners
//!   set `server_header_transformation: OVERWRITE` (Envoy's default) with `server_name`
//!   `istio-envoy`, except the sidecar's outbound listener, which keeps Envoy's default
//!   name `envoy` (`pilot/pkg/networking/util`'s `GetProxyHeadersFromProxyConfig`: "outbound
//!   uses envoy while inbound uses istio-envoy"). So a client never sees its upstream's
//!   `server` (`gunicorn/19.9.0` becomes `envoy`). The answers a connection makes before
//!   its request reaches this layer (`mesh-transport`'s 400, 431 and 505 to malformed
//!   requests, the 508 of a loop, the 403 of a refused upgrade) get the same name from the
//!   engine ([`server`](ConnectionManagerLayer::server) for its `EngineConfig::server`), as
//!   Envoy's codec errors do; those hyper answers alone (a head it cannot parse) have none.
//! - **`x-forwarded-proto`** when the request has none, at a listener that does not use the
//!   remote address (Istio's sidecars): `https` when the downstream connection is TLS (an
//!   inbound mTLS connection), `http` otherwise (`ConnectionManagerUtility::
//!   mutateRequestHeaders`: "If the x-forwarded-proto header is not set, set it here"). A
//!   value the client sent is kept. (Gateways use the remote address and overwrite it with
//!   the connection's scheme: mesh-proxy's gateway front does that.)
//!
//! - **`x-envoy-upstream-service-time`** on the upstream's answers (not on the proxy's own):
//!   the milliseconds from the request to the upstream's head, retries included, a fault's
//!   injected delay left out ([`InjectedDelay`](crate::ext::InjectedDelay)), as Envoy's
//!   router writes it (`Filter::onUpstreamHeaders`; Istio leaves `suppress_envoy_headers`
//!   off unless `proxyHeaders.envoyDebugHeaders` disables it). One difference: Envoy counts
//!   from the end of the request's body as the router sees it (and writes nothing when the
//!   answer comes before that end); here it counts from the request's head as this layer
//!   sees it, which for a request without a body, or one whose body came with its head, is
//!   the same time within the microseconds the layers between take (routing,
//!   authorization).
//!
//! Checked against envoy 1.40 (`benches/conformance/envoy_diff.py`).
//!
//! ```
//! use http::{Request, Response};
//! use mesh_core::hcm::ConnectionManagerLayer;
//! use mesh_core::MeshBody;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let svc = ConnectionManagerLayer::sidecar_outbound().layer(service_fn(|req: Request<()>| async move {
//!     assert_eq!(req.headers()["x-forwarded-proto"], "http");
//!     let mut res = Response::new(MeshBody::<http_body_util::Empty<bytes::Bytes>>::local(bytes::Bytes::new()));
//!     res.headers_mut().insert("server", "gunicorn/19.9.0".parse().unwrap());
//!     Ok::<_, std::convert::Infallible>(res)
//! }));
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.headers()["server"], "envoy");
//! # });
//! ```

use tokio::time::Instant;

use http::{HeaderName, HeaderValue, Request};

use crate::grpc::GrpcLocalReply;

/// `x-forwarded-proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The local name in this module.
const XFP: HeaderName = X_FORWARDED_PROTO;

/// `x-envoy-upstream-service-time`.
pub const UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// The values below 100 ms, static: no allocation for the common case.
const MS: [&str; 100] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
    "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48",
    "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61", "62", "63", "64",
    "65", "66", "67", "68", "69", "70", "71", "72", "73", "74", "75", "76", "77", "78", "79", "80",
    "81", "82", "83", "84", "85", "86", "87", "88", "89", "90", "91", "92", "93", "94", "95", "96",
    "97", "98", "99",
];

/// Whether a request's downstream connection is TLS, from its extensions (the listener's
/// own extension, which this crate does not know: `mesh-transport`'s `PeerTls`).
pub type TlsProbe = fn(&http::Extensions) -> bool;

/// What a listener's [`ConnectionManagerLayer`] sets.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListenerHeaders {
    /// The `server` every answer gets (`None`: the answer's own stays).
    pub(crate) server: Option<&'static HeaderValue>,
    /// `x-forwarded-proto` added when absent, `https` when the probe says TLS (`None`: not
    /// added).
    pub(crate) forwarded_proto: Option<TlsProbe>,
    /// Whether the upstream's answers get `x-envoy-upstream-service-time` (Envoy's debug
    /// headers on; off, the proxy's own answers lose `x-envoy-overloaded` too).
    pub(crate) upstream_service_time: bool,
    /// Whether the proxy's own answers lose `x-envoy-overloaded` (debug headers off).
    pub(crate) strip_debug: bool,
}

/// `server: envoy`, a sidecar's outbound listener's (Envoy's default name).
static ENVOY: HeaderValue = HeaderValue::from_static("envoy");
/// `server: istio-envoy`, Istio's inbound listeners' and gateways'.
static ISTIO_ENVOY: HeaderValue = HeaderValue::from_static("istio-envoy");

/// `x-envoy-overloaded`: on an answer the proxy made because a limit was reached (a pool's
/// or the retry budget's overflow), one of Envoy's debug headers.
pub const ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
/// The local name in this module.
const OVERLOADED: HeaderName = ENVOY_OVERLOADED;

/// A `server` name as a static value for [`ConnectionManagerLayer::with_server`]: Istio's
/// own names are the module's statics, another (`proxyHeaders.server.value`) is made
/// static once per distinct name in the process, so that listeners and in-process meshes
/// built again and again with one configuration keep one copy. `None` for an empty name
/// (Istio treats it as unset) or one that is not a header value.
pub fn server_name(name: &str) -> Option<&'static HeaderValue> {
    static NAMES: std::sync::Mutex<Vec<&'static HeaderValue>> = std::sync::Mutex::new(Vec::new());
    match name {
        "" => return None,
        "envoy" => return Some(&ENVOY),
        "istio-envoy" => return Some(&ISTIO_ENVOY),
        _ => {}
    }
    let value = HeaderValue::from_str(name).ok()?;
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(v) = names.iter().find(|v| **v == value) {
        return Some(v);
    }
    let v: &'static HeaderValue = Box::leak(Box::new(value));
    names.push(v);
    Some(v)
}

/// Envoy's connection manager's headers and gRPC local replies for one kind of Istio
/// listener; see the [module docs](self). The default sets no header: gRPC local replies
/// only, as [`GrpcLocalReplyLayer`](crate::grpc::GrpcLocalReplyLayer) (an in-process
/// client, which is no listener).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionManagerLayer {
    headers: ListenerHeaders,
}

impl ConnectionManagerLayer {
    /// A sidecar's outbound listener: `server: envoy`, `x-forwarded-proto: http` when
    /// absent (the application's connection is plaintext), `x-envoy-upstream-service-time`.
    pub fn sidecar_outbound() -> Self {
        ConnectionManagerLayer {
            headers: ListenerHeaders {
                server: Some(&ENVOY),
                forwarded_proto: Some(|_| false),
                upstream_service_time: true,
                strip_debug: false,
            },
        }
    }

    /// A sidecar's inbound listener: `server: istio-envoy`, `x-forwarded-proto` when absent
    /// (`https` when `tls` says the connection is TLS), `x-envoy-upstream-service-time`.
    pub fn sidecar_inbound(tls: TlsProbe) -> Self {
        ConnectionManagerLayer {
            headers: ListenerHeaders {
                server: Some(&ISTIO_ENVOY),
                forwarded_proto: Some(tls),
                upstream_service_time: true,
                strip_debug: false,
            },
        }
    }

    /// A gateway's listener: `server: istio-envoy`, `x-envoy-upstream-service-time` (its
    /// front sets `x-forwarded-proto` itself, from the connection, whatever the client sent).
    pub fn gateway() -> Self {
        ConnectionManagerLayer {
            headers: ListenerHeaders {
                server: Some(&ISTIO_ENVOY),
                forwarded_proto: None,
                upstream_service_time: true,
                strip_debug: false,
            },
        }
    }
}

impl ConnectionManagerLayer {
    /// Another `server` name (`proxyHeaders.server.value`), or none at all: the answer's
    /// own passes (`proxyHeaders.server.disabled`, Istio's `PASS_THROUGH`). A name is
    /// static: a listener's configuration is read once, at start-up.
    pub fn with_server(mut self, server: Option<&'static HeaderValue>) -> Self {
        self.headers.server = server;
        self
    }

    /// The `server` this layer writes (`None`: the answer's own passes), for the answers a
    /// listener makes before this layer (`mesh-transport`'s `EngineConfig::server`).
    pub fn server(&self) -> Option<&'static HeaderValue> {
        self.headers.server
    }

    /// Envoy's debug headers (`proxyHeaders.envoyDebugHeaders`): on (the listeners'
    /// default), the upstream's answers get `x-envoy-upstream-service-time`; off (Istio's
    /// `suppress_envoy_headers`), they do not, and the proxy's own answers lose
    /// `x-envoy-overloaded`.
    pub fn with_debug_headers(mut self, on: bool) -> Self {
        self.headers.upstream_service_time = on;
        self.headers.strip_debug = !on;
        self
    }
}

impl<S> tower_layer::Layer<S> for ConnectionManagerLayer {
    type Service = GrpcLocalReply<S>;

    fn layer(&self, inner: S) -> GrpcLocalReply<S> {
        GrpcLocalReply::new(inner, self.headers)
    }
}

/// Writes `x-envoy-upstream-service-time` (the milliseconds since `start`) on `res` unless it
/// is the proxy's own answer (one with a [`LocalReplyText`](crate::ext::LocalReplyText)).
#[inline]
pub(crate) fn upstream_service_time<R>(res: &mut http::Response<R>, start: Instant) {
    if res
        .extensions()
        .get::<crate::ext::LocalReplyText>()
        .is_some()
    {
        return;
    }
    // (an injected delay is not the upstream's: Envoy's router counts after the fault filter)
    let delayed = res
        .extensions()
        .get::<crate::ext::InjectedDelay>()
        .map_or(std::time::Duration::ZERO, |d| d.0);
    let ms = start.elapsed().saturating_sub(delayed).as_millis();
    let v = match MS.get(ms as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(u64::try_from(ms).unwrap_or(u64::MAX)),
    };
    res.headers_mut().insert(UPSTREAM_SERVICE_TIME, v);
}

/// Removes `x-envoy-overloaded` from the proxy's own answers (debug headers off).
#[cold]
pub(crate) fn strip_debug<R>(res: &mut http::Response<R>) {
    if res
        .extensions()
        .get::<crate::ext::LocalReplyText>()
        .is_some()
    {
        res.headers_mut().remove(OVERLOADED);
    }
}

/// Adds `x-forwarded-proto` (`https` when `tls` says so, else `http`) unless the request
/// has one.
#[inline]
pub(crate) fn forwarded_proto_if_absent<B>(req: &mut Request<B>, tls: TlsProbe) {
    let https = tls(req.extensions());
    if let http::header::Entry::Vacant(v) = req.headers_mut().entry(XFP) {
        v.insert(HeaderValue::from_static(if https {
            "https"
        } else {
            "http"
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshBody;
    use crate::ext::local_reply;
    use crate::flags::ResponseFlags;
    use http::{Response, StatusCode};
    use http_body_util::Empty;
    use tower::{Layer, ServiceExt, service_fn};

    type Res = Response<MeshBody<Empty<bytes::Bytes>>>;

    /// The request the service inside saw, and the answer the client got.
    async fn through(
        layer: ConnectionManagerLayer,
        req: Request<()>,
        reply: fn() -> Res,
    ) -> (http::HeaderMap, Res) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(http::HeaderMap::new()));
        let s = seen.clone();
        let svc = layer.layer(service_fn(move |req: Request<()>| {
            *s.lock().unwrap() = req.headers().clone();
            async move { Ok::<_, std::convert::Infallible>(reply()) }
        }));
        let res = svc.oneshot(req).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        (seen, res)
    }

    fn upstream() -> Res {
        let mut r = Response::new(MeshBody::local(bytes::Bytes::new()));
        r.headers_mut()
            .insert(http::header::SERVER, HeaderValue::from_static("gunicorn"));
        r
    }

    fn uh() -> Res {
        local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlags::NO_HEALTHY_UPSTREAM,
            "no healthy upstream",
        )
    }

    #[tokio::test]
    async fn every_answer_gets_the_listeners_server_name_as_istios() {
        let layers = [
            (ConnectionManagerLayer::sidecar_outbound(), "envoy"),
            (
                ConnectionManagerLayer::sidecar_inbound(|_| false),
                "istio-envoy",
            ),
            (ConnectionManagerLayer::gateway(), "istio-envoy"),
        ];
        for (layer, name) in layers {
            for reply in [upstream as fn() -> Res, uh] {
                let (_, res) = through(layer, Request::new(()), reply).await;
                let got: Vec<_> = res.headers().get_all(http::header::SERVER).iter().collect();
                assert_eq!(got, [name], "one server header, the listener's");
            }
        }
        // the gRPC-only layer leaves it alone
        let svc = crate::grpc::GrpcLocalReplyLayer.layer(service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(upstream())
        }));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.headers()["server"], "gunicorn");
    }

    #[tokio::test]
    async fn a_sidecar_adds_x_forwarded_proto_when_absent_as_envoy() {
        let with = |v: Option<&'static str>, tls: bool| {
            let mut req = Request::new(());
            if let Some(v) = v {
                req.headers_mut().insert(XFP, HeaderValue::from_static(v));
            }
            if tls {
                req.extensions_mut().insert(Tls);
            }
            req
        };
        #[derive(Clone, Copy)]
        struct Tls;
        let probe: TlsProbe = |ext| ext.get::<Tls>().is_some();
        let cases = [
            (
                ConnectionManagerLayer::sidecar_outbound(),
                None,
                false,
                Some("http"),
            ),
            (
                ConnectionManagerLayer::sidecar_outbound(),
                Some("https"),
                false,
                Some("https"),
            ),
            (
                ConnectionManagerLayer::sidecar_inbound(probe),
                None,
                true,
                Some("https"),
            ),
            (
                ConnectionManagerLayer::sidecar_inbound(probe),
                None,
                false,
                Some("http"),
            ),
            (
                ConnectionManagerLayer::sidecar_inbound(probe),
                Some("http"),
                true,
                Some("http"),
            ),
            (ConnectionManagerLayer::gateway(), None, false, None),
        ];
        for (layer, sent, tls, want) in cases {
            let (seen, _) = through(layer, with(sent, tls), upstream).await;
            let got: Vec<_> = seen
                .get_all(XFP)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(
                got,
                want.into_iter().collect::<Vec<_>>(),
                "{sent:?} tls {tls}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstreams_answers_say_how_long_the_upstream_took_as_envoys_router() {
        async fn after(layer: ConnectionManagerLayer, ms: u64, reply: fn() -> Res) -> Res {
            let svc = layer.layer(service_fn(move |_req: Request<()>| async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                Ok::<_, std::convert::Infallible>(reply())
            }));
            svc.oneshot(Request::new(())).await.unwrap()
        }
        let layer = ConnectionManagerLayer::sidecar_outbound();
        for (ms, want) in [
            (0, "0"),
            (7, "7"),
            (99, "99"),
            (250, "250"),
            (61_000, "61000"),
        ] {
            let res = after(layer, ms, upstream).await;
            assert_eq!(res.headers()[UPSTREAM_SERVICE_TIME], want);
        }
        // not on the proxy's own answers (those made gRPC already too), nor in-process
        let res = after(layer, 5, uh).await;
        assert!(!res.headers().contains_key(UPSTREAM_SERVICE_TIME));
        let grpc =
            || crate::grpc::grpc_reply(14, "fault filter abort", ResponseFlags::FAULT_INJECTED);
        let res = after(layer, 5, grpc).await;
        assert!(!res.headers().contains_key(UPSTREAM_SERVICE_TIME));
        let res = after(ConnectionManagerLayer::default(), 5, upstream).await;
        assert!(!res.headers().contains_key(UPSTREAM_SERVICE_TIME));
        // a fault's injected delay is not the upstream's time
        fn delayed() -> Res {
            let mut r = upstream();
            r.extensions_mut()
                .insert(crate::ext::InjectedDelay(std::time::Duration::from_millis(
                    5_000,
                )));
            r
        }
        let res = after(layer, 5_007, delayed).await;
        assert_eq!(res.headers()[UPSTREAM_SERVICE_TIME], "7");
        // the inbound and gateway listeners write it too
        for layer in [
            ConnectionManagerLayer::sidecar_inbound(|_| false),
            ConnectionManagerLayer::gateway(),
        ] {
            let res = after(layer, 3, upstream).await;
            assert_eq!(res.headers()[UPSTREAM_SERVICE_TIME], "3");
        }
    }

    #[test]
    fn server_names_are_made_static_once_per_name() {
        assert!(std::ptr::eq(server_name("envoy").unwrap(), &ENVOY));
        let a = server_name("my-mesh").unwrap();
        assert_eq!(a, "my-mesh");
        assert!(std::ptr::eq(a, server_name("my-mesh").unwrap()), "one copy");
        assert_eq!(server_name(""), None);
        assert_eq!(server_name("bad\nname"), None, "not a header value");
    }

    #[tokio::test]
    async fn istios_proxy_headers_switches_turn_them_off() {
        static MINE: HeaderValue = HeaderValue::from_static("my-proxy");
        // server.value, server.disabled (the application's passes; the proxy's own has none)
        let layer = ConnectionManagerLayer::gateway().with_server(Some(&MINE));
        let (_, res) = through(layer, Request::new(()), upstream).await;
        assert_eq!(res.headers()["server"], "my-proxy");
        let layer = ConnectionManagerLayer::gateway().with_server(None);
        let (_, res) = through(layer, Request::new(()), upstream).await;
        assert_eq!(res.headers()["server"], "gunicorn");
        let (_, res) = through(layer, Request::new(()), uh).await;
        assert!(!res.headers().contains_key("server"));
        // envoyDebugHeaders.disabled: no service time, no x-envoy-overloaded on the proxy's
        // own answers (an upstream's stays as it came)
        fn overflow() -> Res {
            let mut r = uh();
            r.headers_mut()
                .insert(OVERLOADED, HeaderValue::from_static("true"));
            r
        }
        fn upstream_overloaded() -> Res {
            let mut r = upstream();
            r.headers_mut()
                .insert(OVERLOADED, HeaderValue::from_static("true"));
            r
        }
        let off = ConnectionManagerLayer::sidecar_outbound().with_debug_headers(false);
        let (_, res) = through(off, Request::new(()), upstream_overloaded).await;
        assert!(!res.headers().contains_key(UPSTREAM_SERVICE_TIME));
        assert_eq!(res.headers()[OVERLOADED], "true");
        let (_, res) = through(off, Request::new(()), overflow).await;
        assert!(!res.headers().contains_key(OVERLOADED));
        let on = ConnectionManagerLayer::sidecar_outbound();
        let (_, res) = through(on, Request::new(()), overflow).await;
        assert_eq!(res.headers()[OVERLOADED], "true");
    }

    #[tokio::test]
    async fn grpc_callers_still_get_local_replies_as_grpc_statuses() {
        let mut req = Request::new(());
        *req.method_mut() = http::Method::POST;
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let (_, res) = through(ConnectionManagerLayer::sidecar_outbound(), req, uh).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(res.headers()["server"], "envoy");
    }
}
