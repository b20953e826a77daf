//! TLS origination by the sidecar, as Istio's "Egress TLS Origination" task
//! (istio.io/latest/docs/tasks/traffic-management/egress/egress-tls-origination) sets it up:
//! the application sends plain HTTP to port 80 of a ServiceEntry whose port 80 has
//! `targetPort` the upstream's HTTPS port, and a DestinationRule's `portLevelSettings` for
//! port 80 says `tls: {mode: SIMPLE}`. Here the external host is a local HTTPS server whose
//! certificates (and CA) are made at test time; it records the SNI and the client
//! certificate of every request. Real sockets on port 0.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::pki::{Leaf, Pki};
use support::*;
use tokio::net::TcpListener;

/// The upstream's host, as the application names it.
const HOST: &str = "api.upstream.test";

// === an HTTPS upstream ===

/// What the upstream saw of one request: the connection's SNI, whether the client sent a
/// certificate, and which connection (accept order) carried it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    sni: Option<String>,
    client_cert: bool,
    connection: usize,
    /// The HTTP version the request came in (ALPN `h2` or `http/1.1`).
    version: http::Version,
}

struct HttpsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsUpstream {
    /// Serves HTTP/1.1 over TLS with `leaf`; `clients`: a client certificate of that CA is
    /// required.
    async fn start(leaf: &Leaf, clients: Option<&Pki>) -> HttpsUpstream {
        let chain = leaf.certs();
        let key = leaf.private_key();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            Some(ca) => {
                let roots = ca.roots();
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_single_cert(chain, key).unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                n += 1;
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    let facts = Seen {
                        sni: conn.server_name().map(str::to_string),
                        client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                        connection: n,
                        version: http::Version::HTTP_11,
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        log.lock().unwrap().push(Seen {
                            version: req.version(),
                            ..facts.clone()
                        });
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("x-backend", "https")
                                    .body(full("https"))
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
        HttpsUpstream { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

// === the configuration ===

/// Istio's task, with the upstream's address: a MESH_EXTERNAL ServiceEntry for [`HOST`] whose
/// port 80 (HTTP) targets the upstream's port, and a DestinationRule whose port-level
/// settings for port 80 hold `tls` (YAML, indented for its place).
fn config(up: &HttpsUpstream, tls: &str) -> String {
    bootstrap(
        1,
        &format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: upstream}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: {port}}}
  endpoints:
  - address: 127.0.0.1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: upstream}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls:
{tls}",
            port = up.addr.port()
        ),
    )
}

/// Starts a proxy with `tls` and sends one request for [`HOST`].
async fn one_request(up: &HttpsUpstream, tls: &str) -> Reply {
    let p = start(&config(up, tls)).await;
    get_once(p.out, HOST, &[]).await
}

/// Whether the proxy's reply carries Envoy's response flag `flag` (among others: a
/// connect failure is retried by the default policy, `URX` when it runs out).
fn has_flag(r: &Reply, flag: &str) -> bool {
    r.flags().split(',').any(|f| f == flag)
}

/// A `503` made by the proxy for a failed connection (Envoy reports TLS errors to
/// upstreams as connect failures).
fn assert_uf(r: &Reply) {
    assert_eq!(r.status.as_u16(), 503, "{r:?}");
    assert!(has_flag(r, "UF"), "{r:?}");
}

// === the tests ===

#[tokio::test]
async fn simple_with_ca_certificates_originates_tls_with_the_host_as_sni() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let up = HttpsUpstream::start(&pki.leaf(&[HOST], false), None).await;
    let ca = pki.write(dir.path(), "ca.pem");
    let r = one_request(
        &up,
        &format!("        mode: SIMPLE\n        caCertificates: {ca}\n"),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "https"), "{r:?}");
    // Envoy's auto_sni (Istio sets it when `sni` is unset): the request's host
    assert_eq!(
        up.seen(),
        [Seen {
            sni: Some(HOST.into()),
            client_cert: false,
            connection: 1,
            version: http::Version::HTTP_11,
        }]
    );
}

