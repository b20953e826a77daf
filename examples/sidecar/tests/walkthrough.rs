//! Runs the README's walkthrough as processes: the unmodified service (two versions),
//! `mesh-proxy validate`, `mesh-proxy run`, a request through the outbound port, the
//! metrics on the admin port, a reload by SIGHUP that moves traffic to v2, and SIGTERM.
//! Ports are 0 (the proxy logs the addresses it bound) instead of the README's fixed ones.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROXY: &str = env!("CARGO_BIN_EXE_sidecar-mesh-proxy");
const HELLO: &str = env!("CARGO_BIN_EXE_hello");
/// Every wait is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `hello --name NAME` on a free port: the process and its address.
fn hello(name: &str) -> (Proc, SocketAddr) {
    let mut child = Command::new(HELLO)
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    (Proc(child), addr)
}

/// `curl -s -H 'host: HOST' http://ADDR/PATH`: status line and body.
fn curl(addr: SocketAddr, host: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

/// Polls `cond` until it holds (polling, not synchronisation); panics after [`LIMIT`].
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_walkthrough_runs() {
    let dir = tempfile_dir();
    let (_v1, v1) = hello("v1");
    let (_v2, v2) = hello("v2");
    // the README's mesh.yaml, on free ports
    let yaml = include_str!("../mesh.yaml")
        .replace("port: 15001", "port: 0")
        .replace("port: 15006", "port: 0")
        .replace("port: 15000", "port: 0")
        .replace("127.0.0.1:8080", &v1.to_string())
        .replace("http: 8080", &format!("http: {}", v1.port()))
        .replace("http: 8081", &format!("http: {}", v2.port()));
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, &yaml).unwrap();

    // mesh-proxy validate mesh.yaml
    let out = Command::new(PROXY)
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // mesh-proxy run --config mesh.yaml
    let mut child = Command::new(PROXY)
        .args(["run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (stderr, sink) = (child.stderr.take().unwrap(), lines.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let proxy = Proc(child);
    let logged = |what: &str| -> SocketAddr {
        eventually(what, || {
            lines.lock().unwrap().iter().any(|l| l.contains(what))
        });
        let lines = lines.lock().unwrap();
        let line = lines.iter().find(|l| l.contains(what)).unwrap();
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next());
        addr.unwrap().parse().unwrap()
    };
    let (outbound, admin) = (logged("outbound listener up"), logged("admin listener up"));

    // curl -H 'host: hello' http://127.0.0.1:15001/
    let (head, body) = curl(outbound, "hello", "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "hello from v1\n");
    assert!(
        head.contains("x-seen-traceparent: 00-"),
        "the sidecar adds a trace: {head}"
    );

    // curl http://127.0.0.1:15000/stats/prometheus
    let (_, metrics) = curl(admin, "localhost", "/stats/prometheus");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{") && l.contains("destination_version=\"v1\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");

    // edit the route to v2, then kill -HUP <pid>
    std::fs::write(&file, yaml.replace("subset: v1}}]", "subset: v2}}]")).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("traffic moves to v2", || {
        curl(outbound, "hello", "/").1 == "hello from v2\n"
    });

    // kill -TERM <pid>: drains and exits 0
    let status = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut proxy = proxy;
    let code = proxy.0.wait().unwrap();
    assert!(code.success(), "{code:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sidecar-walkthrough-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
