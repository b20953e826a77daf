//! The service stack each worker runs: the mesh's layers around the engine's connector.
//!
//! ```text
//! request ─► Route (VirtualService: match, rewrite, redirect, …) ─► Lb (DestinationRule,
//!            subsets, endpoints, balancer) ─► Connector (per-worker pool) ─► upstream
//! ```
//!
//! The layers are built once ([`Layers::new`]) and shared by every worker; each worker wraps
//! its own connector with them ([`Layers::stack`]), so per-worker state (balancer cursors,
//! pools) stays on its thread. A reload ([`Layers::store`]) compiles the new route table
//! first (an error leaves everything as it was), then swaps the balancer's snapshot and the
//! route table atomically; in-flight requests finish on what they loaded.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Extensions, Request};
use mesh_core::compile::Snapshot;
use mesh_lb::{Lb, LbLayer};
use mesh_routing::{BuildError, Route, RouteLayer, RouteTable, RouteTableHandle};
use tower_layer::Layer;
use tower_service::Service;

use crate::engine::{Connector, WorkerContext};

/// The type of a worker's stack.
pub type MeshStack = Presized<Route<Lb<Connector>>>;

/// Gives every request that arrives without extensions an empty extension map with room for
/// seven entries, then calls the inner service (see the [module docs](self)). Changes nothing
/// else: the inner service sees an empty map, as before.
#[derive(Debug, Clone)]
pub struct Presized<S> {
    inner: S,
    /// Empty, with a table of eight buckets (room for seven entries).
    template: Extensions,
}

/// The shared layers of the outbound stack.
#[derive(Debug, Clone)]
pub struct Layers {
    routes: RouteTableHandle,
    route_layer: RouteLayer,
    lb: LbLayer,
}

// === impl Layers ===

impl Layers {
    /// Compiles the route table for a sidecar (`mesh` gateway) and builds the balancer.
    pub fn new(snapshot: &Arc<Snapshot>) -> Result<Layers, BuildError> {
        let table = RouteTable::sidecar(snapshot)?;
        let routes = RouteTableHandle::new(table);
        Ok(Layers {
            route_layer: RouteLayer::new(routes.clone()),
            routes,
            lb: LbLayer::new(snapshot.clone()),
        })
    }

    /// Applies a new snapshot: compiles its route table (an error changes nothing), then
    /// swaps the balancer's snapshot and the table.
    pub fn store(&self, snapshot: &Arc<Snapshot>) -> Result<(), BuildError> {
        let table = RouteTable::sidecar(snapshot)?;
        // the balancer first: new routes may name services only the new snapshot has
        self.lb.store(snapshot.clone());
        self.routes.store(table);
        Ok(())
    }

    /// One worker's stack around its connector.
    pub fn stack(&self, ctx: &WorkerContext) -> MeshStack {
        Presized::new(self.route_layer.layer(self.lb.layer(ctx.connector())))
    }

    /// The balancer layer (health, snapshot).
    pub fn lb(&self) -> &LbLayer {
        &self.lb
    }
}

// === impl Presized ===

impl<S> Presized<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        // Four zero-sized entries (their boxes do not allocate) grow the table from four
        // buckets to eight; removing them leaves it empty at that size, and a clone of a map
        // keeps its table's size.
        #[derive(Clone, Copy)]
        struct Slot<const N: u8>;
        let mut template = Extensions::new();
        template.insert(Slot::<0>);
        template.insert(Slot::<1>);
        template.insert(Slot::<2>);
        template.insert(Slot::<3>);
        template.remove::<Slot<0>>();
        template.remove::<Slot<1>>();
        template.remove::<Slot<2>>();
        template.remove::<Slot<3>>();
        Presized { inner, template }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B> Service<Request<B>> for Presized<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> S::Future {
        if req.extensions().is_empty() {
            *req.extensions_mut() = self.template.clone();
        }
        self.inner.call(req)
    }
}
