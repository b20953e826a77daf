use std::time::{Duration, UNIX_EPOCH};

use http::HeaderMap;

use super::*;

/// What an entry borrows: the request's headers, the endpoint's metadata, the peer.
struct Parts {
    headers: HeaderMap,
    meta: mesh_core::ext::EndpointMeta,
    peer: mesh_core::ext::PeerIdentity,
}

fn headers() -> Parts {
    let mut labels = mesh_core::selector::Labels::new();
    labels.insert("app".into(), "reviews".into());
    labels.insert("version".into(), "v2".into());
    labels.insert("team".into(), "books".into());
    Parts {
        headers: header_map(),
        meta: mesh_core::ext::EndpointMeta {
            labels,
            namespace: "bookinfo".into(),
            workload: Some("reviews-v2".into()),
        },
        peer: mesh_core::ext::PeerIdentity::new(mesh_core::identity::SpiffeId::new(
            "cluster.local",
            "frontend",
            "web",
        )),
    }
}

/// An entry with every attribute the filter fills.
fn full(parts: &Parts) -> LogEntry<'_> {
    let headers = &parts.headers;
    let mut e = LogEntry::new(UNIX_EPOCH);
    e.method = "POST";
    e.path = "/api/v1/items?limit=5";
    e.protocol = "HTTP/2";
    e.response_code = 503;
    e.response_code_details = "upstream_reset_before_response_started{connection_failure}";
    e.bytes_received = 11;
    e.bytes_sent = 19;
    e.duration = Some(Duration::from_millis(1500));
    e.user_agent = Some("curl/8");
    e.request_id = Some("req-1");
    e.authority = Some("reviews:9080");
    e.upstream_host = Some("10.0.0.7:9080".parse().unwrap());
    e.upstream_cluster = Some("outbound|9080|v1|reviews.default.svc.cluster.local");
    e.upstream_local_address = Some("10.0.0.1:41234".parse().unwrap());
    e.upstream_transport_failure_reason = Some("TLS_error");
    e.downstream_local_address = Some("127.0.0.1:15001".parse().unwrap());
    e.downstream_remote_address = Some("10.1.2.3:5555".parse().unwrap());
    e.requested_server_name = Some("outbound_.9080_._.reviews");
    e.route_name = Some("default");
    e.request_headers = Some(headers);
    e.downstream_tls = true;
    e.mtls = true;
    e.grpc_status = Some(14);
    e.upstream_meta = Some(&parts.meta);
    e.downstream_peer = Some(&parts.peer);
    e
}

fn header_map() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-debug", "yes".parse().unwrap());
    h.insert("referer", "https://example.com/".parse().unwrap());
    h.append("x-multi", "a".parse().unwrap());
    h.append("x-multi", "b".parse().unwrap());
    h
}

fn yes(expr: &str, e: &LogEntry<'_>) -> bool {
    LogFilter::new(expr)
        .unwrap_or_else(|err| panic!("{expr}: {err}"))
        .matches(e)
}

#[test]
fn every_attribute_the_proxy_lists_is_filled() {
    let h = headers();
    let e = full(&h);
    // each alone: the filter fills what it reads, and only that
    for attr in mesh_core::telemetry::FILTER_ATTRIBUTES {
        assert!(yes(&format!("has({attr})"), &e), "{attr} is not filled");
    }
    // all at once
    let all: Vec<String> = mesh_core::telemetry::FILTER_ATTRIBUTES
        .iter()
        .map(|a| format!("has({a})"))
        .collect();
    assert!(yes(&all.join(" && "), &e));
}

#[test]
fn attributes_have_envoys_values_and_types() {
    let h = headers();
    let e = full(&h);
    for expr in [
        "request.path == '/api/v1/items?limit=5'",
        "upstream_peer.workload == 'reviews-v2'",
        "upstream_peer.namespace == 'bookinfo'",
        "upstream_peer.app == 'reviews' && upstream_peer.version == 'v2'",
        "upstream_peer.service == 'reviews' && upstream_peer.revision == 'v2'",
        "upstream_peer.labels['team'] == 'books'",
        "downstream_peer.namespace == 'frontend'",
        "request.url_path == '/api/v1/items'",
        "request.host == 'reviews:9080'",
        "request.scheme == 'https'",
        "request.method == 'POST'",
        "request.headers['x-debug'] == 'yes'",
        "request.headers['x-multi'] == 'a,b'",
        "request.referer == 'https://example.com/'",
        "request.useragent.startsWith('curl')",
        "request.id == 'req-1'",
        "request.protocol == 'HTTP/2'",
        "request.duration > duration('1s') && request.duration < duration('2s')",
        "request.size == 11",
        "response.code >= 500",
        "response.code_details.contains('connection_failure')",
        "response.grpc_status == 14",
        "response.size == 19",
        "source.address == '10.1.2.3:5555' && source.port == 5555",
        "destination.address == '127.0.0.1:15001' && destination.port == 15001",
        "connection.mtls",
        "connection.requested_server_name.endsWith('reviews')",
        "upstream.address == '10.0.0.7:9080' && upstream.port == 9080",
        "upstream.local_address == '10.0.0.1:41234'",
        "upstream.transport_failure_reason == 'TLS_error'",
        "xds.cluster_name.startsWith('outbound|9080|v1|')",
        "xds.route_name == 'default'",
        "request.url_path.matches('^/api/v[0-9]+/')",
    ] {
        assert!(yes(expr, &e), "{expr}");
    }
}

