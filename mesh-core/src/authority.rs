//! One parser for authorities: the host and optional port of a `Host` field, an HTTP/2
//! `:authority`, a URI's authority or a configured `host:port`.
//!
//! Routing, the balancer, mirroring, the connector and the validators all split
//! authorities; they do it here, with one grammar (RFC 3986 §3.2.2 and §3.2.3):
//!
//! | input | [`host`](Authority::host) | [`unbracketed`](Authority::unbracketed) | [`port`](Authority::port) |
//! |---|---|---|---|
//! | `reviews` | `reviews` | `reviews` | `None` |
//! | `reviews:9080` | `reviews` | `reviews` | `Some(9080)` |
//! | `reviews:` | `reviews` | `reviews` | `None` (an empty port is no port, §3.2.3) |
//! | `[::1]:8080` | `[::1]` | `::1` | `Some(8080)` |
//! | `[::1]` | `[::1]` | `::1` | `None` |
//! | `::1`, `fe80::1:80` | the whole input | the whole input | `None` |
//! | `reviews:http`, `reviews:70000`, `reviews:+80` | error: [`InvalidPort`](AuthorityError::InvalidPort) | | |
//! | `[::1`, `[::1]x` | error: [`UnclosedBracket`](AuthorityError::UnclosedBracket), [`AfterBracket`](AuthorityError::AfterBracket) | | |
//!
//! **IPv6 literals.** RFC 3986 §3.2.2: "A host identified by an Internet Protocol literal
//! address, version 6 or later, is distinguished by enclosing the IP literal within square
//! brackets". So only a bracketed literal can carry a port; a host with more than one `:` and
//! no brackets (a bare IPv6 literal, as some clients send in `Host`) is taken whole as the
//! host, with no port: it is never cut at its last colon (`::1` is not host `:` port 1).
//! [`Authority::host`] keeps the brackets (the form routes match and a `Host` field carries);
//! [`Authority::unbracketed`] drops them (the form [`std::net::IpAddr`] and resolvers take).
//!
//! **Ports** are 1 to 5 ASCII digits worth at most 65535 (leading zeros allowed, no sign);
//! `0` parses (validators check ranges with their own messages). **Hosts** are returned as
//! written: the parser neither validates their characters (the listener does, see
//! `mesh-transport`'s header checks) nor changes their case (RFC 3986 §3.2.2: the host is
//! case-insensitive; compare with [`str::eq_ignore_ascii_case`] or lower-case into a buffer, as
//! the route table does). **Userinfo** (`user@host`) is not part of this grammar: a request's
//! authority goes through [`of_request`] or [`strip_userinfo`] first.
//!
//! Everything borrows from the input: no allocation, a single pass over the bytes (this runs
//! for every request).
//!
//! ```
//! use mesh_core::authority::{self, Authority};
//!
//! let a = Authority::parse("[fd00::7]:9080").unwrap();
//! assert_eq!((a.host(), a.unbracketed(), a.port()), ("[fd00::7]", "fd00::7", Some(9080)));
//! // the route table's view: never fails, an authority that does not parse is all host
//! assert_eq!(authority::split_port("reviews:9080"), ("reviews", Some(9080)));
//! assert_eq!(authority::split_port("reviews:http"), ("reviews:http", None));
//! ```

use http::Request;

/// Why an authority does not parse (see the [module docs](self) for the grammar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// A `[` that opens an IPv6 literal has no `]`.
    #[error("an IPv6 literal opened with `[` is not closed")]
    UnclosedBracket,
    /// Something other than `:port` follows the `]` of an IPv6 literal.
    #[error("only `:port` may follow the `]` of an IPv6 literal")]
    AfterBracket,
    /// The port is not 1 to 5 ASCII digits worth at most 65535.
    #[error("the port is not a number from 0 to 65535")]
    InvalidPort,
}

/// A parsed authority: its host and optional port, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Authority<'a> {
    host: &'a str,
    port: Option<u16>,
}

// === impl Authority ===

impl<'a> Authority<'a> {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (see the [module docs](self)).
    #[inline]
    pub fn parse(authority: &'a str) -> Result<Self, AuthorityError> {
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            Some(p) => Some(parse_port(p)?),
            None => None,
        };
        Ok(Authority { host, port })
    }

    /// The host as written: an IPv6 literal keeps its brackets (`[::1]`), case unchanged.
    #[inline]
    pub fn host(&self) -> &'a str {
        self.host
    }

    /// The host without the brackets of an IPv6 literal (`::1`): what
    /// [`IpAddr`](std::net::IpAddr)'s parser and a resolver take.
    #[inline]
    pub fn unbracketed(&self) -> &'a str {
        unbracket(self.host)
    }

    /// The port, if the authority has a non-empty one.
    #[inline]
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

// === functions ===

