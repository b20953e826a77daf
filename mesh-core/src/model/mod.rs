//! The Istio resource model: every kind the mesh reads, as typed, `serde` structs.
//!
//! A document is `apiVersion` + `kind` + `metadata` + `spec` exactly as for `kubectl apply`.
//! [`Kind::from_type`] chooses the kind from `apiVersion` and `kind`; each kind is accepted
//! under every version Istio serves.

pub mod bootstrap;
pub mod networking;
pub mod ratelimit;
pub mod security;
pub mod telemetry;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::error::ResourceRef;

/// The kinds of resource the mesh understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `networking.istio.io` Gateway.
    Gateway,
    /// `networking.istio.io` Sidecar.
    Sidecar,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication,
    /// `mesh.proxy` ProxyBootstrap (this project's own kind).
    ProxyBootstrap,
    /// `mesh.proxy` LocalRateLimit (this project's own kind).
    LocalRateLimit,
    /// `telemetry.istio.io` Telemetry.
    Telemetry,
}

/// Versions Istio serves for the networking group.
pub const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
/// Versions Istio serves for the security group.
pub const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// Versions Istio serves for the telemetry group.
pub const TELEMETRY_VERSIONS: &[&str] = &["v1", "v1alpha1"];

// === impl Kind ===

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 12] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Gateway,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::ProxyBootstrap,
        Kind::LocalRateLimit,
        Kind::Telemetry,
    ];

    /// The kind's name as written in `kind:`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Gateway => "Gateway",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::ProxyBootstrap => "ProxyBootstrap",
            Kind::LocalRateLimit => "LocalRateLimit",
            Kind::Telemetry => "Telemetry",
        }
    }

    /// The API group.
    pub const fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::ProxyBootstrap | Kind::LocalRateLimit => "mesh.proxy",
            Kind::Telemetry => "telemetry.istio.io",
            _ => "networking.istio.io",
        }
    }

    /// The versions served for this kind.
    pub const fn versions(self) -> &'static [&'static str] {
        match self.group().as_bytes() {
            b"security.istio.io" => SECURITY_VERSIONS,
            b"mesh.proxy" => &["v1alpha1"],
            b"telemetry.istio.io" => TELEMETRY_VERSIONS,
            _ => NETWORKING_VERSIONS,
        }
    }

    /// Chooses the kind from a document's `apiVersion` and `kind`; the error says why not.
    pub fn from_type(api_version: &str, kind: &str) -> Result<Kind, String> {
        let Some(k) = Kind::ALL.into_iter().find(|k| k.as_str() == kind) else {
            return Err(format!(
                "unknown kind {kind:?} (apiVersion {api_version:?})"
            ));
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        if group != k.group() || !k.versions().contains(&version) {
            let served: Vec<String> = k
                .versions()
                .iter()
                .map(|v| format!("{}/{v}", k.group()))
                .collect();
            return Err(format!(
                "apiVersion {api_version:?} does not serve kind {kind} (served: {})",
                served.join(", ")
            ));
        }
        Ok(k)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kubernetes `ObjectMeta`: the fields the mesh reads, plus the server-managed ones that
/// `kubectl get -o yaml` prints (accepted and ignored).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Name (required).
    #[serde(default)]
    pub name: String,
    /// Namespace. Default: the bootstrap workload's namespace (`default`).
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Ignored (server-managed).
    pub generate_name: Option<String>,
    /// Ignored (server-managed).
    pub uid: Option<String>,
    /// Ignored (server-managed).
    pub resource_version: Option<String>,
    /// Ignored (server-managed).
    pub generation: Option<i64>,
    /// Ignored (server-managed).
    pub creation_timestamp: Option<serde_json::Value>,
    /// Ignored (server-managed).
    pub deletion_timestamp: Option<serde_json::Value>,
    /// Ignored (server-managed).
    pub deletion_grace_period_seconds: Option<i64>,
    /// Ignored (server-managed).
    pub owner_references: Option<serde_json::Value>,
    /// Ignored (server-managed).
    pub finalizers: Option<Vec<String>>,
    /// Ignored (server-managed).
    pub managed_fields: Option<serde_json::Value>,
    /// Ignored (server-managed).
    pub self_link: Option<String>,
}

/// The spec of a resource, by kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)]
pub enum Spec {
    /// A VirtualService.
    VirtualService(networking::VirtualService),
    /// A DestinationRule.
    DestinationRule(networking::DestinationRule),
    /// A ServiceEntry.
    ServiceEntry(networking::ServiceEntry),
    /// A WorkloadEntry.
    WorkloadEntry(networking::WorkloadEntry),
    /// A Gateway.
    Gateway(networking::Gateway),
    /// A Sidecar.
    Sidecar(networking::Sidecar),
    /// A PeerAuthentication.
    PeerAuthentication(security::PeerAuthentication),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(security::AuthorizationPolicy),
    /// A RequestAuthentication.
    RequestAuthentication(security::RequestAuthentication),
    /// A ProxyBootstrap.
    ProxyBootstrap(bootstrap::ProxyBootstrap),
    /// A LocalRateLimit.
    LocalRateLimit(ratelimit::LocalRateLimit),
    /// A Telemetry.
    Telemetry(telemetry::Telemetry),
}

/// Where a resource came from: used to point diagnostics at lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// File name (or the name given to an in-memory source).
    pub file: Arc<str>,
    /// The whole source text (shared by its documents).
    pub text: Arc<str>,
    /// Byte range of the chunk of `text` the document was parsed from (the loader splits a
    /// source at `---` lines and parses the chunks in parallel).
    pub chunk: std::ops::Range<usize>,
    /// Lines of `text` before the chunk.
    pub line_offset: u32,
    /// Index of the document within its chunk (0-based).
    pub document: usize,
    /// 1-based line of `text` where the document starts.
    pub line: u32,
}