#[tokio::test]
async fn an_http2_port_offers_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let up = HttpsUpstream::start(&pki.leaf(&[HOST], false), None).await;
    let ca = pki.write(dir.path(), "ca.pem");
    let yaml = config(
        &up,
        &format!("        mode: SIMPLE\n        caCertificates: {ca}\n"),
    )
    .replace("protocol: HTTP,", "protocol: HTTP2,");
    let p = start(&yaml).await;
    let r = get_once(p.out, HOST, &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    assert_eq!(up.seen()[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn a_server_of_an_untrusted_ca_is_refused_uf() {
    let dir = tempfile::tempdir().unwrap();
    let (trusted, other) = (Pki::new("trusted"), Pki::new("other"));
    let up = HttpsUpstream::start(&other.leaf(&[HOST], false), None).await;
    let ca = trusted.write(dir.path(), "ca.pem");
    let r = one_request(
        &up,
        &format!("        mode: SIMPLE\n        caCertificates: {ca}\n"),
    )
    .await;
    assert_uf(&r);
    assert!(up.seen().is_empty(), "no request reached the upstream");
    // Envoy 1.40's body (the reason goes to the access log: below)
    assert_eq!(r.body, ENVOY_UF_BODY, "{r:?}");
}

/// Envoy 1.40's body for a connection refused or a TLS handshake failed, after the retries
/// of Istio's default policy (`connect-failure`: URX,UF), as envoy 1.40 writes it.
const ENVOY_UF_BODY: &str = "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure";

/// An upstream that does not speak TLS at all: BoringSSL's `WRONG_VERSION_NUMBER`, in the
/// access log's transport failure reason and response code details as Envoy 1.40 writes them
/// (checked against envoy 1.40 with the same plaintext upstream).
#[tokio::test]
async fn a_plaintext_server_is_refused_uf_with_wrong_version_number_in_the_access_log() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let ca = pki.write(dir.path(), "ca.pem");
    let log = dir.path().join("access.json");
    let plain = backend("plain").await;
    let up = HttpsUpstream::start(&pki.leaf(&[HOST], false), None).await;
    // the configuration of a TLS upstream, pointed at the plaintext one, with a JSON log
    let yaml = config(
        &up,
        &format!("        mode: SIMPLE\n        caCertificates: {ca}\n"),
    )
    .replace(
        &format!("targetPort: {}", up.addr.port()),
        &format!("targetPort: {}", plain.port()),
    )
    .replacen(
        "spec:\n",
        &format!(
            "spec:\n  accessLog: {{path: {}, encoding: JSON}}\n",
            log.display()
        ),
        1,
    );
    let p = start(&yaml).await;
    let r = get_once(p.out, HOST, &[]).await;
    assert_uf(&r);
    assert_eq!(r.body, ENVOY_UF_BODY, "{r:?}");
    assert_eq!(plain.hits(), 0, "no request reached it");
    p.proxy.flush_telemetry();
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).unwrap();
    let reason =
        "TLS_error:|268435703:SSL_routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end";
    assert_eq!(line["upstream_transport_failure_reason"], reason, "{line}");
    assert_eq!(
        line["response_code_details"],
        format!("upstream_reset_before_response_started{{remote_connection_failure|{reason}}}"),
        "{line}"
    );
}

#[tokio::test]
async fn a_server_certificate_for_another_host_is_refused_without_sni_or_subject_alt_names() {
    // auto_san_validation: the certificate must name the request's host
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let up = HttpsUpstream::start(&pki.leaf(&["elsewhere.test"], false), None).await;
    let ca = pki.write(dir.path(), "ca.pem");
    let r = one_request(
        &up,
        &format!("        mode: SIMPLE\n        caCertificates: {ca}\n"),
    )
    .await;
    assert_uf(&r);
}

#[tokio::test]
async fn sni_is_sent_to_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let up = HttpsUpstream::start(&pki.leaf(&[HOST], false), None).await;
    let ca = pki.write(dir.path(), "ca.pem");
    let r = one_request(
        &up,
        &format!(
            "        mode: SIMPLE\n        caCertificates: {ca}\n        sni: front.upstream.test\n"
        ),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    assert_eq!(up.seen()[0].sni.as_deref(), Some("front.upstream.test"));
}

#[tokio::test]
async fn subject_alt_names_must_be_in_the_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let up = HttpsUpstream::start(&pki.leaf(&[HOST, "alt.upstream.test"], false), None).await;
    let ca = pki.write(dir.path(), "ca.pem");
    let tls = |sans: &str| {
        format!(
            "        mode: SIMPLE\n        caCertificates: {ca}\n        subjectAltNames: [{sans}]\n"
        )
    };
    let r = one_request(&up, &tls("wrong.upstream.test")).await;
    assert_uf(&r);
    let r = one_request(&up, &tls("nope.test, alt.upstream.test")).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
}

