//! The unmodified service of the walkthrough: a plain HTTP server that knows nothing of the
//! mesh. It answers `hello from NAME` and echoes the `traceparent` it got (the sidecar adds
//! one) in a header, and prints `listening on ADDR`.
//!
//! ```sh
//! hello --listen 127.0.0.1:8080 --name v1
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let (mut listen, mut name) = ("127.0.0.1:8080".to_owned(), "hello".to_owned());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--name", Some(v)) => name = v,
            _ => {
                eprintln!("usage: hello [--listen ADDR] [--name NAME]");
                std::process::exit(2);
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let name: &'static str = Box::leak(name.into_boxed_str());
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                let mut res = Response::new(Full::new(Bytes::from(format!("hello from {name}\n"))));
                if let Some(tp) = req.headers().get("traceparent") {
                    res.headers_mut().insert("x-seen-traceparent", tp.clone());
                }
                Ok::<_, Infallible>(res)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
