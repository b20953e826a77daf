//! Hop-by-hop headers (RFC 9110 §7.6.1) and the request framing checks of the listener.
//!
//! Both run on every request, so each is one pass over the header names with cheap
//! comparisons (standard header names compare as small integers), and neither allocates
//! unless a `Connection` header names extra headers to drop.
//!
//! ```
//! use http::HeaderMap;
//! use mesh_proxy::engine::headers::strip_hop_by_hop;
//!
//! let mut h = HeaderMap::new();
//! h.insert("connection", "close, x-private".parse().unwrap());
//! h.insert("x-private", "1".parse().unwrap());
//! h.insert("x-app", "2".parse().unwrap());
//! strip_hop_by_hop(&mut h);
//! assert!(h.get("connection").is_none() && h.get("x-private").is_none());
//! assert_eq!(h["x-app"], "2");
//! ```

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

const CONNECTION: u8 = 1 << 0;
const KEEP_ALIVE: u8 = 1 << 1;
const PROXY_CONNECTION: u8 = 1 << 2;
const TE: u8 = 1 << 3;
const TRANSFER_ENCODING: u8 = 1 << 4;
const UPGRADE: u8 = 1 << 5;

/// Why the listener refused a request before it reached the stack (answered with `400`, or
/// `431` for [`Reject::TooManyHeaders`], and the connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reject {
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    MissingHost,
    /// `Content-Length` together with `Transfer-Encoding`: a request-smuggling vector
    /// (RFC 9112 §6.1 allows a server to reject it; the engine always does).
    ContentLengthWithTransferEncoding,
    /// More than one `Content-Length` field, or a list value (`5, 5`), even when equal.
    DuplicateContentLength,
    /// More header fields than `maxRequestHeadersCount` (HTTP/2; hyper counts them on
    /// HTTP/1.1).
    TooManyHeaders,
}

/// Which hop-by-hop headers a map holds, as a bit set; `0` (the common case) means none.
fn hop_by_hop_present(h: &HeaderMap) -> u8 {
    let mut present = 0;
    for name in h.keys() {
        present |= if name == header::CONNECTION {
            CONNECTION
        } else if name == header::TE {
            TE
        } else if name == header::TRANSFER_ENCODING {
            TRANSFER_ENCODING
        } else if name == header::UPGRADE {
            UPGRADE
        } else {
            // not standard names in `http`: compare the lower-case text, by length first
            match name.as_str().len() {
                10 if name.as_str() == "keep-alive" => KEEP_ALIVE,
                16 if name.as_str() == "proxy-connection" => PROXY_CONNECTION,
                _ => 0,
            }
        };
    }
    present
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (kept as `TE: trailers` when it offered trailers),
/// `Transfer-Encoding` and `Upgrade`. Other headers, known or not, are left untouched.
///
/// A `Connection` token naming `Host` is ignored: the authority of the request is not the
/// client's to remove.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let present = hop_by_hop_present(h);
    if present == 0 {
        return;
    }
    if present & CONNECTION != 0 {
        // Tokens other than the usual options: rare, so a Vec (no allocation when empty).
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            let Ok(v) = v.to_str() else { continue };
            for t in v.split(',').map(str::trim) {
                if t.is_empty() || t.eq_ignore_ascii_case("close") || t.eq_ignore_ascii_case("keep-alive") {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                    if n != header::HOST {
                        named.push(n);
                    }
                }
            }
        }
        for n in named {
            h.remove(n);
        }
        h.remove(header::CONNECTION);
    }
    if present & KEEP_ALIVE != 0 {
        h.remove("keep-alive");
    }
    if present & PROXY_CONNECTION != 0 {
        h.remove("proxy-connection");
    }
    if present & TE != 0 {
        let trailers = h.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")))
            })
        });
        h.remove(header::TE);
        if trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if present & TRANSFER_ENCODING != 0 {
        h.remove(header::TRANSFER_ENCODING);
    }
    if present & UPGRADE != 0 {
        h.remove(header::UPGRADE);
    }
}

/// The listener's framing checks on a parsed request, before it reaches the stack.
///
/// HTTP/1.x: `Host` required on 1.1; `Content-Length` with `Transfer-Encoding`, repeated or
/// list-valued `Content-Length` refused (hyper already refuses conflicting values, and
/// accepts these). All versions: at most `max_headers` header fields.
pub fn check_request<B>(req: &Request<B>, max_headers: usize) -> Result<(), Reject> {
    let h = req.headers();
    if h.len() > max_headers {
        return Err(Reject::TooManyHeaders);
    }
    if req.version() > Version::HTTP_11 {
        // h2 framing is checked by the h2 codec (content-length vs DATA, no
        // connection-specific headers); the authority is in :authority.
        return Ok(());
    }
    let (mut host, mut te, mut cl) = (false, false, 0u32);
    for (name, value) in h {
        if name == header::HOST {
            host = true;
        } else if name == header::CONTENT_LENGTH {
            cl += 1;
            if value.as_bytes().contains(&b',') {
                return Err(Reject::DuplicateContentLength);
            }
        } else if name == header::TRANSFER_ENCODING {
            te = true;
        }
    }
    if cl > 1 {
        return Err(Reject::DuplicateContentLength);
    }
    if cl == 1 && te {
        return Err(Reject::ContentLengthWithTransferEncoding);
    }
    if !host && req.version() == Version::HTTP_11 {
        return Err(Reject::MissingHost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_every_hop_by_hop_header_and_the_named_ones() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo"),
            ("connection", "x-bar, host"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("x-unknown", "3"),
            ("host", "a.example"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-unknown", "host"]);
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = map(&[("te", "gzip, trailers;q=1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn nothing_to_strip_leaves_the_map_alone() {
        let mut h = map(&[("host", "a"), ("accept", "*/*"), ("x-keep-alivee", "1")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    fn req(version: Version, pairs: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::new(());
        *r.version_mut() = version;
        *r.headers_mut() = map(pairs);
        r
    }

    #[test]
    fn framing_checks() {
        let ok = req(Version::HTTP_11, &[("host", "a"), ("content-length", "5")]);
        assert_eq!(check_request(&ok, 100), Ok(()));
        assert_eq!(check_request(&req(Version::HTTP_11, &[]), 100), Err(Reject::MissingHost));
        assert_eq!(check_request(&req(Version::HTTP_10, &[]), 100), Ok(()));
        assert_eq!(check_request(&req(Version::HTTP_2, &[]), 100), Ok(()));
        let both = req(
            Version::HTTP_11,
            &[("host", "a"), ("content-length", "5"), ("transfer-encoding", "chunked")],
        );
        assert_eq!(check_request(&both, 100), Err(Reject::ContentLengthWithTransferEncoding));
        let dup = req(
            Version::HTTP_11,
            &[("host", "a"), ("content-length", "5"), ("content-length", "5")],
        );
        assert_eq!(check_request(&dup, 100), Err(Reject::DuplicateContentLength));
        let list = req(Version::HTTP_11, &[("host", "a"), ("content-length", "5, 5")]);
        assert_eq!(check_request(&list, 100), Err(Reject::DuplicateContentLength));
        let many = req(Version::HTTP_2, &[("a", "1"), ("b", "2"), ("c", "3")]);
        assert_eq!(check_request(&many, 2), Err(Reject::TooManyHeaders));
    }
}
