//! Hop-by-hop headers (RFC 9110 §7.6.1) and the request framing checks of the listener.
//!
//! Both run on every request, so each is one pass over the header names with cheap
//! comparisons (standard header names compare as small integers), and neither allocates
//! unless a `Connection` header names extra headers to drop.
//!
//! ```
//! use http::HeaderMap;
//! use mesh_transport::headers::strip_hop_by_hop;
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

pub(crate) const CONNECTION: u8 = 1 << 0;
const KEEP_ALIVE: u8 = 1 << 1;
const PROXY_CONNECTION: u8 = 1 << 2;
const TE: u8 = 1 << 3;
pub(crate) const TRANSFER_ENCODING: u8 = 1 << 4;
pub(crate) const UPGRADE: u8 = 1 << 5;

/// Why the listener refused a request before it reached the stack (answered with `400`, or
/// `431` for [`Reject::TooManyHeaders`], `505` for [`Reject::UnsupportedVersion`], and the
/// connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reject {
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    MissingHost,
    /// More than one `Host` field, or a `Host` value that is a list (`a, b`): RFC 9112 §3.2
    /// requires a 400 for either (which one would the proxy route by?).
    DuplicateHost,
    /// Userinfo (`user@`) in the `Host` value or in the target's authority: RFC 9110
    /// §4.2.4 forbids it in `http(s)` URIs, and Envoy refuses it.
    UserinfoInAuthority,
    /// A `Host` value (or target authority) with a byte no authority may contain
    /// (RFC 3986 §3.2: only unreserved, percent-encoded, sub-delimiter, `:`, `[` and `]`
    /// bytes), e.g. a space or a non-ASCII byte.
    InvalidHost,
    /// `Content-Length` together with `Transfer-Encoding`: a request-smuggling vector
    /// (RFC 9112 §6.1 allows a server to reject it; the engine always does).
    ContentLengthWithTransferEncoding,
    /// More than one `Content-Length` field, or a list value (`5, 5`), even when equal.
    DuplicateContentLength,
    /// More header fields than `maxRequestHeadersCount` (HTTP/2; hyper counts them on
    /// HTTP/1.1).
    TooManyHeaders,
    /// A request line naming an HTTP version other than 1.0 and 1.1 (`GET / HTTP/3.0`):
    /// `505 HTTP Version Not Supported` (RFC 9110 §15.6.6).
    UnsupportedVersion,
}

/// Checks the first request line in `bytes` (when it ends in this read) for a well-formed
/// but unsupported version (`HTTP/d.d`, not 1.0 or 1.1). If so, rewrites it to `HTTP/1.1`
/// in place, so hyper parses the head and the engine can answer 505 instead of hyper's 400,
/// and returns true. Returns `None` when no line ends in `bytes` (look at the next read).
pub(crate) fn unsupported_version(bytes: &mut [u8]) -> Option<bool> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let end = if nl > 0 && bytes[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = &bytes[..end];
    if line.len() < 9 {
        return Some(false);
    }
    let v = &line[line.len() - 9..];
    let well_formed = v[0] == b' '
        && &v[1..6] == b"HTTP/"
        && v[6].is_ascii_digit()
        && v[7] == b'.'
        && v[8].is_ascii_digit();
    if !well_formed || &v[6..] == b"1.1" || &v[6..] == b"1.0" {
        return Some(false);
    }
    let at = end - 3;
    bytes[at..end].copy_from_slice(b"1.1");
    Some(true)
}

/// Which hop-by-hop headers a map holds, as a bit set; `0` (the common case) means none.
pub(crate) fn hop_by_hop_present(h: &HeaderMap) -> u8 {
    h.keys().fold(0, |present, name| {
        present | hop_by_hop_bit(name.as_str().as_bytes())
    })
}

/// The hop-by-hop field a name (raw bytes, any case) stands for, as its bit; `0` for an
/// end-to-end field (RFC 9110 §7.6.1). The length is compared first, so most names cost one
/// comparison.
#[inline]
pub(crate) fn hop_by_hop_bit(name: &[u8]) -> u8 {
    match name.len() {
        2 if name.eq_ignore_ascii_case(b"te") => TE,
        7 if name.eq_ignore_ascii_case(b"upgrade") => UPGRADE,
        10 if name.eq_ignore_ascii_case(b"connection") => CONNECTION,
        10 if name.eq_ignore_ascii_case(b"keep-alive") => KEEP_ALIVE,
        16 if name.eq_ignore_ascii_case(b"proxy-connection") => PROXY_CONNECTION,
        17 if name.eq_ignore_ascii_case(b"transfer-encoding") => TRANSFER_ENCODING,
        _ => 0,
    }
}

