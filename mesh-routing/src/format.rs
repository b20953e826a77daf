//! Envoy's header-value formatting: `%COMMAND%` operators in the values of VirtualService
//! `headers` operations.
//!
//! Istio passes `headers.request.set/add` and `headers.response.set/add` values to Envoy's
//! `request_headers_to_add` / `response_headers_to_add`, and Envoy reads each value as a
//! format string (`envoy/config/core/v3/base.proto` `HeaderValueOption`, "Custom request /
//! response header" docs): `%%` is a literal `%`, `%NAME%`, `%NAME(ARGS)%` and
//! `%NAME(ARGS):MAX%` are command operators, evaluated per request. A value that formats to
//! nothing is not added (Envoy's `keep_empty_value` defaults to false). A `%` that does not
//! start an operator, or an operator Envoy does not know, makes Envoy reject the route
//! configuration; the route table build fails the same way here, naming the field.
//!
//! Evaluated here: `DOWNSTREAM_REMOTE_ADDRESS[_WITHOUT_PORT]`, `DOWNSTREAM_REMOTE_PORT` and
//! their `DOWNSTREAM_DIRECT_…` twins (from [`ClientAddr`]), `PROTOCOL`, `REQ(H?ALT):MAX`,
//! `HOSTNAME` and `ENVIRONMENT(VAR):MAX` (read once, when the table is built), and
//! `START_TIME` (Envoy's default format, or `START_TIME(FMT)` with a strftime subset).
//! `REQ` reads headers and the pseudo-headers `:authority`, `:path`, `:method`, `:scheme`. Other Envoy operators are accepted and format to nothing
//! (their data, such as the upstream host, TLS peer or metadata, is not known to the
//! router). Response values are computed from the request, when it is routed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use mesh_core::ext::client_addr;
use mesh_core::format::{HeaderFormat, Piece as FormatPiece};
use mesh_core::pattern::Precompiled;

/// A header value from configuration: fixed, or a format string evaluated per request.
#[derive(Debug, Clone)]
pub(crate) enum HeaderTemplate {
    Static(HeaderValue),
    Format(Arc<[Piece]>),
}

/// One piece of a format string.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    Lit(Box<str>),
    Op(Op, Option<usize>),
}

/// An evaluated command operator.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    RemoteAddr,
    RemoteAddrWithoutPort,
    RemotePort,
    Protocol,
    Req(ReqField, Option<ReqField>),
    /// `START_TIME`, in Envoy's default format (`None`) or a strftime-like one.
    StartTime(Option<Box<str>>),
    /// A known Envoy operator whose data the router does not have.
    Nothing,
}

/// What a format string is evaluated against: the request as it arrived at the router.
pub(crate) struct FormatCtx<'a> {
    pub(crate) client: Option<SocketAddr>,
    pub(crate) version: Version,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) uri: &'a Uri,
    pub(crate) method: &'a Method,
}

/// What `%REQ(…)%` reads: a header, or one of HTTP/2's pseudo-headers (Envoy's names).
#[derive(Debug, Clone)]
pub(crate) enum ReqField {
    Header(HeaderName),
    Authority,
    Path,
    Method,
    Scheme,
}

impl<'a> FormatCtx<'a> {
    pub(crate) fn of<B>(req: &'a Request<B>) -> Self {
        FormatCtx {
            client: client_addr(req.extensions()).map(|c| c.0),
            version: req.version(),
            headers: req.headers(),
            uri: req.uri(),
            method: req.method(),
        }
    }
}

/// Envoy operators accepted without data here (they format to nothing).
const WITHOUT_DATA: &[&str] = &[
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "CONNECTION_ID",
    "CONNECTION_TERMINATION_DETAILS",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_TLS_VERSION",
    "DURATION",
    "DYNAMIC_METADATA",
    "FILTER_STATE",
    "GRPC_STATUS",
    "PER_REQUEST_STATE",
    "REQUESTED_SERVER_NAME",
    "RESP",
    "RESPONSE_CODE",
    "RESPONSE_CODE_DETAILS",
    "RESPONSE_DURATION",
    "RESPONSE_FLAGS",
    "ROUTE_NAME",
    "STREAM_ID",
    "TRAILER",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_HOST",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_METADATA",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_REMOTE_PORT",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "VIRTUAL_CLUSTER_NAME",
];

