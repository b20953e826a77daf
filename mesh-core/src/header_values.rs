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

/// `n` in decimal as a header value: under [`SMALL_NUMBERS`], a slice of a static table,
/// which neither allocates nor counts references when cloned or dropped; above, [`shared`].
pub fn number(n: u64) -> HeaderValue {
    if n < u64::from(SMALL_NUMBERS) {
        return small_number(n as u32);
    }
    shared(itoa::Buffer::new().format(n).as_bytes())
}

/// `n` (under [`SMALL_NUMBERS`]) as a header value, a slice of the static table.
fn small_number(n: u32) -> HeaderValue {
    let (at, width) = small_number_at(n);
    let digits = bytes::Bytes::from_static(&SMALL_DIGITS[at..at + width]);
    HeaderValue::from_maybe_shared(digits).unwrap_or_else(|_| HeaderValue::from(n))
}

/// The numbers [`number`] takes from its table: `0..SMALL_NUMBERS`.
pub const SMALL_NUMBERS: u32 = 10_000;

/// The decimal digits of `0..SMALL_NUMBERS`, one number after another (`"012…9101112…"`).
static SMALL_DIGITS: [u8; SMALL_DIGITS_LEN] = small_digits();

const SMALL_DIGITS_LEN: usize = 10 + 90 * 2 + 900 * 3 + 9000 * 4;

const fn digit_count(n: u32) -> usize {
    match n {
        0..10 => 1,
        10..100 => 2,
        100..1000 => 3,
        _ => 4,
    }
}

/// Where number `n` (under [`SMALL_NUMBERS`]) starts in [`SMALL_DIGITS`], and its width.
const fn small_number_at(n: u32) -> (usize, usize) {
    let n = n as usize;
    match n {
        0..10 => (n, 1),
        10..100 => (10 + (n - 10) * 2, 2),
        100..1000 => (190 + (n - 100) * 3, 3),
        _ => (2890 + (n - 1000) * 4, 4),
    }
}

const fn small_digits() -> [u8; SMALL_DIGITS_LEN] {
    let mut out = [0u8; SMALL_DIGITS_LEN];
    let (mut n, mut at) = (0u32, 0usize);
    while n < SMALL_NUMBERS {
        let width = digit_count(n);
        let (mut k, mut v) = (width, n);
        while k > 0 {
            out[at + k - 1] = b'0' + (v % 10) as u8;
            v /= 10;
            k -= 1;
        }
        at += width;
        n += 1;
    }
    out
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
