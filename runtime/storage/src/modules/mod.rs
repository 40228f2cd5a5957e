//! The module store: WebAssembly component bytes ("modules") kept under their SHA-256.
//!
//! A deploy log entry carries only a module's hash; every node fetches the bytes by hash and keeps
//! them here, one file per module, published by rename:
//!
//! ```text
//! DIR/<sha256 as 64 lowercase hex>.wasm:
//!   0  magic "WMOD"
//!   4  version u16 (= 1)
//!   6  sha256 [32]        SHA-256 of the body; equal to the file name
//!  38  body_len u64       length of the body
//!  46  body               the module's bytes
//! ```
//!
//! All integers are little endian. The body's SHA-256 is the checksum, and [`ModuleStore::get`]
//! checks every byte of the file: magic and version exactly, the hash field against the file name,
//! the length against the file's size (before anything is allocated), and the body against the
//! hash. So the header needs no checksum of its own: damage to any of its fields fails one of
//! those checks.
//!
//! Other files in `DIR`: `<hex>.wasm.<n>.tmp`, a put in progress (`n` from a process-wide counter,
//! so concurrent puts of one module never share a temp file); [`ModuleStore::open`] deletes them.
//!
//! # Crash safety
//!
//! [`ModuleStore::put`] writes the temp file, `fdatasync`s it, renames it to its final name and
//! `fsync`s the directory before returning. A crash at any byte or call leaves either no module
//! file or a complete one (plus perhaps a temp file, deleted on the next open): a file has its
//! final name only once its contents are durable. Damage that happens later (bit rot, a file
//! truncated by hand) is caught by `get`, which removes the file and reports the module absent so
//! the caller fetches it again: a module can always be fetched from another node, so a bad copy is
//! worth nothing and never worth stopping the node for.
//!
//! # Size
//!
//! The store has no bound of its own: the node checks `guest.module_bytes_max` before a module
//! reaches [`ModuleStore::put`]. [`ModuleStore::get`] allocates at most the file's size, and only
//! after checking that the header's length agrees with it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::error::{Result, StorageError, io_err};
use crate::record::u64_at;
use crate::vfs::{OpenMode, Vfs, VfsFile, read_exact_at};

const MODULE_MAGIC: &[u8; 4] = b"WMOD";
const MODULE_VERSION: u16 = 1;
/// Bytes before a module file's body.
pub const MODULE_HEADER_BYTES: u64 = 46;
const MODULE_SUFFIX: &str = ".wasm";
const TEMP_SUFFIX: &str = ".tmp";
/// Temp names tried by one put before giving up (a name is taken only by a leftover file).
const TEMP_NAME_ATTEMPTS_MAX: usize = 16;

/// Numbers temp files, process-wide: two stores on one directory in one process still never
/// share a temp file. Another process cannot use the directory (the data directory's lock).
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A directory of WebAssembly modules named by their SHA-256, so that a deploy log entry can carry
/// only the hash.
///
/// One file per module, `DIR/<sha256 as 64 lowercase hex>.wasm`: a 46-byte header (magic `"WMOD"`,
/// version u16 = 1, the SHA-256, the body length u64; little endian) then the body. The body's
/// SHA-256 is the checksum; [`ModuleStore::get`] checks every byte. A put is written to a temp
/// file, synced, renamed into place and the directory synced, so a crash leaves no module or the
/// whole one; damage found later makes `get` remove the file and report the module absent, to be
/// fetched again. See `runtime/storage/NOTES.md` for the crash guarantees.
///
/// `Send + Sync`; share one store between threads through an `Arc`. Every call does its own I/O
/// and holds no lock across it except the short rename/remove section described on
/// [`ModuleStore::get`].
#[derive(Debug)]
pub struct ModuleStore {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    /// Held while a name is published (put's rename and directory fsync) or removed (a damaged
    /// file in `get`, `retain`), so that a `get` that found a damaged file never removes a good
    /// one that a concurrent `put` has just renamed over it.
    names: Mutex<()>,
}

