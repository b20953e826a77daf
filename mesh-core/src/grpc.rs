//! The mesh's own answers to gRPC requests, as Envoy gives them: a gRPC client cannot read
//! `503 no healthy upstream`, so Envoy's connection manager (`sendLocalReply` of a gRPC
//! request) answers trailers-only instead: HTTP `200`, `content-type: application/grpc`,
//! `grpc-status` mapped from the HTTP status (`Grpc::Utility::httpToGrpcStatus`: 503 → 14
//! UNAVAILABLE, 404 → 12 UNIMPLEMENTED, 403 → 7 PERMISSION_DENIED, …) and the reply's text
//! as `grpc-message` (none when it has no text).
//!
//! [`GrpcLocalReplyLayer`] does that for every local reply made below it (a reply made with
//! [`local_reply`](crate::ext::local_reply), which carries its text as a
//! [`LocalReplyText`]): the router's `404 NR`, the balancer's
//! `503 UH`, the connector's resets, the circuit breaker's overflow, a per-try timeout,
//! authorization's `403`, and a route's own answers (a VirtualService's `directResponse`,
//! whose body becomes the message, and `redirect`, which keeps its `location`:
//! [`ResponseCodeDetails::mark_direct`](crate::ext::ResponseCodeDetails::mark_direct)). Answers from upstream pass as they are, and so do replies that are
//! gRPC already (the fault, timeout and rate limit layers make theirs). mesh-proxy puts it
//! right inside the record layer, so that the access log and Istio's metrics see the
//! answer the client gets (`200`, `grpc_response_status="14"`), as Envoy's do. Checked
//! against envoy 1.40 (`benches/conformance/envoy_diff.py`).
//!
//! Per request: one look-up of `content-type` (a standard header), for `POST`s only. A gRPC
//! call is a `POST` (the gRPC over HTTP/2 spec) with a gRPC content type
//! ([`is_grpc_request`]); Envoy also counts another method with that content type, which
//! no gRPC client sends: the one difference, shared by every layer that answers gRPC
//! callers (fault, timeout, rate limit, this one).
//!
//! ```
//! use http::{Request, StatusCode};
//! use mesh_core::MeshBody;
//! use mesh_core::ext::local_reply;
//! use mesh_core::flags::ResponseFlags;
//! use mesh_core::grpc::GrpcLocalReplyLayer;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let svc = GrpcLocalReplyLayer.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(local_reply::<MeshBody<http_body_util::Empty<bytes::Bytes>>>(
//!         StatusCode::SERVICE_UNAVAILABLE,
//!         ResponseFlags::NO_HEALTHY_UPSTREAM,
//!         "no healthy upstream",
//!     ))
//! }));
//! let req = Request::post("/ratings.Ratings/Get")
//!     .header("content-type", "application/grpc")
//!     .body(())
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["grpc-status"], "14");
//! assert_eq!(res.headers()["grpc-message"], "no healthy upstream");
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

use crate::body::ReplyBody;
use crate::ext::LocalReplyText;

/// Whether a request is a gRPC call: a `POST` (as the gRPC spec sends every call) whose
/// content type is gRPC's ([`has_grpc_content_type`]). Envoy's `isGrpcRequestHeaders`
/// reads the content type only; see the [module docs](self).
#[inline]
pub fn is_grpc_request<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::POST && has_grpc_content_type(req.headers())
}

/// Envoy's `hasGrpcContentType`: `content-type` is `application/grpc` exactly, or followed
/// by `+` (`application/grpc+proto`); not `application/grpc-web`, nor with parameters.
#[inline]
pub fn has_grpc_content_type(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .strip_prefix(b"application/grpc")
            .is_some_and(|rest| matches!(rest.first(), None | Some(b'+')))
    })
}

