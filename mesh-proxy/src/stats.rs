//! The proxy's statistics of its upstream clusters and endpoints, in Prometheus' text
//! format: what `/stats/prometheus` shows beside Istio's standard metrics, and what a custom
//! proxy built from the same layers can show on its own page.
//!
//! Per Istio cluster (`cluster_name`, `outbound|<port>|<subset>|<host>`; one series per
//! cluster a worker or a request holds now, as bounded as the configuration), from the
//! cluster's shared [`ClusterCounters`]:
//!
//! | metric | type | Envoy's |
//! |---|---|---|
//! | `mesh_proxy_cluster_requests_active` | gauge | `upstream_rq_active` |
//! | `mesh_proxy_cluster_pending_requests` | gauge | `upstream_rq_pending_active` |
//! | `mesh_proxy_cluster_connections_active` | gauge | `upstream_cx_active` as the circuit breaker counts it (under `maxConnections` only) |
//! | `mesh_proxy_cluster_retries_active` | gauge | `upstream_rq_retry` in flight |
//! | `mesh_proxy_cluster_overflows_total` | counter | `upstream_rq_pending_overflow` (`503 UO`) |
//! | `mesh_proxy_cluster_retry_overflows_total{limit}` | counter | `upstream_rq_retry_overflow`, by the limit that refused the retry: `maxRetries` or `retryBudget` |
//! | `mesh_proxy_cluster_upstream_connections_open` | gauge | `upstream_cx_active`: the connector's pooled connections open |
//! | `mesh_proxy_cluster_upstream_connections_idle` | gauge | of those, HTTP/1.1 ones waiting in a pool and HTTP/2 ones without a stream |
//! | `mesh_proxy_cluster_upstream_connections_opened_total` | counter | `upstream_cx_total` |
//!
//! The pool's connections are counted in the cluster whose request opened them (the
//! clusters reaching one endpoint, a service's and its subsets', share its connections);
//! an HTTP/2 connection counts from the attempt to open it. Tunnels (`CONNECT`, the L4
//! listeners' connections) are not pooled and not counted here.
//!
//! Per endpoint of a cluster (`cluster_name`, `endpoint`: the address and port), for the
//! endpoints outlier detection ejected at least once (Envoy's per-host `num_ejections` and
//! its `outlier_detection.ejections_active` split by host), from the endpoint's
//! [`HealthCell`](mesh_core::health::HealthCell):
//!
//! | metric | type | value |
//! |---|---|---|
//! | `mesh_proxy_endpoint_ejections_total` | counter | times outlier detection ejected the endpoint |
//! | `mesh_proxy_endpoint_ejected` | gauge | 1 while it is ejected, else 0 |
//!
//! `sum by (cluster_name) (mesh_proxy_endpoint_ejected)` is Envoy's
//! `outlier_detection.ejections_active`. An endpoint's series go when no balancer holds it
//! any more (removed from its service), as Envoy forgets a removed host.
//!
//! ```
//! use std::sync::Arc;
//! use mesh_core::limits::ClusterCounters;
//!
//! let counters = Arc::new(ClusterCounters::default());
//! let _conn = counters.connection_gauge();
//! let mut text = String::new();
//! mesh_proxy::stats::encode_clusters(&mut text, &[("outbound|9080||reviews".into(), counters)]);
//! assert!(text.contains(
//!     "mesh_proxy_cluster_upstream_connections_open{cluster_name=\"outbound|9080||reviews\"} 1\n"
//! ));
//! ```

use std::fmt::Write as _;
use std::sync::Arc;

use mesh_core::health::{HealthFlags, HealthSource};
use mesh_core::limits::{ClusterCounters, RetryLimit};

/// A per-cluster family: its name, its type, its help, and its value for a cluster.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ClusterCounters) -> u64,
);

