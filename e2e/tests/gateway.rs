//! mesh-proxy as an ingress gateway, as Istio's "Ingress Gateways" and "Secure Gateways"
//! tasks set it up (istio.io/latest/docs/tasks/traffic-management/ingress/): a Gateway
//! selecting `istio: ingressgateway`, an httpbin stand-in behind it, VirtualServices bound
//! to the gateway routing by host and path; HTTPS with `SIMPLE` (certificate chosen by SNI)
//! and `MUTUAL` (client certificate required, `subjectAltNames`), `httpsRedirect`,
//! `credentialName` from `credentialsDir`, AuthorizationPolicy on the gateway, WebSockets
//! over HTTP and HTTPS servers, reloads. Real sockets on port 0; certificates made at test
//! time.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use http::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use support::pki::{Leaf, Pki};
use support::ws::ws_echo;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

// === configuration ===

/// The httpbin stand-in: `httpbin.default.svc.cluster.local:8000`.
fn httpbin(b: &Backend) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
",
        b.port()
    )
}

/// The task's VirtualService: `/status` and `/delay` of `host` to httpbin.
fn httpbin_vs(host: &str, gateway: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [\"{host}\"]
  gateways: [{gateway}]
  http:
  - match: [{{uri: {{prefix: /status}}}}, {{uri: {{prefix: /delay}}}}]
    route: [{{destination: {{port: {{number: 8000}}, host: httpbin}}}}]
"
    )
}

fn get(host: &str, path: &str) -> Request<UpBody> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(full(""))
        .unwrap()
}

fn gw_addr(r: &Running, port: u16) -> SocketAddr {
    r.proxy
        .gateway_addr(port)
        .unwrap_or_else(|| panic!("a gateway listener for port {port}"))
}

// === a TLS client ===

/// An HTTP/1.1 connection over TLS with SNI `sni`, trusting `ca`, presenting `client` if
/// given; `Err` when the handshake fails.
async fn tls_h1(
    addr: SocketAddr,
    sni: &str,
    ca: &Pki,
    client: Option<&Leaf>,
) -> Result<hyper::client::conn::http1::SendRequest<UpBody>, String> {
    let mut cfg = ca.client_config(client);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = bounded(TcpStream::connect(addr)).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = bounded(connector.connect(name, tcp))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, conn) = bounded(hyper::client::conn::http1::handshake(TokioIo::new(tls)))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(tx)
}

/// Sends `req`; `Err` when the connection fails (TLS 1.3 reports a refused client
/// certificate after the handshake, on the first read).
async fn send(
    tx: &mut hyper::client::conn::http1::SendRequest<UpBody>,
    req: Request<UpBody>,
) -> Result<Reply, String> {
    bounded(tx.ready()).await.map_err(|e| e.to_string())?;
    let res = bounded(tx.send_request(req))
        .await
        .map_err(|e| e.to_string())?;
    Ok(read(res).await)
}

// === HTTP ===

/// The Istio ingress task's Gateway: plaintext port 80 for `httpbin.example.com` (a line
/// appended goes to its one server).
const HTTPBIN_GATEWAY: &str = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"httpbin.example.com\"]
";

#[tokio::test]
async fn ingress_task_routes_by_host_and_path_and_answers_other_hosts_404_nr() {
    let b = backend("httpbin").await;
    let gw = HTTPBIN_GATEWAY;
    let yaml = format!(
        "{}{}{gw}{}",
        gateway_bootstrap(&[80], ""),
        httpbin(&b),
        httpbin_vs("httpbin.example.com", "httpbin-gateway")
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 80);
    let mut c = H1::connect(addr).await;
    let ok = c.send(get("httpbin.example.com", "/status/200")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.backend(), "httpbin");
    // the port in Host is ignored on a gateway (Istio's `host:*` domains)
    let ok = c.send(get("httpbin.example.com:80", "/delay/0")).await;
    assert_eq!(ok.status, 200);
    let no_route = c.send(get("httpbin.example.com", "/headers")).await;
    assert_eq!(no_route.status, 404, "no route for the path");
    let other = c.send(get("other.example.com", "/status/200")).await;
    assert_eq!(other.status, 404, "a host of no server");
    assert_eq!(other.flags(), "NR");
    assert_eq!(b.hits(), 2);
    // the outbound listener does not serve the gateway's VirtualService
    let side = get_once(r.out, "httpbin.example.com", &[]).await;
    assert_ne!(side.backend(), "httpbin");
    r.proxy.drain().await;
}

