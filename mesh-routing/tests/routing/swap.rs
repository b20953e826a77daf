//! Swapping the table under concurrent load loses no request.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, Response};
use mesh_core::MeshBody;
use mesh_core::ext::route_destination;
use mesh_routing::{RouteLayer, RouteTable, RouteTableHandle};
use tower::{Layer, ServiceExt};

use crate::support::*;

fn table(dest: &str) -> RouteTable {
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: s, namespace: default}}\nspec:\n  hosts: [s.example.com]\n  http:\n  - route: [{{destination: {{host: {dest}}}}}]\n"
    );
    RouteTable::sidecar(&snap(&text)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_tables_under_load_loses_no_request() {
    let handle = RouteTableHandle::new(table("a.dest"));
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let inner = tower::service_fn(move |req: Request<()>| {
        let counter = counter.clone();
        async move {
            tokio::task::yield_now().await; // in flight while tables swap
            let host = route_destination(req.extensions()).unwrap().host.clone();
            assert!(&*host == "a.dest" || &*host == "b.dest", "{host}");
            counter.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Infallible>(Response::new(MeshBody::<String>::empty()))
        }
    });
    let svc = RouteLayer::new(handle.clone()).with_seed(3).layer(inner);
    let swapper = {
        let handle = handle.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                handle.store(table(if i % 2 == 0 { "b.dest" } else { "a.dest" }));
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..250 {
                let r = Request::builder()
                    .uri("/")
                    .header("host", "s.example.com")
                    .body(())
                    .unwrap();
                let res = svc.clone().oneshot(r).await.unwrap();
                assert_eq!(res.status(), 200);
                ok += 1;
            }
            ok
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    swapper.await.unwrap();
    assert_eq!(sent, 2000);
    assert_eq!(served.load(Ordering::Relaxed), 2000);
}