/// `Grpc::Utility::httpToGrpcStatus` (the gRPC spec's HTTP-to-gRPC mapping).
pub fn http_to_grpc(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// Turns a local reply (one with a [`LocalReplyText`]) into Envoy's gRPC form, in place:
/// status, headers and body; its extensions (flags, reasons) stay. A reply that is gRPC
/// already, or an upstream's answer, is left as it is.
pub fn to_grpc_reply<R: ReplyBody>(res: &mut Response<R>) {
    let Some(LocalReplyText(text)) = res.extensions().get::<LocalReplyText>() else {
        return;
    };
    if has_grpc_content_type(res.headers()) {
        return; // (made gRPC by the layer that answered)
    }
    let text = text.clone();
    let code = http_to_grpc(res.status());
    *res.status_mut() = StatusCode::OK;
    *res.body_mut() = R::local(bytes::Bytes::new());
    trailers_only(res.headers_mut(), code, &text);
}

/// Envoy's gRPC local reply made directly: a trailers-only `200` with `grpc-status: code`
/// and `text` as `grpc-message` (none when empty), flagged with `flags` (the fault, timeout
/// and rate limit layers' answers to gRPC callers).
pub fn grpc_reply<R: ReplyBody>(
    code: u32,
    text: &'static str,
    flags: crate::flags::ResponseFlags,
) -> Response<R> {
    let mut res = Response::new(R::local(bytes::Bytes::new()));
    trailers_only(res.headers_mut(), code, text.as_bytes());
    // (the mesh's own answer: no `x-envoy-upstream-service-time` on it)
    res.extensions_mut()
        .insert(LocalReplyText(bytes::Bytes::from_static(text.as_bytes())));
    crate::ext::mark(&mut res, flags);
    res
}

/// The headers of a trailers-only gRPC answer (the other headers stay: a redirect's
/// `location`, a rate limit's `x-ratelimit-*`, as Envoy's `sendLocalReply` keeps them).
fn trailers_only(h: &mut HeaderMap, code: u32, text: &[u8]) {
    // (Envoy drops a body's one trailing newline; a direct response's body often ends so)
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if !text.is_empty() {
        h.insert("grpc-message", grpc_bytes_message(text));
    }
}

/// `text` as `grpc-message`: percent-encoded as the gRPC spec and Envoy's
/// `PercentEncoding::encode` do (`%` and bytes outside the visible ASCII range and space),
/// so that no text can make an invalid header value.
pub fn grpc_message(text: &str) -> HeaderValue {
    grpc_bytes_message(text.as_bytes())
}

/// [`grpc_message`] of any bytes (a VirtualService's `directResponse` body need not be
/// UTF-8).
fn grpc_bytes_message(text: &[u8]) -> HeaderValue {
    let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'%';
    if text.iter().all(|&b| plain(b)) {
        // (visible ASCII and spaces: a valid value)
        return HeaderValue::from_bytes(text).unwrap_or_else(|_| HeaderValue::from_static(""));
    }
    let mut out = String::with_capacity(text.len() + 8);
    for &b in text {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Answers gRPC requests' local replies in gRPC's form; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcLocalReplyLayer;

/// The service of [`GrpcLocalReplyLayer`], and of
/// [`ConnectionManagerLayer`](crate::hcm::ConnectionManagerLayer) (which adds the
/// listener's `server` and `x-forwarded-proto`).
#[derive(Debug, Clone)]
pub struct GrpcLocalReply<S> {
    inner: S,
    pub(crate) headers: crate::hcm::ListenerHeaders,
}

/// The future of [`GrpcLocalReply`].
#[pin_project::pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    grpc: bool,
    /// Whether the proxy's own answers lose `x-envoy-overloaded` (debug headers off).
    strip_debug: bool,
    server: Option<&'static HeaderValue>,
    /// When the request came, for `x-envoy-upstream-service-time`.
    start: Option<tokio::time::Instant>,
}

impl<S> tower_layer::Layer<S> for GrpcLocalReplyLayer {
    type Service = GrpcLocalReply<S>;

    fn layer(&self, inner: S) -> GrpcLocalReply<S> {
        GrpcLocalReply::new(inner, crate::hcm::ListenerHeaders::default())
    }
}

impl<S> GrpcLocalReply<S> {
    pub(crate) fn new(inner: S, headers: crate::hcm::ListenerHeaders) -> Self {
        GrpcLocalReply { inner, headers }
    }
}

impl<S, B, R> tower_service::Service<Request<B>> for GrpcLocalReply<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>>,
    R: ReplyBody,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let grpc = is_grpc_request(&req);
        if let Some(tls) = self.headers.forwarded_proto {
            crate::hcm::forwarded_proto_if_absent(&mut req, tls);
        }
        let start = self
            .headers
            .upstream_service_time
            .then(tokio::time::Instant::now);
        ResponseFuture {
            inner: self.inner.call(req),
            grpc,
            strip_debug: self.headers.strip_debug,
            server: self.headers.server,
            start,
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: ReplyBody,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx));
        if let Ok(r) = res.as_mut() {
            if let Some(start) = *this.start {
                crate::hcm::upstream_service_time(r, start);
            }
            if *this.strip_debug {
                crate::hcm::strip_debug(r);
            }
            if *this.grpc {
                to_grpc_reply(r);
            }
            if let Some(server) = *this.server {
                r.headers_mut().insert(http::header::SERVER, server.clone());
            }
        }
        Poll::Ready(res)
    }
}

