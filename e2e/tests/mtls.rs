//! The sidecar's inbound side with mTLS (istio.io/latest/docs/tasks/security/authentication/
//! authn-policy): PeerAuthentication `STRICT` and `PERMISSIVE` on the inbound listener, the
//! client's identity handed to the application in `x-forwarded-client-cert`, certificate
//! rotation without a restart, and a `STRICT` policy without an identity refused. Real sockets
//! on port 0, certificates made at test time by the mesh CA.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_tls::ca::MeshCa;
use mesh_tls::config::TlsMaterial;
use mesh_tls::verify::Accept;
use rustls::pki_types::ServerName;
use support::mtls::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The local application: answers with the `x-forwarded-client-cert` it received (or `-`).
async fn app() -> Backend {
    let handler: Handler = Arc::new(|req: Request<Incoming>| {
        let xfcc = req
            .headers()
            .get("x-forwarded-client-cert")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "-".into());
        Box::pin(async move { Response::new(full(xfcc)) })
    });
    backend_with("app", handler).await
}

const STRICT: &str = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
";

/// A GET over mTLS; returns the body, or the error.
async fn get_tls(
    addr: std::net::SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    headers: &[(&str, &str)],
) -> Result<(String, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("reviews.default.svc.cluster.local").unwrap();
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let server_cert = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder().uri("/").header("host", "reviews");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Ok((String::from_utf8_lossy(&body).into_owned(), server_cert))
}

/// A plaintext GET; `None` when the connection closed without an answer.
async fn get_plain(addr: std::net::SocketAddr, headers: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n{headers}\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return None;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the listener answers or closes");
    let text = String::from_utf8_lossy(&out).into_owned();
    text.starts_with("HTTP/1.1").then_some(text)
}

#[tokio::test]
async fn strict_serves_mtls_clients_with_their_identity_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let p = start(&reviews_config(dir.path(), &ca, &app, STRICT)).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let (body, _) = get_tls(
        inbound,
        &client_tls(&ca, "productpage"),
        &[("x-forwarded-client-cert", "By=forged")],
    )
    .await
    .unwrap();
    assert!(
        body.starts_with("By=spiffe://cluster.local/ns/default/sa/reviews;Hash="),
        "{body}"
    );
    assert!(
        body.ends_with(";Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "{body}"
    );
    assert!(!body.contains("forged"));
    assert_eq!(get_plain(inbound, "").await, None, "plaintext is refused");
    // a client of another CA cannot connect
    let rogue = MeshCa::generate(TD).unwrap();
    let rogue_client = {
        let c = rogue
            .issue(&id("productpage"), Duration::from_secs(60))
            .unwrap();
        let both = format!("{}{}", ca.cert_pem(), rogue.cert_pem());
        let m = TlsMaterial::from_pem(&c.chain_pem, &c.key_pem, &both).unwrap();
        tokio_rustls::TlsConnector::from(m.client_config(Accept::trust_domain(TD), false).unwrap())
    };
    assert!(get_tls(inbound, &rogue_client, &[]).await.is_err());
    assert_eq!(
        app.hits(),
        1,
        "only the mTLS request reached the application"
    );
}

