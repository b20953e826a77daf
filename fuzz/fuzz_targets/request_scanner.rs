//! Arbitrary bytes from a client, through the listener's raw request-head scanner (the
//! `Content-Length` / `Transfer-Encoding` smuggling checks,
//! `mesh_transport::fuzzing::request_heads`): never a panic, and the same verdicts whether
//! the stream arrives at once, in two reads, or a byte at a time (a verdict that depends
//! on how reads split the stream would let a request be smuggled past it). The first two
//! bytes (little-endian) pick the cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_transport::fuzzing::request_heads;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let stream = &data[2..];
    let whole = request_heads(stream, &[]);
    assert_eq!(request_heads(stream, &[cut]), whole, "cut at {cut}");
    let bytewise: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(request_heads(stream, &bytewise), whole, "byte at a time");
});
