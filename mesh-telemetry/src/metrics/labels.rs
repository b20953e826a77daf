//! A Telemetry's `tagOverrides` on the standard metrics
//! ([`IstioMetrics::set_label_overrides`](super::IstioMetrics::set_label_overrides)):
//! Istio's stats filter's `tags_to_remove` and `dimensions` (istio/proxy's `istio_stats`,
//! `MetricOverrides::overrideTags`), which istiod writes from the merged overrides
//! ([`mesh_core::telemetry::MetricTags`]).
//!
//! - `REMOVE` leaves a standard label out (a name that is not one is ignored, as Istio's
//!   proxy logs "Tag is not standard" and goes on).
//! - `UPSERT` gives a standard label, in its place, the value of a CEL expression, and adds
//!   any other name after the standard labels, in name order. The expression reads Envoy's
//!   attributes as the access log's filter does ([`crate::log_filter`]); its value is
//!   printed as Envoy's `print` does (a string as it is, a number in decimal, a bool as
//!   `true`/`false`); an expression that fails, yields `null` (cel-rust's absent header, an
//!   error in Envoy's CEL) or a list or a map gives `unknown`. An expression that does not
//!   compile leaves a standard label out and adds no label, as Istio's proxy ("Failed to
//!   parse expression"); the configuration's validation warns about it.
//! - A label name Prometheus does not accept has its other characters replaced by `_`,
//!   as Envoy's exposition sanitizes names.
//!
//! Expressions are evaluated per request (per connection for the TCP metrics, when it
//! opens) only on a side that has them; the series of an overridden metric are found by
//! the standard labels' series and the values, and their labels written once.

use std::sync::Arc;

use cel::Value;
use mesh_core::model::telemetry::IstioMetric;
use mesh_core::telemetry::{LabelOverride, MetricSet, MetricTags};

use crate::access_log::LogEntry;
use crate::log_filter::CelExpression;
use crate::record::Interest;

/// The names of Istio's standard labels (`istio_stats`' `all_tags_`).
pub(super) const STANDARD: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The metrics overrides apply to (the gRPC message counts are not made).
const MADE: [IstioMetric; 8] = [
    IstioMetric::RequestCount,
    IstioMetric::RequestDuration,
    IstioMetric::RequestSize,
    IstioMetric::ResponseSize,
    IstioMetric::TcpOpenedConnections,
    IstioMetric::TcpClosedConnections,
    IstioMetric::TcpSentBytes,
    IstioMetric::TcpReceivedBytes,
];

/// One side's overrides, compiled.
#[derive(Debug)]
pub(super) struct LabelRules {
    /// The distinct `UPSERT` expressions (`None`: it does not compile).
    exprs: Vec<Option<CelExpression>>,
    /// One per distinct list of overrides, with the metrics it applies to.
    pub(super) groups: Vec<Group>,
    /// The [`MetricSet`] bits of the metrics with overrides.
    pub(super) mask: u16,
    /// What the expressions read of a request.
    pub(super) interest: Interest,
}

/// The metrics sharing one list of overrides.
#[derive(Debug)]
pub(super) struct Group {
    /// Their [`MetricSet`] bits.
    pub(super) mask: u16,
    /// Unique in the registry for this list and mask (the registry interns them): it
    /// tells the group's series from another's.
    pub(super) id: u32,
    ops: Vec<(Box<str>, Op)>,
    /// The expressions whose values name the group's series, in order ([`LabelRules::exprs`]).
    pub(super) reads: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Remove,
    Set(usize),
}

