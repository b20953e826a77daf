//! The access log's CEL filter: Istio's Telemetry `accessLogging[].filter.expression`,
//! which Istio hands to Envoy's CEL access-log filter (`envoy.access_loggers.
//! extension_filters.cel`). A line is written when the expression is `true`; an expression
//! that fails (an attribute this request lacks, a type error) or yields anything else skips
//! the line, as Envoy's filter does.
//!
//! The attributes are Envoy's (its "Attributes" reference), those the proxy knows of a
//! request or a connection:
//!
//! | attribute | type | value |
//! |---|---|---|
//! | `request.path` | string | the path with its query, as the client sent it |
//! | `request.url_path` | string | the path without the query |
//! | `request.host` | string | `Host` / `:authority` |
//! | `request.scheme` | string | `https` over TLS, else `http` |
//! | `request.method` | string | |
//! | `request.headers` | map | the request's headers as the proxy sent them upstream (after the mesh's changes), else as they arrived (a reply of the mesh's own); names lowercase, repeated fields joined with `,` |
//! | `request.referer`, `request.useragent`, `request.id` | string | `referer`, `user-agent`, `x-request-id` |
//! | `request.protocol` | string | `HTTP/1.1`, `HTTP/2` |
//! | `request.duration` | duration | from the first byte to the end of the response |
//! | `request.size` | int | the request body's bytes |
//! | `response.code` | int | absent when no response was sent |
//! | `response.code_details` | string | Envoy's `%RESPONSE_CODE_DETAILS%` |
//! | `response.grpc_status` | int | a gRPC response's status |
//! | `response.size` | int | the response body's bytes |
//! | `source.address`, `source.port` | string, int | the downstream peer (`ip:port`, and its port) |
//! | `destination.address`, `destination.port` | string, int | the listener's address (`ip:port`) |
//! | `connection.mtls` | bool | the downstream presented a client certificate (mTLS) |
//! | `connection.requested_server_name` | string | the downstream's SNI |
//! | `upstream.address`, `upstream.port` | string, int | the endpoint the request went to (`ip:port`) |
//! | `upstream.local_address` | string | the local address of the upstream connection |
//! | `upstream.transport_failure_reason` | string | why the upstream connection failed |
//! | `xds.cluster_name`, `xds.route_name` | string | Istio's cluster name, the route's `name` |
//!
//! A TCP connection's line has `request.size` and `response.size` (the bytes each way) of
//! `request.*` and `response.*`, and the others.
//!
//! Where cel-rust differs from Envoy's CEL (cel-cpp): a header absent from
//! `request.headers` reads as `null` rather than an error (`request.headers['x'] != 'y'`
//! is `true` without the header; `has(request.headers.x)` and `'x' in request.headers` ask
//! for it); header names are matched as written (write them lowercase); and an error on the
//! left of `||` is the result, where CEL makes `error || true` true. An expression is at
//! most [`MAX_FILTER_LEN`](mesh_core::telemetry::MAX_FILTER_LEN) bytes and
//! [`MAX_FILTER_DEPTH`](mesh_core::telemetry::MAX_FILTER_DEPTH) levels, with no message
//! literal ([`compile_filter`]); a panic of the
//! evaluator skips the filter's lines from then on (logged once).
//! [`mesh_core::telemetry::unsupported_attributes`] names what an expression reads that none
//! of this has (the support table warns about it; the list is
//! [`mesh_core::telemetry::FILTER_ATTRIBUTES`]).
//!
//! ```
//! use mesh_telemetry::access_log::LogEntry;
//! use mesh_telemetry::log_filter::LogFilter;
//!
//! let f = LogFilter::new("response.code >= 400").unwrap();
//! let mut e = LogEntry::new(std::time::UNIX_EPOCH);
//! e.method = "GET";
//! e.response_code = 503;
//! assert!(f.matches(&e));
//! e.response_code = 200;
//! assert!(!f.matches(&e));
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use cel::{Context, Program, Value};
use mesh_core::telemetry::{FILTER_ATTRIBUTES, attribute_references, compile_filter};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::access_log::LogEntry;

/// A compiled filter (see the [module docs](self)).
#[derive(Debug)]
pub struct LogFilter {
    program: Program,
    expression: Box<str>,
    /// The attributes the expression reads, one bit per
    /// [`FILTER_ATTRIBUTES`](mesh_core::telemetry::FILTER_ATTRIBUTES) entry: only those are
    /// filled for a line.
    want: u64,
    /// The evaluator panicked on this expression once (a macro on a value of the wrong
    /// type, which cel-rust does not handle yet): every line is skipped from then on, as
    /// for an error, without evaluating it again.
    broken: AtomicBool,
}

thread_local! {
    /// CEL's standard functions, registered once per thread: each evaluation is a scope
    /// of its own over them.
    static ROOT: Context<'static> = Context::default();
}

