//! Compiled `HTTPMatchRequest`s: the conditions of one match block, checked against a
//! request without allocating.
//!
//! Each block becomes what Istio makes of it in Envoy (`TranslateRouteMatch` in
//! `pilot/pkg/networking/core/route/route.go`): a path matcher (`prefix`, `path` or
//! `safe_regex`), header matchers (`:method`, `:authority`, `:scheme` and `headers`
//! included), inverted header matchers for `withoutHeaders`, and query parameter matchers;
//! `port`, `sourceLabels`, `sourceNamespace` and `gateways` decide whether Istio generates the
//! route at all (`TranslateRoute` / `sourceMatchHTTP`), which here is checked per request.

use http::{HeaderMap, HeaderName};
use mesh_core::model::networking::{HttpMatchRequest, StringMatch};
use mesh_core::selector::{Labels, labels_match};
use std::sync::Arc;

use mesh_core::pattern::{FullMatch, Precompiled};

use crate::error::BuildError;

/// A compiled `StringMatch`.
#[derive(Debug, Clone)]
pub(crate) enum StrMatch {
    /// `exact`, compared byte for byte (or ASCII case-insensitively).
    Exact(Box<[u8]>, bool),
    /// `prefix`, compared byte for byte (or ASCII case-insensitively).
    Prefix(Box<[u8]>, bool),
    /// `regex`, anchored at both ends (Envoy's `safe_regex` is a full match).
    Regex(Arc<FullMatch>),
    /// `{}` (or `regex: "*"`): presence only.
    Present,
}

/// Which part of the request a header matcher reads.
#[derive(Debug, Clone)]
pub(crate) enum HeaderSel {
    /// A regular header.
    Name(HeaderName),
    /// `:method`.
    Method,
    /// `:authority` (Host).
    Authority,
    /// `:scheme`.
    Scheme,
    /// `:path` (path and query).
    Path,
    /// `@request.auth.claims.<a>.<b>` (or `[a][b]`): the validated JWT's claim at this path
    /// ([`mesh_core::ext::JwtClaims`]).
    Claim(Box<[Box<str>]>),
}

/// An Envoy `HeaderMatcher`.
#[derive(Debug, Clone)]
pub(crate) struct HeaderMatch {
    sel: HeaderSel,
    m: StrMatch,
    invert: bool,
    treat_missing_as_empty: bool,
}

/// An Envoy `QueryParameterMatcher`.
#[derive(Debug, Clone)]
pub(crate) struct QueryMatch {
    name: Box<str>,
    m: StrMatch,
}

/// How the block matches the path; also what a `rewrite.uri` replaces.
#[derive(Debug, Clone)]
pub(crate) enum UriMatch {
    /// Envoy `prefix`: the start of `:path` (query included).
    Prefix(Box<[u8]>, bool),
    /// Envoy `path`: the whole path, query removed.
    Exact(Box<[u8]>, bool),
    /// Envoy `safe_regex`: the whole path, query removed.
    Regex(Arc<FullMatch>),
}

/// One compiled `HTTPMatchRequest`.
#[derive(Debug, Clone)]
pub(crate) struct MatchBlock {
    /// The Envoy route name for this block (`<route>.<match>`), when the block is named.
    pub(crate) route_name: Option<std::sync::Arc<str>>,
    /// `None`: Istio's default `prefix: /`.
    pub(crate) uri: Option<UriMatch>,
    headers: Box<[HeaderMatch]>,
    query: Box<[QueryMatch]>,
    port: Option<u16>,
    /// `Some` when the source must be checked (no match-level `gateways`).
    source: Option<SourceMatch>,
    /// A condition this router cannot evaluate (JWT claims): never matches.
    never: bool,
}

#[derive(Debug, Clone)]
struct SourceMatch {
    labels: Labels,
    namespace: Option<Box<str>>,
}

/// What the matchers read from a request, extracted once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    /// `:path`: path and query.
    pub(crate) path_and_query: &'a str,
    /// The path without the query.
    pub(crate) path: &'a str,
    /// The query, without `?`.
    pub(crate) query: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) scheme: &'a str,
    /// `:authority`, as sent (port included).
    pub(crate) authority: &'a str,
    pub(crate) headers: &'a HeaderMap,
    /// The destination port (from the authority, or the virtual host's default).
    pub(crate) port: Option<u16>,
    pub(crate) source_labels: &'a Labels,
    pub(crate) source_namespace: &'a str,
    /// The validated JWT's claims, if any (JWT claim routes).
    pub(crate) claims: Option<&'a mesh_core::ext::JwtClaims>,
}

