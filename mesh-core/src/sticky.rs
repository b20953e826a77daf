//! Sticky sessions that compose with weighted routing.
//!
//! Istio cannot keep a client on one subset when a route splits traffic and the destination
//! hashes on a cookie (istio/istio#9764): the weighted choice happens before the hash, so a
//! client holding the cookie still lands on a random subset. Here the cookie value names the
//! subset as well as the hash key:
//!
//! * the balancer (`mesh-lb`), when a destination uses `consistentHash.httpCookie` with a
//!   `ttl` and the request has no cookie, generates one with [`encode`] (its subset and a
//!   random key) and hashes on the key;
//! * the router (`mesh-routing`), before its weighted choice, reads the cookie named by the
//!   destination's DestinationRule, [`decode`]s it, and keeps the client on that subset as
//!   long as the route still has a destination with that subset and a non-zero weight;
//! * the balancer then hashes on the same key, so the client also stays on its endpoint.
//!
//! The value is `<subset>.<16 hex digits>` (`-` for no subset): cookie-safe, and a cookie
//! written by Envoy (a bare hash) simply decodes to `None` and is hashed as is.

/// Encodes a sticky cookie value for `subset` (or none) and hash `key`.
pub fn encode(subset: Option<&str>, key: u64) -> String {
    format!("{}.{key:016x}", subset.unwrap_or("-"))
}

/// Decodes a value written by [`encode`]: `(subset, key)`. `None` for any other value.
pub fn decode(value: &str) -> Option<(Option<&str>, u64)> {
    let (subset, hex) = value.rsplit_once('.')?;
    if hex.len() != 16 || subset.is_empty() {
        return None;
    }
    let key = u64::from_str_radix(hex, 16).ok()?;
    Some((if subset == "-" { None } else { Some(subset) }, key))
}

/// Finds cookie `name` in a request's `Cookie` headers.
pub fn find_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cookie_lookup() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; user=v2.00000000000000ff".parse().unwrap(),
        );
        let v = find_cookie(&h, "user").unwrap();
        assert_eq!(decode(v), Some((Some("v2"), 255)));
        assert_eq!(find_cookie(&h, "b"), None);
        assert_eq!(decode("12345"), None);
    }

    proptest! {
        #[test]
        fn round_trips(subset in proptest::option::of("[a-z0-9][a-z0-9-]{0,11}"), key: u64) {
            let v = encode(subset.as_deref(), key);
            prop_assert_eq!(decode(&v), Some((subset.as_deref(), key)));
        }
    }
}