#[tokio::test]
async fn permissive_serves_both_and_never_forwards_a_plaintext_client_s_xfcc() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    // no PeerAuthentication: Istio's default, PERMISSIVE
    let p = start(&reviews_config(dir.path(), &ca, &app, "")).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let (body, _) = get_tls(inbound, &client_tls(&ca, "productpage"), &[])
        .await
        .unwrap();
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "{body}"
    );
    let plain = get_plain(inbound, "x-forwarded-client-cert: URI=spiffe://forged\r\n")
        .await
        .expect("plaintext is served");
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert!(
        plain.ends_with("\r\n\r\n-"),
        "no client certificate, no XFCC: {plain}"
    );
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let p = start(&reviews_config(dir.path(), &ca, &app, STRICT)).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let tls = client_tls(&ca, "productpage");
    let (_, first) = get_tls(inbound, &tls, &[]).await.unwrap();
    assert!(
        !p.proxy.state().rotate_certificates(),
        "nothing changed yet"
    );
    // `mesh-proxy ca rotate` writes the key, then the chain
    let new = ca.issue(&id("reviews"), Duration::from_secs(7200)).unwrap();
    std::fs::write(dir.path().join("reviews.key"), &new.key_pem).unwrap();
    std::fs::write(dir.path().join("reviews.pem"), &new.chain_pem).unwrap();
    assert!(p.proxy.state().rotate_certificates());
    let (_, second) = get_tls(inbound, &tls, &[]).await.unwrap();
    assert_ne!(first, second, "the new certificate is served");
    let leaf = mesh_tls::config::certs(&new.chain_pem).unwrap();
    assert_eq!(second, leaf[0].to_vec());
}

#[tokio::test]
async fn strict_without_an_identity_refuses_the_configuration() {
    let app = app().await;
    let yaml = format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: e2e}}
spec:
  workload: {{name: reviews-v1, namespace: default}}
  inbound: {{address: 127.0.0.1, port: 0, localApp: '127.0.0.1:{}'}}
  admin: {{address: 127.0.0.1, port: 0}}
{STRICT}",
        app.port()
    );
    let compiled = mesh_core::config::load_str("e2e.yaml", &yaml).unwrap();
    let err = mesh_proxy::proxy::Proxy::start_compiled(compiled, Vec::new()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("e2e.yaml:") && text.contains("PeerAuthentication/istio-system/default: spec.mtls.mode: STRICT mTLS applies to this workload (default/reviews-v1) but ProxyBootstrap spec.identity is not set"),
        "{text}"
    );
}

