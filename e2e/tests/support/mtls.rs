//! The mTLS workloads of the end-to-end tests: a `reviews` sidecar whose identity files the
//! mesh CA writes at test time, and mTLS clients of other service accounts.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Request;
use hyper_util::rt::TokioIo;
use mesh_core::identity::SpiffeId;
use mesh_tls::ca::MeshCa;
use mesh_tls::config::TlsMaterial;
use mesh_tls::verify::Accept;
use rustls::pki_types::ServerName;

use super::Backend;

/// The mesh's trust domain.
pub const TD: &str = "cluster.local";

/// The identity of service account `sa` in `default`.
pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa)
}

/// Writes the `reviews` workload's files into `dir`; returns its bootstrap (outbound and
/// inbound listeners, inbound to `app`, identity from the files) plus `extra` documents.
pub fn reviews_config(dir: &Path, ca: &MeshCa, app: &Backend, extra: &str) -> String {
    let cert = ca.issue(&id("reviews"), Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.join("reviews.pem"), &cert.chain_pem).unwrap();
    std::fs::write(dir.join("reviews.key"), &cert.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: e2e}}
spec:
  concurrency: 1
  workload: {{name: reviews-v1, namespace: default, serviceAccount: reviews, labels: {{app: reviews}}}}
  outbound: {{address: 127.0.0.1, port: 0}}
  inbound: {{address: 127.0.0.1, port: 0, localApp: '127.0.0.1:{}'}}
  admin: {{address: 127.0.0.1, port: 0}}
  identity:
    spiffeId: spiffe://cluster.local/ns/default/sa/reviews
    certificateChain: {d}/reviews.pem
    privateKey: {d}/reviews.key
    trustBundle: {d}/ca.pem
{extra}",
        app.port(),
        d = dir.display()
    )
}

/// A TLS connector with `who`'s certificate, expecting the server to be `reviews`.
pub fn client_tls(ca: &MeshCa, who: &str) -> tokio_rustls::TlsConnector {
    let c = ca.issue(&id(who), Duration::from_secs(3600)).unwrap();
    let m = TlsMaterial::from_pem(&c.chain_pem, &c.key_pem, ca.cert_pem()).unwrap();
    let cfg = m
        .client_config(Accept::trust_domain(TD).identities([id("reviews")]), false)
        .unwrap();
    tokio_rustls::TlsConnector::from(cfg)
}

/// A client-side proxy (`productpage`, with its own identity) whose `reviews` service is the
/// server proxy's inbound listener at `server`, labelled as having a sidecar unless
/// `sidecar` is false, its service account `sa`; `extra` documents appended.
pub fn client_proxy(
    dir: &Path,
    ca: &MeshCa,
    server: std::net::SocketAddr,
    sa: &str,
    sidecar: bool,
    extra: &str,
) -> String {
    let cert = ca
        .issue(&id("productpage"), Duration::from_secs(3600))
        .unwrap();
    std::fs::write(dir.join("pp.pem"), &cert.chain_pem).unwrap();
    std::fs::write(dir.join("pp.key"), &cert.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let labels = if sidecar {
        "{app: reviews, security.istio.io/tlsMode: istio}"
    } else {
        "{app: reviews}"
    };
    format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: client}}
spec:
  concurrency: 1
  workload: {{name: productpage-v1, namespace: default, serviceAccount: productpage}}
  outbound: {{address: 127.0.0.1, port: 0}}
  admin: {{address: 127.0.0.1, port: 0}}
  identity:
    spiffeId: spiffe://cluster.local/ns/default/sa/productpage
    certificateChain: {d}/pp.pem
    privateKey: {d}/pp.key
    trustBundle: {d}/ca.pem
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {port}}}
    labels: {labels}
    serviceAccount: {sa}
{extra}",
        d = dir.display(),
        port = server.port(),
    )
}

/// One HTTP/1.1 connection to the inbound listener, over mTLS as `who` (or plaintext).
pub struct Client {
    tx: hyper::client::conn::http1::SendRequest<super::UpBody>,
}

impl Client {
    pub async fn mtls(addr: SocketAddr, ca: &MeshCa, who: &str) -> Client {
        let tcp = Self::tcp(addr).await;
        let name = ServerName::try_from("reviews.default.svc.cluster.local").unwrap();
        let tls = super::bounded(client_tls(ca, who).connect(name, tcp))
            .await
            .unwrap();
        Self::over(tls).await
    }

    pub async fn plain(addr: SocketAddr) -> Client {
        Self::over(Self::tcp(addr).await).await
    }

    async fn tcp(addr: SocketAddr) -> tokio::net::TcpStream {
        super::bounded(tokio::net::TcpStream::connect(addr))
            .await
            .unwrap()
    }

    async fn over<IO>(io: IO) -> Client
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, conn) = super::bounded(hyper::client::conn::http1::handshake(TokioIo::new(io)))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { tx }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> super::Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "reviews");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        super::bounded(self.tx.ready()).await.unwrap();
        let res = super::bounded(self.tx.send_request(b.body(super::full("")).unwrap()))
            .await
            .unwrap();
        super::read(res).await
    }
}