#[tokio::test]
async fn a_gateway_that_selects_another_workload_opens_no_listener() {
    let b = backend("httpbin").await;
    let gw = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other-gateway, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
";
    let yaml = format!(
        "{}{}{gw}{}",
        gateway_bootstrap(&[80], ""),
        httpbin(&b),
        httpbin_vs("httpbin.example.com", "other-gateway")
    );
    let r = start(&yaml).await;
    assert!(r.proxy.gateway_addr(80).is_none());
    r.proxy.drain().await;
}

#[tokio::test]
async fn server_hosts_limit_which_namespaces_may_bind() {
    // `default/httpbin.example.com`: a VirtualService of `default` binds; one of `team` for
    // `team.example.com` does not (its namespace is not admitted by any server host)
    let b = backend("httpbin").await;
    let gw = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"default/*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: team, namespace: team}
spec:
  hosts: [team.example.com]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {port: {number: 8000}, host: httpbin.default.svc.cluster.local}}]
";
    let yaml = format!(
        "{}{}{gw}{}",
        gateway_bootstrap(&[80], ""),
        httpbin(&b),
        httpbin_vs("httpbin.example.com", "istio-system/gw")
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 80);
    let mut c = H1::connect(addr).await;
    assert_eq!(
        c.send(get("httpbin.example.com", "/status/200"))
            .await
            .status,
        200
    );
    let team = c.send(get("team.example.com", "/status/200")).await;
    assert_eq!(team.status, 404);
    assert_eq!(team.flags(), "NR");
    r.proxy.drain().await;
}

#[tokio::test]
async fn authorization_policy_deny_applies_on_the_gateway() {
    let b = backend("httpbin").await;
    let gw = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delay, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: [\"/delay/*\"]}}]
";
    let yaml = format!(
        "{}{}{gw}{}",
        gateway_bootstrap(&[80], ""),
        httpbin(&b),
        httpbin_vs("httpbin.example.com", "httpbin-gateway")
    );
    let r = start(&yaml).await;
    let mut c = H1::connect(gw_addr(&r, 80)).await;
    assert_eq!(
        c.send(get("httpbin.example.com", "/status/200"))
            .await
            .status,
        200
    );
    let denied = c.send(get("httpbin.example.com", "/delay/1")).await;
    assert_eq!(denied.status, 403);
    assert_eq!(b.hits(), 1, "the denied request never reached httpbin");
    r.proxy.drain().await;
}

#[tokio::test]
async fn https_redirect_answers_301_to_https() {
    let b = backend("httpbin").await;
    let gw = format!("{HTTPBIN_GATEWAY}    tls: {{httpsRedirect: true}}\n");
    let yaml = format!(
        "{}{}{gw}{}",
        gateway_bootstrap(&[80], ""),
        httpbin(&b),
        httpbin_vs("httpbin.example.com", "httpbin-gateway")
    );
    let r = start(&yaml).await;
    let mut c = H1::connect(gw_addr(&r, 80)).await;
    let res = c.send(get("httpbin.example.com", "/status/200?x=1")).await;
    assert_eq!(res.status, 301);
    assert_eq!(
        res.headers.get("location").unwrap(),
        "https://httpbin.example.com/status/200?x=1"
    );
    assert_eq!(b.hits(), 0);
    r.proxy.drain().await;
}

/// The WebSocket echo service `echo` at `upstream`, a Gateway `gw` with `server` (indented
/// YAML of one server), and a VirtualService of `ws.example.com` bound to it.
fn ws_config(ports: &[u16], upstream: SocketAddr, server: &str) -> String {
    format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{server}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ws, namespace: default}}
spec:
  hosts: [ws.example.com]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: echo}}}}]
",
        gateway_bootstrap(ports, ""),
        upstream.port()
    )
}

/// Text and a 256 KiB binary message echoed over `ws`, then the server's close (`bye`).
async fn ws_exchange<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    bounded(ws.send(Message::text("hello"))).await.unwrap();
    let back = bounded(ws.next()).await.unwrap().unwrap();
    assert_eq!(back, Message::text("hello"));
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    bounded(ws.send(Message::binary(big.clone())))
        .await
        .unwrap();
    let back = bounded(ws.next()).await.unwrap().unwrap();
    assert!(
        back == Message::binary(big),
        "the binary message came back altered"
    );
    bounded(ws.send(Message::text("bye"))).await.unwrap();
    let close = bounded(ws.next()).await.unwrap().unwrap();
    assert!(close.is_close(), "{close:?}");
}

