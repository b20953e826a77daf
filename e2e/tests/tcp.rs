//! The L4 data path end to end: `outboundPorts` listeners of a real proxy on real sockets,
//! VirtualService `tcp` and `tls` routes (Istio's "TCP Traffic Shifting" task, SNI routing
//! without terminating TLS), DestinationRule limits and outlier detection on connections,
//! and Istio's `istio_tcp_*` metrics checked by `promtool`.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;

use support::l4::{ECHO, echo_server, exchange, tcp_echo_entry, tls_server, tls_through};
use support::prom::promtool_check;
use support::{LIMIT, admin_get, bootstrap, bounded, eventually, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn captured(key: &str) -> String {
    format!("  outboundPorts:\n    \"{key}\": 0\n")
}

fn port_addr(running: &support::Running, key: &str) -> SocketAddr {
    running
        .proxy
        .outbound_port_addr(key)
        .unwrap_or_else(|| panic!("no outboundPorts listener for {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_is_byte_for_byte_both_ways_with_half_close() {
    let v1 = echo_server("one").await;
    let key = format!("{ECHO}:9000");
    let yaml = format!(
        "{}{}",
        bootstrap(2, &captured(&key)),
        tcp_echo_entry(&[("v1", v1)])
    );
    let running = start(&yaml).await;
    let addr = port_addr(&running, &key);
    // a megabyte of every byte value: nothing is altered or lost either way
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let got = exchange(addr, &payload).await;
    let mut want = b"one ".to_vec();
    want.extend_from_slice(&payload);
    want.extend_from_slice(b"one bye"); // written after the client's FIN: half-close works
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the bytes came back altered");
    running.proxy.drain().await;
}

/// Istio's "TCP Traffic Shifting" task: `weight: 80` to v1 and `weight: 20` to v2, one
/// destination per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_traffic_shifting_80_20_over_many_connections() {
    let v1 = echo_server("one").await;
    let v2 = echo_server("two").await;
    let key = format!("{ECHO}:9000");
    let yaml = format!(
        "{}{}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo-destination}}
spec:
  host: tcp-echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo}}
spec:
  hosts: [tcp-echo]
  tcp:
  - match: [{{port: 9000}}]
    route:
    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v1}}
      weight: 80
    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v2}}
      weight: 20
",
        bootstrap(2, &captured(&key)),
        tcp_echo_entry(&[("v1", v1), ("v2", v2)])
    );
    let running = start(&yaml).await;
    let addr = port_addr(&running, &key);
    let n = 400;
    let mut two = 0;
    for _ in 0..n {
        let got = exchange(addr, b"hello\n").await;
        match &got[..4] {
            b"one " => {}
            b"two " => two += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // binomial(400, 0.2): mean 80, sd 8; ±4 sd
    assert!((48..=112).contains(&two), "v2 got {two} of {n} connections");
    running.proxy.drain().await;
}

// === TLS: SNI routing without termination ===

fn tls_entry(name: &str, host: &str, addr: SocketAddr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 443, name: tls, protocol: TLS}}
  endpoints:
  - address: {}
    ports: {{tls: {}}}
",
        addr.ip(),
        addr.port()
    )
}

