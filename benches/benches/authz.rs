//! Authorization: the decision time of `mesh_tls::authz::Authorizer` for 100 rules (DENY
//! rules on paths and headers, ALLOW rules on principals, methods, paths and IP blocks),
//! for a request the last ALLOW rule allows (every rule evaluated) and one a DENY rule
//! denies, and the whole `AuthzLayer` around a ready service. Nothing is compiled per
//! request; the goal is well under 1 µs per decision at 100 rules.
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use mesh_core::MeshBody;
use mesh_core::ext::{ClientAddr, DestinationAddr, PeerIdentity};
use mesh_core::identity::SpiffeId;
use mesh_core::model::security::AuthorizationPolicy;
use mesh_core::selector::Labels;
use mesh_tls::authz::{Attributes, Authorizer, AuthzLayer, PolicyRef, Workload};
use tower_layer::Layer;
use tower_service::Service;

/// 100 rules: 20 DENY rules, then 80 ALLOW rules, in 10 policies of 10 rules.
fn policies() -> Vec<AuthorizationPolicy> {
    (0..10)
        .map(|p| {
            let deny = p < 2;
            let rules: Vec<serde_json::Value> = (0..10)
                .map(|r| {
                    let n = p * 10 + r;
                    if deny {
                        serde_json::json!({
                            "to": [{"operation": {"paths": [format!("/admin/{n}/*")]}}],
                            "when": [{"key": "request.headers[x-token]", "notValues": ["admin"]}]
                        })
                    } else {
                        serde_json::json!({
                            "from": [{"source": {
                                "principals": [format!("cluster.local/ns/ns{n}/sa/*")],
                                "ipBlocks": ["10.0.0.0/8"]
                            }}],
                            "to": [{"operation": {"methods": ["GET", "POST"], "paths": [format!("/api/v{n}/*")]}}]
                        })
                    }
                })
                .collect();
            serde_json::from_value(serde_json::json!({
                "action": if deny { "DENY" } else { "ALLOW" },
                "rules": rules
            }))
            .expect("a valid policy")
        })
        .collect()
}

fn authorizer() -> Authorizer {
    let specs = policies();
    let names: Vec<String> = (0..specs.len()).map(|i| format!("p{i}")).collect();
    let refs: Vec<PolicyRef<'_>> = specs
        .iter()
        .zip(&names)
        .map(|(spec, name)| PolicyRef {
            namespace: "default",
            name,
            spec,
        })
        .collect();
    let labels = Labels::default();
    let w = Workload {
        root_namespace: "istio-system",
        namespace: "default",
        labels: &labels,
    };
    Authorizer::compile(&refs, &w, None).expect("the policies compile")
}

fn request(path: &str) -> Request<()> {
    let mut req = Request::get(path)
        .header("host", "reviews:9080")
        .body(())
        .expect("a request");
    req.extensions_mut()
        .insert(ClientAddr("10.1.2.3:40000".parse().expect("an address")));
    req.extensions_mut().insert(DestinationAddr(
        "10.0.0.9:9080".parse().expect("an address"),
    ));
    req.extensions_mut().insert(PeerIdentity::new(SpiffeId::new(
        "cluster.local",
        "ns99",
        "sleep",
    )));
    req
}

#[derive(Clone)]
struct Ok200;

impl Service<Request<()>> for Ok200 {
    type Response = Response<MeshBody<http_body_util::Empty<bytes::Bytes>>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(MeshBody::empty())))
    }
}

fn bench(c: &mut Criterion) {
    let authz = authorizer();
    let last_allow = request("/api/v99/items");
    let denied = request("/admin/5/x");
    assert!(authz.decide(&Attributes::of(&last_allow)).allowed);
    assert!(!authz.decide(&Attributes::of(&denied)).allowed);
    c.bench_function("authz/decide/100 rules, allowed by the last", |b| {
        b.iter(|| black_box(authz.decide(&Attributes::of(black_box(&last_allow)))))
    });
    c.bench_function("authz/decide/100 rules, denied by a DENY rule", |b| {
        b.iter(|| black_box(authz.decide(&Attributes::of(black_box(&denied)))))
    });
    let mut svc = AuthzLayer::new(authorizer()).layer(Ok200);
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function("authz/layer/100 rules, allowed by the last", |b| {
        b.iter(|| {
            let fut = svc.call(request("/api/v99/items"));
            match pin!(fut).poll(&mut cx) {
                Poll::Ready(r) => black_box(r.is_ok()),
                Poll::Pending => unreachable!("the inner service is ready"),
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
