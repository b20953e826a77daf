//! `mesh-proxy demo`: an embedded, runnable canary mesh.
//!
//! One process starts two versions of a small `reviews` service and a proxy in front of them
//! with the configuration an Istio user would write for a canary (printed by
//! `mesh-proxy demo --print-config`, with placeholders for the two endpoint ports, which the
//! demo picks at start-up: see [`printed_config`]):
//!
//! - a ServiceEntry for `reviews.default.svc.cluster.local` with a v1 and a v2 endpoint;
//! - a DestinationRule with subsets `v1` and `v2`;
//! - a VirtualService sending `x-user: tester` to v2 and splitting everything else 90/10.
//!
//! It prints the URL to curl and the admin URLs, then a line every few seconds with how many
//! requests each version served, until Ctrl-C (or SIGTERM), when it drains and exits 0.
//! `--drive N` sends N requests itself and prints the split (a self-check).

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::proxy::{ListenerKind, Proxy, StartError};

/// Options of `mesh-proxy demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Port of the proxy's outbound listener (0 picks a free port).
    #[arg(long, default_value_t = 15001)]
    pub port: u16,
    /// Port of the admin listener (0 picks a free port).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Seconds between the live lines.
    #[arg(long, default_value_t = 3)]
    pub every: u64,
    /// Print the configuration the demo runs, then exit.
    #[arg(long)]
    pub print_config: bool,
    /// Send this many requests through the proxy, print the split, and exit.
    #[arg(long, value_name = "N")]
    pub drive: Option<u64>,
}

/// A running demo: two service versions and a proxy.
#[derive(Debug)]
pub struct DemoMesh {
    /// The proxy.
    pub proxy: Proxy,
    /// Requests served by v1.
    pub v1: Arc<AtomicU64>,
    /// Requests served by v2.
    pub v2: Arc<AtomicU64>,
    /// Where v1 listens.
    pub v1_addr: SocketAddr,
    /// Where v2 listens.
    pub v2_addr: SocketAddr,
    /// The configuration the proxy runs (YAML: [`config`] with the ports above).
    pub config: String,
    _backends: tokio::runtime::Runtime,
}

/// The endpoint ports [`printed_config`] shows for reviews v1 and v2: placeholders, since
/// the demo starts both versions on free ports it picks at start-up.
pub const PLACEHOLDER_PORTS: (u16, u16) = (9081, 9082);

/// The demo's configuration, for the given ports: the proxy's outbound and admin ports, and
/// the ports of reviews v1 and v2.
pub fn config(port: u16, admin_port: u16, v1: u16, v2: u16) -> String {
    render(port, admin_port, (v1, ""), (v2, ""))
}

/// What `mesh-proxy demo --print-config` prints: the configuration `mesh-proxy demo --port
/// <port> --admin-port <admin_port>` runs, except for the two endpoint ports of reviews,
/// which are [`PLACEHOLDER_PORTS`], marked as such in comments: the demo picks them at
/// start-up (free ports), prints them, and runs [`config`] with them.
pub fn printed_config(port: u16, admin_port: u16) -> String {
    let (v1, v2) = PLACEHOLDER_PORTS;
    format!(
        "# `mesh-proxy demo --port {port} --admin-port {admin_port}` runs this configuration, with
# one difference: the two endpoint ports of reviews (marked `placeholder`) are not known in
# advance. The demo starts reviews v1 and v2 on free ports it picks at start-up, puts those
# ports here instead, and prints where v1 and v2 listen.
{}",
        render(
            port,
            admin_port,
            (v1, "  # placeholder: v1's port is picked at start-up"),
            (v2, "  # placeholder: v2's port is picked at start-up"),
        )
    )
}

/// The configuration; `v1` and `v2` are an endpoint port and a comment for its line.
fn render(port: u16, admin_port: u16, v1: (u16, &str), v2: (u16, &str)) -> String {
    let ((v1, v1_note), (v2, v2_note)) = (v1, v2);
    format!(
        r#"# mesh-proxy demo: a canary of reviews v2, pinned for tester
apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata:
  name: demo
spec:
  concurrency: 1
  workload:
    name: productpage
    namespace: default
    labels: {{app: productpage}}
  outbound:
    address: 127.0.0.1
    port: {port}
  admin:
    address: 127.0.0.1
    port: {admin_port}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
spec:
  hosts:
  - reviews.default.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 9080
    name: http
    protocol: HTTP
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {v1}}}{v1_note}
    labels: {{app: reviews, version: v1}}
  - address: 127.0.0.1
    ports: {{http: {v2}}}{v2_note}
    labels: {{app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - name: tester-on-v2
    match:
    - headers:
        x-user:
          exact: tester
    route:
    - destination:
        host: reviews
        subset: v2
  - name: canary
    route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
"#
    )
}

async fn backend(listener: tokio::net::TcpListener, version: &'static str, count: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let count = count.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    count.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let mut res = http::Response::new(Full::new(Bytes::from(format!(
                            "reviews {version}\n"
                        ))));
                        res.headers_mut()
                            .insert("x-version", http::HeaderValue::from_static(version));
                        Ok::<_, Infallible>(res)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

