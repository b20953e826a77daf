//! The outbound side's DestinationRule `tls`: what each cluster's merged `tls` (Istio's
//! precedence: subset over top level, port-level settings over both, as
//! `Snapshot::traffic_policy` merges them) asks of the connector.
//!
//! - `SIMPLE`, `MUTUAL`: TLS origination from files ([`mesh_tls::origination`]); the files
//!   are read and checked when the configuration is loaded (by `validate` and `run` alike),
//!   and a problem is an error of the field (`spec.trafficPolicy.portLevelSettings[0].tls.caCertificates`).
//!   `insecureSkipVerify: true` is accepted with a warning.
//! - `ISTIO_MUTUAL` (and auto mTLS): `subjectAltNames` replace the identity expected of the
//!   endpoints (its service account), `sni` the SNI (`outbound_.<port>_.<subset>_.<host>`).
//!   Without them, a ServiceEntry's `subjectAltNames` are expected, together with the
//!   endpoint's own service account (Istio's `ServiceAccounts` of a service: the
//!   ServiceEntry's names and the endpoints' accounts).
//! - For `SIMPLE`/`MUTUAL` without `subjectAltNames`, the ServiceEntry's are checked
//!   (`constructUpstreamTLS`: `opts.serviceAccounts` for the external registry).
//!
//! The files are watched as the workload's identity files are (Istio serves them through
//! its file-watching SDS): `WorkloadTls::rotate` re-reads the settings whose
//! files changed; new connections use the new files (their pool key changes), established
//! ones live on, and files that cannot be used keep the previous ones.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use mesh_core::Severity;
use mesh_core::compile::Snapshot;
use mesh_core::error::{FieldPath, ResourceRef};
use mesh_core::identity::SpiffeId;
use mesh_core::load::Issue;
use mesh_core::model::Kind;
use mesh_core::model::networking::{ClientTlsMode, ClientTlsSettings, TrafficPolicy};
use mesh_tls::origination::Origination;

/// The DestinationRules' `tls` of a configuration, ready for the connector.
#[derive(Debug, Default)]
pub struct OutboundTls {
    snapshot: Option<Arc<Snapshot>>,
    /// Every `SIMPLE`/`MUTUAL` settings of the configuration, with its files read.
    prepared: ArcSwap<Vec<(ClientTlsSettings, Origination)>>,
    /// The files they read, as last read.
    stamps: Mutex<Vec<(PathBuf, Stamp)>>,
    /// Whether some DestinationRule `tls` or ServiceEntry `subjectAltNames` needs looking at
    /// per cluster (otherwise the connector's auto mTLS alone decides, with no look-up).
    any: bool,
}

/// What one cluster's `tls` asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterTls {
    /// `SIMPLE`/`MUTUAL`: originate this.
    pub(crate) originate: Option<Origination>,
    /// Istio mTLS: the identities expected instead of the endpoint's service account
    /// (`true` in the second field: the endpoint's own is accepted too).
    pub(crate) identities: Option<(Arc<[SpiffeId]>, bool)>,
    /// Istio mTLS: the SNI instead of the cluster name.
    pub(crate) sni: Option<Arc<str>>,
}

// === impl OutboundTls ===

