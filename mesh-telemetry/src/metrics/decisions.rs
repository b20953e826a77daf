//! The counters that explain the mesh's decisions: per reporter, and per route.
//!
//! Every request whose answer carries one of Envoy's response flags, or that was retried,
//! adds to:
//!
//! | metric | labels | value |
//! |---|---|---|
//! | `mesh_proxy_response_flags_total` | `reporter`, `flag` | requests answered with the flag |
//! | `mesh_proxy_upstream_retries_total` | `reporter` | attempts beyond a request's first that reached the balancer |
//! | `mesh_proxy_route_response_flags_total` | `reporter`, `route`, `destination_service`, `flag` | the same, per route |
//! | `mesh_proxy_route_upstream_retries_total` | `reporter`, `route`, `destination_service` | the same, per route |
//!
//! `route` is the route's name as the router recorded it ([`Recorded::route_name`]): the
//! VirtualService's `http[].name` (`<route>.<match>` for a named match block, as Istio's
//! `TranslateRoute` names it), `default` for a service without a VirtualService (as Istio's
//! generated route), `unknown` for an unnamed route and for a request that was not routed
//! (`NR`, a request denied before routing). `destination_service` is the route's destination
//! host (`PassthroughCluster` for a host outside the registry, `unknown` without a
//! destination): with it, the unnamed routes of different services stay apart. Both come
//! from the configuration, never from the request, so the label sets are as many as the
//! routes; each counts as one series under the registry's cap
//! ([`IstioMetrics::with_max_series`]), and a request whose route's label set is over the cap
//! counts in `mesh_proxy_metrics_dropped_total` instead.
//!
//! The flags tell the decisions apart: `URX` (retries exhausted), `UO` (overflow: circuit
//! breaker, retry budget or `maxRetries`), `RL` (rate limited), `FI`/`DI` (injected abort or
//! delay), `RBAC` (denied), `UT` (timeout), `UH` (no healthy upstream), `UF` (connect
//! failure), `NR` (no route), `DC` (the client went away), ….
//!
//! # The hot path
//!
//! A request without a flag and without a retry (the common case) costs one branch. The
//! others find their route's counters by the route's identity (the addresses of its name and
//! host, shared by the router's compiled route), first among the few this thread used last
//! (no lock, no reference count taken), else under a read lock; the label set is formatted
//! once per route and configuration. Then a relaxed atomic addition per flag and one for the
//! retries.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use mesh_core::flags::ResponseFlags;
use mesh_core::hash::{FastHashMap, FastState};
use mesh_core::stream_info::Recorded;

use super::{CACHE_LIMIT, FLAG_COUNT, IstioMetrics, Reporter, label};
use crate::record::Completed;

/// The decision counters of one [`IstioMetrics`].
#[derive(Default)]
pub(super) struct Decisions {
    /// Requests per reporter and flag (bit index).
    flags: [[AtomicU64; FLAG_COUNT]; 2],
    /// Retries per reporter.
    retries: [AtomicU64; 2],
    /// Route counters by what identifies the route (its hash), for the requests' look-ups.
    cache: RwLock<FastHashMap<u64, Vec<CachedRoute>>>,
    /// Every route's counters, by their labels (one entry per distinct label set).
    routes: RwLock<FastHashMap<Box<str>, Arc<RouteCounters>>>,
}

/// A route's counters and what identifies the route.
type CachedRoute = (RouteIdent, Arc<RouteCounters>);

/// One route's counters.
struct RouteCounters {
    /// `reporter="…",route="…",destination_service="…"`.
    labels: Box<str>,
    retries: AtomicU64,
    flags: [AtomicU64; FLAG_COUNT],
}

/// What identifies a route's label set, owned (the strings keep their addresses unique).
struct RouteIdent {
    reporter: Reporter,
    route: Option<Arc<str>>,
    host: Option<Arc<str>>,
    passthrough: bool,
}

/// [`RouteIdent`] borrowed from a request's record.
#[derive(Clone, Copy)]
struct RouteRef<'a> {
    reporter: Reporter,
    route: Option<&'a Arc<str>>,
    host: Option<&'a Arc<str>>,
    passthrough: bool,
}

/// How many route counters each thread keeps at hand.
const AT_HAND_SLOTS: usize = 4;

