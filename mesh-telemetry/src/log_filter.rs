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
//! | `upstream_peer.workload`, `.namespace`, `.app`, `.version`, `.service`, `.revision` | string | Istio's peer metadata of the endpoint, from the configuration (its WorkloadEntry's name, its namespace, `app`/`version` labels, canonical service and revision, as the metrics' `destination_*`; no metadata exchange) |
//! | `upstream_peer.labels` | map | the endpoint's labels |
//! | `downstream_peer.namespace` | string | the peer's namespace, from its certificate (inbound, over mTLS) |
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

use cel::objects::Key;
use cel::{Context, Program, Value};
use mesh_core::telemetry::{FILTER_ATTRIBUTES, attribute_references, compile_filter};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::access_log::LogEntry;

/// A compiled filter (see the [module docs](self)).
#[derive(Debug)]
pub struct LogFilter(CelExpression);

/// A compiled CEL expression over a [`LogEntry`]'s attributes: an access log's filter, a
/// metric label's value ([`crate::metrics`]).
#[derive(Debug)]
pub(crate) struct CelExpression {
    program: Program,
    expression: Box<str>,
    /// The attributes the expression reads, one bit per
    /// [`FILTER_ATTRIBUTES`](mesh_core::telemetry::FILTER_ATTRIBUTES) entry: only those are
    /// filled for a line.
    want: u64,
    /// The evaluator panicked on this expression once (a macro on a value of the wrong
    /// type, which cel-rust does not handle yet): it fails from then on, without being
    /// evaluated again.
    broken: AtomicBool,
    /// The expression is one attribute or header, read without the evaluator.
    direct: Option<Direct>,
}

thread_local! {
    /// CEL's standard functions, registered once per thread: each evaluation is a scope
    /// of its own over them.
    static ROOT: Context<'static> = Context::default();
}

impl CelExpression {
    /// Compiles `expression` ([`compile_filter`]'s bounds); the error is CEL's parser's.
    pub(crate) fn new(expression: &str) -> Result<CelExpression, String> {
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
        Ok(CelExpression {
            direct: Direct::of(&program),
            program,
            expression: expression.into(),
            want,
            broken: AtomicBool::new(false),
        })
    }

    /// Whether the expression reads the request's headers.
    pub(crate) fn needs_headers(&self) -> bool {
        self.want & (1 << REQUEST_HEADERS | 1 << REQUEST_REFERER) != 0
    }

    /// Whether the expression reads any attribute of the request beyond its outcome.
    pub(crate) fn reads_attributes(&self) -> bool {
        self.want != 0
    }

    /// The expression's value over `entry`'s attributes; `None` when it fails (an error,
    /// or a panic of the evaluator: logged once, and every later evaluation fails).
    pub(crate) fn evaluate(&self, entry: &LogEntry<'_>) -> Option<Value> {
        if let Some(d) = &self.direct {
            return d.value(entry);
        }
        if self.broken.load(Ordering::Relaxed) {
            return None;
        }
        let run = || {
            ROOT.try_with(|root| {
                let mut ctx = root.new_inner_scope();
                for (name, value) in attributes(entry, self.want) {
                    ctx.add_variable_from_value(name, value);
                }
                self.program.execute(&ctx).ok()
            })
            .ok()
            .flatten()
        };
        // the evaluator has `todo!()`s a valid expression can reach: a panic must not take
        // the request's task down with it
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(v) => v,
            Err(_) => {
                if !self.broken.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        expression = %self.expression,
                        "a CEL expression failed in the evaluator; it fails from now on"
                    );
                }
                None
            }
        }
    }
}

impl LogFilter {
    /// Compiles `expression`; the error is CEL's parser's.
    pub fn new(expression: &str) -> Result<LogFilter, String> {
        CelExpression::new(expression).map(LogFilter)
    }

    /// Whether the expression reads the request's headers (the record layer then keeps
    /// them for the line: [`crate::record::Interest::Headers`]).
    pub fn needs_headers(&self) -> bool {
        self.0.needs_headers()
    }

