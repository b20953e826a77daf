use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// The first flight of a real rustls client for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn reads_the_sni_of_a_rustls_client_hello() {
    let hello = client_hello("db.example.com");
    assert_eq!(client_hello_sni(&hello), ClientHello::Sni("db.example.com"));
    // every proper prefix is incomplete, never a wrong answer
    for n in 0..hello.len() {
        assert_eq!(
            client_hello_sni(&hello[..n]),
            ClientHello::Incomplete,
            "prefix of {n} bytes"
        );
    }
}

#[test]
fn a_client_hello_to_an_ip_has_no_sni() {
    // rustls sends no SNI to an IP address (RFC 6066 §3)
    let hello = client_hello("127.0.0.1");
    assert_eq!(client_hello_sni(&hello), ClientHello::NoSni);
}

#[test]
fn a_client_hello_split_over_records_is_reassembled() {
    let hello = client_hello("split.example.com");
    // re-frame the handshake message as two records
    let body = &hello[5..];
    let (a, b) = body.split_at(40);
    let mut two = Vec::new();
    for part in [a, b] {
        two.extend_from_slice(&[0x16, 0x03, 0x01]);
        two.extend_from_slice(&(part.len() as u16).to_be_bytes());
        two.extend_from_slice(part);
    }
    assert_eq!(
        client_hello_sni(&two),
        ClientHello::Sni("split.example.com")
    );
    assert_eq!(client_hello_sni(&two[..50]), ClientHello::Incomplete);
}

#[test]
fn plaintext_and_garbage_are_not_tls() {
    assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), ClientHello::NotTls);
    assert_eq!(client_hello_sni(b"PRI * HTTP/2.0"), ClientHello::NotTls);
    // a handshake record that is not a ClientHello (a ServerHello)
    assert_eq!(
        client_hello_sni(&[0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0, 0, 0]),
        ClientHello::NotTls
    );
    // a ClientHello whose extensions' length runs past its end
    let mut bad = client_hello("x.example.com");
    let ext_len_at = 5 + 4 + 2 + 32 + 1 + usize::from(bad[5 + 4 + 2 + 32]);
    let suites = usize::from(u16::from_be_bytes([bad[ext_len_at], bad[ext_len_at + 1]]));
    let comp_at = ext_len_at + 2 + suites;
    let ext_at = comp_at + 1 + usize::from(bad[comp_at]);
    bad[ext_at] = 0xff;
    assert_eq!(client_hello_sni(&bad), ClientHello::NotTls);
}

proptest::proptest! {
    #[test]
    fn never_panics_on_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let _ = client_hello_sni(&bytes);
    }

    #[test]
    fn never_panics_on_a_mangled_client_hello(i in 0usize..200, v in proptest::prelude::any::<u8>()) {
        let mut hello = client_hello("mangled.example.com");
        let i = i % hello.len();
        hello[i] = v;
        let _ = client_hello_sni(&hello);
    }
}

#[tokio::test]
async fn splice_echoes_both_ways_with_half_close() {
    let (mut client, down) = tokio::io::duplex(1024);
    let (up, mut server) = tokio::io::duplex(1024);
    let config = SpliceConfig::default();
    let spliced = splice(down, up, b"early", &config, |_, _| {});
    let peers = async {
        client.write_all(b" hello").await.unwrap();
        client.shutdown().await.unwrap(); // half-close: the server still answers
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early hello");
        server
            .write_all(b"answer after the client's FIN")
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer after the client's FIN");
    };
    let (done, ()) = tokio::join!(spliced, peers);
    assert_eq!(done.end, SpliceEnd::Closed);
    assert_eq!(done.received, 11);
    assert_eq!(done.sent, 29);
}

/// A connection that moves 4 bytes up and 5 down, then nothing until the 60 s idle
/// timeout closes it, reporting every `report_every`: how it ended and the reports.
async fn idle_connection(report_every: Duration) -> (Spliced, Vec<(u64, u64)>) {
    let (mut client, down) = tokio::io::duplex(1024);
    let (up, mut server) = tokio::io::duplex(1024);
    let reports = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let r = reports.clone();
    let config = SpliceConfig {
        idle: Duration::from_secs(60),
        report_every,
    };
    let local = tokio::task::LocalSet::new();
    let done = local
        .run_until(async move {
            let task = tokio::task::spawn_local(async move {
                splice(down, up, &[], &config, move |rx, tx| {
                    r.borrow_mut().push((rx, tx))
                })
                .await
            });
            client.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(b"pong!").await.unwrap();
            client.read_exact(&mut [0u8; 5]).await.unwrap();
            let done = task.await.unwrap();
            // closed by the idle timeout: both ends see EOF
            assert_eq!(client.read(&mut [0u8; 1]).await.unwrap(), 0);
            assert_eq!(server.read(&mut [0u8; 1]).await.unwrap(), 0);
            done
        })
        .await;
    let reports = reports.borrow().clone();
    (done, reports)
}

#[tokio::test(start_paused = true)]
async fn splice_closes_an_idle_connection_and_reports_its_bytes() {
    let (done, reports) = idle_connection(Duration::from_secs(15)).await;
    assert_eq!(done.end, SpliceEnd::Idle);
    assert_eq!((done.received, done.sent), (4, 5));
    // every byte reported once: periodically (the first 15 s tick), the rest at the end
    let total = reports
        .iter()
        .fold((0, 0), |(a, b), (rx, tx)| (a + rx, b + tx));
    assert_eq!(total, (4, 5));
    assert!(
        reports.len() >= 2,
        "a periodic report and the final one: {reports:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_reporting_interval_reports_only_at_the_end() {
    // Istio's stats filter arms no report timer for a zero `tcp_reporting_duration`; the
    // idle timeout still closes the connection
    let (done, reports) = idle_connection(Duration::ZERO).await;
    assert_eq!(done.end, SpliceEnd::Idle);
    assert_eq!(reports, [(4, 5)]);
}

#[tokio::test]
async fn connect_refuses_the_proxys_own_addresses() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let own = OwnAddrs::new();
    own.add(addr);
    let e = connect(addr, Duration::from_secs(5), None, &own)
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectError::Loop(a) if a == addr));
    own.remove(addr);
    assert!(
        connect(addr, Duration::from_secs(5), None, &own)
            .await
            .is_ok()
    );
}