#[tokio::test]
async fn websocket_through_the_gateway() {
    let server =
        "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [ws.example.com]\n";
    let r = start(&ws_config(&[80], ws_echo().await, server)).await;
    let addr = gw_addr(&r, 80);
    let tcp = bounded(TcpStream::connect(addr)).await.unwrap();
    let (mut ws, res) = bounded(tokio_tungstenite::client_async(
        "ws://ws.example.com/chat",
        tcp,
    ))
    .await
    .unwrap();
    assert_eq!(res.status(), 101);
    ws_exchange(&mut ws).await;
    r.proxy.drain().await;
}

/// A WebSocket over an HTTPS gateway server (`SIMPLE`, a certificate made for the test): the
/// gateway terminates TLS and upgrades the connection to the plaintext echo service.
#[tokio::test]
async fn websocket_over_https_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("gateway test CA");
    let (cert, key) = ca.leaf(&["ws.example.com"], false).write(dir.path(), "ws");
    let server = format!(
        "  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [ws.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}\n"
    );
    let r = start(&ws_config(&[443], ws_echo().await, &server)).await;
    let addr = gw_addr(&r, 443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = bounded(TcpStream::connect(addr)).await.unwrap();
    let name = ServerName::try_from("ws.example.com").unwrap();
    let tls = bounded(connector.connect(name, tcp)).await.unwrap();
    // the TLS stream is already there: the WebSocket handshake runs over it as `ws://`
    let (mut ws, res) = bounded(tokio_tungstenite::client_async(
        "ws://ws.example.com/chat",
        tls,
    ))
    .await
    .unwrap();
    assert_eq!(res.status(), 101);
    ws_exchange(&mut ws).await;
    r.proxy.drain().await;
}

// === HTTPS ===

/// Two HTTPS servers on 443 (`SIMPLE`), each with its certificate, and the VirtualService of
/// both hosts.
fn two_https_servers(dir: &Path, ca: &Pki, mode: &str, extra_tls: &str) -> String {
    let (a_cert, a_key) = ca.leaf(&["httpbin.example.com"], false).write(dir, "a");
    let (b_cert, b_key) = ca.leaf(&["helloworld.example.com"], false).write(dir, "b");
    let ca_file = ca.write(dir, "ca.pem");
    let ca_line = if mode == "MUTUAL" {
        format!("\n      caCertificates: {ca_file}")
    } else {
        String::new()
    };
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mygateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-httpbin, protocol: HTTPS}}
    hosts: [httpbin.example.com]
    tls:
      mode: {mode}
      serverCertificate: {a_cert}
      privateKey: {a_key}{ca_line}{extra_tls}
  - port: {{number: 443, name: https-helloworld, protocol: HTTPS}}
    hosts: [helloworld.example.com]
    tls:
      mode: {mode}
      serverCertificate: {b_cert}
      privateKey: {b_key}{ca_line}{extra_tls}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: both, namespace: default}}
spec:
  hosts: [httpbin.example.com, helloworld.example.com]
  gateways: [mygateway]
  http:
  - route: [{{destination: {{port: {{number: 8000}}, host: httpbin}}}}]
"
    )
}

#[tokio::test]
async fn https_simple_serves_each_server_certificate_by_sni() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("gateway test CA");
    let b = backend("httpbin").await;
    let yaml = format!(
        "{}{}{}",
        gateway_bootstrap(&[443], ""),
        httpbin(&b),
        two_https_servers(dir.path(), &ca, "SIMPLE", "")
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 443);
    // each SNI gets its own server's certificate: rustls checks the name against it
    for host in ["httpbin.example.com", "helloworld.example.com"] {
        let mut tx = tls_h1(addr, host, &ca, None).await.unwrap();
        let res = send(&mut tx, get(host, "/status/200")).await.unwrap();
        assert_eq!(res.status, 200, "{host}");
        assert_eq!(res.backend(), "httpbin");
    }
    // an SNI no server answers: no certificate, the handshake fails (Envoy: no filter chain)
    assert!(tls_h1(addr, "other.example.com", &ca, None).await.is_err());
    // plaintext on the TLS port is not served
    let mut plain = H1::connect(addr).await;
    assert!(
        plain
            .try_send(get("httpbin.example.com", "/status/200"))
            .await
            .is_err()
    );
    r.proxy.drain().await;
}