    /// Whether `entry`'s line is written: the expression is `true` (an error, a panic of
    /// the evaluator — after which the filter's lines are skipped — or any other value
    /// skips it).
    pub fn matches(&self, entry: &LogEntry<'_>) -> bool {
        matches!(self.0.evaluate(entry), Some(Value::Bool(true)))
    }
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
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
const SOURCE_ADDRESS: u32 = 16;
const SOURCE_PORT: u32 = 17;
const DESTINATION_ADDRESS: u32 = 18;
const DESTINATION_PORT: u32 = 19;
const CONNECTION_MTLS: u32 = 20;
const CONNECTION_SNI: u32 = 21;
const UPSTREAM_ADDRESS: u32 = 22;
const UPSTREAM_PORT: u32 = 23;
const UPSTREAM_LOCAL_ADDRESS: u32 = 24;
const UPSTREAM_FAILURE: u32 = 25;
const XDS_CLUSTER: u32 = 26;
const XDS_ROUTE: u32 = 27;
const UPSTREAM_PEER_WORKLOAD: u32 = 28;
const UPSTREAM_PEER_NAMESPACE: u32 = 29;
const UPSTREAM_PEER_APP: u32 = 30;
const UPSTREAM_PEER_VERSION: u32 = 31;
const UPSTREAM_PEER_SERVICE: u32 = 32;
const UPSTREAM_PEER_REVISION: u32 = 33;
const UPSTREAM_PEER_LABELS: u32 = 34;
const DOWNSTREAM_PEER_NAMESPACE: u32 = 35;

/// A CEL map of `entries` (built as cel-rust keeps it: no second map to convert).
fn cel_map(entries: HashMap<Key, Value>) -> Value {
    Value::Map(cel::objects::Map {
        map: Arc::new(entries),
    })
}

/// A request's headers as one value per name (repeated fields joined with `,`, as Envoy's
/// attribute), names as `http` has them (lowercase).
fn header_map(headers: &http::HeaderMap) -> Value {
    let mut m: HashMap<Key, Value> = HashMap::with_capacity(headers.keys_len());
    let mut put = |name: &http::HeaderName, v: String| {
        m.insert(
            Key::String(Arc::new(name.as_str().to_owned())),
            Value::String(Arc::new(v)),
        );
    };
    // a name's values come one after another (`HeaderMap`'s order): joined without a
    // look-up per name
    let mut current: Option<(&http::HeaderName, String)> = None;
    for (name, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes());
        match &mut current {
            Some((n, joined)) if *n == name => {
                joined.push(',');
                joined.push_str(&v);
            }
            _ => {
                if let Some((n, joined)) = current.take() {
                    put(n, joined);
                }
                current = Some((name, v.into_owned()));
            }
        }
    }
    if let Some((n, joined)) = current {
        put(n, joined);
    }
    cel_map(m)
}

/// One header's value (repeated fields joined with `,`); `None` without it.
fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in values {
        s.push(',');
        s.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(s)
}