/// The [`HeaderName`] of a frequent response field, from its raw name as parsed by
/// `httparse` (any case); `None` for the others, which `HeaderName::from_bytes` then parses.
///
/// `HeaderName::from_bytes` lowercases a name through a table into a scratch buffer and
/// matches the result against http's 80 standard names (about 115 instructions a name);
/// here the length picks one or three candidates, each compared at once (see
/// [`folded_eq`]).
#[inline]
pub(crate) fn known_response_name(name: &[u8]) -> Option<HeaderName> {
    use header as h;
    Some(match name.len() {
        4 if folded_eq(name, b"date") => h::DATE,
        4 if folded_eq(name, b"etag") => h::ETAG,
        4 if folded_eq(name, b"vary") => h::VARY,
        6 if folded_eq(name, b"server") => h::SERVER,
        7 if folded_eq(name, b"expires") => h::EXPIRES,
        8 if folded_eq(name, b"location") => h::LOCATION,
        10 if folded_eq(name, b"set-cookie") => h::SET_COOKIE,
        12 if folded_eq(name, b"content-type") => h::CONTENT_TYPE,
        13 if folded_eq(name, b"cache-control") => h::CACHE_CONTROL,
        13 if folded_eq(name, b"last-modified") => h::LAST_MODIFIED,
        13 if folded_eq(name, b"accept-ranges") => h::ACCEPT_RANGES,
        14 if folded_eq(name, b"content-length") => h::CONTENT_LENGTH,
        16 if folded_eq(name, b"content-encoding") => h::CONTENT_ENCODING,
        _ => return None,
    })
}

/// Whether `name` is `lower` (lowercase letters and `-`) in any case. Where `lower` has a
/// letter, bit `0x20` of the byte is set before the comparison, which turns `A`–`Z` into
/// `a`–`z` and no other byte into a letter; where it has a `-`, the byte must be `-`. The
/// bit to set is bit `0x40` of `lower`'s byte shifted down (set for letters, clear for `-`).
/// Branch-free over the bytes, so the compiler compares them a vector at a time.
#[inline]
fn folded_eq(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .fold(0u8, |diff, (a, b)| diff | ((a | ((b & 0x40) >> 1)) ^ b))
            == 0
}

/// The options of a `Connection` field value: its comma-separated tokens, trimmed, empty
/// ones skipped.
pub(crate) fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (kept as `TE: trailers` when it offered trailers),
/// `Transfer-Encoding` and `Upgrade`. Other headers, known or not, are left untouched.
///
/// A `Connection` token naming `Host` is ignored: the authority of the request is not the
/// client's to remove.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    strip_present(h, hop_by_hop_present(h), false);
}

/// [`strip_hop_by_hop`] given the map's [`hop_by_hop_present`]; with `keep_upgrade`, `Upgrade`
/// stays (and a `Connection: upgrade` option does not remove it), for an upgrade the proxy
/// forwards.
pub(crate) fn strip_present(h: &mut HeaderMap, present: u8, keep_upgrade: bool) {
    if present == 0 {
        return;
    }
    if present & CONNECTION != 0 {
        // One look-up removes every `Connection` field; tokens other than the usual
        // options are rare, so a Vec (no allocation when empty).
        let mut named: Vec<HeaderName> = Vec::new();
        if let header::Entry::Occupied(e) = h.entry(header::CONNECTION) {
            for v in e.remove_entry_mult().1 {
                for t in connection_tokens(v.as_bytes()) {
                    if t.eq_ignore_ascii_case(b"close")
                        || t.eq_ignore_ascii_case(b"keep-alive")
                        || (keep_upgrade && t.eq_ignore_ascii_case(b"upgrade"))
                    {
                        continue;
                    }
                    if let Ok(n) = HeaderName::from_bytes(t)
                        && n != header::HOST
                    {
                        named.push(n);
                    }
                }
            }
        }
        for n in named {
            h.remove(n);
        }
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
                s.split(',').any(|t| {
                    t.split(';')
                        .next()
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
                })
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
    if present & UPGRADE != 0 && !keep_upgrade {
        h.remove(header::UPGRADE);
    }
}

/// The listener's framing checks on a parsed request, before it reaches the stack.
///
/// All versions: at most `max_headers` header fields; at most one `Host` field, whose value
/// is a single authority without userinfo ([`Reject::DuplicateHost`],
/// [`Reject::UserinfoInAuthority`], [`Reject::InvalidHost`]); no userinfo in the target's
/// authority (absolute-form, HTTP/2's `:authority`). HTTP/1.x: `Host` required on 1.1;
/// `Content-Length` with `Transfer-Encoding`, repeated or list-valued `Content-Length`
/// refused (hyper already refuses conflicting values, and accepts these).
pub fn check_request<B>(req: &Request<B>, max_headers: usize) -> Result<(), Reject> {
    inspect(req, max_headers).map(|_| ())
}

/// What [`inspect`] saw of a request it let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Seen {
    /// The request has a `Via` field (look for the proxy's own entry).
    pub(crate) via: bool,
    /// The target has an authority and a `Host` field that says something else: `Host` is
    /// to be replaced by the target's authority (RFC 9112 §3.2.2).
    pub(crate) host_differs: bool,
}

