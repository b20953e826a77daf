//! Arbitrary first bytes of a connection, through the listener's protocol detection
//! (`mesh_transport::fuzzing::sniff`: PERMISSIVE's TLS-or-plaintext first byte, then the
//! HTTP/2 preface or HTTP/1.x): never a panic, and the same decision whether the bytes arrive
//! at once, in two reads, or a byte at a time. The first byte picks PERMISSIVE (odd) and the
//! second the cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_transport::fuzzing::sniff;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let permissive = data[0] & 1 == 1;
    let stream = &data[2..];
    let cut = usize::from(data[1]).min(stream.len());
    let whole = sniff(&[stream], permissive);
    assert_eq!(sniff(&[&stream[..cut], &stream[cut..]], permissive), whole, "cut at {cut}");
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(sniff(&bytewise, permissive), whole, "byte at a time");
});
