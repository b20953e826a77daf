//! Endpoint health, shared between whoever judges it and the balancers that act on it.
//!
//! Outlier detection (`mesh-resilience`) and active health checks decide that an endpoint
//! should not receive traffic; the balancers (`mesh-lb`) skip such endpoints (unless the
//! cluster is in panic mode, as Envoy does). Neither side depends on the other: both talk to
//! a [`HealthSource`], by default a [`HealthTable`], through one [`HealthCell`] per
//! endpoint of a cluster.
//!
//! * Reading is lock-free: a balancer resolves the cells of a cluster's endpoints once, when
//!   it builds the cluster, and afterwards only loads atomics. It learns that *some* cell
//!   changed from [`HealthSource::generation`] (one atomic load per request) and then
//!   rebuilds its healthy-host lists.
//! * Writing is a flag on the cell ([`HealthCell::set`] / [`HealthCell::clear`]); several
//!   judges can share a cell, each with its own [`HealthFlags`] bit, and the endpoint is
//!   healthy only when no bit is set.
//! * Cells are keyed by [`HealthKey`]: the Istio cluster name (see [`cluster_name`]) and the
//!   endpoint address, so the same address in two subsets has two cells, as in Envoy, where
//!   every subset is its own cluster.
//! * A cell carries its judges' per-endpoint bookkeeping ([`OutlierCounters`]: outlier
//!   detection's consecutive-error counters and ejection history), so that every worker's
//!   stack counts into the same counters without a lookup, and belongs to a
//!   [`ClusterHealth`], what the cells of one cluster share (how many there are, how many are
//!   ejected, which ones a judge must review later).
//!
//! ```
//! use std::sync::Arc;
//! use mesh_core::health::{HealthFlags, HealthKey, HealthSource, HealthTable, cluster_name};
//!
//! let table = Arc::new(HealthTable::new());
//! let key = HealthKey {
//!     cluster: cluster_name(9080, Some("v1"), "reviews.default.svc.cluster.local").into(),
//!     addr: "10.0.0.1:9080".parse().unwrap(),
//! };
//! // the balancer holds the cell...
//! let seen_by_lb = table.cell(&key);
//! let before = table.generation();
//! // ...outlier detection ejects the endpoint through the same cell
//! table.cell(&key).set(HealthFlags::EJECTED);
//! assert!(!seen_by_lb.is_healthy());
//! assert!(table.generation() > before);
//! seen_by_lb.clear(HealthFlags::EJECTED);
//! assert!(seen_by_lb.is_healthy());
//! assert_eq!(&*key.cluster, "outbound|9080|v1|reviews.default.svc.cluster.local");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

bitflags::bitflags! {
    /// Why an endpoint is not healthy; empty means healthy.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct HealthFlags: u32 {
        /// Ejected by outlier detection (passive health checking).
        const EJECTED = 1 << 0;
        /// Failed an active health check.
        const FAILED_ACTIVE_CHECK = 1 << 1;
        /// Removed by an operator or a control plane (draining).
        const EXCLUDED = 1 << 2;
    }
}

/// The names of `flags`, as the admin pages print them: `EJECTED|EXCLUDED`, or `HEALTHY`.
pub fn flags_text(flags: HealthFlags) -> String {
    if flags.is_empty() {
        return "HEALTHY".into();
    }
    flags
        .iter_names()
        .map(|(name, _)| name)
        .collect::<Vec<_>>()
        .join("|")
}

/// Identifies one endpoint of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthKey {
    /// The Istio cluster name, as [`cluster_name`] builds it.
    pub cluster: Arc<str>,
    /// The endpoint's address (IP and port).
    pub addr: SocketAddr,
}

/// The health of one endpoint of one cluster: atomic flags, readable without a lock.
pub struct HealthCell {
    flags: AtomicU32,
    generation: Arc<AtomicU64>,
    cluster: Arc<ClusterHealth>,
    outlier: OutlierCounters,
}

