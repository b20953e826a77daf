//! Istio's access log through the real proxy (`ProxyBootstrap.accessLog`, MeshConfig's
//! `accessLogFile` / `accessLogEncoding`): one line per request, in Istio's default text
//! format or its JSON, with the response flags the proxy decided (`NR`, `UH`), the upstream
//! host and cluster, the route's name, the bytes and the trace id.

use crate::support;

use std::path::Path;

use support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A proxy logging to `file` in `encoding`, with routes named `ok` (to `reviews` v1), and
/// `empty` (to a subset without endpoints), an inbound listener forwarding to the backend;
/// sends `/ok` (with a trace), `/empty`, `/missing` (no route) and one inbound request.
/// Returns the lines and the backend's port.
async fn scenario(encoding: &str, file: &Path) -> (Vec<String>, u16) {
    let v1 = backend("v1").await;
    let yaml = format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - name: empty
    match: [{{uri: {{prefix: /empty}}}}]
    route: [{{destination: {{host: reviews, subset: v9}}}}]
  - name: ok
    match: [{{uri: {{prefix: /ok}}}}]
    route: [{{destination: {{host: reviews, subset: v1}}}}]
",
        bootstrap(
            1,
            &format!(
                "  accessLog: {{path: {}, encoding: {encoding}}}\n  inbound: {{address: 127.0.0.1, port: 0, localApp: 127.0.0.1:{}}}\n",
                file.display(),
                v1.port()
            )
        ),
        service_entry("reviews", 9080, "HTTP", &[&v1]),
        destination_rule("reviews", &["v1", "v9"], ""),
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut b = http::Request::builder()
            .uri(path)
            .header("host", "reviews")
            .header("user-agent", "e2e-client");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(full("")).unwrap()
    };
    let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let r = c
        .send(get(
            "/ok",
            &[("traceparent", &tp), ("x-request-id", "req-ok")],
        ))
        .await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "v1"), "{r:?}");
    let r = c.send(get("/empty", &[])).await;
    assert_eq!((r.status.as_u16(), r.flags()), (503, "UH"), "{r:?}");
    let r = c.send(get("/missing", &[])).await;
    assert_eq!((r.status.as_u16(), r.flags()), (404, "NR"), "{r:?}");
    let inbound = p.proxy.inbound_addr().unwrap();
    let r = get_once(inbound, "reviews", &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    // every line queued so far is in the file (no waiting on the writer thread's timing)
    p.proxy.flush_telemetry();
    let (status, stats) = admin_get(p.admin, "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &stats,
            "mesh_proxy_telemetry_dropped_total{sink=\"access_log\"}"
        ),
        0.0,
        "nothing dropped"
    );
    let text = std::fs::read_to_string(file).unwrap();
    (text.lines().map(str::to_owned).collect(), v1.port())
}

fn line<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
}

#[tokio::test]
async fn text_lines_are_istio_s_default_format_with_flags_upstream_and_route() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let (lines, port) = scenario("TEXT", &file).await;
    assert_eq!(lines.len(), 4, "{lines:#?}");

    let ok = line(&lines, "/ok ");
    assert!(ok.starts_with('['), "{ok}");
    assert!(
        ok.contains("] \"GET /ok HTTP/1.1\" 200 - via_upstream - \"-\" "),
        "{ok}"
    );
    assert!(
        ok.contains(&format!(
            "\"-\" \"e2e-client\" \"req-ok\" \"reviews\" \"127.0.0.1:{port}\" outbound|9080|v1|reviews.default.svc.cluster.local "
        )),
        "{ok}"
    );
    assert!(ok.ends_with(" - ok"), "route name last: {ok}");
    // bytes received and sent (the head and the body; the backend answers a body)
    let fields: Vec<&str> = ok.split(' ').collect();
    let at = fields.iter().position(|f| *f == "\"-\"").unwrap();
    let (received, sent): (u64, u64) = (
        fields[at + 1].parse().unwrap(),
        fields[at + 2].parse().unwrap(),
    );
    assert!(received > 0 && sent > 0, "{ok}");

    let uh = line(&lines, "/empty ");
    assert!(
        uh.contains("\"GET /empty HTTP/1.1\" 503 UH no_healthy_upstream "),
        "{uh}"
    );
    assert!(
        uh.contains("\"-\" - "),
        "no upstream host nor cluster: {uh}"
    );
    assert!(uh.ends_with(" - empty"), "{uh}");

    let nr = line(&lines, "/missing ");
    assert!(
        nr.contains("\"GET /missing HTTP/1.1\" 404 NR route_not_found "),
        "{nr}"
    );
    assert!(nr.ends_with(" - -"), "no route, no name: {nr}");
}

#[tokio::test]
async fn json_lines_have_istio_s_keys_and_the_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    let (lines, port) = scenario("JSON", &file).await;
    let all: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(all.len(), 4, "{lines:#?}");
    let by_path = |p: &str| {
        all.iter()
            .find(|v| v["path"] == p && v["upstream_cluster"] != format!("inbound|{port}||"))
            .unwrap_or_else(|| panic!("no {p} in {lines:#?}"))
    };

    let ok = by_path("/ok");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["response_code"], 200);
    assert_eq!(ok["response_flags"], "-");
    assert_eq!(ok["response_code_details"], "via_upstream");
    assert_eq!(ok["upstream_host"], format!("127.0.0.1:{port}"));
    assert_eq!(
        ok["upstream_cluster"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(ok["route_name"], "ok");
    assert_eq!(ok["request_id"], "req-ok");
    assert_eq!(ok["user_agent"], "e2e-client");
    assert_eq!(ok["authority"], "reviews");
    assert_eq!(ok["trace_id"], TRACE);
    assert!(ok["bytes_received"].as_u64().unwrap() > 0);
    assert!(ok["bytes_sent"].as_u64().unwrap() > 0);
    assert!(ok["duration"].is_u64());
    assert!(
        ok["downstream_remote_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let uh = by_path("/empty");
    assert_eq!(
        (uh["response_code"].as_u64(), uh["response_flags"].as_str()),
        (Some(503), Some("UH"))
    );
    assert_eq!(uh["upstream_host"], serde_json::Value::Null);
    assert_eq!(uh["route_name"], "empty");

    let nr = by_path("/missing");
    assert_eq!(
        (nr["response_code"].as_u64(), nr["response_flags"].as_str()),
        (Some(404), Some("NR"))
    );
    assert_eq!(nr["route_name"], serde_json::Value::Null);

    // the inbound side logs too: Istio's inbound cluster, the local application, a trace id
    // (the inbound listener starts or continues a trace as the outbound one does)
    let inbound = all
        .iter()
        .find(|v| v["upstream_cluster"] == format!("inbound|{port}||"))
        .unwrap_or_else(|| panic!("no inbound line in {lines:#?}"));
    assert_eq!(inbound["response_code"], 200);
    assert_eq!(inbound["upstream_host"], format!("127.0.0.1:{port}"));
    assert_eq!(inbound["trace_id"].as_str().unwrap().len(), 32);
}
