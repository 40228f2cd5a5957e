//! Many request/response exchanges on one client stream.
//!
//! A `wraft-client/1` request normally takes a QUIC stream of its own. Under load that costs
//! more than the request: each stream is opened, accepted, flow-controlled, finished and freed
//! on both sides, and carries its own STREAM frame. A client may instead open one long-lived
//! stream per connection and tag each request with an id:
//!
//! ```text
//! client                                   server
//!   KIND_MUX_OPEN   [MUX_VERSION]     →
//!                                     ←    KIND_MUX_OPENED [MUX_VERSION]
//!   KIND_MUX  [id u64 LE][kind][body] →    (any number, in any order)
//!                                     ←    KIND_MUX  [id u64 LE][kind][body]
//! ```
//!
//! Every message is one ordinary frame ([`crate::frame`]), so each keeps its checksum; the id
//! and the inner kind lead the payload. Responses come back in whatever order their requests
//! finish. A server that does not know the open frame ends the stream (as every wraft node
//! before this protocol did) or answers something else, and the client goes on with a stream
//! per request. Large requests (a module upload) keep a stream of their own either way, so
//! they never hold up the small ones.

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;

use crate::frame::{self, Decoded, FRAME_HEADER_BYTES, FrameError};

/// Client → server, the first frame of a multiplexed stream; payload `[MUX_VERSION]`.
pub const KIND_MUX_OPEN: u8 = 0x03;
/// Server → client, accepting a multiplexed stream; payload `[MUX_VERSION]`.
pub const KIND_MUX_OPENED: u8 = 0x04;
/// One tagged message on a multiplexed stream, either way.
pub const KIND_MUX: u8 = 0x05;
/// The only version of the multiplexed stream this build speaks.
pub const MUX_VERSION: u8 = 1;
/// Bytes of a tagged payload before the message: the id and the inner kind.
pub const TAG_BYTES: usize = 9;
/// Largest whole request frame a client sends on a multiplexed stream, bytes; a bigger
/// request takes a stream of its own. A server reads request frames up to this size on a
/// multiplexed stream, so what it refuses (a command over its limit) it refuses with an
/// answer, not by ending the stream.
pub const MUX_REQUEST_FRAME_BYTES_MAX: usize = 64 << 10;

/// Append one tagged frame carrying `msg` (postcard) as `kind` under `id` to `out`.
///
/// On an error `out` is left as it was.
pub fn encode_tagged_into<T: Serialize>(
    out: &mut Vec<u8>,
    id: u64,
    kind: u8,
    msg: &T,
    max_frame_bytes: u32,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(kind);
    let encoded = wraft_proto::encode::append(msg, out);
    let written = encoded
        .map_err(|source| FrameError::Encode {
            ty: std::any::type_name::<T>(),
            source,
        })
        .and_then(|()| {
            frame::encode_header(
                KIND_MUX,
                &out[start + FRAME_HEADER_BYTES..],
                max_frame_bytes,
            )
        });
    match written {
        Ok(header) => {
            out[start..start + FRAME_HEADER_BYTES].copy_from_slice(&header);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// One tagged frame carrying `msg` as `kind` under `id`, in a buffer of its own.
pub fn encode_tagged<T: Serialize>(
    id: u64,
    kind: u8,
    msg: &T,
    max_frame_bytes: u32,
) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + TAG_BYTES + frame::MSG_CAPACITY_DEFAULT);
    encode_tagged_into(&mut out, id, kind, msg, max_frame_bytes)?;
    Ok(out)
}

/// Split a tagged payload into its id, inner kind and body.
pub fn decode_tagged(payload: &[u8]) -> Result<(u64, u8, &[u8]), FrameError> {
    let Some((tag, body)) = payload.split_first_chunk::<TAG_BYTES>() else {
        return Err(FrameError::Truncated {
            needed: TAG_BYTES - payload.len(),
        });
    };
    let id = u64::from_le_bytes(tag[..8].try_into().expect("8 of 9 bytes"));
    Ok((id, tag[8], body))
}

/// Frames read off a stream in whatever pieces they arrive: the buffer a multiplexed stream's
/// reader keeps between reads, so that waiting for more bytes can be cancelled (in a
/// `select!`) without losing any.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: BytesMut,
}

