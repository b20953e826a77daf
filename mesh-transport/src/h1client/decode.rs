//! The response body decoder (RFC 9112 §6.3, §7.1): `Content-Length`, chunked (sizes,
//! extensions, trailers) and close-delimited bodies, as a pure state machine over a byte
//! buffer.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::head::{Field, record_offsets};
use super::{MAX_CHUNK_LINE, MAX_TRAILERS, STACK_HEADERS};
use crate::headers::hop_by_hop_bit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyState {
    Length(u64),
    /// In a chunked body: before a chunk-size line, inside a chunk's data, before the CRLF
    /// that ends a chunk's data, in the trailer section.
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Eof,
    /// Failed; the error is reported at the next poll (see [`H1Body::fail`]).
    Failing(BodyError),
    Done,
}

/// Why a response body failed after its head was sent on (the client's stream is reset or
/// its connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// A chunk-size line longer than 4 KiB.
    #[error("chunk-size line too long")]
    ChunkLineTooLong,
    /// A chunk size that is not 1 to 16 hex digits, optionally followed by extensions.
    #[error("malformed chunk size")]
    ChunkSize,
    /// A chunk's data not followed by CRLF.
    #[error("malformed chunk end")]
    ChunkEnd,
    /// A trailer section that is not header-field syntax.
    #[error("malformed trailer section")]
    Trailers,
    /// A trailer section larger than 64 KiB.
    #[error("trailer section too large")]
    TrailersTooLarge,
    /// A trailer field name `http` refuses.
    #[error("malformed trailer name")]
    TrailerName,
    /// A trailer field value `http` refuses.
    #[error("malformed trailer value")]
    TrailerValue,
    /// The client's request body failed while the response streamed.
    #[error("request body failed")]
    RequestBody,
    /// The connection was gone when the body was polled again.
    #[error("connection gone")]
    ConnectionGone,
    /// The upstream closed the connection before the body's end.
    #[error("upstream closed the connection mid-body")]
    ClosedMidBody,
    /// Reading from the upstream failed mid-body.
    #[error("upstream connection failed mid-body")]
    ReadFailed,
}

/// What [`decode`] found in the buffer.
#[derive(Debug)]
pub(crate) enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete (nothing more to yield).
    End,
    /// More bytes are needed.
    More,
}

/// Takes the next piece of a response body from `buf` (RFC 9112 §6.3, §7.1), advancing
/// `state`. Data is split off the buffer, not copied. Pure: no I/O, so that the framing is
/// tested (and property-tested) on byte strings.
pub(crate) fn decode(state: &mut BodyState, buf: &mut BytesMut) -> Result<Step, BodyError> {
    loop {
        match *state {
            BodyState::Done | BodyState::Failing(_) => return Ok(Step::End),
            BodyState::Length(rem) | BodyState::ChunkData(rem) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                // usize: at most buf.len()
                let n = rem.min(buf.len() as u64) as usize;
                let data = buf.split_to(n).freeze();
                let rem = rem - n as u64;
                *state = match *state {
                    BodyState::Length(_) if rem == 0 => BodyState::Done,
                    BodyState::Length(_) => BodyState::Length(rem),
                    _ if rem == 0 => BodyState::ChunkEnd,
                    _ => BodyState::ChunkData(rem),
                };
                return Ok(Step::Data(data));
            }
            BodyState::Eof => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                return Ok(Step::Data(buf.split().freeze()));
            }
            BodyState::ChunkSize => match chunk_size_line(buf)? {
                Some((line, size)) => {
                    buf.advance(line);
                    *state = if size == 0 {
                        BodyState::Trailers
                    } else {
                        BodyState::ChunkData(size)
                    };
                }
                None => return Ok(Step::More),
            },
            BodyState::ChunkEnd => match buf.first() {
                Some(b'\n') => {
                    buf.advance(1);
                    *state = BodyState::ChunkSize;
                }
                Some(b'\r') if buf.len() >= 2 => {
                    if buf[1] != b'\n' {
                        return Err(BodyError::ChunkEnd);
                    }
                    buf.advance(2);
                    *state = BodyState::ChunkSize;
                }
                Some(b'\r') | None => return Ok(Step::More),
                Some(_) => return Err(BodyError::ChunkEnd),
            },
            BodyState::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; STACK_HEADERS];
                let mut offsets: [Field; STACK_HEADERS] = [[0; 4]; STACK_HEADERS];
                let parsed = match httparse::parse_headers(buf, &mut fields) {
                    // the limit holds however the section arrived (whole, or in reads)
                    Ok(httparse::Status::Complete((len, _))) if len > MAX_TRAILERS => {
                        return Err(BodyError::TrailersTooLarge);
                    }
                    Ok(httparse::Status::Complete((len, fs))) => {
                        Some((len, record_offsets(buf.as_ptr(), fs, &mut offsets)))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(_) => return Err(BodyError::Trailers),
                };
                let Some((len, n)) = parsed else {
                    if buf.len() > MAX_TRAILERS {
                        return Err(BodyError::TrailersTooLarge);
                    }
                    return Ok(Step::More);
                };
                let bytes = buf.split_to(len).freeze();
                let trailers = trailer_map(&bytes, &offsets[..n])?;
                *state = BodyState::Done;
                return Ok(if trailers.is_empty() {
                    Step::End
                } else {
                    Step::Trailers(trailers)
                });
            }
        }
    }
}

