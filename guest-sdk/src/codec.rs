//! Encodings for commands, queries, outputs and replies.

use serde::{Serialize, de::DeserializeOwned};

/// How a machine's commands, queries, outputs and replies are encoded on the wire.
///
/// Decoding errors become [`AppError`](crate::AppError)s with a reserved code, so a malformed
/// command is a deterministic, replicated failure, never a trap.
pub trait Codec: 'static {
    /// Decode one value. Cost: linear in `bytes`.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String>;
    /// Encode one value. Cost: linear in the encoded size.
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String>;
    /// Encode the output or reply to `request` (the command or query bytes it answers). A codec
    /// that takes more than one form answers in the form it was asked in; the default is
    /// [`encode`](Codec::encode).
    fn encode_reply<T: Serialize>(value: &T, request: &[u8]) -> Result<Vec<u8>, String> {
        let _ = request;
        Self::encode(value)
    }
}

/// JSON (`serde_json`): the default, so a person can type commands at a CLI.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
    }
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| format!("cannot encode as JSON: {e}"))
    }
}

/// `postcard`: compact binary, for machines whose clients are programs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("invalid postcard: {e}"))
    }
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        postcard::to_stdvec(value).map_err(|e| format!("cannot encode as postcard: {e}"))
    }
}

/// JSON for people and postcard for programs, on one machine. A message whose first byte is 0
/// (which no JSON text starts with) is postcard after that byte; anything else is JSON. An output
/// or reply comes back in the form its command or query came in; [`encode`](Codec::encode) alone
/// writes JSON.
///
/// The machine's types decode both forms: their serde impls can tell them apart with
/// `is_human_readable()` (true for JSON, false for postcard), since the attributes a JSON form
/// usually carries (internal tags, untagged outputs) are not decodable from a format that does
/// not describe itself. `examples/kv` shows the pattern. A postcard message must be read to its
/// last byte: trailing bytes are an error, not ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonOrPostcard;

impl JsonOrPostcard {
    /// The first byte of a message in the binary form.
    pub const BINARY_TAG: u8 = 0;

    /// `value` in the binary form: [`BINARY_TAG`](Self::BINARY_TAG), then postcard.
    pub fn encode_binary<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        postcard::to_extend(value, vec![Self::BINARY_TAG])
            .map_err(|e| format!("cannot encode as postcard: {e}"))
    }
}

impl Codec for JsonOrPostcard {
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        match bytes.split_first() {
            Some((&Self::BINARY_TAG, body)) => match postcard::take_from_bytes(body) {
                Ok((value, [])) => Ok(value),
                Ok((_, rest)) => Err(format!(
                    "invalid postcard: {} bytes after the message",
                    rest.len()
                )),
                Err(e) => Err(format!("invalid postcard: {e}")),
            },
            _ => Json::decode(bytes),
        }
    }
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        Json::encode(value)
    }
    fn encode_reply<T: Serialize>(value: &T, request: &[u8]) -> Result<Vec<u8>, String> {
        match request.first() {
            Some(&Self::BINARY_TAG) => Self::encode_binary(value),
            _ => Json::encode(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    /// Internally tagged for JSON, externally tagged (by variant index) in the binary form.
    #[derive(Debug, PartialEq)]
    enum Op {
        Set { key: String, n: u32 },
        Clear,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    enum OpJson {
        Set { key: String, n: u32 },
        Clear,
    }

    #[derive(Serialize, Deserialize)]
    enum OpBinary {
        Set { key: String, n: u32 },
        Clear,
    }

    impl<'de> Deserialize<'de> for Op {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Op, D::Error> {
            Ok(if d.is_human_readable() {
                match OpJson::deserialize(d)? {
                    OpJson::Set { key, n } => Op::Set { key, n },
                    OpJson::Clear => Op::Clear,
                }
            } else {
                match OpBinary::deserialize(d)? {
                    OpBinary::Set { key, n } => Op::Set { key, n },
                    OpBinary::Clear => Op::Clear,
                }
            })
        }
    }

    #[test]
    fn json_or_postcard_reads_both_forms_and_answers_in_the_form_asked() {
        let json = br#"{"op":"set","key":"a","n":7}"#;
        let binary = JsonOrPostcard::encode_binary(&OpBinary::Set {
            key: "a".into(),
            n: 7,
        })
        .unwrap();
        assert_eq!(binary, [0, 0, 1, b'a', 7]);
        let want = Op::Set {
            key: "a".into(),
            n: 7,
        };
        assert_eq!(JsonOrPostcard::decode::<Op>(json).unwrap(), want);
        assert_eq!(JsonOrPostcard::decode::<Op>(&binary).unwrap(), want);
        assert_eq!(JsonOrPostcard::decode::<Op>(&[0, 1]).unwrap(), Op::Clear);
        // JSON may start with whitespace; only a leading 0 byte means postcard.
        assert_eq!(
            JsonOrPostcard::decode::<Op>(b" {\"op\":\"clear\"}").unwrap(),
            Op::Clear
        );

        let out = Some(3u32);
        assert_eq!(JsonOrPostcard::encode_reply(&out, json).unwrap(), b"3");
        assert_eq!(
            JsonOrPostcard::encode_reply(&out, &binary).unwrap(),
            [0, 1, 3]
        );
        assert_eq!(JsonOrPostcard::encode(&out).unwrap(), b"3");
    }

    #[test]
    fn json_or_postcard_refuses_malformed_and_trailing_bytes() {
        let mut binary = JsonOrPostcard::encode_binary(&OpBinary::Clear).unwrap();
        binary.push(9);
        let e = JsonOrPostcard::decode::<Op>(&binary).unwrap_err();
        assert!(e.contains("1 bytes after the message"), "{e}");
        assert!(JsonOrPostcard::decode::<Op>(&[0]).is_err());
        assert!(JsonOrPostcard::decode::<Op>(&[0, 7]).is_err());
        assert!(JsonOrPostcard::decode::<Op>(b"").is_err());
        assert!(JsonOrPostcard::decode::<Op>(b"{\"op\":\"set\"}").is_err());
    }
}
