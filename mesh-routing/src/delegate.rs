//! VirtualService delegation (one level), merged as istiod merges it
//! (`pilot/pkg/model/virtualservice_controller.go` `mergeVirtualServices` and
//! `pilot/pkg/model/virtualservice.go` `MergeHTTPRoutes`).
//!
//! A root route with `delegate` is replaced by the delegate's routes, each merged with the
//! root route: the delegate's match blocks must each be narrower than some root block (else
//! the delegate route is dropped as a conflict), and are merged with it field by field; the
//! root's route-level fields fill in what the delegate route leaves unset. A delegate that is
//! missing, or not exported to the root's namespace, drops the root route.

use mesh_core::compile::Snapshot;
use mesh_core::compile::VirtualServiceEntry;
use mesh_core::model::networking::{HttpMatchRequest, HttpRoute, StringMatch};

/// The routes that replace `root` (a route with `delegate`) of the root VirtualService `vs`:
/// the delegate, and each merged route with the index of the delegate's route it came from.
pub(crate) fn expand<'s>(
    snap: &'s Snapshot,
    vs: &VirtualServiceEntry,
    root: &HttpRoute,
) -> Option<(&'s VirtualServiceEntry, Vec<(usize, HttpRoute)>)> {
    let del = root.delegate.as_ref()?;
    let ns = del
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(&vs.namespace);
    let delegate = snap
        .virtual_services
        .iter()
        .find(|d| d.hosts.is_empty() && d.name == del.name && d.namespace == ns)?;
    if !(delegate.namespace == vs.namespace || delegate.export_to.visible_to(&vs.namespace)) {
        return None;
    }
    let mut root = root.clone();
    root.delegate = None;
    let routes = delegate
        .spec
        .http
        .iter()
        .enumerate()
        .filter(|(_, r)| r.delegate.is_none()) // one level only
        .filter_map(|(k, r)| merge_route(&root, r.clone()).map(|m| (k, m)))
        .collect();
    Some((delegate, routes))
}

/// `mergeHTTPRoute`.
fn merge_route(root: &HttpRoute, mut d: HttpRoute) -> Option<HttpRoute> {
    d.matches = merge_matches(&root.matches, &d.matches)?;
    d.name = match (&root.name, d.name.take()) {
        (r, None) => r.clone(),
        (Some(r), Some(n)) if !r.is_empty() => Some(format!("{r}-{n}")),
        (_, n) => n,
    };
    macro_rules! inherit {
        ($($f:ident),*) => { $( if d.$f.is_none() { d.$f = root.$f.clone(); } )* };
    }
    inherit!(
        rewrite,
        direct_response,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percent,
        mirror_percentage,
        cors_policy,
        headers
    );
    if d.mirrors.is_empty() {
        d.mirrors = root.mirrors.clone();
    }
    Some(d)
}

