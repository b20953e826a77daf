//! Response-head parsing (RFC 9112 §4, §6.3, §9.3): status line and fields (httparse, on
//! the stack for up to 64 fields), interim responses skipped, hop-by-hop fields dropped,
//! the body's framing and the connection's reuse decided.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::{MAX_HEADERS, MAX_RESPONSE_HEAD, STACK_HEADERS};
use crate::headers::{
    CONNECTION, TRANSFER_ENCODING, UPGRADE, connection_tokens, hop_by_hop_bit, known_response_name,
};

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Eof,
}

/// A parsed response head.
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    pub(crate) keep_alive: bool,
}

/// Why an upstream's response head was refused: the request is answered `502` (flag `UPE`)
/// and the reason logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// The status line or a field is not HTTP/1.x syntax (httparse's reason).
    #[error("malformed response head: {0}")]
    Syntax(httparse::Error),
    /// The head is larger than the 64 KiB accepted (Envoy's `max_response_headers_kb`).
    #[error("response head larger than {} bytes", MAX_RESPONSE_HEAD)]
    TooLarge,
    /// More header fields than the 1024 accepted.
    #[error("more than {} response header fields", MAX_HEADERS)]
    TooManyFields,
    /// A three-digit status below 100.
    #[error("status code {0} out of range")]
    Status(u16),
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedSwitch,
    /// A field name `http` refuses.
    #[error("invalid response header field name")]
    FieldName,
    /// A field value `http` refuses.
    #[error("invalid response header field value")]
    FieldValue,
    /// A `Content-Length` that is not a decimal number (or has more than 19 digits).
    #[error("malformed Content-Length")]
    ContentLength,
    /// Two `Content-Length` fields that disagree (RFC 9112 §6.3 rule 5).
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
}

/// Where a parsed field lies in the head: name offset and length, value offset and length.
pub(super) type Field = [u32; 4];

/// Parses a response head at the start of `buf`. `Ok(None)`: more bytes are needed.
/// Interim responses are consumed and skipped; the final head is consumed (split off and
/// frozen: header values share its bytes). `101` is final when the request asked for an
/// `upgrade`, an error otherwise.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    is_head: bool,
    upgrade: bool,
) -> Result<Option<Head>, HeadError> {
    loop {
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut offsets: [Field; STACK_HEADERS] = [[0; 4]; STACK_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut stack);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return parse_head_heap(buf, is_head, upgrade),
            Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Syntax(e)),
        };
        let code = res.code.ok_or(HeadError::Syntax(httparse::Error::Status))?;
        let http10 = res.version == Some(0);
        let n = record_offsets(buf.as_ptr(), res.headers, &mut offsets);
        match finish_head(buf, len, code, http10, &offsets[..n], is_head, upgrade)? {
            Some(head) => return Ok(Some(head)),
            None if buf.is_empty() => return Ok(None),
            None => {} // an interim response: the next one follows
        }
    }
}

/// After a complete parse of `len` bytes: an interim response is consumed (`None`), a final
/// one split off, frozen and built.
fn finish_head(
    buf: &mut BytesMut,
    len: usize,
    code: u16,
    http10: bool,
    fields: &[Field],
    is_head: bool,
    upgrade: bool,
) -> Result<Option<Head>, HeadError> {
    if interim(code, upgrade)? {
        buf.advance(len);
        return Ok(None);
    }
    let head = buf.split_to(len).freeze();
    build_head(&head, fields, code, http10, is_head).map(Some)
}

#[cold]
fn parse_head_heap(
    buf: &mut BytesMut,
    is_head: bool,
    upgrade: bool,
) -> Result<Option<Head>, HeadError> {
    let mut heap = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut heap);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(e) => return Err(HeadError::Syntax(e)),
    };
    let code = res.code.ok_or(HeadError::Syntax(httparse::Error::Status))?;
    let http10 = res.version == Some(0);
    let mut offsets = vec![[0; 4]; res.headers.len()];
    let n = record_offsets(buf.as_ptr(), res.headers, &mut offsets);
    match finish_head(buf, len, code, http10, &offsets[..n], is_head, upgrade)? {
        Some(head) => Ok(Some(head)),
        None => parse_head(buf, is_head, upgrade),
    }
}

