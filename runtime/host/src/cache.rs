//! The compile cache: one file per (component, engine), `<sha256>-<engine hash>.cwasm`, holding
//! wasmtime's serialized code followed by a trailer that proves the file is whole.
//!
//! ```text
//! +---------------------------+------------------------+------------------+
//! | Component::serialize()    | BLAKE3 of the body     | magic "WRFTCWM1" |
//! | (any length)              | 32 bytes               | 8 bytes          |
//! +---------------------------+------------------------+------------------+
//! ```
//!
//! The checksum is what makes deserializing safe (see [`read`]): a torn or corrupted file is
//! refused and the module is compiled again. A file is written under a temporary name, synced,
//! then renamed into place, so readers never see half of one.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;
use wraft_proto::digest::hex;

use crate::error::LoadError;

const CACHE_MAGIC: &[u8; 8] = b"WRFTCWM1";
const CACHE_TRAILER_BYTES: usize = 32 + 8;

/// Where the compiled code of the component with SHA-256 `sha256` lives in `dir`, for an engine
/// whose compatibility hash is `compat_hash`.
pub(crate) fn entry_path(dir: &Path, sha256: &[u8; 32], compat_hash: &str) -> PathBuf {
    dir.join(format!("{}-{}.cwasm", hex(sha256), compat_hash))
}

/// The cached component at `path`, or `None` if there is none, its trailer does not match, or
/// wasmtime refuses it (each logged but a miss): the caller compiles instead.
pub(crate) fn read(engine: &Engine, path: &Path) -> Option<Component> {
    let bytes = std::fs::read(path).ok()?;
    let body_len = bytes.len().checked_sub(CACHE_TRAILER_BYTES)?;
    let (body, trailer) = bytes.split_at(body_len);
    let ok = trailer[32..] == *CACHE_MAGIC && trailer[..32] == *blake3::hash(body).as_bytes();
    if !ok {
        tracing::warn!(path = %path.display(), "compile cache entry is corrupt; recompiling");
        return None;
    }
    // SAFETY: `deserialize` trusts the bytes to be wasmtime's own output. They are: this
    // node's cache directory is written only by `write`, and the BLAKE3 trailer
    // guarantees the file is exactly what it wrote. wasmtime checks version and engine
    // settings itself.
    match unsafe { Component::deserialize(engine, body) } {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "compile cache entry unusable; recompiling");
            None
        }
    }
}

/// Write `component`'s compiled code to `path` atomically (temporary file, sync, rename).
pub(crate) fn write(path: &Path, component: &Component) -> Result<(), LoadError> {
    let cache_err = |source| LoadError::Cache {
        path: path.to_owned(),
        source,
    };
    let mut body = component
        .serialize()
        .map_err(|e| cache_err(std::io::Error::other(format!("{e:#}"))))?;
    let sum = blake3::hash(&body);
    body.extend_from_slice(sum.as_bytes());
    body.extend_from_slice(CACHE_MAGIC);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    write_synced(&tmp, &body).map_err(cache_err)?;
    std::fs::rename(&tmp, path).map_err(cache_err)?;
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
