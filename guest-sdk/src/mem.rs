//! A word-at-a-time `memcmp` for wasm guests.
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
            let (x, y) = unsafe { (word(a, at), word(b, at)) };
            if x != y {
                // Big-endian words order the way their bytes order lexicographically.
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

/// The eight bytes at `p + at` as a big-endian word.
///
/// # Safety
/// `p + at .. p + at + 8` must be readable.
#[inline(always)]
unsafe fn word(p: *const u8, at: usize) -> u64 {
    // SAFETY: forwarded from the caller.
    u64::from_be_bytes(unsafe { p.add(at).cast::<[u8; 8]>().read_unaligned() })
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
    unsafe { compare(a, b, n) }
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
}
