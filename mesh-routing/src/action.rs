//! Compiled route actions: header operations, rewrites, redirects, direct responses and CORS,
//! each as Istio translates it into Envoy (`pilot/pkg/networking/core/route/route.go`) and as
//! Envoy then applies it.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use mesh_core::authority::split_port;
use mesh_core::body::ReplyBody;
use mesh_core::ext::ResponseCodeDetails;
use mesh_core::model::networking::{
    CorsPolicy, HeaderOperations, Headers, HttpDirectResponse, HttpRedirect, HttpRewrite,
    RedirectPortSelection, UnmatchedPreflights,
};

use crate::error::BuildError;
use crate::format::{FormatCtx, HeaderTemplate};
use crate::matcher::{RegexLimits, RequestView, StrMatch, UriMatch};
use mesh_core::pattern::Precompiled;

/// Compiled `HeaderOperations` for one direction. Values are Envoy format strings
/// ([`crate::format`]): most are fixed, some are evaluated per request.
#[derive(Debug, Clone)]
pub(crate) struct HeaderOps {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderTemplate)]>,
    add: Box<[(HeaderName, HeaderTemplate)]>,
    /// No operation at all (computed once): `apply` returns at once.
    empty: bool,
    /// Some value depends on the request.
    dynamic: bool,
}

/// The per-request values of a [`HeaderOps`]' formatted values, in `set` then `add` order.
pub(crate) type Formatted = Vec<Option<HeaderValue>>;

impl Default for HeaderOps {
    fn default() -> Self {
        HeaderOps {
            remove: Box::default(),
            set: Box::default(),
            add: Box::default(),
            empty: true,
            dynamic: false,
        }
    }
}

/// Compiled `Headers`: request and response operations, and the authority rewrite that
/// Istio takes from a `:authority`/`host` entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderRules {
    pub(crate) request: HeaderOps,
    pub(crate) response: HeaderOps,
    pub(crate) authority: Option<HeaderValue>,
}

/// A compiled `HTTPRewrite` (without the authority, kept in the forward action).
#[derive(Debug, Clone)]
pub(crate) enum UriRewrite {
    /// `rewrite.uri`: Envoy `prefix_rewrite`.
    Prefix(Box<str>),
    /// `rewrite.uriRegexRewrite`: Envoy `regex_rewrite` (path only, every match replaced).
    Regex(regex::Regex, Box<str>),
}

/// Envoy's `RedirectAction.port_redirect` as Istio sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortRedirect {
    None,
    Fixed(u16),
    FromRequest,
}

/// A compiled `HTTPRedirect`.
#[derive(Debug, Clone)]
pub(crate) struct Redirect {
    uri: Option<Box<str>>,
    prefix_rewrite: Option<Box<str>>,
    authority: Option<Box<str>>,
    port: PortRedirect,
    scheme: Option<Box<str>>,
    code: StatusCode,
}

/// A compiled `HTTPDirectResponse`.
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    status: StatusCode,
    body: Bytes,
}

/// A compiled `CorsPolicy` (Envoy's CORS filter, per route).
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    origins: Box<[StrMatch]>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
    forward_unmatched_preflights: bool,
}

/// What the CORS policy decided for a request.
#[derive(Debug)]
pub(crate) enum CorsDecision {
    /// Not a CORS request, or an origin that is not allowed: forward untouched.
    None,
    /// An allowed origin on a non-preflight request: add CORS headers to the response.
    Simple(HeaderValue),
    /// Answer the preflight here.
    Answer(Response<()>),
}

// === impl HeaderOps ===

fn is_internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn header_pair(
    k: &str,
    v: &str,
    field: &str,
    pre: &Precompiled,
) -> Result<(HeaderName, HeaderTemplate), BuildError> {
    let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
        .map_err(|e| BuildError::new(field, format!("invalid header name {k:?}: {e}")))?;
    let value = HeaderTemplate::compile(v, pre)
        .map_err(|e| BuildError::new(field, format!("invalid value for {k:?}: {e}")))?;
    Ok((name, value))
}

