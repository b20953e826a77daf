//! Loop prevention: a proxy never forwards to its own listeners, and a request that comes
//! back through it anyway is refused.
//!
//! A request whose destination is the proxy itself (`Host: 127.0.0.1:<outbound port>` under
//! `outboundTrafficPolicy: ALLOW_ANY`, an endpoint or `localApp` naming one of its ports)
//! would be forwarded to itself, again and again, each hop holding a connection and its
//! buffers until something gives out. Two defences, both answering
//! **`508 Loop Detected`** with the flag **`UF`**:
//!
//! 1. **Own addresses** ([`OwnAddrs`]): the connector refuses to open a connection to any
//!    listening address of the proxy (outbound, inbound, admin: every [`Engine`](crate::Engine)
//!    adds its own; the proxy adds its admin's). A listener on `0.0.0.0` or `[::]` stands
//!    for its port on every local address (loopback, the addresses of the host's interfaces,
//!    and the unspecified address itself, which `connect` takes as this host). Checked when
//!    a connection is opened (pooled connections were checked when they were), so a
//!    listener joins the set before anything can be forwarded to it: an engine adds itself
//!    before its workers start.
//! 2. **Hop marker** (`Via`, RFC 9110 §7.6.3): every request a listener forwards carries
//!    `Via: <received protocol> <pseudonym>` (`1.1 mesh-3f9a0c1d2e4b5a69`), the pseudonym
//!    random per listener; a request that arrives already carrying that listener's own
//!    pseudonym has been through it before (through a relay, a NAT, a name the first
//!    check cannot see through) and is answered instead of forwarded.
//!
//! The marker is per listener, not per process: an application behind the inbound listener
//! that is itself a proxy (a gateway, nginx) forwards a request carrying the inbound
//! listener's `Via` out through the outbound listener of the same sidecar, and that is not a
//! loop. A loop through the same listener twice is.
//!
//! **Status and flag.** Envoy has no response flag for a loop. `508 Loop Detected`
//! (RFC 5842 §7.2) says exactly what happened to whoever reads the status, and `UF`
//! (upstream connection failure) is Envoy's class for "no connection to the upstream was
//! made": the connection the proxy will not make to itself is one. It is also what a loop
//! ended in before (`503 UF`, once the proxy ran out of something), so alerts on `UF` still
//! see it; the 508 tells them apart from a dead endpoint.
//!
//! **Cost.** The own-address check runs only when a new upstream connection is opened (one
//! read lock and a few comparisons; one `bind` system call when the port is that of a
//! wildcard listener). The marker costs the request a prebuilt field (no allocation: to an
//! HTTP/1.1 upstream it is written into the head buffer) and, only when the request has a
//! `Via` already, one scan of its values.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, PoisonError, RwLock};

use http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use mesh_core::ResponseFlags;
use mesh_core::ext::local_reply;

/// The listening addresses of one proxy, shared by all its listeners: the connector of each
/// refuses to connect to any of them (see the [module docs](self)).
///
/// Cheap to clone (one `Arc`); clones share the set. Every [`Engine`](crate::Engine) adds
/// its bound address to the set of its [`EngineConfig`](crate::EngineConfig) when it starts
/// and removes it when it stops; add any other listener of the process yourself (the proxy
/// adds its admin listener).
///
/// ```
/// use mesh_transport::OwnAddrs;
///
/// let own = OwnAddrs::new();
/// own.add("0.0.0.0:15006".parse().unwrap());
/// own.add("127.0.0.1:15001".parse().unwrap());
/// assert!(own.reaches("127.0.0.1:15001".parse().unwrap()));
/// assert!(own.reaches("127.0.0.1:15006".parse().unwrap())); // the wildcard listener
/// assert!(own.reaches("0.0.0.0:15001".parse().unwrap())); // "this host"
/// assert!(!own.reaches("127.0.0.1:8080".parse().unwrap()));
/// assert!(!own.reaches("127.0.0.2:15001".parse().unwrap())); // another loopback address
/// ```
#[derive(Debug, Clone, Default)]
pub struct OwnAddrs(Arc<RwLock<Vec<SocketAddr>>>);

impl OwnAddrs {
    /// An empty set.
    pub fn new() -> Self {
        OwnAddrs::default()
    }