/// The value of attribute `i` (its index in
/// [`FILTER_ATTRIBUTES`](mesh_core::telemetry::FILTER_ATTRIBUTES)) of `e`; `None` when `e`
/// has none. A TCP connection's line (no method) has the sizes of `request.*` and
/// `response.*`, and the other roots.
fn attribute(e: &LogEntry<'_>, i: u32) -> Option<Value> {
    let http = !e.method.is_empty();
    let address = |a: Option<SocketAddr>| a.map(|a| string(&a.to_string()));
    let port = |a: Option<SocketAddr>| a.map(|a| Value::Int(i64::from(a.port())));
    match i {
        REQUEST_SIZE => Some(int(e.bytes_received)),
        RESPONSE_SIZE => Some(int(e.bytes_sent)),
        _ if !http && i < SOURCE_ADDRESS => None,
        REQUEST_PATH => Some(string(e.path)),
        REQUEST_URL_PATH => Some(string(e.path.split_once('?').map_or(e.path, |(p, _)| p))),
        REQUEST_HOST => e.authority.map(string),
        REQUEST_SCHEME => Some(string(if e.downstream_tls { "https" } else { "http" })),
        REQUEST_METHOD => Some(string(e.method)),
        REQUEST_HEADERS => e.request_headers.map(header_map),
        REQUEST_REFERER => e
            .request_headers
            .and_then(|h| header(h, "referer"))
            .map(|r| Value::String(Arc::new(r))),
        REQUEST_USERAGENT => e.user_agent.map(string),
        REQUEST_ID => e.request_id.map(string),
        REQUEST_PROTOCOL => Some(string(e.protocol)),
        REQUEST_DURATION => e
            .duration
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(Value::Duration),
        RESPONSE_CODE => (e.response_code != 0).then(|| Value::Int(i64::from(e.response_code))),
        RESPONSE_CODE_DETAILS => {
            (!e.response_code_details.is_empty()).then(|| string(e.response_code_details))
        }
        RESPONSE_GRPC_STATUS => e.grpc_status.map(|s| Value::Int(i64::from(s))),
        SOURCE_ADDRESS => address(e.downstream_remote_address),
        SOURCE_PORT => port(e.downstream_remote_address),
        DESTINATION_ADDRESS => address(e.downstream_local_address),
        DESTINATION_PORT => port(e.downstream_local_address),
        CONNECTION_MTLS => Some(Value::Bool(e.mtls)),
        CONNECTION_SNI => e.requested_server_name.map(string),
        UPSTREAM_ADDRESS => address(e.upstream_host),
        UPSTREAM_PORT => port(e.upstream_host),
        UPSTREAM_LOCAL_ADDRESS => address(e.upstream_local_address),
        UPSTREAM_FAILURE => e.upstream_transport_failure_reason.map(string),
        XDS_CLUSTER => e.upstream_cluster.map(string),
        XDS_ROUTE => e.route_name.map(string),
        // Istio's peer metadata: the endpoint's, from the configuration (no metadata
        // exchange); the downstream's namespace, from its certificate
        UPSTREAM_PEER_WORKLOAD..=UPSTREAM_PEER_LABELS => {
            let m = e.upstream_meta?;
            let workload = m.workload.as_deref();
            match i {
                UPSTREAM_PEER_WORKLOAD => workload.map(string),
                UPSTREAM_PEER_NAMESPACE => Some(string(&m.namespace)),
                UPSTREAM_PEER_APP => crate::metrics::app(&m.labels).map(string),
                UPSTREAM_PEER_VERSION => crate::metrics::version(&m.labels).map(string),
                UPSTREAM_PEER_SERVICE => {
                    crate::metrics::canonical_name(&m.labels, workload).map(string)
                }
                UPSTREAM_PEER_REVISION => {
                    Some(string(crate::metrics::canonical_revision(&m.labels)))
                }
                _ => {
                    let labels: HashMap<Key, Value> = m
                        .labels
                        .iter()
                        .map(|(k, v)| (Key::String(Arc::new(k.clone())), string(v)))
                        .collect();
                    Some(cel_map(labels))
                }
            }
        }
        DOWNSTREAM_PEER_NAMESPACE => e.downstream_peer.map(|p| string(p.id().namespace())),
        _ => None,
    }
}

/// The attributes of `e` the expression reads (`want`), by root: a root with any attribute
/// wanted is a map of those `e` has.
fn attributes(e: &LogEntry<'_>, want: u64) -> Vec<(&'static str, Value)> {
    let mut roots: Vec<(&'static str, HashMap<Key, Value>)> = Vec::with_capacity(2);
    for (i, attr) in FILTER_ATTRIBUTES.iter().enumerate() {
        let i = i as u32;
        if want & (1 << i) == 0 {
            continue;
        }
        let Some((root, name)) = attr.split_once('.') else {
            continue;
        };
        let at = match roots.iter().position(|(r, _)| *r == root) {
            Some(at) => at,
            None => {
                roots.push((root, HashMap::with_capacity(4)));
                roots.len() - 1
            }
        };
        if let Some(v) = attribute(e, i) {
            roots[at]
                .1
                .insert(Key::String(Arc::new(name.to_owned())), v);
        }
    }
    roots.into_iter().map(|(r, m)| (r, cel_map(m))).collect()
}

/// A scalar value's text, as Envoy's `print` and CEL's `string()` write it (a string as it
/// is, a number in decimal, a bool as `true`/`false`, a duration as `1.5s`, a timestamp in
/// RFC 3339); `None` for the others (a list, a map, `null`).
pub(crate) fn text(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) => String::clone(s),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => six_digits(*f),
        Value::Duration(d) => duration_text(*d),
        Value::Timestamp(t) => t.to_rfc3339(),
        _ => return None,
    })
}

/// A double as abseil's `StrCat` writes it: six significant digits, `%g`'s form
/// (`0.1`, `1.5`, `1.23457e+06`, `inf`, `nan`).
fn six_digits(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // the exponent after rounding to six significant digits
    let sci = format!("{f:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        match s.contains('.') {
            true => s.trim_end_matches('0').trim_end_matches('.').to_owned(),
            false => s.to_owned(),
        }
    };
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        trim(&format!("{f:.decimals$}"))
    }
}

