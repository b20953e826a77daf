//! Gateway `TLS` servers end to end, on real sockets with certificates made at test time:
//! a server that terminates TLS (`SIMPLE`, `MUTUAL`) and routes the plaintext with the bound
//! VirtualServices' `tcp` routes, and an `AUTO_PASSTHROUGH` server (Istio's east-west
//! gateway) that routes by the SNI's cluster name `outbound_.<port>_.<subset>_.<host>` with
//! the client's TLS untouched.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::identity::SpiffeId;
use mesh_tls::ca::MeshCa;
use mesh_tls::config::TlsMaterial;
use mesh_tls::verify::Accept;

use rustls::pki_types::ServerName;
use support::l4::{echo_server, tcp_echo_entry, tcp_echo_shifting, tls_server_also, tls_through};
use support::mtls::TD;
use support::pki::{Leaf, Pki};
use support::{Running, admin_get, bounded, gateway_bootstrap, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn gw_addr(r: &Running, port: u16) -> SocketAddr {
    r.proxy
        .gateway_addr(port)
        .unwrap_or_else(|| panic!("a gateway listener for port {port}"))
}

/// The sum of the gateway's (`reporter="source"`) TCP series of `name` with response flags
/// `flags`.
fn tcp_stat(text: &str, name: &str, flags: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .filter(|l| l.contains("reporter=\"source\""))
        .filter(|l| l.contains(&format!("response_flags=\"{flags}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One TLS connection to `addr` with SNI `sni`, trusting `ca`, presenting `client` if
/// given: sends `data`, closes its side, reads to the end. `Err`: the handshake or the
/// exchange failed.
async fn tls_exchange(
    addr: SocketAddr,
    sni: &str,
    ca: &Pki,
    client: Option<&Leaf>,
    data: &[u8],
) -> Result<Vec<u8>, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client_config(client)));
    exchange_over(&connector, addr, sni, data).await
}

/// [`tls_exchange`] with `connector`.
async fn exchange_over(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
    data: &[u8],
) -> Result<Vec<u8>, std::io::Error> {
    bounded(async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let mut s = connector.connect(name, tcp).await?;
        s.write_all(data).await?;
        s.shutdown().await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        Ok(got)
    })
    .await
}

/// The gateway's `istio_tcp_connections_opened_total` with response flags `flags`.
async fn opened(r: &Running, flags: &str) -> f64 {
    let (_, text) = admin_get(r.admin, "/stats/prometheus").await;
    tcp_stat(&text, "istio_tcp_connections_opened_total", flags)
}

/// The ALPN protocol the server at `addr` chose for a client configured as `cfg` (SNI
/// `tcp-echo.example.com`).
async fn alpn_chosen(addr: SocketAddr, cfg: rustls::ClientConfig) -> Option<Vec<u8>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    bounded(async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("tcp-echo.example.com").unwrap();
        let s = connector.connect(name, tcp).await.unwrap();
        s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    })
    .await
}

/// A `TLS` server on 31400 terminating TLS for `tcp-echo.example.com` (`tls` is its
/// settings, flow style), and the bound VirtualService's `tcp` route: tcp-echo v1/v2 by
/// weight.
fn tls_termination(tls: &str, v1: u32, v2: u32) -> String {
    tcp_echo_shifting(
        &format!(
            "  - port: {{number: 31400, name: tls, protocol: TLS}}\n    hosts: [tcp-echo.example.com]\n    tls: {tls}\n"
        ),
        "tcp-echo.example.com",
        v1,
        v2,
    )
}

/// Writes the secret `default/<name>` (`tls.crt`, `tls.key`) under `dir`.
fn write_secret(dir: &Path, name: &str, leaf: &Leaf) {
    let secret = dir.join("default").join(name);
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("tls.key"), &leaf.key).unwrap();
    std::fs::write(secret.join("tls.crt"), &leaf.chain).unwrap();
}