/// Parses a chunk-size line (`1a;ext=v CRLF`, RFC 9112 §7.1) at the start of `buf`:
/// `Ok(Some((line length, size)))`, or `Ok(None)` when the line is not complete yet.
pub(crate) fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, BodyError> {
    let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CHUNK_LINE {
            Err(BodyError::ChunkLineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(BodyError::ChunkSize);
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(BodyError::ChunkSize);
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        size = (size << 4) | u64::from(v);
    }
    Ok(Some((lf + 1, size)))
}

fn trailer_map(bytes: &Bytes, fields: &[Field]) -> Result<HeaderMap, BodyError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for &[no, nl, vo, vl] in fields {
        let name = bytes
            .get(no as usize..(no + nl) as usize)
            .ok_or(BodyError::TrailerName)?;
        if hop_by_hop_bit(name) != 0 {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| BodyError::TrailerName)?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(vo as usize..(vo + vl) as usize))
            .map_err(|_| BodyError::TrailerValue)?;
        map.append(name, value);
    }
    Ok(map)
}

/// What the decoder made of a whole body (`feed`, `fuzzing::chunked_body`): the body's
/// data, its trailers, and how many bytes of the input followed the body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    /// The body's data, concatenated.
    pub data: Vec<u8>,
    /// The trailer section (chunked bodies), if it had fields.
    pub trailers: Option<HeaderMap>,
    /// Bytes after the end of the body (left for the next response).
    pub rest: usize,
}

