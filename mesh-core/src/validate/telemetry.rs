//! `Telemetry`: Istio's `ValidateTelemetry` (pkg/config/validation/validation.go), in its
//! order: the selector or target references, then `validateTelemetryMetrics`,
//! `validateTelemetryTracing` and `validateTelemetryAccessLogging` (whose CEL `filter` is
//! parsed, as istiod's build parses it).

use crate::error::FieldPath;
use crate::model::telemetry::{ProviderRef, TagOperation, Telemetry};
use crate::telemetry::{check_filter_text, parse_filter};

use super::authz::validate_targets;
use super::common::oneof;
use super::{PathExt, Report};

/// `ValidateTelemetry`.
pub(crate) fn validate(t: &Telemetry, at: &FieldPath, rep: &mut Report<'_>) {
    validate_targets(
        t.selector.as_ref(),
        t.target_ref.as_ref(),
        &t.target_refs,
        at,
        rep,
    );
    metrics(t, at, rep);
    tracing(t, at, rep);
    for (i, a) in t.access_logging.iter().enumerate() {
        let at = at.ki("accessLogging", i);
        providers(&a.providers, &at, rep);
        // `validateTelemetryFilter` (istiod's build parses the expression)
        let Some(f) = a.filter.as_ref().filter(|f| !f.expression.is_empty()) else {
            continue;
        };
        let p = at.k("filter").k("expression");
        // cel-rust's parser recurses per term and per level: a text beyond the proxy's
        // bounds is not parsed here (istiod's CEL has bounds of its own)
        if let Err(e) = check_filter_text(&f.expression) {
            rep.error(&p, e);
        } else if let Err(e) = parse_filter(&f.expression) {
            rep.error(&p, format!("must be a valid CEL expression, {e}"));
        }
    }
}

/// `validateTelemetryProviders`.
fn providers(list: &[ProviderRef], at: &FieldPath, rep: &mut Report<'_>) {
    for (i, p) in list.iter().enumerate() {
        if p.name.is_empty() {
            rep.error(
                &at.ki("providers", i).k("name"),
                "providers.name may not be empty",
            );
        }
    }
}

/// `validateTelemetryMetrics`.
fn metrics(t: &Telemetry, at: &FieldPath, rep: &mut Report<'_>) {
    for (i, m) in t.metrics.iter().enumerate() {
        let at = at.ki("metrics", i);
        providers(&m.providers, &at, rep);
        for (j, o) in m.overrides.iter().enumerate() {
            let at = at.ki("overrides", j);
            if let Some(m) = &o.match_ {
                // a protobuf oneof (the CRD's schema refuses both)
                oneof(
                    &[
                        ("metric", m.metric.is_some()),
                        ("customMetric", m.custom_metric.is_some()),
                    ],
                    &at.k("match"),
                    rep,
                );
            }
            if let Some(c) = o.match_.as_ref().and_then(|s| s.custom_metric.as_ref())
                && c.is_empty()
            {
                rep.error(
                    &at.k("match").k("customMetric"),
                    "customMetric may not be empty",
                );
            }
            for (name, to) in &o.tag_overrides {
                let p = at.k("tagOverrides").k(name);
                if name.is_empty() {
                    rep.warn(&p, "tagOverrides.name may not be empty");
                }
                let value = to.value.as_deref().unwrap_or("");
                match to.operation {
                    TagOperation::Upsert if value.is_empty() => rep.error(
                        &p,
                        "tagOverrides.value must be set when operation is UPSERT",
                    ),
                    TagOperation::Remove if !value.is_empty() => rep.error(
                        &p,
                        "tagOverrides.value may only be set when operation is UPSERT",
                    ),
                    _ => {}
                }
            }
        }
    }
}

/// `validateTelemetryTracing`.
fn tracing(t: &Telemetry, at: &FieldPath, rep: &mut Report<'_>) {
    if t.tracing.len() > 1 {
        rep.warn(
            &at.k("tracing"),
            "multiple tracing is not currently supported",
        );
    }
    for (i, tr) in t.tracing.iter().enumerate() {
        let at = at.ki("tracing", i);
        if tr.providers.len() > 1 {
            rep.warn(
                &at.k("providers"),
                "multiple providers is not currently supported",
            );
        }
        providers(&tr.providers, &at, rep);
        if let Some(p) = tr.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            rep.error(
                &at.k("randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            );
        }
        for (name, tag) in &tr.custom_tags {
            let p = at.k("customTags").k(name);
            if name.is_empty() {
                rep.error(&p, "tag name may not be empty");
            }
            // a protobuf oneof (the CRD's schema refuses two kinds); a tag of no kind (`{}`)
            // is not nil: Istio's check passes it
            oneof(
                &[
                    ("literal", tag.literal.is_some()),
                    ("environment", tag.environment.is_some()),
                    ("header", tag.header.is_some()),
                    ("formatter", tag.formatter.is_some()),
                ],
                &p,
                rep,
            );
            match (&tag.literal, &tag.header, &tag.environment, &tag.formatter) {
                (Some(l), ..) if l.value.is_empty() => {
                    rep.error(&p.k("literal"), "literal tag value may not be empty")
                }
                (_, Some(h), ..) if h.name.is_empty() => {
                    rep.error(&p.k("header"), "header tag name may not be empty")
                }
                (_, _, Some(e), _) if e.name.is_empty() => {
                    rep.error(&p.k("environment"), "environment tag name may not be empty")
                }
                _ => {}
            }
        }
    }
}
