//! Arbitrary first bytes of a connection, through the gateway's SNI reader
//! (`mesh_transport::fuzzing::client_hello_sni`: the TLS record and ClientHello parser the
//! PASSTHROUGH listeners route by): never a panic; a server name found is ASCII and is in the
//! input; and the answer does not depend on how the bytes arrive. The listener asks again
//! after every read while the bytes are an incomplete ClientHello, so the first prefix that
//! is not `Incomplete` must give the whole input's answer. The first two bytes (big-endian)
//! pick the cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_transport::fuzzing::{ClientHello, client_hello_sni};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let stream = &data[2..];
    let cut = usize::from(u16::from_be_bytes([data[0], data[1]])).min(stream.len());
    let whole = client_hello_sni(stream);
    if let ClientHello::Sni(name) = whole {
        assert!(name.is_ascii(), "server name {name:?} is not ASCII");
        assert!(
            stream.windows(name.len()).any(|w| w == name.as_bytes()),
            "server name {name:?} is not in the input"
        );
    }
    let first = client_hello_sni(&stream[..cut]);
    if first != ClientHello::Incomplete {
        assert_eq!(first, whole, "decided at {cut} bytes");
    }
});