#[tokio::test]
async fn https_mutual_requires_a_client_certificate_of_the_ca_with_a_listed_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("gateway test CA");
    let stranger = Pki::new("another CA");
    let b = backend("httpbin").await;
    let yaml = format!(
        "{}{}{}",
        gateway_bootstrap(&[443], ""),
        httpbin(&b),
        two_https_servers(
            dir.path(),
            &ca,
            "MUTUAL",
            "\n      subjectAltNames: [client.example.com]"
        )
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 443);
    let host = "httpbin.example.com";
    let good = ca.leaf(&["client.example.com"], true);
    let mut tx = tls_h1(addr, host, &ca, Some(&good)).await.unwrap();
    assert_eq!(
        send(&mut tx, get(host, "/status/200"))
            .await
            .unwrap()
            .status,
        200
    );
    // without a certificate, with one of another CA, or with a name not listed: refused
    // (TLS 1.3 tells the client on its first read)
    let wrong_name = ca.leaf(&["intruder.example.com"], true);
    let foreign = stranger.leaf(&["client.example.com"], true);
    for (what, client) in [
        ("no certificate", None),
        ("a name not in subjectAltNames", Some(&wrong_name)),
        ("another CA", Some(&foreign)),
    ] {
        let refused = match tls_h1(addr, host, &ca, client).await {
            Err(_) => true,
            Ok(mut tx) => send(&mut tx, get(host, "/status/200")).await.is_err(),
        };
        assert!(refused, "{what}: the handshake must fail");
    }
    assert_eq!(b.hits(), 1);
    r.proxy.drain().await;
}

#[tokio::test]
async fn credential_name_reads_the_secret_files_under_credentials_dir() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("gateway test CA");
    let secret = dir.path().join("default").join("httpbin-credential");
    std::fs::create_dir_all(&secret).unwrap();
    let leaf = ca.leaf(&["httpbin.example.com"], false);
    std::fs::write(secret.join("tls.crt"), &leaf.chain).unwrap();
    std::fs::write(secret.join("tls.key"), &leaf.key).unwrap();
    let b = backend("httpbin").await;
    let gw = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [httpbin.example.com]
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
";
    let yaml = format!(
        "{}{}{gw}{}",
        gateway_bootstrap(
            &[443],
            &format!("  credentialsDir: {}\n", dir.path().display())
        ),
        httpbin(&b),
        httpbin_vs("httpbin.example.com", "mygateway")
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 443);
    let mut tx = tls_h1(addr, "httpbin.example.com", &ca, None)
        .await
        .unwrap();
    assert_eq!(
        send(&mut tx, get("httpbin.example.com", "/status/200"))
            .await
            .unwrap()
            .status,
        200
    );

    // a rotated secret: new handshakes get the new certificate (of a new CA here)
    let ca2 = Pki::new("rotated CA");
    let leaf2 = ca2.leaf(&["httpbin.example.com"], false);
    std::fs::write(secret.join("tls.key"), &leaf2.key).unwrap();
    std::fs::write(secret.join("tls.crt"), format!("{}\n", leaf2.chain)).unwrap();
    assert!(r.proxy.state().rotate_certificates());
    assert!(
        tls_h1(addr, "httpbin.example.com", &ca, None)
            .await
            .is_err()
    );
    assert!(
        tls_h1(addr, "httpbin.example.com", &ca2, None)
            .await
            .is_ok()
    );
    r.proxy.drain().await;
}

#[test]
fn credential_name_without_credentials_dir_is_refused_with_its_field() {
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mygateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [httpbin.example.com]
    tls: {{mode: SIMPLE, credentialName: httpbin-credential}}
",
        gateway_bootstrap(&[443], "")
    );
    let compiled = mesh_core::config::load_str("gw.yaml", &yaml).unwrap();
    let err = mesh_proxy::pipeline::build_compiled(compiled).unwrap_err();
    let e = err.errors().next().unwrap();
    assert_eq!(
        e.field.as_ref().unwrap().to_string(),
        "spec.servers[0].tls.credentialName"
    );
    assert!(e.message.contains("credentialsDir"), "{}", e.message);
}

