//! `ProxyBootstrap`, this project's own kind. Istio has no rules for it; these follow the
//! style of Istio's MeshConfig/ProxyConfig checks (`agent.ValidateMeshConfig`): listener
//! ports and addresses, identity files, limits, durations.

use std::collections::BTreeMap;

use crate::authority;
use crate::error::FieldPath;
use crate::model::bootstrap::ProxyBootstrap;

use super::common::{
    self, is_dns1123_label, validate_duration, validate_fqdn, validate_ip, validate_labels,
    validate_port, validate_trust_domain,
};
use super::destination_rule::validate_localities;
use super::{PathExt, Report};

/// `ProxyBootstrap` checks.
pub(crate) fn validate(pb: &ProxyBootstrap, at: &FieldPath, rep: &mut Report<'_>) {
    let w = &pb.workload;
    let wp = at.k("workload");
    if !is_dns1123_label(&w.namespace) {
        rep.error(
            &wp.k("namespace"),
            format!(
                "invalid namespace {:?}: must be a DNS-1123 label",
                w.namespace
            ),
        );
    }
    if w.name.is_empty() {
        rep.error(&wp.k("name"), "workload name must be set");
    }
    if w.service_account.is_empty() {
        rep.error(&wp.k("serviceAccount"), "service account must be set");
    }
    validate_labels(&w.labels, &wp.k("labels"), rep);
    if let Some(l) = w.locality.as_deref().filter(|l| !l.is_empty()) {
        if l.contains('*') {
            rep.error(
                &wp.k("locality"),
                format!("locality {l} must not contain '*'"),
            );
        } else {
            rep.check(&wp.k("locality"), validate_localities(&[l]));
        }
    }

    let mp = at.k("mesh");
    if let Err(e) = validate_trust_domain(&pb.mesh.trust_domain) {
        rep.error(&mp.k("trustDomain"), format!("trustDomain: {e}"));
    }
    if !is_dns1123_label(&pb.mesh.root_namespace) {
        rep.error(
            &mp.k("rootNamespace"),
            format!(
                "invalid namespace {:?}: must be a DNS-1123 label",
                pb.mesh.root_namespace
            ),
        );
    }
    rep.check(
        &mp.k("clusterDomain"),
        validate_fqdn(&pb.mesh.cluster_domain),
    );

    // local ports in use, to find clashes: port -> where
    let mut local: BTreeMap<u16, FieldPath> = BTreeMap::new();
    let mut claim = |port: u16, p: FieldPath, rep: &mut Report<'_>| {
        if port == 0 {
            return; // a free port is picked
        }
        if let Some(prev) = local.get(&port) {
            rep.error(&p, format!("local port {port} is already used by {prev}"));
        } else {
            local.insert(port, p);
        }
    };
    if let Some(o) = &pb.outbound {
        let p = at.k("outbound");
        rep.check(&p.k("address"), validate_ip(&o.address));
        claim(o.port, p.k("port"), rep);
    }
    if let Some(i) = &pb.inbound {
        let p = at.k("inbound");
        rep.check(&p.k("address"), validate_ip(&i.address));
        claim(i.port, p.k("port"), rep);
        if i.local_app.is_empty() {
            rep.error(&p.k("localApp"), "inbound.localApp is required (host:port)");
        } else {
            rep.check(&p.k("localApp"), validate_host_port(&i.local_app));
        }
    }
    rep.check(&at.k("admin").k("address"), validate_ip(&pb.admin.address));
    claim(pb.admin.port, at.k("admin").k("port"), rep);

    rep.check(&at.k("gatewayAddress"), validate_ip(&pb.gateway_address));
    if pb.credentials_dir.as_deref() == Some("") {
        rep.error(&at.k("credentialsDir"), "credentialsDir must not be empty");
    }
    for (k, v) in &pb.gateway_ports {
        let p = at.k("gatewayPorts").k(k);
        rep.check(&p, parse_port_key(k));
        claim(*v, p, rep);
    }
    for (k, v) in &pb.outbound_ports {
        let p = at.k("outboundPorts").k(k);
        rep.check(&p, validate_host_port(k));
        claim(*v, p, rep);
    }
    for (k, v) in &pb.inbound_ports {
        let p = at.k("inboundPorts").k(k);
        rep.check(&p, parse_port_key(k));
        claim(*v, p, rep);
    }
    if !pb.inbound_ports.is_empty() && pb.inbound.is_none() {
        // the per-port listeners take their address and the application's from `inbound`
        rep.error(
            &at.k("inboundPorts"),
            "inboundPorts needs spec.inbound (its address, and localApp's host)",
        );
    }

    if let Some(id) = &pb.identity {
        let p = at.k("identity");
        for (field, v) in [
            ("certificateChain", &id.certificate_chain),
            ("privateKey", &id.private_key),
            ("trustBundle", &id.trust_bundle),
        ] {
            if v.is_empty() {
                rep.error(&p.k(field), format!("identity.{field} must be set"));
            }
        }
        let td = id.spiffe_id.trust_domain();
        if td != pb.mesh.trust_domain {
            rep.warn(
                &p.k("spiffeId"),
                format!(
                    "spiffeId trust domain {td:?} differs from mesh.trustDomain {:?}; peers will not match it in principals",
                    pb.mesh.trust_domain
                ),
            );
        }
        if id.spiffe_id.namespace() != w.namespace
            || id.spiffe_id.service_account() != w.service_account
        {
            rep.warn(
                &p.k("spiffeId"),
                format!(
                    "spiffeId {} does not match workload {}/{} (namespace/serviceAccount)",
                    id.spiffe_id, w.namespace, w.service_account
                ),
            );
        }
    }

    let lp = at.k("limits");
    let l = &pb.limits;
    for (field, v) in [
        ("maxRequestHeadersKb", l.max_request_headers_kb),
        ("maxRequestHeadersCount", l.max_request_headers_count),
        ("http2MaxConcurrentStreams", l.http2_max_concurrent_streams),
        ("maxDownstreamConnections", l.max_downstream_connections),
    ] {
        if v == 0 {
            rep.error(&lp.k(field), format!("{field} must be greater than 0"));
        }
    }
    // Envoy's bound for max_request_headers_kb
    if l.max_request_headers_kb > 8192 {
        rep.error(
            &lp.k("maxRequestHeadersKb"),
            "maxRequestHeadersKb must be at most 8192",
        );
    }
    for (field, d) in [
        ("requestHeadersTimeout", l.request_headers_timeout),
        ("streamIdleTimeout", l.stream_idle_timeout),
        ("connectTimeout", l.connect_timeout),
        ("tlsHandshakeTimeout", l.tls_handshake_timeout),
        ("drainTimeout", l.drain_timeout),
    ] {
        rep.check(&lp.k(field), validate_duration(d));
    }

    // Istio's `validateTracing`: "sampling must be between 0.0 and 100.0"
    let sampling = pb.tracing.sampling;
    if !(0.0..=100.0).contains(&sampling) {
        rep.error(
            &at.k("tracing").k("sampling"),
            format!("sampling must be between 0.0 and 100.0, got {sampling}"),
        );
    }
    if let Some(o) = &pb.tracing.otlp {
        let op = at.k("tracing").k("otlp");
        rep.check(&op.k("endpoint"), validate_otlp_endpoint(&o.endpoint));
        rep.check(&op.k("timeout"), validate_duration(o.timeout));
    }
    // a `server` name must be a header value Envoy would write
    if let Some(v) = pb
        .proxy_headers
        .server
        .as_ref()
        .and_then(|s| s.value.as_deref())
        && !v.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        // (empty is as absent: Istio's `else if ph.Server.Value != ""`)
        rep.error(
            &at.k("proxyHeaders").k("server").k("value"),
            format!("invalid server header value {v:?}: visible ASCII and spaces only"),
        );
    }
    if let Some(a) = &pb.access_log
        && a.path.trim().is_empty()
    {
        rep.error(
            &at.k("accessLog").k("path"),
            "path is required (a file, or /dev/stdout)",
        );
    }
}