/// Istio's egress TLS routing by SNI: the proxy reads the ClientHello's SNI, routes on it,
/// and forwards the handshake untouched: the client sees each backend's own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_routed_by_sni_without_termination() {
    let (a, a_cert) = tls_server("a.example.com").await;
    let (b, b_cert) = tls_server("b.example.com").await;
    let (c, c_cert) = tls_server("c.example.com").await;
    let key = "a.example.com:443";
    let yaml = format!(
        "{}{}{}{}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: legacy}}
spec:
  hosts: [legacy.example.com]
  tls:
  - match: [{{port: 443, sniHosts: [legacy.example.com]}}]
    route: [{{destination: {{host: c.example.com, port: {{number: 443}}}}}}]
",
        bootstrap(1, &captured(key)),
        tls_entry("a", "a.example.com", a),
        tls_entry("b", "b.example.com", b),
        tls_entry("c", "c.example.com", c),
    );
    let running = start(&yaml).await;
    let addr = port_addr(&running, key);
    let all = [a_cert.clone(), b_cert.clone(), c_cert.clone()];
    let (cert, got) = tls_through(addr, "b.example.com", &all).await.unwrap();
    assert!(
        cert == b_cert,
        "the client saw another certificate than b's own"
    );
    assert_eq!(got, b"b.example.com ping");
    let (cert, got) = tls_through(addr, "a.example.com", &all).await.unwrap();
    assert!(cert == a_cert);
    assert_eq!(got, b"a.example.com ping");
    // the tls route: SNI legacy.example.com goes to c, whose certificate does not name it,
    // so the client (verifying legacy.example.com) refuses it: the TLS is end to end
    let refused = tls_through(addr, "legacy.example.com", &all).await;
    assert!(
        refused.is_err(),
        "c's certificate cannot be valid for legacy.example.com"
    );
    let (cert, _) = bounded(async {
        // the same route with verification of c's name
        tls_through_any(addr, "legacy.example.com").await
    })
    .await;
    assert!(cert == c_cert, "the tls route did not lead to c");
    running.proxy.drain().await;
}

