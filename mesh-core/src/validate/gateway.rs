//! `ValidateGateway` (`validateServer`, `validateServerPort`, `validateServerBind`) and
//! `validateTLSOptions`, which Sidecar ingress TLS shares.

use std::collections::BTreeSet;

use crate::error::FieldPath;
use crate::model::networking::{
    Gateway, Port, Server, ServerTlsMode, ServerTlsSettings, TlsProtocol,
};

use super::common::{
    self, Protocol, is_dns1123_label, validate_ip, validate_port, validate_unix_address,
};
use super::{PathExt, Report};

const UNIX_PREFIX: &str = "unix://";

/// Cipher suites Envoy (BoringSSL) accepts in `cipherSuites` (`security.ValidCipherSuites`).
const VALID_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

/// `ValidateGateway`.
pub(crate) fn validate(name: &str, gw: &Gateway, at: &FieldPath, rep: &mut Report<'_>) {
    if !is_dns1123_label(name) {
        rep.error(
            &FieldPath::root().key("metadata").key("name"),
            format!("invalid gateway name: {name:?}"),
        );
    }
    if gw.servers.is_empty() {
        rep.error(&at.k("servers"), "gateway must have at least one server");
    }
    for (i, s) in gw.servers.iter().enumerate() {
        validate_server(s, &at.ki("servers", i), rep);
    }
    let mut names = BTreeSet::new();
    for (i, s) in gw.servers.iter().enumerate() {
        let Some(port) = &s.port else { continue };
        let p = at.ki("servers", i);
        if !names.insert(port.name.as_str()) {
            rep.error(
                &p.k("port").k("name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    port.name
                ),
            );
        }
        if !Protocol::parse(&port.protocol).is_http()
            && s.tls.as_ref().is_some_and(|t| t.https_redirect)
        {
            rep.warn(
                &p.k("tls").k("httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            );
        }
    }
}

/// `validateServer`.
fn validate_server(s: &Server, at: &FieldPath, rep: &mut Report<'_>) {
    if s.hosts.is_empty() {
        rep.error(
            &at.k("hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, h) in s.hosts.iter().enumerate() {
        for e in common::validate_namespace_slash_host(h, true) {
            rep.error(&at.ki("hosts", i), e);
        }
    }
    let bind = s.bind.as_deref().unwrap_or("");
    let port_ok = validate_server_port(s.port.as_ref(), bind, &at.k("port"), rep);
    validate_server_bind(s.port.as_ref(), bind, &at.k("bind"), rep);
    if let Some(tls) = &s.tls {
        validate_tls_options(tls, &at.k("tls"), rep);
    }
    let Some(port) = s.port.as_ref().filter(|_| port_ok) else {
        return;
    };
    let proto = Protocol::parse(&port.protocol);
    match &s.tls {
        None if proto.is_tls() => {
            rep.error(at, "server must have TLS settings for HTTPS/TLS protocols");
        }
        Some(tls) if !proto.is_tls() => {
            if proto.is_http() {
                // only httpsRedirect is allowed on plain HTTP
                let passthrough = matches!(
                    tls.mode.unwrap_or_default(),
                    ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
                );
                let set = |o: &Option<String>| o.as_deref().is_some_and(|v| !v.is_empty());
                if !passthrough
                    || set(&tls.ca_certificates)
                    || set(&tls.private_key)
                    || set(&tls.server_certificate)
                {
                    rep.error(
                        &at.k("tls"),
                        "server cannot have TLS settings for plain text HTTP ports",
                    );
                }
            } else {
                rep.error(
                    &at.k("tls"),
                    "server cannot have TLS settings for non HTTPS/TLS ports",
                );
            }
        }
        _ => {}
    }
}

/// `validateServerPort`; true when the port has no error.
fn validate_server_port(
    port: Option<&Port>,
    bind: &str,
    at: &FieldPath,
    rep: &mut Report<'_>,
) -> bool {
    let Some(port) = port else {
        rep.error(at, "port is required");
        return false;
    };
    let mut ok = true;
    if Protocol::parse(&port.protocol) == Protocol::Unsupported {
        rep.error(
            &at.k("protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                port.protocol
            ),
        );
        ok = false;
    }
    if (port.number > 0 || !bind.starts_with(UNIX_PREFIX))
        && let Err(e) = validate_port(i64::from(port.number))
    {
        rep.error(&at.k("number"), e);
        ok = false;
    }
    if port.target_port.is_some_and(|t| t > 0) {
        rep.error(&at.k("targetPort"), "targetPort has no impact on Gateways");
        ok = false;
    }
    if port.name.is_empty() {
        rep.error(
            &at.k("name"),
            format!(
                "port name must be set: number:{} protocol:{:?}",
                port.number, port.protocol
            ),
        );
        ok = false;
    }
    ok
}

/// `validateServerBind`.
fn validate_server_bind(port: Option<&Port>, bind: &str, at: &FieldPath, rep: &mut Report<'_>) {
    if let Some(path) = bind.strip_prefix(UNIX_PREFIX) {
        rep.check(at, validate_unix_address(path));
        if let Some(p) = port.filter(|p| p.number != 0) {
            rep.error(
                at,
                format!(
                    "port number must be 0 for unix domain socket: number:{} protocol:{:?}",
                    p.number, p.protocol
                ),
            );
        }
    } else if !bind.is_empty() {
        rep.check(at, validate_ip(bind));
    }
}

pub(crate) fn mode_name(m: ServerTlsMode) -> &'static str {
    match m {
        ServerTlsMode::Passthrough => "PASSTHROUGH",
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
        ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

/// `IsValidCipherSuite`: known names, `ALL`, and expressions starting with an operator.
fn is_valid_cipher_suite(cs: &str) -> bool {
    match cs.chars().next() {
        None => true,
        Some(_) if cs == "ALL" => true,
        Some(c) if !c.is_alphanumeric() => true,
        Some(_) => VALID_CIPHER_SUITES.contains(&cs),
    }
}

/// `validateTLSOptions` (server side).
pub(crate) fn validate_tls_options(tls: &ServerTlsSettings, at: &FieldPath, rep: &mut Report<'_>) {
    let set = |o: &Option<String>| o.as_deref().is_some_and(|v| !v.is_empty());
    if matches!(
        tls.min_protocol_version,
        Some(TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1)
    ) && tls.cipher_suites.is_empty()
    {
        rep.warn(
            &at.k("minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    let mut invalid = BTreeSet::new();
    let mut valid = BTreeSet::new();
    let mut duplicate = BTreeSet::new();
    for cs in &tls.cipher_suites {
        if !is_valid_cipher_suite(cs) {
            invalid.insert(cs.as_str());
        } else if !valid.insert(cs.as_str()) {
            duplicate.insert(cs.as_str());
        }
    }
    let list =
        |s: &BTreeSet<&str>| format!("[{}]", s.iter().copied().collect::<Vec<_>>().join(" "));
    if !invalid.is_empty() {
        rep.warn(
            &at.k("cipherSuites"),
            format!("ignoring invalid cipher suites: {}", list(&invalid)),
        );
    }
    if !duplicate.is_empty() {
        rep.warn(
            &at.k("cipherSuites"),
            format!("ignoring duplicate cipher suites: {}", list(&duplicate)),
        );
    }
    let mode = tls.mode.unwrap_or_default();
    if mode == ServerTlsMode::IstioMutual {
        let checks: [(bool, &str, &str); 6] = [
            (
                set(&tls.server_certificate),
                "serverCertificate",
                "ISTIO_MUTUAL TLS cannot have associated server certificate",
            ),
            (
                set(&tls.private_key),
                "privateKey",
                "ISTIO_MUTUAL TLS cannot have associated private key",
            ),
            (
                set(&tls.ca_certificates),
                "caCertificates",
                "ISTIO_MUTUAL TLS cannot have associated CA bundle",
            ),
            (
                !tls.tls_certificates.is_empty(),
                "tlsCertificates",
                "ISTIO_MUTUAL TLS cannot have associated tlsCertificates",
            ),
            (
                set(&tls.credential_name),
                "credentialName",
                "ISTIO_MUTUAL TLS cannot have associated credentialName",
            ),
            (
                !tls.credential_names.is_empty(),
                "credentialNames",
                "ISTIO_MUTUAL TLS cannot have associated credentialNames",
            ),
        ];
        for (bad, field, msg) in checks {
            if bad {
                rep.error(&at.k(field), msg);
            }
        }
        return;
    }
    if matches!(
        mode,
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
    ) && (set(&tls.ca_crl)
        || set(&tls.server_certificate)
        || set(&tls.private_key)
        || set(&tls.ca_certificates)
        || !tls.tls_certificates.is_empty()
        || set(&tls.credential_name)
        || !tls.credential_names.is_empty())
    {
        rep.warn(
            at,
            format!(
                "{} mode does not use certificates, they will be ignored",
                mode_name(mode)
            ),
        );
    }
    let sources = [
        set(&tls.server_certificate) && set(&tls.private_key),
        set(&tls.credential_name),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ]
    .into_iter()
    .filter(|b| *b)
    .count();
    if sources > 1 {
        rep.error(
            at,
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }
    let terminating = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if terminating && (set(&tls.credential_name) || !tls.credential_names.is_empty()) {
        // credentials come from the secret
        return;
    }
    if terminating {
        let prefix = if mode == ServerTlsMode::Simple {
            "SIMPLE TLS"
        } else {
            if !set(&tls.ca_certificates) {
                rep.error(
                    &at.k("caCertificates"),
                    "MUTUAL TLS requires a client CA bundle",
                );
            }
            "MUTUAL TLS"
        };
        if tls.tls_certificates.len() > 2 {
            rep.warn(
                &at.k("tlsCertificates"),
                format!("{prefix} can support up to 2 server certificates"),
            );
        }
        if tls.tls_certificates.is_empty() {
            if !set(&tls.server_certificate) {
                rep.error(
                    &at.k("serverCertificate"),
                    format!("{prefix} requires a server certificate"),
                );
            }
            if !set(&tls.private_key) {
                rep.error(
                    &at.k("privateKey"),
                    format!("{prefix} requires a private key"),
                );
            }
        }
        for (i, c) in tls.tls_certificates.iter().enumerate() {
            let p = at.ki("tlsCertificates", i);
            if !set(&c.server_certificate) {
                rep.error(&p, format!("{prefix} requires a server certificate"));
            }
            if !set(&c.private_key) {
                rep.error(&p, format!("{prefix} requires a private key"));
            }
        }
    }
    if set(&tls.ca_crl) {
        if set(&tls.credential_name) {
            rep.error(
                &at.k("caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == ServerTlsMode::Simple {
            rep.error(&at.k("caCrl"), "CRL is not supported with SIMPLE TLS");
        }
    }
}
