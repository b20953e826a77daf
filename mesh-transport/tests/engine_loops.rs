//! Loops: the engine never connects to its own listening addresses (nor to those of the
//! listeners it shares [`OwnAddrs`] with), and a request that comes back to it through
//! something else (a relay here) is refused by its `Via` marker. Both answer
//! `508 Loop Detected` with flag `UF`, and the engine keeps serving.
// clippy.toml's allow-unwrap-in-tests covers #[test] functions only, not the helpers below
#![allow(clippy::unwrap_used)]

mod engine_common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use engine_common::*;
use http::Request;
use hyper::body::Incoming;
use mesh_core::ext::SelectedEndpoint;
use mesh_transport::{Engine, EngineConfig, OwnAddrs, WorkerContext};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

/// Where the stack of [`start_to`] sends requests: set after the engine has started, so it
/// can be the engine's own address.
type Target = Arc<OnceLock<SocketAddr>>;

/// An engine on `listen` whose every request goes to `target` (HTTP/2 if `h2`), or to
/// `other` when the request carries `x-to-other`.
fn start_to(listen: &str, own: OwnAddrs, target: Target, other: SocketAddr, h2: bool) -> Engine {
    let factory = Arc::new(move |ctx: &WorkerContext| {
        let connector = ctx.connector();
        let target = target.clone();
        tower::service_fn(move |mut req: Request<Incoming>| {
            let addr = match (req.headers().contains_key("x-to-other"), target.get()) {
                (false, Some(a)) => *a,
                _ => other,
            };
            req.extensions_mut()
                .insert(SelectedEndpoint::new(addr).with_http2(h2));
            connector.clone().oneshot(req)
        })
    });
    let config = EngineConfig {
        own_addrs: own,
        ..EngineConfig::new(listen.parse().unwrap())
    };
    Engine::start(config, factory).unwrap()
}

/// A TCP relay on 127.0.0.1:0 to `to`: pipes the first `max` connections both ways and
/// closes any more at once; counts the connections it relayed.
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