/// The per-cluster families (see the [module docs](self)) of `clusters`, sorted by name
/// (`Layers::circuit_breakers`: the balancer's outbound clusters and the inbound ones).
pub fn encode_clusters(out: &mut String, clusters: &[(Arc<str>, Arc<ClusterCounters>)]) {
    let families: [Family; 6] = [
        (
            "mesh_proxy_cluster_requests_active",
            "gauge",
            "Requests in flight to the cluster.",
            |c| c.requests().into(),
        ),
        (
            "mesh_proxy_cluster_pending_requests",
            "gauge",
            "Requests waiting for an HTTP/1.1 connection or an HTTP/2 stream to the cluster.",
            |c| c.pending().into(),
        ),
        (
            "mesh_proxy_cluster_connections_active",
            "gauge",
            "HTTP/1.1 connections to the cluster in use and HTTP/2 connections open (counted under maxConnections).",
            |c| c.connections().into(),
        ),
        (
            "mesh_proxy_cluster_retries_active",
            "gauge",
            "Retries to the cluster in flight.",
            |c| c.retries().into(),
        ),
        (
            "mesh_proxy_cluster_overflows_total",
            "counter",
            "Requests answered 503 UO by the cluster's circuit breaker (Envoy's upstream_rq_pending_overflow).",
            ClusterCounters::pending_overflows,
        ),
        (
            "mesh_proxy_cluster_connection_overflows_total",
            "counter",
            "TCP proxy connections closed and HTTP/2 connections not opened for the cluster's maxConnections (Envoy's upstream_cx_overflow).",
            ClusterCounters::connection_overflows,
        ),
    ];
    write_families(out, clusters, &families);
    let _ = writeln!(
        out,
        "# HELP mesh_proxy_cluster_retry_overflows_total Retries not sent for lack of a permit, by the limit that refused them (maxRetries, retryBudget; Envoy's upstream_rq_retry_overflow).\n# TYPE mesh_proxy_cluster_retry_overflows_total counter"
    );
    for (cluster, c) in clusters {
        let cluster = escaped(cluster);
        for (limit, name) in [
            (RetryLimit::MaxRetries, "maxRetries"),
            (RetryLimit::RetryBudget, "retryBudget"),
        ] {
            let _ = writeln!(
                out,
                "mesh_proxy_cluster_retry_overflows_total{{cluster_name=\"{cluster}\",limit=\"{name}\"}} {}",
                c.retry_overflows_by(limit)
            );
        }
    }
    let pool: [Family; 3] = [
        (
            "mesh_proxy_cluster_upstream_connections_open",
            "gauge",
            "The connector's pooled connections opened for the cluster and open now (Envoy's upstream_cx_active).",
            |c| c.pool_connections_open().into(),
        ),
        (
            "mesh_proxy_cluster_upstream_connections_idle",
            "gauge",
            "Of those, HTTP/1.1 connections idle in a pool and HTTP/2 connections without an open stream.",
            |c| c.pool_connections_idle().into(),
        ),
        (
            "mesh_proxy_cluster_upstream_connections_opened_total",
            "counter",
            "Connections the connector opened for the cluster (Envoy's upstream_cx_total).",
            ClusterCounters::pool_connections_opened,
        ),
    ];
    write_families(out, clusters, &pool);
}

/// The per-endpoint outlier families (see the [module docs](self)) of every cell of
/// `health` that outlier detection ejected at least once.
pub fn encode_endpoints(out: &mut String, health: &dyn HealthSource) {
    let ejected: Vec<_> = health
        .every_cell()
        .into_iter()
        .filter_map(|(key, cell)| {
            let n = cell
                .outlier()
                .ejections
                .load(std::sync::atomic::Ordering::Relaxed);
            let now = cell.flags().contains(HealthFlags::EJECTED);
            (n > 0 || now).then(|| (escaped(&key.cluster).into_owned(), key.addr, n, now))
        })
        .collect();
    let _ = writeln!(
        out,
        "# HELP mesh_proxy_endpoint_ejections_total Times outlier detection ejected the endpoint from the cluster (endpoints ejected at least once).\n# TYPE mesh_proxy_endpoint_ejections_total counter"
    );
    for (cluster, addr, n, _) in &ejected {
        let _ = writeln!(
            out,
            "mesh_proxy_endpoint_ejections_total{{cluster_name=\"{cluster}\",endpoint=\"{addr}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP mesh_proxy_endpoint_ejected Whether outlier detection ejects the endpoint from the cluster now (endpoints ejected at least once).\n# TYPE mesh_proxy_endpoint_ejected gauge"
    );
    for (cluster, addr, _, now) in &ejected {
        let _ = writeln!(
            out,
            "mesh_proxy_endpoint_ejected{{cluster_name=\"{cluster}\",endpoint=\"{addr}\"}} {}",
            u8::from(*now)
        );
    }
}

/// Writes each of `families` for every cluster.
fn write_families(
    out: &mut String,
    clusters: &[(Arc<str>, Arc<ClusterCounters>)],
    families: &[Family],
) {
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (cluster, c) in clusters {
            let _ = writeln!(
                out,
                "{name}{{cluster_name=\"{}\"}} {}",
                escaped(cluster),
                value(c)
            );
        }
    }
}

