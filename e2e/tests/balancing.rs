//! Session affinity through the whole proxy: DestinationRule `consistentHash` on a header and
//! on a generated cookie, with four real endpoints and two workers, and the sticky cookie
//! across a weighted VirtualService split.
//!
//! Every test also checks that the keys spread over more than one endpoint, so that a
//! balancer always picking the same endpoint cannot pass them.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};

use support::*;

async fn four() -> [Backend; 4] {
    [
        backend("a").await,
        backend("b").await,
        backend("c").await,
        backend("d").await,
    ]
}

fn hashed_service(backends: &[Backend; 4], hash: &str) -> String {
    let refs: Vec<&Backend> = backends.iter().collect();
    format!(
        "{}{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash:
{hash}",
        bootstrap(2, ""),
        service_entry("reviews", 9080, "HTTP", &refs),
    )
}

/// The `name=value` pair of a `Set-Cookie` for `name`, if the reply has one.
fn set_cookie(r: &Reply, name: &str) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

/// Envoy's `hash_policy.header` (Istio `consistentHash.httpHeaderName`): the same header
/// value always reaches the same endpoint, whichever connection and worker carries it.
/// 30 users over 4 endpoints all landing on one endpoint by chance has probability
/// 4·4⁻³⁰ ≈ 4e-18, so the spread check cannot fail for a working hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_pins_each_user_to_one_endpoint() {
    let bs = four().await;
    let p = start(&hashed_service(&bs, "        httpHeaderName: x-user\n")).await;
    let mut keep = H1::connect(p.out).await;
    let mut home: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..6 {
        for u in 0..30 {
            let user = format!("user-{u}");
            let r = if round % 2 == 0 {
                keep.get("reviews", &[("x-user", &user)]).await
            } else {
                get_once(p.out, "reviews", &[("x-user", &user)]).await // a new connection, maybe another worker
            };
            assert_eq!(r.status, 200, "{r:?}");
            let first = home
                .entry(user.clone())
                .or_insert_with(|| r.backend().to_string());
            assert_eq!(first, r.backend(), "{user} moved in round {round}");
        }
    }
    let used: BTreeSet<&String> = home.values().collect();
    assert!(used.len() >= 2, "30 users all hashed to {used:?}");
}

/// Envoy's `hash_policy.cookie` with a ttl (Istio `consistentHash.httpCookie`): a request
/// without the cookie gets one generated (`Set-Cookie: session=…; Max-Age=60; …; HttpOnly`)
/// and is itself balanced on the generated value, so it and every later request carrying
/// the cookie reach the same endpoint; requests carrying it get no new cookie. 20 cookies
/// over 4 endpoints on one endpoint by chance: 4·4⁻²⁰ ≈ 4e-12.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_generated_cookie_keeps_the_client_on_one_endpoint() {
    let bs = four().await;
    let p = start(&hashed_service(
        &bs,
        "        httpCookie: {name: session, ttl: 60s}\n",
    ))
    .await;
    let mut used = BTreeSet::new();
    for _ in 0..20 {
        let first = get_once(p.out, "reviews", &[]).await;
        assert_eq!(first.status, 200, "{first:?}");
        let raw = first
            .headers
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string());
        let raw = raw.unwrap_or_else(|| panic!("no Set-Cookie on the first response: {first:?}"));
        assert!(
            raw.contains("Max-Age=60") && raw.contains("HttpOnly"),
            "{raw}"
        );
        let cookie = set_cookie(&first, "session").unwrap();
        let mut c = H1::connect(p.out).await;
        for i in 0..5 {
            let r = if i % 2 == 0 {
                c.get("reviews", &[("cookie", &cookie)]).await
            } else {
                get_once(
                    p.out,
                    "reviews",
                    &[("cookie", &format!("other=1; {cookie}"))],
                )
                .await
            };
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.backend(), first.backend(), "{cookie}: request {i} moved");
            assert!(
                set_cookie(&r, "session").is_none(),
                "a client with the cookie got a new one: {r:?}"
            );
        }
        used.insert(first.backend().to_string());
    }
    assert!(used.len() >= 2, "20 cookies all on {used:?}");
}

/// The sticky cookie across a weighted split (Envoy's stateful sessions; Istio users get it
/// by combining `consistentHash.httpCookie` with weights): the cookie names the subset the
/// first request was sent to, so the router keeps the client there. Without it a 50/50
/// split would move a client within 6 requests with probability 31/32. 40 new clients all
/// on one side by chance: 2·2⁻⁴⁰ ≈ 2e-12.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_cookie_keeps_the_client_on_its_side_of_a_weighted_split() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let yaml = format!(
        "{}{}{}{}",
        bootstrap(2, ""),
        service_entry("reviews", 9080, "HTTP", &[&v1, &v2]),
        destination_rule(
            "reviews",
            &["v1", "v2"],
            "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        httpCookie: {name: session, ttl: 60s}\n"
        ),
        weighted_vs("reviews", &[("v1", 50), ("v2", 50)]),
    );
    let p = start(&yaml).await;
    let mut sides = BTreeSet::new();
    for _ in 0..40 {
        let first = get_once(p.out, "reviews", &[]).await;
        assert_eq!(first.status, 200, "{first:?}");
        let cookie =
            set_cookie(&first, "session").unwrap_or_else(|| panic!("no cookie: {first:?}"));
        let mut c = H1::connect(p.out).await;
        for i in 0..6 {
            let r = c.get("reviews", &[("cookie", &cookie)]).await;
            assert_eq!(
                (r.status.as_u16(), r.backend()),
                (200, first.backend()),
                "{cookie}: request {i}: {r:?}"
            );
        }
        sides.insert(first.backend().to_string());
    }
    assert_eq!(
        sides.len(),
        2,
        "40 new clients of a 50/50 split all went to {sides:?}"
    );
}

/// Sends one `GET /` for `reviews` on a new connection from `source` (any 127.0.0.0/8
/// address on Linux loopback); returns the body (the backend's name).
async fn get_from(source: std::net::IpAddr, proxy: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let mut s = bounded(sock.connect(proxy)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    bounded(s.read_to_end(&mut out)).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

/// Envoy's `hash_policy.connection_properties.source_ip` (Istio `consistentHash.useSourceIp`):
/// every connection from one client IP reaches the same endpoint, whatever its source port
/// and whichever worker accepts it; the proxy's listener gives each request the client's
/// address. Clients on 20 loopback addresses all landing on one of 4 endpoints by chance
/// has probability 4·4⁻²⁰ ≈ 4e-12.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_the_source_ip_pins_each_client_address() {
    let bs = four().await;
    let p = start(&hashed_service(&bs, "        useSourceIp: true\n")).await;
    let mut home: BTreeMap<std::net::IpAddr, String> = BTreeMap::new();
    for round in 0..3 {
        for i in 2..22u8 {
            let ip = std::net::IpAddr::from([127, 0, 0, i]);
            let got = get_from(ip, p.out).await;
            let first = home.entry(ip).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "{ip} moved in round {round}");
        }
    }
    let used: BTreeSet<&String> = home.values().collect();
    assert!(
        used.len() >= 2,
        "20 client addresses all hashed to {used:?}"
    );
}
