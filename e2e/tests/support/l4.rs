//! L4 helpers of the end-to-end tests: Istio's tcp-echo sample as a server, its
//! ServiceEntry, one TCP exchange through a proxy, a TLS server with a certificate made at
//! test time and a TLS client that reports the certificate it saw.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::bounded;

/// The tcp-echo service's host.
pub const ECHO: &str = "tcp-echo.default.svc.cluster.local";

/// A TCP echo server (Istio's tcp-echo sample): every connection gets `<name> ` first, then
/// its own bytes back as they come; when the client half-closes, the server writes `<name>
/// bye` and closes.
pub async fn echo_server(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if s.write_all(format!("{name} ").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(format!("{name} bye").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP ServiceEntry for `tcp-echo` (port 9000, `TCP`) with one endpoint per
/// `(version, address)`.
pub fn tcp_echo_entry(endpoints: &[(&str, SocketAddr)]) -> String {
    let mut eps = String::new();
    for (v, a) in endpoints {
        eps.push_str(&format!(
            "  - address: {}\n    ports: {{tcp: {}}}\n    labels: {{app: tcp-echo, version: {v}}}\n",
            a.ip(),
            a.port()
        ));
    }
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-echo}}
spec:
  hosts: [{ECHO}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 9000, name: tcp, protocol: TCP}}
  endpoints:
{eps}"
    )
}

/// A Gateway `tcp-echo-gateway` (namespace `default`) with the `server` given (YAML lines
/// of one `servers` entry), tcp-echo's DestinationRule (subsets `v1`, `v2`) and a
/// VirtualService for `hosts` bound to the gateway, whose `tcp` route on port 31400 splits
/// `v1`/`v2` by weight (Istio's TCP Traffic Shifting task).
pub fn tcp_echo_shifting(server: &str, hosts: &str, v1: u32, v2: u32) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp-echo-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{server}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo-destination, namespace: default}}
spec:
  host: tcp-echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo, namespace: default}}
spec:
  hosts: [{hosts}]
  gateways: [tcp-echo-gateway]
  tcp:
  - match: [{{port: 31400}}]
    route:
    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v1}}
      weight: {v1}
    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v2}}
      weight: {v2}
"
    )
}

/// One connection through the proxy: sends `data`, half-closes, reads to the end.
pub async fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    bounded(async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = s.split();
        let send = async {
            // a peer that closed already is not this helper's business: the caller checks
            // what came back
            let _ = w.write_all(data).await;
            let _ = w.shutdown().await;
        };
        let mut got = Vec::new();
        let recv = r.read_to_end(&mut got);
        let (_, read) = tokio::join!(send, recv);
        if read.is_err() {
            got.clear();
        }
        got
    })
    .await
}

/// A TLS server for `name` with a self-signed certificate: answers `<name> ` and echoes,
/// over TLS. Returns its address and certificate.
pub async fn tls_server(
    name: &'static str,
) -> (SocketAddr, rustls::pki_types::CertificateDer<'static>) {
    tls_server_also(name, &[]).await
}

/// [`tls_server`] whose certificate names `also` too.
pub async fn tls_server_also(
    name: &'static str,
    also: &[String],
) -> (SocketAddr, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut names = vec![name.to_string()];
    names.extend(also.iter().cloned());
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let _ = s.write_all(format!("{name} ").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, der)
}

/// Connects through `addr` with SNI `sni`, trusting `roots` only; returns the server's
/// certificate and its first answer.
pub async fn tls_through(
    addr: SocketAddr,
    sni: &str,
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<(rustls::pki_types::CertificateDer<'static>, Vec<u8>), std::io::Error> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    bounded(async {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut s = connector.connect(name, tcp).await?;
        let cert = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        s.write_all(b"ping").await?;
        let mut got = vec![0u8; 64];
        let mut n = 0;
        while !got[..n].ends_with(b"ping") {
            let m = s.read(&mut got[n..]).await?;
            if m == 0 {
                break;
            }
            n += m;
        }
        got.truncate(n);
        Ok((cert, got))
    })
    .await
}
