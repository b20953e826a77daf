//! Sidecar `ingress` listeners (istio.io/latest/docs/reference/config/networking/sidecar):
//! an HTTP listener forwarding to its `defaultEndpoint` under PeerAuthentication `STRICT`
//! and an AuthorizationPolicy `DENY`, a TCP listener with mTLS and Istio's TCP semantics of
//! AuthorizationPolicy, reloads (policies apply, a changed listener is refused), and the
//! pipeline's errors. Real sockets on port 0, certificates made at test time by the mesh CA.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_tls::ca::MeshCa;
use rustls::pki_types::ServerName;
use support::l4::echo_server;
use support::mtls::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An application that answers `<name> <x-forwarded-client-cert or ->`.
async fn app(name: &'static str) -> Backend {
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let xfcc = req
            .headers()
            .get("x-forwarded-client-cert")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "-".into());
        Box::pin(async move { Response::new(full(format!("{name} {xfcc}"))) })
    });
    backend_with(name, handler).await
}

const STRICT: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
";

/// `sleep` may not reach the workload (on any port).
const DENY_SLEEP: &str = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
";

/// The Sidecar of `reviews`: HTTP port 9080 to `http`, TCP port 9000 to `tcp`.
fn sidecar(http: SocketAddr, tcp: SocketAddr) -> String {
    sidecar_with(http, tcp, "")
}

/// [`sidecar`] with `tcp_extra` (indented fields) in the TCP port's entry.
fn sidecar_with(http: SocketAddr, tcp: SocketAddr, tcp_extra: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: reviews, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: reviews}}}}
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{}
  - port: {{number: 9000, protocol: TCP, name: tcp}}
    defaultEndpoint: 127.0.0.1:{}
{tcp_extra}",
        http.port(),
        tcp.port()
    )
}

/// The `reviews` workload (its main inbound listener to `main`), its ingress ports mapped to
/// free local ports, plus `extra` documents.
fn config(dir: &Path, ca: &MeshCa, main: &Backend, extra: &str) -> String {
    reviews_config(
        dir,
        ca,
        main,
        &format!("  inboundPorts: {{\"9080\": 0, \"9000\": 0}}\n{extra}"),
    )
}

/// The `reviews` workload's world: a fresh mesh CA, a directory for files, its main
/// application, the application of its HTTP ingress port and the echo server of its TCP one.
struct World {
    dir: tempfile::TempDir,
    ca: MeshCa,
    main: Backend,
    ratings: Backend,
    echo: SocketAddr,
}

impl World {
    async fn new() -> Self {
        World {
            dir: tempfile::tempdir().unwrap(),
            ca: MeshCa::generate(TD).unwrap(),
            main: app("main").await,
            ratings: app("ingress-app").await,
            echo: echo_server("echo").await,
        }
    }

    /// The configuration: the workload, `docs`, and its Sidecar (HTTP port 9080 to the
    /// ingress application, TCP port 9000 to `tcp`).
    fn yaml_to(&self, docs: &str, tcp: SocketAddr) -> String {
        config(
            self.dir.path(),
            &self.ca,
            &self.main,
            &format!("{docs}{}", sidecar(self.ratings.addr, tcp)),
        )
    }

    /// A proxy running [`World::yaml_to`] with the TCP port to the echo server.
    async fn start(&self, docs: &str) -> Running {
        start(&self.yaml_to(docs, self.echo)).await
    }
}

/// A GET of `/` over mTLS as `who`; the status and body, or the error.
async fn get_tls(addr: SocketAddr, ca: &MeshCa, who: &str) -> Result<(u16, String), String> {
    bounded(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("reviews.default.svc.cluster.local").unwrap();
        let stream = client_tls(ca, who)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/")
            .header("host", "reviews")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
}

/// One TCP connection over mTLS as `who`: sends `data`, closes its side, reads to the end;
/// what came back (empty when the proxy closed the connection).
async fn exchange_tls(addr: SocketAddr, ca: &MeshCa, who: &str, data: &[u8]) -> Vec<u8> {
    bounded(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("reviews.default.svc.cluster.local").unwrap();
        let Ok(mut s) = client_tls(ca, who).connect(name, tcp).await else {
            return Vec::new();
        };
        let _ = s.write_all(data).await;
        let _ = s.shutdown().await;
        let mut got = Vec::new();
        // a close without close_notify ends the read with an error: what came is kept
        let _ = s.read_to_end(&mut got).await;
        got
    })
    .await
}

