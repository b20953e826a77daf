use super::*;
use crate::config::{CheckMode, load_str, load_str_with};

/// A bootstrap for `productpage` in `default` (sampling 1 %), then Telemetries, each
/// `(namespace, name, spec)`.
fn yaml(telemetries: &[(&str, &str, &str)]) -> String {
    let mut s = String::from(
        "apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {name: p}\nspec:\n  workload: {name: productpage, namespace: default, labels: {app: productpage}}\n",
    );
    for (ns, name, spec) in telemetries {
        s.push_str(&format!(
            "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
        ));
    }
    s
}

fn view(telemetries: &[(&str, &str, &str)]) -> TelemetryView {
    let c = load_str("t.yaml", &yaml(telemetries)).unwrap();
    resolve(&c.snapshot)
}

#[test]
fn without_telemetry_the_bootstrap_decides_everything() {
    let v = view(&[]);
    assert_eq!(v.access_log, Sides::both(AccessLogChoice::Bootstrap));
    assert_eq!(v.tracing.client.sampling, 1.0, "ProxyBootstrap's default");
    assert!(v.tracing.client.report_spans && v.tracing.server.report_spans);
    assert_eq!(v.metrics, Sides::both(MetricSet::ALL));
}

#[test]
fn the_istio_tasks_mesh_default_turns_the_envoy_log_on_for_both_sides() {
    // istio.io/latest/docs/tasks/observability/logs/access-log ("Using Telemetry API")
    let v = view(&[(
        "istio-system",
        "mesh-default",
        "  accessLogging:\n  - providers:\n    - name: envoy\n",
    )]);
    assert_eq!(v.access_log, Sides::both(AccessLogChoice::Envoy));
}

#[test]
fn a_namespace_or_workload_telemetry_overrides_the_mesh_default_by_side() {
    let mesh = (
        "istio-system",
        "mesh-default",
        "  accessLogging:\n  - providers: [{name: envoy}]\n",
    );
    // the namespace turns the client side off; the server side keeps the mesh's log
    let ns = (
        "default",
        "ns",
        "  accessLogging:\n  - match: {mode: CLIENT}\n    disabled: true\n",
    );
    let v = view(&[mesh, ns]);
    assert_eq!(v.access_log.client, AccessLogChoice::Off);
    assert_eq!(v.access_log.server, AccessLogChoice::Envoy);
    // the workload's own turns it back on (an entry without providers uses the previous
    // entry's)
    let wl = (
        "default",
        "pp",
        "  selector: {matchLabels: {app: productpage}}\n  accessLogging:\n  - disabled: false\n",
    );
    let v = view(&[mesh, ns, wl]);
    assert_eq!(v.access_log, Sides::both(AccessLogChoice::Envoy));
    // a selector for another workload, or another namespace's default, changes nothing
    let other = (
        "default",
        "reviews",
        "  selector: {matchLabels: {app: reviews}}\n  accessLogging:\n  - disabled: false\n",
    );
    let elsewhere = ("bookinfo", "ns", "  accessLogging:\n  - disabled: false\n");
    let v = view(&[mesh, ns, other, elsewhere]);
    assert_eq!(v.access_log.client, AccessLogChoice::Off);
}

#[test]
fn a_disabled_entry_without_a_provider_in_scope_leaves_the_bootstraps_log() {
    // Istio's mergeLogs: no provider resolves, so the `accessLogFile` fallback stays
    let v = view(&[("default", "off", "  accessLogging:\n  - disabled: true\n")]);
    assert_eq!(v.access_log, Sides::both(AccessLogChoice::Bootstrap));
    // an unknown provider is skipped as Istio skips it
    let v = view(&[(
        "default",
        "otel",
        "  accessLogging:\n  - providers: [{name: otel-als}]\n",
    )]);
    assert_eq!(v.access_log, Sides::both(AccessLogChoice::Bootstrap));
    // naming the provider off blocks the fallback
    let v = view(&[(
        "default",
        "off",
        "  accessLogging:\n  - providers: [{name: envoy}]\n    disabled: true\n",
    )]);
    assert_eq!(v.access_log, Sides::both(AccessLogChoice::Off));
}

