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
use mesh_lb::discover::{Chain, Discover, DnsDiscover, StaticDiscover, SystemResolver};
use mesh_lb::{Lb, LbLayer};
use tokio::sync::Notify;
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
    dns: Arc<DnsRefresher>,
}

/// Resolves the hostnames of `resolution: DNS` ServiceEntries on a thread of its own:
/// every 30s (Envoy's `dns_refresh_rate`), and at once after a reload.
#[derive(Debug)]
struct DnsRefresher {
    dns: Arc<DnsDiscover>,
    now: Arc<Notify>,
}

/// How long start-up waits for the first DNS answers (then DNS services answer `503 UH`
/// until their names resolve, as a warming Envoy cluster).
const FIRST_RESOLUTION: std::time::Duration = std::time::Duration::from_secs(5);

impl DnsRefresher {
    fn start(snapshot: &Snapshot) -> Arc<DnsRefresher> {
        let dns = Arc::new(DnsDiscover::new(Arc::new(SystemResolver)));
        dns.set_snapshot(snapshot);
        let now = Arc::new(Notify::new());
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let (d, n) = (dns.clone(), now.clone());
        let spawned = std::thread::Builder::new().name("mesh-dns".into()).spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                d.refresh().await;
                let _ = first_tx.send(());
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(d.refresh_interval()) => {}
                        _ = n.notified() => {}
                    }
                    d.refresh().await;
                }
            });
        });
        if spawned.is_ok() {
            let _ = first_rx.recv_timeout(FIRST_RESOLUTION);
        }
        Arc::new(DnsRefresher { dns, now })
    }
}

// === impl Layers ===

impl Layers {
    /// Compiles the route table for a sidecar (`mesh` gateway) and builds the balancer.
    pub fn new(snapshot: &Arc<Snapshot>) -> Result<Layers, BuildError> {
        let table = RouteTable::sidecar(snapshot)?;
        let routes = RouteTableHandle::new(table);
        let dns = DnsRefresher::start(snapshot);
        let discover: Arc<dyn Discover> = Arc::new(Chain::new(vec![dns.dns.clone(), Arc::new(StaticDiscover)]));
        let lb = LbLayer::builder(snapshot.clone()).discover(discover).build();
        Ok(Layers {
            route_layer: RouteLayer::new(routes.clone()),
            routes,
            lb,
            dns,
        })
    }

    /// Applies a new snapshot: compiles its route table (an error changes nothing), then
    /// swaps the balancer's snapshot and the table.
    pub fn store(&self, snapshot: &Arc<Snapshot>) -> Result<(), BuildError> {
        let table = RouteTable::sidecar(snapshot)?;
        // the balancer first: new routes may name services only the new snapshot has
        self.lb.store(snapshot.clone());
        self.routes.store(table);
        // new DNS names resolve now rather than at the next period
        self.dns.now.notify_one();
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