#[tokio::test]
async fn http_ingress_listener_forwards_to_its_endpoint_under_strict_mtls_and_deny() {
    let w = World::new().await;
    let log = w.dir.path().join("access.log");
    let access_log = format!("  accessLog: {{path: {}, encoding: JSON}}\n", log.display());
    let p = w.start(&format!("{access_log}{STRICT}{DENY_SLEEP}")).await;
    let http = p
        .proxy
        .ingress_addr(9080)
        .expect("an ingress listener for 9080");
    assert_ne!(http.port(), 0);
    assert_eq!(
        p.proxy.inbound_port_addr(9080),
        None,
        "the inboundPorts entry is the ingress listener, not a second one"
    );
    // an mTLS client reaches the defaultEndpoint, its identity in x-forwarded-client-cert
    let (status, body) = get_tls(http, &w.ca, "productpage").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ingress-app By=spiffe://cluster.local/ns/default/sa/reviews;"),
        "{body}"
    );
    assert!(
        body.ends_with("URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "{body}"
    );
    // the DENY policy is honoured on the ingress listener
    let (status, body) = get_tls(http, &w.ca, "sleep").await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, "RBAC: access denied");
    // STRICT: plaintext is refused
    let plain = raw(
        http,
        b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert_eq!(
        w.ratings.hits(),
        1,
        "only the allowed mTLS request got through"
    );
    // Istio's metrics on the server side: reporter="destination", the denied peer's identity
    let admin = p.admin;
    eventually(
        "the denied request in istio_requests_total",
        || async move {
            let (_, text) = admin_get(admin, "/stats/prometheus").await;
            text.lines().any(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains("response_code=\"403\"")
                    && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"")
            })
        },
    )
    .await;
    // the main inbound listener still forwards to localApp
    let (status, body) = get_tls(p.proxy.inbound_addr().unwrap(), &w.ca, "productpage")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("main "), "{body}");
    // the access log names each listener's inbound cluster (Envoy's route's); the denied
    // request went to no host
    let proxy = &p.proxy;
    eventually("the three access log lines", || {
        proxy.flush_telemetry();
        let n = std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
        async move { n == 3 }
    })
    .await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let line = |code: u64, cluster: &str| {
        lines
            .iter()
            .find(|v| v["response_code"] == code && v["upstream_cluster"] == cluster)
            .unwrap_or_else(|| panic!("{code} {cluster} in {lines:?}"))
    };
    assert_eq!(
        line(200, "inbound|9080||")["upstream_host"],
        w.ratings.addr.to_string()
    );
    assert!(line(403, "inbound|9080||")["upstream_host"].is_null());
    let main = format!("inbound|{}||", w.main.port());
    assert_eq!(line(200, &main)["upstream_host"], w.main.addr.to_string());
    p.proxy.drain().await;
}

#[tokio::test]
async fn tcp_ingress_listener_splices_mtls_connections_under_tcp_authorization() {
    let w = World::new().await;
    let p = w.start(&format!("{STRICT}{DENY_SLEEP}")).await;
    let tcp = p
        .proxy
        .ingress_addr(9000)
        .expect("an ingress listener for 9000");
    let got = exchange_tls(tcp, &w.ca, "productpage", b"hello").await;
    assert_eq!(String::from_utf8_lossy(&got), "echo helloecho bye");
    // DENY by principal: the connection is closed before a byte reaches the endpoint
    let got = exchange_tls(tcp, &w.ca, "sleep", b"hello").await;
    assert_eq!(String::from_utf8_lossy(&got), "");
    // STRICT: plaintext never reaches the endpoint
    let got = support::l4::exchange(tcp, b"hello").await;
    assert!(!String::from_utf8_lossy(&got).contains("echo"), "{got:?}");
    p.proxy.drain().await;
}

/// Istio's `authz-tcp` task: an ALLOW rule with an HTTP-only field (`methods`) allows nothing
/// on a TCP port, while the same policy allows the GET on the HTTP port.
#[tokio::test]
async fn allow_rules_with_http_fields_allow_no_tcp_connection() {
    let w = World::new().await;
    let allow_get = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET]}}]
";
    let p = w.start(allow_get).await;
    let (status, _) = get_tls(p.proxy.ingress_addr(9080).unwrap(), &w.ca, "productpage")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let tcp = p.proxy.ingress_addr(9000).unwrap();
    assert_eq!(exchange_tls(tcp, &w.ca, "productpage", b"hello").await, b"");
    // PERMISSIVE (no PeerAuthentication): a plaintext connection is judged the same way
    assert_eq!(support::l4::exchange(tcp, b"hello").await, b"");
    p.proxy.drain().await;
}

