//! What the listener's guards did: connections refused by the global cap, accept errors,
//! HTTP/2 connections closed with `GOAWAY` by cause. Read through
//! [`Engine::guards`](crate::Engine::guards) and [`Readiness::guards`](crate::Readiness::guards)
//! (mesh-proxy's `/stats/prometheus` shows them as `mesh_proxy_*` families).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::h2guard::GoAwayCause;

/// The open downstream connections that [`Limits::max_downstream_connections`](crate::Limits)
/// caps: give every engine of one process the same value (a clone) so the cap counts all of
/// them, as Envoy's `global_downstream_max_connections` does. Default: a count of its own.
#[derive(Debug, Clone, Default)]
pub struct DownstreamConnections(Arc<AtomicU64>);

/// A place under the cap, held by a connection's task; freed on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicU64>);

/// What an engine's guards did since it started (every worker's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuardStats {
    /// Connections accepted over `maxDownstreamConnections` and closed at once.
    pub refused_over_cap: u64,
    /// `accept` failures for want of resources (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`):
    /// each is followed by a back-off, the accept loop keeps going.
    pub accept_errors: u64,
    /// HTTP/2 connections closed with a `GOAWAY` carrying an error, by cause (indexed by
    /// [`GoAwayCause::index`]; see [`GuardStats::goaways`]).
    pub goaways: [u64; GoAwayCause::ALL.len()],
}

/// The engine-wide counters behind [`GuardStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) refused_over_cap: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    goaways: [AtomicU64; GoAwayCause::ALL.len()],
}

// === impl DownstreamConnections ===

impl DownstreamConnections {
    /// A new count, at zero.
    pub fn new() -> Self {
        DownstreamConnections::default()
    }

    /// Connections open now under this count.
    pub fn open(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes a place when fewer than `max` are taken.
    pub(crate) fn try_take(&self, max: u32) -> Option<Slot> {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        if before >= u64::from(max) {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.0.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl GuardStats ===

impl GuardStats {
    /// `(cause, connections closed)` for every cause.
    pub fn goaways(&self) -> impl Iterator<Item = (GoAwayCause, u64)> + '_ {
        GoAwayCause::ALL
            .iter()
            .map(|c| (*c, self.goaways[c.index()]))
    }
}

// === impl Counters ===

impl Counters {
    pub(crate) fn goaway(&self, cause: GoAwayCause) {
        self.goaways[cause.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> GuardStats {
        let mut goaways = [0; GoAwayCause::ALL.len()];
        for (n, c) in goaways.iter_mut().zip(&self.goaways) {
            *n = c.load(Ordering::Relaxed);
        }
        GuardStats {
            refused_over_cap: self.refused_over_cap.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            goaways,
        }
    }
}