impl LogFilter {
    /// Compiles `expression`; the error is CEL's parser's.
    pub fn new(expression: &str) -> Result<LogFilter, String> {
        let program = compile_filter(expression)?;
        let mut want = 0u64;
        for (root, name) in attribute_references(expression) {
            for (i, attr) in FILTER_ATTRIBUTES.iter().enumerate() {
                let Some((r, n)) = attr.split_once('.') else {
                    continue;
                };
                // a root read otherwise than by a name (`request['path']`) gets all of it
                if r == root && name.as_deref().is_none_or(|name| name == n) {
                    want |= 1 << i;
                }
            }
        }
        Ok(LogFilter {
            program,
            expression: expression.into(),
            want,
            broken: AtomicBool::new(false),
        })
    }

    /// Whether the expression reads the request's headers (the record layer then keeps
    /// them for the line: [`crate::record::Interest::Headers`]).
    pub fn needs_headers(&self) -> bool {
        self.want & (1 << REQUEST_HEADERS | 1 << REQUEST_REFERER) != 0
    }

    /// Whether `entry`'s line is written: the expression is `true`.
    pub fn matches(&self, entry: &LogEntry<'_>) -> bool {
        if self.broken.load(Ordering::Relaxed) {
            return false;
        }
        let run = || {
            ROOT.try_with(|root| {
                let mut ctx = root.new_inner_scope();
                for (name, value) in attributes(entry, self.want) {
                    ctx.add_variable_from_value(name, value);
                }
                matches!(self.program.execute(&ctx), Ok(Value::Bool(true)))
            })
            .unwrap_or(false)
        };
        // the evaluator has `todo!()`s a valid expression can reach: a panic must not take
        // the request's task down with it
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(yes) => yes,
            Err(_) => {
                if !self.broken.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        expression = %self.expression,
                        "the access log filter failed in the CEL evaluator; its lines are skipped from now on"
                    );
                }
                false
            }
        }
    }
}