#[tokio::test]
async fn plaintext_tcp_ingress_under_permissive_reaches_the_endpoint() {
    let w = World::new().await;
    let p = w.start("").await;
    let tcp = p.proxy.ingress_addr(9000).unwrap();
    let got = support::l4::exchange(tcp, b"plain").await;
    assert_eq!(String::from_utf8_lossy(&got), "echo plainecho bye");
    let got = exchange_tls(tcp, &w.ca, "productpage", b"tls").await;
    assert_eq!(String::from_utf8_lossy(&got), "echo tlsecho bye");
    p.proxy.drain().await;
}

#[tokio::test]
async fn reload_applies_policies_and_refuses_changed_ingress_listeners() {
    let w = World::new().await;
    let file = w.dir.path().join("mesh.yaml");
    let base = config(w.dir.path(), &w.ca, &w.main, STRICT);
    write(&file, &format!("{base}{}", sidecar(w.ratings.addr, w.echo)));
    let r = start_files(vec![file.clone()]).await;
    let http = r.proxy.ingress_addr(9080).unwrap();
    assert_eq!(get_tls(http, &w.ca, "sleep").await.unwrap().0, 200);
    // a new policy: applied to the running ingress listeners
    write(
        &file,
        &format!("{base}{DENY_SLEEP}{}", sidecar(w.ratings.addr, w.echo)),
    );
    r.proxy.reload().unwrap();
    assert_eq!(get_tls(http, &w.ca, "sleep").await.unwrap().0, 403);
    let tcp = r.proxy.ingress_addr(9000).unwrap();
    assert_eq!(exchange_tls(tcp, &w.ca, "sleep", b"x").await, b"");
    // a changed ingress listener (its endpoint moves, the policy goes): refused as a
    // whole, the running configuration keeps serving
    write(&file, &format!("{base}{}", sidecar(w.main.addr, w.echo)));
    let err = r.proxy.reload().unwrap_err().to_string();
    assert!(err.contains("Sidecar ingress listeners"), "{err}");
    assert!(err.contains("restart"), "{err}");
    assert_eq!(get_tls(http, &w.ca, "sleep").await.unwrap().0, 403);
    let (status, body) = get_tls(http, &w.ca, "productpage").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("ingress-app "), "{body}");
    r.proxy.drain().await;
}

