//! Length-prefixed, versioned, checksummed frames.
//!
//! ```text
//! offset  size  field
//! 0       2     magic   b"WF"
//! 2       1     version FRAME_VERSION (1)
//! 3       1     kind    caller-defined (kinds below 0x10 are reserved by the transport)
//! 4       4     length  payload bytes, u32 little-endian, <= max_frame_bytes
//! 8       4     crc32c  of header bytes 2..8 (version, kind, length) then the payload, u32 LE
//! 12      len   payload (postcard, or raw bytes)
//! ```
//!
//! The header is validated (magic, version, `length <= max_frame_bytes`)
//! before any payload byte is buffered, so a hostile length can never make the
//! receiver allocate more than `max_frame_bytes`. [`decode_frame`] is a pure
//! function over `&[u8]`, suitable for fuzzing; [`read_frame`]/[`write_frame`]
//! are the async stream adapters.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First two bytes of every frame.
pub const FRAME_MAGIC: [u8; 2] = *b"WF";
/// The only frame version this build reads and writes.
pub const FRAME_VERSION: u8 = 1;
/// Size of the fixed frame header, in bytes.
pub const FRAME_HEADER_BYTES: usize = 12;
/// Default cap on a single frame's payload, in bytes (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;

/// Kinds `0x00..0x10` are reserved for the transport's own use on raft links.
pub const KIND_RESERVED_MAX: u8 = 0x0f;
/// Raft link: first frame of every raft stream, payload `Hello`.
pub(crate) const KIND_HELLO: u8 = 0x01;
/// Raft link: an opaque raft message payload.
pub(crate) const KIND_RAFT: u8 = 0x02;

/// Why a frame could not be encoded, decoded or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The first two bytes were not `b"WF"`: not a wraft frame (or a desynchronised stream).
    #[error("bad frame magic: expected {:02x?}, found {found:02x?}", FRAME_MAGIC)]
    BadMagic {
        /// The two bytes found.
        found: [u8; 2],
    },
    /// A version this build does not speak.
    #[error("unsupported frame version {found} (this build speaks version {FRAME_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// Payload longer than the configured limit.
    #[error("frame payload of {len} bytes exceeds max_frame_bytes = {max}")]
    TooLarge {
        /// Declared (or attempted) payload length, bytes.
        len: u64,
        /// The configured `max_frame_bytes`.
        max: u32,
    },
    /// The payload's CRC32C does not match the header.
    #[error(
        "frame checksum mismatch (kind {kind:#04x}, {len} bytes): header says {expected:#010x}, payload hashes to {found:#010x}"
    )]
    ChecksumMismatch {
        /// Frame kind.
        kind: u8,
        /// Payload length, bytes.
        len: u32,
        /// CRC from the header.
        expected: u32,
        /// CRC of the received payload.
        found: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended mid-frame: needed {needed} more bytes")]
    Truncated {
        /// Bytes still missing.
        needed: usize,
    },
    /// [`read_msg_within`] gave up: the sender stalled, or the frame took too long in all.
    #[error(
        "no whole frame after {after_ms} ms: {got} of {len} payload bytes arrived (a frame may \
         pause at most {idle_ms} ms and take at most {total_ms} ms in all)"
    )]
    TimedOut {
        /// How long the reader waited, ms.
        after_ms: u64,
        /// Payload bytes received (0 if the header had not arrived).
        got: u64,
        /// Payload length from the header (0 if the header had not arrived).
        len: u64,
        /// The longest pause allowed, ms.
        idle_ms: u64,
        /// The longest the whole frame may take, ms.
        total_ms: u64,
    },
    /// A frame of a kind the reader did not expect at this point.
    #[error("unexpected frame kind {found:#04x} (expected {expected})")]
    UnexpectedKind {
        /// What the reader wanted.
        expected: &'static str,
        /// What it got.
        found: u8,
    },
    /// The payload is not a valid postcard encoding of the expected type.
    #[error("frame payload does not decode as {ty}: {source}")]
    Decode {
        /// The Rust type expected.
        ty: &'static str,
        /// postcard's error.
        source: postcard::Error,
    },
    /// The value could not be encoded.
    #[error("cannot encode {ty}: {source}")]
    Encode {
        /// The Rust type being encoded.
        ty: &'static str,
        /// postcard's error.
        source: postcard::Error,
    },
    /// The underlying stream failed (reset, connection lost, ...).
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Caller-defined frame kind.
    pub kind: u8,
    /// Payload length, bytes (already checked against `max_frame_bytes`).
    pub len: u32,
    /// CRC32C over version, kind, length and payload.
    pub crc: u32,
}