/// A `TLS` server in `SIMPLE` mode (its certificate from `credentialName`) terminates TLS
/// and routes the plaintext by the `tcp` route's weights; the backends see plaintext (the
/// echo answers what the client sent inside TLS); every routed connection is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_tls_server_terminates_and_routes_the_plaintext_by_tcp_routes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("gateway test CA");
    write_secret(
        dir.path(),
        "tcp-echo-credential",
        &ca.leaf(&["tcp-echo.example.com"], false),
    );
    let v1 = echo_server("one").await;
    let v2 = echo_server("two").await;
    let yaml = format!(
        "{}{}{}",
        gateway_bootstrap(
            &[31400],
            &format!("  credentialsDir: {}\n", dir.path().display())
        ),
        tcp_echo_entry(&[("v1", v1), ("v2", v2)]),
        tls_termination(
            "{mode: SIMPLE, credentialName: tcp-echo-credential}",
            80,
            20
        )
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 31400);
    let n = 200;
    let mut two = 0;
    for _ in 0..n {
        let got = tls_exchange(addr, "tcp-echo.example.com", &ca, None, b"hello\n")
            .await
            .unwrap();
        match &got[..] {
            b"one hello\none bye" => {}
            b"two hello\ntwo bye" => two += 1,
            other => panic!("unexpected answer {:?}", String::from_utf8_lossy(other)),
        }
    }
    // binomial(200, 0.2): mean 40, sd 5.7; ±4 sd
    assert!((17..=63).contains(&two), "v2 got {two} of {n} connections");
    // plaintext on the TLS port: the handshake fails, nothing reaches a backend
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"hello\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = bounded(plain.read_to_end(&mut rest)).await;
    assert!(!rest.starts_with(b"one") && !rest.starts_with(b"two"));
    // an SNI no server names: no certificate, no connection
    assert!(
        tls_exchange(addr, "other.example.com", &ca, None, b"x")
            .await
            .is_err()
    );
    let (_, text) = admin_get(r.admin, "/stats/prometheus").await;
    let opened = tcp_stat(&text, "istio_tcp_connections_opened_total", "-");
    assert_eq!(opened, f64::from(n), "{text}");
    // both directions' plaintext bytes: "hello\n" up, "one hello\none bye" down
    let received = tcp_stat(&text, "istio_tcp_received_bytes_total", "-");
    assert_eq!(received, f64::from(n) * 6.0, "{text}");
    // a client offering HTTP's ALPN: none is chosen (what follows is not HTTP's business)
    let mut cfg = ca.client_config(None);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    assert_eq!(alpn_chosen(addr, cfg).await, None);

    // a rotated secret: new handshakes get the new certificate (of a new CA)
    let ca2 = Pki::new("rotated CA");
    write_secret(
        dir.path(),
        "tcp-echo-credential",
        &ca2.leaf(&["tcp-echo.example.com"], false),
    );
    assert!(r.proxy.state().rotate_certificates());
    let host = "tcp-echo.example.com";
    assert!(tls_exchange(addr, host, &ca, None, b"x").await.is_err());
    let got = tls_exchange(addr, host, &ca2, None, b"x").await.unwrap();
    assert!(got.ends_with(b" bye"), "{got:?}");
    r.proxy.drain().await;
}

/// A `TLS` server in `MUTUAL` mode: a client without a certificate, or with one of another
/// CA, is refused before anything is routed; one with a certificate of the CA gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_server_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("gateway test CA");
    let stranger = Pki::new("another CA");
    let (cert, key) = ca
        .leaf(&["tcp-echo.example.com"], false)
        .write(dir.path(), "server");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let v1 = echo_server("one").await;
    let yaml = format!(
        "{}{}{}",
        gateway_bootstrap(&[31400], ""),
        tcp_echo_entry(&[("v1", v1)]),
        tls_termination(
            &format!(
                "{{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca_file}}}"
            ),
            100,
            0
        )
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 31400);
    let host = "tcp-echo.example.com";
    let good = ca.leaf(&["client.example.com"], true);
    let got = tls_exchange(addr, host, &ca, Some(&good), b"hi")
        .await
        .unwrap();
    assert_eq!(got, b"one hione bye");
    let foreign = stranger.leaf(&["client.example.com"], true);
    for (what, client) in [("no certificate", None), ("another CA", Some(&foreign))] {
        // TLS 1.3 tells the client on its first read
        let got = tls_exchange(addr, host, &ca, client, b"hi").await;
        assert!(
            got.as_ref().is_err() || got.as_ref().is_ok_and(Vec::is_empty),
            "{what}: {got:?}"
        );
    }
    assert_eq!(opened(&r, "-").await, 1.0);
    // a reload to SIMPLE (the same listener): new handshakes need no client certificate
    let simple = yaml.replace("{mode: MUTUAL,", "{mode: SIMPLE,");
    assert_ne!(simple, yaml);
    let compiled = mesh_core::config::load_str("e2e.yaml", &simple).unwrap();
    r.proxy.state().apply(compiled).unwrap();
    let got = tls_exchange(addr, host, &ca, None, b"hi").await.unwrap();
    assert_eq!(got, b"one hione bye");
    r.proxy.drain().await;
}

