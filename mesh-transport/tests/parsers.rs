//! Property tests of the engine's three byte parsers, through the same wrappers the fuzz
//! targets use (`mesh_transport::fuzzing`), so that `cargo test` on stable covers what the
//! nightly fuzzers explore: arbitrary bytes never panic, and a valid message built from
//! random parts parses back to those parts, however it is split.
#![allow(clippy::unwrap_used)]

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_transport::fuzzing::{BodyFraming, Reject, chunked_body, request_heads, response_head};
use proptest::prelude::*;

/// A field name: a token that is no hop-by-hop or framing field.
fn field_name() -> impl Strategy<Value = String> {
    "x-[a-z0-9-]{1,12}"
}

/// A field value: visible ASCII with inner spaces, no leading or trailing whitespace.
fn field_value() -> impl Strategy<Value = String> {
    "[!-~]([ !-~]{0,20}[!-~])?"
}

fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((field_name(), field_value()), 0..12)
}

/// The fields as a map (values of one name in order, as `HeaderMap` compares them).
fn map(fields: &[(String, String)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (n, v) in fields {
        m.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

/// Where a stream is cut into reads.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0usize..5000, 0..10)
}

proptest! {
    /// Any bytes: a head, a request for more, or a typed error; never a panic, never more
    /// consumed than given.
    #[test]
    fn response_heads_from_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..800),
        is_head in any::<bool>(),
        upgrade in any::<bool>(),
    ) {
        if let Ok(Some(h)) = response_head(&bytes, is_head, upgrade) {
            prop_assert!(h.consumed <= bytes.len());
        }
    }

    /// Bytes behind a plausible status line (the parser's deeper paths).
    #[test]
    fn response_heads_from_a_status_line_and_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..800),
    ) {
        let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
        wire.extend_from_slice(&bytes);
        if let Ok(Some(h)) = response_head(&wire, false, false) {
            prop_assert!(h.consumed <= wire.len());
        }
    }

    /// A head serialised from random parts parses back to them: status, fields in order,
    /// framing and reuse; every proper prefix asks for more bytes.
    #[test]
    fn response_heads_round_trip(
        status in 200u16..600,
        reason in "[A-Za-z ]{0,12}",
        fields in fields(),
        length in proptest::option::of(0u64..100_000),
        close in any::<bool>(),
        http10 in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let version = if http10 { "1.0" } else { "1.1" };
        let mut wire = format!("HTTP/{version} {status} {reason}\r\n");
        for (n, v) in &fields {
            wire.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(n) = length {
            wire.push_str(&format!("Content-Length: {n}\r\n"));
        }
        if close {
            wire.push_str("Connection: close\r\n");
        }
        wire.push_str("\r\n");
        let head_len = wire.len();
        let mut bytes = wire.into_bytes();
        bytes.extend_from_slice(&body);
        let h = response_head(&bytes, false, false).unwrap().unwrap();
        prop_assert_eq!(h.status.as_u16(), status);
        prop_assert_eq!(h.consumed, head_len);
        let mut got = h.headers.clone();
        got.remove("content-length");
        prop_assert_eq!(got, map(&fields));
        let no_body = status == 204 || status == 304;
        let expected = match length {
            _ if no_body => BodyFraming::Empty,
            Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::ToClose,
        };
        prop_assert_eq!(h.framing, expected);
        let keep = !close && !http10 && (no_body || length.is_some());
        prop_assert_eq!(h.keep_alive, keep);
        for cut in [0, 1, head_len / 2, head_len - 1] {
            prop_assert!(response_head(&bytes[..cut], false, false).unwrap().is_none());
        }
    }

    /// Any bytes as a chunked body: data, a request for more, or a typed error; never a
    /// panic, never more data than bytes given, and the same answer however it is split.
    #[test]
    fn chunked_bodies_from_any_bytes(
        wire in proptest::collection::vec(any::<u8>(), 0..800),
        cuts in cuts(),
    ) {
        let whole = chunked_body(&wire, &[]);
        if let Ok(Some(d)) = &whole {
            prop_assert!(d.data.len() + d.rest <= wire.len());
        }
        let split = chunked_body(&wire, &cuts);
        prop_assert_eq!(split.is_ok(), whole.is_ok());
        if let (Ok(Some(a)), Ok(Some(b))) = (&whole, &split) {
            prop_assert_eq!(a, b);
        }
    }

    /// A chunked body serialised from random parts (chunk sizes, extensions, trailer
    /// fields, bytes after it) decodes to those parts, however it is split.
    #[test]
    fn chunked_bodies_round_trip(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        sizes in proptest::collection::vec(1usize..700, 1..8),
        ext in any::<bool>(),
        trailers in fields(),
        after in proptest::collection::vec(any::<u8>(), 0..10),
        cuts in cuts(),
    ) {
        let mut wire = Vec::new();
        let mut rest = &body[..];
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).clamp(1, rest.len());
            wire.extend_from_slice(format!("{n:x}").as_bytes());
            if ext {
                wire.extend_from_slice(b";name=\"v\"");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&rest[..n]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        wire.extend_from_slice(b"0\r\n");
        for (n, v) in &trailers {
            wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&after);
        let d = chunked_body(&wire, &cuts).unwrap().unwrap();
        prop_assert_eq!(&d.data, &body);
        prop_assert_eq!(d.rest, after.len());
        // an empty trailer section is no trailers
        let expected = (!trailers.is_empty()).then(|| map(&trailers));
        prop_assert_eq!(d.trailers, expected);
    }

    /// Any bytes from a client: the scanner never panics and gives the same verdicts
    /// however the stream is split into reads (a split-dependent answer would let a request
    /// be smuggled past it).
    #[test]
    fn request_scanner_on_any_bytes(
        stream in proptest::collection::vec(any::<u8>(), 0..800),
        cuts in cuts(),
    ) {
        prop_assert_eq!(request_heads(&stream, &cuts), request_heads(&stream, &[]));
    }

    /// Requests serialised from random parts (fields, `Content-Length` bodies): every head
    /// is seen and passes; a second `Content-Length` in one of them flags that head, and
    /// the scan stops there.
    #[test]
    fn request_scanner_on_valid_streams(
        requests in proptest::collection::vec(
            (fields(), proptest::collection::vec(any::<u8>(), 0..40)),
            1..5,
        ),
        duplicate in proptest::option::of(0usize..5),
        cuts in cuts(),
    ) {
        let mut stream = Vec::new();
        for (i, (fields, body)) in requests.iter().enumerate() {
            stream.extend_from_slice(b"POST /upload HTTP/1.1\r\nHost: web\r\n");
            for (n, v) in fields {
                stream.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            stream.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            if duplicate == Some(i) {
                stream.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
            }
            stream.extend_from_slice(b"\r\n");
            stream.extend_from_slice(body);
        }
        let verdicts = request_heads(&stream, &cuts);
        match duplicate.filter(|&d| d < requests.len()) {
            None => prop_assert_eq!(verdicts, vec![None; requests.len()]),
            Some(d) => {
                let mut expected = vec![None; d];
                expected.push(Some(Reject::DuplicateContentLength));
                prop_assert_eq!(verdicts, expected);
            }
        }
    }
}

// === protocol detection and the HTTP/2 guards ===

mod sniffing {
    use mesh_transport::fuzzing::{Detected, FrameCursor, GoAwayCause, Seen, h2_guard, sniff};
    use proptest::prelude::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// `bytes` cut into reads at `cuts`.
    fn reads<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for end in at.into_iter().chain(std::iter::once(bytes.len())) {
            out.push(&bytes[start..end]);
            start = end;
        }
        out
    }

    /// What detection must say of a whole stream.
    fn expected(bytes: &[u8], permissive: bool) -> Detected {
        match bytes.first() {
            None => Detected::NeedMore,
            Some(0x16) if permissive => Detected::Tls,
            _ if bytes.len() >= 24 && &bytes[..24] == PREFACE => Detected::H2,
            _ if PREFACE.starts_with(bytes) => Detected::NeedMore,
            _ => Detected::H1,
        }
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            // the preface, or a prefix of it, then anything
            (0usize..=24, proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(n, rest)| {
                let mut v = PREFACE[..n].to_vec();
                v.extend(rest);
                v
            }),
            Just(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ]
    }

    proptest! {
        /// However the first bytes are split into reads, detection decides the same, and
        /// decides HTTP/2 exactly for the preface (PERMISSIVE: TLS exactly for 0x16 first).
        #[test]
        fn detection_does_not_depend_on_how_reads_split(
            bytes in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            permissive in any::<bool>(),
        ) {
            let whole = sniff(&[&bytes], permissive);
            prop_assert_eq!(whole, expected(&bytes, permissive));
            prop_assert_eq!(sniff(&reads(&bytes, &cuts), permissive), whole);
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            prop_assert_eq!(sniff(&bytewise, permissive), whole);
        }
    }

    /// A frame (RFC 9113 §4.1).
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        v.push(kind);
        v.push(flags);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn frames() -> impl Strategy<Value = Vec<(u8, u8, u32, Vec<u8>)>> {
        proptest::collection::vec(
            (
                0u8..12,
                any::<u8>(),
                0u32..0x8000_0000,
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..40,
        )
    }

    proptest! {
        /// The frame scanner finds exactly the frames a stream was built from, however the
        /// stream is cut (the guards count frames, never bytes that merely look like one).
        #[test]
        fn the_frame_scanner_finds_the_frames_however_cut(
            fs in frames(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut bytes = Vec::new();
            for (k, f, s, p) in &fs {
                bytes.extend(frame(*k, *f, *s, p));
            }
            let mut heads = Vec::new();
            let mut c = FrameCursor::default();
            for r in reads(&bytes, &cuts) {
                c.feed(r, |seen| {
                    if let Seen::Frame(h) = seen {
                        heads.push((h.kind, h.flags, h.stream, h.len as usize));
                    }
                    true
                });
            }
            let want: Vec<_> = fs.iter().map(|(k, f, s, p)| (*k, *f, *s, p.len())).collect();
            prop_assert_eq!(heads, want);
            prop_assert!(c.at_boundary());
        }

        /// Arbitrary bytes either way never panic the guards; when one trips, its GOAWAY is a
        /// well-formed ENHANCE_YOUR_CALM on stream 0, and the verdict does not depend on how
        /// the client's bytes were cut.
        #[test]
        fn the_guards_take_any_bytes(
            client in proptest::collection::vec(any::<u8>(), 0..2000),
            server in proptest::collection::vec(any::<u8>(), 0..200),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = h2_guard(&client, &[], &server);
            prop_assert_eq!(h2_guard(&client, &cuts, &server), whole);
            if let Some((_, goaway)) = whole {
                prop_assert_eq!(&goaway[..9], &[0, 0, 8, 7, 0, 0, 0, 0, 0]);
                prop_assert_eq!(&goaway[13..], &11u32.to_be_bytes());
            }
        }

        /// A client that resets most of what it opens trips the premature-reset guard, cut
        /// any way.
        #[test]
        fn rapid_reset_trips_however_cut(cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let mut client = Vec::new();
            for id in (1u32..).step_by(2).take(600) {
                client.extend(frame(1, 5, id, &[0x82]));
                client.extend(frame(3, 0, id, &8u32.to_be_bytes()));
            }
            let tripped = h2_guard(&client, &cuts, &[]).map(|(c, _)| c);
            prop_assert_eq!(tripped, Some(GoAwayCause::PrematureReset));
        }
    }
}

/// The L4 listeners' SNI reader (`client_hello_sni`), the parser the gateway's PASSTHROUGH
/// servers route by: arbitrary bytes, and real ClientHellos (rustls) framed in one record or
/// re-framed over two at every offset.
mod client_hello {
    use std::sync::Arc;

    use mesh_transport::fuzzing::{ClientHello, client_hello_sni};
    use proptest::prelude::*;

    /// The first flight of a rustls client to `name`.
    fn hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("a name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("a client");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write to a Vec");
        }
        out
    }

    /// The handshake message of a one-record ClientHello re-framed as two records, the first
    /// holding `cut` bytes of it.
    fn two_records(hello: &[u8], cut: usize) -> Vec<u8> {
        let body = &hello[5..];
        let (a, b) = body.split_at(cut);
        let mut out = Vec::new();
        for part in [a, b] {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&u16::try_from(part.len()).expect("a record").to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// What the reader must say of any input: a name found is ASCII and in the input, and
    /// the first prefix (at `cut`) that is not `Incomplete` has the whole input's answer
    /// (the listener asks again after every read while the answer is `Incomplete`).
    fn check_any(bytes: &[u8], cut: usize) -> Result<(), TestCaseError> {
        let whole = client_hello_sni(bytes);
        if let ClientHello::Sni(name) = whole {
            prop_assert!(name.is_ascii());
            prop_assert!(bytes.windows(name.len()).any(|w| w == name.as_bytes()));
        }
        let first = client_hello_sni(&bytes[..cut % (bytes.len() + 1)]);
        if first != ClientHello::Incomplete {
            prop_assert_eq!(first, whole);
        }
        Ok(())
    }

    fn dns_name() -> impl Strategy<Value = String> {
        proptest::collection::vec("[a-z][a-z0-9-]{0,12}[a-z0-9]", 1..5).prop_map(|l| l.join("."))
    }

    /// Random bytes, or random bytes behind a plausible record and handshake header (so the
    /// parser gets past its first checks).
    fn first_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            (
                any::<u16>(),
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..600)
            )
                .prop_map(|(rec, hs, rest)| {
                    let mut v = vec![0x16, 0x03, 0x01];
                    v.extend_from_slice(&(rec % 700).to_be_bytes());
                    v.extend_from_slice(&[0x01, 0x00]);
                    v.extend_from_slice(&(hs % 700).to_be_bytes());
                    v.extend(rest);
                    v
                }),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_decides_once(bytes in first_bytes(), cut in any::<usize>()) {
            check_any(&bytes, cut)?;
        }

        #[test]
        fn a_corrupted_client_hello_never_panics(
            name in dns_name(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut bytes = hello(&name);
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            check_any(&bytes, cut)?;
        }

        #[test]
        fn finds_the_sni_of_a_client_hello_split_at_every_offset(name in dns_name()) {
            let one = hello(&name);
            prop_assert_eq!(client_hello_sni(&one), ClientHello::Sni(&name));
            let body = one.len() - 5;
            let at = one
                .windows(name.len())
                .position(|w| w == name.as_bytes())
                .expect("the name is in the ClientHello")
                - 5;
            // the first record holds at least the 4-byte handshake header
            for cut in 4..body {
                let two = two_records(&one, cut);
                let got = client_hello_sni(&two);
                if cut > at && cut < at + name.len() {
                    // the name itself split over the records: not routed by a wrong name
                    prop_assert!(
                        got == ClientHello::Sni(&name) || got == ClientHello::NoSni,
                        "cut {} inside the name: {:?}", cut, got
                    );
                } else {
                    prop_assert_eq!(got, ClientHello::Sni(&name), "cut at {}", cut);
                }
            }
            // and whatever the framing, each proper prefix is incomplete
            let two = two_records(&one, body / 2);
            for n in 0..two.len() {
                prop_assert_eq!(client_hello_sni(&two[..n]), ClientHello::Incomplete, "prefix {}", n);
            }
        }
    }

    #[test]
    fn reads_an_istio_sni_cluster_name() {
        for name in [
            "outbound_.8080_._.reviews.default.svc.cluster.local",
            "outbound_.9080_.v2_.reviews.bookinfo.svc.cluster.local",
        ] {
            let one = hello(name);
            assert_eq!(client_hello_sni(&one), ClientHello::Sni(name));
            for n in 0..one.len() {
                assert_eq!(
                    client_hello_sni(&one[..n]),
                    ClientHello::Incomplete,
                    "prefix {n}"
                );
            }
        }
    }

    #[test]
    fn the_seed_client_hellos_parse_as_named() {
        let seed = |name: &str| {
            let path = format!(
                "{}/../fuzz/seeds/client_hello_sni/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            bytes[2..].to_vec()
        };
        let sni = "outbound_.8080_.v1_.reviews.default.svc.cluster.local";
        assert_eq!(
            client_hello_sni(&seed("sni-auto-passthrough")),
            ClientHello::Sni(sni)
        );
        assert_eq!(
            client_hello_sni(&seed("sni-two-records")),
            ClientHello::Sni(sni)
        );
        assert_eq!(client_hello_sni(&seed("no-sni")), ClientHello::NoSni);
        assert_eq!(
            client_hello_sni(&seed("sni-truncated")),
            ClientHello::Incomplete
        );
        assert_eq!(
            client_hello_sni(&seed("header-only")),
            ClientHello::Incomplete
        );
        assert_eq!(client_hello_sni(&seed("plaintext")), ClientHello::NotTls);
    }
}
