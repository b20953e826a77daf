//! `ValidateServiceEntry` and `ValidateWorkloadEntry` (`validateWorkloadEntry`).

use std::collections::BTreeSet;

use crate::error::FieldPath;
use crate::model::Resource;
use crate::model::networking::{Resolution, ServiceEntry, WorkloadEntry};

use super::common::{
    self, Protocol, is_ip, is_wildcarded, validate_fqdn, validate_labels, validate_port,
    validate_port_name, validate_protocol, validate_unix_address, validate_wildcard_domain,
};
use super::{PathExt, Report};

const UNIX_PREFIX: &str = "unix://";

/// The label with which a ServiceEntry opts out of IP auto-allocation.
const AUTOALLOCATE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";

fn resolution_name(r: Resolution) -> &'static str {
    match r {
        Resolution::None => "NONE",
        Resolution::Static => "STATIC",
        Resolution::Dns => "DNS",
        Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        Resolution::DynamicDns => "DYNAMIC_DNS",
    }
}

/// `ValidateServiceEntry`.
pub(crate) fn validate(r: &Resource, se: &ServiceEntry, at: &FieldPath, rep: &mut Report<'_>) {
    let resolution = se.resolution.unwrap_or_default();
    let res_name = resolution_name(resolution);
    common::validate_alpha_workload_selector(
        se.workload_selector.as_ref(),
        "service entry",
        &at.k("workloadSelector"),
        rep,
    );
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        rep.error(
            at,
            "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
        );
    }
    if se.hosts.is_empty() {
        rep.error(&at.k("hosts"), "service entry must have at least one host");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        let p = at.ki("hosts", i);
        if h == "*" {
            rep.error(&p, format!("invalid host {h}"));
        } else {
            rep.check(&p, validate_wildcard_domain(h));
            if resolution != Resolution::DynamicDns
                && let Err(e) = common::validate_partial_wildcard(h)
            {
                rep.warn(&p, e);
            }
        }
    }
    let mut cidr = false;
    for (i, a) in se.addresses.iter().enumerate() {
        cidr |= a.contains('/');
        rep.check(&at.ki("addresses", i), common::validate_ip_subnet(a));
    }
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        rep.error(
            &at.k("addresses"),
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    let opted_out = r
        .metadata
        .labels
        .get(AUTOALLOCATE_LABEL)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    let auto_allocation = resolution != Resolution::None && !opted_out && se.addresses.is_empty();
    let mut port_names = BTreeSet::new();
    let mut port_numbers = BTreeSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let p = at.ki("ports", i);
        if !port_names.insert(port.name.as_str()) {
            rep.error(
                &p.k("name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !port_numbers.insert(port.number) {
            rep.error(
                &p.k("number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        if let Some(tp) = port.target_port
            && tp != 0
        {
            rep.check(&p.k("targetPort"), validate_port(i64::from(tp)));
        }
        let proto = port.protocol.as_deref().unwrap_or("");
        if se.addresses.is_empty() && !auto_allocation && (proto.is_empty() || proto == "TCP") {
            rep.warn(
                &p,
                "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
            );
        }
        rep.check(&p.k("name"), validate_port_name(&port.name));
        rep.check(&p.k("protocol"), validate_protocol(proto));
        rep.check(&p.k("number"), validate_port(i64::from(port.number)));
    }

    let eps = at.k("endpoints");
    match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                rep.error(
                    &eps,
                    "no endpoints should be provided for resolution type none",
                );
            }
            if se.workload_selector.is_some() {
                rep.warn(
                    &at.k("workloadSelector"),
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, ep) in se.endpoints.iter().enumerate() {
                validate_workload_entry(ep, Some(&port_names), false, &eps.i(i), rep);
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if se.endpoints.is_empty() {
                for (i, h) in se.hosts.iter().enumerate() {
                    if let Err(e) = validate_fqdn(h) {
                        rep.error(
                            &at.ki("hosts", i),
                            format!(
                                "hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {res_name}, {e}"
                            ),
                        );
                        break;
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                rep.error(
                    &eps,
                    format!("there must only be 0 or 1 endpoint for resolution mode {res_name}"),
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                let p = eps.i(i);
                if !is_ip(&ep.address) && validate_fqdn(&ep.address).is_err() {
                    rep.error(
                        &p.k("address"),
                        format!(
                            "endpoint address {:?} is not a valid FQDN or an IP address",
                            ep.address
                        ),
                    );
                }
                validate_labels(&ep.labels, &p.k("labels"), rep);
                for (name, port) in &ep.ports {
                    let pp = p.k("ports").k(name);
                    if !port_names.contains(name.as_str()) {
                        rep.error(
                            &pp,
                            format!("endpoint port {port} is not defined by the service entry"),
                        );
                    }
                    rep.check(&pp, validate_port_name(name));
                    rep.check(&pp, validate_port(i64::from(*port)));
                }
            }
            if !se.addresses.is_empty()
                && se.hosts.len() > 1
                && se
                    .ports
                    .iter()
                    .any(|p| Protocol::parse(p.protocol.as_deref().unwrap_or("")).is_tcp())
            {
                rep.warn(
                    at,
                    "service entry can not have more than one host specified simultaneously with address and tcp port",
                );
            }
        }
        Resolution::DynamicDns => {
            if se.hosts.is_empty() {
                rep.error(
                    &at.k("hosts"),
                    format!(
                        "at least one wildcard host must be provided for resolution type {res_name}"
                    ),
                );
            }
            for (i, h) in se.hosts.iter().enumerate() {
                if !is_wildcarded(h) {
                    rep.error(
                        &at.ki("hosts", i),
                        format!("host must be wildcarded for resolution mode {res_name}"),
                    );
                }
            }
            if !se.addresses.is_empty() {
                rep.error(
                    &at.k("addresses"),
                    format!(
                        "addresses cannot be set for resolution type {res_name}. HTTP route domains will only be generatedfrom the hosts field values"
                    ),
                );
            }
            if !se.endpoints.is_empty() {
                rep.error(
                    &eps,
                    format!(
                        "endpoints cannot be set for resolution type {res_name}. Destination IP address determined from hostsfield values"
                    ),
                );
            }
            for (i, port) in se.ports.iter().enumerate() {
                let proto = Protocol::parse(port.protocol.as_deref().unwrap_or(""));
                if !matches!(
                    proto,
                    Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2
                ) {
                    rep.error(
                        &at.ki("ports", i).k("protocol"),
                        format!(
                            "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type {res_name}"
                        ),
                    );
                }
            }
        }
    }

    // several hosts on plain TCP cannot be told apart, unless resolution is NONE
    if resolution != Resolution::None
        && se.hosts.len() > 1
        && let Some(i) = se.ports.iter().position(|p| {
            let proto = Protocol::parse(p.protocol.as_deref().unwrap_or(""));
            !proto.is_http() && !proto.is_tls()
        })
    {
        rep.error(
            &at.ki("ports", i),
            "multiple hosts provided with non-HTTP, non-TLS ports",
        );
    }
    common::validate_export_to(
        r.namespace(),
        &se.export_to,
        true,
        false,
        &at.k("exportTo"),
        rep,
    );
}

/// `ValidateWorkloadEntry`: a WorkloadEntry document (FQDN addresses allowed).
pub(crate) fn validate_workload_entry_kind(
    we: &WorkloadEntry,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    validate_workload_entry(we, None, true, at, rep);
}

/// `validateWorkloadEntry`: a WorkloadEntry or a STATIC ServiceEntry's endpoint.
fn validate_workload_entry(
    we: &WorkloadEntry,
    service_ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
    at: &FieldPath,
    rep: &mut Report<'_>,
) {
    let addr = we.address.as_str();
    let ap = at.k("address");
    if addr.is_empty() {
        match we.network.as_deref().filter(|n| !n.is_empty()) {
            None => {
                rep.error(&ap, "address is required");
                return;
            }
            Some(n) => rep.warn(&ap, format!("address is unset with network {n:?}")),
        }
    }
    let mut unix = false;
    if let Some(path) = addr.strip_prefix(UNIX_PREFIX) {
        unix = true;
        rep.check(&ap, validate_unix_address(path));
        if !we.ports.is_empty() {
            rep.error(
                &at.k("ports"),
                format!("unix endpoint {addr} must not include ports"),
            );
        }
    } else if !addr.is_empty() && !is_ip(addr) {
        if !allow_fqdn {
            rep.error(
                &ap,
                format!("endpoint address {addr:?} is not a valid IP address"),
            );
        } else if validate_fqdn(addr).is_err() {
            rep.error(
                &ap,
                format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
            );
        }
    }
    for (name, port) in &we.ports {
        let pp = at.k("ports").k(name);
        if service_ports.is_some_and(|sp| !sp.contains(name.as_str())) {
            rep.error(
                &pp,
                format!("endpoint port {port} is not defined by the service entry"),
            );
        }
        rep.check(&pp, validate_port_name(name));
        rep.check(&pp, validate_port(i64::from(*port)));
    }
    validate_labels(&we.labels, &at.k("labels"), rep);
    if unix && service_ports.is_some_and(|sp| sp.len() != 1) {
        rep.error(at, "exactly 1 service port required for unix endpoints");
    }
}
