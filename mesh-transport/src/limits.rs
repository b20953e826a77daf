//! Connection and request limits of the engine: `ProxyBootstrap.spec.limits`.

use std::time::Duration;

/// Safety limits applied to every downstream connection and upstream connect.
///
/// The fields and defaults are those of `ProxyBootstrap.spec.limits` in the design
/// (`maxRequestHeadersKb`, `maxRequestHeadersCount`, ...); the caller maps the YAML (and its
/// duration strings) onto this struct. `Limits::default()` is the documented default set.
///
/// ```
/// use std::time::Duration;
/// use mesh_transport::Limits;
///
/// let limits = Limits { connect_timeout: Duration::from_secs(2), ..Limits::default() };
/// assert_eq!(limits.max_request_headers_kb, 60);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `maxRequestHeadersKb`: the largest request head (request line and headers) accepted, in
    /// KiB; larger gets `431 Request Header Fields Too Large` and the connection is closed.
    /// On HTTP/2 it is the advertised `SETTINGS_MAX_HEADER_LIST_SIZE`. Default: 60.
    pub max_request_headers_kb: u32,
    /// `maxRequestHeadersCount`: the most request headers accepted; more gets `431`.
    /// Default: 100.
    pub max_request_headers_count: u32,
    /// `requestHeadersTimeout`: how long an HTTP/1.1 request head may take from its first
    /// byte to its last (Envoy's `request_headers_timeout`), and how long a new connection
    /// may stay silent before its first byte (HTTP/1.1 or the HTTP/2 preface). On expiry the
    /// connection is closed. Checked at a quarter of the period (fires between 1× and
    /// 1.25×). An idle keep-alive connection is governed by `streamIdleTimeout`. Not applied
    /// to the heads that follow a chunked request body on the same connection. Default: 10s.
    pub request_headers_timeout: Duration,
    /// `streamIdleTimeout`: a downstream connection on which no byte moved in either
    /// direction for this long is closed (with its streams); so is a tunnel (WebSocket,
    /// `CONNECT`: see [`upgrade`](crate::upgrade)). Checked at a quarter of the period, so
    /// the close happens between 1× and 1.25× the timeout. Default: 300s.
    pub stream_idle_timeout: Duration,
    /// `connectTimeout`: how long the connector waits for an upstream TCP connection;
    /// on expiry the request gets `503` with flag `UF`. Default: 10s.
    pub connect_timeout: Duration,
    /// `tlsHandshakeTimeout`: the TLS handshake limit. Not used by the plaintext engine
    /// (the TLS listener in `mesh-tls` reads it). Default: 10s.
    pub tls_handshake_timeout: Duration,
    /// `http2MaxConcurrentStreams`: `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to HTTP/2
    /// clients. Default: 100.
    pub http2_max_concurrent_streams: u32,
    /// `drainTimeout`: on drain, how long in-flight requests may take to finish before the
    /// remaining connections are closed. Default: 10s.
    pub drain_timeout: Duration,
    /// `maxDownstreamConnections`: the most downstream connections open at once, counted
    /// over every engine that shares one [`DownstreamConnections`](crate::DownstreamConnections)
    /// (the whole proxy: Envoy's overload manager `global_downstream_max_connections`). A
    /// connection accepted over it is closed at once and counted. Default: 50,000.
    pub max_downstream_connections: u32,
    /// HTTP/2: streams the client may reset before the server accepted them, at once
    /// (`h2`'s `max_pending_accept_reset_streams`; over it: `GOAWAY` `ENHANCE_YOUR_CALM`).
    /// Default: 20 (`h2`'s).
    pub http2_max_pending_accept_reset_streams: u32,
    /// HTTP/2: streams the server may reset for the client's protocol errors over the
    /// connection's life (`h2`'s `max_local_error_reset_streams`; over it: `GOAWAY`
    /// `ENHANCE_YOUR_CALM`). Default: 200 (hyper's is 1024).
    pub http2_max_local_error_reset_streams: u32,
    /// HTTP/2: the HPACK dynamic table size advertised (`SETTINGS_HEADER_TABLE_SIZE`), which
    /// bounds the decoder's table. Default: 4096 (the RFC's).
    pub http2_header_table_size: u32,
    /// HTTP/2 rapid reset (CVE-2023-44487): once a connection has opened this many streams,
    /// it is closed with `GOAWAY` `ENHANCE_YOUR_CALM` when the client reset at least half of
    /// them (Envoy's `premature_reset_total_stream_count`; every client reset counts, there
    /// is no minimum stream lifetime). Default: 500 (Envoy's).
    pub http2_premature_reset_min_streams: u32,
    /// HTTP/2: PING and SETTINGS frames (not acknowledgements) a client may send within one
    /// second; more closes the connection with `GOAWAY` `ENHANCE_YOUR_CALM`. Default: 1000.
    pub http2_max_control_frames_per_second: u32,
}

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_headers_kb: 60,
            max_request_headers_count: 100,
            request_headers_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            http2_max_concurrent_streams: 100,
            drain_timeout: Duration::from_secs(10),
            max_downstream_connections: 50_000,
            http2_max_pending_accept_reset_streams: 20,
            http2_max_local_error_reset_streams: 200,
            http2_header_table_size: 4096,
            http2_premature_reset_min_streams: 500,
            http2_max_control_frames_per_second: 1000,
        }
    }
}

impl Limits {
    /// The head size limit in bytes (`max_request_headers_kb` × 1024, at least 1 KiB).
    pub fn max_request_head_bytes(&self) -> usize {
        (self.max_request_headers_kb.max(1) as usize).saturating_mul(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let l = Limits::default();
        assert_eq!(l.max_request_headers_kb, 60);
        assert_eq!(l.max_request_headers_count, 100);
        assert_eq!(l.request_headers_timeout, Duration::from_secs(10));
        assert_eq!(l.stream_idle_timeout, Duration::from_secs(300));
        assert_eq!(l.connect_timeout, Duration::from_secs(10));
        assert_eq!(l.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(l.http2_max_concurrent_streams, 100);
        assert_eq!(l.drain_timeout, Duration::from_secs(10));
        assert_eq!(l.max_request_head_bytes(), 60 * 1024);
        assert_eq!(l.max_downstream_connections, 50_000);
        assert_eq!(l.http2_premature_reset_min_streams, 500);
    }
}
