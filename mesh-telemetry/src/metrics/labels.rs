//! A Telemetry's `tagOverrides` on the standard metrics
//! ([`IstioMetrics::set_label_overrides`](super::IstioMetrics::set_label_overrides)):
//! Istio's stats filter's `tags_to_remove` and `dimensions` (istio/proxy's `istio_stats`,
//! `MetricOverrides::overrideTags`), which istiod writes from the merged overrides
//! ([`mesh_core::telemetry::MetricTags`]).
//!
//! - `REMOVE` leaves a standard label out (a name that is not one, as written, is ignored,
//!   as Istio's proxy logs "Tag is not standard" and goes on).
//! - `UPSERT` gives a standard label, in its place, the value of a CEL expression, and adds
//!   any other name after the standard labels, in name order. The expression reads Envoy's
//!   attributes as the access log's filter does ([`crate::log_filter`]); its value is
//!   printed as Envoy's `print` does (a string as it is, a number in decimal, a double with
//!   six significant digits, a bool as `true`/`false`, a duration as `1.5s`). An expression
//!   that fails, or yields `null` (cel-rust's absent header, an error in Envoy's CEL), gives
//!   `unknown`; a list or a map too (Envoy writes `CelList value`). A value is cut at
//!   [`MAX_VALUE`] bytes. An expression that does
//!   not compile leaves a standard label out and adds no label, as Istio's proxy ("Failed to
//!   parse expression").
//! - An added name has its characters other than `[a-zA-Z0-9_]` replaced by `_`, as Envoy's
//!   exposition sanitizes names; one Prometheus would refuse or take twice (`le`, `__…`, a
//!   standard label's once sanitized, another addition's) is not added
//!   ([`mesh_core::telemetry::added_label_name`]). The configuration's warnings tell each of
//!   these cases ([`mesh_core::telemetry::check`]).
//!
//! Expressions are evaluated per request (per connection for the TCP metrics, when it
//! opens) only on a side that has them. A series of overridden labels is one per reporter,
//! group and label set (what the series cap counts: a removed label's values share one),
//! found again through a cache keyed by the standard labels' series and the values.

use std::sync::Arc;

use cel::Value;
use mesh_core::model::telemetry::IstioMetric;
use mesh_core::telemetry::{LabelOverride, MetricSet, MetricTags};

use crate::access_log::LogEntry;
use crate::log_filter::CelExpression;
use crate::record::Interest;

use mesh_core::telemetry::STANDARD_LABELS as STANDARD;

