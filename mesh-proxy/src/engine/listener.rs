//! Listening sockets: one per worker, all bound to the same address with `SO_REUSEPORT`, so
//! the kernel spreads new connections over the workers and no accept crosses threads.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of each worker's listening socket.
pub(crate) const BACKLOG: i32 = 1024;

/// Binds `count` (at least one) listening sockets to `addr`. With port 0 the first socket
/// picks the port and the others bind to that same port.
pub(crate) fn bind_all(
    addr: SocketAddr,
    count: usize,
) -> io::Result<(SocketAddr, Vec<TcpListener>)> {
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut all = Vec::with_capacity(count.max(1));
    all.push(first);
    for _ in 1..count {
        all.push(bind_one(bound)?);
    }
    Ok((bound, all))
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
}