/// A `TLS` server in `ISTIO_MUTUAL` mode serves the gateway's own mesh certificate and
/// routes a mesh client's plaintext by the `tcp` routes; plaintext is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_mutual_tls_server_serves_the_gateway_identity_to_mesh_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = MeshCa::generate(TD).unwrap();
    let gw_id = SpiffeId::new(TD, "istio-system", "istio-ingressgateway");
    let hour = Duration::from_secs(3600);
    let cert = mesh.issue(&gw_id, hour).unwrap();
    let d = dir.path();
    std::fs::write(d.join("gw.pem"), &cert.chain_pem).unwrap();
    std::fs::write(d.join("gw.key"), &cert.key_pem).unwrap();
    std::fs::write(d.join("ca.pem"), mesh.cert_pem()).unwrap();
    let identity = format!(
        "  identity:
    spiffeId: {gw_id}
    certificateChain: {d}/gw.pem
    privateKey: {d}/gw.key
    trustBundle: {d}/ca.pem
",
        d = d.display()
    );
    let v1 = echo_server("one").await;
    let yaml = format!(
        "{}{}{}",
        gateway_bootstrap(&[31400], &identity),
        tcp_echo_entry(&[("v1", v1)]),
        tls_termination("{mode: ISTIO_MUTUAL}", 100, 0)
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 31400);
    // a mesh client (sleep) that accepts the gateway's identity only
    let c = mesh.issue(&support::mtls::id("sleep"), hour).unwrap();
    let m = TlsMaterial::from_pem(&c.chain_pem, &c.key_pem, mesh.cert_pem()).unwrap();
    let cfg = m
        .client_config(Accept::trust_domain(TD).identities([gw_id.clone()]), false)
        .unwrap();
    let mut h2 = (*cfg).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    assert_eq!(alpn_chosen(addr, h2).await, None);
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let got = exchange_over(&connector, addr, "tcp-echo.example.com", b"hi")
        .await
        .unwrap();
    assert_eq!(got, b"one hione bye");
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"hello\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = bounded(plain.read_to_end(&mut rest)).await;
    assert!(!rest.starts_with(b"one"), "{rest:?}");
    r.proxy.drain().await;
}

// === AUTO_PASSTHROUGH ===

/// The SNI a sidecar sends to reach `reviews:9443` subset `subset` through an east-west
/// gateway.
fn sni(subset: &str) -> String {
    format!("outbound_.9443_.{subset}_.reviews.default.svc.cluster.local")
}

/// Istio's east-west gateway (`AUTO_PASSTHROUGH` on 15443, hosts `*.local`), `reviews` on
/// 9443 with endpoints `v1` and `v2` (each terminating TLS itself), its DestinationRule's
/// subsets.
fn east_west(v1: SocketAddr, v2: SocketAddr) -> String {
    let ep = |a: SocketAddr, v: &str| {
        format!(
            "  - address: {}\n    ports: {{tls: {}}}\n    labels: {{app: reviews, version: {v}}}\n",
            a.ip(),
            a.port()
        )
    };
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9443, name: tls, protocol: TLS}}]
  endpoints:
{}{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: cross-network-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 15443, name: tls, protocol: TLS}}
    tls: {{mode: AUTO_PASSTHROUGH}}
    hosts: [\"*.local\"]
",
        ep(v1, "v1"),
        ep(v2, "v2"),
    )
}

