//! A hyper client inside a service, routed, balanced, retried, timed out and measured by the
//! mesh's layers: `mesh-proxy`'s outbound stack, in-process, from one call.
//!
//! The service calls `http://reviews:9080/…` as it would without a mesh; the stack built
//! from `mesh.yaml` (Istio's own YAML) decides where each request goes:
//!
//! ```text
//! request ─► Trace ─► Record ─► GrpcLocalReply ─► Route ─► RateLimit ─► Fault ─► Timeout
//!         ─► Retry ─► Mirror ─► Lb ─► CircuitBreaker ─► Outlier ─► MeshBody ─► EndpointUri
//!         ─► hyper_util Client ─► upstream
//! ```
//!
//! It starts three local upstreams (`reviews` v1 on two instances, v2 on one, which answers
//! 503 to every 4th request: the route's retries hide it), sends
//! anonymous requests (split 90/10 between v1 and v2) and requests signed in as a few users
//! (pinned to v1, each user consistently hashed to one v1 instance), and prints where they
//! went, how many 503s were retried, and Istio's `istio_requests_total` as the stack
//! recorded it. `--requests N` sets the number of anonymous requests (default 1000), `--config
//! FILE` reads another mesh YAML (with the same `{V1A}`, `{V1B}`, `{V2}` port placeholders).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_stack::{Mesh, RequestBody};
use tokio::net::TcpListener;
use tower::ServiceExt;

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

    // Three upstreams that answer with their own name; v2 answers 503 to every 4th request.
    let v2_failures = Arc::new(AtomicUsize::new(0));
    let v1a = upstream("v1-a", None).await?;
    let v1b = upstream("v1-b", None).await?;
    let v2 = upstream("v2", Some(v2_failures.clone())).await?;
    println!("upstreams: v1-a {v1a}, v1-b {v1b}, v2 {v2}");
    let yaml = config
        .replace("{V1A}", &v1a.port().to_string())
        .replace("{V1B}", &v1b.port().to_string())
        .replace("{V2}", &v2.port().to_string());

    // Istio YAML → mesh-proxy's pipeline → the live configuration. Errors name the file,
    // line, resource and field, as `mesh-proxy validate` prints them.
    let mesh = Mesh::from_yaml(&file, &yaml)?;
    for warning in mesh.warnings().iter() {
        eprintln!("{warning}");
    }

    // The service's own hyper client, innermost; the proxy's outbound stack around it.
    let client = Client::builder(TokioExecutor::new()).build_http::<RequestBody>();
    let reviews = mesh.client_layer().wrap_uri_client(client);

    let call = |user: Option<&'static str>| {
        let reviews = reviews.clone();
        async move {
            let mut req = Request::get("http://reviews:9080/reviews/1");
            if let Some(user) = user {
                req = req.header("x-user", user);
            }
            let res = reviews.oneshot(req.body(Empty::<Bytes>::new())?).await?;
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

    // Every request above succeeded (a failure ends the program): v2's 503s were retried.
    println!(
        "retries: v2 answered 503 to {} attempts; the client saw none",
        v2_failures.load(Ordering::SeqCst)
    );
    // Istio's standard metrics, as the stack recorded them (reporter="source"); mount
    // `mesh.metrics_service()` on a router to serve them to Prometheus.
    let text = mesh.metrics().encode_to_string();
    for line in text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        println!("{line}");
    }
    Ok(())
}

/// A local upstream on a free port, answering every request with `name`; with `failures`,
/// every 4th request gets a 503 instead (counted there).
async fn upstream(
    name: &'static str,
    failures: Option<Arc<AtomicUsize>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, failures) = (seen.clone(), failures.clone());
            tokio::spawn(async move {
                let reply = hyper::service::service_fn(move |_req| {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    let fail = match &failures {
                        Some(f) if n % 4 == 3 => {
                            f.fetch_add(1, Ordering::SeqCst);
                            true
                        }
                        _ => false,
                    };
                    async move {
                        let mut res = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                        if fail {
                            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(res)
                    }
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
