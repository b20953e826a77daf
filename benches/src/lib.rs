//! Shared helpers for the criterion benches: synthetic but realistic Istio configurations.
//!
//! With `--features mimalloc`, every bench binary runs on mesh-proxy's global allocator
//! (`mesh-proxy/src/alloc.rs`, the same file): a layer's cost as the proxy pays it. Without,
//! the system's allocator, an in-process user's default. No `unsafe` here but that file's
//! global allocator: `forbid` without the feature, `deny` (and that module's `allow`) with it.
#![cfg_attr(not(feature = "mimalloc"), forbid(unsafe_code))]
#![cfg_attr(feature = "mimalloc", deny(unsafe_code))]

/// mesh-proxy's global allocator, for every bench binary (`--features mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: alloc::MeshAlloc = alloc::MeshAlloc;

#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)] // mesh-proxy's global allocator (see its module docs)
#[path = "../../mesh-proxy/src/alloc.rs"]
mod alloc;

use std::fmt::Write;

/// A configuration with `routes` HTTP routes spread over VirtualServices of 100 routes each,
/// one ServiceEntry and DestinationRule (two subsets) per VirtualService host; the matches
/// mix prefixes, exact paths, headers and regexes, and the routes canary-split by weight.
pub fn routes_config(routes: usize) -> String {
    let services = routes.div_ceil(100).max(1);
    let mut y = String::with_capacity(routes * 420);
    for s in 0..services {
        let host = format!("svc{s}.default.svc.cluster.local");
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc{s}, namespace: default}}\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n  - {{address: 10.0.{}.{}, labels: {{version: v1}}}}\n  - {{address: 10.1.{}.{}, labels: {{version: v2}}}}\n---\n",
            s / 250,
            s % 250 + 1,
            s / 250,
            s % 250 + 1
        );
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc{s}, namespace: default}}\nspec:\n  host: {host}\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n"
        );
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc{s}, namespace: default}}\nspec:\n  hosts: [svc{s}]\n  http:\n"
        );
        let n = (routes - s * 100).min(100);
        for r in 0..n {
            let m = match r % 4 {
                0 => format!("    - uri: {{prefix: /api/v{r}/}}\n"),
                1 => format!("    - uri: {{exact: /items/{r}}}\n      method: {{exact: GET}}\n"),
                2 => format!("    - headers:\n        x-user: {{exact: user{r}}}\n"),
                _ => format!("    - uri: {{regex: '/orders/[0-9]+/r{r}'}}\n"),
            };
            let _ = write!(
                y,
                "  - name: r{r}\n    match:\n{m}    timeout: 5s\n    retries: {{attempts: 2, perTryTimeout: 1s, retryOn: 5xx}}\n    route:\n    - destination: {{host: svc{s}, subset: v1}}\n      weight: 90\n    - destination: {{host: svc{s}, subset: v2}}\n      weight: 10\n"
            );
        }
        y.push_str("---\n");
    }
    y
}

/// The mesh of issue 15: `services` services spread over 100 namespaces (`ns0`..`ns99`;
/// fewer when there are fewer services), each a `MESH_INTERNAL` ServiceEntry
/// `svc<i>.ns<k>.svc.cluster.local` with two endpoints (labels `version: v1` / `v2`), a
/// VirtualService with a header rule (`x-canary: "true"` → v2) and a 90/10 split, and a
/// DestinationRule with two subsets. No `ProxyBootstrap`: see [`mesh_bootstrap`].
///
/// Service `i` lives in namespace `ns{i % 100}`; its endpoints are `10.<a>.<b>.<c>` and
/// `10.<a+128>.<b>.<c>` on port `endpoint_port` (so a test can point them at a real
/// backend by using 127.0.0.1 through [`mesh_config_with`]).
pub fn mesh_config(services: usize) -> String {
    mesh_config_with(services, |i| {
        let (a, b, c) = ((i >> 16) & 0x7f, (i >> 8) & 0xff, i & 0xff);
        (
            format!("10.{a}.{b}.{c}"),
            format!("10.{}.{b}.{c}", a + 128),
            8080,
        )
    })
}