/// Splits an authority into its host as written and the text of its port, without checking
/// the port's digits: for validators that report a bad port in their own words (Go's
/// `net.SplitHostPort` and `url.Parse` messages). An empty port is `None`. Same grammar as
/// [`Authority::parse`] otherwise.
#[inline]
pub fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), AuthorityError> {
    let bytes = authority.as_bytes();
    let (host, rest) = if bytes.first() == Some(&b'[') {
        let close = memchr(b']', bytes).ok_or(AuthorityError::UnclosedBracket)?;
        let (host, rest) = authority.split_at(close + 1);
        match rest.as_bytes().first() {
            None => return Ok((host, None)),
            Some(b':') => (host, &rest[1..]),
            Some(_) => return Err(AuthorityError::AfterBracket),
        }
    } else {
        match memchr(b':', bytes) {
            None => return Ok((authority, None)),
            // More colons: an unbracketed IPv6 literal, whole (RFC 3986 §3.2.2).
            Some(i) if memchr(b':', &bytes[i + 1..]).is_some() => return Ok((authority, None)),
            Some(i) => (&authority[..i], &authority[i + 1..]),
        }
    };
    Ok((host, (!rest.is_empty()).then_some(rest)))
}

/// The route table's split: the host as written and the port, an authority that does not
/// parse being all host with no port (it then matches only the domains `*` matches, as in
/// Envoy, where such a `Host` matches no named domain).
#[inline]
pub fn split_port(authority: &str) -> (&str, Option<u16>) {
    match Authority::parse(authority) {
        Ok(a) => (a.host, a.port),
        Err(_) => (authority, None),
    }
}

/// `host` without the brackets of an IPv6 literal (`[::1]` → `::1`); any other host as is.
#[inline]
pub fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The authority without its userinfo (`user:pw@host:port` → `host:port`). The userinfo
/// ends at the last `@` (RFC 3986 §3.2.1: `@` is not allowed in a host or port).
#[inline]
pub fn strip_userinfo(authority: &str) -> &str {
    authority.rsplit_once('@').map_or(authority, |(_, hp)| hp)
}

/// The authority a request is about: its target's (absolute-form, HTTP/2's `:authority`),
/// without userinfo, else its `Host` field (RFC 9112 §3.2.2: a received `Host` never
/// overrides the target). `None` without either, or with a `Host` that is not visible ASCII.
#[inline]
pub fn of_request<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(strip_userinfo(a.as_str())),
        None => req.headers().get(http::header::HOST)?.to_str().ok(),
    }
}

/// A port: 1 to 5 ASCII digits, at most 65535 (no sign, unlike `u16::from_str`).
#[inline]
fn parse_port(p: &str) -> Result<u16, AuthorityError> {
    if p.is_empty() || p.len() > 5 {
        return Err(AuthorityError::InvalidPort);
    }
    let mut n: u32 = 0;
    for b in p.bytes() {
        if !b.is_ascii_digit() {
            return Err(AuthorityError::InvalidPort);
        }
        n = n * 10 + u32::from(b - b'0');
    }
    u16::try_from(n).map_err(|_| AuthorityError::InvalidPort)
}