#[test]
fn unsupported_cipher_suites_and_crl_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("gateway test CA");
    for (extra, field) in [
        (
            "\n      cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, AES128-SHA]",
            "spec.servers[0].tls.cipherSuites[1]",
        ),
        (
            "\n      maxProtocolVersion: TLSV1_1",
            "spec.servers[0].tls.maxProtocolVersion",
        ),
    ] {
        let yaml = format!(
            "{}{}",
            gateway_bootstrap(&[443], ""),
            two_https_servers(dir.path(), &ca, "SIMPLE", extra)
        );
        let compiled = mesh_core::config::load_str("gw.yaml", &yaml).unwrap();
        let err = mesh_proxy::pipeline::build_compiled(compiled).unwrap_err();
        let e = err.errors().next().unwrap();
        assert_eq!(e.field.as_ref().unwrap().to_string(), field, "{err}");
    }
    // caCrl: refused by the support table (security fails closed)
    let yaml = format!(
        "{}{}",
        gateway_bootstrap(&[443], ""),
        two_https_servers(dir.path(), &ca, "MUTUAL", "\n      caCrl: /etc/crl.pem")
    );
    let err = mesh_core::config::load_str("gw.yaml", &yaml).unwrap_err();
    assert!(err.to_string().contains("caCrl"), "{err}");
}

#[tokio::test]
async fn reload_swaps_routes_and_refuses_a_new_gateway_port() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend("httpbin").await;
    let other = backend("other").await;
    let file = dir.path().join("mesh.yaml");
    let gw = |port: u16| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: httpbin-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [\"*\"]
"
        )
    };
    let other_se = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: other, namespace: default}}
spec:
  hosts: [other.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
",
        other.port()
    );
    let base = format!(
        "{}{}{other_se}",
        gateway_bootstrap(&[80, 8080], ""),
        httpbin(&b)
    );
    write(
        &file,
        &format!(
            "{base}{}{}",
            gw(80),
            httpbin_vs("httpbin.example.com", "httpbin-gateway")
        ),
    );
    let r = start_files(vec![file.clone()]).await;
    let addr = gw_addr(&r, 80);
    let mut c = H1::connect(addr).await;
    assert_eq!(
        c.send(get("httpbin.example.com", "/status/200"))
            .await
            .backend(),
        "httpbin"
    );
    // new routes: applied live
    let moved = httpbin_vs("httpbin.example.com", "httpbin-gateway")
        .replace("host: httpbin}", "host: other}");
    write(&file, &format!("{base}{}{moved}", gw(80)));
    r.proxy.reload().unwrap();
    assert_eq!(
        c.send(get("httpbin.example.com", "/status/200"))
            .await
            .backend(),
        "other"
    );
    // a new gateway port: refused, the running configuration stays
    write(
        &file,
        &format!(
            "{base}{}{}",
            gw(8080),
            httpbin_vs("httpbin.example.com", "httpbin-gateway")
        ),
    );
    let err = r.proxy.reload().unwrap_err().to_string();
    assert!(err.contains("restart"), "{err}");
    assert_eq!(
        c.send(get("httpbin.example.com", "/status/200"))
            .await
            .backend(),
        "other"
    );
    r.proxy.drain().await;
}

// === JWT claim based routing ===

/// An ES256 key made at test time, its JWKS and tokens.
struct JwtKey(ring::signature::EcdsaKeyPair);

impl JwtKey {
    fn new() -> JwtKey {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        JwtKey(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        )
    }

    fn jwks(&self) -> String {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let p = self.0.public_key().as_ref();
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
            "x": b64.encode(&p[1..33]), "y": b64.encode(&p[33..]),
        }]})
        .to_string()
    }

    fn sign(&self, claims: serde_json::Value) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let signed = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let sig = self
            .0
            .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", b64.encode(sig.as_ref()))
    }
}