/// `mergeHTTPMatchRequests`: `None` on conflict.
fn merge_matches(
    root: &[HttpMatchRequest],
    delegate: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for sub in delegate {
        let mut found = false;
        for r in root {
            if has_conflict(r, sub) {
                continue;
            }
            out.push(merge_match(r, sub));
            found = true;
        }
        if !found {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `mergeHTTPMatchRequest`.
fn merge_match(root: &HttpMatchRequest, d: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = d.clone();
    out.name = match (&root.name, &d.name) {
        (r, None) => r.clone(),
        (Some(r), Some(n)) if !r.is_empty() => Some(format!("{r}-{n}")),
        (_, n) => n.clone(),
    };
    macro_rules! inherit {
        ($($f:ident),*) => { $( if out.$f.is_none() { out.$f = root.$f.clone(); } )* };
    }
    inherit!(
        uri,
        scheme,
        method,
        authority,
        port,
        source_namespace,
        stat_prefix
    );
    // maps.MergeCopy(root, delegate): the delegate's entries win.
    let merge = |r: &std::collections::BTreeMap<String, StringMatch>,
                 l: &std::collections::BTreeMap<String, StringMatch>| {
        let mut m = r.clone();
        m.extend(l.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    };
    out.headers = merge(&root.headers, &d.headers);
    out.without_headers = merge(&root.without_headers, &d.without_headers);
    out.query_params = merge(&root.query_params, &d.query_params);
    let mut labels = root.source_labels.clone();
    labels.extend(d.source_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.source_labels = labels;
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    out
}

/// `hasConflict`.
fn has_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    if leaf
        .headers
        .iter()
        .any(|(k, v)| string_match_conflict(root.headers.get(k), Some(v)))
        || leaf
            .without_headers
            .iter()
            .any(|(k, v)| string_match_conflict(root.without_headers.get(k), Some(v)))
        || leaf
            .query_params
            .iter()
            .any(|(k, v)| string_match_conflict(root.query_params.get(k), Some(v)))
    {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if let (Some(r), Some(l)) = (root.port.filter(|p| *p > 0), leaf.port.filter(|p| *p > 0))
        && r != l
    {
        return true;
    }
    if let Some(rns) = root.source_namespace.as_deref().filter(|s| !s.is_empty())
        && leaf.source_namespace.as_deref() != Some(rns)
    {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|rv| rv != v))
    {
        return true;
    }
    if !root.gateways.is_empty() && !leaf.gateways.is_empty() {
        if root.gateways.len() < leaf.gateways.len() {
            return true;
        }
        if leaf.gateways.iter().any(|g| !root.gateways.contains(g)) {
            return true;
        }
    }
    false
}

/// `stringMatchConflict`.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    let s = |o: &Option<String>| o.as_deref().unwrap_or("").to_string();
    let (re, rp, rr) = (s(&root.exact), s(&root.prefix), s(&root.regex));
    let (le, lp, lr) = (s(&leaf.exact), s(&leaf.prefix), s(&leaf.regex));
    if !rr.is_empty() && (!lr.is_empty() || !lp.is_empty() || !le.is_empty()) {
        return true;
    }
    if !lr.is_empty() && (!rr.is_empty() || !rp.is_empty() || !re.is_empty()) {
        return true;
    }
    if !re.is_empty() {
        return !lp.is_empty() || le != re;
    }
    if !rp.is_empty() {
        if !lp.is_empty() {
            return !lp.starts_with(&rp);
        }
        if !le.is_empty() {
            return !le.starts_with(&rp);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> Option<StringMatch> {
        Some(StringMatch {
            prefix: Some(p.into()),
            ..StringMatch::default()
        })
    }

    #[test]
    fn string_match_conflict_follows_istio() {
        // virtualservice.go stringMatchConflict
        let p = |x: &str| StringMatch {
            prefix: Some(x.into()),
            ..StringMatch::default()
        };
        let e = |x: &str| StringMatch {
            exact: Some(x.into()),
            ..StringMatch::default()
        };
        assert!(!string_match_conflict(Some(&p("/a")), Some(&p("/a/b"))));
        assert!(string_match_conflict(Some(&p("/a/b")), Some(&p("/a"))));
        assert!(!string_match_conflict(Some(&p("/a")), Some(&e("/a/x"))));
        assert!(string_match_conflict(Some(&e("/a")), Some(&p("/a"))));
        assert!(!string_match_conflict(None, Some(&p("/a"))));
    }

    #[test]
    fn merged_match_inherits_root_fields() {
        let root = HttpMatchRequest {
            uri: prefix("/api"),
            port: Some(80),
            ..HttpMatchRequest::default()
        };
        let leaf = HttpMatchRequest {
            uri: prefix("/api/v1"),
            ..HttpMatchRequest::default()
        };
        let merged = merge_matches(std::slice::from_ref(&root), &[leaf]).unwrap();
        assert_eq!(merged[0].uri, prefix("/api/v1"));
        assert_eq!(merged[0].port, Some(80));
        let bad = HttpMatchRequest {
            uri: prefix("/other"),
            ..HttpMatchRequest::default()
        };
        assert!(merge_matches(&[root], &[bad]).is_none());
    }
}