#[inline]
fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<(&str, &str, Option<u16>), AuthorityError> {
        Authority::parse(s).map(|a| (a.host(), a.unbracketed(), a.port()))
    }

    #[test]
    fn names_and_ports() {
        assert_eq!(parse("reviews"), Ok(("reviews", "reviews", None)));
        assert_eq!(
            parse("reviews:9080"),
            Ok(("reviews", "reviews", Some(9080)))
        );
        assert_eq!(
            parse("Reviews.Example:80"),
            Ok(("Reviews.Example", "Reviews.Example", Some(80))),
            "case kept"
        );
        assert_eq!(parse("10.0.0.1:0"), Ok(("10.0.0.1", "10.0.0.1", Some(0))));
        assert_eq!(parse("a:65535"), Ok(("a", "a", Some(65535))));
        assert_eq!(
            parse("a:00080"),
            Ok(("a", "a", Some(80))),
            "leading zeros: *DIGIT"
        );
        assert_eq!(parse(""), Ok(("", "", None)));
        assert_eq!(parse(":80"), Ok(("", "", Some(80))));
    }

    /// RFC 3986 §3.2.3: "URI producers and normalizers should omit the port component and
    /// its ':' delimiter if port is empty"; an empty port is no port.
    #[test]
    fn an_empty_port_is_no_port() {
        assert_eq!(parse("reviews:"), Ok(("reviews", "reviews", None)));
        assert_eq!(parse("[::1]:"), Ok(("[::1]", "::1", None)));
        assert_eq!(split_host_port("reviews:"), Ok(("reviews", None)));
    }

    #[test]
    fn bad_ports_are_refused() {
        for s in [
            "a:http", "a:65536", "a:70000", "a:+80", "a:-1", "a:8 0", "a:123456", "[::1]:x",
        ] {
            assert_eq!(parse(s), Err(AuthorityError::InvalidPort), "{s}");
            assert_eq!(
                split_port(s),
                (s, None),
                "{s}: all host for the route table"
            );
        }
    }

    /// RFC 3986 §3.2.2: an IPv6 literal is enclosed in brackets; only then can it carry a
    /// port.
    #[test]
    fn bracketed_ipv6_literals() {
        assert_eq!(parse("[::1]:8080"), Ok(("[::1]", "::1", Some(8080))));
        assert_eq!(parse("[::1]"), Ok(("[::1]", "::1", None)));
        assert_eq!(
            parse("[fe80::1%25eth0]:443"),
            Ok(("[fe80::1%25eth0]", "fe80::1%25eth0", Some(443)))
        );
        assert_eq!(parse("[::1"), Err(AuthorityError::UnclosedBracket));
        assert_eq!(parse("[::1]x"), Err(AuthorityError::AfterBracket));
        assert_eq!(parse("[::1]]:80"), Err(AuthorityError::AfterBracket));
        assert_eq!(split_port("[::1]:8080"), ("[::1]", Some(8080)));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
    }

    /// RFC 3986 §3.2.2 again: without brackets an IPv6 literal cannot carry a port, so a host
    /// with several colons is taken whole. (Before this parser, two of its copies read `::1`
    /// as host `:` and port 1.)
    #[test]
    fn a_bare_ipv6_literal_is_all_host() {
        for s in [
            "::1",
            "::",
            "fe80::1",
            "fe80::1:80",
            "2001:db8::8:800:200c:417a",
        ] {
            assert_eq!(parse(s), Ok((s, s, None)), "{s}");
            assert_eq!(split_port(s), (s, None), "{s}");
            assert_eq!(split_host_port(s), Ok((s, None)), "{s}");
        }
    }

    #[test]
    fn split_host_port_keeps_the_port_text() {
        assert_eq!(split_host_port("a:http"), Ok(("a", Some("http"))));
        assert_eq!(split_host_port("[::1]:99999"), Ok(("[::1]", Some("99999"))));
        assert_eq!(split_host_port("a"), Ok(("a", None)));
    }

    #[test]
    fn userinfo_and_requests() {
        assert_eq!(strip_userinfo("u:p@h:80"), "h:80");
        assert_eq!(strip_userinfo("a@b@h"), "h");
        assert_eq!(strip_userinfo("h:80"), "h:80");
        let req = Request::get("http://u@a.example:81/x")
            .header("host", "b.example")
            .body(());
        assert_eq!(
            req.as_ref().ok().and_then(of_request),
            Some("a.example:81"),
            "the target wins"
        );
        let req = Request::get("/x").header("host", "b.example:82").body(());
        assert_eq!(req.as_ref().ok().and_then(of_request), Some("b.example:82"));
        let req = Request::get("/x").body(());
        assert_eq!(req.as_ref().ok().and_then(of_request), None);
        assert_eq!(unbracket("[::1]"), "::1");
        assert_eq!(unbracket("[::1"), "[::1");
        assert_eq!(unbracket("a"), "a");
    }

    fn reg_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._~-]{0,40}"
    }

    fn ipv6() -> impl Strategy<Value = String> {
        any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string())
    }

    proptest! {
        /// `host:port` written out parses back to the same host and port.
        #[test]
        fn host_port_round_trips(host in reg_name(), port in proptest::option::of(any::<u16>())) {
            let text = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            let a = Authority::parse(&text);
            prop_assert_eq!(a.map(|a| (a.host(), a.port())), Ok((host.as_str(), port)));
        }

        /// `[v6]:port` written out parses back; the unbracketed host parses as the address.
        #[test]
        fn ipv6_round_trips(ip in ipv6(), port in proptest::option::of(any::<u16>())) {
            let text = match port {
                Some(p) => format!("[{ip}]:{p}"),
                None => format!("[{ip}]"),
            };
            let a = Authority::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(a.host(), format!("[{ip}]"));
            prop_assert_eq!(a.unbracketed(), ip.as_str());
            prop_assert_eq!(a.port(), port);
            // bare, the literal is all host
            prop_assert_eq!(split_port(&ip), (ip.as_str(), None));
        }

        /// Any input: no panic, and the parts are slices of the input that put it back
        /// together.
        #[test]
        fn never_panics_and_rebuilds_the_input(s in "\\PC{0,40}|[\\[\\]:0-9a-f.]{0,24}") {
            let (host, port) = split_port(&s);
            prop_assert!(s.starts_with(host));
            if let Ok((h, p)) = split_host_port(&s) {
                let rebuilt = match p {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_string(),
                };
                let with_empty_port = format!("{rebuilt}:");
                prop_assert!(rebuilt == s || with_empty_port == s);
                if host != s {
                    // parsed: the port is the text's number
                    prop_assert_eq!(port, p.and_then(|p| p.parse::<u16>().ok()));
                }
            }
            let _ = Authority::parse(&s).map(|a| a.unbracketed());
        }
    }
}
