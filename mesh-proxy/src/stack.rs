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

use mesh_core::compile::Snapshot;
use mesh_lb::{Lb, LbLayer};
use mesh_routing::{BuildError, Route, RouteLayer, RouteTable, RouteTableHandle};
use tower_layer::Layer;

use crate::engine::{Connector, WorkerContext};

/// The type of a worker's stack.
pub type MeshStack = Route<Lb<Connector>>;

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
        Ok(Layers { route_layer: RouteLayer::new(routes.clone()), routes, lb: LbLayer::new(snapshot.clone()) })
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
        self.route_layer.layer(self.lb.layer(ctx.connector()))
    }

    /// The balancer layer (health, snapshot).
    pub fn lb(&self) -> &LbLayer {
        &self.lb
    }
}
