//! Runs the egress gateway as a process against a local upstream: a host off the allow-list
//! is denied, allowed requests go out until the rate limit's bucket is empty, and the
//! metrics it prints on exit count what went out.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

async fn upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"api"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// One request for `host` through the gateway: status, flags header, body.
async fn get(gw: std::net::SocketAddr, host: &str) -> (u16, String, Bytes) {
    let tcp = TcpStream::connect(gw).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/v1/things")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    let flags = res
        .headers()
        .get("x-mesh-response-flags")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = res.status().as_u16();
    (
        status,
        flags,
        res.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn the_gateway_denies_unlisted_hosts_and_rate_limits_the_listed_ones() {
    let api = upstream().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_custom-proxy"))
        .args([
            "--allow",
            &format!("api.example.com={api}"),
            "--rate",
            "3/3600s",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let gw: std::net::SocketAddr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{first:?}"))
        .parse()
        .unwrap();

    let (status, flags, _) = get(gw, "evil.example.com").await;
    assert_eq!((status, flags.as_str()), (403, "NR"));
    for _ in 0..3 {
        let (status, _, body) = get(gw, "api.example.com").await;
        assert_eq!((status, &body[..]), (200, &b"api"[..]));
    }
    let (status, flags, _) = get(gw, "api.example.com").await;
    assert_eq!((status, flags.as_str()), (429, "RL"));

    drop(child.stdin.take()); // closing standard input stops the gateway
    let status = child.wait().unwrap();
    assert!(status.success());
    let rest: Vec<String> = out.lines().map(Result::unwrap).collect();
    let ok = rest
        .iter()
        .find(|l| l.contains("response_code=\"200\""))
        .unwrap_or_else(|| panic!("{rest:?}"));
    assert!(ok.contains("source_workload=\"egress-gateway\""), "{ok}");
    assert!(ok.ends_with(" 3"), "{ok}");
    assert!(
        rest.iter().any(|l| l.contains("response_code=\"429\"")),
        "{rest:?}"
    );
}