/// Feeds `wire` to the decoder from `state` in pieces ending at `cuts` (sorted, out-of-range
/// cuts ignored), as reads would deliver it: the decoded body, `Ok(None)` when the input
/// ended before the body did, or the decoder's error.
pub(crate) fn feed(
    mut state: BodyState,
    wire: &[u8],
    cuts: &[usize],
) -> Result<Option<Decoded>, BodyError> {
    let mut cuts: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < wire.len())
        .collect();
    cuts.sort_unstable();
    cuts.push(wire.len());
    let mut cuts = cuts.into_iter();
    let (mut buf, mut fed) = (BytesMut::new(), 0);
    let mut out = Decoded::default();
    loop {
        match decode(&mut state, &mut buf)? {
            Step::Data(d) => out.data.extend_from_slice(&d),
            Step::Trailers(t) => {
                out.trailers = Some(t);
                break;
            }
            Step::End => break,
            Step::More => match cuts.next() {
                Some(c) if c > fed => {
                    buf.extend_from_slice(&wire[fed..c]);
                    fed = c;
                }
                Some(_) => {}
                None => return Ok(None),
            },
        }
    }
    out.rest = buf.len() + (wire.len() - fed);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_size_lines() {
        assert_eq!(chunk_size_line(b"1a\r\n").unwrap(), Some((4, 26)));
        assert_eq!(
            chunk_size_line(b"A;ext=1;q=\"x\"\r\nrest").unwrap(),
            Some((15, 10))
        );
        assert_eq!(chunk_size_line(b"5 ;e\r\n").unwrap(), Some((6, 5)));
        assert_eq!(chunk_size_line(b"0\n").unwrap(), Some((2, 0)));
        assert_eq!(chunk_size_line(b"1a").unwrap(), None);
        assert_eq!(chunk_size_line(b"zz\r\n"), Err(BodyError::ChunkSize));
        assert!(chunk_size_line(b"\r\n").is_err());
        assert!(chunk_size_line(b"-1\r\n").is_err());
        assert!(chunk_size_line(b"1 2\r\n").is_err());
        // 17 hex digits would overflow 64 bits
        assert!(chunk_size_line(b"10000000000000000\r\n").is_err());
        assert_eq!(
            chunk_size_line(&[b'1'; MAX_CHUNK_LINE + 1]),
            Err(BodyError::ChunkLineTooLong)
        );
    }

    fn chunked(body: &[u8], sizes: &[usize], ext: bool, trailer: bool) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut rest = body;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            wire.extend_from_slice(format!("{n:X}").as_bytes());
            if ext {
                wire.extend_from_slice(b" ;name=\"v\"");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&rest[..n]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        wire.extend_from_slice(b"0\r\n");
        if trailer {
            wire.extend_from_slice(b"x-checksum: abc\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }

    proptest! {
        /// Any body, chunked any way, with or without extensions and trailers, and delivered
        /// in any pieces, decodes to itself and consumes exactly its bytes.
        #[test]
        fn chunked_bodies_decode_whatever_the_split(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            sizes in proptest::collection::vec(1usize..700, 1..8),
            cuts in proptest::collection::vec(0usize..4000, 0..12),
            ext in any::<bool>(),
            trailer in any::<bool>(),
        ) {
            let wire = chunked(&body, &sizes, ext, trailer);
            let got = feed(BodyState::ChunkSize, &wire, &cuts).unwrap().unwrap();
            prop_assert_eq!(got.data, body);
            prop_assert_eq!(got.rest, 0);
            prop_assert_eq!(got.trailers.map(|t| t["x-checksum"].clone()), trailer.then(|| HeaderValue::from_static("abc")));
        }

        /// A Content-Length body yields exactly its length and leaves what follows.
        #[test]
        fn length_bodies_stop_at_their_length(
            body in proptest::collection::vec(any::<u8>(), 1..3000),
            extra in proptest::collection::vec(any::<u8>(), 0..10),
            cuts in proptest::collection::vec(0usize..4000, 0..12),
        ) {
            let mut wire = body.clone();
            wire.extend_from_slice(&extra);
            let mut state = BodyState::Length(body.len() as u64);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c > 0 && c < wire.len()).collect();
            cuts.sort_unstable();
            cuts.push(wire.len());
            let mut fed = 0;
            for c in cuts {
                buf.extend_from_slice(&wire[fed..c]);
                fed = c;
                while let Step::Data(d) = decode(&mut state, &mut buf).unwrap() {
                    got.extend_from_slice(&d);
                }
            }
            prop_assert_eq!(got, body);
            prop_assert_eq!(state, BodyState::Done);
            prop_assert_eq!(&buf[..], &extra[..]);
        }

        /// Arbitrary bytes in a chunked body end in data, an error or a request for more:
        /// never a panic, and never more data than bytes given.
        #[test]
        fn garbage_in_a_chunked_body_never_panics(
            wire in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut state = BodyState::ChunkSize;
            let mut buf = BytesMut::from(&wire[..]);
            let mut total = 0;
            for _ in 0..1000 {
                match decode(&mut state, &mut buf) {
                    Ok(Step::Data(d)) => total += d.len(),
                    _ => break,
                }
            }
            prop_assert!(total <= wire.len());
        }
    }
}