    /// Adds a listening address (once per listener: [`remove`](Self::remove) takes one).
    pub fn add(&self, addr: SocketAddr) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(addr);
    }

    /// Removes one registration of `addr` (the listener stopped).
    pub fn remove(&self, addr: SocketAddr) {
        let mut list = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = list.iter().position(|a| *a == addr) {
            list.swap_remove(i);
        }
    }

    /// The addresses in the set.
    pub fn to_vec(&self) -> Vec<SocketAddr> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a connection to `dest` would reach one of the listeners: the same address
    /// and port; or the same port on a wildcard (`0.0.0.0`, `[::]`) listener and `dest` a
    /// local address; or the same port and `dest` the unspecified address (which `connect`
    /// takes as this host). IPv4-mapped IPv6 addresses compare as IPv4.
    ///
    /// Conservative on a dual-family host: a wildcard listener of one family also claims the
    /// local addresses of the other.
    pub fn reaches(&self, dest: SocketAddr) -> bool {
        let list = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let dip = dest.ip().to_canonical();
        let mut local = None;
        for l in list.iter().filter(|l| l.port() == dest.port()) {
            let lip = l.ip().to_canonical();
            if lip == dip || dip.is_unspecified() {
                return true;
            }
            if lip.is_unspecified() && *local.get_or_insert_with(|| is_local(dip)) {
                return true;
            }
        }
        false
    }
}

/// Whether `ip` is an address of this host: loopback, or one a socket can be bound to
/// (binding fails with `EADDRNOTAVAIL` for an address no interface has).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// One listener's hop marker: its `Via` pseudonym and the field it adds, prebuilt for each
/// protocol version a request can arrive in (`1.0`, `1.1`, `2`), as a value (for hyper's
/// HTTP/2 client) and as a whole HTTP/1.1 field line (written into the head at once).
#[derive(Debug, Clone)]
pub(crate) struct Hop {
    pseudonym: Arc<str>,
    values: [HeaderValue; 3],
    lines: [Box<[u8]>; 3],
}

/// The index of a received protocol in [`Hop`]'s arrays.
#[inline]
fn proto_index(version: Version) -> usize {
    if version == Version::HTTP_2 {
        2
    } else if version == Version::HTTP_10 {
        0
    } else {
        1
    }
}

impl Hop {
    /// A fresh random pseudonym (`mesh-` and 16 hex digits).
    pub(crate) fn random() -> Self {
        Hop::new(&format!("mesh-{:016x}", mesh_core::rng::entropy()))
    }

    fn new(pseudonym: &str) -> Self {
        let value = |proto: &str| {
            HeaderValue::from_str(&format!("{proto} {pseudonym}"))
                .unwrap_or(HeaderValue::from_static("1.1 mesh"))
        };
        let values = [value("1.0"), value("1.1"), value("2")];
        let lines = values.clone().map(|v| {
            let mut line = b"via: ".to_vec();
            line.extend_from_slice(v.as_bytes());
            line.extend_from_slice(b"\r\n");
            line.into_boxed_slice()
        });
        Hop {
            pseudonym: pseudonym.into(),
            values,
            lines,
        }
    }

    /// The pseudonym (the `received-by` of its `Via` entries).
    pub(crate) fn pseudonym(&self) -> &str {
        &self.pseudonym
    }

    /// The `Via` value for a request received as `version` (RFC 9110 §7.6.3: the protocol
    /// the proxy received, `1.0`, `1.1` or `2`).
    #[inline]
    pub(crate) fn via(&self, version: Version) -> &HeaderValue {
        &self.values[proto_index(version)]
    }

    /// [`via`](Self::via) as an HTTP/1.1 field line: `via: 1.1 mesh-…\r\n`.
    #[inline]
    pub(crate) fn via_line(&self, version: Version) -> &[u8] {
        &self.lines[proto_index(version)]
    }

    /// Whether the request's `Via` fields name this hop (it has been here before). Look
    /// only when the request has a `Via` field: this is a map look-up and a scan.
    pub(crate) fn seen_in(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::VIA)
            .iter()
            .any(|v| via_names(v.as_bytes(), self.pseudonym.as_bytes()))
    }
}

/// Whether one `Via` field value has an entry received by `pseudonym`: entries are
/// comma-separated `received-protocol RWS received-by [RWS comment]` (RFC 9110 §7.6.3).
pub(crate) fn via_names(value: &[u8], pseudonym: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|entry| {
        let mut words = entry
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|w| !w.is_empty());
        let _protocol = words.next();
        words.next() == Some(pseudonym)
    })
}

/// What a worker thread's connector checks before forwarding: the proxy's own addresses,
/// and the marker its listener adds.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) own: OwnAddrs,
    pub(crate) hop: Hop,
}

/// Which of the two checks caught a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loop {
    /// The connector would have connected to one of the proxy's own listeners.
    OwnAddress,
    /// The request arrived with this listener's own `Via` entry.
    Via,
}

