//! The service stack each worker runs: the mesh's layers around the engine's connector.
//!
//! ```text
//! request ─► routing (VirtualService) ─► balancing (DestinationRule, endpoints) ─► connector ─► upstream
//! ```
//!
//! Built per worker from the current [`Snapshot`] by [`build`]; rebuilt on reload.

use std::sync::Arc;

use mesh_core::compile::Snapshot;

use crate::engine::{Connector, WorkerContext};

/// The type of a worker's stack.
pub type MeshStack = Connector;

/// Builds one worker's stack from a snapshot.
pub fn build(ctx: &WorkerContext, _snapshot: &Arc<Snapshot>) -> MeshStack {
    ctx.connector()
}