impl LabelRules {
    /// Compiles `tags`, the groups interned with `intern` (a list's text to its id).
    pub(super) fn new(tags: &MetricTags, mut intern: impl FnMut(&str) -> u32) -> LabelRules {
        let mut sources: Vec<Arc<str>> = Vec::new();
        let mut exprs: Vec<Option<CelExpression>> = Vec::new();
        // metrics with the same list share a group
        let mut lists: Vec<(&[LabelOverride], u16)> = Vec::new();
        for m in MADE {
            let list = tags.get(m);
            if list.is_empty() {
                continue;
            }
            match lists.iter_mut().find(|(l, _)| *l == list) {
                Some((_, mask)) => *mask |= MetricSet::bit(m),
                None => lists.push((list, MetricSet::bit(m))),
            }
        }
        let mut groups = Vec::new();
        let mut mask = 0;
        for (list, m) in lists {
            mask |= m;
            let mut ops = Vec::new();
            let mut reads = Vec::new();
            let mut text = format!("{m}");
            for o in list {
                let name = sanitize(&o.name);
                if ops.iter().any(|(n, _)| *n == name) {
                    continue; // two names that sanitize alike: the first (Prometheus takes a label once)
                }
                text.push_str(&format!("\n{name}"));
                let op = match &o.value {
                    None => Op::Remove,
                    Some(v) => {
                        text.push_str(&format!("={v}"));
                        let i = match sources.iter().position(|s| s == v) {
                            Some(i) => i,
                            None => {
                                sources.push(v.clone());
                                exprs.push(CelExpression::new(v).ok());
                                exprs.len() - 1
                            }
                        };
                        if exprs[i].is_none() {
                            // Istio's proxy: a standard label is left out, no label added
                            Op::Remove
                        } else {
                            reads.push(i);
                            Op::Set(i)
                        }
                    }
                };
                ops.push((name, op));
            }
            // added labels in name order, as Istio's proxy sorts a metric's dimensions
            ops.sort_by(|a, b| a.0.cmp(&b.0));
            groups.push(Group {
                mask: m,
                id: intern(&text),
                ops,
                reads,
            });
        }
        let exprs_in_use = exprs.iter().flatten();
        let interest = exprs_in_use.fold(Interest::Outcome, |i, e| {
            i.max(match (e.needs_headers(), e.reads_attributes()) {
                (true, _) => Interest::Headers,
                (false, true) => Interest::Details,
                (false, false) => Interest::Outcome,
            })
        });
        LabelRules {
            exprs,
            groups,
            mask,
            interest,
        }
    }

    /// The values of the expressions over `entry` (`unknown` where one fails; an empty
    /// string where one does not compile, which no group reads).
    pub(super) fn evaluate(&self, entry: &LogEntry<'_>) -> Vec<Box<str>> {
        self.exprs
            .iter()
            .map(|e| match e {
                Some(e) => print(e.evaluate(entry)),
                None => Box::from(""),
            })
            .collect()
    }
}

impl Group {
    /// The labels of a series of this group: `standard` (the standard labels' text,
    /// `name="value"` separated by commas, as the registry writes them) with the group's
    /// overrides applied, and `values` ([`LabelRules::evaluate`]).
    pub(super) fn apply(&self, standard: &str, values: &[Box<str>]) -> String {
        let mut out = String::with_capacity(standard.len() + 64);
        for (name, raw) in split_labels(standard) {
            match self.ops.iter().find(|(n, _)| **n == *name) {
                None => push_raw(&mut out, name, raw),
                Some((_, Op::Remove)) => {}
                Some((_, Op::Set(i))) => push_value(&mut out, name, &values[*i]),
            }
        }
        for (name, op) in &self.ops {
            if let Op::Set(i) = op
                && !STANDARD.contains(&&**name)
            {
                push_value(&mut out, name, &values[*i]);
            }
        }
        out
    }
}

/// The `name="value"` pairs of a label text (`value` still escaped).
fn split_labels(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text.trim_start_matches(',');
    std::iter::from_fn(move || {
        let (name, after) = rest.split_once("=\"")?;
        // the value ends at the first quote not escaped
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        let end = i.min(after.len());
        let value = &after[..end];
        rest = after.get(end + 1..).unwrap_or("").trim_start_matches(',');
        Some((name, value))
    })
}

fn push_raw(out: &mut String, name: &str, raw: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    out.push_str(raw);
    out.push('"');
}

