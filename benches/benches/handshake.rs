//! TLS handshakes per second, both sides in memory: a `rustls::ClientConnection` and a
//! `rustls::ServerConnection` driven in-process (their records handed over through byte
//! buffers, no sockets), with the mesh's configurations (`mesh_tls::config`: TLS 1.3, ring,
//! ECDSA P-256 workload certificates from `mesh_tls::ca`, SPIFFE verification both ways).
//! One iteration is one whole handshake, the client's and the server's work together:
//!
//! - `mtls_full`: Istio mTLS, no resumption (every handshake verifies both chains);
//! - `mtls_resumed`: the same with TLS 1.3 session resumption (tickets kept by the client's
//!   configuration, as the connector's pooled configurations keep them);
//! - `server_auth_full`: the server authenticated only (TLS origination `SIMPLE`).
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mesh_core::identity::SpiffeId;
use mesh_tls::ca::MeshCa;
use mesh_tls::config::TlsMaterial;
use mesh_tls::verify::Accept;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

/// Moves every pending record of `from` into `to`, which processes them.
fn pass(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write");
    }
    let mut rest: &[u8] = buf;
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read");
        to.process_new_packets().expect("handshake");
    }
}

/// One whole handshake; returns whether the client resumed a session.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, buf: &mut Vec<u8>) -> bool {
    let name = ServerName::try_from("outbound_.9080_._.reviews.default.svc.cluster.local")
        .expect("a name");
    let mut c = Connection::Client(ClientConnection::new(client.clone(), name).expect("client"));
    let mut s = Connection::Server(ServerConnection::new(server.clone()).expect("server"));
    while c.is_handshaking() || s.is_handshaking() {
        pass(&mut c, &mut s, buf);
        pass(&mut s, &mut c, buf);
    }
    // the server's session tickets (TLS 1.3 sends them after the handshake)
    pass(&mut s, &mut c, buf);
    matches!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed))
}

fn configs(resume: bool, mutual: bool) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let ca = MeshCa::generate("cluster.local").expect("CA");
    let issue = |sa: &str| {
        let c = ca
            .issue(
                &SpiffeId::new("cluster.local", "default", sa),
                Duration::from_secs(3600),
            )
            .expect("certificate");
        TlsMaterial::from_pem(&c.chain_pem, &c.key_pem, ca.cert_pem()).expect("material")
    };
    let (server, client) = (issue("reviews"), issue("productpage"));
    let mut server_cfg = (*server.server_config(mutual).expect("server config")).clone();
    let accept = Accept::trust_domain("cluster.local").identities([SpiffeId::new(
        "cluster.local",
        "default",
        "reviews",
    )]);
    let mut client_cfg = (*client.client_config(accept, false).expect("client config")).clone();
    if !mutual {
        // the same verifier, no client certificate
        let mut c = ClientConfig::clone(&client_cfg);
        c.client_auth_cert_resolver = Arc::new(NoClientCert);
        client_cfg = c;
    }
    if !resume {
        client_cfg.resumption = rustls::client::Resumption::disabled();
        server_cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server_cfg.send_tls13_tickets = 0;
    }
    (Arc::new(client_cfg), Arc::new(server_cfg))
}

#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    let mut buf = Vec::with_capacity(16 * 1024);
    for (name, resume, mutual) in [
        ("mtls_full", false, true),
        ("mtls_resumed", true, true),
        ("server_auth_full", false, false),
    ] {
        let (client, server) = configs(resume, mutual);
        // the first handshake fills the client's session cache
        assert!(!handshake(&client, &server, &mut buf));
        assert_eq!(handshake(&client, &server, &mut buf), resume, "{name}");
        g.bench_function(name, |b| {
            b.iter(|| black_box(handshake(&client, &server, &mut buf)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