/// A label value escaped as the text format wants (`\`, `"`, newlines).
fn escaped(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::health::{HealthKey, HealthTable};
    use mesh_core::limits::{ClusterLimits, Thresholds};

    fn value(text: &str, line: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn clusters_show_their_overflows_by_limit_and_their_pool() {
        let l = ClusterLimits::detached(Thresholds {
            max_retries: 1,
            ..Thresholds::default()
        });
        let _one = l.try_retry().unwrap();
        assert!(l.try_retry().is_none());
        let c = l.counters().clone();
        let (open, idle) = (c.connection_gauge(), c.connection_gauge());
        idle.set_idle(true);
        let mut text = String::new();
        encode_clusters(&mut text, &[("outbound|80||a\"b".into(), c.clone())]);
        let cluster = r#"cluster_name="outbound|80||a\"b""#;
        for (line, want) in [
            (
                format!(
                    "mesh_proxy_cluster_retry_overflows_total{{{cluster},limit=\"maxRetries\"}}"
                ),
                1,
            ),
            (
                format!(
                    "mesh_proxy_cluster_retry_overflows_total{{{cluster},limit=\"retryBudget\"}}"
                ),
                0,
            ),
            (format!("mesh_proxy_cluster_retries_active{{{cluster}}}"), 1),
            (
                format!("mesh_proxy_cluster_upstream_connections_open{{{cluster}}}"),
                2,
            ),
            (
                format!("mesh_proxy_cluster_upstream_connections_idle{{{cluster}}}"),
                1,
            ),
            (
                format!("mesh_proxy_cluster_upstream_connections_opened_total{{{cluster}}}"),
                2,
            ),
        ] {
            assert_eq!(value(&text, &line), Some(want), "{line} in\n{text}");
        }
        drop((open, idle));
        let mut text = String::new();
        encode_clusters(&mut text, &[("c".into(), c)]);
        assert_eq!(
            value(
                &text,
                r#"mesh_proxy_cluster_upstream_connections_open{cluster_name="c"}"#
            ),
            Some(0)
        );
    }

    #[test]
    fn endpoints_ejected_once_show_their_ejections_and_whether_they_are_out() {
        let table = HealthTable::new();
        let key = |addr: &str| HealthKey {
            cluster: "outbound|9080||ratings".into(),
            addr: addr.parse().unwrap(),
        };
        let (out, back, never) = (
            table.cell(&key("10.0.0.1:9080")),
            table.cell(&key("10.0.0.2:9080")),
            table.cell(&key("10.0.0.3:9080")),
        );
        out.outlier()
            .ejections
            .store(2, std::sync::atomic::Ordering::Relaxed);
        out.set(HealthFlags::EJECTED);
        back.outlier()
            .ejections
            .store(1, std::sync::atomic::Ordering::Relaxed);
        never.set(HealthFlags::EXCLUDED);
        let mut text = String::new();
        encode_endpoints(&mut text, &table);
        let labels =
            |addr: &str| format!(r#"{{cluster_name="outbound|9080||ratings",endpoint="{addr}"}}"#);
        for (line, want) in [
            (
                format!(
                    "mesh_proxy_endpoint_ejections_total{}",
                    labels("10.0.0.1:9080")
                ),
                2,
            ),
            (
                format!("mesh_proxy_endpoint_ejected{}", labels("10.0.0.1:9080")),
                1,
            ),
            (
                format!(
                    "mesh_proxy_endpoint_ejections_total{}",
                    labels("10.0.0.2:9080")
                ),
                1,
            ),
            (
                format!("mesh_proxy_endpoint_ejected{}", labels("10.0.0.2:9080")),
                0,
            ),
        ] {
            assert_eq!(value(&text, &line), Some(want), "{line} in\n{text}");
        }
        assert!(!text.contains("10.0.0.3"), "never ejected: {text}");
        assert!(text.contains("# TYPE mesh_proxy_endpoint_ejected gauge"));
    }
}