/// [`check_request`], and what the engine needs to know next, in the same pass over the
/// header fields: one comparison per field, plus one pass over the `Host` value.
pub(crate) fn inspect<B>(req: &Request<B>, max_headers: usize) -> Result<Seen, Reject> {
    let h = req.headers();
    if h.len() > max_headers {
        return Err(Reject::TooManyHeaders);
    }
    let target = req.uri().authority().map(|a| a.as_str().as_bytes());
    if let Some(a) = target {
        check_authority(a)?;
    }
    let mut seen = Seen::default();
    let (mut host, mut te, mut cl) = (false, false, 0u32);
    for (name, value) in h {
        if name == header::HOST {
            if host {
                return Err(Reject::DuplicateHost);
            }
            host = true;
            check_authority(value.as_bytes())?;
            seen.host_differs = target.is_some_and(|a| a != value.as_bytes());
        } else if name == header::VIA {
            seen.via = true;
        } else if name == header::CONTENT_LENGTH {
            cl += 1;
            if value.as_bytes().contains(&b',') {
                return Err(Reject::DuplicateContentLength);
            }
        } else if name == header::TRANSFER_ENCODING {
            te = true;
        }
    }
    if req.version() > Version::HTTP_11 {
        // h2 framing is checked by the h2 codec (content-length vs DATA, no
        // connection-specific headers); the authority is in :authority.
        return Ok(seen);
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
    Ok(seen)
}

/// Byte classes of an authority (RFC 3986 §3.2): 0 allowed (unreserved, `%`, sub-delims but
/// `,`, `:`, `[`, `]`), 1 `,` (a list: two authorities), 2 `@` (userinfo), 3 anything else.
const AUTHORITY_BYTES: [u8; 256] = {
    let mut t = [3u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            t[b] = 0;
        }
        b += 1;
    }
    let allowed = b"-._~%!$&'()*+;=:[]";
    let mut i = 0;
    while i < allowed.len() {
        t[allowed[i] as usize] = 0;
        i += 1;
    }
    t[b',' as usize] = 1;
    t[b'@' as usize] = 2;
    t
};

/// Checks one authority (a `Host` value, or the target's): one branch-free pass of table
/// look-ups (the common, valid case); only a bad value is scanned again, for the reason
/// (the first offending byte decides it).
#[inline]
fn check_authority(a: &[u8]) -> Result<(), Reject> {
    if a.iter()
        .fold(0u8, |bad, &b| bad | AUTHORITY_BYTES[b as usize])
        == 0
    {
        return Ok(());
    }
    for &b in a {
        match AUTHORITY_BYTES[b as usize] {
            0 => {}
            1 => return Err(Reject::DuplicateHost),
            2 => return Err(Reject::UserinfoInAuthority),
            _ => return Err(Reject::InvalidHost),
        }
    }
    Ok(())
}