/// A TLS client with SNI `sni` that accepts any certificate; returns it.
async fn tls_through_any(
    addr: SocketAddr,
    sni: &str,
) -> (rustls::pki_types::CertificateDer<'static>, ()) {
    #[derive(Debug)]
    struct Any(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let s = connector.connect(name, tcp).await.unwrap();
    (s.get_ref().1.peer_certificates().unwrap()[0].clone(), ())
}

// === limits, health, metrics ===

fn stat(text: &str, name: &str, flags: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && l.contains(&format!("response_flags=\"{flags}\""))
                && l.contains("request_protocol=\"tcp\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout_and_counted() {
    let v1 = echo_server("one").await;
    let key = format!("{ECHO}:9000");
    let yaml = format!(
        "{}{}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo}}
spec:
  host: tcp-echo
  trafficPolicy:
    connectionPool:
      tcp: {{idleTimeout: 1s}}
",
        bootstrap(1, &captured(&key)),
        tcp_echo_entry(&[("v1", v1)])
    );
    let running = start(&yaml).await;
    let addr = port_addr(&running, &key);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 6];
    bounded(s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"one hi");
    // then silence both ways: the proxy closes (EOF), the client never did
    let n = bounded(s.read(&mut buf)).await.unwrap();
    assert_eq!(n, 0, "the idle connection was not closed");
    let admin = running.admin;
    eventually("the close is counted", || async move {
        let (_, text) = admin_get(admin, "/stats/prometheus").await;
        stat(&text, "istio_tcp_connections_closed_total{", "-") == 1
            && stat(&text, "istio_tcp_received_bytes_total{", "-") == 2
            && stat(&text, "istio_tcp_sent_bytes_total{", "-") == 6
    })
    .await;
    running.proxy.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_with_uo() {
    let v1 = echo_server("one").await;
    let key = format!("{ECHO}:9000");
    let yaml = format!(
        "{}{}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo}}
spec:
  host: tcp-echo
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 1}}
",
        bootstrap(1, &captured(&key)),
        tcp_echo_entry(&[("v1", v1)])
    );
    let running = start(&yaml).await;
    let addr = port_addr(&running, &key);
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 4];
    bounded(first.read_exact(&mut buf)).await.unwrap(); // connected upstream: holds the one slot
    assert_eq!(&buf, b"one ");
    let got = exchange(addr, b"second").await;
    assert!(got.is_empty(), "the second connection was proxied: {got:?}");
    let (_, text) = admin_get(running.admin, "/stats/prometheus").await;
    assert_eq!(stat(&text, "istio_tcp_connections_opened_total{", "UO"), 1);
    // the slot is freed when the first closes
    drop(first);
    let admin = running.admin;
    eventually("the first connection's close is counted", || async move {
        let (_, text) = admin_get(admin, "/stats/prometheus").await;
        stat(&text, "istio_tcp_connections_closed_total{", "-") == 1
    })
    .await;
    let got = exchange(addr, b"third").await;
    assert_eq!(got, b"one thirdone bye");
    running.proxy.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_endpoint_closes_its_connections_and_is_ejected() {
    let live = echo_server("one").await;
    let dead_port = support::dead_port().await;
    let dead: SocketAddr = format!("127.0.0.1:{dead_port}").parse().unwrap();
    let key = format!("{ECHO}:9000");
    let yaml = format!(
        "{}{}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo}}
spec:
  host: tcp-echo
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 300s
      maxEjectionPercent: 100
",
        bootstrap(1, &captured(&key)),
        tcp_echo_entry(&[("v1", live), ("v2", dead)])
    );
    let running = start(&yaml).await;
    let addr = port_addr(&running, &key);
    // round robin: the dead endpoint gets every other connection until its second refusal
    let mut failed = 0;
    for _ in 0..4 {
        if exchange(addr, b"x").await.is_empty() {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 2,
        "every other connection went to the refused endpoint"
    );
    // ejected: every connection now reaches the live one
    for _ in 0..20 {
        assert_eq!(exchange(addr, b"x").await, b"one xone bye");
    }
    let (_, text) = admin_get(running.admin, "/stats/prometheus").await;
    assert_eq!(stat(&text, "istio_tcp_connections_opened_total{", "UF"), 2);
    running.proxy.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_metrics_have_istios_labels_and_pass_promtool() {
    let v1 = echo_server("one").await;
    let key = format!("{ECHO}:9000");
    let yaml = format!(
        "{}{}",
        bootstrap(2, &captured(&key)),
        tcp_echo_entry(&[("v1", v1)])
    );
    let running = start(&yaml).await;
    let addr = port_addr(&running, &key);
    for _ in 0..3 {
        assert_eq!(exchange(addr, b"abc").await, b"one abcone bye");
    }
    let admin = running.admin;
    eventually("three closed connections", || async move {
        let (_, text) = admin_get(admin, "/stats/prometheus").await;
        stat(&text, "istio_tcp_connections_closed_total{", "-") == 3
    })
    .await;
    let (status, text) = admin_get(admin, "/stats/prometheus").await;
    assert_eq!(status, 200);
    assert_eq!(stat(&text, "istio_tcp_connections_opened_total{", "-"), 3);
    assert_eq!(stat(&text, "istio_tcp_received_bytes_total{", "-"), 9);
    assert_eq!(stat(&text, "istio_tcp_sent_bytes_total{", "-"), 3 * 14);
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap();
    for label in [
        "reporter=\"source\"",
        "source_workload=\"productpage-v1\"",
        "source_app=\"productpage\"",
        "destination_service=\"tcp-echo.default.svc.cluster.local\"",
        "destination_service_name=\"tcp-echo\"",
        "destination_app=\"tcp-echo\"",
        "destination_version=\"v1\"",
        "request_protocol=\"tcp\"",
        "response_flags=\"-\"",
        "connection_security_policy=\"unknown\"",
    ] {
        assert!(line.contains(label), "{label} missing in {line}");
    }
    promtool_check(&text);
    // bounded: the drain returns once the listeners have stopped
    tokio::time::timeout(LIMIT, running.proxy.drain())
        .await
        .unwrap();
}

/// A Telemetry's `reportingInterval` and `tagOverrides` on the TCP metrics: an open
/// connection's bytes are reported every 100 ms (Istio's default is 5 s), in a series whose
/// labels the overrides made when the connection opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_s_reporting_interval_and_tag_overrides_apply_to_tcp_metrics() {
    let v1 = echo_server("one").await;
    let key = format!("{ECHO}:9000");
    let telemetry = "---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    reportingInterval: 100ms
    overrides:
    - match: {metric: TCP_SENT_BYTES}
      tagOverrides:
        response_flags: {operation: REMOVE}
        upstream_cluster: {value: xds.cluster_name}
";
    let yaml = format!(
        "{}{}{telemetry}",
        bootstrap(2, &captured(&key)),
        tcp_echo_entry(&[("v1", v1)])
    );
    let running = start(&yaml).await;
    // the interval the L4 listeners splice with (Istio's default would be 5 s)
    let metrics = running.proxy.state().layers().telemetry().metrics().clone();
    assert_eq!(
        metrics.tcp_reporting_interval(),
        std::time::Duration::from_millis(100)
    );
    let addr = port_addr(&running, &key);
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"abc").await.unwrap();
    let mut got = [0u8; 7];
    bounded(conn.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"one abc");
    // while the connection is open: its bytes, reported by the timer
    let admin = running.admin;
    eventually("the open connection's bytes reported", || async move {
        let (_, text) = admin_get(admin, "/stats/prometheus").await;
        stat(&text, "istio_tcp_received_bytes_total{", "-") == 3
    })
    .await;
    let (_, text) = admin_get(admin, "/stats/prometheus").await;
    assert_eq!(stat(&text, "istio_tcp_connections_closed_total{", "-"), 0);
    let sent: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert!(
        sent[0]
            .contains(",upstream_cluster=\"outbound|9000||tcp-echo.default.svc.cluster.local\"}")
            && !sent[0].contains("response_flags")
            && sent[0].ends_with(" 7"),
        "{}",
        sent[0]
    );
    promtool_check(&text);
    drop(conn);
    eventually("the connection closed", || async move {
        let (_, text) = admin_get(admin, "/stats/prometheus").await;
        stat(&text, "istio_tcp_connections_closed_total{", "-") == 1
    })
    .await;
    tokio::time::timeout(LIMIT, running.proxy.drain())
        .await
        .unwrap();
}

