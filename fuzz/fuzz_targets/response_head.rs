//! Arbitrary bytes as an upstream's response head, through the HTTP/1.1 client's parser
//! (`mesh_transport::fuzzing::response_head`): it may ask for more bytes or refuse the head
//! with a reason, never panic; a head it accepts parses the same from its own bytes alone.
//! The first byte picks the request it answers: bit 0 `HEAD`, bit 1 an upgrade.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_transport::fuzzing::response_head;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let (is_head, upgrade) = (kind & 1 != 0, kind & 2 != 0);
    if let Ok(Some(h)) = response_head(bytes, is_head, upgrade) {
        assert!(h.consumed <= bytes.len());
        let again = response_head(&bytes[..h.consumed], is_head, upgrade)
            .expect("a head accepted with more bytes behind it is accepted alone")
            .expect("complete");
        assert_eq!(again.status, h.status);
        assert_eq!(again.headers, h.headers);
        assert_eq!(again.framing, h.framing);
        assert_eq!(again.consumed, h.consumed);
    }
});
