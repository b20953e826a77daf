//! One cluster: the endpoints of a (host, subset, port), arranged for picking.
//!
//! Built when first needed and rebuilt when the snapshot, the discovered endpoints or any
//! endpoint's health change (or while endpoints warm up); picking only reads it, with
//! atomics for cursors and random numbers, so a pick takes no lock and allocates nothing.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mesh_core::compile::{Endpoint, Protocol, Service, TLS_MODE_LABEL};
use mesh_core::ext::{SelectedEndpoint, SelectedUpstream, UpstreamCluster};
use mesh_core::health::{HealthCell, HealthKey, HealthSource};
use mesh_core::limits::ClusterLimits;
use mesh_core::locality::Locality;
use mesh_core::model::networking::ServicePort;
use mesh_core::rng::SharedRng;
use mesh_core::selector::{Labels, labels_match};

use crate::discover::EndpointSet;
use crate::endpoint::{EndpointState, Registry};
use crate::hash::HashTable;
use crate::locality::{Client, Place, layout, priority_health, priority_load};
use crate::policy::{Algorithm, HashKey, Policy};

mod build;
mod pick;
mod weights;

/// An endpoint of a cluster, ready to hand to the connector.
#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) addr: SocketAddr,
    pub(crate) weight: u32,
    pub(crate) state: Arc<EndpointState>,
    pub(crate) health: Arc<HealthCell>,
    /// What a request to this endpoint carries: the endpoint and this cluster (shared).
    pub(crate) upstream: SelectedUpstream,
}

/// A built cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) subset: Option<Arc<str>>,
    /// The layer version it was built at.
    pub(crate) version: u64,
    /// Rebuild at this time (endpoints warming up).
    pub(crate) refresh_at: Option<Instant>,
    pub(crate) hosts: Box<[Host]>,
    levels: Box<[Level]>,
    /// Cumulative priority load (percent), one per level.
    cumulative: Box<[u32]>,
    /// Each level's health (Envoy's overprovisioned percentage), for a retry's priority load
    /// without the levels tried before (`retryRemoteLocalities`).
    health: Box<[u32]>,
    pub(crate) algorithm: Algorithm,
    pub(crate) hash: Option<HashKey>,
    pub(crate) rng: SharedRng,
    pub(crate) ewma_default_rtt_ns: f64,
}

#[derive(Debug)]
struct Level {
    groups: Box<[Group]>,
    /// Locality choice among groups (distribute); `None` with a single group.
    group_alias: Option<Alias>,
    table: Option<(HashTable, Box<[u32]>)>,
}

#[derive(Debug)]
struct Group {
    hosts: Box<[u32]>,
    cursor: AtomicUsize,
    weights: Weights,
}

#[derive(Debug)]
enum Weights {
    /// All equal (or ignored by the algorithm).
    Equal,
    /// Weighted round robin: an EDF schedule of host indices, walked by the cursor.
    Schedule(Box<[u32]>),
    /// Weighted least request: sampling by weight, with each group position's weight.
    Sampled(Alias, Box<[f64]>),
}

/// Walker/Vose alias table: O(1) weighted sampling.
#[derive(Debug)]
pub(crate) struct Alias {
    prob: Box<[u32]>,
    alias: Box<[u32]>,
}

/// Everything a cluster build needs.
pub(crate) struct BuildInput<'a> {
    pub(crate) name: Arc<str>,
    pub(crate) subset: Option<Arc<str>>,
    pub(crate) subset_labels: Option<&'a Labels>,
    pub(crate) service: &'a Service,
    pub(crate) port: &'a ServicePort,
    pub(crate) endpoints: &'a EndpointSet,
    pub(crate) policy: Policy,
    pub(crate) client_locality: &'a Locality,
    pub(crate) client_labels: &'a Labels,
    pub(crate) registry: &'a Registry,
    pub(crate) health: &'a dyn HealthSource,
    pub(crate) version: u64,
    pub(crate) seed: u64,
    pub(crate) overprovisioning: u32,
    pub(crate) ewma_default_rtt: Duration,
    pub(crate) now: Instant,
    /// The mesh's trust domain (the endpoints' expected SPIFFE identities).
    pub(crate) trust_domain: &'a str,
}