// === impl HeaderTemplate ===

impl HeaderTemplate {
    /// Compiles a configured value from its parsed format (parsed by validation and kept
    /// in `pre`, or parsed here when it was not); errors are Envoy's reasons to reject it.
    pub(crate) fn compile(value: &str, pre: &Precompiled) -> Result<HeaderTemplate, String> {
        if !value.contains('%') {
            return HeaderValue::from_str(value)
                .map(HeaderTemplate::Static)
                .map_err(|e| e.to_string());
        }
        let parsed;
        let format: &HeaderFormat = match pre.get_format(value) {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(e.clone()),
            None => {
                parsed = mesh_core::format::parse(value)?;
                &parsed
            }
        };
        let mut pieces: Vec<Piece> = Vec::new();
        let mut lit = String::new();
        for p in &format.pieces {
            match p {
                FormatPiece::Literal(l) => lit.push_str(l),
                FormatPiece::Operator { name, args, max } => {
                    match operator(name, args.as_deref())? {
                        Compiled::Text(t) => lit.push_str(&truncate(&t, *max)),
                        Compiled::Op(op) => {
                            if !lit.is_empty() {
                                pieces.push(Piece::Lit(std::mem::take(&mut lit).into()));
                            }
                            pieces.push(Piece::Op(op, *max));
                        }
                    }
                }
            }
        }
        if pieces.is_empty() {
            // only literals and values known now (`%%`, HOSTNAME, ENVIRONMENT)
            return HeaderValue::from_str(&lit)
                .map(HeaderTemplate::Static)
                .map_err(|e| e.to_string());
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit.into()));
        }
        for p in &pieces {
            if let Piece::Lit(l) = p {
                HeaderValue::from_str(l).map_err(|e| e.to_string())?;
            }
        }
        Ok(HeaderTemplate::Format(pieces.into()))
    }

    /// Whether this value depends on the request.
    pub(crate) fn is_dynamic(&self) -> bool {
        matches!(self, HeaderTemplate::Format(_))
    }

    /// The value for this request; `None` when it formats to nothing (not added).
    pub(crate) fn eval(&self, ctx: &FormatCtx<'_>) -> Option<HeaderValue> {
        let pieces = match self {
            HeaderTemplate::Static(v) => return Some(v.clone()),
            HeaderTemplate::Format(p) => p,
        };
        let mut out = String::new();
        for p in pieces.iter() {
            match p {
                Piece::Lit(l) => out.push_str(l),
                Piece::Op(op, max) => {
                    let v = op.eval(ctx);
                    out.push_str(&truncate(&v, *max));
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::from_str(&out).ok()
    }
}

enum Compiled {
    /// Known when the table is built.
    Text(String),
    Op(Op),
}

/// What an operator of a parsed format (`mesh_core::format`) evaluates to; an operator
/// Envoy does not know is an error, as Envoy refuses the route configuration.
fn operator(name: &str, args: Option<&str>) -> Result<Compiled, String> {
    Ok(match (name, args) {
        ("DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS", None) => {
            Compiled::Op(Op::RemoteAddr)
        }
        (
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
            | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
            None,
        ) => Compiled::Op(Op::RemoteAddrWithoutPort),
        ("DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT", None) => {
            Compiled::Op(Op::RemotePort)
        }
        ("PROTOCOL", None) => Compiled::Op(Op::Protocol),
        ("START_TIME", None) => Compiled::Op(Op::StartTime(None)),
        ("START_TIME", Some(f)) => Compiled::Op(Op::StartTime(Some(f.into()))),
        ("HOSTNAME", None) => Compiled::Text(hostname()),
        ("ENVIRONMENT", Some(var)) => Compiled::Text(std::env::var(var).unwrap_or_default()),
        ("REQ", Some(spec)) => {
            let (main, alt) = match spec.split_once('?') {
                Some((m, a)) => (m, Some(a)),
                None => (spec, None),
            };
            let header = |h: &str| {
                let h = h.trim().to_ascii_lowercase();
                Ok::<_, String>(match h.as_str() {
                    ":authority" | "host" => ReqField::Authority,
                    ":path" => ReqField::Path,
                    ":method" => ReqField::Method,
                    ":scheme" => ReqField::Scheme,
                    _ => ReqField::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                        format!("invalid header value format: %REQ({spec})%: bad header name")
                    })?),
                })
            };
            Compiled::Op(Op::Req(header(main)?, alt.map(header).transpose()?))
        }
        (n, _) if WITHOUT_DATA.contains(&n) => Compiled::Op(Op::Nothing),
        (n, _) => {
            return Err(format!(
                "invalid header value format: unsupported command operator %{n}% (Envoy: not supported field)"
            ));
        }
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

fn truncate(s: &str, max: Option<usize>) -> std::borrow::Cow<'_, str> {
    match max {
        Some(m) if s.len() > m => {
            let mut end = m;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].into()
        }
        _ => s.into(),
    }
}