/// Under `outboundTrafficPolicy: ALLOW_ANY` a captured host:port outside the registry is
/// passed through (Istio's `PassthroughCluster`; the host resolved by DNS, an IP as is),
/// TLS included, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_outside_the_registry_are_passed_through_under_allow_any() {
    let (tls, tls_cert) = tls_server("localhost").await;
    let plain = echo_server("plain").await;
    let tls_key = format!("127.0.0.1:{}", tls.port());
    let plain_key = format!("127.0.0.1:{}", plain.port());
    let yaml = bootstrap(
        1,
        &format!("  outboundPorts:\n    \"{tls_key}\": 0\n    \"{plain_key}\": 0\n"),
    );
    let running = start(&yaml).await;
    let (cert, got) = tls_through(
        port_addr(&running, &tls_key),
        "localhost",
        std::slice::from_ref(&tls_cert),
    )
    .await
    .unwrap();
    assert!(cert == tls_cert);
    assert_eq!(got, b"localhost ping");
    assert_eq!(
        exchange(port_addr(&running, &plain_key), b"x").await,
        b"plain xplain bye"
    );
    running.proxy.drain().await;
    // REGISTRY_ONLY: closed, flag NR
    let yaml = bootstrap(
        1,
        &format!(
            "  mesh: {{outboundTrafficPolicy: REGISTRY_ONLY}}\n  outboundPorts:\n    \"{plain_key}\": 0\n"
        ),
    );
    let running = start(&yaml).await;
    assert!(
        exchange(port_addr(&running, &plain_key), b"x")
            .await
            .is_empty()
    );
    let (_, text) = admin_get(running.admin, "/stats/prometheus").await;
    assert_eq!(stat(&text, "istio_tcp_connections_opened_total{", "NR"), 1);
    running.proxy.drain().await;
}

/// A reload swaps the routes of the running L4 listeners: new connections follow the new
/// VirtualService, an open one keeps its upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_tcp_routes_and_keeps_open_connections() {
    let v1 = echo_server("one").await;
    let v2 = echo_server("two").await;
    let key = format!("{ECHO}:9000");
    let config = |subset: &str| {
        format!(
            "{}{}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo}}
spec:
  host: tcp-echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo}}
spec:
  hosts: [tcp-echo]
  tcp:
  - route: [{{destination: {{host: tcp-echo, subset: {subset}}}}}]