impl HeaderOps {
    /// Compiles one direction; returns the ops and the authority it sets (`set` wins over
    /// `add`, as `TranslateHeadersOperations`).
    fn compile(
        ops: Option<&HeaderOperations>,
        field: &str,
        pre: &Precompiled,
    ) -> Result<(Self, Option<HeaderValue>), BuildError> {
        let Some(ops) = ops else {
            return Ok((HeaderOps::default(), None));
        };
        let mut authority = None;
        let mut list = |map: &std::collections::BTreeMap<String, String>, sub: &str| {
            let mut out = Vec::new();
            for (k, v) in map {
                let f = format!("{field}.{sub}.{k}");
                if is_authority(k) && (sub == "set" || authority.is_none()) {
                    authority = Some(
                        HeaderValue::from_str(v).map_err(|e| BuildError::new(&f, e.to_string()))?,
                    );
                }
                if is_internal(k) {
                    continue;
                }
                out.push(header_pair(k, v, &f, pre)?);
            }
            Ok::<_, BuildError>(out.into_boxed_slice())
        };
        let add = list(&ops.add, "add")?;
        let set = list(&ops.set, "set")?;
        let mut remove = Vec::new();
        for k in ops.remove.iter().filter(|k| !is_internal(k)) {
            remove.push(
                HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|e| {
                    BuildError::new(
                        format!("{field}.remove"),
                        format!("invalid header name {k:?}: {e}"),
                    )
                })?,
            );
        }
        Ok((
            HeaderOps {
                empty: remove.is_empty() && set.is_empty() && add.is_empty(),
                dynamic: set.iter().chain(add.iter()).any(|(_, t)| t.is_dynamic()),
                remove: remove.into(),
                set,
                add,
            },
            authority,
        ))
    }

    /// Applies the operations to a request, formatted values evaluated against it first.
    #[inline]
    pub(crate) fn apply_request<B>(&self, req: &mut Request<B>) {
        if self.empty {
            return;
        }
        let values = self.format(req);
        self.apply_ops(req.headers_mut(), values);
    }

    /// The formatted values for this request (empty when there are none), for
    /// [`apply`](Self::apply) on the response.
    pub(crate) fn format<B>(&self, req: &Request<B>) -> Formatted {
        if !self.dynamic {
            return Vec::new();
        }
        let ctx = &FormatCtx::of(req);
        self.set
            .iter()
            .chain(self.add.iter())
            .filter(|(_, t)| t.is_dynamic())
            .map(|(_, t)| t.eval(ctx))
            .collect()
    }

    /// Applies the operations as Envoy's `HeaderParser::evaluateHeaders`: removals first,
    /// then `set` (OVERWRITE_IF_EXISTS_OR_ADD), then `add` (APPEND_IF_EXISTS_OR_ADD).
    /// `values` are the formatted values ([`format`](Self::format)); one that formatted to
    /// nothing is not added (Envoy's `keep_empty_value: false`).
    #[inline]
    pub(crate) fn apply(&self, headers: &mut HeaderMap, values: Formatted) {
        if !self.empty {
            self.apply_ops(headers, values);
        }
    }

    fn apply_ops(&self, headers: &mut HeaderMap, values: Formatted) {
        let mut values = values.into_iter();
        let mut value = |t: &HeaderTemplate| match t {
            HeaderTemplate::Static(v) => Some(v.clone()),
            HeaderTemplate::Format(_) => values.next().flatten(),
        };
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, t) in &self.set {
            if let Some(v) = value(t) {
                headers.insert(name.clone(), v);
            }
        }
        for (name, t) in &self.add {
            if let Some(v) = value(t) {
                headers.append(name.clone(), v);
            }
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }
}

impl HeaderRules {
    pub(crate) fn compile(
        h: Option<&Headers>,
        field: &str,
        pre: &Precompiled,
    ) -> Result<Self, BuildError> {
        let Some(h) = h else {
            return Ok(HeaderRules::default());
        };
        let (request, authority) =
            HeaderOps::compile(h.request.as_ref(), &format!("{field}.request"), pre)?;
        let (response, _) =
            HeaderOps::compile(h.response.as_ref(), &format!("{field}.response"), pre)?;
        Ok(HeaderRules {
            request,
            response,
            authority,
        })
    }
}

// === impl UriRewrite ===

/// Converts an RE2 substitution (`\1`) into the `regex` crate's (`${1}`).
fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(*d);
                    out.push('}');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

impl UriRewrite {
    pub(crate) fn compile(
        r: &HttpRewrite,
        limits: RegexLimits<'_>,
        field: &str,
    ) -> Result<Option<Self>, BuildError> {
        if let Some(rr) = &r.uri_regex_rewrite {
            // the one validation compiled, when the limit is the default one
            let cached = (limits.size_limit == mesh_core::pattern::SIZE_LIMIT)
                .then(|| limits.pre.get_search(&rr.pattern))
                .flatten()
                .cloned();
            let re = cached
                .unwrap_or_else(|| {
                    mesh_core::pattern::compile_search(&rr.pattern, limits.size_limit)
                })
                .map_err(|e| {
                    BuildError::new(format!("{field}.uriRegexRewrite.match"), e.to_string())
                })?;
            return Ok(Some(UriRewrite::Regex(
                re,
                re2_substitution(&rr.rewrite).into(),
            )));
        }
        Ok(r.uri
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| UriRewrite::Prefix(u.into())))
    }

    /// The rewritten `:path`. `matched` is the path matcher of the block that matched
    /// (`None`: Istio's default `prefix: /`).
    pub(crate) fn apply(&self, req: &RequestView<'_>, matched: Option<&UriMatch>) -> String {
        match self {
            UriRewrite::Prefix(new) => prefix_rewrite(req, matched, new),
            UriRewrite::Regex(re, sub) => {
                let path = re.replace_all(req.path, &**sub);
                match req.query {
                    Some(q) => format!("{path}?{q}"),
                    None => path.into_owned(),
                }
            }
        }
    }
}