/// Whether a body of this content type is framed as gRPC's (5-byte prefixes): gRPC's own
/// (`application/grpc`, `application/grpc+proto`, …) and binary gRPC-Web
/// (`application/grpc-web`, `+proto`); not `application/grpc-web-text`, whose body is
/// base64.
#[inline]
pub fn has_framed_content_type(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .is_some_and(|v| is_framed_content_type(v.as_bytes()))
}

/// [`has_framed_content_type`] of one `content-type` value.
#[inline]
pub fn is_framed_content_type(v: &[u8]) -> bool {
    v.starts_with(b"application/grpc") && !v.starts_with(b"application/grpc-web-text")
}

/// Counts the messages of a gRPC body as its bytes go by: each message is a 5-byte prefix
/// (a flags byte and a big-endian length) and its payload, and counts when its prefix
/// begins, as Envoy's gRPC frame inspector (`Grpc::FrameInspector`, behind the
/// `grpc_stats` filter Istio puts on every HTTP listener for its
/// `istio_request_messages_total` and `istio_response_messages_total`) counts them. A frame
/// whose flags byte has its high bit set is gRPC-Web's trailers, not a message (Istio's
/// `grpc_web` filter turns them into trailers before the counting).
///
/// The bytes must be fed in order; a body read in pieces may be fed in any split.
///
/// ```
/// use mesh_core::grpc::MessageCounter;
///
/// let mut c = MessageCounter::default();
/// c.feed(b"\0\0\0\0\x02hi\0\0\0"); // one message, and the start of a second
/// assert_eq!(c.count(), 2);
/// c.feed(b"\0\x01x");
/// assert_eq!(c.count(), 2);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounter {
    count: u64,
    /// Bytes of the current prefix read (0: the next byte begins a message).
    prefix: u8,
    /// The length being read from the current prefix.
    length: u32,
    /// Bytes of the current message's payload still to come.
    payload: u64,
}

