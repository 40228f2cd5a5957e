//! postcard into a `Vec<u8>`, appending, without a `memcpy` call per varint.
//!
//! postcard hands its output one small piece at a time: every integer is a varint of 1 to 10
//! bytes, every enum a tag, every string a length. The `Vec` flavors postcard ships with pass
//! each piece to `extend_from_slice`, and a copy of a length the compiler cannot see is a call
//! to `memcpy`: at 256 clients those calls were 1.2 % of the machine, most of it encoding log
//! entries. [`append`] pushes short pieces byte by byte and copies only long ones. The bytes
//! are postcard's, the same as `postcard::to_stdvec` gives (pinned by this module's tests).

use serde::Serialize;

/// Pieces up to this long are pushed byte by byte: the longest varint, with room to spare.
const PUSH_BYTES_MAX: usize = 16;

/// A postcard flavor that appends to a `Vec<u8>`.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if bytes.len() <= PUSH_BYTES_MAX {
            self.0.reserve(bytes.len());
            for &b in bytes {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Append the postcard encoding of `value` to `out`. On an error, `out` may hold part of it:
/// a caller that keeps `out` truncates it back.
pub fn append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, AppendTo(out))
}

/// The postcard encoding of `value` in a new buffer that starts with room for `capacity`
/// bytes (a guess: it grows past it if needed).
pub fn to_vec<T: Serialize + ?Sized>(value: &T, capacity: usize) -> postcard::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity);
    append(value, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Reply, Request, RequestError, Response};

    /// Whatever the sizes of its integers and strings, the encoding is postcard's own.
    #[test]
    fn the_bytes_are_postcards() {
        fn same<T: Serialize + std::fmt::Debug>(v: &T) {
            let ours = to_vec(v, 0).expect("encodes");
            assert_eq!(ours, postcard::to_stdvec(v).expect("encodes"), "{v:?}");
            let mut prefixed = vec![9, 9];
            append(v, &mut prefixed).expect("encodes");
            assert_eq!(prefixed[2..], ours[..]);
            assert_eq!(prefixed[..2], [9, 9]);
        }
        for n in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            same(&n);
            same(&(n as i64).wrapping_neg());
            same(&(
                n,
                "x".repeat((n % 40) as usize),
                vec![7u8; (n % 300) as usize],
            ));
            let resp: Response = Ok(Reply::Applied {
                index: n,
                output: vec![1; (n % 20) as usize],
            });
            same(&resp);
            let err: Response = Err(RequestError::App {
                code: n as u32,
                message: "m".repeat((n % 17) as usize),
            });
            same(&err);
            same(&Command::Apply {
                machine: "kv".into(),
                command: vec![3; (n % 400) as usize],
            });
        }
        same(&Request::Status);
    }
}