/// Whether `code` is an interim response to skip; `101` (an upgrade) is final when the
/// request asked for an `upgrade`, refused otherwise.
fn interim(code: u16, upgrade: bool) -> Result<bool, HeadError> {
    match code {
        101 if upgrade => Ok(false),
        101 => Err(HeadError::UnexpectedSwitch),
        100..=199 => Ok(true),
        _ => Ok(false),
    }
}

/// Records where each field's name and value lie relative to `base` (the parsed buffer).
pub(super) fn record_offsets(
    base: *const u8,
    fields: &[httparse::Header<'_>],
    out: &mut [Field],
) -> usize {
    let base = base as usize;
    let mut n = 0;
    for (f, o) in fields.iter().zip(out.iter_mut()) {
        // offsets within a head of at most MAX_HEADERS fields and a few hundred KiB
        *o = [
            (f.name.as_ptr() as usize - base) as u32,
            f.name.len() as u32,
            (f.value.as_ptr() as usize - base) as u32,
            f.value.len() as u32,
        ];
        n += 1;
    }
    n
}

/// The fields a response's header map has room for without growing: the upstream's and
/// those the proxy adds (`server`, `x-envoy-upstream-service-time`). hyper's HTTP/1.1 server
/// keeps the map it sent a response with, emptied, for the connection's next request, which
/// then has room for the fields the layers add (`x-request-id`, the trace headers,
/// `x-forwarded-proto`, `x-envoy-attempt-count`, `x-envoy-expected-rq-timeout-ms`) where a
/// map of the upstream's size made the first of them rehash every field (about 1,000
/// instructions per request, the map's size doubled and its fields moved). 24 is what a
/// map of 13 to 24 fields holds anyway (its table rounds up to 32 slots). The price is
/// about 2.5 KiB per map: kept between requests by an idle keep-alive connection, and
/// spent for nothing where no server reuses it (an HTTP/2 downstream, the in-process
/// client).
const HEAD_ROOM: usize = 24;

/// Builds the header map (hop-by-hop fields left out) and decides framing and reuse.
fn build_head(
    head: &Bytes,
    fields: &[Field],
    code: u16,
    http10: bool,
    is_head: bool,
) -> Result<Head, HeadError> {
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Status(code))?;
    let version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(fields.len().max(HEAD_ROOM));
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive = false;
    // Field names listed in `Connection` other than close / keep-alive (rare).
    let mut named: Vec<HeaderName> = Vec::new();
    for &[no, nl, vo, vl] in fields {
        let name = head
            .get(no as usize..(no + nl) as usize)
            .ok_or(HeadError::FieldName)?;
        let value_range = vo as usize..(vo + vl) as usize;
        let raw_value = head.get(value_range.clone()).ok_or(HeadError::FieldValue)?;
        match hop_by_hop_bit(name) {
            0 => {
                let name = match known_response_name(name) {
                    Some(known) => known,
                    None => HeaderName::from_bytes(name).map_err(|_| HeadError::FieldName)?,
                };
                let value = HeaderValue::from_maybe_shared(head.slice(value_range))
                    .map_err(|_| HeadError::FieldValue)?;
                if name == header::CONTENT_LENGTH {
                    let n = parse_content_length(raw_value)?;
                    match content_length {
                        Some(prev) if prev != n => return Err(HeadError::ConflictingContentLength),
                        Some(_) => continue, // an identical repeat: keep one
                        None => content_length = Some(n),
                    }
                }
                headers.append(name, value);
            }
            CONNECTION => {
                for token in connection_tokens(raw_value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if code == 101 && token.eq_ignore_ascii_case(b"upgrade") {
                        // the `Upgrade` of a `101` is relayed (see below)
                    } else if let Ok(n) = HeaderName::from_bytes(token) {
                        named.push(n);
                    }
                }
            }
            TRANSFER_ENCODING => {
                transfer_encoding = true;
                // chunked must be the final coding (RFC 9112 §6.3 rule 4)
                chunked = raw_value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            // the protocol switched to, relayed with the `101` that agrees to it
            UPGRADE if code == 101 => {
                let value = HeaderValue::from_maybe_shared(head.slice(value_range))
                    .map_err(|_| HeadError::FieldValue)?;
                headers.append(header::UPGRADE, value);
            }
            // `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade`: dropped
            _ => {}
        }
    }
    for n in named {
        headers.remove(n);
    }
    let no_body = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep = if version == Version::HTTP_10 {
        keep_alive && !close
    } else {
        !close
    };
    let framing = if no_body {
        Framing::Empty
    } else if transfer_encoding {
        if content_length.is_some() {
            // RFC 9112 §6.3 rule 3: Transfer-Encoding wins; the length is dropped and the
            // connection is not trusted further.
            headers.remove(header::CONTENT_LENGTH);
            keep = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            keep = false;
            Framing::Eof
        }
    } else if let Some(n) = content_length {
        if n == 0 {
            Framing::Empty
        } else {
            Framing::Length(n)
        }
    } else {
        keep = false;
        Framing::Eof
    };
    Ok(Head {
        status,
        headers,
        framing,
        keep_alive: keep,
    })
}

fn parse_content_length(v: &[u8]) -> Result<u64, HeadError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::ContentLength);
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(raw: &str, is_head: bool) -> Result<Option<Head>, HeadError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_head(&mut buf, is_head, false)
    }

    fn framing(raw: &str) -> (Framing, bool) {
        let h = head(raw, false).unwrap().unwrap();
        (h.framing, h.keep_alive)
    }

    #[test]
    fn framing_follows_rfc9112_section_6_3() {
        // rule 1: no body for 1xx (skipped), 204, 304, and responses to HEAD
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Empty, true)
        );
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(h.headers["content-length"], "5");
        // rule 3: Transfer-Encoding and Content-Length: chunked wins, length dropped, no reuse
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        assert!(h.headers.get("content-length").is_none());
        assert!(h.headers.get("transfer-encoding").is_none());
        // rule 4: a final coding other than chunked runs to the close
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            (Framing::Eof, false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (Framing::Chunked, true)
        );
        // rule 5: conflicting lengths are an error; identical repeats are one length
        assert_eq!(
            head(
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                false
            )
            .err(),
            Some(HeadError::ConflictingContentLength)
        );
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(3));
        assert_eq!(h.headers.get_all("content-length").iter().count(), 1);
        for bad in ["+3", "3, 3", "", "12345678901234567890"] {
            let raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert_eq!(
                head(&raw, false).err(),
                Some(HeadError::ContentLength),
                "{bad:?}"
            );
        }
        // rule 6 and 8
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            (Framing::Empty, true)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), (Framing::Eof, false));
    }

    #[test]
    fn persistence_follows_rfc9112_section_9_3() {
        let cl = "content-length: 1\r\n";
        assert!(framing(&format!("HTTP/1.1 200 OK\r\n{cl}\r\n")).1);
        assert!(!framing(&format!("HTTP/1.1 200 OK\r\n{cl}connection: close\r\n\r\n")).1);
        assert!(
            !framing(&format!(
                "HTTP/1.1 200 OK\r\n{cl}connection: x, Close\r\n\r\n"
            ))
            .1
        );
        assert!(!framing(&format!("HTTP/1.0 200 OK\r\n{cl}\r\n")).1);
        assert!(
            framing(&format!(
                "HTTP/1.0 200 OK\r\n{cl}connection: keep-alive\r\n\r\n"
            ))
            .1
        );
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_dropped() {
        let h = head(
            "HTTP/1.1 200 OK\r\nconnection: x-a, keep-alive\r\nx-a: 1\r\nx-b: 2\r\nkeep-alive: timeout=5\r\nupgrade: h2c\r\nproxy-connection: x\r\nte: trailers\r\nset-cookie: a\r\nset-cookie: b\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let mut names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "set-cookie", "x-b"]);
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a", "b"]);
    }

    #[test]
    fn a_response_s_map_has_room_for_the_next_request_s_added_fields() {
        // hyper's server keeps the map a response went out with for the connection's next
        // request: a browser's head (eleven fields) and the eight fields the layers add fit
        // without the map growing (rehashing every field)
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(h.headers.capacity() >= 19, "{}", h.headers.capacity());
    }

    #[test]
    fn interim_responses_are_skipped_and_101_refused() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"[..],
        );
        let h = parse_head(&mut buf, false, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert!(h.headers.get("link").is_none());
        assert_eq!(&buf[..], b"ok");
        // an interim response alone: consumed, more needed
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        assert!(parse_head(&mut buf, false, false).unwrap().is_none());
        assert!(buf.is_empty());
        assert!(
            head(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: ws\r\n\r\n",
                false
            )
            .is_err()
        );
    }

    /// An upgrade request: `101` is the final head, its `Upgrade` is kept, and what follows
    /// it (the new protocol's first bytes) stays in the buffer for the tunnel.
    #[test]
    fn switching_protocols_ends_the_head_when_an_upgrade_was_asked() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: x\r\n\r\n\x81\x02hi"[..],
        );
        let h = parse_head(&mut buf, false, true).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(h.headers["upgrade"], "websocket");
        assert_eq!(h.headers["sec-websocket-accept"], "x");
        assert!(h.headers.get("connection").is_none());
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(&buf[..], b"\x81\x02hi");
        // not asked for: still refused; and a 200 to an upgrade request is a plain answer
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\nupgrade: ws\r\n\r\n"[..]);
        assert_eq!(
            parse_head(&mut buf, false, false).err(),
            Some(HeadError::UnexpectedSwitch)
        );
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nupgrade: ws\r\ncontent-length: 0\r\n\r\n"[..]);
        let h = parse_head(&mut buf, false, true).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(h.headers.get("upgrade").is_none());
    }

    #[test]
    fn malformed_partial_and_oversized_heads() {
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-le", false)
                .unwrap()
                .is_none()
        );
        // each refusal says why (the reason is logged with the 502)
        assert_eq!(
            head("HTTP/1.1 abc\r\n\r\n", false).err(),
            Some(HeadError::Syntax(httparse::Error::Status))
        );
        assert_eq!(
            head("garbage\r\n\r\n", false).err(),
            Some(HeadError::Syntax(httparse::Error::Version))
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false).err(),
            Some(HeadError::Syntax(httparse::Error::HeaderName))
        );
        assert_eq!(
            head("HTTP/1.1 099 Low\r\n\r\n", false).err(),
            Some(HeadError::Status(99))
        );
        assert_eq!(
            HeadError::Syntax(httparse::Error::HeaderName).to_string(),
            "malformed response head: invalid header name"
        );
        let big = format!(
            "HTTP/1.1 200 OK\r\nx: {}\r\n\r\n",
            "a".repeat(MAX_RESPONSE_HEAD)
        );
        assert_eq!(head(&big, false).err(), Some(HeadError::TooLarge));
        // more fields than the stack array: parsed from the heap
        let many: String = (0..STACK_HEADERS + 10)
            .map(|i| format!("x-{i}: {i}\r\n"))
            .collect();
        let h = head(
            &format!("HTTP/1.1 200 OK\r\n{many}content-length: 0\r\n\r\n"),
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.headers.len(), STACK_HEADERS + 11);
    }

    proptest! {
        /// Arbitrary response heads parse or fail; never a panic.
        #[test]
        fn garbage_heads_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut buf = BytesMut::from(&wire[..]);
            let _ = parse_head(&mut buf, false, false);
        }
    }
}
