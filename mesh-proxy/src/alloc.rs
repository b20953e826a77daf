//! mesh-proxy's global allocator: mimalloc, called with an alignment only when it needs one.
//!
//! A module of the binary (`main.rs`) and of the benches' `mimalloc` feature
//! (`benches/src/lib.rs`), not of the mesh-proxy library, which forbids `unsafe`: a global
//! allocator is an unsafe trait over mimalloc's C functions.
//!
//! Rust gives every allocation an alignment; the `mimalloc` crate passes it on to
//! `mi_malloc_aligned`, which finds the same block as `mi_malloc` by a longer path when the
//! alignment is one `mi_malloc` guarantees anyway (mimalloc's `mi_malloc_is_naturally_aligned`
//! in `alloc-aligned.c`; the `mimalloc` crate's open pull request 170 proposes the same). Here
//! the test comes first, as std's `System` makes it before calling `malloc`: callgrind counts
//! 0.4k fewer instructions per proxied request (33.3k → 32.9k, docs/performance.md).

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc's `MI_MAX_ALIGN_SIZE` on the 64-bit targets: the alignment its `mi_malloc`
/// guarantees to every block at least that large (`alloc-aligned.c`,
/// `mi_malloc_is_naturally_aligned`).
const MAX_ALIGN: usize = 16;

/// mimalloc, with a layout's alignment passed only when plain `mi_malloc` would not meet
/// it. The `mimalloc` crate passes every alignment to `mi_malloc_aligned`, which takes
/// a longer path to the same block (about 80 instructions, and 180 above 1 KiB, against
/// 20; the same test std's `System` makes before calling `malloc`).
pub struct MeshAlloc;

/// Whether `mi_malloc(size)` returns a block aligned to `align`: mimalloc's own test.
#[inline(always)]
fn natural(size: usize, align: usize) -> bool {
    align <= MAX_ALIGN && align <= size
}

// SAFETY: every path returns a block of mimalloc's of at least `layout.size()` bytes
// aligned to `layout.align()` (plain when `natural` says mimalloc guarantees it, its
// aligned functions otherwise) or null, and frees with `mi_free`, which takes any block
// of mimalloc's.
unsafe impl GlobalAlloc for MeshAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size and power-of-two alignment
        unsafe {
            if natural(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`
        unsafe {
            if natural(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new block keeps its
        // alignment by the same test as `alloc`
        unsafe {
            if natural(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout gets a block aligned as asked, natural or not, through alloc, zeroed
    /// alloc and realloc across the natural/aligned boundary (both ways), and the bytes
    /// written survive a realloc.
    #[test]
    fn every_alignment_is_met_through_alloc_zeroed_and_realloc() {
        let a = MeshAlloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1usize, 3, 8, 15, 16, 24, 31, 48, 100, 1024, 1500, 8192] {
                let layout = Layout::from_size_align(size, align).expect("a power of two");
                // SAFETY: non-zero sizes; every block is freed with its layout
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc {size} bytes aligned {align}");
                    p.write_bytes(0xa5, size);
                    for new in [size / 2 + 1, size * 3] {
                        let q = a.realloc(p_copy(p, layout, &a), layout, new);
                        assert!(!q.is_null());
                        assert_eq!(
                            q as usize % align,
                            0,
                            "realloc {size} → {new} aligned {align}"
                        );
                        assert!((0..size.min(new)).all(|i| *q.add(i) == 0xa5));
                        a.dealloc(q, Layout::from_size_align(new, align).expect("valid"));
                    }
                    a.dealloc(p, layout);
                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "zeroed {size} bytes aligned {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    /// A fresh block holding `p`'s bytes (realloc consumes its argument).
    ///
    /// # Safety
    /// `p` is a live block of `a`'s with `layout`.
    unsafe fn p_copy(p: *mut u8, layout: Layout, a: &MeshAlloc) -> *mut u8 {
        // SAFETY: as the caller promises; the copy does not overlap a fresh block
        unsafe {
            let c = a.alloc(layout);
            std::ptr::copy_nonoverlapping(p, c, layout.size());
            c
        }
    }
}
