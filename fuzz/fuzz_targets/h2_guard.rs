//! Arbitrary bytes from an HTTP/2 client (after the preface) through the listener's abuse
//! guards (`mesh_transport::fuzzing::h2_guard`: the frame-header scanner and its counters):
//! never a panic, the same verdict whether the bytes arrive at once or in pieces, and any
//! GOAWAY a well-formed ENHANCE_YOUR_CALM on stream 0. The first two bytes (little-endian)
//! pick the cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_transport::fuzzing::h2_guard;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let client = &data[2..];
    let whole = h2_guard(client, &[], &[]);
    assert_eq!(h2_guard(client, &[cut], &[]), whole, "cut at {cut}");
    if let Some((_, goaway)) = whole {
        assert_eq!(&goaway[..9], &[0, 0, 8, 7, 0, 0, 0, 0, 0]);
        assert_eq!(&goaway[13..], &11u32.to_be_bytes());
    }
});