/// What `validate` says (the pipeline `run` runs) about ingress listeners that cannot be.
#[test]
fn the_pipeline_refuses_colliding_ports_and_unix_endpoints_with_file_and_line() {
    let boot = "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {name: e2e}
spec:
  workload: {name: reviews-v1, namespace: default, labels: {app: reviews}}
  inbound: {address: 127.0.0.1, port: 15006, localApp: '127.0.0.1:8080'}
  admin: {address: 127.0.0.1, port: 15000}
";
    let build = |sidecar: &str| {
        let mut loader = mesh_core::load::Loader::new();
        loader.add_str("mesh.yaml", &format!("{boot}---\n{sidecar}"));
        mesh_proxy::pipeline::build(loader)
    };
    // port 15006 is the inbound listener's
    let err = build(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  ingress:
  - port: {number: 15006, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
",
    )
    .unwrap_err();
    let e = err.errors().next().unwrap();
    assert_eq!(
        e.field.as_ref().unwrap().to_string(),
        "spec.ingress[0].port.number"
    );
    assert_eq!(e.line, Some(14));
    assert!(
        e.message.contains("where the inbound listens"),
        "{}",
        e.message
    );
    // a unix domain socket endpoint
    let err = build(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: unix:///var/run/app.sock
",
    )
    .unwrap_err();
    let e = err.errors().next().unwrap();
    assert_eq!(
        e.field.as_ref().unwrap().to_string(),
        "spec.ingress[0].defaultEndpoint"
    );
    assert!(e.message.contains("unix domain sockets"), "{}", e.message);
    // two ingress ports on one local port (inboundPorts maps both to 15100)
    let mut loader = mesh_core::load::Loader::new();
    loader.add_str(
        "mesh.yaml",
        &format!(
            "{}  inboundPorts: {{\"9080\": 15100, \"9090\": 15100}}\n---\n{}",
            boot,
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
  - port: {number: 9090, protocol: TCP, name: tcp}
"
        ),
    );
    let err = mesh_proxy::pipeline::build(loader).unwrap_err();
    assert!(err.to_string().contains("15100"), "{err}");
    // without defaultEndpoint: the localApp host at port.number; valid
    let built = build(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 0.0.0.0:9081
  - port: {number: 9000, protocol: TCP, name: tcp}
",
    )
    .unwrap();
    assert_eq!(
        built.ingress.describe(),
        "9080 on 127.0.0.1:9080 (http) to localApp host:9081, 9000 on 127.0.0.1:9000 (tcp) to localApp host:9000"
    );
}

/// PeerAuthentication's `portLevelMtls` is keyed by the ingress listener's `port.number`.
#[tokio::test]
async fn port_level_mtls_is_keyed_by_the_ingress_port_number() {
    let w = World::new().await;
    let pa = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
  portLevelMtls:
    9080: {mode: DISABLE}
";
    let p = w.start(pa).await;
    let http = p.proxy.ingress_addr(9080).unwrap();
    let plain = raw(
        http,
        b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert!(plain.ends_with("ingress-app -"), "{plain}");
    // port 9000 stays STRICT
    let tcp = p.proxy.ingress_addr(9000).unwrap();
    let got = support::l4::exchange(tcp, b"hello").await;
    assert!(!String::from_utf8_lossy(&got).contains("echo"), "{got:?}");
    let got = exchange_tls(tcp, &w.ca, "productpage", b"hello").await;
    assert_eq!(String::from_utf8_lossy(&got), "echo helloecho bye");
    p.proxy.drain().await;
}

/// `/config_dump` shows the ingress listeners the proxy built.
#[tokio::test]
async fn config_dump_lists_the_ingress_listeners() {
    let w = World::new().await;
    let p = w.start("").await;
    let (status, body) = admin_get(p.admin, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ingress = &dump["sidecarIngress"];
    assert_eq!(ingress["sidecar"], "default/reviews");
    assert_eq!(ingress["listeners"][0]["port"], 9080);
    assert_eq!(ingress["listeners"][0]["serve"], "http");
    assert_eq!(
        ingress["listeners"][0]["endpoint"],
        w.ratings.addr.to_string()
    );
    assert_eq!(ingress["listeners"][1]["port"], 9000);
    assert_eq!(ingress["listeners"][1]["serve"], "tcp");
    p.proxy.drain().await;
}

/// Sidecar ingress TLS: an `HTTPS` port with `SIMPLE` TLS terminated with the listener's own
/// certificate and served as HTTP to its endpoint; a `TLS` port with `MUTUAL` TLS spliced
/// as TCP, clients without a certificate of `caCertificates` refused.
#[tokio::test]
async fn ingress_tls_terminates_with_the_listener_s_own_certificate() {
    use support::pki::Pki;
    let w = World::new().await;
    let pki = Pki::new("ingress CA");
    let (cert, key) = pki
        .leaf(&["ratings.example.com"], false)
        .write(w.dir.path(), "ratings");
    let ca_file = pki.write(w.dir.path(), "ingress-ca.pem");
    let sidecar = format!(
        "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: reviews, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: reviews}}}}
  ingress:
  - port: {{number: 8443, protocol: HTTPS, name: https}}
    defaultEndpoint: 127.0.0.1:{}
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: 9443, protocol: TLS, name: tls}}
    defaultEndpoint: 127.0.0.1:{}
    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca_file}}}