async fn relay(to: Target, max: usize) -> Relay {
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

/// What the connector answers when the upstream is one of the proxy's own listeners, and
/// what the listener answers when a request carries its own `Via` entry.
const OWN_ADDRESS: (u16, &str, &str) = (
    508,
    "UF",
    "loop detected: the upstream is one of this proxy's listeners",
);
const OWN_VIA: (u16, &str, &str) = (
    508,
    "UF",
    "loop detected: the request has already been through this proxy",
);

/// Sends `GET /` with `Host: a` on a fresh HTTP/1.1 connection; returns status, flags and
/// body.
async fn get_status(engine: &Engine, extra: &[(&str, &str)]) -> (u16, String, String) {
    let mut c = h1_client(engine.local_addr()).await;
    let mut req = get("/", "a");
    for (k, v) in extra {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let res = bounded(c.send_request(req)).await.unwrap();
    let flags = res
        .headers()
        .get("x-mesh-response-flags")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (res.status().as_u16(), flags, text(res).await)
}

fn is(got: &(u16, String, String), want: (u16, &str, &str)) -> bool {
    got.0 == want.0 && got.1 == want.1 && got.2 == want.2
}

/// Before: the engine connected to itself, which forwarded to itself again, until something
/// ran out (0.8 s of CPU and +231 MiB for one request through the whole proxy, then
/// `503 UF`). Now the connector refuses its own address, on HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn an_endpoint_at_the_engines_own_address_is_508_uf() {
    let up = upstream(echo()).await;
    for h2 in [false, true] {
        let target = Target::default();
        let engine = start_to("127.0.0.1:0", OwnAddrs::new(), target.clone(), up.addr, h2);
        target.set(engine.local_addr()).unwrap();
        let got = get_status(&engine, &[]).await;
        assert!(is(&got, OWN_ADDRESS), "h2 {h2}: {got:?}");
        // and the engine keeps serving
        assert_eq!(get_status(&engine, &[("x-to-other", "1")]).await.0, 200);
        let got = get_status(&engine, &[]).await;
        assert!(is(&got, OWN_ADDRESS), "h2 {h2}: {got:?}");
        engine.drain().await;
    }
}

/// A listener on `0.0.0.0` is reached through every local address of its port.
#[tokio::test]
async fn a_wildcard_listener_is_its_port_on_every_local_address() {
    let up = upstream(echo()).await;
    let target = Target::default();
    let engine = start_to("0.0.0.0:0", OwnAddrs::new(), target.clone(), up.addr, false);
    let port = engine.local_addr().port();
    target
        .set(SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    let mut c = h1_client(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let res = bounded(c.send_request(get("/", "a"))).await.unwrap();
    assert_eq!(res.status(), 508);
    assert_eq!(res.headers()["x-mesh-response-flags"], "UF");
    assert_eq!(text(res).await, OWN_ADDRESS.2);
    engine.drain().await;
}

/// The listeners of one proxy share their addresses: none forwards to another (the proxy's
/// outbound to its inbound, or to its admin). A listener that stopped is no longer one.
#[tokio::test]
async fn listeners_sharing_own_addrs_do_not_forward_to_each_other() {
    let up = upstream(echo()).await;
    let own = OwnAddrs::new();
    let other = start(up.addr, false, mesh_transport::Limits::default(), 1);
    let to_other = Target::default();
    let engine = start_to("127.0.0.1:0", own.clone(), to_other.clone(), up.addr, false);
    to_other.set(other.local_addr()).unwrap();
    // the check is made when a connection is opened: a listener joins the set before
    // anything is forwarded to it (as the engine adds itself before its workers start)
    own.add(other.local_addr());
    let got = get_status(&engine, &[]).await;
    assert!(is(&got, OWN_ADDRESS), "{got:?}");
    // not one of ours any more: forwarded (through `other` to the upstream)
    own.remove(other.local_addr());
    assert_eq!(get_status(&engine, &[]).await.0, 200);
    // an engine adds its address to the set it is given, and removes it when it stops
    let shared = start_to(
        "127.0.0.1:0",
        own.clone(),
        Target::default(),
        up.addr,
        false,
    );
    let shared_addr = shared.local_addr();
    assert!(own.to_vec().contains(&shared_addr));
    assert!(own.to_vec().contains(&engine.local_addr()));
    shared.drain().await;
    assert!(!own.to_vec().contains(&shared_addr));
    other.drain().await;
    engine.drain().await;
}

/// RFC 9110 §7.6.3: `Via` "can be used for […] identifying the protocol capabilities of
/// senders along the request/response chain" and loops. A request that arrives with this
/// listener's own entry has been through it before: answered, never forwarded.
#[tokio::test]
async fn a_request_carrying_the_listeners_own_via_is_508_uf_and_never_forwarded() {
    let up = upstream(echo()).await;
    let engine = start(up.addr, false, mesh_transport::Limits::default(), 1);
    let me = engine.via_pseudonym().to_owned();
    for via in [
        format!("1.1 {me}"),
        format!("1.0 fred, 2 {me} (mesh)"),
        format!("HTTP/1.1 {me}"),
    ] {
        let got = get_status(&engine, &[("via", &via)]).await;
        assert!(is(&got, OWN_VIA), "{via}: {got:?}");
    }
    let got = get_status(
        &engine,
        &[("via", "1.0 fred"), ("via", &format!("1.1 {me}"))],
    )
    .await;
    assert!(is(&got, OWN_VIA), "{got:?}");
    // HTTP/2 too
    let (mut h2, _conn) = h2_client(engine.local_addr()).await;
    let req = Request::builder()
        .uri("http://a/")
        .header("via", format!("2 {me}"))
        .body(full(""))
        .unwrap();
    let res = bounded(h2.send_request(req)).await.unwrap();
    assert_eq!(res.status(), 508);
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "a looped request was forwarded"
    );
    // someone else's entries, or ours inside a comment, are no loop
    for via in [
        "1.1 mesh-0000000000000000".to_owned(),
        format!("1.1 other ({me})"),
        format!("1.1 {me}x"),
    ] {
        assert_eq!(get_status(&engine, &[("via", &via)]).await.0, 200, "{via}");
    }
    engine.drain().await;
}

/// A loop the address check cannot see (the upstream is a relay back to the engine): the
/// request comes back once, with the engine's `Via` entry, and is answered there.
#[tokio::test]
async fn a_loop_through_a_relay_stops_at_its_second_arrival() {
    let up = upstream(echo()).await;
    let back = Target::default();
    // at most 20 hops, so that a broken marker ends in an error instead of running forever
    let relay = relay(back.clone(), 20).await;
    let to_relay = Target::default();
    to_relay.set(relay.addr).unwrap();
    let engine = start_to("127.0.0.1:0", OwnAddrs::new(), to_relay, up.addr, false);
    back.set(engine.local_addr()).unwrap();
    let mut s = TcpStream::connect(engine.local_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let res = read_response(&mut s).await;
    assert!(res.starts_with("HTTP/1.1 508"), "{res}");
    assert!(res.ends_with(OWN_VIA.2), "{res}");
    assert!(
        res.to_ascii_lowercase()
            .contains("x-mesh-response-flags: uf"),
        "{res}"
    );
    assert_eq!(
        relay.relayed.load(Ordering::SeqCst),
        1,
        "hops through the relay"
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(get_status(&engine, &[("x-to-other", "1")]).await.0, 200);
    engine.drain().await;
}
