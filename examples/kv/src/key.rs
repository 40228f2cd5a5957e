//! The kv map's key type.

use std::borrow::Borrow;
use std::cmp::Ordering;

/// A key of the map: the string, and its first 16 bytes (zero-padded) as two big-endian words.
///
/// Ordered exactly as the strings are. Comparing the words decides almost every comparison a
/// map search makes, in two integer compares; comparing the strings calls `memcmp` through the
/// guest's function table, with its fuel checks, once per key visited: with `String` keys,
/// `memcmp` alone was a fifth of the kv machine threads' time at 256 clients. Two keys whose words are equal are compared
/// as strings, so long keys that share a 16-byte prefix still order correctly.
#[derive(Clone, Debug)]
pub(crate) struct Key {
    head: [u64; 2],
    pub(crate) text: String,
}

impl Key {
    pub(crate) fn new(text: String) -> Key {
        let mut bytes = [0u8; 16];
        let n = text.len().min(16);
        bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
        let (a, b) = bytes.split_at(8);
        let word = |w: &[u8]| u64::from_be_bytes(w.try_into().unwrap_or_default());
        Key {
            head: [word(a), word(b)],
            text,
        }
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        // Zero padding keeps the words' order the strings' order: where the words differ at a
        // byte that is padding in one key, that key is a prefix of the other, so it is smaller.
        (self.head[0].cmp(&other.head[0]))
            .then(self.head[1].cmp(&other.head[1]))
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.text == other.text
    }
}

impl Eq for Key {}

/// Sound because `Key`'s order is its text's order (see `Ord`): scans look keys up by `&str`.
impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::Key;

    /// `Key` orders (and equates) exactly as its text does: around the 8- and 16-byte word
    /// boundaries, with NUL bytes that look like the padding, with prefixes of each other and
    /// with long keys that share their first 16 bytes. A map and its scans rely on it.
    #[test]
    fn keys_order_as_their_strings_do() {
        let mut texts: Vec<String> = vec![String::new()];
        for stem in ["", "a", "k0001234", "0123456789abcdef", "0123456789abcdefX"] {
            for tail in [
                "", "\0", "\0\0", "\u{1}", "a", "b", "\u{7f}", "\u{e9}", "\u{ffff}",
            ] {
                texts.push(format!("{stem}{tail}"));
                texts.push(format!("{stem}{tail}z"));
            }
        }
        for n in 0..=18 {
            texts.push("x".repeat(n));
            texts.push(format!("{}\0", "x".repeat(n)));
        }
        for a in &texts {
            for b in &texts {
                let (ka, kb) = (Key::new(a.clone()), Key::new(b.clone()));
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ka == kb, a == b, "{a:?} vs {b:?}");
            }
        }
    }
}