/// Like [`mesh_config`], with each service's two endpoint addresses and port given by
/// `endpoints(i)` (`(v1 address, v2 address, port)`).
pub fn mesh_config_with(
    services: usize,
    mut endpoints: impl FnMut(usize) -> (String, String, u16),
) -> String {
    let mut y = String::with_capacity(services * 1400);
    for i in 0..services {
        let ns = mesh_namespace(i);
        let host = format!("svc{i}.{ns}.svc.cluster.local");
        let (v1, v2, port) = endpoints(i);
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]\n  endpoints:\n  - {{address: {v1}, labels: {{app: svc{i}, version: v1}}}}\n  - {{address: {v2}, labels: {{app: svc{i}, version: v2}}}}\n---\n"
        );
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec:\n  host: svc{i}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n"
        );
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec:\n  hosts: [svc{i}]\n  http:\n  - match:\n    - headers:\n        x-canary: {{exact: \"true\"}}\n    route:\n    - destination: {{host: svc{i}, subset: v2}}\n  - route:\n    - destination: {{host: svc{i}, subset: v1}}\n      weight: 90\n    - destination: {{host: svc{i}, subset: v2}}\n      weight: 10\n---\n"
        );
    }
    y
}

/// The namespace of service `i` in [`mesh_config`]: `ns{i % 100}`.
pub fn mesh_namespace(i: usize) -> String {
    format!("ns{}", i % 100)
}

/// A `ProxyBootstrap` on ports 0 for a workload `app` in namespace `ns0`, `concurrency`
/// workers; `extra` is indented YAML appended to `spec`.
pub fn mesh_bootstrap(concurrency: u32, extra: &str) -> String {
    format!(
        "apiVersion: mesh.proxy/v1alpha1\nkind: ProxyBootstrap\nmetadata: {{name: scale}}\nspec:\n  concurrency: {concurrency}\n  workload:\n    name: app\n    namespace: ns0\n    labels: {{app: app}}\n  outbound: {{address: 127.0.0.1, port: 0}}\n  admin: {{address: 127.0.0.1, port: 0}}\n{extra}---\n"
    )
}

/// A Sidecar for [`mesh_bootstrap`]'s workload (namespace `ns0`) that lets it see 10 services
/// of [`mesh_config`]'s mesh: `svc0`..`svc900` of `ns0` (every hundredth service is in `ns0`).
pub const SEES_TEN: &str = "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns0}\nspec:\n  egress:\n  - hosts: [\"./svc0.ns0.svc.cluster.local\", \"./svc100.ns0.svc.cluster.local\", \"./svc200.ns0.svc.cluster.local\", \"./svc300.ns0.svc.cluster.local\", \"./svc400.ns0.svc.cluster.local\", \"./svc500.ns0.svc.cluster.local\", \"./svc600.ns0.svc.cluster.local\", \"./svc700.ns0.svc.cluster.local\", \"./svc800.ns0.svc.cluster.local\", \"./svc900.ns0.svc.cluster.local\"]\n";

#[cfg(test)]
mod tests {
    #[test]
    fn generated_config_is_valid_and_has_the_routes() {
        let text = super::routes_config(250);
        let c = mesh_core::config::load_str("gen.yaml", &text).expect("valid");
        let n: usize = c
            .snapshot
            .virtual_services
            .iter()
            .map(|v| v.spec.http.len())
            .sum();
        assert_eq!(n, 250);
        assert_eq!(c.snapshot.services.len(), 3);
    }

    /// The mesh is valid, and its route table has exactly the routes written (two
    /// per service: the header rule and the split), one virtual host per service: the
    /// build is linear in what it builds (a regression guard on counts, not durations).
    #[test]
    fn mesh_config_is_valid_and_builds_two_routes_per_service() {
        for n in [1usize, 150, 1000] {
            let text = format!("{}{}", super::mesh_bootstrap(1, ""), super::mesh_config(n));
            let c = mesh_core::config::load_str("gen.yaml", &text).expect("valid");
            assert_eq!(c.snapshot.services.len(), n);
            assert_eq!(c.snapshot.destination_rules.len(), n);
            assert_eq!(c.snapshot.virtual_services.len(), n);
            let t = mesh_routing::RouteTable::sidecar(&c.snapshot).expect("builds");
            assert_eq!(t.route_count(), 2 * n);
            // every service's DestinationRule is found from the workload's namespace
            for s in &c.snapshot.services {
                let dr = c
                    .snapshot
                    .destination_rule(&s.hostname, "ns0")
                    .expect("a rule");
                assert_eq!(dr.host, s.hostname);
            }
        }
    }