/// What the cells of one cluster share: how many endpoints the cluster has, how many of them
/// outlier detection ejects, and the cells its periodic review must look at.
///
/// [`HealthTable`] gives every cell of a cluster the same one; a [`HealthCell::detached`]
/// cell has its own (a cluster of one). Judges write it; nothing on the request path reads
/// it.
#[derive(Default)]
pub struct ClusterHealth {
    /// Live cells of the cluster (a cell counts itself in and, when dropped, out).
    members: AtomicU32,
    /// Cells whose [`HealthFlags::EJECTED`] is set, as counted by outlier detection (a
    /// dropped ejected cell counts itself out).
    ejected: AtomicU32,
    /// Whether a periodic review of this cluster is scheduled.
    reviewing: AtomicBool,
    /// The cells the review must look at (ejected, or with an ejection history to decay).
    tracked: Mutex<Vec<Weak<HealthCell>>>,
}

/// Outlier detection's bookkeeping for one endpoint (Envoy's `DetectorHostMonitorImpl`),
/// kept in the endpoint's [`HealthCell`]. Written by outlier detection only
/// (`mesh-resilience`); read by admin pages.
#[derive(Debug, Default)]
pub struct OutlierCounters {
    /// 5xx answers (and, without the local-origin split, connect failures, resets and
    /// timeouts) in a row.
    pub consecutive_5xx: AtomicU32,
    /// 502/503/504 answers (and, without the split, local-origin failures) in a row.
    pub consecutive_gateway: AtomicU32,
    /// Local-origin failures in a row (with the split).
    pub consecutive_local_origin: AtomicU32,
    /// How many times the endpoint was ejected (Envoy's `num_ejections`).
    pub ejections: AtomicU32,
    /// The multiplier of the next ejection's `baseEjectionTime` (Envoy's
    /// `ejectTimeBackoff`): raised by each ejection, lowered by each interval the endpoint
    /// stays in.
    pub backoff: AtomicU32,
    /// When the current ejection started and ends, and when the last one ended.
    times: Mutex<EjectionTimes>,
}

/// The times of an endpoint's ejections (see [`OutlierCounters::times`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EjectionTimes {
    /// When the current (or last) ejection started.
    pub ejected_at: Option<Instant>,
    /// When the current ejection ends.
    pub ejected_until: Option<Instant>,
    /// When the last ejection ended (Envoy's `lastUnejectionTime`).
    pub returned_at: Option<Instant>,
}

/// Where health cells come from. Implemented by [`HealthTable`]; a custom implementation
/// (backed by an external health service, say) must return the same cell for the same key
/// while anyone holds it, and bump its generation whenever a cell changes.
pub trait HealthSource: Send + Sync + fmt::Debug + 'static {
    /// The cell of `key`, created healthy on first use. Called when a balancer builds a
    /// cluster, or when a judge first reports on an endpoint; not per request.
    fn cell(&self, key: &HealthKey) -> Arc<HealthCell>;

    /// A number that increases whenever any cell of this source changes. Read per request.
    fn generation(&self) -> u64;

    /// The endpoints of `cluster` that are not healthy, with why (for admin pages). The
    /// default knows none; [`HealthTable`] lists them.
    fn unhealthy(&self, cluster: &str) -> Vec<(SocketAddr, HealthFlags)> {
        let _ = cluster;
        Vec::new()
    }

    /// The live cells of `cluster`, sorted by address (for admin pages: flags and outlier
    /// counters). The default knows none; [`HealthTable`] lists them.
    fn cells(&self, cluster: &str) -> Vec<(SocketAddr, Arc<HealthCell>)> {
        let _ = cluster;
        Vec::new()
    }

    /// Every live cell, sorted by cluster and address (for the proxy's per-endpoint
    /// statistics: one pass, where [`cells`](Self::cells) per cluster would scan the table
    /// once per cluster). The default knows none; [`HealthTable`] lists them.
    fn every_cell(&self) -> Vec<(HealthKey, Arc<HealthCell>)> {
        Vec::new()
    }
}

