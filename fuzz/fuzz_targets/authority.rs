//! Arbitrary bytes (as lossy UTF-8) through `mesh_core::authority`, which runs on every
//! request's `Host`/`:authority`: no panic, and whatever parses puts the input back together.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::authority::{self, Authority};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (host, port) = authority::split_port(&text);
    assert!(text.starts_with(host));
    if let Ok((h, p)) = authority::split_host_port(&text) {
        let rebuilt = match p {
            Some(p) => format!("{h}:{p}"),
            None => h.to_string(),
        };
        assert!(rebuilt == text || format!("{rebuilt}:") == text);
    }
    if let Ok(a) = Authority::parse(&text) {
        assert_eq!((a.host(), a.port()), (host, port));
        assert!(a.host().contains(a.unbracketed()));
    }
    let _ = authority::strip_userinfo(&text);
});