/// A module present in the store, as [`ModuleStore::list`] and [`ModuleStore::retain`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoredModule {
    /// The module's SHA-256 (its name).
    pub sha256: [u8; 32],
    /// Length of the module's bytes, as its file's header records it.
    pub bytes: u64,
}

/// What one look at a module file found.
enum Checked {
    Valid(Vec<u8>),
    Absent,
    Invalid(StorageError),
}

impl ModuleStore {
    /// Open (or create) the store in `dir` and delete the temp files of puts a crash interrupted.
    ///
    /// Module files are not read: a damaged one is found, removed and reported absent by
    /// [`ModuleStore::get`], so opening never fails because of one. Unexpected files are left
    /// alone with a warning. Cost: one directory listing (plus one directory fsync if temp files
    /// were deleted).
    pub fn open(vfs: Arc<dyn Vfs>, dir: &Path) -> Result<ModuleStore> {
        vfs.create_dir_all(dir)
            .map_err(io_err("create module directory", dir))?;
        let store = ModuleStore {
            vfs,
            dir: dir.to_path_buf(),
            names: Mutex::new(()),
        };
        let mut removed = 0usize;
        for name in store
            .vfs
            .list(dir)
            .map_err(io_err("list module directory", dir))?
        {
            let path = dir.join(&name);
            if is_temp_name(&name) {
                tracing::info!(file = %path.display(), "removing the temp file of an interrupted module put");
                store
                    .vfs
                    .remove_file(&path)
                    .map_err(io_err("remove unfinished module", &path))?;
                removed += 1;
            } else if parse_module_name(&name).is_none() {
                tracing::warn!(file = %path.display(), "ignoring unexpected file in the module directory");
            }
        }
        if removed > 0 {
            store.sync_dir()?;
        }
        Ok(store)
    }

    /// Store `bytes` under `sha256`, durably: when this returns `Ok`, the file's contents and its
    /// name have both been synced.
    ///
    /// Returns `Ok(true)` if the module was newly stored, `Ok(false)` if a valid file for it was
    /// already there (it is not rewritten; the directory is fsynced, so that a concurrent put's
    /// name is durable too). A damaged file already there is replaced. Safe to call from several
    /// threads at once, for the same or different modules.
    ///
    /// Cost: hashing `bytes`, one full read and hash of the existing file if any, then one temp
    /// file written, one `fdatasync`, one rename and one directory fsync.
    ///
    /// # Errors
    /// [`StorageError::ModuleHashMismatch`] if SHA-256(`bytes`) is not `sha256`; nothing is
    /// written. [`StorageError::Io`] if a file system call fails; the temp file is removed
    /// (best effort; otherwise by the next open) and the module may or may not be stored.
    pub fn put(&self, sha256: &[u8; 32], bytes: &[u8]) -> Result<bool> {
        let found: [u8; 32] = Sha256::digest(bytes).into();
        if &found != sha256 {
            return Err(StorageError::ModuleHashMismatch {
                expected: hex(sha256),
                found: hex(&found),
                len: bytes.len() as u64,
            });
        }
        let path = self.path(sha256);
        match self.check(sha256, &path)? {
            Checked::Valid(_) => {
                self.sync_dir()?;
                return Ok(false);
            }
            Checked::Absent => {}
            Checked::Invalid(e) => {
                tracing::warn!(file = %path.display(), error = %e, "replacing a damaged module file");
            }
        }
        let (tmp, file) = self.create_temp(sha256)?;
        let result = self.write_and_publish(file.as_ref(), &tmp, &path, sha256, bytes);
        if result.is_err() {
            // After a successful rename the temp name is gone and this fails harmlessly.
            let _ = self.vfs.remove_file(&tmp);
        }
        result.map(|()| true)
    }