/// The default [`HealthSource`]: a table of cells shared by everyone holding an `Arc` of it.
///
/// The table keeps weak references: a cell lives as long as a balancer or a judge holds it.
/// The map itself is behind a mutex, taken only by [`HealthSource::cell`] (cluster builds and
/// a judge's first report on an endpoint), never on the request path.
#[derive(Default)]
pub struct HealthTable {
    generation: Arc<AtomicU64>,
    cells: Mutex<HashMap<HealthKey, Weak<HealthCell>>>,
    clusters: Mutex<HashMap<Arc<str>, Weak<ClusterHealth>>>,
}

/// The Istio name of an outbound cluster: `outbound|<port>|<subset>|<host>` (the subset
/// empty when there is none), as Istio's `BuildSubsetKey` and Envoy's stats write it.
pub fn cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}

/// The Istio name of the inbound cluster of workload port `port`: `inbound|<port>||`
/// (`BuildInboundSubsetKey`).
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

// === impl HealthCell ===

impl HealthCell {
    /// A healthy cell not attached to any table (its changes bump only its own generation),
    /// alone in its cluster.
    pub fn detached() -> Self {
        HealthCell::new(Arc::new(AtomicU64::new(0)), Arc::default())
    }

    fn new(generation: Arc<AtomicU64>, cluster: Arc<ClusterHealth>) -> Self {
        cluster.members.fetch_add(1, Ordering::Relaxed);
        HealthCell {
            flags: AtomicU32::new(0),
            generation,
            cluster,
            outlier: OutlierCounters::default(),
        }
    }

    /// What the cells of this cell's cluster share.
    pub fn cluster(&self) -> &Arc<ClusterHealth> {
        &self.cluster
    }

    /// Outlier detection's counters for this endpoint.
    #[inline]
    pub fn outlier(&self) -> &OutlierCounters {
        &self.outlier
    }

    /// Whether no flag is set.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.flags.load(Ordering::Acquire) == 0
    }

    /// The flags currently set.
    pub fn flags(&self) -> HealthFlags {
        HealthFlags::from_bits_truncate(self.flags.load(Ordering::Acquire))
    }

    /// Sets `flags`; returns whether anything changed.
    pub fn set(&self, flags: HealthFlags) -> bool {
        let old = self.flags.fetch_or(flags.bits(), Ordering::AcqRel);
        let changed = old | flags.bits() != old;
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
        changed
    }

    /// Clears `flags`; returns whether anything changed.
    pub fn clear(&self, flags: HealthFlags) -> bool {
        let old = self.flags.fetch_and(!flags.bits(), Ordering::AcqRel);
        let changed = old & flags.bits() != 0;
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
        changed
    }
}

impl Drop for HealthCell {
    fn drop(&mut self) {
        // an endpoint gone from every balancer no longer counts in its cluster (Envoy's
        // member update callback)
        self.cluster.members.fetch_sub(1, Ordering::Relaxed);
        if self.flags().contains(HealthFlags::EJECTED) {
            self.cluster.count_return();
        }
    }
}

impl fmt::Debug for HealthCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCell")
            .field("flags", &self.flags())
            .field("ejections", &self.outlier.ejections.load(Ordering::Relaxed))
            .finish()
    }
}

// === impl ClusterHealth ===

impl ClusterHealth {
    /// How many endpoints the cluster has: the live cells (held by some balancer).
    pub fn members(&self) -> u32 {
        self.members.load(Ordering::Relaxed)
    }

    /// How many of them outlier detection ejects.
    pub fn ejected(&self) -> u32 {
        self.ejected.load(Ordering::Acquire)
    }

