//! `ValidateSidecar`.

use std::collections::{BTreeMap, BTreeSet};

use crate::authority;
use crate::error::FieldPath;
use crate::model::networking::{
    CaptureMode, OutboundTrafficMode, OutboundTrafficPolicy, ServerTlsMode, Sidecar, SidecarPort,
};

use super::common::{
    self, Protocol, validate_fqdn, validate_ip, validate_port, validate_port_name,
    validate_protocol, validate_unix_address,
};
use super::destination_rule::validate_connection_pool;
use super::gateway::{mode_name, validate_tls_options};
use super::virtual_service::validate_destination;
use super::{PathExt, Report};

const UNIX_PREFIX: &str = "unix://";

/// `ValidateSidecar`.
pub(crate) fn validate(sc: &Sidecar, ns: &str, at: &FieldPath, rep: &mut Report<'_>) {
    common::validate_alpha_workload_selector(
        sc.workload_selector.as_ref(),
        "sidecar",
        &at.k("workloadSelector"),
        rep,
    );
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        rep.error(at, "sidecar: empty configuration provided");
        return;
    }

    let mut ports = BTreeSet::new();
    for (i, ing) in sc.ingress.iter().enumerate() {
        let p = at.ki("ingress", i);
        let Some(port) = &ing.port else {
            rep.error(&p, "sidecar: port is required for ingress listeners");
            continue;
        };
        let pp = p.k("port");
        if port.target_port.is_some_and(|t| t > 0) {
            rep.error(&pp.k("targetPort"), "targetPort has no impact on Sidecars");
        }
        validate_port_name_protocol(port, &pp, rep);
        rep.check(&pp.k("number"), validate_port(i64::from(port.number)));
        if let Some(b) = ing.bind.as_deref().filter(|b| !b.is_empty()) {
            rep.check(&p.k("bind"), validate_ip(b));
        }
        if !ports.insert(port.number) {
            rep.error(&pp, "sidecar: ports on IP bound listeners must be unique");
        }
        if let Some(de) = ing.default_endpoint.as_deref().filter(|d| !d.is_empty()) {
            validate_default_endpoint(de, &p.k("defaultEndpoint"), rep);
        }
        if let Some(tls) = &ing.tls {
            let tp = p.k("tls");
            if !tls.subject_alt_names.is_empty() {
                rep.error(
                    &tp,
                    "sidecar: subjectAltNames is not supported in ingress tls",
                );
            }
            if tls.https_redirect {
                rep.error(&tp, "sidecar: httpsRedirect is not supported");
            }
            if tls
                .credential_name
                .as_deref()
                .is_some_and(|c| !c.is_empty())
            {
                rep.error(&tp, "sidecar: credentialName is not currently supported");
            }
            if !tls.credential_names.is_empty() {
                rep.error(&tp, "sidecar: credentialNames is not currently supported");
            }
            if !tls.tls_certificates.is_empty() {
                rep.error(&tp, "sidecar: tls_certificates is not currently supported");
            }
            let mode = tls.mode.unwrap_or_default();
            if matches!(
                mode,
                ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough
            ) {
                rep.error(
                    &tp.k("mode"),
                    format!(
                        "configuration is invalid: cannot set mode to {} in sidecar ingress tls",
                        mode_name(mode)
                    ),
                );
            }
            if !Protocol::parse(port.protocol.as_deref().unwrap_or("")).is_tls() {
                rep.error(
                    &tp,
                    "server cannot have TLS settings for non HTTPS/TLS ports",
                );
            }
            validate_tls_options(tls, &tp, rep);
        }
        if let Some(cp) = &ing.connection_pool {
            let cpp = p.k("connectionPool");
            validate_connection_pool(cp, &cpp, rep);
            let proto = port.protocol.as_deref().unwrap_or("");
            if cp.http.is_some() && !Protocol::parse(proto).is_http() {
                rep.warn(
                    &cpp.k("http"),
                    format!(
                        "sidecar: HTTP connection pool settings are configured for port {} ({:?}) but its protocol is not HTTP ({proto}); only TCP settings will apply",
                        port.number,
                        port.name.as_deref().unwrap_or("")
                    ),
                );
            }
        }
    }
    if let Some(cp) = &sc.inbound_connection_pool {
        validate_connection_pool(cp, &at.k("inboundConnectionPool"), rep);
    }

    let mut ports = BTreeSet::new();
    let mut uds = BTreeSet::new();
    let mut catch_all = false;
    for (i, eg) in sc.egress.iter().enumerate() {
        let p = at.ki("egress", i);
        match &eg.port {
            None => {
                if catch_all {
                    rep.error(
                        &p,
                        "sidecar: egress can have only one listener with empty port",
                    );
                    continue;
                }
                if i == sc.egress.len() - 1 {
                    catch_all = true;
                } else {
                    rep.error(
                        &p,
                        "sidecar: the egress listener with empty port should be the last listener in the list",
                    );
                }
            }
            Some(port) => {
                let pp = p.k("port");
                if port.target_port.is_some_and(|t| t > 0) {
                    rep.error(&pp.k("targetPort"), "targetPort has no impact on Sidecars");
                }
                let bind = eg.bind.as_deref().unwrap_or("");
                validate_port_name_protocol(port, &pp, rep);
                if port.number == 0 {
                    match bind.strip_prefix(UNIX_PREFIX) {
                        None => rep.error(
                            &p.k("bind"),
                            "sidecar: ports with 0 value must have a unix domain socket bind address",
                        ),
                        Some(path) => rep.check(&p.k("bind"), validate_unix_address(path)),
                    }
                    if !matches!(
                        eg.capture_mode.unwrap_or_default(),
                        CaptureMode::Default | CaptureMode::None
                    ) {
                        rep.error(
                            &p.k("captureMode"),
                            "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
                        );
                    }
                    if !uds.insert(bind.to_string()) {
                        rep.error(
                            &p.k("bind"),
                            "sidecar: unix domain socket values for listeners must be unique",
                        );
                    }
                } else {
                    rep.check(&pp.k("number"), validate_port(i64::from(port.number)));
                    if !bind.is_empty() {
                        rep.check(&p.k("bind"), validate_ip(bind));
                    }
                    if !ports.insert(port.number) {
                        rep.error(&pp, "sidecar: ports on IP bound listeners must be unique");
                    }
                }
            }
        }
        validate_egress_hosts(&eg.hosts, ns, &p.k("hosts"), rep);
    }
    if let Some(otp) = &sc.outbound_traffic_policy {
        validate_outbound_traffic_policy(otp, &at.k("outboundTrafficPolicy"), rep);
    }
}