    /// With [`super::SEES_TEN`], the snapshot holds the 10 services the workload sees, their
    /// VirtualServices and DestinationRules, and nothing else.
    #[test]
    fn sees_ten_keeps_ten_services() {
        let text = format!(
            "{}{}{}",
            super::mesh_bootstrap(1, ""),
            super::mesh_config(1000),
            super::SEES_TEN
        );
        let c = mesh_core::config::load_str("gen.yaml", &text).expect("valid");
        assert_eq!(c.snapshot.services.len(), 10);
        assert_eq!(c.snapshot.virtual_services.len(), 10);
        assert_eq!(c.snapshot.destination_rules.len(), 10);
        let t = mesh_routing::RouteTable::sidecar(&c.snapshot).expect("builds");
        assert_eq!(t.route_count(), 20);
    }
}

/// The harness of the layer benches: an inner service that is always ready and answers at
/// once, and a driver that calls a service and polls its (immediately ready) future once.
pub mod layer {
    use std::convert::Infallible;
    use std::future::{Future, Ready, ready};
    use std::hint::black_box;
    use std::pin::pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Empty;
    use mesh_core::MeshBody;
    use tower_service::Service;

    /// The answer of [`NoopInner`].
    pub type Res = Response<MeshBody<Empty<Bytes>>>;

    /// An upstream that answers `200` at once.
    #[derive(Clone, Debug)]
    pub struct NoopInner;

    impl<B> Service<Request<B>> for NoopInner {
        type Response = Res;
        type Error = Infallible;
        type Future = Ready<Result<Res, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<B>) -> Self::Future {
            black_box(req.uri());
            ready(Ok(Response::new(MeshBody::empty())))
        }
    }

    /// An upstream that answers `200` at once and puts the request's head back when it
    /// asks ([`mesh_core::ext::ReturnHead`]), as `mesh-transport`'s connector does.
    #[derive(Clone, Debug)]
    pub struct HandingBackInner;

    impl<B> Service<Request<B>> for HandingBackInner {
        type Response = Res;
        type Error = Infallible;
        type Future = Ready<Result<Res, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, mut req: Request<B>) -> Self::Future {
            black_box(req.uri());
            if let Some(back) = mesh_core::ext::take_return_head(req.extensions_mut()) {
                let (head, _) = req.into_parts();
                back.put(head);
            }
            ready(Ok(Response::new(MeshBody::empty())))
        }
    }

    /// A routed GET as the router leaves it: the route's decision (its policy shared as the
    /// router shares it) in the request's slots.
    pub fn routed_get(
        policy: &std::sync::Arc<mesh_core::ext::RoutePolicy>,
    ) -> Request<Empty<Bytes>> {
        let mut req = Request::get("/reviews/1")
            .header("host", "reviews:9080")
            .header("user-agent", "bench/1.0")
            .header("accept", "application/json")
            .body(Empty::new())
            .expect("valid request");
        routed_to_reviews(&mut req, policy);
        req
    }

    /// Writes the router's decision for `reviews:9080` under `policy` into `req`'s slots,
    /// as the router does (the slots the layers below write into then exist).
    pub fn routed_to_reviews<B>(
        req: &mut Request<B>,
        policy: &std::sync::Arc<mesh_core::ext::RoutePolicy>,
    ) {
        use mesh_core::ext::{RouteDecision, RouteDestination, slots_mut};
        slots_mut(req.extensions_mut()).decision = Some(RouteDecision {
            dest: RouteDestination {
                host: "reviews.default.svc.cluster.local".into(),
                subset: None,
                port: Some(9080),
            },
            policy: policy.clone(),
        });
    }

    /// Polls `svc` ready, calls it, and polls the (immediately ready) future once. Never
    /// inlined: `benches/load/layer_callgrind.py` counts its instructions per call.
    #[inline(never)]
    pub fn send<S, B, R>(svc: &mut S, cx: &mut Context<'_>, req: Request<B>) -> http::StatusCode
    where
        S: Service<Request<B>, Response = Response<R>, Error = Infallible>,
    {
        match svc.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            _ => unreachable!("always ready"),
        }
        match pin!(svc.call(req)).poll(cx) {
            Poll::Ready(Ok(res)) => black_box(res.status()),
            _ => unreachable!("ready at once"),
        }
    }
}