/// A route's counters a thread added to, with what found them.
struct AtHand {
    /// [`IstioMetrics::id`] of the registry they are in.
    registry: u64,
    ident: RouteIdent,
    counters: Arc<RouteCounters>,
}

thread_local! {
    /// The route counters this thread added to last, direct-mapped by the route's hash.
    static ROUTES_AT_HAND: RefCell<[Option<AtHand>; AT_HAND_SLOTS]> =
        const { RefCell::new([const { None }; AT_HAND_SLOTS]) };
}

// === impl RouteRef ===

impl<'a> RouteRef<'a> {
    fn of(reporter: Reporter, info: &'a Recorded) -> Self {
        RouteRef {
            reporter,
            route: info.policy.as_ref().and_then(|p| p.route_name.as_ref()),
            // a passthrough host is the client's (a new string per request, and labelled
            // `PassthroughCluster` whatever it is): not part of the identity
            host: (!info.passthrough)
                .then(|| info.destination.as_ref().map(|d| &d.host))
                .flatten(),
            passthrough: info.passthrough,
        }
    }

    fn hash(&self) -> u64 {
        let mut h = FastState::default().build_hasher();
        self.reporter.hash(&mut h);
        // the router shares one name and one host per route: their addresses identify it
        self.route
            .map(|r| Arc::as_ptr(r) as *const u8 as usize)
            .hash(&mut h);
        self.host
            .map(|r| Arc::as_ptr(r) as *const u8 as usize)
            .hash(&mut h);
        self.passthrough.hash(&mut h);
        h.finish()
    }

    fn matches(&self, i: &RouteIdent) -> bool {
        fn same(a: Option<&Arc<str>>, b: Option<&Arc<str>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        self.reporter == i.reporter
            && self.passthrough == i.passthrough
            && same(self.route, i.route.as_ref())
            && same(self.host, i.host.as_ref())
    }

    fn to_owned(self) -> RouteIdent {
        RouteIdent {
            reporter: self.reporter,
            route: self.route.cloned(),
            host: self.host.cloned(),
            passthrough: self.passthrough,
        }
    }

    /// The route's labels (see the [module docs](self)).
    fn labels(&self) -> String {
        let mut s = String::with_capacity(128);
        s.push_str(match self.reporter {
            Reporter::Source => "reporter=\"source\"",
            Reporter::Destination => "reporter=\"destination\"",
        });
        label(&mut s, "route", self.route.map(|r| &**r));
        let host = match self.passthrough {
            // the host is the client's to choose: Istio's name for the cluster
            true => Some("PassthroughCluster"),
            false => self.host.map(|h| &**h),
        };
        label(&mut s, "destination_service", host);
        s
    }
}

// === impl RouteCounters ===

impl RouteCounters {
    #[inline]
    fn add(&self, flags: u32, retries: u32) {
        add_flags(&self.flags, flags);
        if retries > 0 {
            self.retries.fetch_add(u64::from(retries), Relaxed);
        }
    }
}

/// Adds one to the counter of each flag set in `flags`.
#[inline]
fn add_flags(counters: &[AtomicU64; FLAG_COUNT], flags: u32) {
    let mut bits = flags;
    while bits != 0 {
        counters[bits.trailing_zeros() as usize].fetch_add(1, Relaxed);
        bits &= bits - 1;
    }
}

// === impl IstioMetrics ===

impl IstioMetrics {
    /// Counts a request's decisions (its flags and retries), per reporter and per route.
    #[inline]
    pub(super) fn record_decisions(&self, reporter: Reporter, done: &Completed<'_>) {
        let flags = done.flags.bits();
        let retries = done.info.attempts.saturating_sub(1);
        if flags == 0 && retries == 0 {
            return;
        }
        let r = reporter as usize;
        add_flags(&self.decisions.flags[r], flags);
        if retries > 0 {
            self.decisions.retries[r].fetch_add(u64::from(retries), Relaxed);
        }
        let route = RouteRef::of(reporter, done.info);
        let hash = route.hash();
        let slot = (hash ^ (hash >> 32)) as usize % AT_HAND_SLOTS;
        ROUTES_AT_HAND.with_borrow_mut(|at_hand| {
            if let Some(h) = &at_hand[slot]
                && h.registry == self.id
                && route.matches(&h.ident)
            {
                h.counters.add(flags, retries);
                return;
            }
            let Some(counters) = self.route_counters(route, hash) else {
                self.dropped.fetch_add(1, Relaxed);
                return;
            };
            counters.add(flags, retries);
            at_hand[slot] = Some(AtHand {
                registry: self.id,
                ident: route.to_owned(),
                counters,
            });
        });
    }

