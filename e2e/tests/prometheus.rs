//! A real Prometheus (Debian's `prometheus` package; the test fails, saying how to install
//! it, when it is missing) scrapes a proxy under traffic every second, and the PromQL of
//! Istio's Grafana dashboards (istio/istio `manifests/addons/dashboards/
//! istio-service-dashboard.json` and `istio-workload-dashboard.json`, with Grafana's
//! variables filled in) returns the series an operator expects: request volume, success
//! rate, P50/P90/P99 durations, request and response sizes, by source and by destination,
//! from both reporters. Prometheus runs on a port of its own with its storage in a
//! temporary directory; the test waits by polling its query API.

use crate::support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_tls::ca::MeshCa;
use rustls::pki_types::ServerName;
use support::mtls::*;
use support::*;

/// How long Prometheus gets to start, scrape twice and answer.
const PROMETHEUS_LIMIT: Duration = Duration::from_secs(60);

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/stats/prometheus` every second.
    async fn start(dir: &std::path::Path, target: SocketAddr) -> Prometheus {
        let bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into());
        let config = dir.join("prometheus.yml");
        write(
            &config,
            &format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
- job_name: mesh-proxy
  metrics_path: /stats/prometheus
  static_configs: [{{targets: ['{target}']}}]
"
            ),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port().await));
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = match Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run {bin} ({e}): install Debian's `prometheus` package \
                 (`sudo apt-get install -y prometheus`, as .ci/run does) or set PROMETHEUS"
            ),
        };
        Prometheus { child, addr, log }
    }

    /// The result of an instant query (`data.result`), if Prometheus answers.
    async fn query(&self, promql: &str) -> Option<Vec<serde_json::Value>> {
        let path = format!("/api/v1/query?query={}", urlencode(promql));
        let (status, body) = admin_get_opt(self.addr, &path).await?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }

    /// Polls `promql` until every series of its result has a finite value and `check`
    /// accepts the result; returns it.
    async fn until(
        &mut self,
        promql: &str,
        check: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + PROMETHEUS_LIMIT;
        let mut last = None;
        loop {
            if let Some(result) = self.query(promql).await {
                let finite = !result.is_empty()
                    && result.iter().all(|s| {
                        s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(f64::is_finite)
                    });
                if finite && check(&result) {
                    return result;
                }
                last = Some(result);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no result for {promql}\nlast: {last:?}\n--- prometheus log ---\n{}",
                self.log_text()
            );
            // polling interval, not a synchronisation
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A GET over mTLS to the inbound listener, as `reviews.default.svc.cluster.local`.
async fn inbound_get(addr: SocketAddr, tls: &tokio_rustls::TlsConnector) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("reviews.default.svc.cluster.local").unwrap();
    let stream = tls.connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", "reviews.default.svc.cluster.local")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
}

/// The labels of a result's series.
fn label<'a>(series: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    series["metric"][name].as_str()
}

#[tokio::test]
async fn istio_s_dashboard_queries_return_series_from_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = backend("app").await;
    let ratings = backend("v1").await;
    // the `reviews-v1` sidecar: inbound over mTLS to its app, outbound to `ratings`
    let yaml = reviews_config(
        dir.path(),
        &ca,
        &app,
        &service_entry("ratings", 9080, "HTTP", &[&ratings]),
    );
    let p = start(&yaml).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let tls = client_tls(&ca, "productpage");
    let out = p.out;
    // traffic on both sides until the test ends
    let traffic = tokio::spawn(async move {
        let mut c = H1::connect(out).await;
        loop {
            inbound_get(inbound, &tls).await;
            let r = c.get("ratings:9080", &[]).await;
            assert_eq!(r.status, 200);
            // pacing of the load, not a synchronisation
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut prom = Prometheus::start(dir.path(), p.admin).await;

    // --- Istio Service Dashboard, $service = reviews, $qrep = destination (the server) ---
    let svc = r#"destination_service="reviews.default.svc.cluster.local""#;
    let server = format!(r#"reporter="destination",{svc}"#);
    let volume = format!("round(sum(irate(istio_requests_total{{{server}}}[1m])), 0.001)");
    let v = prom.until(&volume, |r| r.len() == 1).await;
    assert!(v[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
    let success = format!(
        r#"sum(irate(istio_requests_total{{{server},response_code!~"5.*"}}[1m])) / (sum(irate(istio_requests_total{{{server}}}[1m])) or on () vector(1))"#
    );
    let s = prom.until(&success, |r| r.len() == 1).await;
    assert_eq!(s[0]["value"][1], "1", "every request succeeded");
    for q in ["0.50", "0.90", "0.99"] {
        let duration = format!(
            "(histogram_quantile({q}, sum(irate(istio_request_duration_milliseconds_bucket{{{server}}}[1m])) by (le)) / 1000)"
        );
        prom.until(&duration, |r| r.len() == 1).await;
    }
    // by source: the peer's namespace and principal from its certificate
    let by_source = format!(
        r#"round(sum(irate(istio_requests_total{{connection_security_policy="mutual_tls",{svc},reporter=~"destination",source_workload=~".*",source_workload_namespace=~".*"}}[1m])) by (source_workload, source_workload_namespace, response_code), 0.001)"#
    );
    let r = prom.until(&by_source, |r| !r.is_empty()).await;
    assert_eq!(label(&r[0], "source_workload_namespace"), Some("default"));
    assert_eq!(label(&r[0], "source_workload"), Some("unknown"));
    assert_eq!(label(&r[0], "response_code"), Some("200"));
    for (family, q) in [
        ("istio_request_duration_milliseconds", "0.50"),
        ("istio_request_bytes", "0.90"),
        ("istio_response_bytes", "0.99"),
    ] {
        let by_source = format!(
            r#"histogram_quantile({q}, sum(irate({family}_bucket{{reporter=~"destination", connection_security_policy="mutual_tls", {svc}, source_workload=~".*", source_workload_namespace=~".*"}}[1m])) by (source_workload, source_workload_namespace, le))"#
        );
        prom.until(&by_source, |r| !r.is_empty()).await;
    }

    // --- Istio Service Dashboard, $service = ratings, $qrep = source (the client) ---
    let client = r#"reporter=~"source",destination_service="ratings.default.svc.cluster.local""#;
    let volume = format!("round(sum(irate(istio_requests_total{{{client}}}[1m])), 0.001)");
    prom.until(&volume, |r| r.len() == 1).await;
    let success = format!(
        r#"sum(irate(istio_requests_total{{{client},response_code!~"5.*"}}[1m])) / (sum(irate(istio_requests_total{{{client}}}[1m])) or on () vector(1))"#
    );
    let s = prom.until(&success, |r| r.len() == 1).await;
    assert_eq!(s[0]["value"][1], "1");
    for q in ["0.50", "0.90", "0.99"] {
        let duration = format!(
            "(histogram_quantile({q}, sum(irate(istio_request_duration_milliseconds_bucket{{{client}}}[1m])) by (le)) / 1000)"
        );
        prom.until(&duration, |r| r.len() == 1).await;
    }

    // --- Istio Workload Dashboard, $workload = reviews-v1, $namespace = default ---
    let incoming = r#"round(sum(irate(istio_requests_total{reporter=~"destination",destination_workload_namespace=~"default",destination_workload=~"reviews-v1"}[1m])), 0.001)"#;
    prom.until(incoming, |r| r.len() == 1).await;
    // outgoing by destination (the panel's plaintext target: no SPIFFE principal upstream)
    let outgoing = r#"round(sum(irate(istio_requests_total{destination_principal!~"spiffe.*", source_workload_namespace=~"default", source_workload=~"reviews-v1", reporter="source", destination_service=~".*"}[1m])) by (destination_service, response_code), 0.001)"#;
    let r = prom.until(outgoing, |r| !r.is_empty()).await;
    assert_eq!(
        label(&r[0], "destination_service"),
        Some("ratings.default.svc.cluster.local")
    );
    for family in ["istio_request_bytes", "istio_response_bytes"] {
        let size = format!(
            r#"histogram_quantile(0.50, sum(irate({family}_bucket{{reporter="source", connection_security_policy!="mutual_tls", source_workload=~"reviews-v1", source_workload_namespace=~"default", destination_service=~".*"}}[1m])) by (destination_service, le))"#
        );
        prom.until(&size, |r| !r.is_empty()).await;
    }
    traffic.abort();
}