/// Envoy `prefix_rewrite`: the matched prefix (prefix routes) or the whole path (path and
/// regex routes) is replaced; the query string is kept.
fn prefix_rewrite(req: &RequestView<'_>, matched: Option<&UriMatch>, new: &str) -> String {
    let replaced = match matched {
        None => 1.min(req.path_and_query.len()),
        Some(UriMatch::Prefix(p, _)) => p.len().min(req.path_and_query.len()),
        Some(UriMatch::Exact(..) | UriMatch::Regex(_)) => req.path.len(),
    };
    let rest = req.path_and_query.get(replaced..).unwrap_or("");
    let mut out = String::with_capacity(new.len() + rest.len());
    out.push_str(new);
    out.push_str(rest);
    out
}

// === impl Redirect ===

impl Redirect {
    /// Compiles `HTTPRedirect` as `ApplyRedirect`. `None` for a `redirectCode` Istio does
    /// not support (it drops the route's action).
    pub(crate) fn compile(r: &HttpRedirect) -> Option<Self> {
        let code = match r.redirect_code.unwrap_or(0) {
            0 | 301 => StatusCode::MOVED_PERMANENTLY,
            302 => StatusCode::FOUND,
            303 => StatusCode::SEE_OTHER,
            307 => StatusCode::TEMPORARY_REDIRECT,
            308 => StatusCode::PERMANENT_REDIRECT,
            _ => return None,
        };
        let mut port = match (r.port, r.derive_port) {
            (Some(p), _) => u16::try_from(p).map_or(PortRedirect::None, PortRedirect::Fixed),
            (None, Some(RedirectPortSelection::FromRequestPort)) => PortRedirect::FromRequest,
            _ => PortRedirect::None,
        };
        // ApplyRedirect: no explicit :80 for http or :443 for https.
        let scheme = r.scheme.as_deref().filter(|s| !s.is_empty());
        let eff = scheme.unwrap_or("http");
        if (port == PortRedirect::Fixed(80) && eff == "http")
            || (port == PortRedirect::Fixed(443) && eff == "https")
        {
            port = PortRedirect::None;
        }
        Some(Redirect {
            uri: r.uri.as_deref().filter(|u| !u.is_empty()).map(Into::into),
            prefix_rewrite: r
                .prefix_rewrite
                .as_deref()
                .filter(|u| !u.is_empty())
                .map(Into::into),
            authority: r
                .authority
                .as_deref()
                .filter(|a| !a.is_empty())
                .map(Into::into),
            port,
            scheme: scheme.map(Into::into),
            code,
        })
    }

    /// The redirect response, with `Location` built as Envoy's `RouteEntryImplBase::newUri`.
    pub(crate) fn respond<R: ReplyBody>(
        &self,
        req: &RequestView<'_>,
        matched: Option<&UriMatch>,
    ) -> Response<R> {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let port = match self.port {
            PortRedirect::None => None,
            PortRedirect::Fixed(p) => Some(p),
            PortRedirect::FromRequest => {
                Some(
                    req.port
                        .unwrap_or(if req.scheme == "https" { 443 } else { 80 }),
                )
            }
        }
        .filter(|p| !((*p == 80 && scheme == "http") || (*p == 443 && scheme == "https")));
        let host: &str = match &self.authority {
            Some(a) => a,
            None => {
                // processRequestHost: drop the request's port when a port is set, or when the
                // scheme changes and the port was the old scheme's default.
                let (h, p) = split_port(req.authority);
                let drop = port.is_some()
                    || (scheme != req.scheme
                        && ((req.scheme == "http" && p == Some(80))
                            || (req.scheme == "https" && p == Some(443))));
                if drop { h } else { req.authority }
            }
        };
        let path = match (&self.uri, &self.prefix_rewrite) {
            (_, Some(prefix)) => prefix_rewrite(req, matched, prefix),
            (Some(uri), None) if uri.contains('?') => uri.to_string(),
            (Some(uri), None) => match req.query {
                Some(q) => format!("{uri}?{q}"),
                None => uri.to_string(),
            },
            (None, None) => req.path_and_query.to_string(),
        };
        let location = match port {
            Some(p) => format!("{scheme}://{host}:{p}{path}"),
            None => format!("{scheme}://{host}{path}"),
        };
        let mut res = Response::new(R::local(Bytes::new()));
        *res.status_mut() = self.code;
        if let Ok(v) = HeaderValue::from_str(&location) {
            res.headers_mut().insert(header::LOCATION, v);
        }
        ResponseCodeDetails::mark_direct(&mut res, Bytes::new());
        res
    }
}