/// What a match block requires of the request's `:path` (path and query), for the candidate
/// index: a necessary condition, never a sufficient one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathCond {
    /// The block never matches (a condition this router cannot evaluate).
    Never,
    /// Any path may match (no `uri`, or a regex without a literal prefix).
    Any,
    /// Only paths starting with this literal may match (ASCII case-insensitively when the
    /// block ignores case; the index compares case-insensitively in every case).
    Prefix(Box<[u8]>),
}

/// How regexes (and header formats) are compiled: with this size limit, taking what
/// validation compiled already (`pre`) when the limit is the default one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegexLimits<'a> {
    pub(crate) size_limit: usize,
    pub(crate) pre: &'a Precompiled,
}

// === impl StrMatch ===

impl StrMatch {
    /// Compiles a `StringMatch`; an empty one (or `regex: "*"`, Istio's
    /// `canBeConvertedToPresentMatch`) is a presence match.
    pub(crate) fn compile(
        m: &StringMatch,
        ignore_case: bool,
        limits: RegexLimits<'_>,
    ) -> Result<Self, String> {
        if let Some(e) = &m.exact {
            return Ok(StrMatch::Exact(e.as_bytes().into(), ignore_case));
        }
        if let Some(p) = &m.prefix {
            return Ok(StrMatch::Prefix(p.as_bytes().into(), ignore_case));
        }
        if let Some(r) = &m.regex {
            if r == "*" {
                return Ok(StrMatch::Present);
            }
            return Ok(StrMatch::Regex(compile_regex(r, limits)?));
        }
        Ok(StrMatch::Present)
    }

    /// Whether `v` matches (a presence match always does).
    pub(crate) fn matches(&self, v: &[u8]) -> bool {
        match self {
            StrMatch::Exact(e, false) => v == &e[..],
            StrMatch::Exact(e, true) => v.eq_ignore_ascii_case(e),
            StrMatch::Prefix(p, false) => v.starts_with(p),
            StrMatch::Prefix(p, true) => v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p),
            StrMatch::Regex(r) => r.is_match(v),
            StrMatch::Present => true,
        }
    }
}

/// Compiles an RE2-style regex anchored at both ends: the one validation compiled, or a
/// new one (another size limit, or a snapshot compiled without validation).
pub(crate) fn compile_regex(r: &str, limits: RegexLimits<'_>) -> Result<Arc<FullMatch>, String> {
    if limits.size_limit == mesh_core::pattern::SIZE_LIMIT
        && let Some(found) = limits.pre.get_full(r)
    {
        return found.clone().map_err(|e| e.to_string());
    }
    FullMatch::compile(r, limits.size_limit)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

// === impl HeaderMatch ===

impl HeaderMatch {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let matched = match &self.sel {
            HeaderSel::Method => self.m.matches(req.method.as_bytes()),
            HeaderSel::Authority => self.m.matches(req.authority.as_bytes()),
            HeaderSel::Scheme => self.m.matches(req.scheme.as_bytes()),
            HeaderSel::Path => self.m.matches(req.path_and_query.as_bytes()),
            HeaderSel::Claim(path) => {
                // Istio's MetadataMatcherForJWTClaims: a string claim, or a list holding one;
                // no validated token: only an inverted match (withoutHeaders) holds
                let Some(claims) = req.claims else {
                    return self.invert;
                };
                match &self.m {
                    StrMatch::Present => claims.get(path).is_some(),
                    m => claims.any_str(path, |v| m.matches(v.as_bytes())),
                }
            }
            HeaderSel::Name(name) => {
                let mut values = req.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => {
                        // Envoy HeaderUtility::matchHeaders: a missing header fails every
                        // matcher but an inverted presence match, unless
                        // treat_missing_header_as_empty makes it the empty string.
                        if self.treat_missing_as_empty {
                            self.m.matches(b"")
                        } else {
                            return self.invert && matches!(self.m, StrMatch::Present);
                        }
                    }
                    (Some(v), None) => self.m.matches(v.as_bytes()),
                    (Some(first), Some(_)) => {
                        // Envoy matches a repeated header as its values joined with ','.
                        let mut joined = first.as_bytes().to_vec();
                        for v in req.headers.get_all(name).iter().skip(1) {
                            joined.push(b',');
                            joined.extend_from_slice(v.as_bytes());
                        }
                        self.m.matches(&joined)
                    }
                }
            }
        };
        matched != self.invert
    }
}

