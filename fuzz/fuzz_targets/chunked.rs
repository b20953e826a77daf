//! Arbitrary bytes as a chunked response body, through the client's body decoder
//! (`mesh_transport::fuzzing::chunked_body`): data, a request for more bytes or a typed
//! error, never a panic, never more data than bytes given, and the same answer whether the
//! bytes arrive at once or in two reads. The first two bytes (little-endian) pick the cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_transport::fuzzing::chunked_body;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let wire = &data[2..];
    let whole = chunked_body(wire, &[]);
    if let Ok(Some(d)) = &whole {
        assert!(d.data.len() + d.rest <= wire.len());
    }
    let split = chunked_body(wire, &[cut]);
    assert_eq!(whole.is_ok(), split.is_ok(), "cut at {cut}");
    if let (Ok(Some(a)), Ok(Some(b))) = (&whole, &split) {
        assert_eq!(a, b, "cut at {cut}");
    }
});
