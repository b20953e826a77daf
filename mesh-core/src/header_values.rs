//! Header values the layers generate per request (`x-request-id`, `traceparent`,
//! `x-ratelimit-remaining`, …), cut from a buffer each thread shares between them.
//!
//! A value made with `HeaderValue::from_bytes` or `From<u64>` is an allocation of its own,
//! and a second one at its first clone (the record layer keeps the request's id for the
//! sinks). A [`shared`] value is a slice of this thread's current 1 KiB buffer: no
//! allocation per value (one per 1 KiB of values), a clone or a drop counts a reference,
//! and a buffer is freed when its last value is.
//!
//! ```
//! use mesh_core::header_values::{number, shared};
//!
//! assert_eq!(shared(b"4bf92f3577b34da6"), "4bf92f3577b34da6");
//! assert_eq!(number(4_294_967_295), "4294967295");
//! assert_eq!(number(7), "7");
//! ```

use http::HeaderValue;

/// The size of the per-thread buffers values are cut from (within the allocator's
/// per-thread cache: a 4 KiB buffer cost glibc's slow path).
const CHUNK: usize = 1024;

thread_local! {
    /// The rest of this thread's current buffer of values.
    static VALUES: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

/// `bytes` as a header value cut from this thread's shared buffer (see the
/// [module docs](self)). Bytes a header value cannot hold (controls but tab, DEL) give
/// `"-"`: callers pass what they formatted (digits, hex, dashes).
pub fn shared(bytes: &[u8]) -> HeaderValue {
    let cut = VALUES.with_borrow_mut(|buf| {
        if buf.capacity() - buf.len() < bytes.len() {
            *buf = bytes::BytesMut::with_capacity(CHUNK.max(bytes.len()));
        }
        buf.extend_from_slice(bytes);
        buf.split().freeze()
    });
    HeaderValue::from_maybe_shared(cut).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `n` in decimal as a header value: under
/// [`SMALL_NUMBERS`](crate::ratelimit::SMALL_NUMBERS), a slice of a static table, which
/// neither allocates nor counts references when cloned or dropped; above, [`shared`].
pub fn number(n: u64) -> HeaderValue {
    if n < u64::from(crate::ratelimit::SMALL_NUMBERS) {
        return crate::ratelimit::small_number(n as u32);
    }
    shared(itoa::Buffer::new().format(n).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cut_from_one_buffer_stay_apart() {
        // more than a buffer's worth: values from two buffers, each intact
        let values: Vec<HeaderValue> = (0..300u64).map(|i| number(1_000_000 + i)).collect();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(v.to_str().unwrap(), (1_000_000 + i as u64).to_string());
        }
        let long = vec![b'a'; 3000];
        assert_eq!(shared(&long).as_bytes(), &long[..]);
        assert_eq!(shared(b"\x01"), "-");
        assert_eq!(number(0), "0");
        assert_eq!(number(9_999), "9999");
        assert_eq!(number(10_000), "10000");
        assert_eq!(number(u64::MAX), u64::MAX.to_string().as_str());
    }
}
