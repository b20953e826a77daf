//! The client of `benches/load/inproc.py`: the same small workload, one request at a time
//! over one pooled HTTP/1.1 client (hyper_util's), sent three ways:
//!
//! - `direct URL`: the client alone, to the origin;
//! - `sidecar URL HOST`: the client alone, to a `mesh-proxy` sidecar's outbound listener,
//!   with `Host: HOST` (the proxy routes it);
//! - `inproc CONFIG URL`: the client inside `mesh-stack`'s client stack built from the
//!   sidecar's own configuration file (routing, balancing, Istio's default retry policy,
//!   Istio's metrics), no proxy.
//!
//! `inproc-load MODE ARGS… REQUESTS WARMUP` prints one JSON line: the requests measured, the
//! latency p50/p99/p99.9 in µs, and this process's CPU seconds (utime + stime, `/proc`) over
//! the measured requests.
#![forbid(unsafe_code)]

use std::error::Error;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_stack::{Mesh, RequestBody};
use tower_service::Service;

type BoxError = Box<dyn Error + Send + Sync>;

/// This process's CPU time in clock ticks (utime + stime of every thread).
fn cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let sum = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse::<u64>().ok())
                .sum();
            Some(sum)
        })
        .unwrap_or(0)
}

/// One request through `svc`, its body read to the end; its status.
async fn send<S, B>(svc: &mut S, req: Request<Full<Bytes>>) -> Result<u16, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let res = svc.call(req).await.map_err(Into::into)?;
    let status = res.status().as_u16();
    res.into_body().collect().await.map_err(Into::into)?;
    Ok(status)
}

/// `warmup` then `n` requests made by `req` through `svc`, one at a time: the JSON line.
async fn load<S, B>(
    mode: &str,
    mut svc: S,
    req: impl Fn() -> Request<Full<Bytes>>,
    n: usize,
    warmup: usize,
) -> Result<String, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    for _ in 0..warmup {
        send(&mut svc, req()).await?;
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0usize;
    let cpu0 = cpu_ticks();
    for _ in 0..n {
        let start = Instant::now();
        let status = send(&mut svc, req()).await?;
        lat.push(start.elapsed().as_nanos() as u64);
        if status != 200 {
            errors += 1;
        }
    }
    let cpu = cpu_ticks() - cpu0;
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    Ok(format!(
        "{{\"mode\": \"{mode}\", \"requests\": {n}, \"errors\": {errors}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"p999_us\": {:.1}, \"cpu_s\": {:.2}}}",
        q(0.5),
        q(0.99),
        q(0.999),
        cpu as f64 / 100.0
    ))
}

fn get(url: &str, host: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get(url);
    if let Some(h) = host {
        b = b.header(http::header::HOST, h);
    }
    b.body(Full::new(Bytes::new())).expect("a valid request")
}

async fn main_async(args: Vec<String>) -> Result<String, BoxError> {
    let usage = "usage: inproc-load direct URL | sidecar URL HOST | inproc CONFIG URL, then REQUESTS WARMUP";
    let num =
        |i: usize| -> Result<usize, BoxError> { Ok(args.get(i).ok_or(usage)?.parse::<usize>()?) };
    match args.first().map(String::as_str) {
        Some("direct") => {
            let url = args.get(1).ok_or(usage)?.clone();
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            load("direct", client, || get(&url, None), num(2)?, num(3)?).await
        }
        Some("sidecar") => {
            let url = args.get(1).ok_or(usage)?.clone();
            let host = args.get(2).ok_or(usage)?.clone();
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            load(
                "sidecar",
                client,
                || get(&url, Some(&host)),
                num(3)?,
                num(4)?,
            )
            .await
        }
        Some("inproc") => {
            let mesh = Mesh::from_files(&[args.get(1).ok_or(usage)?])?;
            let url = args.get(2).ok_or(usage)?.clone();
            let client = Client::builder(TokioExecutor::new()).build_http::<RequestBody>();
            let stack = mesh.client_layer().wrap_uri_client(client);
            load("inproc", stack, || get(&url, None), num(3)?, num(4)?).await
        }
        _ => Err(usage.into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("inproc-load: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(main_async(args)) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("inproc-load: {e}");
            std::process::exit(1);
        }
    }
}