// === impl Direct ===

impl Direct {
    pub(crate) fn compile(d: &HttpDirectResponse, field: &str) -> Result<Self, BuildError> {
        let status = u16::try_from(d.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| {
                BuildError::new(
                    format!("{field}.status"),
                    format!("invalid status {}", d.status),
                )
            })?;
        let body = match &d.body {
            None => Bytes::new(),
            Some(b) => match (&b.string, &b.bytes) {
                (Some(s), _) => Bytes::from(s.clone()),
                (None, Some(b64)) => Bytes::from(base64_decode(b64).ok_or_else(|| {
                    BuildError::new(format!("{field}.body.bytes"), "invalid base64")
                })?),
                (None, None) => Bytes::new(),
            },
        };
        Ok(Direct { status, body })
    }

    /// The direct response (Envoy's local reply: `text/plain` when there is a body; for a
    /// gRPC caller the body becomes `grpc-message`).
    pub(crate) fn respond<R: ReplyBody>(&self) -> Response<R> {
        let mut res = Response::new(R::local(self.body.clone()));
        *res.status_mut() = self.status;
        if !self.body.is_empty() {
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        ResponseCodeDetails::mark_direct(&mut res, self.body.clone());
        res
    }
}

/// Standard base64 (padding optional), as protobuf JSON writes `bytes`; URL-safe accepted.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let trimmed = bytes
        .strip_suffix(b"==")
        .or_else(|| bytes.strip_suffix(b"="))
        .unwrap_or(&bytes);
    if trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

// === impl Cors ===

impl Cors {
    pub(crate) fn compile(
        c: &CorsPolicy,
        limits: RegexLimits<'_>,
        field: &str,
    ) -> Result<Self, BuildError> {
        // TranslateCORSPolicy: allowOrigins wins over the deprecated allowOrigin (exact).
        let origins = if !c.allow_origins.is_empty() {
            c.allow_origins
                .iter()
                .map(|m| StrMatch::compile(m, false, limits))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BuildError::new(format!("{field}.allowOrigins"), e))?
        } else {
            c.allow_origin
                .iter()
                .map(|o| StrMatch::Exact(o.as_bytes().into(), false))
                .collect()
        };
        let join = |v: &[String], sub: &str| -> Result<Option<HeaderValue>, BuildError> {
            if v.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&v.join(","))
                .map(Some)
                .map_err(|e| BuildError::new(format!("{field}.{sub}"), e.to_string()))
        };
        Ok(Cors {
            origins: origins.into(),
            allow_methods: join(&c.allow_methods, "allowMethods")?,
            allow_headers: join(&c.allow_headers, "allowHeaders")?,
            expose_headers: join(&c.expose_headers, "exposeHeaders")?,
            max_age: c.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
            credentials: c.allow_credentials.unwrap_or(false),
            // forwardNotMatchingPreflights: only IGNORE answers them here.
            forward_unmatched_preflights: c.unmatched_preflights
                != Some(UnmatchedPreflights::Ignore),
        })
    }

    fn origin_allowed(&self, origin: &[u8]) -> bool {
        // Envoy CorsFilter::isOriginAllowed: a matcher that accepts "*" allows every origin.
        self.origins
            .iter()
            .any(|m| m.matches(b"*") || m.matches(origin))
    }

    /// Envoy `CorsFilter::decodeHeaders`.
    pub(crate) fn decide(&self, req: &RequestView<'_>) -> CorsDecision {
        let Some(origin) = req.headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return CorsDecision::None;
        };
        let preflight = req.method == "OPTIONS"
            && req
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|m| !m.is_empty());
        if !self.origin_allowed(origin.as_bytes()) {
            if preflight && !self.forward_unmatched_preflights {
                let mut res = Response::new(());
                *res.status_mut() = StatusCode::OK;
                return CorsDecision::Answer(res);
            }
            return CorsDecision::None;
        }
        if !preflight {
            return CorsDecision::Simple(origin.clone());
        }
        let mut res = Response::new(());
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.allow_methods {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
        }
        if let Some(v) = &self.allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(v) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        CorsDecision::Answer(res)
    }

    /// Envoy `CorsFilter::encodeHeaders` for an allowed, non-preflight request.
    pub(crate) fn on_response(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_standard_and_unpadded() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            base64_decode("AAEC/w==").as_deref(),
            Some(&[0u8, 1, 2, 255][..])
        );
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("a*==").as_deref(), None);
    }

    #[test]
    fn re2_substitution_becomes_regex_crate_syntax() {
        assert_eq!(re2_substitution(r"/v2/\1/x\2$"), "/v2/${1}/x${2}$$");
    }
}
