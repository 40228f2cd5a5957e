//! A word-at-a-time `memcmp` and `bcmp` for wasm guests.
//!
//! On `wasm32-unknown-unknown` the C string functions come from `compiler_builtins`, whose
//! `memcmp` compares one byte per loop iteration. Every `str`/`[u8]` ordering and equality
//! (`BTreeMap<String, _>` lookups, above all) goes through it, and under fuel metering each
//! iteration also pays a fuel check: profiling the kv example put it at about a quarter of a
//! batched apply. This definition is strong, so the linker prefers it to the builtin's weak one.
//! It compares eight bytes per step (the tail as one overlapping word) and is a pure function of its inputs (deterministic).
//! Native builds keep the platform's `memcmp`.

/// Lexicographic comparison of `n` bytes at `a` and `b`: negative, zero or positive, like C's
/// `memcmp`.
///
/// # Safety
/// `a` and `b` must each be valid for reads of `n` bytes.
#[inline]
pub(crate) unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n >= 8 {
        let mut i = 0;
        loop {
            // Past the last whole word, re-read the final eight bytes (overlapping bytes already
            // found equal), so the tail costs one more word compare instead of a byte loop.
            let at = i.min(n - 8);
            // SAFETY: `at + 8 <= n`, and the caller guarantees `n` readable bytes at each pointer.
            let (x, y) = unsafe { (load::<8>(a, at), load::<8>(b, at)) };
            if x != y {
                // Big-endian words order the way their bytes order lexicographically; the byte
                // swap is paid once, at the first differing word.
                let (x, y) = (u64::from_be_bytes(x), u64::from_be_bytes(y));
                return if x < y { -1 } else { 1 };
            }
            if at == n - 8 {
                return 0;
            }
            i += 8;
        }
    }
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n`.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Whether the `n` bytes at `a` and `b` are equal. Words are compared in native byte order (no
/// byte swaps: wasm has no byte-swap instruction, so `from_be_bytes` costs a dozen shifts), and
/// short inputs, typically serde field names and enum tags, take two overlapping loads instead of
/// a byte loop that pays a fuel check per byte.
///
/// # Safety
/// `a` and `b` must each be valid for reads of `n` bytes.
#[inline]
pub(crate) unsafe fn equal(a: *const u8, b: *const u8, n: usize) -> bool {
    // SAFETY (all loads below): every offset plus its width is at most `n`, and the caller
    // guarantees `n` readable bytes at each pointer.
    unsafe {
        if n >= 8 {
            let mut i = 0;
            while i + 8 < n {
                if load::<8>(a, i) != load::<8>(b, i) {
                    return false;
                }
                i += 8;
            }
            // The last (possibly overlapping) word.
            load::<8>(a, n - 8) == load::<8>(b, n - 8)
        } else if n >= 4 {
            load::<4>(a, 0) == load::<4>(b, 0) && load::<4>(a, n - 4) == load::<4>(b, n - 4)
        } else if n >= 2 {
            load::<2>(a, 0) == load::<2>(b, 0) && load::<2>(a, n - 2) == load::<2>(b, n - 2)
        } else {
            n == 0 || *a == *b
        }
    }
}

/// The `N` bytes at `p + at`, unaligned, as an array (compared for equality only).
///
/// # Safety
/// `p + at .. p + at + N` must be readable.
#[inline(always)]
unsafe fn load<const N: usize>(p: *const u8, at: usize) -> [u8; N] {
    // SAFETY: forwarded from the caller.
    unsafe { p.add(at).cast::<[u8; N]>().read_unaligned() }
}

/// C `memcmp`, replacing `compiler_builtins`' byte-at-a-time one in wasm guests.
///
/// # Safety
/// `a` and `b` must each be valid for reads of `n` bytes.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { compare(a, b, n) }
}

/// C `bcmp` (zero iff equal), which LLVM may emit for equality-only comparisons.
///
/// # Safety
/// `a` and `b` must each be valid for reads of `n` bytes.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded from the caller.
    i32::from(!unsafe { equal(a, b, n) })
}

#[cfg(test)]
mod tests {
    use super::compare;

    fn sign(x: i32) -> i32 {
        x.signum()
    }

    #[test]
    fn word_compare_orders_like_slice_ord_at_every_length_and_offset() {
        let base: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..base.len() {
            for at in 0..n {
                for delta in [1u8, 0x7f, 0x80, 0xff] {
                    let mut other = base.clone();
                    other[at] = other[at].wrapping_add(delta);
                    let want = base[..n].cmp(&other[..n]) as i32;
                    // SAFETY: both slices hold at least `n` bytes.
                    let got = unsafe { compare(base.as_ptr(), other.as_ptr(), n) };
                    assert_eq!(sign(got), want, "n={n} at={at} delta={delta}");
                    // SAFETY: as above.
                    let back = unsafe { compare(other.as_ptr(), base.as_ptr(), n) };
                    assert_eq!(sign(back), -want, "n={n} at={at} delta={delta} (swapped)");
                }
            }
            // SAFETY: as above.
            assert_eq!(unsafe { compare(base.as_ptr(), base.as_ptr(), n) }, 0);
        }
    }

    #[test]
    fn word_equality_agrees_with_slice_eq_at_every_length_and_offset() {
        let base: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..base.len() {
            // SAFETY: both slices hold at least `n` bytes (also below).
            assert!(unsafe { super::equal(base.as_ptr(), base.to_vec().as_ptr(), n) });
            for at in 0..n {
                for delta in [1u8, 0x80, 0xff] {
                    let mut other = base.clone();
                    other[at] = other[at].wrapping_add(delta);
                    let got = unsafe { super::equal(base.as_ptr(), other.as_ptr(), n) };
                    assert!(!got, "n={n} at={at} delta={delta}");
                }
            }
            // Unaligned starts.
            if n >= 1 {
                let got = unsafe { super::equal(base[1..].as_ptr(), base[1..].as_ptr(), n - 1) };
                assert!(got);
            }
        }
    }
}
