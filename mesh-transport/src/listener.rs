//! Listening sockets: one per worker, all bound to the same address with `SO_REUSEPORT`, so
//! the kernel spreads new connections over the workers and no accept crosses threads.
//!
//! `SO_REUSEPORT` would also let another process (say, a stale proxy on an old
//! configuration) bind the same port and silently take a share of the connections. So before
//! the group is bound, a probe socket without `SO_REUSEPORT` is bound to the address: it fails
//! with [`io::ErrorKind::AddrInUse`] when any other socket listens there. Once our group
//! listens, another process's probe fails the same way. The probe sets `SO_REUSEADDR`, so
//! connections in TIME_WAIT from an earlier run do not count as "in use".

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of each worker's listening socket.
pub(crate) const BACKLOG: i32 = 1024;

/// Binds `count` (at least one) listening sockets to `addr`. With port 0 the first socket
/// picks the port and the others bind to that same port.
///
/// Fails with [`io::ErrorKind::AddrInUse`] if another socket already listens on `addr`
/// (see [`probe`]).
pub(crate) fn bind_all(
    addr: SocketAddr,
    count: usize,
) -> io::Result<(SocketAddr, Vec<TcpListener>)> {
    if addr.port() != 0 {
        probe(addr)?;
    }
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut all = Vec::with_capacity(count.max(1));
    all.push(first);
    for _ in 1..count {
        all.push(bind_one(bound)?);
    }
    Ok((bound, all))
}

/// Checks that no other socket listens on `addr` (a non-zero port): binds (and closes) a
/// socket with `SO_REUSEADDR` but without `SO_REUSEPORT`, which the kernel refuses when a
/// socket listens on the address, whether or not that one has `SO_REUSEPORT`.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    match s.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{addr} is already in use by another socket"),
        )),
        Err(e) => Err(e),
    }
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_binds_every_socket_to_one_port() {
        let (addr, all) = bind_all("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(all.len(), 3);
        for l in &all {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
    }

    /// What another `mesh-proxy` holds: a listening `SO_REUSEPORT` socket of the same user,
    /// which a plain `SO_REUSEPORT` bind would join.
    fn reuseport_listener() -> TcpListener {
        bind_one("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    #[test]
    fn a_port_another_reuseport_group_listens_on_is_refused() {
        let other = reuseport_listener();
        let addr = other.local_addr().unwrap();
        let err = bind_all(addr, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn a_port_a_plain_listener_holds_is_refused() {
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        let err = bind_all(addr, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[test]
    fn a_group_refuses_the_next_group_on_its_port() {
        let (addr, _ours) = bind_all("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let err = bind_all(addr, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[test]
    fn a_fixed_port_nobody_listens_on_binds_every_worker() {
        // hold the port without listening (SO_REUSEADDR, bound only), so no other process
        // can take it meanwhile; the kernel lets a listener bind beside such a socket
        let hold = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        hold.set_reuse_address(true).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        hold.bind(&any.into()).unwrap();
        let addr = hold.local_addr().unwrap().as_socket().unwrap();
        let (bound, all) = bind_all(addr, 3).unwrap();
        assert_eq!(bound, addr);
        assert_eq!(all.len(), 3);
    }
}