    /// Counts one more ejected endpoint if `allow(ejected_so_far)` says so; returns whether
    /// it did (atomically: two judges cannot both take the last place).
    pub fn try_count_ejection(&self, allow: impl Fn(u32) -> bool) -> bool {
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                allow(e).then_some(e + 1)
            })
            .is_ok()
    }

    /// Counts one ejected endpoint fewer.
    pub fn count_return(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| e.checked_sub(1));
    }

    /// Adds `cell` to the cells the periodic review looks at (once).
    pub fn track(&self, cell: &Arc<HealthCell>) {
        let mut tracked = self.tracked();
        if !tracked
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(cell)))
        {
            tracked.push(Arc::downgrade(cell));
        }
    }

    /// The cells the periodic review looks at; the reviewer drops those it is done with.
    pub fn tracked(&self) -> MutexGuard<'_, Vec<Weak<HealthCell>>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a review as scheduled; returns whether one already was.
    pub fn start_review(&self) -> bool {
        self.reviewing.swap(true, Ordering::AcqRel)
    }

    /// Marks the review as ended (call [`start_review`](Self::start_review) again when
    /// cells were tracked meanwhile).
    pub fn end_review(&self) {
        self.reviewing.store(false, Ordering::Release);
    }
}

impl fmt::Debug for ClusterHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterHealth")
            .field("members", &self.members())
            .field("ejected", &self.ejected())
            .finish()
    }
}

// === impl OutlierCounters ===

impl OutlierCounters {
    /// The ejection times (a short lock, taken at ejections and reviews only).
    pub fn times(&self) -> MutexGuard<'_, EjectionTimes> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl HealthTable ===

impl HealthTable {
    /// An empty table.
    pub fn new() -> Self {
        HealthTable::default()
    }

    /// The live cells of `cluster` (for admin pages and for judges that sweep a cluster).
    pub fn cells_of(&self, cluster: &str) -> Vec<(SocketAddr, Arc<HealthCell>)> {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        cells
            .iter()
            .filter(|(k, _)| &*k.cluster == cluster)
            .filter_map(|(k, w)| Some((k.addr, w.upgrade()?)))
            .collect()
    }
}

impl HealthSource for HealthTable {
    fn cell(&self, key: &HealthKey) -> Arc<HealthCell> {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cell) = cells.get(key).and_then(Weak::upgrade) {
            return cell;
        }
        // Forget dead entries now and then so the map tracks the live endpoints.
        if cells.len() >= 64 && cells.len().is_power_of_two() {
            cells.retain(|_, w| w.strong_count() > 0);
        }
        let cluster = {
            let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
            match clusters.get(&key.cluster).and_then(Weak::upgrade) {
                Some(c) => c,
                None => {
                    if clusters.len() >= 64 && clusters.len().is_power_of_two() {
                        clusters.retain(|_, w| w.strong_count() > 0);
                    }
                    let c = Arc::new(ClusterHealth::default());
                    clusters.insert(key.cluster.clone(), Arc::downgrade(&c));
                    c
                }
            }
        };
        let cell = Arc::new(HealthCell::new(self.generation.clone(), cluster));
        cells.insert(key.clone(), Arc::downgrade(&cell));
        cell
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn unhealthy(&self, cluster: &str) -> Vec<(SocketAddr, HealthFlags)> {
        let mut out: Vec<(SocketAddr, HealthFlags)> = self
            .cells_of(cluster)
            .into_iter()
            .map(|(addr, cell)| (addr, cell.flags()))
            .filter(|(_, flags)| !flags.is_empty())
            .collect();
        out.sort_by_key(|(addr, _)| *addr);
        out
    }

    fn cells(&self, cluster: &str) -> Vec<(SocketAddr, Arc<HealthCell>)> {
        let mut out = self.cells_of(cluster);
        out.sort_by_key(|(addr, _)| *addr);
        out
    }