",
        w.ratings.port(),
        w.echo.port()
    );
    // STRICT for the workload: the listeners' own TLS replaces the mesh's mTLS on them
    let yaml = reviews_config(
        w.dir.path(),
        &w.ca,
        &w.main,
        &format!("  inboundPorts: {{\"8443\": 0, \"9443\": 0}}\n{STRICT}{sidecar}"),
    );
    let p = start(&yaml).await;
    let https = p.proxy.ingress_addr(8443).unwrap();
    let name = || ServerName::try_from("ratings.example.com").unwrap();
    // HTTPS: a client that trusts the listener's CA, without a client certificate
    let body = bounded(async {
        let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
        let tls = pki.connector(None).connect(name(), tcp).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/")
            .header("host", "ratings.example.com")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let b = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    })
    .await;
    assert_eq!(body, "ingress-app -");
    // plaintext is not served
    let plain = raw(
        https,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
    // TLS MUTUAL: a client certificate of the CA is required
    let tls_port = p.proxy.ingress_addr(9443).unwrap();
    let through = |client: Option<support::pki::Leaf>| {
        let connector = pki.connector(client.as_ref());
        async move {
            bounded(async {
                let tcp = tokio::net::TcpStream::connect(tls_port).await.unwrap();
                let Ok(mut s) = connector.connect(name(), tcp).await else {
                    return Vec::new();
                };
                let _ = s.write_all(b"hi").await;
                let _ = s.shutdown().await;
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                got
            })
            .await
        }
    };
    let got = through(Some(pki.leaf(&["client.example.com"], true))).await;
    assert_eq!(String::from_utf8_lossy(&got), "echo hiecho bye");
    assert_eq!(through(None).await, b"", "no client certificate: refused");
    let other = Pki::new("another CA");
    let got = through(Some(other.leaf(&["client.example.com"], true))).await;
    assert_eq!(got, b"", "another CA's client: refused");
    p.proxy.drain().await;
}

/// Sidecar ingress TLS files that cannot be read refuse the configuration, naming the field.
#[test]
fn ingress_tls_with_missing_files_is_refused_with_its_field() {
    let yaml = "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {name: e2e}
spec:
  workload: {name: reviews-v1, namespace: default, labels: {app: reviews}}
  inbound: {address: 127.0.0.1, port: 0, localApp: '127.0.0.1:8080'}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  ingress:
  - port: {number: 8443, protocol: HTTPS, name: https}
    defaultEndpoint: 127.0.0.1:8080
    tls: {mode: SIMPLE, serverCertificate: /nonexistent/cert.pem, privateKey: /nonexistent/key.pem}
";
    let mut loader = mesh_core::load::Loader::new();
    loader.add_str("mesh.yaml", yaml);
    let err = mesh_proxy::pipeline::build(loader).unwrap_err();
    let e = err.errors().next().unwrap();
    assert_eq!(
        e.field.as_ref().unwrap().to_string(),
        "spec.ingress[0].tls.serverCertificate"
    );
    assert_eq!(e.line, Some(15));
}

/// The sum of `name`'s `reporter="destination"` TCP series whose labels hold every one of
/// `want`.
fn inbound_tcp(text: &str, name: &str, want: &[&str]) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with(&format!("{name}{{"))
                && l.contains("reporter=\"destination\"")
                && l.contains("request_protocol=\"tcp\"")
                && want.iter().all(|w| l.contains(w))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Istio's TCP metrics from the server's side (`reporter="destination"`): the client's
/// principal from its certificate, `mutual_tls`, the bytes each way; a denied connection
/// counted with no flag and no bytes (Envoy's network RBAC filter sets no response flag).
#[tokio::test]
async fn tcp_ingress_connections_are_counted_with_reporter_destination() {
    let w = World::new().await;
    let p = w.start(&format!("{STRICT}{DENY_SLEEP}")).await;
    let tcp = p.proxy.ingress_addr(9000).unwrap();
    let got = exchange_tls(tcp, &w.ca, "productpage", b"hello").await;
    assert_eq!(String::from_utf8_lossy(&got), "echo helloecho bye");
    assert_eq!(exchange_tls(tcp, &w.ca, "sleep", b"hello").await, b"");
    let allowed = [
        "source_principal=\"spiffe://cluster.local/ns/default/sa/productpage\"",
        "source_workload_namespace=\"default\"",
        "destination_workload=\"reviews-v1\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_flags=\"-\"",
    ];
    let denied = [
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_flags=\"-\"",
    ];
    let admin = p.admin;
    // the client sees the close before the proxy's task counts it: poll until both closes
    // are counted, then check every figure
    eventually("both connections counted closed", || async move {
        let (_, text) = admin_get(admin, "/stats/prometheus").await;
        inbound_tcp(&text, "istio_tcp_connections_closed_total", &[]) == 2
    })
    .await;
    let (_, text) = admin_get(admin, "/stats/prometheus").await;
    let count = |name, want: &[&str]| inbound_tcp(&text, name, want);
    assert_eq!(
        count("istio_tcp_connections_opened_total", &allowed),
        1,
        "{text}"
    );
    assert_eq!(count("istio_tcp_connections_closed_total", &allowed), 1);
    assert_eq!(count("istio_tcp_received_bytes_total", &allowed), 5);
    assert_eq!(count("istio_tcp_sent_bytes_total", &allowed), 18);
    assert_eq!(count("istio_tcp_connections_opened_total", &denied), 1);
    assert_eq!(count("istio_tcp_received_bytes_total", &denied), 0);
    assert_eq!(count("istio_tcp_sent_bytes_total", &denied), 0);
    // nothing of it is reported as the client's side
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("istio_tcp_") && l.contains("reporter=\"source\"")),
        "{text}"
    );
    support::prom::promtool_check(&text);
    p.proxy.drain().await;
}