// === impl Op ===

impl Op {
    fn eval(&self, ctx: &FormatCtx<'_>) -> String {
        match self {
            Op::RemoteAddr => ctx.client.map(|a| a.to_string()).unwrap_or_default(),
            Op::RemoteAddrWithoutPort => ctx.client.map(|a| a.ip().to_string()).unwrap_or_default(),
            Op::RemotePort => ctx.client.map(|a| a.port().to_string()).unwrap_or_default(),
            Op::Protocol => match ctx.version {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            }
            .to_string(),
            Op::Req(main, alt) => main
                .read(ctx)
                .or_else(|| alt.as_ref().and_then(|a| a.read(ctx)))
                .unwrap_or_default()
                .to_string(),
            Op::StartTime(None) => start_time(SystemTime::now()),
            Op::StartTime(Some(f)) => strftime(f, SystemTime::now()),
            Op::Nothing => String::new(),
        }
    }
}

impl ReqField {
    fn read<'a>(&self, ctx: &FormatCtx<'a>) -> Option<&'a str> {
        let s = match self {
            ReqField::Header(h) => ctx.headers.get(h).and_then(|v| v.to_str().ok()),
            ReqField::Authority => ctx.uri.authority().map(|a| a.as_str()).or_else(|| {
                ctx.headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
            }),
            ReqField::Path => ctx.uri.path_and_query().map(|p| p.as_str()),
            ReqField::Method => Some(ctx.method.as_str()),
            ReqField::Scheme => ctx.uri.scheme_str(),
        };
        s.filter(|s| !s.is_empty())
    }
}

/// Envoy's default `START_TIME` format, `%Y-%m-%dT%H:%M:%E3SZ` (UTC, milliseconds).
fn start_time(t: SystemTime) -> String {
    strftime("%Y-%m-%dT%H:%M:%E3SZ", t)
}