#[tokio::test]
async fn jwt_claim_based_routing_on_the_ingress_gateway() {
    // istio.io "JWT claim based routing": a RequestAuthentication on the ingress gateway,
    // a VirtualService routing `/headers` only for tokens whose `groups` holds `group1`
    let key = JwtKey::new();
    let b = backend("httpbin").await;
    let iss = "testing@secure.istio.io";
    let yaml = format!(
        "{}{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: httpbin-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [\"*\"]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ingress-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {iss}
    jwks: '{}'
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [\"*\"]
  gateways: [httpbin-gateway]
  http:
  - match:
    - uri: {{prefix: /headers}}
      headers:
        \"@request.auth.claims.groups\": {{exact: group1}}
    route: [{{destination: {{port: {{number: 8000}}, host: httpbin}}}}]
",
        gateway_bootstrap(&[80], ""),
        httpbin(&b),
        key.jwks()
    );
    let r = start(&yaml).await;
    let mut c = H1::connect(gw_addr(&r, 80)).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let with = |groups: serde_json::Value| {
        let token =
            key.sign(serde_json::json!({"iss": iss, "sub": iss, "exp": exp, "groups": groups}));
        Request::builder()
            .uri("/headers")
            .header("host", "httpbin.example.com")
            .header("authorization", format!("Bearer {token}"))
            .body(full(""))
            .unwrap()
    };
    let routed = c.send(with(serde_json::json!(["group1", "group2"]))).await;
    assert_eq!(routed.status, 200);
    assert_eq!(routed.backend(), "httpbin");
    let other = c.send(with(serde_json::json!(["group2"]))).await;
    assert_eq!(other.status, 404, "a token without the claim: no route");
    let none = c.send(get("httpbin.example.com", "/headers")).await;
    assert_eq!(none.status, 404, "no token: no route");
    let bad = c
        .send(
            Request::builder()
                .uri("/headers")
                .header("host", "httpbin.example.com")
                .header("authorization", "Bearer not.a.token")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(
        bad.status, 401,
        "an invalid token is refused by RequestAuthentication"
    );
    assert_eq!(b.hits(), 1);
    r.proxy.drain().await;
}

/// An upstream that answers with the forwarding headers it received, as JSON.
fn forwarding_headers_echo() -> Handler {
    Arc::new(|req: Request<hyper::body::Incoming>| {
        let h = req.headers();
        let get = |n: &str| {
            let all: Vec<&str> = h.get_all(n).iter().map(|v| v.to_str().unwrap()).collect();
            (!all.is_empty()).then(|| all.join(" | "))
        };
        let seen = serde_json::json!({
            "xff": get("x-forwarded-for"),
            "xfp": get("x-forwarded-proto"),
            "external": get("x-envoy-external-address"),
            "request_id": get("x-request-id"),
        });
        Box::pin(async move {
            let mut res = http::Response::new(full(seen.to_string()));
            res.headers_mut()
                .insert("server", "gunicorn/19.9.0".parse().unwrap());
            res
        })
    })
}

/// Istio's gateways run Envoy with `use_remote_address`: every request is external, the
/// client's address is appended to `x-forwarded-for`, `x-forwarded-proto` is the
/// connection's scheme, `x-envoy-external-address` the client's address, and a client's
/// `x-request-id` is replaced (checked against envoy 1.40); the client sees
/// `server: istio-envoy`, not the application's.
#[tokio::test]
async fn the_application_behind_the_gateway_sees_the_client_as_behind_istios() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("gateway test CA");
    let b = backend_with("httpbin", forwarding_headers_echo()).await;
    let plain = HTTPBIN_GATEWAY;
    let yaml = format!(
        "{}{}{plain}{}{}",
        gateway_bootstrap(&[80, 443], ""),
        httpbin(&b),
        httpbin_vs("httpbin.example.com", "httpbin-gateway"),
        two_https_servers(dir.path(), &ca, "SIMPLE", "")
    );
    let r = start(&yaml).await;
    let seen = |reply: &Reply| -> serde_json::Value {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.headers["server"], "istio-envoy", "{reply:?}");
        serde_json::from_str(&reply.body).unwrap()
    };
    let mut c = H1::connect(gw_addr(&r, 80)).await;
    let mut req = get("httpbin.example.com", "/status/200");
    let h = req.headers_mut();
    h.append("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
    h.append("x-forwarded-for", "9.9.9.9".parse().unwrap());
    h.insert("x-forwarded-proto", "https".parse().unwrap());
    h.insert("x-envoy-external-address", "6.6.6.6".parse().unwrap());
    h.insert("x-request-id", "from-the-client".parse().unwrap());
    let v = seen(&c.send(req).await);
    assert_eq!(v["xff"], "1.2.3.4, 5.6.7.8,9.9.9.9,127.0.0.1");
    assert_eq!(
        v["xfp"], "http",
        "the connection's scheme, not the client's word"
    );
    assert_eq!(v["external"], "127.0.0.1");
    let id = v["request_id"].as_str().unwrap();
    assert_ne!(id, "from-the-client");
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
    // without forwarding headers: the client's address alone
    let v = seen(&c.send(get("httpbin.example.com", "/status/200")).await);
    assert_eq!(v["xff"], "127.0.0.1");
    // over TLS: https
    let host = "httpbin.example.com";
    let mut tx = tls_h1(gw_addr(&r, 443), host, &ca, None).await.unwrap();
    let v = seen(&send(&mut tx, get(host, "/status/200")).await.unwrap());
    assert_eq!(v["xfp"], "https");
    assert_eq!(v["xff"], "127.0.0.1");
    r.proxy.drain().await;
}