// === impl DemoMesh ===

impl DemoMesh {
    /// Starts the two versions and the proxy.
    pub fn start(port: u16, admin_port: u16) -> Result<DemoMesh, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let (v1, v2) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (l1, l2) = rt
            .block_on(async {
                let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                Ok::<_, std::io::Error>((l1, l2))
            })
            .map_err(|e| format!("cannot start the demo services: {e}"))?;
        let (v1_addr, v2_addr) = (
            l1.local_addr().map_err(|e| e.to_string())?,
            l2.local_addr().map_err(|e| e.to_string())?,
        );
        rt.spawn(backend(l1, "v1", v1.clone()));
        rt.spawn(backend(l2, "v2", v2.clone()));
        let text = config(port, admin_port, v1_addr.port(), v2_addr.port());
        let compiled =
            mesh_core::config::load_str("demo.yaml", &text).map_err(|e| e.to_string())?;
        let proxy = Proxy::start_compiled(compiled, Vec::new()).map_err(|e| start_error(&e))?;
        Ok(DemoMesh {
            proxy,
            v1,
            v2,
            v1_addr,
            v2_addr,
            config: text,
            _backends: rt,
        })
    }

    /// The proxy's outbound address.
    pub fn url(&self) -> String {
        self.proxy
            .outbound_addr()
            .map(|a| format!("http://{a}/"))
            .unwrap_or_default()
    }
}

/// The demo's words for a proxy that cannot start: a port in use names the option that
/// moves it.
fn start_error(e: &StartError) -> String {
    let option = match e {
        StartError::AddrInUse {
            listener: ListenerKind::Outbound,
            ..
        } => "--port",
        StartError::AddrInUse {
            listener: ListenerKind::Admin,
            ..
        } => "--admin-port",
        _ => return e.to_string(),
    };
    format!("{e}\nchoose another port with {option} <PORT>, or {option} 0 for a free one")
}

/// Sends one `GET /` with `Host: reviews` (and `x-user` if given) over a fresh connection;
/// returns the status and body.
pub fn get(addr: SocketAddr, user: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra = user.map(|u| format!("x-user: {u}\r\n")).unwrap_or_default();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: reviews\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs the demo until Ctrl-C.
pub fn run_cli(args: DemoArgs) -> ExitCode {
    if args.print_config {
        print!("{}", printed_config(args.port, args.admin_port));
        return ExitCode::SUCCESS;
    }
    crate::run::init_logging();
    let demo = match DemoMesh::start(args.port, args.admin_port) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mesh-proxy demo: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(out) = demo.proxy.outbound_addr() else {
        return ExitCode::from(1);
    };
    let admin = demo
        .proxy
        .admin_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        "mesh-proxy demo: reviews v1 on {} and v2 on {}, behind the proxy on {out}",
        demo.v1_addr, demo.v2_addr
    );
    println!("  90/10 canary:      curl -H 'Host: reviews' http://{out}/");
    println!("  pinned to v2:      curl -H 'Host: reviews' -H 'x-user: tester' http://{out}/");
    println!(
        "  admin:             http://{admin}/ready  /clusters  /config_dump  /stats/prometheus"
    );
    println!(
        "  the configuration: mesh-proxy demo --print-config --port {} --admin-port {} (v1's and v2's ports there are placeholders for the ones above)",
        args.port, args.admin_port
    );
    if let Some(n) = args.drive {
        let mut failures = 0;
        for _ in 0..n {
            if !matches!(get(out, None), Ok((200, _))) {
                failures += 1;
            }
        }
        let (v1, v2) = (
            demo.v1.load(Ordering::Relaxed),
            demo.v2.load(Ordering::Relaxed),
        );
        println!("drove {n} requests: v1 served {v1}, v2 served {v2}, {failures} failed");
        demo.proxy.drain_blocking();
        return if failures == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    println!("  (Ctrl-C to stop)");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-proxy demo: {e}");
            return ExitCode::from(1);
        }
    };
    let every = Duration::from_secs(args.every.max(1));
    let DemoMesh {
        proxy,
        v1,
        v2,
        _backends,
        ..
    } = demo;
    rt.block_on(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let (mut last1, mut last2) = (0, 0);
        let stop = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    let (a, b) = (v1.load(Ordering::Relaxed), v2.load(Ordering::Relaxed));
                    let total = (a + b).max(1);
                    println!(
                        "served: v1 {a} ({:.0}%), v2 {b} ({:.0}%); last {}s: +{} v1, +{} v2",
                        100.0 * a as f64 / total as f64,
                        100.0 * b as f64 / total as f64,
                        every.as_secs(),
                        a - last1,
                        b - last2
                    );
                    (last1, last2) = (a, b);
                }
            }
        }
        println!("stopping: draining the proxy");
        proxy.drain().await;
    });
    ExitCode::SUCCESS
}