    /// The module's bytes, verified against `sha256`; `Ok(None)` if it is absent.
    ///
    /// A file that fails any check (magic, version, hash field, length, body SHA-256) is logged
    /// with a warning naming it and what failed, removed, and reported as `Ok(None)`, so the
    /// caller fetches the module again. (That removal is not fsynced: a crash may bring the file
    /// back, and the next `get` removes it again.) Before removing, the file is checked once more
    /// while holding the store's name lock, in case a concurrent [`ModuleStore::put`] has just
    /// replaced it with a good one.
    ///
    /// Cost: one allocation and one read of the file's length, and hashing it.
    ///
    /// # Errors
    /// [`StorageError::Io`] if a file system call fails (other than the file being absent or
    /// shorter than its header says, which are reported as above).
    pub fn get(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let path = self.path(sha256);
        match self.check(sha256, &path)? {
            Checked::Valid(bytes) => return Ok(Some(bytes)),
            Checked::Absent => return Ok(None),
            Checked::Invalid(_) => {}
        }
        let _names = self.lock_names();
        match self.check(sha256, &path)? {
            Checked::Valid(bytes) => Ok(Some(bytes)),
            Checked::Absent => Ok(None),
            Checked::Invalid(e) => {
                tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "module file failed verification; removing it so that the module is fetched again"
                );
                self.remove(&path, "remove damaged module file")?;
                Ok(None)
            }
        }
    }

    /// Whether a file for the module exists. Cheap (one `open`); does not verify it, so a later
    /// [`ModuleStore::get`] can still report a damaged file absent.
    pub fn contains(&self, sha256: &[u8; 32]) -> bool {
        self.vfs.open(&self.path(sha256), OpenMode::Read).is_ok()
    }

    /// Every stored module, ordered by hash, with the length its header records.
    ///
    /// Does not read bodies: a file whose header fails its checks (magic, version, hash field,
    /// length against the file size) is left out with a warning, and removed by the next
    /// [`ModuleStore::get`] of it. Temp files and unexpected files are skipped.
    /// Cost: one directory listing, and one open and 46-byte read per module.
    pub fn list(&self) -> Result<Vec<StoredModule>> {
        let mut out = Vec::new();
        for (sha256, path) in self.module_files()? {
            match self.header_body_len(&sha256, &path) {
                Ok(Some(bytes)) => out.push(StoredModule { sha256, bytes }),
                Ok(None) => {} // removed since the listing
                Err(e @ StorageError::ModuleInvalid { .. }) => {
                    tracing::warn!(file = %path.display(), error = %e, "module file has a damaged header; leaving it out");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Remove every module for which `keep` returns false, durably (the directory is fsynced
    /// before returning), and return them ordered by hash. `bytes` is the length the file's
    /// header records, or 0 for a file whose header is damaged.
    ///
    /// `keep` is called once per module file, without any store lock held.
    /// Cost: one directory listing, and per removed module one 46-byte read and one unlink, then
    /// one directory fsync.
    ///
    /// # Errors
    /// [`StorageError::Io`] if a file system call fails. Modules removed before the failure stay
    /// removed (the directory is still fsynced, best effort).
    pub fn retain(&self, keep: impl Fn(&[u8; 32]) -> bool) -> Result<Vec<StoredModule>> {
        let doomed: Vec<([u8; 32], PathBuf)> = self
            .module_files()?
            .into_iter()
            .filter(|(sha256, _)| !keep(sha256))
            .collect();
        let _names = self.lock_names();
        let mut removed = Vec::new();
        let mut result = Ok(());
        for (sha256, path) in doomed {
            let bytes = match self.header_body_len(&sha256, &path) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => continue, // already gone
                Err(StorageError::ModuleInvalid { .. }) => 0,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            match self.vfs.remove_file(&path) {
                Ok(()) => removed.push(StoredModule { sha256, bytes }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    result = Err(io_err("remove module file", &path)(e));
                    break;
                }
            }
        }
        if !removed.is_empty() {
            let synced = self.sync_dir();
            result = result.and(synced);
        }
        result.map(|()| removed)
    }

    // --- internals ---

    fn path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}{MODULE_SUFFIX}", hex(sha256)))
    }

    fn lock_names(&self) -> MutexGuard<'_, ()> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_dir(&self) -> Result<()> {
        self.vfs
            .sync_dir(&self.dir)
            .map_err(io_err("fsync module directory", &self.dir))
    }

    fn remove(&self, path: &Path, op: &'static str) -> Result<()> {
        match self.vfs.remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(op, path)(e)),
            _ => Ok(()),
        }
    }

    /// `(hash, path)` of every file named like a module, ordered by hash.
    fn module_files(&self) -> Result<Vec<([u8; 32], PathBuf)>> {
        let mut out: Vec<([u8; 32], PathBuf)> = self
            .vfs
            .list(&self.dir)
            .map_err(io_err("list module directory", &self.dir))?
            .into_iter()
            .filter_map(|name| parse_module_name(&name).map(|h| (h, self.dir.join(name))))
            .collect();
        out.sort_unstable_by_key(|a| a.0);
        Ok(out)
    }

    /// A new temp file for a put of `sha256`, under a name no other put uses.
    fn create_temp(&self, sha256: &[u8; 32]) -> Result<(PathBuf, Arc<dyn VfsFile>)> {
        let mut attempt = 0;
        loop {
            let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let tmp = self
                .dir
                .join(format!("{}{MODULE_SUFFIX}.{n}{TEMP_SUFFIX}", hex(sha256)));
            match self.vfs.open(&tmp, OpenMode::CreateNew) {
                Ok(file) => return Ok((tmp, file)),
                // A leftover of an earlier process that `open` could not see yet; try the next.
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && attempt + 1 < TEMP_NAME_ATTEMPTS_MAX =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(io_err("create module temp file", &tmp)(e)),
            }
        }
    }

    /// Header and body into `tmp`, `fdatasync`, rename to `path`, directory fsync.
    fn write_and_publish(
        &self,
        file: &dyn VfsFile,
        tmp: &Path,
        path: &Path,
        sha256: &[u8; 32],
        bytes: &[u8],
    ) -> Result<()> {
        file.write_all_at(&encode_header(sha256, bytes.len() as u64), 0)
            .map_err(io_err("write module header", tmp))?;
        file.write_all_at(bytes, MODULE_HEADER_BYTES)
            .map_err(io_err("write module body", tmp))?;
        file.sync_data()
            .map_err(io_err("fdatasync module temp file", tmp))?;
        let _names = self.lock_names();
        self.vfs
            .rename(tmp, path)
            .map_err(io_err("rename module into place", path))?;
        self.sync_dir()
    }

    /// Read and verify the module file at `path`, classifying the outcome.
    fn check(&self, sha256: &[u8; 32], path: &Path) -> Result<Checked> {
        match self.read_verified(sha256, path) {
            Ok(Some(bytes)) => Ok(Checked::Valid(bytes)),
            Ok(None) => Ok(Checked::Absent),
            Err(e @ StorageError::ModuleInvalid { .. }) => Ok(Checked::Invalid(e)),
            Err(e) => Err(e),
        }
    }

    /// The verified body, `None` if the file is absent, `ModuleInvalid` if it fails a check.
    fn read_verified(&self, sha256: &[u8; 32], path: &Path) -> Result<Option<Vec<u8>>> {
        let Some((file, body_len)) = self.open_checked(sha256, path)? else {
            return Ok(None);
        };
        let len = usize::try_from(body_len)
            .map_err(|_| invalid(path, "body length", "one that fits in memory", body_len))?;
        let mut body = vec![0u8; len];
        read_exact_at(file.as_ref(), &mut body, MODULE_HEADER_BYTES).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(path, "body", format!("{body_len} bytes"), "a shorter file")
            } else {
                io_err("read module body", path)(e)
            }
        })?;
        let found: [u8; 32] = Sha256::digest(&body).into();
        if &found != sha256 {
            return Err(invalid(path, "body SHA-256", hex(sha256), hex(&found)));
        }
        Ok(Some(body))
    }

    /// The body length the header of `path` records, `None` if the file is absent.
    fn header_body_len(&self, sha256: &[u8; 32], path: &Path) -> Result<Option<u64>> {
        Ok(self.open_checked(sha256, path)?.map(|(_, len)| len))
    }

    /// Open `path` and check its header against `sha256` and the file's size; returns the open
    /// file and the body length. `None` if the file is absent.
    fn open_checked(
        &self,
        sha256: &[u8; 32],
        path: &Path,
    ) -> Result<Option<(Arc<dyn VfsFile>, u64)>> {
        let file = match self.vfs.open(path, OpenMode::Read) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open module file", path)(e)),
        };
        let file_len = file.len().map_err(io_err("stat module file", path))?;
        if file_len < MODULE_HEADER_BYTES {
            return Err(invalid(
                path,
                "file length",
                format!(">= {MODULE_HEADER_BYTES} bytes (the header)"),
                format!("{file_len} bytes"),
            ));
        }
        let mut hdr = [0u8; MODULE_HEADER_BYTES as usize];
        read_exact_at(file.as_ref(), &mut hdr, 0).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(
                    path,
                    "header",
                    format!("{MODULE_HEADER_BYTES} bytes"),
                    "a shorter file",
                )
            } else {
                io_err("read module header", path)(e)
            }
        })?;
        if &hdr[..4] != MODULE_MAGIC {
            return Err(invalid(path, "magic", hex(MODULE_MAGIC), hex(&hdr[..4])));
        }
        let version = u16::from_le_bytes([hdr[4], hdr[5]]);
        if version != MODULE_VERSION {
            return Err(invalid(path, "format version", MODULE_VERSION, version));
        }
        if &hdr[6..38] != sha256 {
            return Err(invalid(
                path,
                "SHA-256 in the header (must equal the file name)",
                hex(sha256),
                hex(&hdr[6..38]),
            ));
        }
        let body_len = u64_at(&hdr, 38);
        if file_len - MODULE_HEADER_BYTES != body_len {
            return Err(invalid(
                path,
                "file length",
                format!(
                    "{MODULE_HEADER_BYTES} + {body_len} bytes (header + body length in the header)"
                ),
                format!("{file_len} bytes"),
            ));
        }
        Ok(Some((file, body_len)))
    }
}

