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