/// Watches the raw HTTP/1.x byte stream of one connection for the framing hyper normalises
/// before the engine can see it: hyper drops `Content-Length` when `Transfer-Encoding` is
/// present, and merges repeated equal `Content-Length` fields. Both are refused by the engine
/// (request smuggling defence), so it counts those fields itself, in the bytes hyper reads.
///
/// It follows heads and `Content-Length` bodies; after a chunked body or anything it does not
/// fully understand it stops (hyper's own rules still apply to the rest of the connection), so
/// it can only ever flag a head it parsed completely. One head per connection at most can be
/// flagged: the scan stops after it.
#[derive(Debug, Default)]
pub(crate) struct HeadScanner {
    state: ScanState,
    /// Complete heads seen.
    heads: u32,
    /// 1-based index of the flagged head and why, if any.
    flagged: Option<(u32, Reject)>,
    /// Some bytes of the next head have arrived (for `requestHeadersTimeout`).
    partial: bool,
    // --- the head being scanned ---
    seen_request_line: bool,
    line: Line,
    /// `\r` just seen at the start of a line.
    cr_at_start: bool,
    name_pos: u8,
    cl_count: u8,
    te: bool,
    cl_value: u64,
    /// Value state of the current `Content-Length` line: 0 leading space, 1 digits,
    /// 2 trailing space.
    cl_phase: u8,
    cl_digits: u8,
    cl_bad: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    #[default]
    Head,
    Body(u64),
    Off,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Line {
    #[default]
    Start,
    /// Matching a name against both candidates.
    Name,
    /// Matching `content-length` only / `transfer-encoding` only.
    NameCl,
    NameTe,
    ClValue,
    /// Nothing more to learn on this line.
    Skip,
}

/// The position of the first `\n` in `hay`: `memchr`'s vector search (32 bytes a step with
/// AVX2), since most of a head is lines the scanner skips (the request line, and every
/// header but two). It replaced an eight-bytes-a-step SWAR loop: the scan of a browser's
/// request head (600 bytes, ten lines; `HEADS=browser callgrind.py`) fell from 1.9k to 1.4k
/// instructions, that of a minimal one stayed at 0.4k.
#[inline]
fn find_newline(hay: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', hay)
}

const CL_NAME: &[u8] = b"content-length";
const TE_NAME: &[u8] = b"transfer-encoding";

// === impl HeadScanner ===

impl HeadScanner {
    /// Feeds bytes as they are read from the client.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                ScanState::Off => return,
                ScanState::Body(n) => {
                    let take = n.min(bytes.len() as u64);
                    self.state = if take == n {
                        ScanState::Head
                    } else {
                        ScanState::Body(n - take)
                    };
                    bytes = &bytes[take as usize..];
                }
                ScanState::Head => {
                    let used = self.head(bytes);
                    bytes = &bytes[used..];
                }
            }
        }
    }

    /// Stops scanning: the connection no longer carries HTTP (it switched protocols).
    pub(crate) fn stop(&mut self) {
        self.state = ScanState::Off;
    }

    /// Complete heads seen so far.
    pub(crate) fn heads(&self) -> u32 {
        self.heads
    }

    /// Whether part of a head has arrived and its end not yet (false once the scan stopped).
    pub(crate) fn reading_head(&self) -> bool {
        self.partial && self.state == ScanState::Head
    }

    /// Whether the `n`th head (1-based) of the connection is to be refused, and why.
    pub(crate) fn verdict(&self, n: u32) -> Option<Reject> {
        match self.flagged {
            Some((i, r)) if i == n => Some(r),
            _ => None,
        }
    }

    /// Scans head bytes; returns how many were used (all, or up to the end of the head).
    fn head(&mut self, bytes: &[u8]) -> usize {
        self.partial = true;
        let mut i = 0;
        while i < bytes.len() {
            if self.line == Line::Skip {
                match find_newline(&bytes[i..]) {
                    Some(p) => {
                        i += p + 1;
                        self.line = Line::Start;
                        continue;
                    }
                    None => return bytes.len(),
                }
            }
            let b = bytes[i];
            i += 1;
            match self.line {
                Line::Start => {
                    if b == b'\n' {
                        self.cr_at_start = false;
                        if self.seen_request_line {
                            self.end_of_head();
                            return i;
                        }
                        continue; // empty lines before the request line are ignored
                    }
                    if self.cr_at_start {
                        self.state = ScanState::Off; // bare CR: let hyper judge
                        return bytes.len();
                    }
                    if b == b'\r' {
                        self.cr_at_start = true;
                        continue;
                    }
                    if !self.seen_request_line {
                        self.seen_request_line = true;
                        self.line = Line::Skip;
                        continue;
                    }
                    self.name_pos = 0;
                    self.line = Line::Name;
                    self.name_byte(b);
                }
                Line::Name | Line::NameCl | Line::NameTe => self.name_byte(b),
                Line::ClValue => self.cl_byte(b),
                Line::Skip => {} // handled before a byte is taken
            }
        }
        bytes.len()
    }

    fn name_byte(&mut self, b: u8) {
        let pos = self.name_pos as usize;
        let lower = b.to_ascii_lowercase();
        if b == b':' {
            match self.line {
                Line::Name | Line::NameCl if pos == CL_NAME.len() => {
                    self.cl_count = self.cl_count.saturating_add(1);
                    (self.cl_value, self.cl_phase, self.cl_digits) = (0, 0, 0);
                    self.line = Line::ClValue;
                }
                Line::Name | Line::NameTe if pos == TE_NAME.len() => {
                    self.te = true;
                    self.line = Line::Skip;
                }
                _ => self.line = Line::Skip,
            }
            return;
        }
        let cl = matches!(self.line, Line::Name | Line::NameCl) && CL_NAME.get(pos) == Some(&lower);
        let te = matches!(self.line, Line::Name | Line::NameTe) && TE_NAME.get(pos) == Some(&lower);
        self.line = match (cl, te) {
            (true, true) => Line::Name,
            (true, false) => Line::NameCl,
            (false, true) => Line::NameTe,
            (false, false) => {
                if b == b'\n' {
                    Line::Start
                } else {
                    Line::Skip
                }
            }
        };
        self.name_pos = self.name_pos.saturating_add(1);
    }

    fn cl_byte(&mut self, b: u8) {
        match (b, self.cl_phase) {
            (b' ' | b'\t', 0 | 2) => {}
            (b' ' | b'\t', 1) => self.cl_phase = 2,
            (b'0'..=b'9', 0 | 1) if self.cl_digits < 18 => {
                self.cl_phase = 1;
                self.cl_digits += 1;
                self.cl_value = self.cl_value * 10 + u64::from(b - b'0');
            }
            (b'\r', _) => {}
            (b'\n', _) => {
                if self.cl_phase == 0 {
                    self.cl_bad = true;
                }
                self.line = Line::Start;
            }
            _ => {
                self.cl_bad = true; // a list (`5, 5`), a sign, too long: not ours to follow
                self.line = Line::Skip;
            }
        }
    }

    fn end_of_head(&mut self) {
        self.heads += 1;
        let (cl_count, te, cl_bad, cl_value) = (self.cl_count, self.te, self.cl_bad, self.cl_value);
        self.state = if cl_count > 1 {
            self.flagged = Some((self.heads, Reject::DuplicateContentLength));
            ScanState::Off
        } else if cl_count == 1 && te {
            self.flagged = Some((self.heads, Reject::ContentLengthWithTransferEncoding));
            ScanState::Off
        } else if te || cl_bad {
            ScanState::Off
        } else if cl_count == 1 && cl_value > 0 {
            ScanState::Body(cl_value)
        } else {
            ScanState::Head
        };
        self.seen_request_line = false;
        self.partial = false;
        self.line = Line::Start;
        self.cr_at_start = false;
        (self.cl_count, self.te, self.cl_bad, self.cl_value) = (0, false, false, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names_are_told_apart_from_end_to_end_ones_of_any_length() {
        for (name, bit) in [
            (&b"TE"[..], TE),
            (b"Upgrade", UPGRADE),
            (b"connection", CONNECTION),
            (b"Keep-Alive", KEEP_ALIVE),
            (b"proxy-CONNECTION", PROXY_CONNECTION),
            (b"Transfer-Encoding", TRANSFER_ENCODING),
        ] {
            assert_eq!(
                hop_by_hop_bit(name),
                bit,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        // the same lengths, other names; other lengths, short and long
        for name in [
            &b"tx"[..],
            b"upgradz",
            b"user-agent",
            b"keep-alivf",
            b"proxy-connectiom",
            b"transfer-encodinf",
            b"",
            b"host",
            b"x-request-id",
            &[b'a'; 31],
            &[b'a'; 32],
            &[b'a'; 34],
        ] {
            assert_eq!(hop_by_hop_bit(name), 0, "{}", String::from_utf8_lossy(name));
        }
    }

    /// The names `known_response_name` takes, lowercase.
    const KNOWN_RESPONSE_NAMES: [&str; 13] = [
        "date",
        "etag",
        "vary",
        "server",
        "expires",
        "location",
        "set-cookie",
        "content-type",
        "cache-control",
        "last-modified",
        "accept-ranges",
        "content-length",
        "content-encoding",
    ];

    /// Every name of the fast path, in any case, is what `HeaderName::from_bytes` makes of
    /// it; names of the same lengths that differ by one byte, or by a byte that folds to the
    /// same letter only outside the token characters, are not taken.
    #[test]
    fn known_response_names_match_http_s_parse_in_any_case() {
        for lower in KNOWN_RESPONSE_NAMES {
            let title: String = lower
                .split('-')
                .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
                .collect::<Vec<_>>()
                .join("-");
            for name in [lower.to_string(), lower.to_ascii_uppercase(), title] {
                assert_eq!(
                    known_response_name(name.as_bytes()),
                    Some(HeaderName::from_bytes(name.as_bytes()).unwrap()),
                    "{name}"
                );
            }
            // one byte changed, wherever it is: not this name
            for i in 0..lower.len() {
                let mut other = lower.as_bytes().to_vec();
                other[i] = if other[i] == b'-' { b'_' } else { b'q' }; // no known name has a `q`
                let other_name = known_response_name(&other);
                assert!(other_name.is_none(), "{}", String::from_utf8_lossy(&other));
            }
        }
        // bytes that setting `0x20` would turn into a dash or a letter: `\r` into `-`,
        // `\x01` into `!`... none is taken (the names come from a parser, but this does not
        // rely on it)
        assert_eq!(known_response_name(b"set\rcookie"), None);
        assert_eq!(known_response_name(b"set-cooki\x05"), None);
        assert_eq!(known_response_name(b"DATe"), Some(header::DATE));
        assert_eq!(known_response_name(b"x-request-id"), None);
        assert_eq!(known_response_name(b""), None);
    }

    proptest::proptest! {
        /// Whatever bytes a server sends as a field name, the fast path either leaves them to
        /// `HeaderName::from_bytes` or gives the same name.
        #[test]
        fn the_fast_path_agrees_with_http_on_any_token(
            name in proptest::collection::vec(proptest::num::u8::ANY, 1..17),
        ) {
            if let Some(known) = known_response_name(&name) {
                proptest::prop_assert_eq!(Some(known), HeaderName::from_bytes(&name).ok());
            }
        }

        /// Case variants of the known names (the generator above rarely hits them).
        #[test]
        fn case_variants_of_known_names_are_taken(
            i in 0..KNOWN_RESPONSE_NAMES.len(),
            upper in proptest::collection::vec(proptest::bool::ANY, 16),
        ) {
            let lower = KNOWN_RESPONSE_NAMES[i];
            let name: Vec<u8> = lower
                .bytes()
                .zip(&upper)
                .map(|(b, u)| if *u { b.to_ascii_uppercase() } else { b })
                .collect();
            proptest::prop_assert_eq!(
                known_response_name(&name),
                Some(HeaderName::from_static(lower))
            );
        }
    }

    #[test]
    fn unsupported_versions_are_spotted_and_rewritten() {
        let mut b = *b"GET / HTTP/3.0\r\nHost: a\r\n\r\n";
        assert_eq!(unsupported_version(&mut b), Some(true));
        assert!(b.starts_with(b"GET / HTTP/1.1\r\n"));
        for ok in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"GET / HTTP/1.0\n",
            b"GET / HTTP/x\r\n",
            b"GARBAGE\r\n",
        ] {
            let mut v = ok.to_vec();
            assert_eq!(
                unsupported_version(&mut v),
                Some(false),
                "{:?}",
                String::from_utf8_lossy(ok)
            );
            assert_eq!(v, ok);
        }
        assert_eq!(
            unsupported_version(&mut b"GET / HTTP/2.0".to_vec()),
            None,
            "line not complete yet"
        );
    }

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

    fn scan_all(stream: &[u8]) -> Vec<Option<Reject>> {
        // every split point must give the same answer
        let mut whole = HeadScanner::default();
        whole.feed(stream);
        let answer: Vec<_> = (1..=whole.heads).map(|n| whole.verdict(n)).collect();
        for cut in 0..stream.len() {
            let mut s = HeadScanner::default();
            s.feed(&stream[..cut]);
            s.feed(&stream[cut..]);
            let got: Vec<_> = (1..=s.heads).map(|n| s.verdict(n)).collect();
            assert_eq!(got, answer, "split at {cut}");
        }
        let mut bytewise = HeadScanner::default();
        for b in stream {
            bytewise.feed(std::slice::from_ref(b));
        }
        assert_eq!(bytewise.heads, whole.heads);
        answer
    }

    #[test]
    fn find_newline_matches_position() {
        let mut buf = [b'a'; 40];
        assert_eq!(find_newline(&buf), None);
        for at in 0..buf.len() {
            buf[at] = b'\n';
            for start in 0..=at {
                assert_eq!(
                    find_newline(&buf[start..]),
                    Some(at - start),
                    "at {at} from {start}"
                );
            }
            buf[at] = 0x8a; // high bit set, not a newline
            assert_eq!(find_newline(&buf), None);
            buf[at] = b'a';
        }
        let bytes: Vec<u8> = (0u8..=255).collect();
        assert_eq!(find_newline(&bytes), Some(10));
        assert_eq!(find_newline(&bytes[11..]), None);
    }

    #[test]
    fn scanner_follows_heads_and_bodies() {
        let stream = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /x HTTP/1.1\r\nhost: a\r\nContent-Length: 26\r\n\r\n\
            content-length: 1\r\nxxxxx\r\n\
            GET /y HTTP/1.1\nhost: a\n\n\
            POST /z HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nx-content-length: 5\r\n\r\n";
        assert_eq!(scan_all(stream), vec![None, None, None, None]);
    }

    #[test]
    fn scanner_flags_cl_with_te_and_duplicate_cl() {
        let s = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n\
            POST / HTTP/1.1\r\nhost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            scan_all(s),
            vec![None, Some(Reject::ContentLengthWithTransferEncoding)]
        );
        let s = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length:4\r\n\r\n";
        assert_eq!(
            scan_all(s),
            vec![Some(Reject::ContentLengthWithTransferEncoding)]
        );
        let s = b"POST / HTTP/1.1\r\ncontent-length: 2\r\nhost: a\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(scan_all(s), vec![Some(Reject::DuplicateContentLength)]);
    }

    #[test]
    fn scanner_stops_after_a_chunked_body() {
        // the second head hides in a chunk: never flagged
        let s = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n\
            30\r\nGET / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n\r\n0\r\n\r\n";
        let mut sc = HeadScanner::default();
        sc.feed(s);
        assert_eq!(sc.heads, 1);
        assert_eq!(sc.verdict(1), None);
        assert_eq!(sc.verdict(2), None);
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
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-unknown"]);
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
        assert_eq!(
            check_request(&req(Version::HTTP_11, &[]), 100),
            Err(Reject::MissingHost)
        );
        assert_eq!(check_request(&req(Version::HTTP_10, &[]), 100), Ok(()));
        assert_eq!(check_request(&req(Version::HTTP_2, &[]), 100), Ok(()));
        let both = req(
            Version::HTTP_11,
            &[
                ("host", "a"),
                ("content-length", "5"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(
            check_request(&both, 100),
            Err(Reject::ContentLengthWithTransferEncoding)
        );
        let dup = req(
            Version::HTTP_11,
            &[
                ("host", "a"),
                ("content-length", "5"),
                ("content-length", "5"),
            ],
        );
        assert_eq!(
            check_request(&dup, 100),
            Err(Reject::DuplicateContentLength)
        );
        let list = req(
            Version::HTTP_11,
            &[("host", "a"), ("content-length", "5, 5")],
        );
        assert_eq!(
            check_request(&list, 100),
            Err(Reject::DuplicateContentLength)
        );
        let many = req(Version::HTTP_2, &[("a", "1"), ("b", "2"), ("c", "3")]);
        assert_eq!(check_request(&many, 2), Err(Reject::TooManyHeaders));
    }

    fn with_target(version: Version, target: &str, pairs: &[(&str, &str)]) -> Request<()> {
        let mut r = req(version, pairs);
        *r.uri_mut() = target.parse().unwrap();
        r
    }

    /// RFC 9112 §3.2: one `Host`, a single authority; RFC 9110 §4.2.4: no userinfo.
    #[test]
    fn host_checks() {
        for v in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            let two = req(v, &[("host", "a"), ("host", "a")]);
            assert_eq!(
                check_request(&two, 100),
                Err(Reject::DuplicateHost),
                "{v:?}"
            );
            let list = req(v, &[("host", "a, b")]);
            assert_eq!(
                check_request(&list, 100),
                Err(Reject::DuplicateHost),
                "{v:?}"
            );
            let user = req(v, &[("host", "evil@web")]);
            assert_eq!(
                check_request(&user, 100),
                Err(Reject::UserinfoInAuthority),
                "{v:?}"
            );
            let abs = with_target(v, "http://evil@web/", &[("host", "web")]);
            assert_eq!(
                check_request(&abs, 100),
                Err(Reject::UserinfoInAuthority),
                "{v:?}"
            );
            for bad in [
                "a b",
                "a\tb",
                "a\"b",
                "a<b",
                "a{b}",
                "caf\u{e9}",
                "a/b",
                "a?b",
            ] {
                let r = req(v, &[("host", bad)]);
                assert_eq!(check_request(&r, 100), Err(Reject::InvalidHost), "{bad:?}");
            }
        }
        for good in [
            "",
            "web",
            "web:8080",
            "reviews.default.svc.cluster.local",
            "127.0.0.1:15001",
            "[::1]:80",
            "[fe80::1%25eth0]",
            "xn--caf-dma.example",
            "under_score.example",
            "a!$&'()*+;=~-.b",
        ] {
            let r = req(Version::HTTP_11, &[("host", good)]);
            assert_eq!(check_request(&r, 100), Ok(()), "{good:?}");
        }
    }

    /// What the engine learns in the same pass: a `Via` to look into, a `Host` to replace.
    #[test]
    fn inspect_reports_via_and_a_host_other_than_the_target() {
        let plain = req(Version::HTTP_11, &[("host", "web")]);
        assert_eq!(inspect(&plain, 100), Ok(Seen::default()));
        let abs_other = with_target(Version::HTTP_11, "http://other/", &[("host", "web")]);
        assert!(inspect(&abs_other, 100).unwrap().host_differs);
        let abs_same = with_target(Version::HTTP_11, "http://web:80/x", &[("host", "web:80")]);
        assert!(!inspect(&abs_same, 100).unwrap().host_differs);
        let h2_only = with_target(Version::HTTP_2, "http://web/", &[]);
        assert_eq!(inspect(&h2_only, 100), Ok(Seen::default()));
        let via = req(Version::HTTP_11, &[("host", "web"), ("via", "1.1 a")]);
        assert!(inspect(&via, 100).unwrap().via);
    }

    mod host_abuse {
        //! Abuse: any number of `Host` fields with any values, on any version, with or
        //! without an absolute target. The verdict is the model's, and never a panic.

        use super::*;
        use proptest::prelude::*;

        const PIECES: &[&str] = &[
            "web", "a.b", ":80", ",", ", ", "@", "evil@", " ", "[", "]", "::1", "%", "_", "é",
            "\t", "\"", "/", "?", "#", "*", "x-y", "0",
        ];

        fn value() -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(PIECES), 0..5)
                .prop_map(|v| v.concat())
        }

        /// What RFC 9112 §3.2 and RFC 9110 §4.2.4 say of one `Host` value.
        fn model(v: &str) -> Result<(), Reject> {
            for b in v.bytes() {
                match b {
                    b',' => return Err(Reject::DuplicateHost),
                    b'@' => return Err(Reject::UserinfoInAuthority),
                    b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')'
                    | b'*' | b'+' | b';' | b'=' | b':' | b'[' | b']' => {}
                    b if b.is_ascii_alphanumeric() => {}
                    _ => return Err(Reject::InvalidHost),
                }
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn host_fields_get_the_model_verdict(
                hosts in proptest::collection::vec(value(), 0..4),
                version in proptest::sample::select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2]),
                absolute in any::<bool>(),
            ) {
                let mut r = Request::new(());
                *r.version_mut() = version;
                if absolute {
                    *r.uri_mut() = "http://target:81/p".parse().unwrap();
                }
                for h in &hosts {
                    match HeaderValue::from_str(h) {
                        Ok(v) => { r.headers_mut().append(header::HOST, v); }
                        Err(_) => return Ok(()), // not a field value: hyper never hands it over
                    }
                }
                let expected = match hosts.as_slice() {
                    [] if version == Version::HTTP_11 => Err(Reject::MissingHost),
                    [] => Ok(()),
                    [one] => model(one),
                    [first, ..] => model(first).and(Err(Reject::DuplicateHost)),
                };
                let got = inspect(&r, 100);
                prop_assert_eq!(got.map(|_| ()), expected);
                if let (Ok(seen), [one]) = (got, hosts.as_slice()) {
                    prop_assert_eq!(seen.host_differs, absolute && one != "target:81");
                }
            }
        }
    }
}
