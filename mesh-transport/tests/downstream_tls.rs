//! The listener's TLS extension point ([`mesh_transport::tls::DownstreamTls`]) with real
//! sockets on port 0 and certificates made at test time: HTTP/1.1 and HTTP/2 (ALPN) over
//! TLS, the client's certificate handed to the stack (mTLS), a stalled handshake cut at
//! `tlsHandshakeTimeout`, and plaintext to a TLS listener refused.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::MeshBody;
use mesh_transport::tls::{Accepts, DownstreamTls, PeerTls};
use mesh_transport::{Engine, EngineConfig, Limits, UpstreamBody, WorkerContext};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    ca: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), ca_key).unwrap();
        Pki {
            ca: ca.der().clone(),
            issuer,
        }
    }

    fn issue(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct Server(Arc<rustls::ServerConfig>, bool);

impl DownstreamTls for Server {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.0.clone()
    }

    fn accepts(&self) -> Accepts {
        if self.1 {
            Accepts::TlsOrPlaintext
        } else {
            Accepts::TlsOnly
        }
    }
}

/// A TLS server config for `localhost`; with `mtls`, client certificates of the same CA
/// are required.
fn server(pki: &Pki, mtls: bool) -> Arc<Server> {
    let (cert, key) = pki.issue("localhost");
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mtls {
        builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(pki.roots()),
                provider(),
            )
            .build()
            .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(vec![cert], key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(Server(Arc::new(config), false))
}

/// The same, also serving plaintext connections (PERMISSIVE).
fn permissive(pki: &Pki) -> Arc<Server> {
    Arc::new(Server(server(pki, true).0.clone(), true))
}

/// An engine whose stack answers with what the listener told it about TLS.
fn engine(tls: Arc<Server>, handshake_timeout: Duration) -> Engine {
    let factory = Arc::new(|_: &WorkerContext| {
        tower::service_fn(|req: Request<Incoming>| async move {
            let text = match req.extensions().get::<PeerTls>() {
                Some(PeerTls(info)) => format!(
                    "{:?} alpn={:?} sni={:?} client-certs={}",
                    req.version(),
                    info.alpn.as_deref().map(String::from_utf8_lossy),
                    info.server_name,
                    info.peer_certificates.len()
                ),
                None => "no TLS".into(),
            };
            Ok::<_, std::convert::Infallible>(Response::new(MeshBody::<UpstreamBody>::local(text)))
        })
    });
    let config = EngineConfig {
        limits: Limits {
            tls_handshake_timeout: handshake_timeout,
            ..Limits::default()
        },
        downstream_tls: Some(tls),
        ..EngineConfig::new("127.0.0.1:0".parse().unwrap())
    };
    Engine::start(config, factory).unwrap()
}

fn client(
    pki: &Pki,
    alpn: &[u8],
    cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> tokio_rustls::TlsConnector {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots());
    let mut config = match cert {
        Some((c, k)) => builder.with_client_auth_cert(vec![c], k).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn get(engine: &Engine, tls: &tokio_rustls::TlsConnector, http2: bool) -> String {
    let tcp = tokio::net::TcpStream::connect(engine.local_addr())
        .await
        .unwrap();
    let stream = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let req = Request::builder()
        .uri("https://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = if http2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = "/".parse().unwrap();
        req.headers_mut()
            .insert("host", "localhost".parse().unwrap());
        send.send_request(req).await.unwrap()
    };
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn tls_is_terminated_for_http1_and_http2_by_alpn() {
    let pki = Pki::new();
    let engine = engine(server(&pki, false), Duration::from_secs(10));
    assert_eq!(
        get(&engine, &client(&pki, b"http/1.1", None), false).await,
        "HTTP/1.1 alpn=Some(\"http/1.1\") sni=Some(\"localhost\") client-certs=0"
    );
    assert_eq!(
        get(&engine, &client(&pki, b"h2", None), true).await,
        "HTTP/2.0 alpn=Some(\"h2\") sni=Some(\"localhost\") client-certs=0"
    );
    engine.drain().await;
}

#[tokio::test]
async fn the_clients_certificate_reaches_the_stack_and_none_is_refused() {
    let pki = Pki::new();
    let engine = engine(server(&pki, true), Duration::from_secs(10));
    let with_cert = client(&pki, b"http/1.1", Some(pki.issue("client")));
    assert!(
        get(&engine, &with_cert, false)
            .await
            .ends_with("client-certs=1")
    );
    // without a certificate the handshake fails: no request reaches the stack
    let tcp = tokio::net::TcpStream::connect(engine.local_addr())
        .await
        .unwrap();
    let stream = client(&pki, b"http/1.1", None)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    if let Ok(mut s) = stream {
        // TLS 1.3: the refusal arrives with the first read
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut buf = Vec::new();
        assert!(s.read_to_end(&mut buf).await.is_err() || buf.is_empty());
    }
    engine.drain().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_and_plaintext_is_refused() {
    let pki = Pki::new();
    let engine = engine(server(&pki, false), Duration::from_millis(200));
    // connects and says nothing: closed at the handshake timeout
    let mut idle = tokio::net::TcpStream::connect(engine.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut buf))
        .await
        .expect("the listener closes a stalled handshake")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // plaintext HTTP to a TLS listener: no HTTP answer, the connection is closed
    let mut plain = tokio::net::TcpStream::connect(engine.local_addr())
        .await
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), plain.read_to_end(&mut out))
        .await
        .expect("closed");
    assert!(
        !String::from_utf8_lossy(&out).starts_with("HTTP/"),
        "{out:?}"
    );
    // and TLS clients are still served
    assert!(
        get(&engine, &client(&pki, b"http/1.1", None), false)
            .await
            .starts_with("HTTP/1.1")
    );
    engine.drain().await;
}

#[tokio::test]
async fn permissive_serves_mtls_and_plaintext_on_one_port() {
    let pki = Pki::new();
    let engine = engine(permissive(&pki), Duration::from_secs(10));
    // mTLS, both HTTP versions
    let with_cert = client(&pki, b"h2", Some(pki.issue("client")));
    assert!(
        get(&engine, &with_cert, true)
            .await
            .starts_with("HTTP/2.0 alpn=Some(\"h2\")")
    );
    // plaintext HTTP/1.1 on the same port: served, without PeerTls
    let mut plain = tokio::net::TcpStream::connect(engine.local_addr())
        .await
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), plain.read_to_end(&mut out))
        .await
        .expect("answered")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("no TLS"), "{out}");
    // a TLS client without a certificate is still refused (mTLS or plaintext, nothing else)
    let tcp = tokio::net::TcpStream::connect(engine.local_addr())
        .await
        .unwrap();
    if let Ok(mut s) = client(&pki, b"http/1.1", None)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut buf = Vec::new();
        assert!(s.read_to_end(&mut buf).await.is_err() || buf.is_empty());
    }
    engine.drain().await;
}
