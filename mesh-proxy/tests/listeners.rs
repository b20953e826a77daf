//! Binding the proxy's listeners: a port another socket listens on refuses start-up (the
//! workers' `SO_REUSEPORT` would otherwise let a second proxy silently share it), and every
//! listener is bound before any starts, so a start-up that fails leaves nothing listening.
//!
//! Ports are real sockets on port 0: an "occupied" port is one this test listens on; a port
//! the proxy is told to use and that must be closed afterwards is *held* by a socket that is
//! bound with `SO_REUSEADDR` but does not listen, so no other process can take it during the
//! test while the proxy can still bind it (the kernel lets one listener bind beside bound,
//! non-listening `SO_REUSEADDR` sockets), and a connection to it is refused unless the proxy
//! listens there.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use mesh_proxy::proxy::{ListenerKind, Proxy, StartError};
use socket2::{Domain, Protocol, Socket, Type};

/// A port on 127.0.0.1 held (bound with `SO_REUSEADDR`, not listening) for the test's length.
fn held_port() -> (Socket, u16) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_reuse_address(true).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&any.into()).unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

/// A port on 127.0.0.1 another socket listens on.
fn occupied_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A bootstrap with two workers per engine; `inbound` is the inbound port, if any.
fn bootstrap(outbound: u16, inbound: Option<u16>, admin: u16) -> String {
    let inbound = inbound
        .map(|p| {
            format!("  inbound: {{address: 127.0.0.1, port: {p}, localApp: \"127.0.0.1:9\"}}\n")
        })
        .unwrap_or_default();
    format!(
        "apiVersion: mesh.proxy/v1alpha1
kind: ProxyBootstrap
metadata: {{name: listeners}}
spec:
  concurrency: 2
  outbound: {{address: 127.0.0.1, port: {outbound}}}
{inbound}  admin: {{address: 127.0.0.1, port: {admin}}}
"
    )
}

fn start(yaml: &str) -> Result<Proxy, StartError> {
    let compiled = mesh_core::config::load_str("listeners.yaml", yaml)
        .unwrap_or_else(|e| panic!("configuration rejected:\n{e}\n{yaml}"));
    Proxy::start_compiled(compiled, Vec::new())
}

fn expect_in_use(r: Result<Proxy, StartError>, listener: ListenerKind, port: u16) -> String {
    let err = match r {
        Ok(p) => {
            let out = p.outbound_addr();
            p.drain_blocking();
            panic!("started (outbound {out:?}) although the {listener} port {port} is in use")
        }
        Err(e) => e,
    };
    let text = err.to_string();
    match err {
        StartError::AddrInUse { listener: l, addr } => {
            assert_eq!((l, addr), (listener, local(port)), "{text}");
        }
        other => panic!("expected AddrInUse for the {listener} listener, got: {other}"),
    }
    assert!(
        text.starts_with(&format!("{listener} listener 127.0.0.1:{port}: ")),
        "{text}"
    );
    assert!(text.contains("address already in use"), "{text}");
    text
}

fn assert_refused(port: u16, what: &str) {
    match TcpStream::connect(local(port)) {
        Ok(_) => panic!("{what} port {port} is left listening after the failed start"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{what}: {e}"),
    }
}

/// The premise of the tests below: a held port does not count as in use, and the proxy
/// listens on it (so "refused afterwards" there means the proxy closed it).
#[test]
fn a_held_port_is_free_for_the_proxy() {
    let (_hold, port) = held_port();
    let proxy = start(&bootstrap(port, None, 0)).unwrap();
    assert_eq!(proxy.outbound_addr(), Some(local(port)));
    TcpStream::connect(local(port)).unwrap();
    proxy.drain_blocking();
    assert_refused(port, "outbound (drained)");
}

#[test]
fn a_second_proxy_on_the_outbound_port_of_a_running_one_refuses_to_start() {
    let first = start(&bootstrap(0, None, 0)).unwrap();
    let port = first.outbound_addr().unwrap().port();
    expect_in_use(
        start(&bootstrap(port, None, 0)),
        ListenerKind::Outbound,
        port,
    );
    // the first keeps its port, every worker accepting
    assert!(first.state().is_ready());
    TcpStream::connect(local(port)).unwrap();
    first.drain_blocking();
}

#[test]
fn an_occupied_admin_port_refuses_start_and_leaves_no_listener_up() {
    let (_out, out_port) = held_port();
    let (_in, in_port) = held_port();
    let (_admin, admin_port) = occupied_port();
    expect_in_use(
        start(&bootstrap(out_port, Some(in_port), admin_port)),
        ListenerKind::Admin,
        admin_port,
    );
    assert_refused(out_port, "outbound");
    assert_refused(in_port, "inbound");
}

#[test]
fn an_occupied_inbound_port_refuses_start_and_leaves_no_listener_up() {
    let (_out, out_port) = held_port();
    let (_in, in_port) = occupied_port();
    let (_admin, admin_port) = held_port();
    expect_in_use(
        start(&bootstrap(out_port, Some(in_port), admin_port)),
        ListenerKind::Inbound,
        in_port,
    );
    assert_refused(out_port, "outbound");
    assert_refused(admin_port, "admin");
}

#[test]
fn an_occupied_outbound_port_refuses_start() {
    let (_out, out_port) = occupied_port();
    let (_admin, admin_port) = held_port();
    expect_in_use(
        start(&bootstrap(out_port, None, admin_port)),
        ListenerKind::Outbound,
        out_port,
    );
    assert_refused(admin_port, "admin");
}