/// The name and protocol checks of `validateSidecarIngressPortAndBind` and
/// `validateSidecarEgressPortBindAndCaptureMode`.
fn validate_port_name_protocol(port: &SidecarPort, at: &FieldPath, rep: &mut Report<'_>) {
    if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
        rep.check(&at.k("name"), validate_port_name(name));
    }
    rep.check(
        &at.k("protocol"),
        validate_protocol(port.protocol.as_deref().unwrap_or("")),
    );
}

/// `defaultEndpoint`: `127.0.0.1:<port>`, `0.0.0.0:<port>`, `[::1]:<port>`, `[::]:<port>`,
/// `:<port>` or `unix://<path>`.
fn validate_default_endpoint(de: &str, at: &FieldPath, rep: &mut Report<'_>) {
    if let Some(path) = de.strip_prefix(UNIX_PREFIX) {
        rep.check(at, validate_unix_address(path));
        return;
    }
    let Some((host, port)) = split_host_port(de) else {
        rep.error(at, format!("address {de}: missing port in address"));
        return;
    };
    if !host.is_empty() && !["127.0.0.1", "0.0.0.0", "::1", "::"].contains(&host) {
        rep.error(
            at,
            "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset",
        );
    }
    match port.parse::<i64>() {
        Ok(n) => rep.check(at, validate_port(n)),
        Err(_) => rep.error(
            at,
            format!(
                "sidecar: defaultEndpoint port ({port}) is not a number: strconv.Atoi: parsing {port:?}: invalid syntax"
            ),
        ),
    }
}

/// Go's `net.SplitHostPort` for the forms used here: a host (IPv6 literals without their
/// brackets) and a port's text, which must be there.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    let (h, p) = authority::split_host_port(s).ok()?;
    Some((authority::unbracket(h), p?))
}

/// Egress hosts: `namespace/dnsName`, with warnings for duplicates.
fn validate_egress_hosts(hosts: &[String], ns: &str, at: &FieldPath, rep: &mut Report<'_>) {
    if hosts.is_empty() {
        rep.error(
            at,
            "sidecar: egress listener must contain at least one host",
        );
        return;
    }
    let mut by_ns: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        let p = at.i(i);
        if let Some((n, svc)) = h.split_once('/')
            && !n.starts_with('~')
        {
            let n = if n == "." { ns } else { n };
            let set = by_ns.entry(n.to_string()).or_default();
            let dup = if svc == "*" {
                !set.is_empty()
            } else {
                set.contains(svc) || set.contains("*")
            };
            if dup {
                rep.warn(&p, format!("duplicated egress host: {h}"));
            }
            set.insert(svc.to_string());
        }
        for e in common::validate_namespace_slash_host(h, false) {
            rep.error(&p, e);
        }
    }
    if by_ns.get("*").is_some_and(|s| s.contains("*")) && by_ns.len() != 1 {
        rep.warn(
            at,
            "`*/*` host select all resources, no other hosts can be added",
        );
    }
}

/// `validateSidecarOutboundTrafficPolicy`. In a Sidecar an omitted mode is REGISTRY_ONLY
/// (the proto's zero value).
fn validate_outbound_traffic_policy(
    otp: &OutboundTrafficPolicy,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let Some(proxy) = &otp.egress_proxy else {
        return;
    };
    let mode = otp.mode.unwrap_or(OutboundTrafficMode::RegistryOnly);
    if mode != OutboundTrafficMode::AllowAny {
        rep.error(
            &at.k("egressProxy"),
            "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
        );
        return;
    }
    let p = at.k("egressProxy");
    rep.check(&p.k("host"), validate_fqdn(&proxy.host));
    if proxy.port.is_none() {
        rep.error(&p.k("port"), "sidecar: egress_proxy port must be non-nil");
        return;
    }
    validate_destination(proxy, &p, rep);
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    /// Go's `net.SplitHostPort` through `mesh_core::authority`: brackets come off an IPv6
    /// literal, which needs them to carry a port (RFC 3986 §3.2.2); a port must be there.
    #[test]
    fn default_endpoints_split_as_go_does() {
        assert_eq!(
            split_host_port("127.0.0.1:8080"),
            Some(("127.0.0.1", "8080"))
        );
        assert_eq!(split_host_port("[::1]:8080"), Some(("::1", "8080")));
        assert_eq!(split_host_port("[::]:8080"), Some(("::", "8080")));
        assert_eq!(split_host_port(":8080"), Some(("", "8080")));
        assert_eq!(split_host_port("127.0.0.1:x"), Some(("127.0.0.1", "x")));
        for s in ["::1:8080", "127.0.0.1", "[::1]", "[::1"] {
            assert_eq!(split_host_port(s), None, "{s}");
        }
    }
}