#[tokio::test]
async fn service_entry_subject_alt_names_are_checked_when_the_destination_rule_names_none() {
    // Istio's constructUpstreamTLS: for the external registry, the ServiceEntry's
    // subjectAltNames stand in for the DestinationRule's
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let up = HttpsUpstream::start(&pki.leaf(&[HOST], false), None).await;
    let ca = pki.write(dir.path(), "ca.pem");
    let tls = format!("        mode: SIMPLE\n        caCertificates: {ca}\n");
    let with_sans = |sans: &str| {
        config(&up, &tls).replace(
            "  location: MESH_EXTERNAL\n",
            &format!("  location: MESH_EXTERNAL\n  subjectAltNames: [{sans}]\n"),
        )
    };
    let p = start(&with_sans("someone-else.test")).await;
    let r = get_once(p.out, HOST, &[]).await;
    assert_uf(&r);
    let p = start(&with_sans(HOST)).await;
    assert_eq!(get_once(p.out, HOST, &[]).await.status.as_u16(), 200);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_an_untrusted_server() {
    let pki = Pki::new("nobody trusts me");
    let up = HttpsUpstream::start(&pki.leaf(&["whatever.test"], false), None).await;
    let yaml = config(
        &up,
        "        mode: SIMPLE\n        insecureSkipVerify: true\n",
    );
    // a warning at load, naming the field
    let compiled = mesh_core::config::load_str("e2e.yaml", &yaml).unwrap();
    let built = mesh_proxy::pipeline::build_compiled(compiled).unwrap();
    let w: Vec<String> = built
        .compiled
        .warnings
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert!(
        w.iter().any(
            |d| d.contains("portLevelSettings[0].tls.insecureSkipVerify")
                && d.contains("not verified")
        ),
        "{w:?}"
    );
    let p = start(&yaml).await;
    let r = get_once(p.out, HOST, &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
}

#[tokio::test]
async fn mutual_presents_the_client_certificate_the_upstream_requires() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, clients) = (Pki::new("servers"), Pki::new("clients"));
    let up = HttpsUpstream::start(&servers.leaf(&[HOST], false), Some(&clients)).await;
    let ca = servers.write(dir.path(), "ca.pem");
    let (cert, key) = clients
        .leaf(&["sleep.default"], true)
        .write(dir.path(), "client");
    let r = one_request(
        &up,
        &format!(
            "        mode: MUTUAL\n        caCertificates: {ca}\n        clientCertificate: {cert}\n        privateKey: {key}\n"
        ),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    assert!(up.seen()[0].client_cert);
    // the same upstream without a client certificate: the upstream refuses it (in TLS 1.3
    // after the client's side of the handshake completed: a reset, UC, or a connect
    // failure, UF)
    let r = one_request(
        &up,
        &format!("        mode: SIMPLE\n        caCertificates: {ca}\n"),
    )
    .await;
    assert_eq!(r.status.as_u16(), 503, "{r:?}");
    assert!(has_flag(&r, "UF") || has_flag(&r, "UC"), "{r:?}");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn rewritten_client_certificate_files_are_used_by_new_connections() {
    // Istio serves a DestinationRule's files through its file-watching SDS: a rotated client
    // certificate is picked up without a reload
    let dir = tempfile::tempdir().unwrap();
    let (servers, clients, strangers) = (Pki::new("servers"), Pki::new("clients"), Pki::new("x"));
    let up = HttpsUpstream::start(&servers.leaf(&[HOST], false), Some(&clients)).await;
    let ca = servers.write(dir.path(), "ca.pem");
    // first a certificate the upstream does not accept
    let (cert, key) = strangers
        .leaf(&["sleep.default"], true)
        .write(dir.path(), "client");
    let yaml = config(
        &up,
        &format!(
            "        mode: MUTUAL\n        caCertificates: {ca}\n        clientCertificate: {cert}\n        privateKey: {key}\n"
        ),
    );
    let p = start(&yaml).await;
    let r = get_once(p.out, HOST, &[]).await;
    assert_eq!(r.status.as_u16(), 503, "{r:?}");
    assert!(
        !p.proxy.state().rotate_certificates(),
        "nothing changed yet"
    );
    // the key first: the pair does not match until the certificate follows, and the
    // current one stays
    let good = clients.leaf(&["sleep.default"], true);
    std::fs::write(&key, &good.key).unwrap();
    assert!(!p.proxy.state().rotate_certificates());
    std::fs::write(&cert, &good.chain).unwrap();
    assert!(p.proxy.state().rotate_certificates());
    let r = get_once(p.out, HOST, &[]).await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    assert!(up.seen().iter().all(|s| s.client_cert));
}

#[tokio::test]
async fn two_subsets_with_different_tls_to_one_address_never_share_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let up = HttpsUpstream::start(&pki.leaf(&[HOST], false), None).await;
    let ca = pki.write(dir.path(), "ca.pem");
    // one endpoint in both subsets; each subset sends its own SNI
    let yaml = config(
        &up,
        &format!("        mode: SIMPLE\n        caCertificates: {ca}\n"),
    )
    .replace(
        "  - address: 127.0.0.1\n",
        "  - address: 127.0.0.1\n    labels: {a: x, b: y}\n",
    ) + &format!(
        "  subsets:
  - name: one
    labels: {{a: x}}
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 80}}
        tls: {{mode: SIMPLE, caCertificates: {ca}, sni: one.upstream.test}}
  - name: two
    labels: {{b: y}}
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 80}}
        tls: {{mode: SIMPLE, caCertificates: {ca}, sni: two.upstream.test}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: upstream}}