#[test]
fn tracing_replaces_sampling_and_span_reporting_when_set_by_side() {
    let v = view(&[
        (
            "istio-system",
            "mesh-default",
            "  tracing:\n  - randomSamplingPercentage: 100.0\n",
        ),
        (
            "default",
            "ns",
            "  tracing:\n  - match: {mode: SERVER}\n    disableSpanReporting: true\n",
        ),
    ]);
    assert_eq!(v.tracing.client.sampling, 100.0);
    assert_eq!(v.tracing.server.sampling, 100.0, "unset below: the mesh's");
    assert!(v.tracing.client.report_spans);
    assert!(!v.tracing.server.report_spans);
    // unset everywhere: the bootstrap's sampling, as Istio falls back to MeshConfig's
    let v = view(&[(
        "default",
        "ns",
        "  tracing:\n  - disableSpanReporting: true\n",
    )]);
    assert_eq!(v.tracing.server.sampling, 1.0);
}

#[test]
fn metrics_overrides_disable_by_metric_and_mode_in_order() {
    let v = view(&[(
        "istio-system",
        "mesh-default",
        "  metrics:\n  - providers: [{name: prometheus}]\n    overrides:\n    - match: {metric: REQUEST_DURATION, mode: CLIENT}\n      disabled: true\n    - match: {metric: TCP_SENT_BYTES}\n      disabled: true\n",
    )]);
    assert!(!v.metrics.client.has(IstioMetric::RequestDuration));
    assert!(v.metrics.server.has(IstioMetric::RequestDuration));
    assert!(v.metrics.client.has(IstioMetric::RequestCount));
    assert!(!v.metrics.client.has(IstioMetric::TcpSentBytes));
    assert!(!v.metrics.server.has(IstioMetric::TcpSentBytes));
    // every metric off on the server side, then the workload turns one back on: Istio's
    // mergeMetrics clears the side's all-disabled mark, so the others come back too
    let off = (
        "default",
        "ns",
        "  metrics:\n  - overrides:\n    - match: {mode: SERVER}\n      disabled: true\n",
    );
    let v = view(&[off]);
    assert!(v.metrics.server.is_empty());
    assert_eq!(v.metrics.client, MetricSet::ALL);
    let on = (
        "default",
        "pp",
        "  selector: {matchLabels: {app: productpage}}\n  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, mode: SERVER}\n      disabled: false\n",
    );
    let v = view(&[off, on]);
    assert_eq!(v.metrics.server, MetricSet::ALL);
}

#[test]
fn metrics_without_prometheus_among_the_providers_are_off() {
    let v = view(&[(
        "istio-system",
        "mesh-default",
        "  metrics:\n  - providers: [{name: stackdriver}]\n",
    )]);
    assert_eq!(v.metrics, Sides::both(MetricSet::NONE));
}

#[test]
fn a_telemetry_with_target_refs_does_not_apply_to_a_sidecar() {
    let c = load_str(
        "t.yaml",
        &yaml(&[(
            "default",
            "gw",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]\n  accessLogging:\n  - providers: [{name: envoy}]\n",
        )]),
    )
    .unwrap();
    assert_eq!(
        resolve(&c.snapshot).access_log,
        Sides::both(AccessLogChoice::Bootstrap)
    );
    assert!(
        c.unenforced
            .iter()
            .any(|d| d.field.as_ref().unwrap().to_string() == "spec.targetRefs"),
        "told: {:?}",
        c.unenforced
    );
}

#[test]
fn two_telemetries_at_one_level_are_refused_with_file_line_and_field() {
    // Istio's analyzers: IST0160 (two without a selector in a namespace), IST0159 (two
    // selecting one workload)
    let a = ("default", "a", "  accessLogging:\n  - disabled: true\n");
    let b = ("default", "b", "  accessLogging:\n  - disabled: false\n");
    let err = load_str("t.yaml", &yaml(&[a, b])).unwrap_err();
    let d = err.errors().next().unwrap();
    assert_eq!(
        d.resource.as_ref().unwrap().to_string(),
        "Telemetry/default/b"
    );
    assert!(d.message.contains("IST0160"), "{}", d.message);
    assert_eq!(d.line, Some(17), "the later one's spec");
    let s = "  selector: {matchLabels: {app: productpage}}\n";
    let err = load_str("t.yaml", &yaml(&[("default", "a", s), ("default", "b", s)])).unwrap_err();
    let d = err.errors().next().unwrap();
    assert_eq!(d.field.as_ref().unwrap().to_string(), "spec.selector");
    assert!(d.message.contains("IST0159"), "{}", d.message);
    // Istio's own rules (`validate --istio`) accept them, as its webhook does
    assert!(load_str_with("t.yaml", &yaml(&[a, b]), CheckMode::Istio).is_ok());
    // another namespace's pair is not this workload's concern
    assert!(
        load_str(
            "t.yaml",
            &yaml(&[("bookinfo", "a", a.2), ("bookinfo", "b", b.2)])
        )
        .is_ok()
    );
}