/// Result of [`decode_frame`] on a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// One complete, verified frame at the start of the buffer.
    Frame {
        /// Frame kind.
        kind: u8,
        /// Verified payload.
        payload: &'a [u8],
        /// Bytes of the buffer this frame occupied (header + payload).
        consumed: usize,
    },
    /// The buffer holds a valid prefix; at least `needed` more bytes are required.
    Incomplete {
        /// Minimum number of additional bytes before retrying.
        needed: usize,
    },
}

/// Validate a 12-byte header. Pure; O(1).
pub fn decode_header(
    header: &[u8; FRAME_HEADER_BYTES],
    max_frame_bytes: u32,
) -> Result<FrameHeader, FrameError> {
    let magic = [header[0], header[1]];
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if header[2] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion { found: header[2] });
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: max_frame_bytes,
        });
    }
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    Ok(FrameHeader {
        kind: header[3],
        len,
        crc,
    })
}

/// CRC32C over version, kind and length, then the payload: a flipped kind or
/// length bit is caught as surely as a flipped payload bit.
fn frame_crc(kind: u8, len: u32, payload: &[u8]) -> u32 {
    let mut covered = [0u8; 6];
    covered[0] = FRAME_VERSION;
    covered[1] = kind;
    covered[2..6].copy_from_slice(&len.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&covered), payload)
}

fn check_payload(header: FrameHeader, payload: &[u8]) -> Result<(), FrameError> {
    let found = frame_crc(header.kind, header.len, payload);
    if found != header.crc {
        return Err(FrameError::ChecksumMismatch {
            kind: header.kind,
            len: header.len,
            expected: header.crc,
            found,
        });
    }
    Ok(())
}

/// Decode one frame from the front of `buf`. Pure, allocation-free, never
/// panics on any input: the function to fuzz. Errors are detected as early as
/// the bytes allow (a bad magic is reported after 2 bytes, an oversized length
/// as soon as the header is complete).
pub fn decode_frame(buf: &[u8], max_frame_bytes: u32) -> Result<Decoded<'_>, FrameError> {
    if let Some(magic) = buf.get(..2)
        && magic != FRAME_MAGIC
    {
        return Err(FrameError::BadMagic {
            found: [magic[0], magic[1]],
        });
    }
    let Some(header_bytes) = buf.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Ok(Decoded::Incomplete {
            needed: FRAME_HEADER_BYTES - buf.len(),
        });
    };
    let header = decode_header(header_bytes, max_frame_bytes)?;
    let total = FRAME_HEADER_BYTES + header.len as usize;
    let Some(payload) = buf.get(FRAME_HEADER_BYTES..total) else {
        return Ok(Decoded::Incomplete {
            needed: total - buf.len(),
        });
    };
    check_payload(header, payload)?;
    Ok(Decoded::Frame {
        kind: header.kind,
        payload,
        consumed: total,
    })
}

/// Build the 12-byte header for `payload`. Fails if it exceeds `max_frame_bytes`.
pub fn encode_header(
    kind: u8,
    payload: &[u8],
    max_frame_bytes: u32,
) -> Result<[u8; FRAME_HEADER_BYTES], FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= max_frame_bytes)
        .ok_or(FrameError::TooLarge {
            len: payload.len() as u64,
            max: max_frame_bytes,
        })?;
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h[..2].copy_from_slice(&FRAME_MAGIC);
    h[2] = FRAME_VERSION;
    h[3] = kind;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&frame_crc(kind, len, payload).to_le_bytes());
    Ok(h)
}