/// The strftime subset Envoy users write in `START_TIME(…)`: `%s` (seconds since the
/// epoch), `%Y %m %d %H %M %S`, `%Nf` / `%f` (N / 9 digits of the second's fraction),
/// `%E3S` (seconds with milliseconds) and `%%`; anything else is copied as written. UTC.
fn strftime(fmt: &str, t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (year, month, day, rem) = civil(d.as_secs());
    let nanos = format!("{:09}", d.subsec_nanos());
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push_str(&d.as_secs().to_string()),
            Some('Y') => out.push_str(&format!("{year:04}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('H') => out.push_str(&format!("{:02}", rem / 3_600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3_600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('f') => out.push_str(&nanos),
            Some(n @ '1'..='9') if chars.peek() == Some(&'f') => {
                chars.next();
                let digits = n.to_digit(10).map_or(9, |d| d as usize);
                out.push_str(&nanos[..digits]);
            }
            Some('E') if chars.peek() == Some(&'3') => {
                chars.next();
                if chars.peek() == Some(&'S') {
                    chars.next();
                    out.push_str(&format!("{:02}.{}", rem % 60, &nanos[..3]));
                } else {
                    out.push_str("%E3");
                }
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month, day, seconds into the day) of a time in seconds since the epoch (UTC).
fn civil(secs: u64) -> (i64, i64, i64, u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil-from-days (Howard Hinnant), for days since 1970-01-01
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ctx(headers: &HeaderMap) -> FormatCtx<'_> {
        FormatCtx {
            client: Some("10.1.2.3:4567".parse().unwrap()),
            version: Version::HTTP_2,
            headers,
            uri: Box::leak(Box::new(Uri::from_static("/"))),
            method: &Method::GET,
        }
    }

    fn compile(v: &str) -> Result<HeaderTemplate, String> {
        HeaderTemplate::compile(v, &Precompiled::default())
    }

    fn eval(v: &str, headers: &HeaderMap) -> Option<String> {
        compile(v)
            .unwrap()
            .eval(&ctx(headers))
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn operators_literals_and_limits() {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("jason"));
        h.insert("x-alt", HeaderValue::from_static("alternative"));
        assert_eq!(eval("plain", &h).as_deref(), Some("plain"));
        assert_eq!(eval("100%%", &h).as_deref(), Some("100%"));
        assert_eq!(
            eval("%DOWNSTREAM_REMOTE_ADDRESS%", &h).as_deref(),
            Some("10.1.2.3:4567")
        );
        assert_eq!(
            eval(
                "ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;port=%DOWNSTREAM_REMOTE_PORT%",
                &h
            )
            .as_deref(),
            Some("ip=10.1.2.3;port=4567")
        );
        assert_eq!(eval("%PROTOCOL%", &h).as_deref(), Some("HTTP/2"));
        assert_eq!(eval("%REQ(X-User)%", &h).as_deref(), Some("jason"));
        assert_eq!(
            eval("%REQ(x-none?x-alt)%", &h).as_deref(),
            Some("alternative")
        );
        assert_eq!(eval("%PROTOCOL:4%", &h).as_deref(), Some("HTTP"));
        // formats to nothing: not added
        assert_eq!(eval("%REQ(x-none)%", &h), None);
        assert_eq!(eval("%UPSTREAM_HOST%", &h), None);
        assert_eq!(eval("a%UPSTREAM_HOST%b", &h).as_deref(), Some("ab"));
        // known when the table is built: a static value
        assert!(!compile("%%").unwrap().is_dynamic());
        assert!(!compile("%HOSTNAME%").unwrap().is_dynamic());
    }

    #[test]
    fn envoy_rejects_these_values() {
        for bad in [
            "50%",
            "%",
            "%FOO%",
            "%REQ(x-a%",
            "%DOWNSTREAM_REMOTE_ADDRESS",
            "%REQ(x):abc%",
            // Istio's validateHeaderValue: nothing but '%' after the arguments
            "%REQ(x-none?x-alt):5%",
            "% DOWNSTREAM_REMOTE_ADDRESS%",
        ] {
            assert!(compile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn start_time_uses_envoys_default_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_912_445_123);
        assert_eq!(start_time(t), "2026-11-29T00:34:05.123Z");
        assert_eq!(start_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(start_time(leap), "2000-02-29T00:00:00.000Z");
        // New Relic's x-request-start, as Envoy users write it
        assert_eq!(strftime("t=%s.%3f", t), "t=1795912445.123");
        assert_eq!(
            strftime("%Y%m%d %H:%M:%S %6f %% %q", t),
            "20261129 00:34:05 123000 % %q"
        );
    }

    #[test]
    fn req_reads_pseudo_headers() {
        let req = Request::builder()
            .method("POST")
            .uri("http://reviews:9080/a?b=1")
            .body(())
            .unwrap();
        let ctx = FormatCtx::of(&req);
        let f = |v: &str| {
            compile(v)
                .unwrap()
                .eval(&ctx)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(f("%REQ(:AUTHORITY)%").as_deref(), Some("reviews:9080"));
        assert_eq!(f("%REQ(:PATH)%").as_deref(), Some("/a?b=1"));
        assert_eq!(
            f("%REQ(:METHOD)% %REQ(:SCHEME)%").as_deref(),
            Some("POST http")
        );
        assert!(compile("t=%START_TIME(%s.%3f)%").unwrap().is_dynamic());
    }
}