fn encode_header(sha256: &[u8; 32], body_len: u64) -> [u8; MODULE_HEADER_BYTES as usize] {
    let mut hdr = [0u8; MODULE_HEADER_BYTES as usize];
    hdr[..4].copy_from_slice(MODULE_MAGIC);
    hdr[4..6].copy_from_slice(&MODULE_VERSION.to_le_bytes());
    hdr[6..38].copy_from_slice(sha256);
    hdr[38..46].copy_from_slice(&body_len.to_le_bytes());
    hdr
}

fn invalid(
    file: &Path,
    detail: &'static str,
    expected: impl ToString,
    found: impl ToString,
) -> StorageError {
    StorageError::ModuleInvalid {
        file: file.to_path_buf(),
        detail,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// Lowercase hex, as in module file names.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The hash in a module file name (`<64 lowercase hex>.wasm`); `None` for any other name.
fn parse_module_name(name: &str) -> Option<[u8; 32]> {
    let digits = name.strip_suffix(MODULE_SUFFIX)?.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Whether `name` is a put's temp file: `<module file name>.<n>.tmp`.
fn is_temp_name(name: &str) -> bool {
    name.strip_suffix(TEMP_SUFFIX)
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(module, n)| {
            !n.is_empty()
                && n.bytes().all(|c| c.is_ascii_digit())
                && parse_module_name(module).is_some()
        })
}

#[cfg(test)]
mod tests;