fn map(entries: Vec<(&'static str, Value)>) -> Value {
    let m: HashMap<String, Value> = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Value::from(m)
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

/// `address` (`ip:port`, as Envoy's attribute) and `port`.
fn address(out: &mut Vec<(&'static str, Value)>, a: Option<SocketAddr>) {
    if let Some(a) = a {
        out.push(("address", string(&a.to_string())));
        out.push(("port", Value::Int(i64::from(a.port()))));
    }
}

// The indices of the attributes in `FILTER_ATTRIBUTES` (a test checks each one).
const REQUEST_PATH: u32 = 0;
const REQUEST_URL_PATH: u32 = 1;
const REQUEST_HOST: u32 = 2;
const REQUEST_SCHEME: u32 = 3;
const REQUEST_METHOD: u32 = 4;
const REQUEST_HEADERS: u32 = 5;
const REQUEST_REFERER: u32 = 6;
const REQUEST_USERAGENT: u32 = 7;
const REQUEST_ID: u32 = 8;
const REQUEST_PROTOCOL: u32 = 9;
const REQUEST_DURATION: u32 = 10;
const REQUEST_SIZE: u32 = 11;
const RESPONSE_CODE: u32 = 12;
const RESPONSE_CODE_DETAILS: u32 = 13;
const RESPONSE_GRPC_STATUS: u32 = 14;
const RESPONSE_SIZE: u32 = 15;
const SOURCE: u32 = 16;
const DESTINATION: u32 = 18;
const CONNECTION_MTLS: u32 = 20;
const CONNECTION_SNI: u32 = 21;
const UPSTREAM: u32 = 22;
const UPSTREAM_LOCAL_ADDRESS: u32 = 24;
const UPSTREAM_FAILURE: u32 = 25;
const XDS_CLUSTER: u32 = 26;
const XDS_ROUTE: u32 = 27;

/// The bits of attributes `first..first + n`.
const fn bits(first: u32, n: u32) -> u64 {
    ((1u64 << n) - 1) << first
}

/// The attributes of `e` the filter reads (`want`), by root.
fn attributes(e: &LogEntry<'_>, want: u64) -> Vec<(&'static str, Value)> {
    let w = |i: u32| want & (1 << i) != 0;
    let mut roots = Vec::with_capacity(2);
    // an HTTP request's line; a TCP connection's (no method) has the sizes only
    let http = !e.method.is_empty();
    if !http {
        if want & bits(REQUEST_PATH, 12) != 0 {
            let size = i64::try_from(e.bytes_received).unwrap_or(i64::MAX);
            roots.push(("request", map(vec![("size", Value::Int(size))])));
        }
        if want & bits(RESPONSE_CODE, 4) != 0 {
            let size = i64::try_from(e.bytes_sent).unwrap_or(i64::MAX);
            roots.push(("response", map(vec![("size", Value::Int(size))])));
        }
    }
    if http && want & bits(REQUEST_PATH, 12) != 0 {
        let mut req = Vec::new();
        if w(REQUEST_PATH) {
            req.push(("path", string(e.path)));
        }
        if w(REQUEST_URL_PATH) {
            let p = e.path.split_once('?').map_or(e.path, |(p, _)| p);
            req.push(("url_path", string(p)));
        }
        if w(REQUEST_METHOD) {
            req.push(("method", string(e.method)));
        }
        if w(REQUEST_PROTOCOL) {
            req.push(("protocol", string(e.protocol)));
        }
        if w(REQUEST_SCHEME) {
            let scheme = if e.downstream_tls { "https" } else { "http" };
            req.push(("scheme", string(scheme)));
        }
        if w(REQUEST_SIZE) {
            let size = i64::try_from(e.bytes_received).unwrap_or(i64::MAX);
            req.push(("size", Value::Int(size)));
        }
        if let Some(h) = e.authority.filter(|_| w(REQUEST_HOST)) {
            req.push(("host", string(h)));
        }
        if let Some(v) = e.user_agent.filter(|_| w(REQUEST_USERAGENT)) {
            req.push(("useragent", string(v)));
        }
        if let Some(v) = e.request_id.filter(|_| w(REQUEST_ID)) {
            req.push(("id", string(v)));
        }
        if w(REQUEST_DURATION)
            && let Some(d) = e.duration.and_then(|d| chrono::Duration::from_std(d).ok())
        {
            req.push(("duration", Value::Duration(d)));
        }
        if let Some(headers) = e
            .request_headers
            .filter(|_| w(REQUEST_HEADERS) || w(REQUEST_REFERER))
        {
            let mut m: HashMap<String, String> = HashMap::new();
            for (n, v) in headers {
                let v = String::from_utf8_lossy(v.as_bytes());
                m.entry(n.as_str().to_string())
                    .and_modify(|s| {
                        s.push(',');
                        s.push_str(&v);
                    })
                    .or_insert_with(|| v.into_owned());
            }
            if let Some(r) = m.get("referer").filter(|_| w(REQUEST_REFERER)) {
                req.push(("referer", string(r)));
            }
            if w(REQUEST_HEADERS) {
                let m: HashMap<String, Value> =
                    m.into_iter().map(|(k, v)| (k, string(&v))).collect();
                req.push(("headers", Value::from(m)));
            }
        }
        roots.push(("request", map(req)));
    }
    if http && want & bits(RESPONSE_CODE, 4) != 0 {
        let mut resp = Vec::new();
        if w(RESPONSE_SIZE) {
            let size = i64::try_from(e.bytes_sent).unwrap_or(i64::MAX);
            resp.push(("size", Value::Int(size)));
        }
        if w(RESPONSE_CODE) && e.response_code != 0 {
            resp.push(("code", Value::Int(i64::from(e.response_code))));
        }
        if w(RESPONSE_CODE_DETAILS) && !e.response_code_details.is_empty() {
            resp.push(("code_details", string(e.response_code_details)));
        }
        if let Some(s) = e.grpc_status.filter(|_| w(RESPONSE_GRPC_STATUS)) {
            resp.push(("grpc_status", Value::Int(i64::from(s))));
        }
        roots.push(("response", map(resp)));
    }
    if want & bits(SOURCE, 2) != 0 {
        let mut source = Vec::new();
        address(&mut source, e.downstream_remote_address);
        roots.push(("source", map(source)));
    }
    if want & bits(DESTINATION, 2) != 0 {
        let mut destination = Vec::new();
        address(&mut destination, e.downstream_local_address);
        roots.push(("destination", map(destination)));
    }
    if want & bits(CONNECTION_MTLS, 2) != 0 {
        let mut connection = vec![("mtls", Value::Bool(e.mtls))];
        if let Some(s) = e.requested_server_name.filter(|_| w(CONNECTION_SNI)) {
            connection.push(("requested_server_name", string(s)));
        }
        roots.push(("connection", map(connection)));
    }
    if want & bits(UPSTREAM, 4) != 0 {
        let mut upstream = Vec::new();
        address(&mut upstream, e.upstream_host);
        if let Some(a) = e
            .upstream_local_address
            .filter(|_| w(UPSTREAM_LOCAL_ADDRESS))
        {
            upstream.push(("local_address", string(&a.to_string())));
        }
        if let Some(r) = e
            .upstream_transport_failure_reason
            .filter(|_| w(UPSTREAM_FAILURE))
        {
            upstream.push(("transport_failure_reason", string(r)));
        }
        roots.push(("upstream", map(upstream)));
    }
    if want & bits(XDS_CLUSTER, 2) != 0 {
        let mut xds = Vec::new();
        if let Some(c) = e.upstream_cluster.filter(|_| w(XDS_CLUSTER)) {
            xds.push(("cluster_name", string(c)));
        }
        if let Some(r) = e.route_name.filter(|_| w(XDS_ROUTE)) {
            xds.push(("route_name", string(r)));
        }
        roots.push(("xds", map(xds)));
    }
    roots
}

#[cfg(test)]
mod tests;
