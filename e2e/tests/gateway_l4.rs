//! Gateway `TCP` and passthrough servers end to end: the L4 listeners of an ingress gateway
//! on real sockets, as Istio's "TCP Traffic Shifting" task (tcp-echo v1/v2 behind a `TCP`
//! server on 31400, the weights moved by a reload) and "Ingress Gateway without TLS
//! Termination" task (an `HTTPS` server in `PASSTHROUGH` mode routed by SNI to a backend that
//! terminates TLS itself, with a certificate made at test time) set them up.

use crate::support;

use std::net::SocketAddr;

use support::l4::{
    echo_server, exchange, tcp_echo_entry, tcp_echo_shifting, tls_server, tls_through,
};
use support::{Running, admin_get, gateway_bootstrap, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn gw_addr(r: &Running, port: u16) -> SocketAddr {
    r.proxy
        .gateway_addr(port)
        .unwrap_or_else(|| panic!("a gateway listener for port {port}"))
}

/// The sum of a counter's series (reporter="source": the gateway's own) in Prometheus text.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .filter(|l| l.contains("reporter=\"source\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The task's Gateway (a `TCP` server on 31400), DestinationRule and VirtualService
/// (namespace `default`), the VirtualService's weights `v1`/`v2`.
fn tcp_shifting(v1: u32, v2: u32) -> String {
    tcp_echo_shifting(
        "  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n",
        "\"*\"",
        v1,
        v2,
    )
}

/// How many of `n` connections through `addr` the v2 echo answered (`two `); every answer
/// is one of the two.
async fn count_v2(addr: SocketAddr, n: usize) -> usize {
    let mut two = 0;
    for _ in 0..n {
        let got = exchange(addr, b"hello\n").await;
        match &got[..] {
            b"one hello\none bye" => {}
            b"two hello\ntwo bye" => two += 1,
            other => panic!("unexpected answer {:?}", String::from_utf8_lossy(other)),
        }
    }
    two
}

/// Istio's TCP Traffic Shifting task through the ingress gateway: all of tcp-echo's traffic
/// to v1, then (a reload) 80% to v1 and 20% to v2, one destination per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_traffic_shifting_through_the_ingress_gateway() {
    let v1 = echo_server("one").await;
    let v2 = echo_server("two").await;
    let config = |w1, w2| {
        format!(
            "{}{}{}",
            gateway_bootstrap(&[31400], ""),
            tcp_echo_entry(&[("v1", v1), ("v2", v2)]),
            tcp_shifting(w1, w2)
        )
    };
    let r = start(&config(100, 0)).await;
    let addr = gw_addr(&r, 31400);
    assert_eq!(count_v2(addr, 20).await, 0, "weight 0 took connections");
    // a connection open across the reload keeps its upstream
    let mut open = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 4];
    support::bounded(open.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"one ");
    let compiled = mesh_core::config::load_str("e2e.yaml", &config(80, 20)).unwrap();
    r.proxy.state().apply(compiled).unwrap();
    let n = 400;
    let two = count_v2(addr, n).await;
    // binomial(400, 0.2): mean 80, sd 8; ±4 sd
    assert!((48..=112).contains(&two), "v2 got {two} of {n} connections");
    open.write_all(b"still").await.unwrap();
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    support::bounded(open.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(rest, b"stillone bye");
    // every connection counted as the gateway reports it (Istio: reporter="source")
    let (_, text) = admin_get(r.admin, "/stats/prometheus").await;
    let opened = total(&text, "istio_tcp_connections_opened_total");
    assert_eq!(
        opened, 421.0,
        "istio_tcp_connections_opened_total in\n{text}"
    );
    r.proxy.drain().await;
}

/// A gateway `TCP` port takes only what its VirtualServices route: a connection no `tcp`
/// route takes is closed without a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_tcp_port_without_a_route_closes_the_connection() {
    let v1 = echo_server("one").await;
    let yaml = format!(
        "{}{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp-echo-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 31400, name: tcp, protocol: TCP}}
    hosts: [\"*\"]
",
        gateway_bootstrap(&[31400], ""),
        tcp_echo_entry(&[("v1", v1)]),
    );
    let r = start(&yaml).await;
    assert_eq!(exchange(gw_addr(&r, 31400), b"hello").await, b"");
    r.proxy.drain().await;
}

/// The task's Gateway (`HTTPS`, `tls.mode: PASSTHROUGH`, `nginx.example.com`) and
/// VirtualService (`tls` route by `sniHosts` to `my-nginx:443`), and `my-nginx` at `addr`.
fn sni_passthrough(addr: SocketAddr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: my-nginx, namespace: default}}
spec:
  hosts: [my-nginx.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  endpoints: [{{address: {}, ports: {{https: {}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mygateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    tls: {{mode: PASSTHROUGH}}
    hosts: [nginx.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: nginx, namespace: default}}
spec:
  hosts: [nginx.example.com]
  gateways: [mygateway]
  tls:
  - match:
    - port: 443
      sniHosts: [nginx.example.com]
    route:
    - destination: {{host: my-nginx, port: {{number: 443}}}}
",
        addr.ip(),
        addr.port()
    )
}

/// Istio's "Ingress Gateway without TLS Termination": the gateway routes the connection by
/// the ClientHello's SNI and forwards the handshake untouched, so the client sees the
/// backend's own certificate; an SNI no route names is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_the_client_sees_the_backends_certificate() {
    let (nginx, nginx_cert) = tls_server("nginx.example.com").await;
    let yaml = format!(
        "{}{}",
        gateway_bootstrap(&[443], ""),
        sni_passthrough(nginx)
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 443);
    let (cert, got) = tls_through(addr, "nginx.example.com", std::slice::from_ref(&nginx_cert))
        .await
        .unwrap();
    assert!(cert == nginx_cert, "the client saw another certificate");
    assert_eq!(got, b"nginx.example.com ping");
    // another name: no tls route takes it, the handshake never completes
    let other = tls_through(addr, "other.example.com", std::slice::from_ref(&nginx_cert)).await;
    assert!(other.is_err(), "an unrouted SNI reached a backend");
    r.proxy.drain().await;
}

/// A reload that turns a passthrough port into an HTTP one changes a listener: refused
/// (it needs a restart), and the passthrough listener keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_an_l4_gateway_port_into_http_is_refused() {
    let (nginx, nginx_cert) = tls_server("nginx.example.com").await;
    let yaml = format!(
        "{}{}",
        gateway_bootstrap(&[443], ""),
        sni_passthrough(nginx)
    );
    let r = start(&yaml).await;
    let addr = gw_addr(&r, 443);
    let http = yaml.replace(
        "  - port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: PASSTHROUGH}\n",
        "  - port: {number: 443, name: http, protocol: HTTP}\n",
    );
    assert_ne!(http, yaml);
    let compiled = mesh_core::config::load_str("e2e.yaml", &http).unwrap();
    let err = r.proxy.state().apply(compiled).unwrap_err().to_string();
    assert!(err.contains("restart"), "{err}");
    let (cert, _) = tls_through(addr, "nginx.example.com", std::slice::from_ref(&nginx_cert))
        .await
        .unwrap();
    assert!(cert == nginx_cert);
    r.proxy.drain().await;
}
