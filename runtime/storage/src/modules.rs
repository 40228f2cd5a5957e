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
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::fault::{CrashMode, FaultFs};
    use crate::vfs::StdFs;

    const DIR: &str = "/node/modules";
    const MODES: [CrashMode; 3] = [
        CrashMode::LoseUnsynced,
        CrashMode::KeepWritten,
        CrashMode::KeepDataLoseNames,
    ];

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// Deterministic module bytes, different for each `seed`.
    fn module(seed: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u64).wrapping_mul(31) ^ seed.wrapping_mul(0x9E37_79B9)) as u8)
            .collect()
    }

    fn open(fs: &FaultFs) -> ModuleStore {
        ModuleStore::open(Arc::new(fs.clone()), Path::new(DIR)).expect("open module store")
    }

    fn file_of(sha256: &[u8; 32]) -> PathBuf {
        Path::new(DIR).join(format!("{}.wasm", hex(sha256)))
    }

    fn temp_files(fs: &FaultFs) -> Vec<PathBuf> {
        fs.paths()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".tmp"))
            .collect()
    }

    fn stored(bytes: &[u8]) -> StoredModule {
        StoredModule {
            sha256: sha(bytes),
            bytes: bytes.len() as u64,
        }
    }

    fn sorted(mut v: Vec<StoredModule>) -> Vec<StoredModule> {
        v.sort_unstable_by_key(|a| a.sha256);
        v
    }

    #[test]
    fn the_store_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ModuleStore>();
    }

    #[test]
    fn a_put_module_is_read_back_from_a_file_with_the_documented_name_and_layout() {
        let fs = FaultFs::new();
        let store = open(&fs);
        let body = b"abc";
        let h = sha(body);
        // SHA-256("abc"), FIPS 180-2 appendix B.1: pins the name's hex encoding.
        let name = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad.wasm";
        assert!(!store.contains(&h));
        assert_eq!(store.get(&h).expect("get"), None);
        assert!(store.put(&h, body).expect("put"));
        assert!(store.contains(&h));
        assert_eq!(store.get(&h).expect("get").as_deref(), Some(&body[..]));

        let file = fs
            .read_file(&Path::new(DIR).join(name))
            .expect("file named by the hash");
        assert_eq!(file.len(), 46 + 3);
        assert_eq!(&file[..4], b"WMOD");
        assert_eq!(&file[4..6], &[1, 0]);
        assert_eq!(&file[6..38], &h);
        assert_eq!(&file[38..46], &[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&file[46..], b"abc");
        assert_eq!(fs.paths(), vec![Path::new(DIR).join(name)]);

        let empty = sha(b"");
        assert!(store.put(&empty, b"").expect("put empty"));
        assert_eq!(store.get(&empty).expect("get empty"), Some(Vec::new()));
    }

    #[test]
    fn a_put_module_survives_power_loss_and_reopening() {
        let fs = FaultFs::new();
        let body = module(1, 5000);
        let h = sha(&body);
        assert!(open(&fs).put(&h, &body).expect("put"));
        fs.crash(CrashMode::LoseUnsynced);
        let store = open(&fs);
        assert_eq!(store.get(&h).expect("get"), Some(body.clone()));
        assert_eq!(store.list().expect("list"), vec![stored(&body)]);
    }

    #[test]
    fn put_and_get_work_on_the_real_file_system() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("modules");
        let body = module(2, 70_000);
        let h = sha(&body);
        {
            let store = ModuleStore::open(Arc::new(StdFs), &dir).expect("open");
            assert!(store.put(&h, &body).expect("put"));
            assert!(!store.put(&h, &body).expect("second put"));
        }
        std::fs::write(dir.join(format!("{}.wasm.3.tmp", hex(&h))), b"partial").expect("temp");
        let store = ModuleStore::open(Arc::new(StdFs), &dir).expect("reopen");
        assert_eq!(store.get(&h).expect("get"), Some(body.clone()));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(names, vec![format!("{}.wasm", hex(&h))]);
    }

    #[test]
    fn bytes_that_do_not_hash_to_the_given_name_are_refused_and_nothing_is_written() {
        let fs = FaultFs::new();
        let store = open(&fs);
        let claimed = sha(b"the module the log entry names");
        let err = store
            .put(&claimed, b"other bytes")
            .expect_err("mismatch must be refused");
        match &err {
            StorageError::ModuleHashMismatch {
                expected,
                found,
                len,
            } => {
                assert_eq!(expected, &hex(&claimed));
                assert_eq!(found, &hex(&sha(b"other bytes")));
                assert_eq!(*len, 11);
            }
            other => panic!("expected ModuleHashMismatch, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&hex(&claimed)) && msg.contains(&hex(&sha(b"other bytes"))),
            "{msg}"
        );
        assert_eq!(fs.bytes_written(), 0);
        assert!(fs.paths().is_empty(), "{:?}", fs.paths());
        assert!(!store.contains(&claimed));

        // Wrong bytes under the name of a module already stored leave it untouched.
        let body = module(3, 100);
        let h = sha(&body);
        store.put(&h, &body).expect("put");
        let before = fs.bytes_written();
        assert!(matches!(
            store.put(&h, &module(4, 100)),
            Err(StorageError::ModuleHashMismatch { .. })
        ));
        assert_eq!(fs.bytes_written(), before);
        assert_eq!(store.get(&h).expect("get"), Some(body));
    }

    #[test]
    fn putting_a_module_already_stored_returns_false_and_writes_nothing() {
        let fs = FaultFs::new();
        let store = open(&fs);
        let body = module(5, 300);
        let h = sha(&body);
        assert!(store.put(&h, &body).expect("first put"));
        let (written, paths) = (fs.bytes_written(), fs.paths());
        assert!(!store.put(&h, &body).expect("second put"));
        assert!(!store.put(&h, &body).expect("third put"));
        assert_eq!(fs.bytes_written(), written);
        assert_eq!(fs.paths(), paths);
        assert_eq!(store.get(&h).expect("get"), Some(body));
    }

    /// A `Vfs` that lets `ops_left` more calls through (calls on open files included) and then
    /// fails every call, like a machine losing power between two system calls. `FaultFs`'s write
    /// budget cuts inside writes; this cuts between calls, so crashes between `sync_data`,
    /// `rename` and `sync_dir` are enumerated too.
    #[derive(Debug)]
    struct CutAfterOps {
        fs: FaultFs,
        ops_left: Arc<AtomicU64>,
    }

    #[derive(Debug)]
    struct CutFile {
        file: Arc<dyn VfsFile>,
        ops_left: Arc<AtomicU64>,
    }

    fn take(ops_left: &AtomicU64) -> io::Result<()> {
        ops_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| io::Error::other("cut: simulated power loss"))
    }

    impl Vfs for CutAfterOps {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            take(&self.ops_left)?;
            self.fs.create_dir_all(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            take(&self.ops_left)?;
            self.fs.list(dir)
        }
        fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
            take(&self.ops_left)?;
            Ok(Arc::new(CutFile {
                file: self.fs.open(path, mode)?,
                ops_left: self.ops_left.clone(),
            }))
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            take(&self.ops_left)?;
            self.fs.rename(from, to)
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            take(&self.ops_left)?;
            self.fs.remove_file(path)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            take(&self.ops_left)?;
            self.fs.sync_dir(dir)
        }
    }

    impl VfsFile for CutFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            take(&self.ops_left)?;
            self.file.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            take(&self.ops_left)?;
            self.file.write_all_at(buf, offset)
        }
        fn sync_data(&self) -> io::Result<()> {
            take(&self.ops_left)?;
            self.file.sync_data()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            take(&self.ops_left)?;
            self.file.set_len(len)
        }
        fn len(&self) -> io::Result<u64> {
            take(&self.ops_left)?;
            self.file.len()
        }
    }

    /// What the crash checks saw, so a test can insist that both outcomes were exercised.
    #[derive(Debug, Default)]
    struct Outcomes {
        kept: usize,
        lost: usize,
        temp_left: usize,
    }

    /// Crash a copy of `fs` (after a put of `new` that returned Ok iff `finished`) in every mode
    /// and check the reopened store: `old` intact, `new` absent or whole, no temp file.
    fn check_every_crash_mode(
        fs: &FaultFs,
        old: &[u8],
        new: &[u8],
        finished: bool,
        ctx: &str,
        seen: &mut Outcomes,
    ) {
        let (old_h, new_h) = (sha(old), sha(new));
        for mode in MODES {
            let ctx = format!("{ctx}, {mode:?}");
            let crashed = fs.fork();
            crashed.crash(mode);
            let had_temp = !temp_files(&crashed).is_empty();
            let visible = crashed.read_file(&file_of(&new_h)).is_some();
            let store = ModuleStore::open(Arc::new(crashed.clone()), Path::new(DIR))
                .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
            assert_eq!(temp_files(&crashed), Vec::<PathBuf>::new(), "{ctx}");
            let want_list = if visible {
                sorted(vec![stored(old), stored(new)])
            } else {
                vec![stored(old)]
            };
            assert_eq!(store.list().expect("list"), want_list, "{ctx}");
            let got = store.get(&new_h).expect("get new");
            if visible {
                assert_eq!(
                    got.as_deref(),
                    Some(new),
                    "{ctx}: a visible module file must hold the whole module"
                );
            } else {
                assert_eq!(got, None, "{ctx}");
            }
            assert_eq!(
                store.get(&old_h).expect("get old").as_deref(),
                Some(old),
                "{ctx}: the module stored before must be intact"
            );
            if finished && mode == CrashMode::LoseUnsynced {
                assert!(
                    visible,
                    "{ctx}: a put that returned Ok must survive power loss"
                );
            }
            assert_eq!(
                store.put(&new_h, new).expect("put after the crash"),
                !visible,
                "{ctx}"
            );
            seen.kept += usize::from(visible);
            seen.lost += usize::from(!visible);
            seen.temp_left += usize::from(had_temp);
        }
    }

    #[test]
    fn a_crash_at_every_byte_of_a_put_leaves_no_module_or_the_whole_module() {
        let base = FaultFs::new();
        let (old, new) = (module(10, 700), module(11, 500));
        open(&base).put(&sha(&old), &old).expect("first module");
        let start = base.bytes_written();
        let probe = base.fork();
        open(&probe).put(&sha(&new), &new).expect("probe put");
        let total = probe.bytes_written() - start;
        assert_eq!(total, 46 + 500);
        let mut seen = Outcomes::default();
        for cut in 0..=total {
            let fs = base.fork();
            let store = open(&fs);
            fs.set_write_budget(Some(cut));
            let finished = store.put(&sha(&new), &new).is_ok();
            assert_eq!(finished, cut == total, "cut at byte {cut}");
            drop(store);
            let ctx = format!("cut at byte {cut} of {total}");
            check_every_crash_mode(&fs, &old, &new, finished, &ctx, &mut seen);
        }
        assert!(
            seen.kept > 0 && seen.lost > 0 && seen.temp_left > 0,
            "{seen:?}"
        );
    }

    #[test]
    fn a_crash_between_any_two_calls_of_a_put_leaves_no_module_or_the_whole_module() {
        let base = FaultFs::new();
        let (old, new) = (module(20, 300), module(21, 400));
        open(&base).put(&sha(&old), &old).expect("first module");
        let cut_store = |fs: &FaultFs| {
            let ops_left = Arc::new(AtomicU64::new(u64::MAX));
            let vfs = CutAfterOps {
                fs: fs.clone(),
                ops_left: ops_left.clone(),
            };
            let store = ModuleStore::open(Arc::new(vfs), Path::new(DIR)).expect("open");
            (store, ops_left)
        };
        let (probe, ops_left) = cut_store(&base.fork());
        let before = ops_left.load(Ordering::SeqCst);
        probe.put(&sha(&new), &new).expect("probe put");
        let total = before - ops_left.load(Ordering::SeqCst);
        // open (absent) + create temp + 2 writes + fdatasync + rename + directory fsync
        assert_eq!(total, 7);
        let mut seen = Outcomes::default();
        for cut in 0..=total {
            let fs = base.fork();
            let (store, ops_left) = cut_store(&fs);
            ops_left.store(cut, Ordering::SeqCst);
            let finished = store.put(&sha(&new), &new).is_ok();
            assert_eq!(finished, cut == total, "cut after {cut} calls");
            drop(store);
            let ctx = format!("cut after {cut} of {total} calls");
            check_every_crash_mode(&fs, &old, &new, finished, &ctx, &mut seen);
        }
        assert!(
            seen.kept > 0 && seen.lost > 0 && seen.temp_left > 0,
            "{seen:?}"
        );
    }

    /// Every way of damaging `file` this test knows, with a name for each.
    fn damaged_copies(file: &[u8], other_module_file: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for off in 0..file.len() {
            for bit in [0u8, 7] {
                let mut d = file.to_vec();
                d[off] ^= 1 << bit;
                out.push((format!("bit {bit} of byte {off} flipped"), d));
            }
        }
        for len in 0..file.len() {
            out.push((format!("truncated to {len} bytes"), file[..len].to_vec()));
        }
        let mut longer = file.to_vec();
        longer.push(0);
        out.push(("one byte appended".into(), longer));
        let mut magic = file.to_vec();
        magic[..4].copy_from_slice(b"WASM");
        out.push(("wrong magic".into(), magic));
        let mut version = file.to_vec();
        version[4..6].copy_from_slice(&2u16.to_le_bytes());
        out.push(("format version 2".into(), version));
        let mut huge = file.to_vec();
        huge[38..46].copy_from_slice(&u64::MAX.to_le_bytes());
        out.push(("body length u64::MAX".into(), huge));
        out.push((
            "another module's valid file under this name".into(),
            other_module_file.to_vec(),
        ));
        out
    }

    #[test]
    fn a_damaged_module_file_is_reported_absent_removed_and_can_be_stored_again() {
        let base = FaultFs::new();
        let (body, other) = (module(30, 60), module(31, 60));
        let (h, other_h) = (sha(&body), sha(&other));
        let store = open(&base);
        store.put(&h, &body).expect("put");
        store.put(&other_h, &other).expect("put other");
        drop(store);
        let path = file_of(&h);
        let file = base.read_file(&path).expect("module file");
        let other_file = base.read_file(&file_of(&other_h)).expect("other file");
        let cases = damaged_copies(&file, &other_file);
        assert_eq!(cases.len(), 3 * file.len() + 5);
        for (what, data) in cases {
            let fs = base.fork();
            assert!(fs.write_file_durable(&path, data));
            let store = open(&fs); // never fails because of a damaged module
            assert!(store.contains(&h), "{what}");
            assert_eq!(store.get(&h).expect("get"), None, "{what}");
            assert_eq!(
                fs.read_file(&path),
                None,
                "{what}: damaged file not removed"
            );
            assert!(!store.contains(&h), "{what}");
            assert_eq!(store.list().expect("list"), vec![stored(&other)], "{what}");
            assert_eq!(
                store.get(&other_h).expect("get other").as_deref(),
                Some(&other[..]),
                "{what}"
            );
            assert!(store.put(&h, &body).expect("put again"), "{what}");
            assert_eq!(
                store.get(&h).expect("get").as_deref(),
                Some(&body[..]),
                "{what}"
            );
        }
    }

    #[test]
    fn a_put_over_a_damaged_file_replaces_it() {
        let fs = FaultFs::new();
        let store = open(&fs);
        let body = module(32, 200);
        let h = sha(&body);
        store.put(&h, &body).expect("put");
        assert!(fs.flip_bit(&file_of(&h), 46 + 150, 3));
        assert!(store.put(&h, &body).expect("put over the damaged file"));
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(open(&fs).get(&h).expect("get"), Some(body));
    }

    #[test]
    fn list_reports_each_module_with_its_length_and_skips_other_files() {
        let fs = FaultFs::new();
        let store = open(&fs);
        let bodies = [module(40, 0), module(41, 1), module(42, 1000)];
        for b in &bodies {
            assert!(store.put(&sha(b), b).expect("put"));
        }
        let damaged = module(43, 10);
        store.put(&sha(&damaged), &damaged).expect("put");
        let damaged_path = file_of(&sha(&damaged));
        assert!(fs.write_file_durable(&damaged_path, b"WMOD".to_vec()));

        let dir = Path::new(DIR);
        let temp = dir.join(format!("{}.wasm.17.tmp", hex(&sha(&bodies[2]))));
        let stray = [
            dir.join("notes.txt"),
            dir.join(format!("{}.wasm", hex(&sha(&bodies[1])).to_uppercase())),
            dir.join("unrelated.tmp"),
            dir.join("notes.1.tmp"),
        ];
        for p in stray.iter().chain([&temp]) {
            let f = fs.open(p, OpenMode::CreateNew).expect("create");
            f.write_all_at(b"not a module", 0).expect("write");
        }
        let want = sorted(bodies.iter().map(|b| stored(b)).collect());
        assert_eq!(store.list().expect("list"), want);
        assert_eq!(
            store
                .list()
                .expect("list")
                .iter()
                .map(|m| m.bytes)
                .sum::<u64>(),
            1001
        );

        drop(store);
        let store = open(&fs);
        assert_eq!(fs.read_file(&temp), None, "open removes temp files");
        for p in &stray {
            assert!(fs.read_file(p).is_some(), "open must leave {p:?} alone");
        }
        assert_eq!(store.list().expect("list"), want);
        assert!(
            fs.read_file(&damaged_path).is_some(),
            "list does not remove"
        );
    }

    #[test]
    fn retain_removes_exactly_the_modules_not_kept_and_durably() {
        let fs = FaultFs::new();
        let store = open(&fs);
        let bodies: Vec<Vec<u8>> = (0..5).map(|i| module(50 + i, 10 * i as usize)).collect();
        for b in &bodies {
            store.put(&sha(b), b).expect("put");
        }
        let syncs = fs.syncs();
        assert_eq!(store.retain(|_| true).expect("retain all"), vec![]);
        assert_eq!(fs.syncs(), syncs, "nothing removed, nothing synced");

        let keep = [sha(&bodies[1]), sha(&bodies[3])];
        let removed = store.retain(|h| keep.contains(h)).expect("retain");
        assert_eq!(
            removed,
            sorted(vec![
                stored(&bodies[0]),
                stored(&bodies[2]),
                stored(&bodies[4])
            ])
        );
        let kept = sorted(vec![stored(&bodies[1]), stored(&bodies[3])]);
        assert_eq!(store.list().expect("list"), kept);
        for (i, b) in bodies.iter().enumerate() {
            let want = keep.contains(&sha(b)).then(|| b.clone());
            assert_eq!(store.get(&sha(b)).expect("get"), want, "module {i}");
        }
        drop(store);
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(open(&fs).list().expect("list after power loss"), kept);
    }

    #[test]
    fn retain_reports_a_file_with_a_damaged_header_with_zero_bytes() {
        let fs = FaultFs::new();
        let store = open(&fs);
        let body = module(60, 80);
        store.put(&sha(&body), &body).expect("put");
        assert!(fs.flip_bit(&file_of(&sha(&body)), 0, 0));
        assert_eq!(
            store.retain(|_| false).expect("retain"),
            vec![StoredModule {
                sha256: sha(&body),
                bytes: 0
            }]
        );
        assert!(fs.paths().is_empty(), "{:?}", fs.paths());
    }

    #[test]
    fn get_of_a_damaged_file_logs_a_warning_naming_the_file_and_the_failed_check() {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let fs = FaultFs::new();
        let store = open(&fs);
        let body = module(70, 100);
        let h = sha(&body);
        store.put(&h, &body).expect("put");
        assert!(fs.flip_bit(&file_of(&h), 46 + 99, 1));
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let got = tracing::subscriber::with_default(subscriber, || store.get(&h));
        assert_eq!(got.expect("get"), None);
        let log = String::from_utf8(capture.0.lock().expect("log").clone()).expect("utf-8");
        let file = file_of(&h).display().to_string();
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains(&file), "{log}");
        assert!(log.contains("body SHA-256"), "{log}");
        assert!(log.contains(&hex(&h)), "{log}");
    }

    /// 8 threads each put all 24 modules (in different orders) and read each back.
    fn concurrent_puts(vfs: Arc<dyn Vfs>, dir: &Path) {
        const THREADS: usize = 8;
        const MODULES: usize = 24;
        let store = Arc::new(ModuleStore::open(vfs.clone(), dir).expect("open"));
        let bodies: Vec<Vec<u8>> = (0..MODULES)
            .map(|i| module(80 + i as u64, 100 + 37 * i))
            .collect();
        let newly: Vec<AtomicUsize> = (0..MODULES).map(|_| AtomicUsize::new(0)).collect();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (store, bodies, newly) = (store.clone(), &bodies, &newly);
                s.spawn(move || {
                    for k in 0..MODULES {
                        let i = (t * 5 + k) % MODULES;
                        let h = sha(&bodies[i]);
                        if store.put(&h, &bodies[i]).expect("put") {
                            newly[i].fetch_add(1, Ordering::Relaxed);
                        }
                        assert_eq!(store.get(&h).expect("get").as_deref(), Some(&bodies[i][..]));
                    }
                });
            }
        });
        for (i, n) in newly.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            assert!(
                (1..=THREADS).contains(&n),
                "module {i} newly stored {n} times"
            );
        }
        let want = sorted(bodies.iter().map(|b| stored(b)).collect());
        assert_eq!(store.list().expect("list"), want);
        let mut names = vfs.list(dir).expect("list dir");
        names.sort();
        let mut want_names: Vec<String> = bodies
            .iter()
            .map(|b| format!("{}.wasm", hex(&sha(b))))
            .collect();
        want_names.sort();
        assert_eq!(names, want_names, "no temp file may be left behind");
    }

    #[test]
    fn concurrent_puts_from_threads_store_every_module_once_and_whole() {
        concurrent_puts(Arc::new(FaultFs::new()), Path::new(DIR));
        let tmp = tempfile::tempdir().expect("tempdir");
        concurrent_puts(Arc::new(StdFs), &tmp.path().join("modules"));
    }
}