#[test]
fn istios_validation_messages() {
    let cases = [
        (
            "  tracing:\n  - randomSamplingPercentage: 101\n",
            "spec.tracing[0].randomSamplingPercentage",
            "randomSamplingPercentage must be in range [0.0, 100.0]",
        ),
        (
            "  accessLogging:\n  - providers: [{name: \"\"}]\n",
            "spec.accessLogging[0].providers[0].name",
            "providers.name may not be empty",
        ),
        (
            "  metrics:\n  - overrides:\n    - tagOverrides: {request_host: {operation: UPSERT}}\n",
            "spec.metrics[0].overrides[0].tagOverrides.request_host",
            "tagOverrides.value must be set when operation is UPSERT",
        ),
        (
            "  metrics:\n  - overrides:\n    - tagOverrides: {request_host: {operation: REMOVE, value: x}}\n",
            "spec.metrics[0].overrides[0].tagOverrides.request_host",
            "tagOverrides.value may only be set when operation is UPSERT",
        ),
        (
            "  metrics:\n  - overrides:\n    - match: {customMetric: \"\"}\n",
            "spec.metrics[0].overrides[0].match.customMetric",
            "customMetric may not be empty",
        ),
        (
            "  tracing:\n  - customTags: {team: {literal: {value: \"\"}}}\n",
            "spec.tracing[0].customTags.team.literal",
            "literal tag value may not be empty",
        ),
        (
            "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, customMetric: x}\n",
            "spec.metrics[0].overrides[0].match",
            "only one of metric, customMetric may be set",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: g}]\n",
            "spec",
            "only one of targetRefs or workloadSelector can be set",
        ),
    ];
    for (spec, field, message) in cases {
        let err = load_str_with("t.yaml", &yaml(&[("default", "t", spec)]), CheckMode::Istio)
            .unwrap_err();
        let d = err.errors().next().unwrap();
        assert_eq!(d.field.as_ref().unwrap().to_string(), field, "{spec}");
        assert_eq!(d.message, message, "{spec}");
    }
    // Istio's warnings
    let c = load_str_with(
        "t.yaml",
        &yaml(&[(
            "default",
            "t",
            "  tracing:\n  - providers: [{name: a}, {name: b}]\n  - randomSamplingPercentage: 5\n",
        )]),
        CheckMode::Istio,
    )
    .unwrap();
    let w: Vec<&str> = c.warnings.iter().map(|d| d.message.as_str()).collect();
    assert!(
        w.contains(&"multiple tracing is not currently supported"),
        "{w:?}"
    );
    assert!(
        w.contains(&"multiple providers is not currently supported"),
        "{w:?}"
    );
}

#[test]
fn fields_without_effect_are_told_by_the_support_table() {
    let c = load_str(
        "t.yaml",
        &yaml(&[(
            "default",
            "t",
            "  tracing:\n  - providers: [{name: otel}]\n    customTags: {team: {literal: {value: a}}}\n  accessLogging:\n  - providers: [{name: envoy}, {name: otel-als}]\n    filter: {expression: response.code >= 400}\n  metrics:\n  - providers: [{name: prometheus}]\n    overrides:\n    - tagOverrides: {request_host: {operation: REMOVE}, peer_cluster: {value: upstream_peer.cluster}}\n",
        )]),
    )
    .unwrap();
    let mut fields: Vec<String> = c
        .unenforced
        .iter()
        .map(|d| d.field.as_ref().unwrap().to_string())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "spec.accessLogging[0].providers[1].name",
            "spec.metrics[0].overrides[0].tagOverrides.peer_cluster.value",
            "spec.tracing[0].providers[0].name",
        ]
    );
}

#[test]
fn provider_names_compare_case_insensitively_as_istios_fetch_provider() {
    let c = load_str(
        "t.yaml",
        &yaml(&[(
            "istio-system",
            "mesh-default",
            "  accessLogging:\n  - providers: [{name: Envoy}]\n  metrics:\n  - providers: [{name: Prometheus}]\n",
        )]),
    )
    .unwrap();
    let v = resolve(&c.snapshot);
    assert_eq!(v.access_log, Sides::both(AccessLogChoice::Envoy));
    assert_eq!(v.metrics, Sides::both(MetricSet::ALL));
    assert!(c.unenforced.is_empty(), "{:?}", c.unenforced);
}