/// Append one frame (header + payload) to `out`. Cost: one CRC32C pass and a copy.
pub fn encode_frame_into(
    out: &mut Vec<u8>,
    kind: u8,
    payload: &[u8],
    max_frame_bytes: u32,
) -> Result<(), FrameError> {
    let header = encode_header(kind, payload, max_frame_bytes)?;
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

/// One frame as a fresh buffer.
pub fn encode_frame(kind: u8, payload: &[u8], max_frame_bytes: u32) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame_into(&mut out, kind, payload, max_frame_bytes)?;
    Ok(out)
}

/// postcard-encode `msg` (the frame payload only, no header).
pub fn encode_payload<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    wraft_proto::encode::to_vec(msg, 0).map_err(|source| FrameError::Encode {
        ty: std::any::type_name::<T>(),
        source,
    })
}

/// Room a message buffer starts with when its caller gives no better guess: a client's put and
/// most answers fit, so encoding them costs one allocation instead of a chain of regrowths.
pub const MSG_CAPACITY_DEFAULT: usize = 512;

/// postcard-encode `msg` into a buffer that starts with room for `capacity` bytes (a guess: the
/// buffer grows past it if needed). Costs one allocation when the guess holds.
pub fn encode_payload_sized<T: Serialize>(msg: &T, capacity: usize) -> Result<Vec<u8>, FrameError> {
    wraft_proto::encode::to_vec(msg, capacity).map_err(|source| FrameError::Encode {
        ty: std::any::type_name::<T>(),
        source,
    })
}

/// postcard-encode `msg` as one whole frame, header and payload in one buffer (the header is
/// written in place once the payload is encoded). `capacity` is a guess of the payload's size,
/// as for [`encode_payload_sized`]. The same bytes as [`encode_frame`] of [`encode_payload`].
pub fn encode_msg_frame<T: Serialize>(
    kind: u8,
    msg: &T,
    max_frame_bytes: u32,
    capacity: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(FRAME_HEADER_BYTES + capacity);
    buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    wraft_proto::encode::append(msg, &mut buf).map_err(|source| FrameError::Encode {
        ty: std::any::type_name::<T>(),
        source,
    })?;
    let header = encode_header(kind, &buf[FRAME_HEADER_BYTES..], max_frame_bytes)?;
    buf[..FRAME_HEADER_BYTES].copy_from_slice(&header);
    Ok(buf)
}

/// postcard-decode a frame payload as `T`.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(payload).map_err(|source| FrameError::Decode {
        ty: std::any::type_name::<T>(),
        source,
    })
}

/// A frame read from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Frame kind.
    pub kind: u8,
    /// Verified payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Decode the payload as `T` (postcard).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        decode_payload(&self.payload)
    }
}

/// Read one frame. `Ok(None)` at a clean end of stream (EOF exactly between
/// frames); `Truncated` if the stream ends inside one. Allocates at most
/// `max_frame_bytes` for the payload, and only after the header validated.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: u32,
) -> Result<Option<Frame>, FrameError> {
    let Some(h) = read_header(r, max_frame_bytes).await? else {
        return Ok(None);
    };
    let mut payload = vec![0u8; h.len as usize];
    let mut got = 0;
    while got < payload.len() {
        let n = r.read(&mut payload[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                needed: payload.len() - got,
            });
        }
        got += n;
    }
    check_payload(h, &payload)?;
    Ok(Some(Frame {
        kind: h.kind,
        payload,
    }))
}

/// Read and check a frame header; `None` at a clean end of stream.
async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: u32,
) -> Result<Option<FrameHeader>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    while got < FRAME_HEADER_BYTES {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                needed: FRAME_HEADER_BYTES - got,
            });
        }
        got += n;
        // Reject a bad magic before waiting for the rest of the header.
        if got >= 2 && header[..2] != FRAME_MAGIC {
            return Err(FrameError::BadMagic {
                found: [header[0], header[1]],
            });
        }
    }
    decode_header(&header, max_frame_bytes).map(Some)
}

/// Read one frame and decode it as `T`; `Ok(None)` at a clean end of stream.
pub async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max_frame_bytes: u32,
) -> Result<Option<(u8, T)>, FrameError> {
    match read_frame(r, max_frame_bytes).await? {
        None => Ok(None),
        Some(f) => Ok(Some((f.kind, f.decode()?))),
    }
}