/// An `AUTO_PASSTHROUGH` server routes each connection to the service, port and subset its
/// SNI names, with no VirtualService and the handshake untouched (the client sees the
/// endpoint's own certificate); a name that is not a cluster name, or names an unknown
/// subset or service, is closed and counted `NR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_passthrough_routes_by_the_sni_cluster_name_to_its_subset() {
    // each endpoint's certificate names the SNIs the client sends it (its subset's and the
    // whole service's), its answer says who it is
    let v1_name: &'static str = Box::leak(sni("v1").into_boxed_str());
    let v2_name: &'static str = Box::leak(sni("v2").into_boxed_str());
    let any = sni("");
    let (v1, v1_cert) = tls_server_also(v1_name, std::slice::from_ref(&any)).await;
    let (v2, v2_cert) = tls_server_also(v2_name, std::slice::from_ref(&any)).await;
    let yaml = format!("{}{}", gateway_bootstrap(&[15443], ""), east_west(v1, v2));
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 15443);
    for _ in 0..10 {
        for (name, cert) in [(v1_name, &v1_cert), (v2_name, &v2_cert)] {
            let (seen, got) = tls_through(addr, name, std::slice::from_ref(cert))
                .await
                .unwrap();
            assert!(seen == *cert, "the client saw another certificate");
            assert_eq!(got, format!("{name} ping").as_bytes());
        }
    }
    // the whole service (empty subset): both endpoints, each with its own certificate
    let roots = [v1_cert.clone(), v2_cert.clone()];
    let mut seen_v1 = 0;
    for _ in 0..40 {
        let (seen, got) = tls_through(addr, &any, &roots).await.unwrap();
        let who = if seen == v1_cert { v1_name } else { v2_name };
        assert_eq!(got, format!("{who} ping").as_bytes());
        seen_v1 += usize::from(who == v1_name);
    }
    // the balancer spreads them over both endpoints
    assert!((1..40).contains(&seen_v1), "v1 took {seen_v1} of 40");
    // not a cluster name, an unknown subset, port or service: closed, the handshake never
    // completes
    for name in [
        "reviews.default.svc.cluster.local".to_string(),
        sni("v3"),
        "outbound_.9080_.v1_.reviews.default.svc.cluster.local".to_string(),
        "outbound_.9443_._.ratings.default.svc.cluster.local".to_string(),
    ] {
        assert!(
            tls_through(addr, &name, &roots).await.is_err(),
            "{name} reached a backend"
        );
    }
    assert_eq!(opened(&r, "NR").await, 4.0);
    assert_eq!(opened(&r, "-").await, 60.0);
    r.proxy.drain().await;
}

/// The services an `AUTO_PASSTHROUGH` server reaches are those the gateway workload sees:
/// a Sidecar of its namespace that imports only its own namespace hides `reviews`
/// (`default`), whose cluster names are then no route (`NR`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_passthrough_reaches_only_what_the_gateways_sidecar_imports() {
    let v1_name: &'static str = Box::leak(sni("v1").into_boxed_str());
    let (v1, v1_cert) = tls_server_also(v1_name, &[]).await;
    let sidecar = "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress:
  - hosts: [./*]
";
    let open = format!("{}{}", gateway_bootstrap(&[15443], ""), east_west(v1, v1));
    let r = start(&open).await;
    let addr = gw_addr(&r, 15443);
    let roots = std::slice::from_ref(&v1_cert);
    // without the Sidecar, reachable
    let (seen, _) = tls_through(addr, v1_name, roots).await.unwrap();
    assert!(seen == v1_cert);
    // a reload with the Sidecar: hidden
    let scoped = format!("{open}{sidecar}");
    let compiled = mesh_core::config::load_str("e2e.yaml", &scoped).unwrap();
    r.proxy.state().apply(compiled).unwrap();
    assert!(
        tls_through(addr, v1_name, roots).await.is_err(),
        "a service the Sidecar hides was reached"
    );
    assert_eq!(opened(&r, "NR").await, 1.0);
    r.proxy.drain().await;
}