#[test]
fn a_custom_metric_override_clears_the_all_disabled_mark_as_in_istio() {
    // mergeMetrics: every override but ALL_METRICS-disabled clears the side's mark
    let v = view(&[
        (
            "istio-system",
            "mesh-default",
            "  metrics:\n  - overrides:\n    - disabled: true\n",
        ),
        (
            "default",
            "ns",
            "  metrics:\n  - overrides:\n    - match: {customMetric: my_metric, mode: CLIENT}\n      disabled: false\n",
        ),
    ]);
    assert_eq!(v.metrics.client, MetricSet::ALL);
    assert!(v.metrics.server.is_empty());
}

#[test]
fn the_grpc_message_counts_are_standard_metrics_turned_off_as_the_others() {
    let v = view(&[(
        "default",
        "t",
        "  metrics:\n  - overrides:\n    - match: {metric: GRPC_REQUEST_MESSAGES}\n      disabled: true\n",
    )]);
    assert!(!v.metrics.client.has(IstioMetric::GrpcRequestMessages));
    assert!(v.metrics.client.has(IstioMetric::GrpcResponseMessages));
}

#[test]
fn the_filter_is_the_last_one_written_for_envoy_on_the_side() {
    let v = view(&[
        (
            "istio-system",
            "mesh-default",
            "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: response.code >= 400}\n",
        ),
        (
            "default",
            "ns",
            "  accessLogging:\n  - match: {mode: SERVER}\n    providers: [{name: envoy}]\n",
        ),
    ]);
    assert_eq!(
        v.access_log_filter.client.as_deref(),
        Some("response.code >= 400")
    );
    assert_eq!(v.access_log_filter.server, None, "the namespace's has none");
    assert_eq!(v.access_log, Sides::both(AccessLogChoice::Envoy));
    // a side whose log is off, or the bootstrap's, has no filter
    let v = view(&[(
        "default",
        "ns",
        "  accessLogging:\n  - providers: [{name: envoy}]\n    match: {mode: CLIENT}\n    disabled: true\n    filter: {expression: \"true\"}\n",
    )]);
    assert_eq!(v.access_log_filter, Sides::both(None));
}

#[test]
fn a_filter_is_a_valid_cel_expression_as_istiod_checks() {
    let err = load_str_with(
        "t.yaml",
        &yaml(&[(
            "default",
            "t",
            "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: \"response.code >=\"}\n",
        )]),
        CheckMode::Istio,
    )
    .unwrap_err();
    let d = err.errors().next().unwrap();
    assert_eq!(
        d.field.as_ref().unwrap().to_string(),
        "spec.accessLogging[0].filter.expression"
    );
    assert!(
        d.message.starts_with("must be a valid CEL expression, "),
        "{}",
        d.message
    );
}

#[test]
fn a_filter_reading_what_the_proxy_does_not_fill_is_told() {
    assert_eq!(
        unsupported_attributes(
            "response.headers['x'] == 'a' || request.url_path == '/' || metadata.x || 'upstream.nope' == ''"
        ),
        ["response.headers", "metadata"]
    );
    let c = load_str(
        "t.yaml",
        &yaml(&[(
            "default",
            "t",
            "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: \"response.code >= 400 && response.headers['x'] == 'y'\"}\n",
        )]),
    )
    .unwrap();
    let d = &c.unenforced[0];
    assert_eq!(
        d.field.as_ref().unwrap().to_string(),
        "spec.accessLogging[0].filter.expression"
    );
    assert!(d.message.contains("response.headers"), "{}", d.message);
}