/// [`read_msg`] for a server that must not wait forever, nor cut a big request on a slow link:
/// every read must make progress within `idle` (the header within `idle` of the start), and the
/// whole frame must arrive within `total(payload length)` of the start (at least `idle`). So a
/// server can give a 12 MB module sent over a slow uplink minutes, a small request seconds, and
/// drop a sender that stalls after `idle`. Past either: [`FrameError::TimedOut`], saying how far
/// the frame got.
pub async fn read_msg_within<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max_frame_bytes: u32,
    idle: std::time::Duration,
    total: impl Fn(u64) -> std::time::Duration,
) -> Result<Option<(u8, T)>, FrameError> {
    match read_frame_within(r, max_frame_bytes, idle, total).await? {
        None => Ok(None),
        Some(f) => Ok(Some((f.kind, f.decode()?))),
    }
}

/// [`read_frame`] within the deadlines of [`read_msg_within`]: the frame's payload is left for
/// the caller to decode as its kind says.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: u32,
    idle: std::time::Duration,
    total: impl Fn(u64) -> std::time::Duration,
) -> Result<Option<Frame>, FrameError> {
    let started = tokio::time::Instant::now();
    let timed_out = |got: u64, len: u64, total: std::time::Duration| FrameError::TimedOut {
        after_ms: started.elapsed().as_millis() as u64,
        got,
        len,
        idle_ms: idle.as_millis() as u64,
        total_ms: total.as_millis() as u64,
    };
    let header = match tokio::time::timeout(idle, read_header(r, max_frame_bytes)).await {
        Ok(h) => h?,
        Err(_) => return Err(timed_out(0, 0, idle)),
    };
    let Some(h) = header else { return Ok(None) };
    let len = u64::from(h.len);
    let total = total(len).max(idle);
    let end = started + total;
    let next = || (tokio::time::Instant::now() + idle).min(end);
    let mut payload = vec![0u8; h.len as usize];
    let mut got = 0usize;
    while got < payload.len() {
        let n = match tokio::time::timeout_at(next(), r.read(&mut payload[got..])).await {
            Ok(n) => n?,
            Err(_) => return Err(timed_out(got as u64, len, total)),
        };
        if n == 0 {
            return Err(FrameError::Truncated {
                needed: payload.len() - got,
            });
        }
        got += n;
    }
    check_payload(h, &payload)?;
    Ok(Some(Frame {
        kind: h.kind,
        payload,
    }))
}

