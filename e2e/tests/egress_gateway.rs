//! mesh-proxy as an egress gateway, as Istio's "Egress Gateways with TLS Origination" task
//! (istio.io/latest/docs/tasks/traffic-management/egress/egress-gateway-tls-origination)
//! sets it up: the application's sidecar sends plain HTTP for `edition.cnn.com` to the
//! egress gateway (plaintext, or Istio mTLS with `ISTIO_MUTUAL`), whose VirtualService sends
//! it to port 443 of the external host, and a DestinationRule there originates TLS. The
//! external host is a local HTTPS server with a certificate of a CA made at test time; the
//! gateway reads that CA from a `credentialName` under `credentialsDir`. Two proxies, real
//! sockets on port 0.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tls::ca::MeshCa;
use support::pki::Pki;
use support::*;
use tokio::net::TcpListener;

const CNN: &str = "edition.cnn.com";

/// An HTTPS server standing in for `edition.cnn.com`: a certificate for that name from a
/// CA made here (whose PEM is returned); records the SNI of each request.
async fn external_host() -> (SocketAddr, String, Arc<Mutex<Vec<Option<String>>>>) {
    let ca = Pki::new("external CA");
    let leaf = ca.leaf(&[CNN], false);
    let (chain, key) = (leaf.certs(), leaf.private_key());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    log.lock().unwrap().push(sni.clone());
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-backend", "cnn")
                                .header("x-seen-host", host)
                                .body(full("politics"))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca.pem.clone(), seen)
}

/// The ServiceEntry of the external host, its port 443 on the stand-in.
fn cnn_entry(external: SocketAddr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cnn, namespace: default}}
spec:
  hosts: [{CNN}]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS}}
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{https: {}}}}}]
",
        external.port()
    )
}

/// The task's VirtualService: the sidecar (`mesh`) sends `edition.cnn.com` to the egress
/// gateway's service (`egress_port`, subset `cnn`), the gateway to port 443 of the host.
fn cnn_vs(egress_port: u16) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-cnn-through-egress-gateway, namespace: default}}
spec:
  hosts: [{CNN}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port: {{number: {egress_port}}}
  - match: [{{gateways: [istio-egressgateway], port: {egress_port}}}]
    route:
    - destination: {{host: {CNN}, port: {{number: 443}}}}
"
    )
}

/// The egress gateway's configuration: its Gateway (server port `port`, plaintext or
/// `ISTIO_MUTUAL`), the task's VirtualService and the DestinationRule originating TLS with
/// the external CA from the `cnn-ca` credential.
fn egress_config(dir: &Path, external: SocketAddr, port: u16, tls: &str, identity: &str) -> String {
    let proto = if tls.is_empty() { "HTTP" } else { "HTTPS" };
    format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: egress}}
spec:
  concurrency: 1
  workload:
    name: istio-egressgateway
    namespace: istio-system
    serviceAccount: istio-egressgateway-service-account
    labels: {{istio: egressgateway, app: istio-egressgateway}}
  outbound: {{address: 127.0.0.1, port: 0}}
  admin: {{address: 127.0.0.1, port: 0}}
  gatewayAddress: 127.0.0.1
  gatewayPorts: {{\"{port}\": 0}}
  credentialsDir: {}
{identity}{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: default}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {port}, name: gw, protocol: {proto}}}
    hosts: [{CNN}]
{tls}{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls-for-edition-cnn-com, namespace: default}}
spec:
  host: {CNN}
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, credentialName: cnn-ca}}
",
        dir.display(),
        cnn_entry(external),
        cnn_vs(port),
    )
}

/// The sidecar of the `sleep` application: the external host and the egress gateway's
/// service (its endpoint: the gateway listener at `egress`), with the task's
/// DestinationRule for it (`policy`: its `trafficPolicy`, indented for the subset).
fn sidecar_config(
    external: SocketAddr,
    egress: SocketAddr,
    port: u16,
    identity: &str,
    policy: &str,
) -> String {
    format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: sleep}}
spec:
  concurrency: 1
  workload: {{name: sleep, namespace: default, serviceAccount: sleep, labels: {{app: sleep}}}}
  outbound: {{address: 127.0.0.1, port: 0}}
  admin: {{address: 127.0.0.1, port: 0}}
{identity}{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: gw, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{gw: {}}}
    serviceAccount: istio-egressgateway-service-account
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-cnn, namespace: default}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
{policy}{}",
        cnn_entry(external),
        egress.port(),
        cnn_vs(port),
    )
}

