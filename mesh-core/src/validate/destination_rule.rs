//! `ValidateDestinationRule` and the traffic-policy checks it shares with Sidecar
//! (`validateTrafficPolicy`, `validateConnectionPool`, `validateOutlierDetection`,
//! `validateLoadBalancer`, `agent.ValidateLocalityLbSetting`, `agent.ValidateTLS`).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::FieldPath;
use crate::model::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, LocalityLbSetting, OutlierDetection, PortTrafficPolicy, TrafficPolicy,
    TunnelSettings, ZoneAwareLbSetting,
};

use super::common::{
    self, validate_duration, validate_fqdn, validate_ip, validate_labels, validate_percent,
    validate_port, validate_wildcard_domain,
};
use super::virtual_service::validate_subset_name;
use super::{PathExt, Report};

/// Topology labels that `failoverPriority` may not combine with `failover`.
const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// Maglev table sizes must be below this (Envoy's limit).
const MAGLEV_MAX_TABLE_SIZE: u64 = 5_000_011;

/// `ValidateDestinationRule`.
pub(crate) fn validate(dr: &DestinationRule, ns: &str, at: &FieldPath, rep: &mut Report<'_>) {
    rep.check(&at.k("host"), validate_wildcard_domain(&dr.host));
    if let Some(tp) = &dr.traffic_policy {
        validate_traffic_policy(tp, ns, &at.k("trafficPolicy"), rep);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let p = at.ki("subsets", i);
        if !names.insert(s.name.as_str()) {
            rep.error(&p.k("name"), format!("duplicate subset names: {}", s.name));
        }
        rep.check(&p.k("name"), validate_subset_name(&s.name));
        validate_labels(&s.labels, &p.k("labels"), rep);
        if let Some(tp) = &s.traffic_policy {
            validate_traffic_policy(tp, ns, &p.k("trafficPolicy"), rep);
        }
    }
    common::validate_export_to(
        ns,
        &dr.export_to,
        false,
        dr.workload_selector.is_some(),
        &at.k("exportTo"),
        rep,
    );
    common::validate_workload_selector(
        dr.workload_selector.as_ref(),
        &at.k("workloadSelector"),
        rep,
    );
}

/// `validateTrafficPolicy`.
fn validate_traffic_policy(tp: &TrafficPolicy, ns: &str, at: &FieldPath, rep: &mut Report<'_>) {
    if tp.outlier_detection.is_none()
        && tp.connection_pool.is_none()
        && tp.load_balancer.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        rep.error(at, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        rep.error(at, "tunnel and proxyProtocol must not be set together");
        return;
    }
    if let Some(od) = &tp.outlier_detection {
        validate_outlier_detection(od, &at.k("outlierDetection"), rep);
    }
    if let Some(cp) = &tp.connection_pool {
        validate_connection_pool(cp, &at.k("connectionPool"), rep);
    }
    if let Some(lb) = &tp.load_balancer {
        validate_load_balancer(
            lb,
            tp.outlier_detection.as_ref(),
            &at.k("loadBalancer"),
            rep,
        );
    }
    if let Some(tls) = &tp.tls {
        validate_client_tls(tls, ns, &at.k("tls"), rep);
    }
    validate_port_traffic_policies(&tp.port_level_settings, ns, &at.k("portLevelSettings"), rep);
    if let Some(t) = &tp.tunnel {
        validate_tunnel(t, &at.k("tunnel"), rep);
    }
}