impl MessageCounter {
    /// Counts what `data`, the next bytes of the body, holds.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload > 0 {
                let n = usize::try_from(self.payload)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.payload -= n as u64;
                data = &data[n..];
                continue;
            }
            if self.prefix == 0 {
                if data[0] & 0x80 == 0 {
                    self.count += 1;
                }
                self.length = 0;
            } else {
                self.length = (self.length << 8) | u32::from(data[0]);
            }
            self.prefix += 1;
            data = &data[1..];
            if self.prefix == 5 {
                self.prefix = 0;
                self.payload = u64::from(self.length);
            }
        }
    }

    /// The messages begun so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshBody;
    use crate::ext::{UpstreamReset, local_reply};
    use crate::flags::ResponseFlags;
    use http_body_util::{BodyExt, Empty};
    use tower::{Layer, ServiceExt, service_fn};

    type Res = Response<MeshBody<Empty<bytes::Bytes>>>;

    async fn answer(grpc: bool, reply: fn() -> Res) -> (Res, bytes::Bytes) {
        let svc = GrpcLocalReplyLayer.layer(service_fn(move |_req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(reply())
        }));
        let mut req = Request::new(());
        *req.method_mut() = http::Method::POST;
        if grpc {
            req.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc+proto"),
            );
        }
        let res = svc.oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, MeshBody::local(bytes.clone())),
            bytes,
        )
    }

    #[tokio::test]
    async fn a_grpc_requests_local_replies_are_grpc_statuses_as_envoys() {
        // as envoy 1.40 answered them (benches/conformance/envoy_diff.py)
        let uh = || {
            local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::NO_HEALTHY_UPSTREAM,
                "no healthy upstream",
            )
        };
        let (res, body) = answer(true, uh).await;
        assert_eq!(res.status(), 200);
        assert!(body.is_empty());
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(res.headers()["grpc-message"], "no healthy upstream");
        assert_eq!(
            crate::ext::flags_of(&res),
            ResponseFlags::NO_HEALTHY_UPSTREAM,
            "the flag stays"
        );
        // no route: 12 (UNIMPLEMENTED), no message for an empty body
        let nr = || local_reply(StatusCode::NOT_FOUND, ResponseFlags::NO_ROUTE, "");
        let (res, _) = answer(true, nr).await;
        assert_eq!(res.headers()["grpc-status"], "12");
        assert!(!res.headers().contains_key("grpc-message"));
        // a reset: its words, and the reason stays for the access log
        let uc = || {
            UpstreamReset::ConnectionTermination.reply(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                false,
            )
        };
        let (res, _) = answer(true, uc).await;
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(
            res.headers()["grpc-message"],
            UpstreamReset::ConnectionTermination.body(false)
        );
        assert!(res.extensions().get::<UpstreamReset>().is_some());
        // an HTTP request's reply is left alone
        let (res, body) = answer(false, uh).await;
        assert_eq!(res.status(), 503);
        assert_eq!(body, "no healthy upstream");
        // an upstream's answer is left alone
        let upstream = || {
            let mut r = Response::new(MeshBody::local(bytes::Bytes::from_static(b"x")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        };
        let (res, _) = answer(true, upstream).await;
        assert_eq!(res.status(), 503);
        assert!(!res.headers().contains_key("grpc-status"));
    }

    #[tokio::test]
    async fn a_routes_direct_responses_are_grpc_statuses_as_envoys() {
        use crate::ext::ResponseCodeDetails;
        // a directResponse: its body is the message, less one trailing newline (Envoy's
        // sendLocalReply); not UTF-8, percent-encoded
        let direct = || {
            let body = bytes::Bytes::from_static(b"down \xff\n");
            let mut r = Response::new(MeshBody::local(body.clone()));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            ResponseCodeDetails::mark_direct(&mut r, body);
            r
        };
        let (res, body) = answer(true, direct).await;
        assert_eq!((res.status(), body.len()), (StatusCode::OK, 0));
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(res.headers()["grpc-message"], "down %FF");
        assert_eq!(
            res.extensions().get::<ResponseCodeDetails>(),
            Some(&ResponseCodeDetails::direct_response())
        );
        // a redirect: UNKNOWN, no message, its location kept (as envoy 1.40 answered)
        let redirect = || {
            let mut r = Response::new(MeshBody::local(bytes::Bytes::new()));
            *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
            r.headers_mut().insert(
                http::header::LOCATION,
                HeaderValue::from_static("http://b/"),
            );
            ResponseCodeDetails::mark_direct(&mut r, bytes::Bytes::new());
            r
        };
        let (res, _) = answer(true, redirect).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "2");
        assert!(!res.headers().contains_key("grpc-message"));
        assert_eq!(res.headers()["location"], "http://b/");
        // an HTTP caller's is left alone
        let (res, body) = answer(false, direct).await;
        assert_eq!(
            (res.status().as_u16(), &body[..]),
            (503, &b"down \xff\n"[..])
        );
    }

    #[test]
    fn grpc_requests_are_told_by_their_content_type_as_envoys_and_their_method() {
        // Envoy's hasGrpcContentType: exact, or `+` a suffix
        let h = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(v));
            has_grpc_content_type(&h)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(!h("application/grpc;charset=utf-8"));
        assert!(!h("application/grpc-web"));
        assert!(!h("application/json"));
        assert!(!has_grpc_content_type(&HeaderMap::new()));
        let req = |m: &str| {
            Request::builder()
                .method(m)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap()
        };
        assert!(is_grpc_request(&req("POST")));
        assert!(!is_grpc_request(&req("GET")), "a gRPC call is a POST");
    }

    #[test]
    fn grpc_messages_are_percent_encoded_as_envoys() {
        assert_eq!(grpc_message("no healthy upstream"), "no healthy upstream");
        assert_eq!(grpc_message("100% bad\nline é"), "100%25 bad%0Aline %C3%A9");
    }

    #[test]
    fn messages_are_counted_across_any_split_of_the_body() {
        // three messages (2, 0 and 300 bytes of payload), fed whole and in every split
        let mut body = Vec::new();
        for payload in [&b"hi"[..], &b""[..], &[7u8; 300][..]] {
            body.push(0);
            body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            body.extend_from_slice(payload);
        }
        let mut whole = MessageCounter::default();
        whole.feed(&body);
        assert_eq!(whole.count(), 3);
        for cut in 0..body.len() {
            let mut c = MessageCounter::default();
            c.feed(&body[..cut]);
            c.feed(&body[cut..]);
            assert_eq!(c.count(), 3, "cut at {cut}");
        }
        let mut bytewise = MessageCounter::default();
        for b in &body {
            bytewise.feed(std::slice::from_ref(b));
        }
        assert_eq!(bytewise, whole);
        // a message counts when its prefix begins
        let mut c = MessageCounter::default();
        c.feed(&body[..1]);
        assert_eq!(c.count(), 1);
        // gRPC-Web's trailers frame (high bit of the flags) is not a message
        let mut web = MessageCounter::default();
        web.feed(b"\x00\0\0\0\x01a\x80\0\0\0\x0fgrpc-status:0\r\n");
        assert_eq!(web.count(), 1);
    }
}
