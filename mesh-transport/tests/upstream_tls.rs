//! The connector's TLS extension point ([`mesh_transport::tls::UpstreamTls`]) against real
//! TLS upstreams on port 0, with certificates made at test time (rcgen): TLS origination
//! over HTTP/1.1 and HTTP/2 (ALPN), pooled connections keyed by the TLS identity, and a
//! handshake that fails (untrusted server) answered 503 UF.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::ResponseFlags;
use mesh_core::ext::{SelectedEndpoint, flags_of};
use mesh_transport::Connector;
use mesh_transport::tls::{ClientTls, UpstreamTls};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tower::ServiceExt as _;

/// A certificate for `localhost`, signed by a CA made here; the CA's certificate.
fn server_cert() -> (
    CertificateDer<'static>,
    PrivateKeyDer<'static>,
    CertificateDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), ca_key).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        ca.der().clone(),
    )
}

/// A TLS upstream answering with the protocol it served and how many connections it
/// accepted so far.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn tls_upstream(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Upstream {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let body = format!("{:?} over TLS, connection {n}", req.version());
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Upstream { addr, accepted }
}

/// TLS to every endpoint, verified against `root`, under identity `key`.
#[derive(Debug)]
struct Originate {
    config: Arc<rustls::ClientConfig>,
    key: u64,
}

impl Originate {
    fn new(root: CertificateDer<'static>, alpn: &[&[u8]], key: u64) -> Arc<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(Originate {
            config: Arc::new(config),
            key,
        })
    }
}

impl UpstreamTls for Originate {
    fn client_tls(
        &self,
        _req: &http::Extensions,
        _host: Option<&str>,
        _ep: &SelectedEndpoint,
    ) -> Option<ClientTls> {
        Some(ClientTls {
            config: self.config.clone(),
            server_name: ServerName::try_from("localhost").unwrap(),
            key: self.key,
        })
    }
}

fn request(addr: SocketAddr, http2: bool) -> Request<Empty<Bytes>> {
    let mut req = Request::builder()
        .uri("/")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(SelectedEndpoint::new(addr).with_http2(http2));
    req
}

async fn body(res: Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn tls_is_originated_over_http1_and_connections_are_pooled_per_identity() {
    let (cert, key, ca) = server_cert();
    let up = tls_upstream(cert, key).await;
    let connector = Connector::new(std::time::Duration::from_secs(5)).with_tls(Originate::new(
        ca.clone(),
        &[b"http/1.1"],
        7,
    ));
    for _ in 0..3 {
        let res = connector
            .clone()
            .oneshot(request(up.addr, false))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(body(res).await, "HTTP/1.1 over TLS, connection 1");
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );

    // another identity on the same pool never takes the first one's connection
    let other = Connector::with_pool(std::time::Duration::from_secs(5), connector.pool().clone())
        .with_tls(Originate::new(ca, &[b"http/1.1"], 8));
    let res = other.oneshot(request(up.addr, false)).await.unwrap();
    assert_eq!(body(res).await, "HTTP/1.1 over TLS, connection 2");
}

#[tokio::test]
async fn tls_is_originated_over_http2_with_alpn() {
    let (cert, key, ca) = server_cert();
    let up = tls_upstream(cert, key).await;
    let connector =
        Connector::new(std::time::Duration::from_secs(5)).with_tls(Originate::new(ca, &[b"h2"], 1));
    for _ in 0..2 {
        let res = connector
            .clone()
            .oneshot(request(up.addr, true))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(body(res).await, "HTTP/2.0 over TLS, connection 1");
    }
}

#[tokio::test]
async fn an_untrusted_upstream_is_a_connect_failure() {
    let (cert, key, _ca) = server_cert();
    let (_, _, other_ca) = server_cert();
    let up = tls_upstream(cert, key).await;
    let connector = Connector::new(std::time::Duration::from_secs(5)).with_tls(Originate::new(
        other_ca,
        &[b"http/1.1"],
        1,
    ));
    let res = connector.oneshot(request(up.addr, false)).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(flags_of(&res), ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
}