/// Write one frame (header, then payload). Waits for stream flow control.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
    max_frame_bytes: u32,
) -> Result<(), FrameError> {
    let header = encode_header(kind, payload, max_frame_bytes)?;
    w.write_all(&header).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// postcard-encode `msg` and write it as one frame.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    kind: u8,
    msg: &T,
    max_frame_bytes: u32,
) -> Result<(), FrameError> {
    let frame = encode_msg_frame(kind, msg, max_frame_bytes, MSG_CAPACITY_DEFAULT)?;
    w.write_all(&frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One buffer, header written in place, gives the same bytes as the payload framed
    /// afterwards, whether the capacity guess is short, exact or generous; and an oversized
    /// payload is refused the same way.
    #[test]
    fn a_message_framed_in_one_buffer_is_the_same_frame() {
        let msgs: Vec<(u32, Vec<u8>, String)> = vec![
            (0, vec![], String::new()),
            (7, vec![1, 2, 3], "x".repeat(40)),
            (u32::MAX, vec![9; 5000], "é".repeat(300)),
        ];
        for msg in &msgs {
            let payload = encode_payload(msg).unwrap();
            let expected = encode_frame(5, &payload, u32::MAX).unwrap();
            for capacity in [0, 1, payload.len(), payload.len() + 1000] {
                assert_eq!(
                    encode_msg_frame(5, msg, u32::MAX, capacity).unwrap(),
                    expected
                );
                assert_eq!(encode_payload_sized(msg, capacity).unwrap(), payload);
            }
            let small = (payload.len() as u32).saturating_sub(1);
            if !payload.is_empty() {
                assert!(matches!(
                    encode_msg_frame(5, msg, small, 0),
                    Err(FrameError::TooLarge { .. })
                ));
            }
        }
    }

    /// Writes `frame` into `w` `step` bytes at a time, one step per `every` of (paused) time,
    /// stopping after `stop_after` bytes.
    async fn trickle(
        mut w: tokio::io::DuplexStream,
        frame: Vec<u8>,
        step: usize,
        every: std::time::Duration,
        stop_after: usize,
    ) {
        use tokio::io::AsyncWriteExt;
        let mut at = 0;
        while at < frame.len().min(stop_after) {
            let end = (at + step).min(frame.len()).min(stop_after);
            w.write_all(&frame[at..end]).await.unwrap();
            at = end;
            tokio::time::sleep(every).await;
        }
        // Hold the stream open: a stalled sender, not a closed one.
        std::future::pending::<()>().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_big_frame_on_a_slow_link_is_read_whole_and_a_stalled_one_times_out() {
        use std::time::Duration;
        let (idle, total) = (Duration::from_secs(1), Duration::from_secs(30));
        // 200 KB at 20 KB/s takes 10 s: ten times `idle`, but never a second without progress.
        let msg = vec![7u8; 200_000];
        let frame = encode_frame(0x42, &encode_payload(&msg).unwrap(), 1 << 20).unwrap();
        let step = Duration::from_millis(500);
        let (w, mut r) = tokio::io::duplex(1 << 20);
        let started = tokio::time::Instant::now();
        tokio::spawn(trickle(w, frame.clone(), 10_000, step, usize::MAX));
        let (kind, got): (u8, Vec<u8>) = read_msg_within(&mut r, 1 << 20, idle, |_| total)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((kind, got), (0x42, msg.clone()));
        assert!(started.elapsed() >= Duration::from_secs(9));

        // The same sender, stalled after half: cut one `idle` after its last bytes.
        let (w, mut r) = tokio::io::duplex(1 << 20);
        let started = tokio::time::Instant::now();
        tokio::spawn(trickle(w, frame.clone(), 10_000, step, 100_000));
        let e = read_msg_within::<_, Vec<u8>>(&mut r, 1 << 20, idle, |_| total)
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(waited, step * 9 + idle, "{e}");
        match e {
            FrameError::TimedOut { got, len, .. } => {
                assert_eq!(got, 100_000 - FRAME_HEADER_BYTES as u64);
                assert_eq!(len as usize, frame.len() - FRAME_HEADER_BYTES);
            }
            other => panic!("{other}"),
        }

        // A sender that never pauses long but never finishes: cut at `total`.
        let (w, mut r) = tokio::io::duplex(1 << 20);
        let started = tokio::time::Instant::now();
        tokio::spawn(trickle(w, frame.clone(), 1_000, step, usize::MAX));
        let e = read_msg_within::<_, Vec<u8>>(&mut r, 1 << 20, idle, |_| total)
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), total, "{e}");
        assert!(e.to_string().contains("at most 30000 ms in all"), "{e}");

        // The total may depend on the declared length: a small frame gets less time.
        let small =
            encode_frame(0x42, &encode_payload(&vec![1u8; 20_000]).unwrap(), 1 << 20).unwrap();
        let (w, mut r) = tokio::io::duplex(1 << 20);
        let started = tokio::time::Instant::now();
        tokio::spawn(trickle(w, small, 1_000, step, usize::MAX));
        let by_len = |len: u64| {
            if len > 100_000 {
                total
            } else {
                Duration::from_secs(2)
            }
        };
        let e = read_msg_within::<_, Vec<u8>>(&mut r, 1 << 20, idle, by_len)
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(2), "{e}");

        // No header at all: cut at `idle`.
        let (_w, mut r) = tokio::io::duplex(1 << 20);
        let started = tokio::time::Instant::now();
        let e = read_msg_within::<_, Vec<u8>>(&mut r, 1 << 20, idle, |_| total)
            .await
            .unwrap_err();
        assert!(
            matches!(e, FrameError::TimedOut { got: 0, len: 0, .. }),
            "{e}"
        );
        assert_eq!(started.elapsed(), idle);
    }

    const MAX: u32 = 1024;

    #[test]
    fn encoded_frame_decodes_to_same_kind_and_payload() {
        let buf = encode_frame(0x42, b"hello", MAX).unwrap();
        assert_eq!(buf.len(), FRAME_HEADER_BYTES + 5);
        assert_eq!(
            decode_frame(&buf, MAX).unwrap(),
            Decoded::Frame {
                kind: 0x42,
                payload: b"hello",
                consumed: buf.len()
            }
        );
    }

    #[test]
    fn every_strict_prefix_is_incomplete_never_an_error() {
        let buf = encode_frame(7, &[9u8; 100], MAX).unwrap();
        for cut in 0..buf.len() {
            match decode_frame(&buf[..cut], MAX).unwrap() {
                Decoded::Incomplete { needed } => assert!(needed > 0 && cut + needed <= buf.len()),
                other => panic!("prefix {cut} decoded as {other:?}"),
            }
        }
    }

    #[test]
    fn any_single_bit_flip_is_detected() {
        let buf = encode_frame(3, b"raft message payload", MAX).unwrap();
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode_frame(&bad, MAX), Ok(Decoded::Frame { .. })),
                    "flip of byte {byte} bit {bit} went undetected"
                );
            }
        }
    }

    #[test]
    fn oversized_unknown_version_and_bad_magic_are_typed_errors() {
        let big = encode_frame(1, &[0u8; 2000], 4096).unwrap();
        assert!(matches!(
            decode_frame(&big, MAX),
            Err(FrameError::TooLarge {
                len: 2000,
                max: MAX
            })
        ));
        assert!(matches!(
            encode_frame(1, &[0u8; 2000], MAX),
            Err(FrameError::TooLarge { .. })
        ));
        let mut v2 = encode_frame(1, b"x", MAX).unwrap();
        v2[2] = 2;
        assert!(matches!(
            decode_frame(&v2, MAX),
            Err(FrameError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(
            decode_frame(b"GET / HTTP/1.1", MAX),
            Err(FrameError::BadMagic { .. })
        ));
        let mut crc = encode_frame(1, b"abc", MAX).unwrap();
        let last = crc.len() - 1;
        crc[last] ^= 0xff;
        assert!(matches!(
            decode_frame(&crc, MAX),
            Err(FrameError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn decode_never_panics_on_pseudo_random_input() {
        // Seeded so a failure replays exactly; a stand-in for a cargo-fuzz target.
        let seed = 0x5eed_u64;
        let mut rng = fastrand::Rng::with_seed(seed);
        let valid = encode_frame(2, &[1, 2, 3, 4], MAX).unwrap();
        for _ in 0..20_000 {
            let mut buf: Vec<u8> = if rng.bool() {
                valid.clone()
            } else {
                (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect()
            };
            for _ in 0..rng.usize(0..4) {
                if !buf.is_empty() {
                    let i = rng.usize(..buf.len());
                    buf[i] = rng.u8(..);
                }
            }
            let _ = decode_frame(&buf, MAX);
        }
    }

    #[tokio::test]
    async fn stream_reader_round_trips_messages_and_reports_truncation() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_msg(&mut a, 0x20, &("k".to_string(), 7u64), MAX)
            .await
            .unwrap();
        write_frame(&mut a, 0x21, b"partial", MAX).await.unwrap();
        a.write_all(&encode_frame(0x22, b"cut", MAX).unwrap()[..13])
            .await
            .unwrap();
        drop(a);
        let (kind, msg): (u8, (String, u64)) = read_msg(&mut b, MAX).await.unwrap().unwrap();
        assert_eq!((kind, msg), (0x20, ("k".to_string(), 7)));
        assert_eq!(
            read_frame(&mut b, MAX).await.unwrap().unwrap().payload,
            b"partial"
        );
        assert!(matches!(
            read_frame(&mut b, MAX).await,
            Err(FrameError::Truncated { needed: 2 })
        ));
    }
}
