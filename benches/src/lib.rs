//! Shared helpers for the criterion benches: synthetic but realistic Istio configurations.
#![forbid(unsafe_code)]

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

    /// An upstream that answers `200` at once and hands the request's head back when it
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

        fn call(&mut self, req: Request<B>) -> Self::Future {
            black_box(req.uri());
            let mut res = Response::new(MeshBody::empty());
            if req
                .extensions()
                .get::<mesh_core::ext::ReturnHead>()
                .is_some()
            {
                let (head, _) = req.into_parts();
                res.extensions_mut()
                    .insert(mesh_core::ext::ReturnedHead(head));
            }
            ready(Ok(res))
        }
    }

    /// Polls `svc` ready, calls it, and polls the (immediately ready) future once.
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