// === impl QueryMatch ===

impl QueryMatch {
    /// Envoy `QueryParameterMatcher`: the first parameter with this name (not decoded); a
    /// bare key (`?debug`) has the value "".
    fn matches(&self, query: Option<&str>) -> bool {
        let Some(q) = query else { return false };
        for kv in q.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if k == &*self.name {
                return self.m.matches(v.as_bytes());
            }
        }
        false
    }
}

// === impl UriMatch ===

impl UriMatch {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        match self {
            UriMatch::Prefix(p, ci) => {
                StrMatch::prefix_matches(p, *ci, req.path_and_query.as_bytes())
            }
            UriMatch::Exact(e, false) => req.path.as_bytes() == &e[..],
            UriMatch::Exact(e, true) => req.path.as_bytes().eq_ignore_ascii_case(e),
            UriMatch::Regex(r) => r.is_match(req.path.as_bytes()),
        }
    }
}

impl StrMatch {
    fn prefix_matches(p: &[u8], ci: bool, v: &[u8]) -> bool {
        if ci {
            v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p)
        } else {
            v.starts_with(p)
        }
    }
}

// === impl MatchBlock ===

impl MatchBlock {
    /// Compiles one match block. `field` names it in errors (`spec.http[1].match[0]`).
    pub(crate) fn compile(
        m: &HttpMatchRequest,
        route_name: Option<&str>,
        limits: RegexLimits<'_>,
        field: &str,
    ) -> Result<Self, BuildError> {
        let err = |sub: &str, e: String| BuildError::new(format!("{field}.{sub}"), e);
        let uri = match &m.uri {
            None => None,
            Some(u) => {
                let ci = m.ignore_uri_case;
                if let Some(e) = &u.exact {
                    Some(UriMatch::Exact(e.as_bytes().into(), ci))
                } else if let Some(p) = &u.prefix {
                    Some(UriMatch::Prefix(p.as_bytes().into(), ci))
                } else if let Some(r) = &u.regex {
                    Some(UriMatch::Regex(
                        compile_regex(r, limits).map_err(|e| err("uri.regex", e))?,
                    ))
                } else {
                    None
                }
            }
        };
        let never = false;
        let mut headers = Vec::new();
        for (name, sm) in &m.headers {
            let sel = header_sel(name).map_err(|e| err(&format!("headers.{name}"), e))?;
            let sm = StrMatch::compile(sm, false, limits)
                .map_err(|e| err(&format!("headers.{name}"), e))?;
            headers.push(HeaderMatch {
                sel,
                m: sm,
                invert: false,
                treat_missing_as_empty: false,
            });
        }
        for (name, sm) in &m.without_headers {
            let sel = header_sel(name).map_err(|e| err(&format!("withoutHeaders.{name}"), e))?;
            let compiled = StrMatch::compile(sm, false, limits)
                .map_err(|e| err(&format!("withoutHeaders.{name}"), e))?;
            // route.go TranslateRouteMatch: invert_match, and treat_missing_header_as_empty
            // unless it is a presence match.
            let present = matches!(compiled, StrMatch::Present);
            headers.push(HeaderMatch {
                sel,
                m: compiled,
                invert: true,
                treat_missing_as_empty: !present,
            });
        }
        for (sub, sel, sm) in [
            ("method", HeaderSel::Method, &m.method),
            ("authority", HeaderSel::Authority, &m.authority),
            ("scheme", HeaderSel::Scheme, &m.scheme),
        ] {
            if let Some(sm) = sm {
                let compiled = StrMatch::compile(sm, false, limits).map_err(|e| err(sub, e))?;
                headers.push(HeaderMatch {
                    sel,
                    m: compiled,
                    invert: false,
                    treat_missing_as_empty: false,
                });
            }
        }
        let mut query = Vec::new();
        for (name, sm) in &m.query_params {
            let compiled = StrMatch::compile(sm, false, limits)
                .map_err(|e| err(&format!("queryParams.{name}"), e))?;
            query.push(QueryMatch {
                name: name.as_str().into(),
                m: compiled,
            });
        }
        let port = match m.port {
            None | Some(0) => None,
            Some(p) => {
                Some(u16::try_from(p).map_err(|_| err("port", format!("port {p} out of range")))?)
            }
        };
        let namespace: Option<Box<str>> = m
            .source_namespace
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(Into::into);
        // sourceMatchHTTP ignores the source when the block names gateways.
        let source = (m.gateways.is_empty()
            && (!m.source_labels.is_empty() || namespace.is_some()))
        .then(|| SourceMatch {
            labels: m.source_labels.clone(),
            namespace,
        });
        Ok(MatchBlock {
            // TranslateRoute: routeName + "." + match.Name
            route_name: m
                .name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(|n| format!("{}.{n}", route_name.unwrap_or("")).into()),
            uri,
            headers: headers.into(),
            query: query.into(),
            port,
            source,
            never,
        })
    }

