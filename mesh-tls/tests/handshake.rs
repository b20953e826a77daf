//! Real rustls handshakes (over an in-memory pipe) between configurations made by
//! `mesh_tls::config`, with certificates made at test time: who is accepted, who is refused,
//! and what each side learns about the other. The cases of Istio's mTLS (a workload
//! certificate per service account, one trust bundle, peers checked by SPIFFE identity).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::identity::SpiffeId;
use mesh_tls::ca::MeshCa;
use mesh_tls::config::{TlsFiles, TlsMaterial, WorkloadIdentity};
use mesh_tls::peer::spiffe_id;
use mesh_tls::verify::Accept;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "cluster.local";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa)
}

fn material(ca: &MeshCa, who: &SpiffeId, bundle: &str) -> TlsMaterial {
    let c = ca.issue(who, Duration::from_secs(3600)).unwrap();
    TlsMaterial::from_pem(&c.chain_pem, &c.key_pem, bundle).unwrap()
}

/// What each side saw of a handshake.
#[derive(Debug)]
struct Outcome {
    client: Result<(), String>,
    server: Result<Option<SpiffeId>, String>,
    alpn: Option<Vec<u8>>,
}

async fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> Outcome {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_side = tokio::spawn(async move {
        match TlsAcceptor::from(server).accept(s).await {
            Ok(mut tls) => {
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| spiffe_id(c).unwrap());
                let mut b = [0u8; 4];
                let _ = tls.read_exact(&mut b).await;
                let _ = tls.write_all(b"pong").await;
                let _ = tls.flush().await;
                Ok(peer)
            }
            Err(e) => Err(e.to_string()),
        }
    });
    // SNI as Istio's sidecars send it: the outbound cluster name; never compared with the
    // certificate
    let name = ServerName::try_from("outbound_.9080_._.reviews.default.svc.cluster.local").unwrap();
    let (client, alpn) = match TlsConnector::from(client).connect(name, c).await {
        Ok(mut tls) => {
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            tls.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            let r = tls
                .read_exact(&mut b)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            (r, alpn)
        }
        Err(e) => (Err(e.to_string()), None),
    };
    Outcome {
        client,
        server: server_side.await.unwrap(),
        alpn,
    }
}