/// `tracing.otlp.endpoint`: `http://host[:port][/path]` (the exporter has no TLS client).
fn validate_otlp_endpoint(e: &str) -> Result<(), String> {
    let Some(rest) = e.strip_prefix("http://") else {
        return Err(if e.starts_with("https://") {
            format!("endpoint {e:?}: https is not supported (the exporter speaks plain HTTP)")
        } else {
            format!("endpoint {e:?}: an http:// URL is required")
        });
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(format!("endpoint {e:?}: no valid host"));
    }
    Ok(())
}

/// A port number written as a map key (`"9080"`).
fn parse_port_key(k: &str) -> Result<(), String> {
    match k.parse::<i64>() {
        Ok(n) => validate_port(n),
        Err(_) => Err(format!("port {k:?} is not a number")),
    }
}

/// `host:port` with a DNS name or IP host (`agent.ValidateProxyAddress`).
fn validate_host_port(s: &str) -> Result<(), String> {
    let (host, port) = match authority::split_host_port(s) {
        Ok((host, Some(port))) => (authority::unbracket(host), port),
        _ => return Err(format!("unable to split {s:?}: missing port in address")),
    };
    let n: i64 = port
        .parse()
        .map_err(|_| format!("port ({port}) is not a number"))?;
    validate_port(n)?;
    if validate_fqdn(host).is_err() && !common::is_ip(host) {
        return Err(format!("{host:?} is not a valid hostname or an IP address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_host_port;

    /// `localApp` and host:port keys go through `mesh_core::authority`, as Go's
    /// `net.SplitHostPort` reads them: an IPv6 literal needs brackets to carry a port
    /// (RFC 3986 §3.2.2), so `::1:8080` is refused (it used to be split at its last colon).
    #[test]
    fn host_ports_split_as_go_does() {
        assert_eq!(validate_host_port("127.0.0.1:8080"), Ok(()));
        assert_eq!(validate_host_port("[::1]:8080"), Ok(()));
        assert_eq!(validate_host_port("app.local:80"), Ok(()));
        for s in ["::1:8080", "127.0.0.1", "127.0.0.1:", "[::1]"] {
            assert_eq!(
                validate_host_port(s),
                Err(format!("unable to split {s:?}: missing port in address")),
                "{s}"
            );
        }
        assert_eq!(
            validate_host_port("app.local:http"),
            Err("port (http) is not a number".to_string())
        );
        assert!(validate_host_port("app.local:70000").is_err());
    }
}

#[cfg(test)]
mod otlp_tests {
    use super::validate_otlp_endpoint;

    #[test]
    fn otlp_endpoints_are_plain_http_urls_with_a_host() {
        for ok in [
            "http://127.0.0.1:4318",
            "http://otel-collector.istio-system:4318/v1/traces",
            "http://[::1]:4318/",
        ] {
            assert_eq!(validate_otlp_endpoint(ok), Ok(()), "{ok}");
        }
        assert!(
            validate_otlp_endpoint("https://collector:4318")
                .unwrap_err()
                .contains("https is not supported")
        );
        for bad in [
            "",
            "collector:4318",
            "http://",
            "http:///v1/traces",
            "http://u@h:1",
        ] {
            assert!(validate_otlp_endpoint(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod proxy_headers_tests {
    /// The first error of a ProxyBootstrap whose `spec` is `spec`: field and message.
    fn first_error(spec: &str) -> Option<(String, String)> {
        let yaml = format!(
            "apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {{name: p}}\nspec:\n{spec}"
        );
        let err = crate::config::load_str("p.yaml", &yaml).err()?;
        let d = err.errors().next()?;
        Some((
            d.field
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            d.message.clone(),
        ))
    }

    #[test]
    fn istios_proxy_headers_load_and_a_server_name_must_be_a_header_value() {
        let ok = "  proxyHeaders:\n    server: {value: my-mesh}\n    attemptCount: {disabled: true}\n    envoyDebugHeaders: {disabled: true}\n";
        assert_eq!(first_error(ok), None);
        let (field, message) =
            first_error("  proxyHeaders:\n    server: {value: \"caf\\u00e9\"}\n").unwrap();
        assert!(field.ends_with("proxyHeaders.server.value"), "{field}");
        assert!(message.contains("invalid server header value"), "{message}");
        // empty is as absent, as Istio's
        assert_eq!(
            first_error("  proxyHeaders:\n    server: {value: \"\"}\n"),
            None
        );
        // a switch this version does not have is refused, not ignored
        let (_, message) =
            first_error("  proxyHeaders:\n    requestId: {disabled: true}\n").unwrap();
        assert!(message.contains("requestId"), "{message}");
    }
}
