//! Istio's value matching for AuthorizationPolicy fields, and Envoy's path normalisation.

use std::net::IpAddr;

use ipnet::IpNet;

/// Istio's string matching (`pilot/pkg/security/authz/matcher`, `StringMatcherWithPrefix`):
/// `*` matches any non-empty value, `abc*` a prefix, `*abc` a suffix, anything else exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// `*`: present and non-empty.
    Any,
    /// `abc*`.
    Prefix(Box<str>),
    /// `*abc`.
    Suffix(Box<str>),
    /// `abc`.
    Exact(Box<str>),
}

impl Pattern {
    pub(crate) fn new(v: &str) -> Pattern {
        if v == "*" {
            Pattern::Any
        } else if let Some(p) = v.strip_suffix('*') {
            Pattern::Prefix(p.into())
        } else if let Some(s) = v.strip_prefix('*') {
            Pattern::Suffix(s.into())
        } else {
            Pattern::Exact(v.into())
        }
    }

    /// The same pattern, lowercased (for case-insensitive fields).
    pub(crate) fn lowercase(v: &str) -> Pattern {
        Pattern::new(&v.to_ascii_lowercase())
    }

    pub(crate) fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => !v.is_empty(),
            Pattern::Prefix(p) => v.starts_with(&**p),
            Pattern::Suffix(s) => v.ends_with(&**s),
            Pattern::Exact(e) => v == &**e,
        }
    }
}

/// A host of `Operation.hosts`: Istio's `HostMatcher` (`pilot/pkg/security/authz/matcher`)
/// matches the `Host` header as a whole, case-insensitively, with the `*` rules. The port
/// is part of the header: `example.com` does not match `example.com:8080` (Istio's security
/// best practices write both `example.com` and `example.com:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPattern(Pattern);

impl HostPattern {
    pub(crate) fn new(v: &str) -> HostPattern {
        HostPattern(Pattern::lowercase(v))
    }

    /// `host` is the request's `Host` (or `:authority`), lowercased.
    pub(crate) fn matches(&self, host: &str) -> bool {
        self.0.matches(host)
    }
}

/// A path of `Operation.paths` (Istio's `PathMatcher` and `pathTemplateMatcher`): exact,
/// `prefix*`, `*suffix`, `*`, or a template whose segments may be `{*}` (one segment) or
/// `{**}` (any number of segments, last only), as `security/v1beta1/authorization_policy.proto`
/// allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathPattern {
    /// Istio's plain matching.
    Plain(Pattern),
    /// A `{*}`/`{**}` template, split on `/`.
    Template(Box<[Segment]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(Box<str>),
    One,
    Rest,
}

impl PathPattern {
    pub(crate) fn new(v: &str) -> PathPattern {
        if v.contains("{*}") || v.contains("{**}") {
            let segs = v
                .split('/')
                .map(|s| match s {
                    "{*}" => Segment::One,
                    "{**}" => Segment::Rest,
                    lit => Segment::Literal(lit.into()),
                })
                .collect();
            PathPattern::Template(segs)
        } else {
            PathPattern::Plain(Pattern::new(v))
        }
    }

    /// `path` is the normalised path, without the query.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => p.matches(path),
            PathPattern::Template(segs) => {
                let mut parts = path.split('/');
                for (i, seg) in segs.iter().enumerate() {
                    match seg {
                        // `{**}` is the last segment (validation): any rest, even empty,
                        // after the `/` before it (Envoy's uri_template: `/foo/{**}`
                        // matches `/foo/` and `/foo/a/b`, not `/foo`)
                        Segment::Rest => return i + 1 == segs.len() && parts.next().is_some(),
                        Segment::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(l) => match parts.next() {
                            Some(p) if p == &**l => {}
                            _ => return false,
                        },
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// An IP or CIDR of `ipBlocks`, `remoteIpBlocks`, `source.ip`, `remote.ip`, `destination.ip`.
pub(crate) fn parse_cidr(v: &str) -> Option<IpNet> {
    v.parse::<IpNet>()
        .ok()
        .or_else(|| v.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Envoy's `normalize_path` (Istio's default `meshConfig.pathNormalization: BASE`, RFC 3986
/// §6.2.2 as Chromium's URL library does it): percent-encoded unreserved characters decoded,
/// other escapes upper-cased, `\` read as `/`, and the `.` and `..` segments removed
/// (RFC 3986 §5.2.4). Slashes are not merged (that is `MERGE_SLASHES`). The query is kept.
/// Returns `None` when the path is already normal (the common case: no allocation).
pub fn normalize_path(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let needs = path.contains(['%', '\\'])
        || path.split('/').any(|s| s == "." || s == "..")
        || !path.starts_with('/');
    if !needs {
        return None;
    }
    // 1. escapes, and `\` as `/`
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        decoded.push('/');
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    decoded.push(c as char);
                } else {
                    decoded.push('%');
                    decoded.push((bytes[i + 1] as char).to_ascii_uppercase());
                    decoded.push((bytes[i + 2] as char).to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        if b == b'\\' {
            decoded.push('/');
        } else {
            // the path is ASCII in a valid URI; keep any other byte as is
            decoded.push(b as char);
        }
        i += 1;
    }
    // 2. dot segments
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing = false;
    for (i, s) in segs.iter().enumerate() {
        match *s {
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut norm = String::with_capacity(decoded.len() + query.len());
    for s in &out {
        norm.push('/');
        norm.push_str(s);
    }
    if trailing || norm.is_empty() {
        norm.push('/');
    }
    norm.push_str(query);
    Some(norm)
}