#[tokio::test]
async fn auto_mtls_between_two_sidecars_carries_the_caller_s_identity_to_the_application() {
    let (server_dir, client_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let server = start(&reviews_config(server_dir.path(), &ca, &app, STRICT)).await;
    let inbound = server.proxy.inbound_addr().unwrap();

    let client = start(&client_proxy(
        client_dir.path(),
        &ca,
        inbound,
        "reviews",
        true,
        "",
    ))
    .await;
    let r = get_once(client.out, "reviews:9080", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body
            .starts_with("By=spiffe://cluster.local/ns/default/sa/reviews;Hash=")
            && r.body
                .ends_with("URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "{}",
        r.body
    );
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn a_server_that_is_not_the_endpoint_s_service_account_is_refused_uf() {
    let (server_dir, client_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let server = start(&reviews_config(server_dir.path(), &ca, &app, STRICT)).await;
    let inbound = server.proxy.inbound_addr().unwrap();
    // the registry says the endpoint runs as `ratings`; the server's certificate is `reviews`
    let client = start(&client_proxy(
        client_dir.path(),
        &ca,
        inbound,
        "ratings",
        true,
        "",
    ))
    .await;
    let r = get_once(client.out, "reviews:9080", &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    // a failed handshake is a connect failure, retried by Istio's default policy until the
    // attempts run out
    assert_eq!(r.flags(), "URX,UF");
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn without_a_sidecar_label_or_with_tls_disable_the_request_is_plaintext() {
    let (server_dir, client_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    // a PERMISSIVE server tells plaintext (no XFCC) from mTLS
    let server = start(&reviews_config(server_dir.path(), &ca, &app, "")).await;
    let inbound = server.proxy.inbound_addr().unwrap();
    let no_label = start(&client_proxy(
        client_dir.path(),
        &ca,
        inbound,
        "reviews",
        false,
        "",
    ))
    .await;
    let r = get_once(no_label.out, "reviews:9080", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "-"),
        "plaintext: {r:?}"
    );
    let disable = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
";
    let dir2 = tempfile::tempdir().unwrap();
    let disabled = start(&client_proxy(
        dir2.path(),
        &ca,
        inbound,
        "reviews",
        true,
        disable,
    ))
    .await;
    let r = get_once(disabled.out, "reviews:9080", &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "-"),
        "tls DISABLE: {r:?}"
    );
}

#[tokio::test]
async fn istio_mutual_without_an_identity_refuses_the_configuration() {
    let yaml = "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {name: e2e}
spec:
  outbound: {address: 127.0.0.1, port: 0}
  admin: {address: 127.0.0.1, port: 0}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
";
    let compiled = mesh_core::config::load_str("e2e.yaml", yaml).unwrap();
    let err = mesh_proxy::proxy::Proxy::start_compiled(compiled, Vec::new()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("DestinationRule/default/reviews: spec.subsets[0].trafficPolicy.tls.mode: ISTIO_MUTUAL needs the workload's certificate"),
        "{text}"
    );
}

#[tokio::test]
async fn istio_mutual_subject_alt_names_replace_the_endpoint_s_service_account() {
    // Istio: the DestinationRule's subjectAltNames are the SANs the server must carry
    let (server_dir, client_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let server = start(&reviews_config(server_dir.path(), &ca, &app, STRICT)).await;
    let inbound = server.proxy.inbound_addr().unwrap();
    let dr = |san: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: ['spiffe://cluster.local/ns/default/sa/{san}']}}
"
        )
    };
    // the registry's account (reviews) is right, but the DestinationRule expects ratings
    let client = start(&client_proxy(
        client_dir.path(),
        &ca,
        inbound,
        "reviews",
        true,
        &dr("ratings"),
    ))
    .await;
    let r = get_once(client.out, "reviews:9080", &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.flags(), "URX,UF", "{r:?}");
    assert_eq!(app.hits(), 0);
    // Envoy 1.40's body for a failed connection, retried under Istio's default policy
    assert_eq!(
        r.body,
        "upstream connect error or disconnect/reset before headers. retried and the latest \
         reset reason: remote connection failure",
        "{r:?}"
    );
    // the registry's account is wrong, the DestinationRule names the server's identity
    let dir2 = tempfile::tempdir().unwrap();
    let client = start(&client_proxy(
        dir2.path(),
        &ca,
        inbound,
        "ratings",
        true,
        &dr("reviews"),
    ))
    .await;
    let r = get_once(client.out, "reviews:9080", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn service_entry_subject_alt_names_are_identities_expected_with_auto_mtls() {
    // Istio: a service's accounts are its ServiceEntry's subjectAltNames and its endpoints'
    // service accounts; the server must be one of them
    let (server_dir, client_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let server = start(&reviews_config(server_dir.path(), &ca, &app, STRICT)).await;
    let inbound = server.proxy.inbound_addr().unwrap();
    let with_sans = |dir: &Path, san: &str| {
        client_proxy(dir, &ca, inbound, "ratings", true, "").replace(
            "  location: MESH_INTERNAL\n",
            &format!(
                "  location: MESH_INTERNAL\n  subjectAltNames: ['spiffe://cluster.local/ns/default/sa/{san}']\n"
            ),
        )
    };
    let client = start(&with_sans(client_dir.path(), "reviews")).await;
    let r = get_once(client.out, "reviews:9080", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let dir2 = tempfile::tempdir().unwrap();
    let client = start(&with_sans(dir2.path(), "details")).await;
    let r = get_once(client.out, "reviews:9080", &[]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.flags(), "URX,UF", "{r:?}");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let p = start(&reviews_config(dir.path(), &ca, &app, STRICT)).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let old = ca
        .issue_between(&id("productpage"), now - 2 * day, now - day)
        .unwrap();
    let m = TlsMaterial::from_pem(&old.chain_pem, &old.key_pem, ca.cert_pem()).unwrap();
    let expired = tokio_rustls::TlsConnector::from(
        m.client_config(Accept::trust_domain(TD).identities([id("reviews")]), false)
            .unwrap(),
    );
    assert!(get_tls(inbound, &expired, &[]).await.is_err());
    assert_eq!(app.hits(), 0);
    // the same client with a current certificate is served
    get_tls(inbound, &client_tls(&ca, "productpage"), &[])
        .await
        .unwrap();
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn a_garbage_client_hello_closes_that_connection_and_the_listener_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let p = start(&reviews_config(dir.path(), &ca, &app, STRICT)).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    // a handshake record whose body is not a ClientHello, then a truncated one
    let garbage: [&[u8]; 2] = [
        b"\x16\x03\x01\x00\x10this is no hello",
        b"\x16\x03\x01\xff\xff\x01\x00",
    ];
    for bytes in garbage {
        let mut s = tokio::net::TcpStream::connect(inbound).await.unwrap();
        s.write_all(bytes).await.unwrap();
        if bytes.len() < 10 {
            // the record announces more than was sent: end the stream
            s.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        let read = bounded(s.read_to_end(&mut out)).await;
        // closed (an alert at most, never an HTTP answer)
        assert!(read.is_err() || !String::from_utf8_lossy(&out).contains("HTTP/"));
    }
    let (body, _) = get_tls(inbound, &client_tls(&ca, "productpage"), &[])
        .await
        .unwrap();
    assert!(body.starts_with("By="), "{body}");
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_at_the_tls_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    // `limits` continues the bootstrap's spec
    let extra = format!("  limits: {{tlsHandshakeTimeout: 100ms}}\n{STRICT}");
    let p = start(&reviews_config(dir.path(), &ca, &app, &extra)).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let mut s = tokio::net::TcpStream::connect(inbound).await.unwrap();
    // the start of a ClientHello, and then nothing: the proxy must not wait for ever (the
    // test's own bound is 10 s, a hundred times the timeout)
    s.write_all(b"\x16\x03\x01\x00\xc8\x01\x00").await.unwrap();
    let mut buf = [0u8; 64];
    let n = bounded(s.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the proxy closed the connection: {n:?}"
    );
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn rotation_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let p = start(&reviews_config(dir.path(), &ca, &app, STRICT)).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let tls = client_tls(&ca, "productpage");
    // a client loop: a new connection (a new handshake) per request; it reports each
    // success and stops at the first failure
    let (done_tx, mut done) = tokio::sync::watch::channel(0usize);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (tls, stop) = (tls.clone(), stop.clone());
        tokio::spawn(async move {
            let mut served = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (_, cert) = get_tls(inbound, &tls, &[]).await?;
                if served.last() != Some(&cert) {
                    served.push(cert);
                }
                done_tx.send_modify(|n| *n += 1);
            }
            Ok::<_, String>(served)
        })
    };
    // and an established connection that lives on across the rotations
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let name = ServerName::try_from("reviews.default.svc.cluster.local").unwrap();
    let stream = tls.connect(name, tcp).await.unwrap();
    let (mut kept, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut kept_get = async || {
        let req = Request::builder()
            .uri("/")
            .header("host", "reviews")
            .body(Empty::<Bytes>::new())
            .unwrap();
        kept.send_request(req).await.unwrap().status()
    };
    assert_eq!(kept_get().await, 200);
    let wait_for = async |done: &mut tokio::sync::watch::Receiver<usize>, more: usize| {
        let target = *done.borrow() + more;
        bounded(done.wait_for(|n| *n >= target))
            .await
            .expect("the client loop stopped: a request failed");
    };
    wait_for(&mut done, 3).await;
    let mut last = None;
    for _ in 0..3 {
        // `mesh-proxy ca rotate` writes the key, then the chain: in between, the files do not
        // match and the proxy keeps the current pair
        let new = ca.issue(&id("reviews"), Duration::from_secs(7200)).unwrap();
        std::fs::write(dir.path().join("reviews.key"), &new.key_pem).unwrap();
        p.proxy.state().rotate_certificates();
        wait_for(&mut done, 3).await;
        std::fs::write(dir.path().join("reviews.pem"), &new.chain_pem).unwrap();
        assert!(p.proxy.state().rotate_certificates());
        wait_for(&mut done, 3).await;
        assert_eq!(kept_get().await, 200, "the established connection lives on");
        last = Some(new);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let served = bounded(client)
        .await
        .unwrap()
        .expect("every request succeeded");
    let leaf = mesh_tls::config::certs(&last.unwrap().chain_pem).unwrap();
    assert_eq!(
        served.last(),
        Some(&leaf[0].to_vec()),
        "the last certificate is served"
    );
    assert!(served.len() >= 2, "rotations were seen by the client loop");
}

#[tokio::test]
async fn port_level_mtls_sets_the_mode_of_each_inbound_port() {
    // istio.io task "Enable mutual TLS per port": a workload policy STRICT with port-level
    // exceptions; here the application's main port stays STRICT, a second port is
    // PERMISSIVE and a third DISABLE (each with its own listener: `inboundPorts`)
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let (main, second, third) = (app().await, app().await, app().await);
    let (b, c) = (second.port(), third.port());
    let extra = format!(
        "  inboundPorts: {{'{b}': 0, '{c}': 0}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: reviews, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  mtls: {{mode: STRICT}}
  portLevelMtls:
    {b}: {{mode: PERMISSIVE}}
    {c}: {{mode: DISABLE}}
"
    );
    let p = start(&reviews_config(dir.path(), &ca, &main, &extra)).await;
    let tls = client_tls(&ca, "productpage");
    let inbound = p.proxy.inbound_addr().unwrap();
    let (on_b, on_c) = (
        p.proxy.inbound_port_addr(b).unwrap(),
        p.proxy.inbound_port_addr(c).unwrap(),
    );
    // the main port: STRICT
    assert_eq!(get_plain(inbound, "").await, None);
    assert!(
        get_tls(inbound, &tls, &[])
            .await
            .unwrap()
            .0
            .starts_with("By=")
    );
    // PERMISSIVE: both, and each request reaches the application's port b
    assert!(get_plain(on_b, "").await.unwrap().ends_with("\r\n\r\n-"));
    let (body, _) = get_tls(on_b, &tls, &[]).await.unwrap();
    assert!(
        body.ends_with("URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "{body}"
    );
    assert_eq!(second.hits(), 2);
    // DISABLE: plaintext only
    assert!(get_plain(on_c, "").await.is_some());
    assert!(get_tls(on_c, &tls, &[]).await.is_err());
    assert_eq!((main.hits(), third.hits()), (1, 1));
}

#[tokio::test]
async fn port_level_strict_without_an_identity_refuses_the_configuration() {
    let app = app().await;
    let yaml = format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: e2e}}
spec:
  workload: {{name: reviews-v1, namespace: default, labels: {{app: reviews}}}}
  inbound: {{address: 127.0.0.1, port: 0, localApp: '127.0.0.1:{port}'}}
  admin: {{address: 127.0.0.1, port: 0}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: reviews, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  portLevelMtls:
    {port}: {{mode: STRICT}}
",
        port = app.port()
    );
    let compiled = mesh_core::config::load_str("e2e.yaml", &yaml).unwrap();
    let err = mesh_proxy::proxy::Proxy::start_compiled(compiled, Vec::new()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "PeerAuthentication/default/reviews: spec.portLevelMtls.{}.mode: STRICT mTLS applies to port",
            app.port()
        )),
        "{text}"
    );
}

#[tokio::test]
async fn port_level_mtls_for_a_port_without_a_listener_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let app = app().await;
    let extra = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  portLevelMtls:
    1: {mode: DISABLE}
";
    let yaml = reviews_config(dir.path(), &ca, &app, extra);
    let compiled = mesh_core::config::load_str("e2e.yaml", &yaml).unwrap();
    let built = mesh_proxy::pipeline::build_compiled(compiled).unwrap();
    let w: Vec<String> = built
        .compiled
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        w.iter().any(
            |d| d.contains("PeerAuthentication/default/reviews: spec.portLevelMtls.1")
                && d.contains("no inbound listener of this proxy serves workload port 1")
        ),
        "{w:?}"
    );
}