    /// A necessary condition on the request's `:path` for the block to match.
    ///
    /// `exact` (matched against the path without the query) and `prefix` (against path and
    /// query) both require the path and query to start with their literal; a regex requires
    /// its literal prefix ([`FullMatch::is_match`] checks it first).
    pub(crate) fn path_cond(&self) -> PathCond {
        if self.never {
            return PathCond::Never;
        }
        let lit: &[u8] = match &self.uri {
            None => return PathCond::Any,
            Some(UriMatch::Prefix(p, _) | UriMatch::Exact(p, _)) => p,
            Some(UriMatch::Regex(r)) => r.literal_prefix(),
        };
        if lit.is_empty() {
            PathCond::Any
        } else {
            PathCond::Prefix(lit.into())
        }
    }

    /// Whether every condition of the block holds.
    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        if self.never {
            return false;
        }
        if let Some(p) = self.port
            && req.port != Some(p)
        {
            return false;
        }
        if let Some(src) = &self.source {
            // route.go sourceMatchHTTP: sourceLabels ⊆ proxy labels, sourceNamespace equal.
            if !labels_match(&src.labels, req.source_labels) {
                return false;
            }
            if src
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != req.source_namespace)
            {
                return false;
            }
        }
        if let Some(u) = &self.uri
            && !u.matches(req)
        {
            return false;
        }
        self.headers.iter().all(|h| h.matches(req))
            && self.query.iter().all(|q| q.matches(req.query))
    }
}

/// The claim path of a JWT claim route key (Istio's `jwt.ToRoutingClaim`):
/// `@request.auth.claims.a.b` or `@request.auth.claims[a][b]` → `[a, b]`.
fn claim_path(name: &str) -> Option<Box<[Box<str>]>> {
    if !mesh_core::validate::common::is_jwt_claim_route(name) {
        return None;
    }
    let rest = &name[mesh_core::validate::common::JWT_CLAIM_HEADER.len()..];
    let parts: Vec<Box<str>> = match rest.strip_prefix('.') {
        Some(dotted) => dotted.split('.').map(Into::into).collect(),
        None => rest
            .strip_prefix('[')?
            .strip_suffix(']')?
            .split("][")
            .map(Into::into)
            .collect(),
    };
    (!parts.iter().any(|p| p.is_empty())).then(|| parts.into_boxed_slice())
}

