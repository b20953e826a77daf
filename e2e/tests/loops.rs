//! Requests addressed to the proxy itself, through the whole proxy. Under
//! `outboundTrafficPolicy: ALLOW_ANY` a `Host` naming one of the proxy's own listeners used
//! to be passed through to it, again and again: one 40-byte request took 0.8 s of CPU and
//! +231 MiB before ending in `503 UF`. Now the connector refuses the proxy's own addresses
//! (outbound, inbound, admin; a wildcard listener on every local address) and a request
//! that comes back anyway (through a relay) carries the proxy's `Via` entry and is refused
//! on arrival: `508 Loop Detected`, flag `UF`, and the proxy keeps serving.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::*;
use tokio::net::{TcpListener, TcpStream};

/// The body of the connector's answer when the upstream is one of the proxy's listeners,
/// and of the listener's when a request carries its own `Via` entry.
const OWN_ADDRESS: &str = "loop detected: the upstream is one of this proxy's listeners";
const OWN_VIA: &str = "loop detected: the request has already been through this proxy";

/// A backend that answers with the `Via` fields it received (`x-seen-via`, joined by ` | `).
fn via_reporting(name: &'static str) -> Handler {
    Arc::new(move |req: http::Request<hyper::body::Incoming>| {
        let via = req
            .headers()
            .get_all("via")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
            .join(" | ");
        Box::pin(async move {
            http::Response::builder()
                .header("x-backend", name)
                .header("x-seen-via", via)
                .body(full(name))
                .unwrap()
        })
    })
}

/// A TCP relay on 127.0.0.1:0 that pipes the first `max` connections to `to` (once set)
/// and closes any more at once; counts the connections it relayed.
struct Relay {
    addr: SocketAddr,
    relayed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(to: Arc<std::sync::OnceLock<SocketAddr>>, max: usize) -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let relayed = Arc::new(AtomicUsize::new(0));
    let count = relayed.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut down, _)) = l.accept().await else {
                continue;
            };
            if count.fetch_add(1, Ordering::SeqCst) >= max {
                continue; // dropped: closed
            }
            let to = *to.get().unwrap();
            tokio::spawn(async move {
                if let Ok(mut up) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    Relay {
        addr,
        relayed,
        task,
    }
}

/// `Host: 127.0.0.1:<port of one of the proxy's listeners>` under ALLOW_ANY: every listener
/// (outbound, inbound, admin) is refused with 508 `UF`, and nothing reaches the backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_to_any_of_the_proxys_own_listeners_is_508_not_a_loop() {
    let app = backend_with("app", via_reporting("app")).await;
    let outside = backend_with("outside", via_reporting("outside")).await;
    let yaml = bootstrap(
        2,
        &format!(
            "  mesh: {{outboundTrafficPolicy: ALLOW_ANY}}\n  \
             inbound: {{address: 127.0.0.1, port: 0, localApp: '127.0.0.1:{}'}}\n",
            app.port()
        ),
    );
    let p = start(&yaml).await;
    let inbound = p.proxy.inbound_addr().unwrap();
    let mut c = H1::connect(p.out).await;
    for (what, host) in [
        ("outbound", p.out.to_string()),
        ("inbound", inbound.to_string()),
        ("admin", p.admin.to_string()),
        ("outbound as 0.0.0.0", format!("0.0.0.0:{}", p.out.port())),
    ] {
        let r = c.get(&host, &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.flags(), r.body.as_str()),
            (508, "UF", OWN_ADDRESS),
            "{what} ({host}): {r:?}"
        );
        // the proxy keeps serving: a passthrough to a real server
        let r = c.get(&format!("127.0.0.1:{}", outside.port()), &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "outside"),
            "after {what}"
        );
    }
    assert_eq!(app.hits(), 0, "the inbound listener was reached");
    // the inbound listener still forwards to its application (and marks it)
    let r = get_once(inbound, "app", &[]).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "app"), "{r:?}");
    assert!(
        r.headers["x-seen-via"]
            .to_str()
            .unwrap()
            .starts_with("1.1 mesh-"),
        "{r:?}"
    );
}

/// A listener on `0.0.0.0` is its port on every local address: `Host: 127.0.0.1:<port>` is
/// the proxy itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_outbound_listener_is_refused_on_a_loopback_address() {
    let yaml = bootstrap(1, "  mesh: {outboundTrafficPolicy: ALLOW_ANY}\n").replace(
        "outbound: {address: 127.0.0.1, port: 0}",
        "outbound: {address: 0.0.0.0, port: 0}",
    );
    assert!(yaml.contains("address: 0.0.0.0"), "{yaml}");
    let p = start(&yaml).await;
    let port = p.out.port();
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let r = get_once(to, &format!("127.0.0.1:{port}"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.flags(), r.body.as_str()),
        (508, "UF", OWN_ADDRESS),
        "{r:?}"
    );
}

/// A loop the address check cannot see: the passthrough destination is a relay back to the
/// proxy. The request returns once, carrying the proxy's `Via` entry, and is answered there;
/// the relay carried it once. (The relay gives up after 20 connections, so that without the
/// marker the test fails instead of looping on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_a_relay_stops_at_its_second_arrival() {
    let outside = backend_with("outside", via_reporting("outside")).await;
    let back = Arc::new(std::sync::OnceLock::new());
    let relay = relay(back.clone(), 20).await;
    let p = start(&bootstrap(
        1,
        "  mesh: {outboundTrafficPolicy: ALLOW_ANY}\n",
    ))
    .await;
    back.set(p.out).unwrap();
    let mut c = H1::connect(p.out).await;
    let r = c.get(&relay.addr.to_string(), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.flags(), r.body.as_str()),
        (508, "UF", OWN_VIA),
        "{r:?}"
    );
    assert_eq!(
        relay.relayed.load(Ordering::SeqCst),
        1,
        "hops through the relay"
    );
    // forwarded requests carry the proxy's entry after the client's own
    let r = c
        .get(
            &format!("127.0.0.1:{}", outside.port()),
            &[("via", "1.0 fred")],
        )
        .await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "outside"), "{r:?}");
    let via = r.headers["x-seen-via"].to_str().unwrap();
    let (fred, ours) = via.split_once(" | ").unwrap();
    assert_eq!(fred, "1.0 fred");
    assert!(ours.starts_with("1.1 mesh-"), "{via}");
}