    /// A route's counters: found by its identity, else by its labels (a reload's new
    /// route of the same name), else made under the series cap.
    fn route_counters(&self, route: RouteRef<'_>, hash: u64) -> Option<Arc<RouteCounters>> {
        let d = &self.decisions;
        if let Ok(cache) = d.cache.read()
            && let Some((_, c)) = cache
                .get(&hash)
                .and_then(|list| list.iter().find(|(i, _)| route.matches(i)))
        {
            return Some(c.clone());
        }
        let labels = route.labels();
        let known = d
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(labels.as_str())
            .cloned();
        if known.is_none() && self.series.load(Relaxed) >= self.max_series {
            // over the cap: no write lock taken for a series that cannot be made
            return None;
        }
        let counters = if let Some(c) = known {
            c
        } else {
            let mut routes = d.routes.write().unwrap_or_else(|e| e.into_inner());
            match routes.get(labels.as_str()) {
                Some(c) => c.clone(),
                None => {
                    if !self.reserve_series() {
                        return None;
                    }
                    let c = Arc::new(RouteCounters {
                        labels: labels.into_boxed_str(),
                        retries: AtomicU64::new(0),
                        flags: Default::default(),
                    });
                    routes.insert(c.labels.clone(), c.clone());
                    c
                }
            }
        };
        let mut cache = d.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache
            .entry(hash)
            .or_default()
            .push((route.to_owned(), counters.clone()));
        Some(counters)
    }

    /// The decision families, per reporter then per route.
    pub(super) fn encode_decisions(&self, out: &mut String) {
        let d = &self.decisions;
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_response_flags_total Requests answered with each of Envoy's response flags (the mesh's decisions).\n# TYPE mesh_proxy_response_flags_total counter"
        );
        for (r, reporter) in [(0, "source"), (1, "destination")] {
            for (flag, n) in flag_counts(&d.flags[r]) {
                let _ = writeln!(
                    out,
                    "mesh_proxy_response_flags_total{{reporter=\"{reporter}\",flag=\"{flag}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_upstream_retries_total Attempts beyond a request's first that reached the balancer.\n# TYPE mesh_proxy_upstream_retries_total counter"
        );
        for (r, reporter) in [(0, "source"), (1, "destination")] {
            let _ = writeln!(
                out,
                "mesh_proxy_upstream_retries_total{{reporter=\"{reporter}\"}} {}",
                d.retries[r].load(Relaxed)
            );
        }
        let routes: Vec<Arc<RouteCounters>> = {
            let routes = d.routes.read().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = routes.values().cloned().collect();
            v.sort_by(|a, b| a.labels.cmp(&b.labels));
            v
        };
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_route_response_flags_total Requests answered with each of Envoy's response flags, per route.\n# TYPE mesh_proxy_route_response_flags_total counter"
        );
        for c in &routes {
            for (flag, n) in flag_counts(&c.flags) {
                let _ = writeln!(
                    out,
                    "mesh_proxy_route_response_flags_total{{{},flag=\"{flag}\"}} {n}",
                    c.labels
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_route_upstream_retries_total Attempts beyond a request's first that reached the balancer, per route.\n# TYPE mesh_proxy_route_upstream_retries_total counter"
        );
        for c in &routes {
            let _ = writeln!(
                out,
                "mesh_proxy_route_upstream_retries_total{{{}}} {}",
                c.labels,
                c.retries.load(Relaxed)
            );
        }
    }
}

/// The flags counted at least once, with their counts, in bit order.
fn flag_counts(counters: &[AtomicU64; FLAG_COUNT]) -> impl Iterator<Item = (ResponseFlags, u64)> {
    counters.iter().enumerate().filter_map(|(i, c)| {
        let n = c.load(Relaxed);
        let flag = ResponseFlags::from_bits(1u32.checked_shl(i as u32)?)?;
        (n > 0).then_some((flag, n))
    })
}
