//! A hyper client inside a service, routed and balanced by the mesh's layers.
//!
//! The service calls `http://reviews:9080/…` as it would without a mesh; the layers built
//! from `mesh.yaml` (Istio's own YAML) decide where each request goes:
//!
//! ```text
//! request ─► RouteLayer ─► LbLayer ─► MeshBodyLayer ─► EndpointUriLayer ─► hyper_util Client ─► upstream
//!            (VirtualService:  (DestinationRule:  (lets the layers   (URI → the chosen
//!             match, 90/10)     subsets, hash)     answer locally)    endpoint, Host kept)
//! ```
//!
//! It starts three local upstreams (`reviews` v1 on two instances, v2 on one), sends
//! anonymous requests (split 90/10 between v1 and v2) and requests signed in as a few users
//! (pinned to v1, each user consistently hashed to one v1 instance), and prints where they
//! went. `--requests N` sets the number of anonymous requests (default 1000), `--config
//! FILE` reads another mesh YAML (with the same `{V1A}`, `{V1B}`, `{V2}` port placeholders).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::body::MeshBodyLayer;
use mesh_core::uri::EndpointUriLayer;
use mesh_lb::LbLayer;
use mesh_routing::{RouteLayer, RouteTable};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

type BoxError = Box<dyn Error + Send + Sync>;

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const PER_USER: usize = 20;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("in-process-client: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    let mut requests = 1000usize;
    let mut config = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => requests = args.next().ok_or("--requests needs a number")?.parse()?,
            "--config" => {
                let file = args.next().ok_or("--config needs a file")?;
                let text = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
                config = Some((file, text));
            }
            "-h" | "--help" => {
                println!("usage: in-process-client [--requests N] [--config mesh.yaml]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    let (file, config) = config.unwrap_or_else(|| {
        (
            "mesh.yaml".to_owned(),
            include_str!("../mesh.yaml").to_owned(),
        )
    });

    // Three upstreams that answer with their own name.
    let v1a = upstream("v1-a").await?;
    let v1b = upstream("v1-b").await?;
    let v2 = upstream("v2").await?;
    println!("upstreams: v1-a {v1a}, v1-b {v1b}, v2 {v2}");
    let yaml = config
        .replace("{V1A}", &v1a.port().to_string())
        .replace("{V1B}", &v1b.port().to_string())
        .replace("{V2}", &v2.port().to_string());

    // Istio YAML → a validated snapshot → the route table and the balancer. Errors name the
    // file, line, resource and field, as `mesh-proxy validate` prints them.
    let compiled = mesh_core::config::load_str(&file, &yaml)?;
    for warning in &compiled.warnings {
        eprintln!("{warning}");
    }
    let table = RouteTable::sidecar(&compiled.snapshot)?;

    // The service's own hyper client, innermost; the mesh's layers around it.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let reviews = ServiceBuilder::new()
        .layer(RouteLayer::from_table(table).with_seed(7))
        .layer(LbLayer::new(compiled.snapshot.clone()))
        .layer(MeshBodyLayer::new())
        .layer(EndpointUriLayer::new())
        .service(client);

    let call = |user: Option<&'static str>| {
        let reviews = reviews.clone();
        async move {
            let mut req = Request::get("http://reviews:9080/reviews/1");
            if let Some(user) = user {
                req = req.header("x-user", user);
            }
            let res = reviews.oneshot(req.body(Empty::new())?).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            let who = String::from_utf8_lossy(&body).into_owned();
            if !status.is_success() {
                return Err(format!("{status}: {who}").into());
            }
            Ok::<_, BoxError>(who)
        }
    };

    // Anonymous traffic: the `canary` route, 90/10 between the subsets.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..requests {
        *seen.entry(call(None).await?).or_default() += 1;
    }
    let count = |name: &str| seen.get(name).copied().unwrap_or(0);
    let (v1, v2n) = (count("v1-a") + count("v1-b"), count("v2"));
    let pct = |n: usize| 100.0 * n as f64 / requests.max(1) as f64;
    println!(
        "canary: {requests} requests: v1 {v1} ({:.1}%: v1-a {}, v1-b {}), v2 {v2n} ({:.1}%)",
        pct(v1),
        count("v1-a"),
        count("v1-b"),
        pct(v2n),
    );

    // Signed-in traffic: the `signed-in` route to v1, consistently hashed on `x-user`.
    for user in USERS {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..PER_USER {
            *by.entry(call(Some(user)).await?).or_default() += 1;
        }
        match by.keys().collect::<Vec<_>>().as_slice() {
            [only] => println!("user {user}: {PER_USER} requests, all to {only}"),
            _ => println!("user {user}: {PER_USER} requests, spread over {by:?}"),
        }
    }
    Ok(())
}

/// A local upstream on a free port, answering every request with `name`.
async fn upstream(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let reply = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        name.as_bytes(),
                    ))))
                });
                // A connection that fails mid-way ends; the example goes on.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), reply)
                    .await;
            });
        }
    });
    Ok(addr)
}