/// A plaintext connection (PERMISSIVE) to an endpoint that refuses: flag `UF`, policy
/// `none`, the peer unknown; its access log line names Istio's inbound cluster.
#[tokio::test]
async fn tcp_ingress_connect_failures_are_counted_uf() {
    let w = World::new().await;
    // a port nothing listens on: bound, then closed
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let log = w.dir.path().join("access.log");
    let access_log = format!("  accessLog: {{path: {}, encoding: TEXT}}\n", log.display());
    let p = start(&w.yaml_to(&access_log, closed)).await;
    let tcp = p.proxy.ingress_addr(9000).unwrap();
    assert_eq!(support::l4::exchange(tcp, b"plain").await, b"");
    let proxy = &p.proxy;
    eventually("the connection's access log line", || {
        proxy.flush_telemetry();
        let has = std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 1);
        async move { has }
    })
    .await;
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(line.contains("] \"- - -\" 0 UF - - \"-\" 0 0 "), "{line}");
    assert!(
        line.contains(&format!("\"{closed}\" inbound|9000|| - {tcp} 127.0.0.1:")),
        "{line}"
    );
    let admin = p.admin;
    let want = [
        "source_principal=\"unknown\"",
        "connection_security_policy=\"none\"",
        "response_flags=\"UF\"",
    ];
    eventually("the failed connection counted", || async move {
        let (_, text) = admin_get(admin, "/stats/prometheus").await;
        inbound_tcp(&text, "istio_tcp_connections_closed_total", &want) == 1
    })
    .await;
    let (_, text) = admin_get(admin, "/stats/prometheus").await;
    assert_eq!(
        inbound_tcp(&text, "istio_tcp_connections_opened_total", &want),
        1,
        "{text}"
    );
    p.proxy.drain().await;
}

/// The TCP port's `connectionPool` (its inbound cluster's pool; Envoy's `tcp_proxy` on a
/// cluster at `max_connections`): with `maxConnections: 1`, a second connection while the
/// first is open is closed without reaching the endpoint, counted with flag `UO`; once the
/// first has closed, a new one goes through.
#[tokio::test]
async fn tcp_ingress_connection_pool_bounds_the_connections_to_the_endpoint() {
    let w = World::new().await;
    let yaml = config(
        w.dir.path(),
        &w.ca,
        &w.main,
        &sidecar_with(
            w.ratings.addr,
            w.echo,
            "    connectionPool: {tcp: {maxConnections: 1}}\n",
        ),
    );
    let p = start(&yaml).await;
    let tcp = p.proxy.ingress_addr(9000).unwrap();
    // the first connection, held open once the endpoint has answered through it
    let mut first = tokio::net::TcpStream::connect(tcp).await.unwrap();
    first.write_all(b"one").await.unwrap();
    let mut got = [0u8; 8];
    bounded(first.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"echo one");
    // the second: closed at once
    assert_eq!(support::l4::exchange(tcp, b"two").await, b"");
    let admin = p.admin;
    eventually("the refused connection counted UO", || async move {
        let (_, text) = admin_get(admin, "/stats/prometheus").await;
        inbound_tcp(
            &text,
            "istio_tcp_connections_closed_total",
            &["response_flags=\"UO\""],
        ) == 1
    })
    .await;
    drop(first);
    eventually("the first connection closed", || async move {
        let (_, text) = admin_get(admin, "/stats/prometheus").await;
        inbound_tcp(&text, "istio_tcp_connections_closed_total", &[]) == 2
    })
    .await;
    let got = support::l4::exchange(tcp, b"three").await;
    assert_eq!(String::from_utf8_lossy(&got), "echo threeecho bye");
    // Envoy's `upstream_cx_overflow` of the inbound cluster
    let (_, text) = admin_get(admin, "/stats/prometheus").await;
    assert!(
        text.contains(
            "mesh_proxy_cluster_connection_overflows_total{cluster_name=\"inbound|9000||\"} 1\n"
        ),
        "{text}"
    );
    p.proxy.drain().await;
}