/// Writes `name="value"`, `value` escaped (an empty one stays empty: Envoy writes the
/// expression's value as it is).
fn push_value(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A Prometheus label name: characters other than `[a-zA-Z0-9_]` become `_`, and a
/// leading digit is prefixed with `_` (Envoy's exposition's `sanitizeName`).
fn sanitize(name: &str) -> Box<str> {
    let mut s: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s.into_boxed_str()
}

/// A label's value from an expression's, as Envoy's `Filters::Common::Expr::print`
/// (`unknown` for a failure, `null`, a list or a map).
fn print(v: Option<Value>) -> Box<str> {
    v.as_ref()
        .and_then(crate::log_filter::text)
        .unwrap_or_else(|| "unknown".to_owned())
        .into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(&str, Option<&str>)]) -> LabelRules {
        let list: Arc<[LabelOverride]> = list
            .iter()
            .map(|(n, v)| LabelOverride {
                name: n.to_string(),
                value: v.map(Arc::from),
            })
            .collect();
        let tags = MetricTags(vec![
            (IstioMetric::RequestCount, list.clone()),
            (IstioMetric::TcpSentBytes, list),
        ]);
        let mut n = 0;
        LabelRules::new(&tags, |_| {
            n += 1;
            n
        })
    }

    #[test]
    fn apply_removes_sets_and_adds_after_the_standard_labels() {
        let r = rules(&[
            ("request_host", Some("request.host")),
            ("response_code", Some("'x'")),
            ("source_app", None),
            ("not_a_label", None),
            ("bad", Some("1 +")),
            ("destination_app", Some("1 +")),
        ]);
        assert_eq!(r.groups.len(), 1, "metrics with one list share a group");
        let g = &r.groups[0];
        assert_eq!(
            g.mask,
            MetricSet::bit(IstioMetric::RequestCount) | MetricSet::bit(IstioMetric::TcpSentBytes)
        );
        let mut e = LogEntry::new(std::time::UNIX_EPOCH);
        e.method = "GET";
        e.authority = Some("reviews:9080");
        let values = r.evaluate(&e);
        let standard =
            r#"reporter="source",source_app="a\"b",destination_app="d",response_code="200""#;
        assert_eq!(
            g.apply(standard, &values),
            r#"reporter="source",response_code="x",request_host="reviews:9080""#
        );
        assert_eq!(r.interest, Interest::Details);
    }

    #[test]
    fn values_print_as_envoy_and_failures_are_unknown() {
        let r = rules(&[
            ("a", Some("response.code")),
            ("b", Some("request.headers['x-missing']")),
            ("c", Some("1 == 1")),
            ("d", Some("request.duration")),
            ("e", Some("[1]")),
            ("f", Some("size(request.method) / 0")),
        ]);
        assert_eq!(r.interest, Interest::Headers);
        let mut e = LogEntry::new(std::time::UNIX_EPOCH);
        e.method = "GET";
        e.response_code = 503;
        e.duration = Some(std::time::Duration::from_millis(1500));
        let headers = http::HeaderMap::new();
        e.request_headers = Some(&headers);
        let v = r.evaluate(&e);
        let got: Vec<&str> = v.iter().map(|s| &**s).collect();
        assert_eq!(
            got,
            ["503", "unknown", "true", "1.5s", "unknown", "unknown"]
        );
    }

    #[test]
    fn names_are_sanitized_as_envoy_exposes_them() {
        assert_eq!(&*sanitize("request.host"), "request_host");
        assert_eq!(&*sanitize("9lives"), "_9lives");
        assert_eq!(&*sanitize("ok_Name1"), "ok_Name1");
    }

    #[test]
    fn durations_are_written_as_abseil_writes_them() {
        let d = |ms: i64| print(Some(Value::Duration(chrono::Duration::milliseconds(ms))));
        assert_eq!(&*d(0), "0");
        assert_eq!(&*d(250), "250ms");
        assert_eq!(&*d(1500), "1.5s");
        assert_eq!(&*d(3_723_500), "1h2m3.5s");
        assert_eq!(&*d(-1500), "-1.5s");
        let us = print(Some(Value::Duration(chrono::Duration::microseconds(1500))));
        assert_eq!(&*us, "1.5ms");
    }
}