#[test]
fn the_proxy_bounds_a_filter_it_evaluates() {
    // flat chains recurse in the parser and the evaluator once per term
    let long = vec!["1"; 600].join("+");
    let err = compile_filter(&format!("{long} > 0")).unwrap_err();
    assert!(err.contains("bytes long"), "{err}");
    let parens = format!("{}1{} > 0", "(".repeat(40), ")".repeat(40));
    let err = compile_filter(&parens).unwrap_err();
    assert!(err.contains("nests more than"), "{err}");
    let nots = format!("{}true", "!".repeat(40));
    let err = compile_filter(&nots).unwrap_err();
    assert!(err.contains("nests more than"), "{err}");
    // brackets inside a string literal are text
    assert!(compile_filter(&format!("request.path == '{}'", "(".repeat(40))).is_ok());
    let deep = format!("{} > 0", vec!["1"; 150].join("+"));
    assert!(compile_filter(&deep).unwrap_err().contains("levels deep"));
    let literal = "google.protobuf.Duration{seconds: 1} == duration('1s')";
    assert!(
        compile_filter(literal)
            .unwrap_err()
            .contains("message literals")
    );
    assert!(compile_filter("response.code >= 400 || request.url_path.startsWith('/api')").is_ok());
    // refused by the proxy's pipeline, with file, line and field; Istio's rules accept it
    let spec = format!(
        "  accessLogging:\n  - providers: [{{name: envoy}}]\n    filter: {{expression: \"{deep}\"}}\n"
    );
    let err = load_str("t.yaml", &yaml(&[("default", "t", &spec)])).unwrap_err();
    let d = err.errors().next().unwrap();
    assert_eq!(
        d.field.as_ref().unwrap().to_string(),
        "spec.accessLogging[0].filter.expression"
    );
    assert!(d.message.contains("levels deep"), "{}", d.message);
    assert!(
        load_str_with(
            "t.yaml",
            &yaml(&[("default", "t", &spec)]),
            CheckMode::Istio
        )
        .is_ok()
    );
}

#[test]
fn custom_tags_are_replaced_whole_by_the_last_entry_that_sets_them() {
    let v = view(&[
        (
            "istio-system",
            "mesh-default",
            "  tracing:\n  - customTags:\n      team: {literal: {value: bookinfo}}\n      user: {header: {name: X-User, defaultValue: anonymous}}\n      region: {environment: {name: MESH_TEST_UNSET_VARIABLE, defaultValue: eu}}\n      gone: {environment: {name: MESH_TEST_UNSET_VARIABLE}}\n",
        ),
        (
            "default",
            "ns",
            "  tracing:\n  - match: {mode: SERVER}\n    customTags:\n      side: {literal: {value: server}}\n",
        ),
    ]);
    let client: Vec<(&str, &CustomTagValue)> = v
        .tracing
        .client
        .custom_tags
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    assert_eq!(
        client,
        [
            ("region", &CustomTagValue::Fixed("eu".into())),
            ("team", &CustomTagValue::Fixed("bookinfo".into())),
            (
                "user",
                &CustomTagValue::Header {
                    name: "x-user".into(),
                    default: Some("anonymous".into())
                }
            ),
        ],
        "an unset variable without a default makes no tag"
    );
    assert_eq!(
        &*v.tracing.server.custom_tags,
        [("side".to_string(), CustomTagValue::Fixed("server".into()))]
    );
}

/// A side's overrides of `metric`, as `(name, value)` (`None`: REMOVE).
fn tags(t: &MetricTags, metric: IstioMetric) -> Vec<(String, Option<String>)> {
    t.get(metric)
        .iter()
        .map(|o| (o.name.clone(), o.value.as_deref().map(str::to_owned)))
        .collect()
}