",
            bootstrap(1, &captured(&key)),
            tcp_echo_entry(&[("v1", v1), ("v2", v2)])
        )
    };
    let running = start(&config("v1")).await;
    let addr = port_addr(&running, &key);
    let mut open = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 4];
    bounded(open.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"one ");
    let compiled = mesh_core::config::load_str("e2e.yaml", &config("v2")).unwrap();
    running.proxy.state().apply(compiled).unwrap();
    assert_eq!(exchange(addr, b"x").await, b"two xtwo bye");
    // the connection opened before the reload still talks to v1
    open.write_all(b"still").await.unwrap();
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    bounded(open.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(rest, b"stillone bye");
    running.proxy.drain().await;
}

/// On drain an L4 listener stops accepting and closes the tunnels still open after
/// `drainTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_open_tunnels_after_the_drain_timeout() {
    let v1 = echo_server("one").await;
    let key = format!("{ECHO}:9000");
    let yaml = format!(
        "{}{}",
        bootstrap(
            1,
            &format!("{}  limits: {{drainTimeout: 1s}}\n", captured(&key))
        ),
        tcp_echo_entry(&[("v1", v1)])
    );
    let running = start(&yaml).await;
    let addr = port_addr(&running, &key);
    let mut open = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 4];
    bounded(open.read_exact(&mut buf)).await.unwrap();
    let drained = tokio::spawn(running.proxy.drain());
    // the tunnel is closed by the drain (EOF), though neither side closed it
    let n = bounded(open.read(&mut buf)).await.unwrap();
    assert_eq!(n, 0);
    bounded(drained).await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after the drain"
    );
}

/// Envoy's TCP proxy writes one access log line per connection when it closes, in the
/// listener's format: Istio's text line with `"- - -" 0`, the bytes each way, the endpoint,
/// the cluster, and the addresses of both connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_writes_an_access_log_line_in_istio_s_format() {
    let v1 = echo_server("one").await;
    let key = format!("{ECHO}:9000");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let yaml = format!(
        "{}{}",
        bootstrap(
            1,
            &format!(
                "{}  accessLog: {{path: {}, encoding: TEXT}}\n",
                captured(&key),
                file.display()
            )
        ),
        tcp_echo_entry(&[("v1", v1)])
    );
    let running = start(&yaml).await;
    let addr = port_addr(&running, &key);
    let client = TcpStream::connect(addr).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let mut s = client;
    s.write_all(b"abc").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    bounded(s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"one abcone bye");
    // the client saw the close before the proxy's task logged it: poll the file
    let proxy = &running.proxy;
    let file2 = file.clone();
    eventually("the connection's line", || {
        proxy.flush_telemetry();
        let has = std::fs::read_to_string(&file2).is_ok_and(|t| t.lines().count() == 1);
        async move { has }
    })
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text.lines().next().unwrap();
    let rest = line.split_once("] ").unwrap().1;
    let fields: Vec<&str> = rest.split(' ').collect();
    // "- - -" 0 - - - "-" 3 14 <ms> - "-" "-" "-" "-" "<host>" <cluster> <up local>
    // <listener> <client> - -
    assert_eq!(
        &fields[..7],
        ["\"-", "-", "-\"", "0", "-", "-", "-"],
        "{line}"
    );
    assert_eq!((fields[8], fields[9]), ("3", "14"), "{line}");
    assert!(fields[10].parse::<u64>().is_ok(), "{line}");
    assert_eq!(fields[16], format!("\"{v1}\""), "{line}");
    assert_eq!(
        fields[17], "outbound|9000||tcp-echo.default.svc.cluster.local",
        "{line}"
    );
    assert!(fields[18].starts_with("127.0.0.1:"), "{line}");
    assert_eq!(fields[19], addr.to_string(), "{line}");
    assert_eq!(fields[20], client_addr.to_string(), "{line}");
    assert_eq!(&fields[21..], ["-", "-"], "{line}");
    running.proxy.drain().await;
}