/// `validatePortTrafficPolicies`. Istio does not reject a port listed twice; only the first
/// entry for a port applies, so the later one is reported as a warning.
fn validate_port_traffic_policies(
    pls: &[PortTrafficPolicy],
    ns: &str,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let mut seen = BTreeSet::new();
    for (i, pl) in pls.iter().enumerate() {
        let p = at.i(i);
        match pl.port {
            None => rep.error(&p, "portTrafficPolicy must have valid port"),
            Some(port) => {
                if !seen.insert(port.number) {
                    rep.warn(
                        &p.k("port").k("number"),
                        format!(
                            "port {} appears more than once in portLevelSettings",
                            port.number
                        ),
                    );
                }
            }
        }
        if pl.outlier_detection.is_none()
            && pl.connection_pool.is_none()
            && pl.load_balancer.is_none()
            && pl.tls.is_none()
        {
            rep.error(&p, "port traffic policy must have at least one field");
            continue;
        }
        if let Some(od) = &pl.outlier_detection {
            validate_outlier_detection(od, &p.k("outlierDetection"), rep);
        }
        if let Some(cp) = &pl.connection_pool {
            validate_connection_pool(cp, &p.k("connectionPool"), rep);
        }
        if let Some(lb) = &pl.load_balancer {
            validate_load_balancer(lb, pl.outlier_detection.as_ref(), &p.k("loadBalancer"), rep);
        }
        if let Some(tls) = &pl.tls {
            validate_client_tls(tls, ns, &p.k("tls"), rep);
        }
    }
}