spec:
  hosts: [{HOST}]
  http:
  - match: [{{headers: {{x-subset: {{exact: two}}}}}}]
    route: [{{destination: {{host: {HOST}, subset: two, port: {{number: 80}}}}}}]
  - route: [{{destination: {{host: {HOST}, subset: one, port: {{number: 80}}}}}}]
"
    );
    let p = start(&yaml).await;
    let mut c = H1::connect(p.out).await;
    for subset in ["one", "two", "one", "two"] {
        let r = c.get(HOST, &[("x-subset", subset)]).await;
        assert_eq!(r.status.as_u16(), 200, "{r:?}");
    }
    let seen = up.seen();
    let sni: Vec<&str> = seen.iter().map(|s| s.sni.as_deref().unwrap()).collect();
    assert_eq!(
        sni,
        [
            "one.upstream.test",
            "two.upstream.test",
            "one.upstream.test",
            "two.upstream.test"
        ]
    );
    // and the pooled connections were reused, each by its own subset
    assert_eq!(seen[0].connection, seen[2].connection);
    assert_eq!(seen[1].connection, seen[3].connection);
    assert_ne!(seen[0].connection, seen[1].connection);
}

#[tokio::test]
async fn unusable_files_are_errors_naming_the_field_in_validate_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("upstream CA");
    let up = HttpsUpstream::start(&pki.leaf(&[HOST], false), None).await;
    let ca = pki.write(dir.path(), "ca.pem");
    let (cert, _) = pki.leaf(&["c.test"], true).write(dir.path(), "client");
    let (_, other_key) = pki.leaf(&["d.test"], true).write(dir.path(), "other");
    let missing = dir.path().join("missing.pem").display().to_string();
    let cases = [
        (
            format!("        mode: SIMPLE\n        caCertificates: {missing}\n"),
            "portLevelSettings[0].tls.caCertificates",
            "cannot read",
        ),
        (
            format!(
                "        mode: MUTUAL\n        caCertificates: {ca}\n        clientCertificate: {cert}\n        privateKey: {other_key}\n"
            ),
            "portLevelSettings[0].tls.privateKey",
            "does not match",
        ),
        (
            // Istio's validation message (validateTLSSettings)
            format!("        mode: MUTUAL\n        caCertificates: {ca}\n"),
            "portLevelSettings[0].tls",
            "client certificate required for mutual tls",
        ),
    ];
    for (tls, field, message) in cases {
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, config(&up, &tls)).unwrap();
        // validate and run go through the same pipeline
        let err = mesh_proxy::pipeline::build_files(&[&path]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(field) && text.contains(message) && text.contains("mesh.yaml:"),
            "{field}: {text}"
        );
        let run = mesh_proxy::proxy::Proxy::start(vec![path.clone()])
            .err()
            .unwrap();
        assert!(run.to_string().contains(message), "{run}");
    }
}