#[test]
fn tag_overrides_merge_label_by_label_per_metric_and_side_in_order() {
    // pilot's mergeMetrics: `override.TagOverrides[k] = v` per metric and mode, each level
    // over the one before; the lists sorted by name (generateStatsConfig)
    let mesh = (
        "istio-system",
        "mesh-default",
        "  metrics:\n  - providers: [{name: prometheus}]\n    overrides:\n    - match: {metric: REQUEST_COUNT, mode: CLIENT_AND_SERVER}\n      tagOverrides: {grpc_response_status: {operation: REMOVE}, request_host: {value: request.host}}\n",
    );
    let ns = (
        "default",
        "ns",
        "  metrics:\n  - overrides:\n    - match: {mode: CLIENT}\n      tagOverrides: {request_host: {value: request.url_path}, source_app: {operation: REMOVE}}\n    - match: {metric: REQUEST_DURATION, mode: CLIENT}\n      disabled: true\n      tagOverrides: {x: {value: \"'y'\"}}\n",
    );
    let v = view(&[mesh, ns]);
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        tags(&v.metric_tags.client, IstioMetric::RequestCount),
        [
            ("grpc_response_status".to_owned(), None),
            ("request_host".to_owned(), some("request.url_path")),
            ("source_app".to_owned(), None),
        ]
    );
    assert_eq!(
        tags(&v.metric_tags.server, IstioMetric::RequestCount),
        [
            ("grpc_response_status".to_owned(), None),
            ("request_host".to_owned(), some("request.host")),
        ]
    );
    // ALL_METRICS (no metric) reaches the TCP metrics too
    assert_eq!(
        tags(&v.metric_tags.client, IstioMetric::TcpSentBytes),
        [
            ("request_host".to_owned(), some("request.url_path")),
            ("source_app".to_owned(), None),
        ]
    );
    assert!(
        v.metric_tags
            .server
            .get(IstioMetric::TcpSentBytes)
            .is_empty(),
        "the namespace's entry is the client side's"
    );
    // a metric that is off has no overrides to apply
    assert!(!v.metrics.client.has(IstioMetric::RequestDuration));
    assert!(
        v.metric_tags
            .client
            .get(IstioMetric::RequestDuration)
            .is_empty()
    );
    // without prometheus, no metric and no override
    let off = (
        "default",
        "ns",
        "  metrics:\n  - providers: [{name: stackdriver}]\n    overrides:\n    - tagOverrides: {a: {operation: REMOVE}}\n",
    );
    let v = view(&[mesh, off]);
    assert!(v.metric_tags.client.is_empty() && v.metric_tags.server.is_empty());
}

#[test]
fn what_the_proxy_does_with_odd_tag_overrides_is_told_in_proxy_mode_only() {
    // Istio's validation lets these through; its proxy logs and goes on: told here, with
    // the field, and not by `validate --istio`
    let y = yaml(&[(
        "default",
        "odd",
        "  metrics:\n  - overrides:\n    - tagOverrides:\n        request_host: {value: 'request.host +'}\n        le: {value: request.method}\n        source.app: {value: request.method}\n        source.app2: {operation: REMOVE}\n        fine: {value: request.method}\n        fine.2: {value: request.method}\n        fine_2: {value: request.method}\n        source_app: {operation: REMOVE}\n",
    )]);
    let c = load_str("t.yaml", &y).unwrap();
    let w: Vec<String> = c.warnings.iter().map(|d| d.to_string()).collect();
    let told = |field: &str, what: &str| {
        assert!(
            w.iter().any(|d| d.contains(field) && d.contains(what)),
            "{field}: {what}: {w:#?}"
        );
    };
    told("tagOverrides.request_host.value", "the label is left out");
    told("tagOverrides.le:", "Prometheus would refuse or take twice");
    told(
        r#"tagOverrides["source.app"]:"#,
        "Prometheus would refuse or take twice",
    );
    told(r#"tagOverrides["source.app2"]:"#, "nothing is removed");
    // `fine.2` and `fine_2` are one Prometheus name: the first (in name order) is added
    told(
        "tagOverrides.fine_2:",
        "another added label's once sanitized",
    );
    assert_eq!(w.len(), 5, "{w:#?}");
    let istio = load_str_with("t.yaml", &y, CheckMode::Istio).unwrap();
    assert!(istio.warnings.is_empty(), "{:#?}", istio.warnings);
}

#[test]
fn the_reporting_interval_is_the_last_set_for_prometheus() {
    // pilot's mergeMetrics: `reportingIntervals[provider]`, from each entry whose providers
    // (or its parent's) include the provider in scope
    let v = view(&[]);
    assert_eq!(v.tcp_reporting_interval, None, "Istio's default, 5 s");
    let mesh = (
        "istio-system",
        "mesh-default",
        "  metrics:\n  - providers: [{name: prometheus}]\n    reportingInterval: 10s\n",
    );
    let v = view(&[mesh]);
    assert_eq!(
        v.tcp_reporting_interval,
        Some(std::time::Duration::from_secs(10))
    );
    let ns = (
        "default",
        "ns",
        "  metrics:\n  - reportingInterval: 0s\n  - providers: [{name: other}]\n    reportingInterval: 1s\n  - providers: [{name: prometheus}]\n",
    );
    let v = view(&[mesh, ns]);
    assert_eq!(
        v.tcp_reporting_interval,
        Some(std::time::Duration::ZERO),
        "the namespace's first entry (prometheus inherited); not the other provider's"
    );
    assert_eq!(v.metrics, Sides::both(MetricSet::ALL));
}