/// One loaded resource: `apiVersion`, `kind`, `metadata` and the typed `spec`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// `apiVersion` as written.
    pub api_version: String,
    /// The kind.
    pub kind: Kind,
    /// Metadata; `namespace` is filled in by the loader.
    pub metadata: ObjectMeta,
    /// The typed spec.
    pub spec: Spec,
    /// Where it came from.
    pub origin: Origin,
    /// What it says that this version does not enforce (found by the loader, with
    /// positions; see [`support`](crate::support)).
    pub unenforced: Vec<crate::support::Unenforced>,
}

// === impl Resource ===

impl Resource {
    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The resource's namespace (after defaulting; empty only before the loader ran).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("")
    }

    /// `kind/namespace/name`.
    pub fn reference(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind,
            namespace: self.namespace().to_string(),
            name: self.name().to_string(),
        }
    }
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Resource", 4)?;
        st.serialize_field("apiVersion", &self.api_version)?;
        st.serialize_field("kind", self.kind.as_str())?;
        st.serialize_field("metadata", &self.metadata)?;
        st.serialize_field("spec", &self.spec)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_served_under_istio_versions() {
        for v in ["v1", "v1beta1", "v1alpha3"] {
            assert_eq!(
                Kind::from_type(&format!("networking.istio.io/{v}"), "VirtualService"),
                Ok(Kind::VirtualService)
            );
        }
        assert_eq!(
            Kind::from_type("security.istio.io/v1", "AuthorizationPolicy"),
            Ok(Kind::AuthorizationPolicy)
        );
        assert!(Kind::from_type("security.istio.io/v1alpha3", "AuthorizationPolicy").is_err());
        assert!(Kind::from_type("networking.istio.io/v1", "EnvoyFilter").is_err());
        assert!(Kind::from_type("security.istio.io/v1", "VirtualService").is_err());
        assert_eq!(
            Kind::from_type("mesh.proxy/v1alpha1", "ProxyBootstrap"),
            Ok(Kind::ProxyBootstrap)
        );
        assert_eq!(
            Kind::from_type("mesh.proxy/v1alpha1", "LocalRateLimit"),
            Ok(Kind::LocalRateLimit)
        );
        assert!(Kind::from_type("networking.istio.io/v1", "LocalRateLimit").is_err());
    }
}
