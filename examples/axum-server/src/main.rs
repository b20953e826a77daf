//! An axum app protected by the mesh, with no sidecar: the workload's mTLS (STRICT), JWT
//! validation, an AuthorizationPolicy and Istio's metrics, from the Istio YAML in
//! `mesh.yaml`, as one `.layer(...)`.
//!
//! ```text
//! TCP ─► MeshAcceptor (mTLS: a client certificate of the trust domain) ─► axum Router
//!        └ /reviews/{id}: MeshServer (peer identity, JWT, AuthorizationPolicy, metrics) ─► handler
//!        └ /stats/prometheus: Istio's metrics (reporter="destination")
//! ```
//!
//! To run without any setup, it makes its own mesh CA, the `reviews` certificate it serves
//! with, client certificates for `productpage` and `ratings`, and a JWT signing key (its
//! JWKS goes inline into the RequestAuthentication), then calls itself as four clients and
//! prints what each got.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_core::ext::PeerIdentity;
use mesh_core::identity::SpiffeId;
use mesh_stack::Mesh;
use mesh_tls::ca::MeshCa;
use mesh_tls::config::TlsMaterial;
use mesh_tls::jwt::RequestAuth;
use mesh_tls::verify::Accept;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

type BoxError = Box<dyn Error + Send + Sync>;

const TD: &str = "cluster.local";
const ISSUER: &str = "example@mesh.invalid";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("axum-server: {e}");
        std::process::exit(1);
    }
}

/// The handler: who called (the mTLS peer) and as whom (the token's subject).
async fn review(Path(id): Path<u32>, req: Request) -> String {
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .map(|p| p.principal().to_owned());
    let user = req
        .extensions()
        .get::<RequestAuth>()
        .map(|a| a.principal.to_string());
    format!(
        "review {id} for {} as {}",
        peer.unwrap_or_default(),
        user.unwrap_or_default()
    )
}

async fn run() -> Result<(), BoxError> {
    let dir = std::env::temp_dir().join(format!("axum-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = MeshCa::generate(TD)?;
    let cert = ca.issue(
        &SpiffeId::new(TD, "default", "reviews"),
        Duration::from_secs(3600),
    )?;
    std::fs::write(dir.join("reviews.pem"), &cert.chain_pem)?;
    std::fs::write(dir.join("reviews.key"), &cert.key_pem)?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    let key = SigningKey::new()?;
    let yaml = include_str!("../mesh.yaml")
        .replace("{DIR}", &dir.display().to_string())
        .replace("{JWKS}", &key.jwks());

    // mesh-proxy's pipeline: a policy this version cannot enforce refuses to start
    let mesh = Mesh::from_yaml("mesh.yaml", &yaml)?;
    let app = Router::new()
        .route("/reviews/{id}", get(review))
        .layer(mesh.server_layer()) // the routes above: identity, JWT, policy, metrics
        .route_service("/stats/prometheus", mesh.metrics_service());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on {addr} (mTLS)");
    tokio::spawn(mesh_stack::serve(listener, mesh.acceptor(), app));

    let token = key.sign(ISSUER)?;
    for (who, token) in [
        ("productpage", Some(&token)),
        ("productpage", None),
        ("ratings", Some(&token)),
    ] {
        let (status, body) = call(
            addr,
            &ca,
            Some(who),
            token.map(String::as_str),
            "/reviews/7",
        )
        .await?;
        let with = if token.is_some() {
            "with a token"
        } else {
            "without a token"
        };
        println!("{who} {with}: {status} {body}");
    }
    match call(addr, &ca, None, Some(&token), "/reviews/7").await {
        Ok((status, _)) => println!("plaintext: {status}"),
        Err(e) => println!("plaintext: refused ({e})"),
    }
    let (_, metrics) = call(addr, &ca, Some("productpage"), None, "/stats/prometheus").await?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        println!("{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One request over `who`'s mTLS (plaintext when `None`), with a bearer token if given.
async fn call(
    addr: SocketAddr,
    ca: &MeshCa,
    who: Option<&str>,
    token: Option<&str>,
    path: &str,
) -> Result<(u16, String), BoxError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut req = http::Request::get(path).header("host", "reviews");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let res = match who {
        Some(who) => {
            let c = ca.issue(
                &SpiffeId::new(TD, "default", who),
                Duration::from_secs(3600),
            )?;
            let m = TlsMaterial::from_pem(&c.chain_pem, &c.key_pem, ca.cert_pem())?;
            let reviews = SpiffeId::new(TD, "default", "reviews");
            let cfg = m.client_config(Accept::trust_domain(TD).identities([reviews]), false)?;
            let name = rustls::pki_types::ServerName::try_from("reviews")?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            send(TokioIo::new(tls), req).await?
        }
        None => send(TokioIo::new(tcp), req).await?,
    };
    Ok(res)
}

async fn send<I>(io: I, req: http::Request<Empty<Bytes>>) -> Result<(u16, String), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An ES256 key: its JWKS for the RequestAuthentication, and tokens it signs.
struct SigningKey(EcdsaKeyPair);

impl SigningKey {
    fn new() -> Result<Self, BoxError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "key generation")?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| "key")?;
        Ok(SigningKey(pair))
    }

    fn jwks(&self) -> String {
        let p = self.0.public_key().as_ref(); // 0x04 || x || y
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..])}]})
        .to_string()
    }

    /// A token for subject `alice`, valid for an hour.
    fn sign(&self, issuer: &str) -> Result<String, BoxError> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let claims = serde_json::json!({"iss": issuer, "sub": "alice", "exp": exp});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .0
            .sign(&SystemRandom::new(), signed.as_bytes())
            .map_err(|_| "sign")?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}