fn header_sel(name: &str) -> Result<HeaderSel, String> {
    if let Some(path) = claim_path(name) {
        return Ok(HeaderSel::Claim(path));
    }
    Ok(match name.to_ascii_lowercase().as_str() {
        ":method" => HeaderSel::Method,
        ":authority" | "host" => HeaderSel::Authority,
        ":scheme" => HeaderSel::Scheme,
        ":path" => HeaderSel::Path,
        other => HeaderSel::Name(
            HeaderName::from_bytes(other.as_bytes())
                .map_err(|e| format!("invalid header name {name:?}: {e}"))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static PRE: std::sync::LazyLock<Precompiled> = std::sync::LazyLock::new(Precompiled::default);

    fn limits() -> RegexLimits<'static> {
        RegexLimits {
            size_limit: 1 << 20,
            pre: &PRE,
        }
    }

    fn sm(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> StringMatch {
        StringMatch {
            exact: exact.map(Into::into),
            prefix: prefix.map(Into::into),
            regex: regex.map(Into::into),
        }
    }

    #[test]
    fn jwt_claim_routes_match_a_string_or_a_list_item_of_the_validated_claims() {
        // Istio's task "JWT claim based routing": `@request.auth.claims.groups` holds when
        // the token's `groups` is the value or a list holding it; nested `a.b` and `[a][b]`
        let m: HttpMatchRequest = serde_json::from_value(serde_json::json!({
            "headers": {
                "@request.auth.claims.groups": {"exact": "group1"},
                "@request.auth.claims[org][unit]": {"prefix": "eng"}
            },
            "withoutHeaders": {"@request.auth.claims.banned": {}}
        }))
        .unwrap();
        let block = MatchBlock::compile(&m, None, limits(), "spec.http[0].match[0]").unwrap();
        let headers = HeaderMap::new();
        let labels = Labels::new();
        let view = |claims| RequestView {
            path_and_query: "/",
            path: "/",
            query: None,
            method: "GET",
            scheme: "http",
            authority: "a",
            headers: &headers,
            port: None,
            source_labels: &labels,
            source_namespace: "default",
            claims,
        };
        let claims = |v: serde_json::Value| {
            mesh_core::ext::JwtClaims(Arc::new(v.as_object().unwrap().clone()))
        };
        let good = claims(serde_json::json!({"groups": ["x", "group1"], "org": {"unit": "eng-1"}}));
        assert!(block.matches(&view(Some(&good))));
        let single = claims(serde_json::json!({"groups": "group1", "org": {"unit": "eng"}}));
        assert!(block.matches(&view(Some(&single))));
        let other = claims(serde_json::json!({"groups": ["group2"], "org": {"unit": "eng"}}));
        assert!(!block.matches(&view(Some(&other))));
        let banned =
            claims(serde_json::json!({"groups": "group1", "org": {"unit": "eng"}, "banned": true}));
        assert!(
            !block.matches(&view(Some(&banned))),
            "withoutHeaders presence"
        );
        assert!(!block.matches(&view(None)), "no validated token");
    }

    #[test]
    fn regex_is_a_full_match() {
        // Envoy safe_regex: "The entire path (without the query string) must match the regex".
        let m = StrMatch::compile(&sm(None, None, Some("/a+")), false, limits()).unwrap();
        assert!(m.matches(b"/aaa"));
        assert!(!m.matches(b"/aaab"));
        assert!(!m.matches(b"x/aaa"));
    }

    #[test]
    fn literal_prefixes_are_conservative() {
        // (the prefixes themselves: mesh_core::pattern's tests)
        let m = StrMatch::compile(&sm(None, None, Some(r"/\<a")), false, limits()).unwrap();
        assert!(m.matches(b"/a"));
        let m = StrMatch::compile(&sm(None, None, Some("/ab*c")), false, limits()).unwrap();
        assert!(m.matches(b"/ac"));
    }

    #[test]
    fn star_regex_is_a_presence_match() {
        // route.go canBeConvertedToPresentMatch: `regex: "*"` becomes present_match.
        assert!(matches!(
            StrMatch::compile(&sm(None, None, Some("*")), false, limits()),
            Ok(StrMatch::Present)
        ));
        assert!(matches!(
            StrMatch::compile(&StringMatch::default(), false, limits()),
            Ok(StrMatch::Present)
        ));
    }

    #[test]
    fn regex_size_limit_is_enforced() {
        let tiny = RegexLimits {
            size_limit: 64,
            pre: &PRE,
        };
        assert!(
            StrMatch::compile(&sm(None, None, Some("[a-z]{1,100}x{50}")), false, tiny).is_err()
        );
    }

    #[test]
    fn case_insensitive_exact_and_prefix() {
        let e = StrMatch::compile(&sm(Some("/Foo"), None, None), true, limits()).unwrap();
        assert!(e.matches(b"/fOO"));
        let p = StrMatch::compile(&sm(None, Some("/Foo"), None), true, limits()).unwrap();
        assert!(p.matches(b"/FOObar"));
        assert!(!p.matches(b"/Fo"));
    }
}