/// The metrics overrides apply to.
const MADE: [IstioMetric; 10] = [
    IstioMetric::RequestCount,
    IstioMetric::RequestDuration,
    IstioMetric::RequestSize,
    IstioMetric::ResponseSize,
    IstioMetric::GrpcRequestMessages,
    IstioMetric::GrpcResponseMessages,
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
    /// The operations on standard labels, by name.
    standard: Vec<(&'static str, Op)>,
    /// The labels added, by name (sanitized, in order), with their expression.
    added: Vec<(Box<str>, usize)>,
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
            let (mut standard, mut added, mut reads) = (Vec::new(), Vec::new(), Vec::new());
            for o in list {
                // the expression, compiled once per configuration (`None`: it does not
                // compile, or the operation is REMOVE)
                let expr = o.value.as_ref().and_then(|v| {
                    let i = match sources.iter().position(|s| s == v) {
                        Some(i) => i,
                        None => {
                            sources.push(v.clone());
                            exprs.push(CelExpression::new(v).ok());
                            exprs.len() - 1
                        }
                    };
                    exprs[i].is_some().then_some(i)
                });
                // Istio's proxy: a standard label by its name as written; a failed
                // expression leaves it out
                if let Some(name) = STANDARD.iter().find(|n| **n == o.name) {
                    reads.extend(expr);
                    standard.push((*name, expr.map_or(Op::Remove, Op::Set)));
                    continue;
                }
                // another name: REMOVE and a failed expression do nothing; an addition
                // under a name Prometheus would take twice (a standard one once
                // sanitized, `le`, `__…`, another addition's) is left out
                let Some(i) = expr else { continue };
                let Some(name) = mesh_core::telemetry::added_label_name(&o.name) else {
                    continue;
                };
                let name = name.into_boxed_str();
                if added.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                reads.push(i);
                added.push((name, i));
            }
            // added labels in name order, as Istio's proxy sorts a metric's dimensions
            added.sort_by(|a, b| a.0.cmp(&b.0));
            groups.push(Group {
                mask: m,
                // the list's structure, unambiguous (`Debug` escapes its strings)
                id: intern(&format!("{m}{list:?}")),
                standard,
                added,
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
            match self.standard.iter().find(|(n, _)| *n == name) {
                None => push_raw(&mut out, name, raw),
                Some((_, Op::Remove)) => {}
                Some((_, Op::Set(i))) => push_value(&mut out, name, &values[*i]),
            }
        }
        for (name, i) in &self.added {
            push_value(&mut out, name, &values[*i]);
        }
        out
    }
}

/// The `name="value"` pairs of a label text (`value` still escaped).
pub(super) fn split_labels(text: &str) -> impl Iterator<Item = (&str, &str)> {
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

pub(super) fn push_raw(out: &mut String, name: &str, raw: &str) {
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
    super::escape_into(out, value);
    out.push('"');
}

/// The longest label value an override writes, in bytes: a longer one is cut (at a
/// character's boundary). A value a client chooses (a header) makes a series per value
/// under the series cap; this bounds each one's memory too (Envoy does not).
pub(super) const MAX_VALUE: usize = 1024;

/// A label's value from an expression's, as Envoy's `Filters::Common::Expr::print`
/// (`unknown` for a failure, `null`, a list or a map), at most [`MAX_VALUE`] bytes.
fn print(v: Option<Value>) -> Box<str> {
    let mut s = v
        .as_ref()
        .and_then(crate::log_filter::text)
        .unwrap_or_else(|| "unknown".to_owned());
    if s.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s.into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::metrics::tests::overrides;

    fn rules(list: &[(&str, Option<&str>)]) -> LabelRules {
        let tags = overrides(
            &[IstioMetric::RequestCount, IstioMetric::TcpSentBytes],
            list,
        );
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
    fn a_standard_label_is_named_as_written_and_group_ids_follow_the_structure() {
        // Istio's proxy looks a REMOVE's name up as written: `source.app` is not standard
        let r = rules(&[("source.app", None), ("source_version", None)]);
        let out = r.groups[0].apply(r#"source_app="a",source_version="v1""#, &[]);
        assert_eq!(out, r#"source_app="a""#);
        // a value with a line break is not a second override
        let ids = |list: &[(&str, Option<&str>)]| {
            let mut seen = Vec::new();
            LabelRules::new(&overrides(&[IstioMetric::RequestCount], list), |t| {
                seen.push(t.to_owned());
                0
            });
            seen
        };
        assert_ne!(
            ids(&[("a", Some("1 +\nb"))]),
            ids(&[("a", Some("1 +")), ("b", None)])
        );
    }

    #[test]
    fn a_value_is_cut_at_the_bound_on_a_character_boundary() {
        let long = format!("a{}", "é".repeat(MAX_VALUE));
        let v = print(Some(Value::String(Arc::new(long))));
        assert!(
            v.len() <= MAX_VALUE && v.len() >= MAX_VALUE - 1,
            "{}",
            v.len()
        );
        assert!(v.starts_with('a') && v.ends_with('é'));
        assert_eq!(
            &*print(Some(Value::String(Arc::new("short".into())))),
            "short"
        );
    }

    #[test]
    fn added_names_are_sanitized_as_envoy_exposes_them_and_never_taken_twice() {
        use mesh_core::telemetry::added_label_name as name;
        assert_eq!(name("request.host").as_deref(), Some("request_host"));
        assert_eq!(name("9lives").as_deref(), Some("_9lives"));
        assert_eq!(name("ok_Name1").as_deref(), Some("ok_Name1"));
        for refused in ["le", "__name__", "source.app", "response-code"] {
            assert_eq!(name(refused), None, "{refused}");
        }
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