/// A duration as abseil's `FormatDuration` writes it (`1h2m3.5s`, `250ms`, `0`).
fn duration_text(d: chrono::Duration) -> String {
    let Some(ns) = d.num_nanoseconds() else {
        return format!("{}s", d.num_seconds());
    };
    if ns == 0 {
        return "0".to_owned();
    }
    let (sign, ns) = if ns < 0 { ("-", -ns) } else { ("", ns) };
    let unit = |v: i64, per: i64, name: &str| {
        let (whole, frac) = (v / per, v % per);
        let mut s = whole.to_string();
        if frac != 0 {
            let digits = per.to_string().len() - 1;
            let f = format!("{frac:0digits$}");
            s.push('.');
            s.push_str(f.trim_end_matches('0'));
        }
        s.push_str(name);
        s
    };
    let body = match ns {
        ns if ns < 1_000 => format!("{ns}ns"),
        ns if ns < 1_000_000 => unit(ns, 1_000, "us"),
        ns if ns < 1_000_000_000 => unit(ns, 1_000_000, "ms"),
        ns => {
            let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
            let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
            let mut s = String::new();
            if h > 0 {
                s.push_str(&format!("{h}h"));
            }
            if m > 0 {
                s.push_str(&format!("{m}m"));
            }
            if rest > 0 {
                s.push_str(&unit(rest, 1_000_000_000, "s"));
            }
            s
        }
    };
    format!("{sign}{body}")
}

/// An expression read without CEL's evaluator: one attribute (`request.host`), a string or
/// integer attribute as a string (`string(destination.port)`), or one request header
/// (`request.headers['x-user']`): what label overrides read most, at a fraction of the
/// evaluator's cost (its context, the attribute maps).
#[derive(Debug, Clone)]
enum Direct {
    Attribute(u32),
    /// `string()` of an attribute.
    Text(u32),
    Header(String),
}

impl Direct {
    /// The shape of `program`'s tree, when it is one of [`Direct`]'s.
    fn of(program: &Program) -> Option<Direct> {
        use cel::common::ast::Expr;
        use cel::common::value::CelVal;
        let mut e = &program.expression().expr;
        let mut text = false;
        if let Expr::Call(c) = e
            && c.func_name == "string"
            && c.target.is_none()
            && c.args.len() == 1
        {
            e = &c.args[0].expr;
            text = true;
        }
        let select = |e: &Expr| match e {
            Expr::Select(s) if !s.test => match &s.operand.expr {
                Expr::Ident(root) => Some(format!("{root}.{}", s.field)),
                _ => None,
            },
            _ => None,
        };
        match e {
            Expr::Call(c) if c.func_name == "_[_]" && c.target.is_none() && c.args.len() == 2 => {
                match (select(&c.args[0].expr).as_deref(), &c.args[1].expr) {
                    // a name as `http` keeps it (lowercase): cel-rust's map matches names as
                    // written, so another name is the evaluator's to miss
                    (Some("request.headers"), Expr::Literal(CelVal::String(name)))
                        if !text && !name.bytes().any(|b| b.is_ascii_uppercase()) =>
                    {
                        Some(Direct::Header(name.clone()))
                    }
                    _ => None,
                }
            }
            Expr::Call(_) => None,
            e => {
                let path = select(e)?;
                let i = FILTER_ATTRIBUTES.iter().position(|a| *a == path)?;
                let i = u32::try_from(i).ok()?;
                // `string()` of a bool, a duration or a map: cel-rust's own (an error, its
                // text) is the evaluator's to give
                let scalar = ![CONNECTION_MTLS, REQUEST_DURATION, REQUEST_HEADERS].contains(&i);
                match text {
                    false => Some(Direct::Attribute(i)),
                    true => scalar.then_some(Direct::Text(i)),
                }
            }
        }
    }

    /// Its value over `e` (`None`: `e` has none, which CEL's evaluator would call an error;
    /// an absent header: `null`, as cel-rust's map).
    fn value(&self, e: &LogEntry<'_>) -> Option<Value> {
        match self {
            Direct::Attribute(i) => attribute(e, *i),
            Direct::Text(i) => attribute(e, *i)
                .as_ref()
                .and_then(text)
                .map(|t| Value::String(Arc::new(t))),
            Direct::Header(name) => {
                if e.method.is_empty() {
                    return None; // a TCP connection's line has no headers
                }
                let headers = e.request_headers?;
                Some(match header(headers, name) {
                    Some(v) => Value::String(Arc::new(v)),
                    None => Value::Null,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