/// `validateOutlierDetection`.
fn validate_outlier_detection(od: &OutlierDetection, at: &FieldPath, rep: &mut Report<'_>) {
    if let Some(d) = od.base_ejection_time {
        rep.check(&at.k("baseEjectionTime"), validate_duration(d));
    }
    if od.consecutive_errors.is_some_and(|c| c != 0) {
        rep.warn(
            &at.k("consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if !od.split_external_local_origin_errors
        && od.consecutive_local_origin_failures.is_some_and(|c| c > 0)
    {
        rep.error(
            &at.k("consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    if let Some(d) = od.interval {
        rep.check(&at.k("interval"), validate_duration(d));
    }
    if let Some(v) = od.max_ejection_percent {
        rep.check(&at.k("maxEjectionPercent"), validate_percent(i64::from(v)));
    }
    if let Some(v) = od.min_health_percent {
        rep.check(&at.k("minHealthPercent"), validate_percent(i64::from(v)));
    }
}

/// `validateConnectionPool`.
pub(crate) fn validate_connection_pool(
    cp: &ConnectionPoolSettings,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    if cp.http.is_none() && cp.tcp.is_none() {
        rep.error(at, "connection pool must have at least one field");
        return;
    }
    if let Some(h) = &cp.http {
        let p = at.k("http");
        let non_negative: [(&str, Option<i32>, &str); 5] = [
            (
                "http1MaxPendingRequests",
                h.http1_max_pending_requests,
                "http1 max pending requests must be non-negative",
            ),
            (
                "http2MaxRequests",
                h.http2_max_requests,
                "http2 max requests must be non-negative",
            ),
            (
                "maxRequestsPerConnection",
                h.max_requests_per_connection,
                "max requests per connection must be non-negative",
            ),
            (
                "maxRetries",
                h.max_retries,
                "max retries must be non-negative",
            ),
            (
                "maxConcurrentStreams",
                h.max_concurrent_streams,
                "max concurrent streams must be non-negative",
            ),
        ];
        for (field, v, msg) in non_negative {
            if v.is_some_and(|v| v < 0) {
                rep.error(&p.k(field), msg);
            }
        }
        if let Some(d) = h.idle_timeout {
            rep.check(&p.k("idleTimeout"), validate_duration(d));
        }
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && h.use_client_protocol {
            rep.error(
                &p.k("useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = &h.http2_keep_alive {
            let kp = p.k("http2KeepAlive");
            match ka.interval {
                None => rep.error(&kp, "http2 keepalive interval is required"),
                Some(d) => rep.check(&kp.k("interval"), validate_duration(d)),
            }
            match ka.timeout {
                None => rep.error(&kp, "http2 keepalive timeout is required"),
                Some(d) => rep.check(&kp.k("timeout"), validate_duration(d)),
            }
        }
    }
    if let Some(t) = &cp.tcp {
        let p = at.k("tcp");
        if t.max_connections.is_some_and(|v| v < 0) {
            rep.error(
                &p.k("maxConnections"),
                "max connections must be non-negative",
            );
        }
        if let Some(d) = t.connect_timeout {
            rep.check(&p.k("connectTimeout"), validate_duration(d));
        }
        if let Some(d) = t.max_connection_duration {
            rep.check(&p.k("maxConnectionDuration"), validate_duration(d));
        }
        // 0s disables the idle timeout
        if let Some(d) = t.idle_timeout
            && d.get().as_millis() != 0
        {
            rep.check(&p.k("idleTimeout"), validate_duration(d));
        }
        if let Some(ka) = &t.tcp_keepalive {
            let kp = p.k("tcpKeepalive");
            if let Some(d) = ka.time {
                rep.check(&kp.k("time"), validate_duration(d));
            }
            if let Some(d) = ka.interval {
                rep.check(&kp.k("interval"), validate_duration(d));
            }
        }
    }
}

/// Envoy's `isPrime` (`source/common/common/utility.cc`), which Istio copies. Trial division
/// as Envoy does for table-sized numbers; a deterministic Miller-Rabin above that, so a huge
/// `tableSize` cannot stall validation (the answers are the same).
pub(crate) fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    if x < (1 << 32) {
        let mut f = 3u64;
        while f * f <= x {
            if x.is_multiple_of(f) {
                return false;
            }
            f += 2;
        }
        return true;
    }
    miller_rabin(x)
}

/// Deterministic for every `u64` with these bases.
fn miller_rabin(n: u64) -> bool {
    let mul = |a: u64, b: u64| ((u128::from(a) * u128::from(b)) % u128::from(n)) as u64;
    let pow = |mut b: u64, mut e: u64| {
        let mut r = 1u64;
        while e > 0 {
            if e & 1 == 1 {
                r = mul(r, b);
            }
            b = mul(b, b);
            e >>= 1;
        }
        r
    };
    let (mut d, mut s) = (n - 1, 0);
    while d & 1 == 0 {
        d >>= 1;
        s += 1;
    }
    'bases: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n.is_multiple_of(a) {
            return n == a;
        }
        let mut x = pow(a, d);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul(x, x);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

/// `validateLoadBalancer`.
fn validate_load_balancer(
    lb: &LoadBalancerSettings,
    outlier: Option<&OutlierDetection>,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    common::oneof(
        &[
            ("simple", lb.simple.is_some()),
            ("consistentHash", lb.consistent_hash.is_some()),
        ],
        at,
        rep,
    );
    if let Some(ch) = &lb.consistent_hash {
        let p = at.k("consistentHash");
        common::oneof(
            &[
                ("httpHeaderName", ch.http_header_name.is_some()),
                ("httpCookie", ch.http_cookie.is_some()),
                ("useSourceIp", ch.use_source_ip.is_some()),
                (
                    "httpQueryParameterName",
                    ch.http_query_parameter_name.is_some(),
                ),
            ],
            &p,
            rep,
        );
        common::oneof(
            &[
                ("ringHash", ch.ring_hash.is_some()),
                ("maglev", ch.maglev.is_some()),
            ],
            &p,
            rep,
        );
        if let Some(c) = &ch.http_cookie {
            let cp = p.k("httpCookie");
            if c.name.is_empty() {
                rep.error(&cp.k("name"), "name required for HttpCookie");
            }
            let mut names = BTreeSet::new();
            for (i, a) in c.attributes.iter().enumerate() {
                let ap = cp.ki("attributes", i);
                if a.name.is_empty() {
                    rep.error(&ap, "cookie attribute name cannot be empty");
                } else if !names.insert(a.name.as_str()) {
                    rep.error(
                        &ap.k("name"),
                        format!("duplicate cookie attribute name: {}", a.name),
                    );
                }
            }
        }
        let min_ring = ch.minimum_ring_size.unwrap_or(0);
        if min_ring != 0 {
            rep.warn(
                &p.k("minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                rep.error(
                    &p.k("minimumRingSize"),
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if let Some(ml) = ch.maglev {
            let mp = p.k("maglev").k("tableSize");
            if ml.table_size == 0 {
                rep.error(&mp, "tableSize must be set for maglev");
            }
            if ml.table_size >= MAGLEV_MAX_TABLE_SIZE {
                rep.error(&mp, "tableSize must be less than 5000011 for maglev");
            }
            if !is_prime(ml.table_size) {
                rep.error(&mp, "tableSize must be a prime number for maglev");
            }
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        rep.error(
            at,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if let Some(l) = &lb.locality_lb_setting {
        validate_locality_lb(l, outlier, &at.k("localityLbSetting"), rep);
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        validate_zone_aware_lb(z, outlier, &at.k("zoneAwareLbSetting"), rep);
    }
    if let Some(w) = &lb.warmup {
        let p = at.k("warmup");
        match w.duration {
            None => rep.error(&p, "duration is required"),
            Some(d) => rep.check(&p.k("duration"), validate_duration(d)),
        }
        if w.minimum_percent.is_some_and(|v| v > 100.0) {
            rep.error(
                &p.k("minimumPercent"),
                "minimumPercent value should be less than or equal to 100",
            );
        }
        if w.aggression.is_some_and(|v| v <= 0.0) {
            rep.error(&p.k("aggression"), "aggression should be greater than 0");
        }
    }
}

/// `agent.ValidateLocalityLbSetting` (returns at its first error, as Istio does).
fn validate_locality_lb(
    lb: &LocalityLbSetting,
    outlier: Option<&OutlierDetection>,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        rep.error(
            at,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !lb.failover.is_empty() {
        for (i, l) in lb.failover_priority.iter().enumerate() {
            if TOPOLOGY_LABELS.contains(&l.as_str()) {
                rep.error(
                    &at.ki("failoverPriority", i),
                    format!(
                        "can not simultaneously set 'failover' and topology label '{l}' in 'failover_priority'"
                    ),
                );
                return;
            }
        }
    }
    let mut sources = Vec::new();
    for (i, d) in lb.distribute.iter().enumerate() {
        let p = at.ki("distribute", i);
        sources.push(d.from.as_str());
        let mut total: u64 = 0;
        for (loc, w) in &d.to {
            if *w == 0 || *w > 100 {
                rep.error(
                    &p.k("to").k(loc),
                    "locality weight must be in range [1, 100]",
                );
                return;
            }
            total += u64::from(*w);
        }
        if total != 100 {
            rep.error(&p.k("to"), format!("total locality weight {total} != 100"));
            return;
        }
        let dests: Vec<&str> = d.to.keys().map(String::as_str).collect();
        rep.check(&p.k("to"), validate_localities(&dests));
    }
    rep.check(&at.k("distribute"), validate_localities(&sources));
    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && outlier.is_none() {
        rep.warn(at, "outlier detection policy must be provided for failover");
    }
    for (i, f) in lb.failover.iter().enumerate() {
        let p = at.ki("failover", i);
        if f.from == f.to {
            rep.error(
                &p,
                "locality lb failover settings must specify different regions",
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            rep.error(&p, "locality lb failover only specify region");
        }
        if f.from.contains('*') || f.to.contains('*') {
            rep.error(
                &p,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
}

/// `agent.ValidateZoneAwareLbSetting`.
fn validate_zone_aware_lb(
    lb: &ZoneAwareLbSetting,
    outlier: Option<&OutlierDetection>,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    for (i, l) in lb.failover_priority.iter().enumerate() {
        if TOPOLOGY_LABELS.contains(&l.as_str()) {
            rep.error(
                &at.ki("failoverPriority", i),
                format!(
                    "'failover_priority' for zone aware lb must not use topology label '{l}'; region- and zone-level routing are handled automatically"
                ),
            );
        }
    }
    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && outlier.is_none() {
        rep.warn(at, "outlier detection policy must be provided for failover");
    }
    for (i, f) in lb.failover.iter().enumerate() {
        let p = at.ki("failover", i);
        if f.from == f.to {
            rep.error(
                &p,
                "zone aware lb failover settings must specify different regions",
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            rep.error(
                &p,
                "zone aware lb failover only specifies region; zone and subzone failover are handled automatically",
            );
        }
        if f.from.contains('*') || f.to.contains('*') {
            rep.error(
                &p,
                "zone aware lb failover region should not contain '*' wildcard",
            );
        }
    }
}

/// `agent.validateLocalities`: wildcards only at the end, no empty parts, no overlaps.
pub(crate) fn validate_localities(localities: &[&str]) -> Result<(), String> {
    // region -> zone -> subzones ("*" marks "all")
    let mut tree: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    let overlap = |l: &str| format!("locality {l} overlap with previous specified ones");
    for &loc in localities {
        let n = loc.matches('*').count();
        if n > 1 || (n == 1 && !loc.ends_with('*')) {
            return Err(format!(
                "locality {loc} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        if tree.contains_key("*") {
            return Err(overlap(loc));
        }
        let items: Vec<&str> = loc.splitn(3, '/').collect();
        if items.iter().any(|s| s.is_empty()) {
            return Err(format!(
                "locality {loc} must not contain empty region/zone/subzone info"
            ));
        }
        match items.as_slice() {
            [region] => {
                if tree.contains_key(region) {
                    return Err(overlap(loc));
                }
                tree.insert(region, BTreeMap::from([("*", BTreeSet::from(["*"]))]));
            }
            [region, zone] => {
                let r = tree.entry(region).or_default();
                if r.contains_key("*") || r.contains_key(zone) {
                    return Err(overlap(loc));
                }
                r.insert(zone, BTreeSet::from(["*"]));
            }
            [region, zone, sub] => {
                let r = tree.entry(region).or_default();
                if r.contains_key("*") {
                    return Err(overlap(loc));
                }
                let z = r.entry(zone).or_default();
                if z.contains("*") || z.contains(sub) {
                    return Err(overlap(loc));
                }
                z.insert(sub);
            }
            _ => {}
        }
    }
    Ok(())
}

/// `agent.ValidateTLS` (client side).
fn validate_client_tls(tls: &ClientTlsSettings, ns: &str, at: &FieldPath, rep: &mut Report<'_>) {
    let cred = tls.credential_name.as_deref().unwrap_or("");
    let set = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    if let Some(rest) = cred.strip_prefix("configmap://") {
        // configmap://<name> or configmap://<namespace>/<name>
        let (cm_ns, name) = rest.split_once('/').unwrap_or((ns, rest));
        if name.is_empty() || cm_ns.is_empty() || name.contains('/') {
            rep.error(
                &at.k("credentialName"),
                format!("invalid configmap:// credentialName: invalid resource name {cred:?}"),
            );
        } else if cm_ns != ns || ns.is_empty() {
            rep.error(
                &at.k("credentialName"),
                format!(
                    "invalid configmap:// credentialName: namespace must match the configuration namespace {ns:?}"
                ),
            );
        }
    }
    if tls.insecure_skip_verify == Some(true) {
        if tls.mode == ClientTlsMode::Simple
            && (set(&tls.ca_certificates) || !cred.is_empty() || !tls.subject_alt_names.is_empty())
        {
            rep.error(
                at,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
        if tls.mode == ClientTlsMode::Mutual
            && (set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty())
        {
            rep.error(
                at,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
    }
    if matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) && !cred.is_empty() {
        if set(&tls.client_certificate)
            || set(&tls.ca_certificates)
            || set(&tls.private_key)
            || set(&tls.ca_crl)
        {
            rep.error(
                at,
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
            );
        }
        return;
    }
    if tls.mode == ClientTlsMode::Mutual {
        if !set(&tls.client_certificate) {
            rep.error(at, "client certificate required for mutual tls");
        }
        if !set(&tls.private_key) {
            rep.error(at, "private key required for mutual tls");
        }
    }
}

/// `validateTunnelSettings`.
fn validate_tunnel(t: &TunnelSettings, at: &FieldPath, rep: &mut Report<'_>) {
    if let Some(proto) = t.protocol.as_deref()
        && !proto.is_empty()
        && proto != "CONNECT"
        && proto != "POST"
    {
        rep.error(
            &at.k("protocol"),
            "tunnel protocol must be \"CONNECT\" or \"POST\"",
        );
    }
    if let (Err(f), Err(i)) = (validate_fqdn(&t.target_host), validate_ip(&t.target_host)) {
        rep.error(
            &at.k("targetHost"),
            format!("tunnel target host must be valid FQDN or IP address: {f}; {i}"),
        );
    }
    if let Err(e) = validate_port(i64::from(t.target_port)) {
        rep.error(
            &at.k("targetPort"),
            format!("tunnel target port is invalid: {e}"),
        );
    }
}