#[test]
fn false_an_error_or_a_non_boolean_skips_the_line() {
    let h = headers();
    let e = full(&h);
    assert!(!yes("response.code < 400", &e));
    // a missing attribute or header is an error: skipped, as Envoy's filter
    assert!(!yes("request.headers['absent'] == 'x'", &e));
    assert!(!yes("response.headers['x'] == 'y'", &e));
    // a non-boolean result
    assert!(!yes("response.code", &e));
    // no response: `response.code` is absent
    let mut none = LogEntry::new(UNIX_EPOCH);
    none.method = "GET";
    assert!(!yes("response.code >= 400", &none));
    assert!(yes("!has(response.code)", &none));
}

#[test]
fn a_tcp_line_has_the_sizes_of_request_and_response_only() {
    let mut e = LogEntry::new(UNIX_EPOCH);
    e.protocol = "";
    e.upstream_host = Some("10.0.0.7:5432".parse().unwrap());
    e.bytes_received = 7;
    e.bytes_sent = 9;
    assert!(yes("upstream.port == 5432", &e));
    assert!(yes("request.size == 7 && response.size == 9", &e));
    assert!(yes("!has(request.path) && !has(response.code)", &e));
    assert!(!yes("response.code >= 400", &e));
}

#[test]
fn an_evaluator_panic_skips_the_line_and_the_filter_from_then_on() {
    // cel-rust 0.11 reaches a `todo!()` for a macro on a value that is neither a list nor
    // a map
    let f = LogFilter::new("request.path.exists(c, c == '?')").unwrap();
    let h = headers();
    let e = full(&h);
    assert!(!f.matches(&e));
    assert!(!f.matches(&e), "still skipped, not evaluated again");
}

#[test]
fn the_filter_asks_for_the_headers_only_when_it_reads_them() {
    assert!(
        LogFilter::new("request.headers['x'] == 'y'")
            .unwrap()
            .needs_headers()
    );
    assert!(
        !LogFilter::new("response.code >= 400")
            .unwrap()
            .needs_headers()
    );
    assert!(LogFilter::new("response.code >=").is_err());
    // a root read as a whole (an index, a `has` on it) gets all of it
    assert!(
        LogFilter::new("request['headers']['x'] == 'y'")
            .unwrap()
            .needs_headers()
    );
}

#[test]
fn an_attribute_or_header_read_directly_has_the_evaluators_value() {
    // `Direct` skips CEL's evaluator for `request.host`, `string(destination.port)` and
    // `request.headers['x']`: on a full line, an empty HTTP one and a TCP one, its value
    // is the evaluator's (an error is `None`)
    let h = headers();
    let full = full(&h);
    let mut empty = LogEntry::new(UNIX_EPOCH);
    empty.method = "GET";
    let mut tcp = LogEntry::new(UNIX_EPOCH);
    tcp.bytes_received = 7;
    tcp.upstream_host = Some("10.0.0.7:9080".parse().unwrap());
    let mut exprs: Vec<String> = mesh_core::telemetry::FILTER_ATTRIBUTES
        .iter()
        .flat_map(|a| [a.to_string(), format!("string({a})")])
        .collect();
    let evaluated_only = [
        "string(request.headers)",
        "string(request.duration)",
        "string(connection.mtls)",
    ];
    exprs.retain(|e| !evaluated_only.contains(&e.as_str()));
    exprs.extend(
        ["x-debug", "x-multi", "x-missing"]
            .iter()
            .map(|h| format!("request.headers['{h}']")),
    );
    for expr in &exprs {
        let direct = CelExpression::new(expr).unwrap();
        assert!(direct.direct.is_some(), "{expr} is read directly");
        let mut evaluated = CelExpression::new(expr).unwrap();
        evaluated.direct = None;
        for e in [&full, &empty, &tcp] {
            let (d, v) = (direct.evaluate(e), evaluated.evaluate(e));
            assert_eq!(d, v, "{expr} on {:?}", e.method);
        }
    }
    // anything else goes to the evaluator
    let others = [
        "response.code >= 400",
        "request.host + 'x'",
        "has(request.host)",
        // cel-rust matches map keys as written: an uppercase name is the evaluator's (null)
        "request.headers['X-Debug']",
    ];
    for expr in others.iter().chain(&evaluated_only) {
        assert!(CelExpression::new(expr).unwrap().direct.is_none(), "{expr}");
    }
}

#[test]
fn doubles_print_with_six_significant_digits_as_abseil() {
    for (f, want) in [
        (0.1, "0.1"),
        (1.5, "1.5"),
        (100.0, "100"),
        (123456.0, "123456"),
        (1234567.0, "1.23457e+06"),
        (0.0001, "0.0001"),
        (0.00001234, "1.234e-05"),
        (-2.5, "-2.5"),
        (0.0, "0"),
    ] {
        assert_eq!(text(&Value::Float(f)).as_deref(), Some(want), "{f}");
    }
}
