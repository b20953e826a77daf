//! `LocalRateLimit`s narrower than the listener: the bucket each route's policy carries
//! (`RoutePolicy::rate_limit`), built once per table (so once per configuration load).
//!
//! A limit with `routes` gives each route of that name, in each virtual host, its own
//! bucket; a limit with `hosts` only gives each virtual host of those hosts one bucket,
//! shared by its routes (Envoy's route-level and virtual-host-level
//! `typed_per_filter_config`; Istio gives each host its virtual host, with its own copies of
//! the routes). The narrowest applies. Routes are compiled once per VirtualService; a
//! virtual host with limits of its own gets its VirtualService's routes compiled again, for
//! it alone.

use std::cell::RefCell;

use mesh_core::compile::Named;
use mesh_core::model::ratelimit::LocalRateLimit;
use mesh_core::ratelimit::{RateLimitPolicy, Scope, applicable, host_covers, scope};

use super::*;

/// The limits of a table being built.
#[derive(Default)]
pub(in crate::table) struct RateLimits<'a> {
    /// The workload's limits narrower than the listener, in source order.
    limits: Vec<&'a Named<LocalRateLimit>>,
    /// The host whose virtual host is being compiled, with its host-wide bucket.
    host: RefCell<Option<(String, Option<Arc<RateLimitPolicy>>)>>,
}

impl<'a> RateLimits<'a> {
    pub(in crate::table) fn new(snap: &'a Snapshot) -> Self {
        RateLimits {
            limits: applicable(snap)
                .map(|rl| &**rl)
                .filter(|rl| scope(&rl.spec) != Scope::Listener)
                .collect(),
            host: RefCell::default(),
        }
    }

    fn names_host(rl: &LocalRateLimit, host: &str) -> bool {
        rl.hosts.iter().any(|p| host_covers(p, host))
    }

    /// Whether `host`'s routes need limits of their own (compiled for it alone): a limit
    /// names the host, or limits routes by name in any host (each virtual host's copy of a
    /// route has its own bucket, as each Envoy virtual host has its own route objects).
    pub(super) fn host_dependent(&self, host: &str) -> bool {
        self.limits.iter().any(|rl| {
            Self::names_host(&rl.spec, host)
                || (scope(&rl.spec) == Scope::Routes && rl.spec.hosts.is_empty())
        })
    }

    /// The limit of a route named `name`, in the virtual host being compiled: a new
    /// bucket for a route-level limit, else the host's shared one.
    pub(super) fn for_route(&self, name: Option<&str>) -> Option<Arc<RateLimitPolicy>> {
        let host = self.host.borrow();
        let host_name = host.as_ref().map(|(h, _)| h.as_str());
        if let Some(n) = name {
            let route_level = self.limits.iter().find(|rl| {
                scope(&rl.spec) == Scope::Routes
                    && rl.spec.routes.iter().any(|r| r == n)
                    && (rl.spec.hosts.is_empty()
                        || host_name.is_some_and(|h| Self::names_host(&rl.spec, h)))
            });
            if let Some(rl) = route_level {
                return Some(Arc::new(RateLimitPolicy::from_spec(&rl.spec)));
            }
        }
        host.as_ref().and_then(|(_, p)| p.clone())
    }

    /// Compiles routes for the virtual host of `host` (with its host-wide bucket, if any).
    pub(super) fn within<T>(&self, host: &str, f: impl FnOnce() -> T) -> T {
        let host_wide = self
            .limits
            .iter()
            .find(|rl| scope(&rl.spec) == Scope::Hosts && Self::names_host(&rl.spec, host))
            .map(|rl| Arc::new(RateLimitPolicy::from_spec(&rl.spec)));
        let before = self.host.replace(Some((host.to_string(), host_wide)));
        let out = f();
        self.host.replace(before);
        out
    }
}

impl Builder<'_> {
    /// The routes of VirtualService `vs` (compiled as `routes`) for the virtual host of
    /// `host`: compiled again when the host has limits of its own (the warnings of that
    /// compile are the first one's, and dropped).
    pub(super) fn routes_for(
        &self,
        vs: &VirtualServiceEntry,
        routes: &[Arc<CompiledRoute>],
        host: &str,
    ) -> Result<Vec<Arc<CompiledRoute>>, BuildError> {
        if !self.rate_limits.host_dependent(host) {
            return Ok(routes.to_vec());
        }
        let before = self.warnings.borrow().len();
        let out = self.rate_limits.within(host, || self.compile_vs(vs));
        self.warnings.borrow_mut().truncate(before);
        out
    }
}