impl OutboundTls {
    /// Reads the files every DestinationRule `tls` of `snapshot` names. Errors and warnings
    /// are issues of the DestinationRules' fields.
    pub(crate) fn prepare(snapshot: &Arc<Snapshot>) -> (Self, Vec<Issue>) {
        let mut issues = Vec::new();
        let mut prepared: Vec<(ClientTlsSettings, Origination)> = Vec::new();
        let mut any = snapshot
            .services
            .iter()
            .any(|s| !s.subject_alt_names.is_empty());
        for dr in &snapshot.destination_rules {
            let resource = ResourceRef {
                kind: Kind::DestinationRule,
                namespace: dr.namespace.clone(),
                name: dr.name.clone(),
            };
            let mut issue = |severity, field: String, message: String| {
                issues.push(Issue {
                    severity,
                    resource: resource.clone(),
                    field: FieldPath::parse(&field),
                    message,
                })
            };
            for (at, tls) in tls_settings(&dr.spec) {
                any = true;
                match tls.mode {
                    ClientTlsMode::Simple | ClientTlsMode::Mutual => {
                        if tls.insecure_skip_verify == Some(true) {
                            issue(
                                Severity::Warning,
                                format!("{at}.insecureSkipVerify"),
                                "insecureSkipVerify: the upstream's certificate is not verified"
                                    .into(),
                            );
                        }
                        if prepared.iter().any(|(s, _)| s == tls) {
                            continue;
                        }
                        let tls = match with_credential(snapshot, tls) {
                            Ok(t) => t,
                            Err(m) => {
                                issue(Severity::Error, format!("{at}.credentialName"), m);
                                continue;
                            }
                        };
                        match Origination::new(&tls) {
                            Ok(o) => prepared.push((tls.into_owned(), o)),
                            Err(e) => {
                                issue(Severity::Error, format!("{at}.{}", e.field), e.message)
                            }
                        }
                    }
                    ClientTlsMode::IstioMutual => {
                        for (i, san) in tls.subject_alt_names.iter().enumerate() {
                            if let Err(e) = san.parse::<SpiffeId>() {
                                issue(
                                    Severity::Error,
                                    format!("{at}.subjectAltNames[{i}]"),
                                    format!(
                                        "{san:?}: ISTIO_MUTUAL checks SPIFFE identities \
                                         (spiffe://<trust domain>/ns/<ns>/sa/<sa>): {e}"
                                    ),
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let stamps = Mutex::new(files(&prepared));
        let out = OutboundTls {
            snapshot: Some(snapshot.clone()),
            prepared: ArcSwap::from_pointee(prepared),
            stamps,
            any,
        };
        (out, issues)
    }

    /// Re-reads the settings whose files changed since they were read (modification time
    /// or length); `true` when some settings were swapped (the connector's per-cluster
    /// look-ups must then be made again). Settings whose new files cannot be used keep the
    /// previous ones, and are tried again at the next call.
    pub(crate) fn reload_if_changed(&self) -> bool {
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        let changed: Vec<PathBuf> = stamps
            .iter()
            .filter(|(path, was)| stamp(path) != *was)
            .map(|(path, _)| path.clone())
            .collect();
        if changed.is_empty() {
            return false;
        }
        let mut swapped = false;
        let mut next = Vec::clone(&self.prepared.load());
        for (settings, o) in &mut next {
            let uses = |p: &Option<String>| {
                p.as_deref()
                    .is_some_and(|p| changed.iter().any(|c| c.as_os_str() == p))
            };
            if !(uses(&settings.ca_certificates)
                || uses(&settings.client_certificate)
                || uses(&settings.private_key))
            {
                continue;
            }
            match Origination::new(settings) {
                Ok(new) => {
                    *o = new;
                    swapped = true;
                }
                Err(e) => tracing::warn!(
                    field = e.field,
                    error = %e,
                    "DestinationRule tls files changed but cannot be used; keeping the current ones"
                ),
            }
        }
        // a file of settings that failed keeps its old stamp: tried again next time
        let old = self.prepared.load();
        let failed = |path: &PathBuf| {
            next.iter().zip(old.iter()).any(|(n, o)| {
                n.1.id() == o.1.id()
                    && [
                        &n.0.ca_certificates,
                        &n.0.client_certificate,
                        &n.0.private_key,
                    ]
                    .into_iter()
                    .flatten()
                    .any(|f| path.as_os_str() == f.as_str())
            })
        };
        for (path, was) in stamps.iter_mut() {
            if changed.contains(path) && !failed(path) {
                *was = stamp(path);
            }
        }
        if swapped {
            tracing::info!("DestinationRule tls files reloaded");
            self.prepared.store(Arc::new(next));
        }
        swapped
    }

    /// Whether clusters need looking at (see [`OutboundTls::cluster`]).
    pub(crate) fn any(&self) -> bool {
        self.any
    }

    /// What the cluster named `name` (`outbound|<port>|<subset>|<host>`) asks for.
    pub(crate) fn cluster(&self, name: &str) -> ClusterTls {
        let Some(snap) = &self.snapshot else {
            return ClusterTls::default();
        };
        let mut parts = name.splitn(4, '|');
        let (Some("outbound"), Some(port), Some(subset), Some(host)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return ClusterTls::default();
        };
        let port = port.parse::<u16>().ok();
        let subset = Some(subset).filter(|s| !s.is_empty());
        let ns = snap.bootstrap.workload.namespace.as_str();
        let tp = snap.traffic_policy(host, subset, port, ns);
        let se_sans: &[String] = snap
            .service(host, ns)
            .map_or(&[], |s| s.subject_alt_names.as_slice());
        let spiffe = |names: &[String]| -> Arc<[SpiffeId]> {
            names.iter().filter_map(|n| n.parse().ok()).collect()
        };
        let mut out = ClusterTls::default();
        match tp.tls.as_ref() {
            Some(tls) if matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) => {
                // the settings as prepared: credentialName resolved to its files
                let tls = with_credential(snap, tls).unwrap_or(std::borrow::Cow::Borrowed(tls));
                let o = self
                    .prepared
                    .load()
                    .iter()
                    .find(|(s, _)| *s == *tls)
                    .map(|(_, o)| o.clone())
                    // refused at load: fail closed if it is met anyway
                    .unwrap_or_else(Origination::refusing);
                out.originate = Some(o.with_subject_alt_names(se_sans));
            }
            Some(tls) if tls.mode == ClientTlsMode::IstioMutual => {
                if !tls.subject_alt_names.is_empty() {
                    out.identities = Some((spiffe(&tls.subject_alt_names), false));
                } else if !se_sans.is_empty() {
                    out.identities = Some((spiffe(se_sans), true));
                }
                out.sni = tls.sni.as_deref().filter(|s| !s.is_empty()).map(Arc::from);
            }
            _ if !se_sans.is_empty() => out.identities = Some((spiffe(se_sans), true)),
            _ => {}
        }
        out
    }
}

/// `credentialName` resolved to files, on a gateway (Istio reads it at gateways only): the
/// secret `<credentialsDir>/<workload namespace>/<name>/` gives `ca.crt` (else the
/// `<name>-cacert` secret's) and, for `MUTUAL`, `tls.crt` and `tls.key`, in place of
/// `caCertificates`, `clientCertificate` and `privateKey`. Settings without it are returned
/// as they are; on a sidecar, or without `credentialsDir`, it is an error (security fails
/// closed).
pub(crate) fn with_credential<'a>(
    snapshot: &Snapshot,
    tls: &'a ClientTlsSettings,
) -> Result<std::borrow::Cow<'a, ClientTlsSettings>, String> {
    let Some(name) = tls.credential_name.as_deref().filter(|n| !n.is_empty()) else {
        return Ok(std::borrow::Cow::Borrowed(tls));
    };
    let boot = &snapshot.bootstrap;
    let gateway = snapshot
        .gateways
        .iter()
        .any(|g| crate::gateway::selects(g, snapshot));
    let dir = match (&boot.credentials_dir, gateway) {
        (Some(dir), true) => dir,
        _ => {
            return Err(
                "credentialName (a Kubernetes secret) is read by gateways only: from ProxyBootstrap.credentialsDir on a workload a Gateway selects; a sidecar takes clientCertificate, privateKey and caCertificates files"
                    .into(),
            );
        }
    };
    let files = crate::gateway::credential_files(
        std::path::Path::new(dir),
        &boot.workload.namespace,
        name,
        None,
    );
    let path = |p: &std::path::Path| Some(p.display().to_string());
    let mut out = tls.clone();
    out.credential_name = None;
    if let Some(ca) = files.ca_certificates.as_deref().filter(|p| p.exists()) {
        out.ca_certificates = path(ca);
    }
    if tls.mode == ClientTlsMode::Mutual {
        out.client_certificate = path(&files.certificate);
        out.private_key = path(&files.private_key);
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Every `tls` of a DestinationRule with its field path.
fn tls_settings(
    dr: &mesh_core::model::networking::DestinationRule,
) -> Vec<(String, &ClientTlsSettings)> {
    fn of<'a>(
        tp: &'a Option<TrafficPolicy>,
        at: &str,
        out: &mut Vec<(String, &'a ClientTlsSettings)>,
    ) {
        let Some(tp) = tp.as_ref() else { return };
        if let Some(t) = &tp.tls {
            out.push((format!("{at}.tls"), t));
        }
        for (i, p) in tp.port_level_settings.iter().enumerate() {
            if let Some(t) = &p.tls {
                out.push((format!("{at}.portLevelSettings[{i}].tls"), t));
            }
        }
    }
    let mut out = Vec::new();
    of(&dr.traffic_policy, "spec.trafficPolicy", &mut out);
    for (i, sub) in dr.subsets.iter().enumerate() {
        of(
            &sub.traffic_policy,
            &format!("spec.subsets[{i}].trafficPolicy"),
            &mut out,
        );
    }
    out
}

/// What a file looked like when last read: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The files of the prepared settings, with their stamps now.
fn files(prepared: &[(ClientTlsSettings, Origination)]) -> Vec<(PathBuf, Stamp)> {
    let mut out: Vec<(PathBuf, Stamp)> = Vec::new();
    for (s, _) in prepared {
        for f in [&s.ca_certificates, &s.client_certificate, &s.private_key]
            .into_iter()
            .flatten()
            .filter(|f| !f.is_empty())
        {
            let path = PathBuf::from(f);
            if !out.iter().any(|(p, _)| *p == path) {
                let now = stamp(&path);
                out.push((path, now));
            }
        }
    }
    out
}