#[tokio::test]
async fn mutual_tls_between_two_workloads_tells_each_side_the_other_s_identity() {
    let ca = MeshCa::generate(TD).unwrap();
    let reviews = material(&ca, &id("reviews"), ca.cert_pem());
    let productpage = material(&ca, &id("productpage"), ca.cert_pem());
    let client = productpage
        .client_config(Accept::trust_domain(TD).identities([id("reviews")]), true)
        .unwrap();
    let o = handshake(client, reviews.server_config(true).unwrap()).await;
    assert_eq!(o.client, Ok(()));
    assert_eq!(o.server, Ok(Some(id("productpage"))));
    assert_eq!(o.alpn.as_deref(), Some(&b"h2"[..]));
    // an HTTP/1.1 endpoint: ALPN http/1.1
    let client = productpage
        .client_config(Accept::trust_domain(TD), false)
        .unwrap();
    let o = handshake(client, reviews.server_config(true).unwrap()).await;
    assert_eq!(o.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn a_server_with_another_identity_than_expected_is_refused() {
    let ca = MeshCa::generate(TD).unwrap();
    let impostor = material(&ca, &id("ratings"), ca.cert_pem());
    let client = material(&ca, &id("productpage"), ca.cert_pem())
        .client_config(Accept::trust_domain(TD).identities([id("reviews")]), false)
        .unwrap();
    let o = handshake(client, impostor.server_config(true).unwrap()).await;
    let e = o.client.unwrap_err();
    assert!(
        e.contains("spiffe://cluster.local/ns/default/sa/ratings is not among the expected"),
        "{e}"
    );
    // a certificate error (the connector's CERTIFICATE_VERIFY_FAILED), not a General one
    assert!(e.starts_with("invalid peer certificate"), "{e}");
    assert!(o.server.is_err(), "the server sees the client's alert");
}

#[tokio::test]
async fn certificates_of_an_untrusted_ca_are_refused_both_ways() {
    let ca = MeshCa::generate(TD).unwrap();
    let rogue = MeshCa::generate(TD).unwrap();
    let good = material(&ca, &id("reviews"), ca.cert_pem());
    let bad = material(&rogue, &id("reviews"), rogue.cert_pem());
    // a client trusting `ca` meets a server of `rogue`
    let o = handshake(
        good.client_config(Accept::trust_domain(TD), false).unwrap(),
        bad.server_config(true).unwrap(),
    )
    .await;
    let e = o.client.unwrap_err();
    assert!(e.contains("BadSignature") || e.contains("issuer"), "{e}");
    // a client with a look-alike CA's certificate (it trusts the good server) meets a
    // STRICT server trusting `ca`
    let both = format!("{}{}", ca.cert_pem(), rogue.cert_pem());
    let c = rogue
        .issue(&id("productpage"), Duration::from_secs(60))
        .unwrap();
    let rogue_client = TlsMaterial::from_pem(&c.chain_pem, &c.key_pem, &both)
        .unwrap()
        .client_config(Accept::trust_domain(TD), false)
        .unwrap();
    let o = handshake(rogue_client, good.server_config(true).unwrap()).await;
    let e = o.server.unwrap_err();
    assert!(
        e.contains("BadSignature") || e.contains("issuer"),
        "the server refuses: {e}"
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let ca = MeshCa::generate(TD).unwrap();
    let now = SystemTime::now();
    let client = material(&ca, &id("productpage"), ca.cert_pem())
        .client_config(Accept::trust_domain(TD), false)
        .unwrap();
    for (from, to, what) in [
        (
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
            "expired",
        ),
        (
            now + Duration::from_secs(3600),
            now + Duration::from_secs(7200),
            "not valid",
        ),
    ] {
        let c = ca.issue_between(&id("reviews"), from, to).unwrap();
        let server = TlsMaterial::from_pem(&c.chain_pem, &c.key_pem, ca.cert_pem()).unwrap();
        let o = handshake(client.clone(), server.server_config(true).unwrap()).await;
        let e = o.client.unwrap_err();
        assert!(e.contains(what), "{what}: {e}");
    }
}

#[tokio::test]
async fn strict_requires_a_client_certificate_and_permissive_tls_does_not() {
    let ca = MeshCa::generate(TD).unwrap();
    let server = material(&ca, &id("reviews"), ca.cert_pem());
    // a client with the bundle but no certificate of its own
    let mut roots = rustls::RootCertStore::empty();
    for c in mesh_tls::config::certs(ca.cert_pem()).unwrap() {
        roots.add(c).unwrap();
    }
    let verifier =
        mesh_tls::verify::SpiffeServerVerifier::new(Arc::new(roots), Accept::trust_domain(TD));
    let anonymous = Arc::new(
        rustls::ClientConfig::builder_with_provider(mesh_tls::verify::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    );
    let o = handshake(anonymous.clone(), server.server_config(true).unwrap()).await;
    assert!(
        o.server.unwrap_err().contains("CertificateRequired") || o.client.is_err(),
        "STRICT refuses a client without a certificate"
    );
    let o = handshake(anonymous, server.server_config(false).unwrap()).await;
    assert_eq!(o.client, Ok(()));
    assert_eq!(o.server, Ok(None), "no identity learnt");
}

#[tokio::test]
async fn identities_of_a_foreign_trust_domain_are_refused() {
    let ours = MeshCa::generate(TD).unwrap();
    let theirs = MeshCa::generate("other.example").unwrap();
    let both = format!("{}{}", ours.cert_pem(), theirs.cert_pem());
    let server = material(&ours, &id("reviews"), &both);
    let c = theirs
        .issue(
            &SpiffeId::new("other.example", "default", "productpage"),
            Duration::from_secs(3600),
        )
        .unwrap();
    let foreign = TlsMaterial::from_pem(&c.chain_pem, &c.key_pem, &both).unwrap();
    // the foreign client trusts our server; our server accepts only our trust domain
    let client = foreign
        .client_config(
            Accept {
                trust_domains: vec!["other.example".into(), TD.into()],
                identities: vec![],
            },
            false,
        )
        .unwrap();
    let o = handshake(client, server.server_config(true).unwrap()).await;
    let e = o.server.unwrap_err();
    assert!(e.contains("not in a trusted trust domain"), "{e}");
}

#[tokio::test]
async fn certificates_without_a_spiffe_identity_are_refused() {
    // a CA of our own making that issues a DNS-only leaf (a web certificate)
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, TD);
    let root = p.self_signed(&key).unwrap();
    let issuer = rcgen::Issuer::new(p, key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["reviews.example".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let err = TlsMaterial::from_pem(
        &format!("{}{}", leaf.pem(), root.pem()),
        &leaf_key.serialize_pem(),
        &root.pem(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no SPIFFE identity"), "{err}");
    // and as a peer: a server presenting it is refused by the client's verifier
    let ca = MeshCa::from_pem(&root.pem(), &issuer.key().serialize_pem()).unwrap();
    let client = material(&ca, &id("productpage"), &root.pem())
        .client_config(Accept::trust_domain(TD), false)
        .unwrap();
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(mesh_tls::verify::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap(),
    );
    let o = handshake(client, server).await;
    assert!(o.client.unwrap_err().contains("no SPIFFE identity"));
}

#[tokio::test]
async fn workload_certificates_of_an_intermediate_ca_chain_to_the_root() {
    let root = MeshCa::generate(TD).unwrap();
    let east = root.intermediate("east").unwrap();
    assert_eq!(east.trust_domain(), Some(TD));
    let server = material(&east, &id("reviews"), root.cert_pem());
    let client = material(&east, &id("productpage"), root.cert_pem());
    let o = handshake(
        client
            .client_config(Accept::trust_domain(TD).identities([id("reviews")]), false)
            .unwrap(),
        server.server_config(true).unwrap(),
    )
    .await;
    assert_eq!(o.client, Ok(()));
    assert_eq!(o.server, Ok(Some(id("productpage"))));
    // an intermediate saved and loaded (its certificate file holds its chain) issues the same
    let again = MeshCa::from_pem(east.chain_pem(), &east.key_pem()).unwrap();
    assert_eq!(again.trust_domain(), Some(TD));
    let c = again
        .issue(&id("ratings"), Duration::from_secs(60))
        .unwrap();
    assert_eq!(c.chain_pem.matches("BEGIN CERTIFICATE").count(), 3);
}

#[tokio::test]
async fn tls_1_2_clients_are_served() {
    let ca = MeshCa::generate(TD).unwrap();
    let server = material(&ca, &id("reviews"), ca.cert_pem());
    let verifier = mesh_tls::verify::SpiffeServerVerifier::new(
        server.roots().clone(),
        Accept::trust_domain(TD).identities([id("reviews")]),
    );
    let mut v12 = rustls::ClientConfig::builder_with_provider(mesh_tls::verify::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    v12.alpn_protocols = vec![b"http/1.1".to_vec()];
    let o = handshake(Arc::new(v12), server.server_config(false).unwrap()).await;
    assert_eq!(o.client, Ok(()));
}

#[test]
fn rotation_swaps_the_material_and_a_broken_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        chain: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        bundle: dir.path().join("ca.pem"),
    };
    let ca = MeshCa::generate(TD).unwrap();
    let write = |c: &mesh_tls::ca::WorkloadCert, bundle: &str| {
        std::fs::write(&files.chain, &c.chain_pem).unwrap();
        std::fs::write(&files.key, &c.key_pem).unwrap();
        std::fs::write(&files.bundle, bundle).unwrap();
    };
    let first = ca.issue(&id("reviews"), Duration::from_secs(3600)).unwrap();
    write(&first, ca.cert_pem());
    let w = WorkloadIdentity::load(files.clone()).unwrap();
    assert!(!w.reload_if_changed().unwrap(), "nothing changed");
    let before = w.current();
    // rotation: a new certificate (and key) for the same identity
    let second = ca.issue(&id("reviews"), Duration::from_secs(7200)).unwrap();
    write(&second, ca.cert_pem());
    assert!(w.reload_if_changed().unwrap());
    let after = w.current();
    assert!(!Arc::ptr_eq(&before, &after));
    assert_eq!(after.identity(), &id("reviews"));
    // a key caught mid-write (the old key with the new chain): refused, the last good stays
    let third = ca.issue(&id("reviews"), Duration::from_secs(7200)).unwrap();
    std::fs::write(&files.chain, &third.chain_pem).unwrap();
    let err = w.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("TLS configuration"), "{err}");
    assert!(Arc::ptr_eq(&after, &w.current()));
    // the key lands: the next call succeeds
    std::fs::write(&files.key, &third.key_pem).unwrap();
    assert!(w.reload_if_changed().unwrap());
}