/// The answer to a loop: `508 Loop Detected`, flag `UF` (see the [module docs](self)).
pub(crate) fn loop_reply<R: mesh_core::body::ReplyBody>(why: Loop) -> http::Response<R> {
    let text = match why {
        Loop::OwnAddress => "loop detected: the upstream is one of this proxy's listeners",
        Loop::Via => "loop detected: the request has already been through this proxy",
    };
    local_reply(
        StatusCode::LOOP_DETECTED,
        ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_addresses_and_ports() {
        let own = OwnAddrs::new();
        own.add(addr("127.0.0.1:15001"));
        own.add(addr("[::1]:15000"));
        assert!(own.reaches(addr("127.0.0.1:15001")));
        assert!(own.reaches(addr("[::ffff:127.0.0.1]:15001")), "v4-mapped");
        assert!(own.reaches(addr("[::1]:15000")));
        assert!(
            own.reaches(addr("0.0.0.0:15001")),
            "unspecified is this host"
        );
        assert!(own.reaches(addr("[::]:15000")));
        assert!(!own.reaches(addr("127.0.0.1:15002")));
        assert!(!own.reaches(addr("127.0.0.2:15001")));
        assert!(!own.reaches(addr("10.1.2.3:15001")));
        own.remove(addr("127.0.0.1:15001"));
        assert!(!own.reaches(addr("127.0.0.1:15001")));
        assert_eq!(own.to_vec(), [addr("[::1]:15000")]);
    }

    #[test]
    fn wildcard_listeners_claim_their_port_on_local_addresses_only() {
        let own = OwnAddrs::new();
        own.add(addr("0.0.0.0:15006"));
        assert!(own.reaches(addr("127.0.0.1:15006")));
        assert!(
            own.reaches(addr("127.0.0.9:15006")),
            "all of 127/8 is local"
        );
        assert!(own.reaches(addr("[::1]:15006")));
        // TEST-NET-3 (RFC 5737): no interface has it
        assert!(!own.reaches(addr("203.0.113.7:15006")));
        assert!(!own.reaches(addr("127.0.0.1:15007")));
        // an address of this host that is not loopback, when there is one
        if let Ok(s) = UdpSocket::bind("0.0.0.0:0")
            && s.connect("203.0.113.7:9").is_ok()
            && let Ok(a) = s.local_addr()
            && !a.ip().is_loopback()
            && !a.ip().is_unspecified()
        {
            assert!(own.reaches(SocketAddr::new(a.ip(), 15006)), "{a}");
        }
    }

    #[test]
    fn via_entries_are_matched_by_received_by() {
        let p = b"mesh-00000000000000aa";
        assert!(via_names(b"1.1 mesh-00000000000000aa", p));
        assert!(via_names(b"1.0 fred, 1.1 mesh-00000000000000aa (mesh)", p));
        assert!(via_names(b"HTTP/2  mesh-00000000000000aa,1.1 x", p));
        assert!(!via_names(b"1.1 mesh-00000000000000ab", p));
        assert!(!via_names(b"1.1 mesh-00000000000000aa0", p));
        assert!(
            !via_names(b"mesh-00000000000000aa", p),
            "no protocol: not received-by"
        );
        assert!(
            !via_names(b"1.1 x (mesh-00000000000000aa)", p),
            "in a comment"
        );
        assert!(!via_names(b"", p));
    }

    #[test]
    fn hop_values_name_the_received_protocol() {
        let h = Hop::new("mesh-1");
        assert_eq!(h.via(Version::HTTP_11), "1.1 mesh-1");
        assert_eq!(h.via(Version::HTTP_10), "1.0 mesh-1");
        assert_eq!(h.via(Version::HTTP_2), "2 mesh-1");
        assert_eq!(h.via_line(Version::HTTP_11), b"via: 1.1 mesh-1\r\n");
        assert_eq!(h.via_line(Version::HTTP_2), b"via: 2 mesh-1\r\n");
        let mut m = HeaderMap::new();
        assert!(!h.seen_in(&m));
        m.append(header::VIA, HeaderValue::from_static("1.0 a"));
        assert!(!h.seen_in(&m));
        m.append(header::VIA, HeaderValue::from_static("2 b, 1.1 mesh-1"));
        assert!(h.seen_in(&m));
        let a = Hop::random();
        let b = Hop::random();
        assert_ne!(a.pseudonym(), b.pseudonym());
        assert!(a.pseudonym().starts_with("mesh-") && a.pseudonym().len() == 21);
    }
}
