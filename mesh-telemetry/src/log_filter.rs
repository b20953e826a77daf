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
//! | `request.headers` | map | the request's headers as they arrived (names lowercase; repeated fields joined with `,`) |
//! | `request.referer`, `request.useragent`, `request.id` | string | `referer`, `user-agent`, `x-request-id` |
//! | `request.protocol` | string | `HTTP/1.1`, `HTTP/2` |
//! | `request.duration` | duration | from the first byte to the end of the response |
//! | `request.size` | int | the request body's bytes |
//! | `response.code` | int | absent when no response was sent |
//! | `response.code_details` | string | Envoy's `%RESPONSE_CODE_DETAILS%` |
//! | `response.grpc_status` | int | a gRPC response's status |
//! | `response.size` | int | the response body's bytes |
//! | `source.address`, `source.port` | string, int | the downstream peer |
//! | `destination.address`, `destination.port` | string, int | the listener's address |
//! | `connection.mtls` | bool | the downstream presented a client certificate (mTLS) |
//! | `connection.requested_server_name` | string | the downstream's SNI |
//! | `upstream.address`, `upstream.port` | string, int | the endpoint the request went to |
//! | `upstream.local_address` | string | the local address of the upstream connection |
//! | `upstream.transport_failure_reason` | string | why the upstream connection failed |
//! | `xds.cluster_name`, `xds.route_name` | string | Istio's cluster name, the route's `name` |
//!
//! A TCP connection's line has no `request.*` and no `response.*`; it has the others.
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

use crate::access_log::LogEntry;

/// A compiled filter (see the [module docs](self)).
#[derive(Debug)]
pub struct LogFilter {
    program: Program,
    expression: Box<str>,
    headers: bool,
}

thread_local! {
    /// CEL's standard functions, registered once per thread: each evaluation is a scope
    /// of its own over them.
    static ROOT: Context<'static> = Context::default();
}

impl LogFilter {
    /// Compiles `expression`; the error is CEL's parser's.
    pub fn new(expression: &str) -> Result<LogFilter, String> {
        let program = Program::compile(expression).map_err(|e| e.to_string())?;
        Ok(LogFilter {
            program,
            expression: expression.into(),
            headers: expression.contains("request.headers") || expression.contains("referer"),
        })
    }

    /// The expression, as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether the expression reads the request's headers (the record layer then keeps
    /// them for the line: [`crate::record::Interest::Headers`]).
    pub fn needs_headers(&self) -> bool {
        self.headers
    }

    /// Whether `entry`'s line is written: the expression is `true`.
    pub fn matches(&self, entry: &LogEntry<'_>) -> bool {
        ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            for (name, value) in attributes(entry) {
                ctx.add_variable_from_value(name, value);
            }
            matches!(self.program.execute(&ctx), Ok(Value::Bool(true)))
        })
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

fn address(out: &mut Vec<(&'static str, Value)>, a: Option<SocketAddr>) {
    if let Some(a) = a {
        out.push(("address", string(&a.ip().to_string())));
        out.push(("port", Value::Int(i64::from(a.port()))));
    }
}

/// The attributes of `e`, by root.
fn attributes(e: &LogEntry<'_>) -> Vec<(&'static str, Value)> {
    let mut roots = Vec::with_capacity(7);
    // an HTTP request's line (a TCP connection's has no method)
    if !e.method.is_empty() {
        let mut req = vec![
            ("path", string(e.path)),
            (
                "url_path",
                string(e.path.split_once('?').map_or(e.path, |(p, _)| p)),
            ),
            ("method", string(e.method)),
            ("protocol", string(e.protocol)),
            (
                "scheme",
                string(if e.downstream_tls { "https" } else { "http" }),
            ),
            (
                "size",
                Value::Int(i64::try_from(e.bytes_received).unwrap_or(i64::MAX)),
            ),
        ];
        if let Some(h) = e.authority {
            req.push(("host", string(h)));
        }
        if let Some(v) = e.user_agent {
            req.push(("useragent", string(v)));
        }
        if let Some(v) = e.request_id {
            req.push(("id", string(v)));
        }
        if let Some(d) = e.duration.and_then(|d| chrono::Duration::from_std(d).ok()) {
            req.push(("duration", Value::Duration(d)));
        }
        if let Some(headers) = e.request_headers {
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
            if let Some(r) = m.get("referer") {
                req.push(("referer", string(r)));
            }
            let m: HashMap<String, Value> = m.into_iter().map(|(k, v)| (k, string(&v))).collect();
            req.push(("headers", Value::from(m)));
        }
        roots.push(("request", map(req)));
        let mut resp = vec![(
            "size",
            Value::Int(i64::try_from(e.bytes_sent).unwrap_or(i64::MAX)),
        )];
        if e.response_code != 0 {
            resp.push(("code", Value::Int(i64::from(e.response_code))));
        }
        if !e.response_code_details.is_empty() {
            resp.push(("code_details", string(e.response_code_details)));
        }
        if let Some(s) = e.grpc_status {
            resp.push(("grpc_status", Value::Int(i64::from(s))));
        }
        roots.push(("response", map(resp)));
    }
    let mut source = Vec::new();
    address(&mut source, e.downstream_remote_address);
    roots.push(("source", map(source)));
    let mut destination = Vec::new();
    address(&mut destination, e.downstream_local_address);
    roots.push(("destination", map(destination)));
    let mut connection = vec![("mtls", Value::Bool(e.mtls))];
    if let Some(s) = e.requested_server_name {
        connection.push(("requested_server_name", string(s)));
    }
    roots.push(("connection", map(connection)));
    let mut upstream = Vec::new();
    address(&mut upstream, e.upstream_host);
    if let Some(a) = e.upstream_local_address {
        upstream.push(("local_address", string(&a.to_string())));
    }
    if let Some(r) = e.upstream_transport_failure_reason {
        upstream.push(("transport_failure_reason", string(r)));
    }
    roots.push(("upstream", map(upstream)));
    let mut xds = Vec::new();
    if let Some(c) = e.upstream_cluster {
        xds.push(("cluster_name", string(c)));
    }
    if let Some(r) = e.route_name {
        xds.push(("route_name", string(r)));
    }
    roots.push(("xds", map(xds)));
    roots
}

#[cfg(test)]
mod tests;