/// Writes `sa`'s identity files (istio-system for the gateway's account) and returns the
/// bootstrap's `identity` section.
fn identity(dir: &Path, ca: &MeshCa, ns: &str, sa: &str) -> String {
    let id = mesh_core::identity::SpiffeId::new("cluster.local", ns, sa);
    let c = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.join(format!("{sa}.pem")), &c.chain_pem).unwrap();
    std::fs::write(dir.join(format!("{sa}.key")), &c.key_pem).unwrap();
    std::fs::write(dir.join("mesh-ca.pem"), ca.cert_pem()).unwrap();
    format!(
        "  identity:
    spiffeId: spiffe://cluster.local/ns/{ns}/sa/{sa}
    certificateChain: {d}/{sa}.pem
    privateKey: {d}/{sa}.key
    trustBundle: {d}/mesh-ca.pem
",
        d = dir.display()
    )
}

fn write_ca_credential(dir: &Path, ca_pem: &str) {
    let secret = dir.join("istio-system").join("cnn-ca");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("ca.crt"), ca_pem).unwrap();
}

async fn politics(out: SocketAddr) -> Reply {
    let mut c = H1::connect(out).await;
    c.send(
        Request::builder()
            .uri("/politics")
            .header("host", CNN)
            .body(full(""))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn egress_gateway_originates_tls_for_the_sidecar_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (external, ca_pem, seen) = external_host().await;
    write_ca_credential(dir.path(), &ca_pem);
    let egress = start(&egress_config(dir.path(), external, 80, "", "")).await;
    let gw = egress
        .proxy
        .gateway_addr(80)
        .expect("the egress gateway listener");
    let sleep = start(&sidecar_config(external, gw, 80, "", "")).await;

    let res = politics(sleep.out).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.backend(), "cnn");
    assert_eq!(res.headers.get("x-seen-host").unwrap(), CNN);
    assert_eq!(res.body, "politics");
    // TLS originated at the gateway, with the host's name as SNI (auto_sni)
    assert_eq!(*seen.lock().unwrap(), vec![Some(CNN.to_string())]);

    // straight to the gateway, a host its server does not list: 404 NR
    let other = get_once(gw, "other.example.com", &[]).await;
    assert_eq!(other.status, 404);
    assert_eq!(other.flags(), "NR");
    sleep.proxy.drain().await;
    egress.proxy.drain().await;
}

#[tokio::test]
async fn egress_gateway_with_istio_mutual_from_the_sidecar() {
    // the task's second part: sidecar → gateway over Istio mTLS (Gateway ISTIO_MUTUAL,
    // DestinationRule subset ISTIO_MUTUAL with sni), TLS origination at the gateway
    let dir = tempfile::tempdir().unwrap();
    let mesh = MeshCa::generate("cluster.local").unwrap();
    let (external, ca_pem, seen) = external_host().await;
    write_ca_credential(dir.path(), &ca_pem);
    let gw_id = identity(
        dir.path(),
        &mesh,
        "istio-system",
        "istio-egressgateway-service-account",
    );
    let egress = start(&egress_config(
        dir.path(),
        external,
        443,
        "    tls: {mode: ISTIO_MUTUAL}\n",
        &gw_id,
    ))
    .await;
    let gw = egress
        .proxy
        .gateway_addr(443)
        .expect("the egress gateway listener");
    let sleep_id = identity(dir.path(), &mesh, "default", "sleep");
    let policy = "    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      portLevelSettings:
      - port: {number: 443}
        tls: {mode: ISTIO_MUTUAL, sni: edition.cnn.com}
";
    let sleep = start(&sidecar_config(external, gw, 443, &sleep_id, policy)).await;
    let res = politics(sleep.out).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.backend(), "cnn");
    assert_eq!(*seen.lock().unwrap(), vec![Some(CNN.to_string())]);

    // a client without a mesh certificate: the gateway refuses it
    let plain = H1::connect(gw).await.try_send(request(CNN, &[])).await;
    assert!(plain.is_err(), "plaintext to an ISTIO_MUTUAL server");
    sleep.proxy.drain().await;
    egress.proxy.drain().await;
}

#[test]
fn destination_rule_credential_name_on_a_sidecar_is_refused() {
    // Istio reads credentialName at gateways only; a sidecar needs files
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate, namespace: default}}
spec:
  host: {CNN}
  trafficPolicy: {{tls: {{mode: SIMPLE, credentialName: cnn-ca}}}}
",
        bootstrap(1, "  credentialsDir: /tmp\n")
    );
    let compiled = mesh_core::config::load_str("dr.yaml", &yaml).unwrap();
    let err = mesh_proxy::pipeline::build_compiled(compiled).unwrap_err();
    let e = err.errors().next().unwrap();
    assert_eq!(
        e.field.as_ref().unwrap().to_string(),
        "spec.trafficPolicy.tls.credentialName"
    );
    assert!(e.message.contains("gateways only"), "{}", e.message);
}