    fn every_cell(&self) -> Vec<(HealthKey, Arc<HealthCell>)> {
        let mut out: Vec<(HealthKey, Arc<HealthCell>)> = {
            let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            cells
                .iter()
                .filter_map(|(k, w)| Some((k.clone(), w.upgrade()?)))
                .collect()
        };
        out.sort_by(|(a, _), (b, _)| (&a.cluster, a.addr).cmp(&(&b.cluster, b.addr)));
        out
    }
}

impl fmt::Debug for HealthTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.cells.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("HealthTable")
            .field("generation", &self.generation())
            .field("cells", &n)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cluster: &str, addr: &str) -> HealthKey {
        HealthKey {
            cluster: cluster.into(),
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn cells_are_shared_per_key_and_flags_combine() {
        let t = HealthTable::new();
        let a = t.cell(&key("c", "10.0.0.1:80"));
        let b = t.cell(&key("c", "10.0.0.1:80"));
        let other = t.cell(&key("d", "10.0.0.1:80"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other));
        let g = t.generation();
        assert!(a.set(HealthFlags::EJECTED));
        assert!(
            !a.set(HealthFlags::EJECTED),
            "setting twice changes nothing"
        );
        assert!(b.set(HealthFlags::FAILED_ACTIVE_CHECK));
        assert_eq!(t.generation(), g + 2);
        assert!(b.clear(HealthFlags::EJECTED));
        assert!(!a.is_healthy(), "the active check still fails it");
        assert!(a.clear(HealthFlags::FAILED_ACTIVE_CHECK));
        assert!(a.is_healthy() && other.is_healthy());
        assert_eq!(t.cells_of("c").len(), 1);
    }

    #[test]
    fn cells_of_a_cluster_share_its_counts() {
        let t = HealthTable::new();
        let a = t.cell(&key("c", "10.0.0.1:80"));
        let b = t.cell(&key("c", "10.0.0.2:80"));
        let other = t.cell(&key("d", "10.0.0.1:80"));
        assert!(Arc::ptr_eq(a.cluster(), b.cluster()));
        assert!(!Arc::ptr_eq(a.cluster(), other.cluster()));
        assert_eq!(a.cluster().members(), 2);
        assert!(a.cluster().try_count_ejection(|e| e == 0));
        assert!(!a.cluster().try_count_ejection(|e| e == 0));
        a.set(HealthFlags::EJECTED);
        a.cluster().track(&a);
        a.cluster().track(&a);
        assert_eq!(a.cluster().tracked().len(), 1);
        let group = a.cluster().clone();
        drop(a);
        assert_eq!(group.members(), 1, "a dropped cell leaves its cluster");
        assert_eq!(group.ejected(), 0, "and its ejection with it");
        assert_eq!(HealthCell::detached().cluster().members(), 1);
    }

    #[test]
    fn every_cell_lists_the_live_cells_by_cluster_and_address() {
        let t = HealthTable::new();
        let b = t.cell(&key("c", "10.0.0.2:80"));
        let a = t.cell(&key("c", "10.0.0.1:80"));
        let d = t.cell(&key("b", "10.0.0.9:80"));
        drop(t.cell(&key("a", "10.0.0.1:80"))); // dead: not listed
        let all = t.every_cell();
        let keys: Vec<(&str, String)> = all
            .iter()
            .map(|(k, _)| (&*k.cluster, k.addr.to_string()))
            .collect();
        assert_eq!(
            keys,
            [
                ("b", "10.0.0.9:80".to_string()),
                ("c", "10.0.0.1:80".to_string()),
                ("c", "10.0.0.2:80".to_string())
            ]
        );
        assert!(Arc::ptr_eq(&all[0].1, &d) && Arc::ptr_eq(&all[1].1, &a));
        assert!(Arc::ptr_eq(&all[2].1, &b));
    }

    #[test]
    fn dead_cells_are_recreated_healthy() {
        let t = HealthTable::new();
        let k = key("c", "10.0.0.1:80");
        t.cell(&k).set(HealthFlags::EJECTED);
        assert!(t.cell(&k).is_healthy(), "nobody held the ejected cell");
    }
}
