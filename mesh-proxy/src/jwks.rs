//! RequestAuthentication `jwksUri`: the JWKS fetched off the request path.
//!
//! Every `http://` (and `file://`) JWKS of the configuration in force is kept fresh by a
//! task on one background thread (`mesh-jwks`): fetched when the configuration is applied,
//! then every 20 minutes (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`), sooner after a
//! failure ([`mesh_tls::jwt::RemoteJwks::refresh_loop`]). A configuration's tasks end when a
//! reload replaces it. Applying a configuration waits for each JWKS's first fetch, at most
//! its `timeout` (Istio's default 5 s): a proxy whose JWKS server answers serves valid
//! tokens from its first request; until a fetch succeeds, a token of that issuer is refused
//! with `401 Jwks remote fetch is failed` (fail closed) and requests without a token pass.
//! A reload starts from the keys the running configuration fetched from the same URI
//! ([`Authenticator::inherit_keys`]): a JWKS server that is down during a reload does not
//! turn valid tokens away.
//!
//! The fetch is an HTTP/1.1 `GET`; over `https://` the server is verified against the
//! system's root certificates (`rustls-native-certs`, the ring provider), as istiod's own
//! JWKS fetch trusts the system roots.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use mesh_tls::jwt::{Authenticator, JWKS_REFRESH_INTERVAL, RemoteJwks};

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The background thread's runtime.
fn runtime() -> Option<&'static tokio::runtime::Handle> {
    static HANDLE: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("mesh-jwks".into())
                .spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    let _ = tx.send(rt.handle().clone());
                    rt.block_on(std::future::pending::<()>());
                })
                .ok()?;
            rx.recv().ok()
        })
        .as_ref()
}

/// Starts keeping the remote JWKS of `jwt` fresh, and waits for their first fetch (each at
/// most its timeout).
pub fn start(jwt: &Authenticator) {
    let remotes = jwt.remotes();
    if remotes.is_empty() {
        return;
    }
    let Some(rt) = runtime() else {
        tracing::warn!("cannot start the JWKS thread: tokens of jwksUri issuers are refused");
        return;
    };
    let mut waits = Vec::new();
    for remote in remotes {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = remote.timeout() + Duration::from_millis(100);
        let weak = Arc::downgrade(&remote);
        rt.spawn(async move {
            let first = fetch_into(&remote).await;
            let _ = tx.send(());
            drop(remote);
            if first.is_ok() {
                tokio::time::sleep(JWKS_REFRESH_INTERVAL).await;
            }
            RemoteJwks::refresh_loop(weak, JWKS_REFRESH_INTERVAL, fetch).await;
        });
        waits.push((rx, deadline));
    }
    for (rx, deadline) in waits {
        let _ = rx.recv_timeout(deadline);
    }
}

/// Fetches every remote JWKS of `jwt` now and waits for the answers; returns how many were
/// stored. What a key rotation at the issuer needs before the next refresh (and the
/// end-to-end tests' hook).
pub fn refresh_now(jwt: &Authenticator) -> usize {
    let Some(rt) = runtime() else { return 0 };
    let mut waits = Vec::new();
    for remote in jwt.remotes() {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = remote.timeout() + Duration::from_millis(100);
        rt.spawn(async move {
            let _ = tx.send(fetch_into(&remote).await.is_ok());
        });
        waits.push((rx, deadline));
    }
    waits
        .into_iter()
        .filter(|(rx, d)| rx.recv_timeout(*d).unwrap_or(false))
        .count()
}

/// One fetch, stored on success.
async fn fetch_into(remote: &RemoteJwks) -> Result<(), String> {
    let text = match remote.file_path() {
        Some(path) => std::fs::read_to_string(&path).map_err(|e| e.to_string()),
        None => fetch(remote.uri().to_string(), remote.timeout()).await,
    };
    let r = text.and_then(|t| remote.store_json(&t));
    if let Err(e) = &r {
        tracing::warn!(uri = remote.uri(), error = %e, "cannot fetch the JWKS; tokens of its issuer are refused until a fetch succeeds");
    }
    r
}

/// `GET uri` over HTTP/1.1 (`http://` or `https://`, verified against the system's roots)
/// within `timeout`: the body of a `200`.
pub async fn fetch(uri: String, timeout: Duration) -> Result<String, String> {
    let roots = system_roots();
    fetch_with(uri, timeout, roots).await
}

/// [`fetch`], trusting `roots` for `https://`.
pub async fn fetch_with(
    uri: String,
    timeout: Duration,
    roots: Result<Arc<rustls::ClientConfig>, String>,
) -> Result<String, String> {
    match tokio::time::timeout(timeout, get(&uri, roots)).await {
        Ok(r) => r,
        Err(_) => Err(format!("GET {uri}: no answer within {timeout:?}")),
    }
}

/// The client configuration for `https://` JWKS: the system's roots, ring, HTTP/1.1.
fn system_roots() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no usable root certificate in the system's store".into());
            }
            client_config(roots)
        })
        .clone()
}

/// A TLS client configuration trusting `roots` (ring, TLS 1.2 and 1.3, ALPN `http/1.1`).
pub fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut c = rustls::ClientConfig::builder_with_provider(mesh_tls::verify::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

async fn get(
    uri: &str,
    roots: Result<Arc<rustls::ClientConfig>, String>,
) -> Result<String, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
    let tls = match parsed.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{uri}: only http:// and https:// are fetched")),
    };
    let authority = parsed
        .authority()
        .ok_or_else(|| format!("{uri}: no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let mut tx = if tls {
        let config = roots?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{uri}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {authority}: {e}"))?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        tokio::spawn(conn);
        tx
    } else {
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        tokio::spawn(conn);
        tx
    };
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let req = http::Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let res = tx
        .send_request(req)
        .await
        .map_err(|e| format!("GET {uri}: {e}"))?;
    if res.status() != http::StatusCode::OK {
        return Err(format!("GET {uri}: {}", res.status()));
    }
    let body = Limited::new(res.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("GET {uri}: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("GET {uri}: the body is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;

    use super::*;

    const DOC: &str = r#"{"keys":[]}"#;

    /// An HTTPS server on 127.0.0.1:0 with a certificate for `localhost` made now; answers
    /// every request with `DOC`.
    async fn https_server() -> (u16, rustls::pki_types::CertificateDer<'static>) {
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
        let cert = made.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(made.signing_key.serialize_der())
            .expect("a key");
        let mut config = rustls::ServerConfig::builder_with_provider(mesh_tls::verify::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("a server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bound");
        let port = listener.local_addr().expect("an address").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(http::Response::new(Full::new(bytes::Bytes::from(DOC))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (port, cert)
    }

    #[tokio::test]
    async fn https_jwks_is_fetched_from_a_server_the_roots_trust_and_refused_otherwise() {
        let (port, cert) = https_server().await;
        let uri = format!("https://localhost:{port}/jwks.json");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("a root");
        let got = fetch_with(uri.clone(), Duration::from_secs(5), client_config(roots)).await;
        assert_eq!(got.as_deref(), Ok(DOC));

        // a server the roots do not trust: refused
        let other =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(other.cert.der().clone()).expect("a root");
        let got = fetch_with(uri, Duration::from_secs(5), client_config(roots)).await;
        assert!(
            got.as_ref().is_err_and(|e| e.starts_with("TLS with")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn other_schemes_are_not_fetched() {
        let got = fetch("ftp://example.com/jwks.json".into(), Duration::from_secs(1)).await;
        assert!(got.is_err_and(|e| e.contains("only http:// and https://")));
    }
}