impl FrameBuffer {
    /// An empty buffer.
    pub fn new() -> FrameBuffer {
        FrameBuffer::default()
    }

    /// Add bytes read off the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// True if any bytes are held: a frame not yet whole, or whole frames not yet taken.
    pub fn holds_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// True if a whole, well-formed frame is held, ready for [`FrameBuffer::next_frame`].
    pub fn holds_whole_frame(&self, max_frame_bytes: u32) -> bool {
        matches!(
            frame::decode_frame(&self.buf, max_frame_bytes),
            Ok(Decoded::Frame { .. })
        )
    }

    /// The next whole frame, as its kind and checked payload; `None` until one has arrived.
    /// A malformed frame (bad magic, version or checksum, longer than `max_frame_bytes`) is an
    /// error as soon as its bytes show it.
    pub fn next_frame(&mut self, max_frame_bytes: u32) -> Result<Option<(u8, Bytes)>, FrameError> {
        match frame::decode_frame(&self.buf, max_frame_bytes)? {
            Decoded::Incomplete { .. } => Ok(None),
            Decoded::Frame { kind, consumed, .. } => {
                let mut whole = self.buf.split_to(consumed);
                whole.advance(FRAME_HEADER_BYTES);
                Ok(Some((kind, whole.freeze())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tagged frames appended to one buffer come back one at a time, whole, whatever pieces
    /// their bytes arrive in, with their ids, kinds and bodies.
    #[test]
    fn tagged_frames_survive_any_split_of_their_bytes() {
        let msgs: Vec<(u64, u8, String)> = vec![
            (0, 0x20, String::new()),
            (1, 0x21, "x".repeat(300)),
            (u64::MAX, 0x7f, "last".into()),
        ];
        let mut wire = Vec::new();
        for (id, kind, body) in &msgs {
            encode_tagged_into(&mut wire, *id, *kind, body, 1 << 20).unwrap();
        }
        for piece in [1, 2, 7, 13, wire.len()] {
            let mut reader = FrameBuffer::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                reader.extend(chunk);
                while let Some((kind, payload)) = reader.next_frame(1 << 20).unwrap() {
                    assert_eq!(kind, KIND_MUX);
                    let (id, inner, body) = decode_tagged(&payload).unwrap();
                    let body: String = frame::decode_payload(body).unwrap();
                    got.push((id, inner, body));
                }
            }
            assert_eq!(got, msgs, "pieces of {piece} bytes");
            assert!(!reader.holds_partial());
        }
    }

    /// A message too big for the frame limit is refused and leaves the buffer as it was, so
    /// the frames already in it still go out intact.
    #[test]
    fn an_oversized_message_leaves_the_buffer_as_it_was() {
        let mut wire = Vec::new();
        encode_tagged_into(&mut wire, 1, 0x20, &"ok", 64).unwrap();
        let before = wire.clone();
        let err = encode_tagged_into(&mut wire, 2, 0x20, &"y".repeat(100), 64).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        assert_eq!(wire, before);
    }

    /// A flipped bit anywhere in a tagged frame (id and inner kind included) fails its
    /// checksum, and a payload too short to hold a tag is refused, not read past.
    #[test]
    fn a_corrupt_or_short_tagged_frame_is_refused() {
        let wire = encode_tagged(7, 0x20, &"hello", 1 << 20).unwrap();
        for i in FRAME_HEADER_BYTES..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x10;
            let mut reader = FrameBuffer::new();
            reader.extend(&bad);
            assert!(reader.next_frame(1 << 20).is_err(), "flip at byte {i}");
        }
        for short in 0..TAG_BYTES {
            assert!(decode_tagged(&vec![0u8; short]).is_err());
        }
    }
}
