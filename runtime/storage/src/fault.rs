//! An in-memory [`Vfs`] that models crashes, torn writes and bit rot.
//!
//! `FaultFs` keeps two versions of everything: what was *written* and what was made *durable*
//! (file contents by [`VfsFile::sync_data`], names by [`Vfs::sync_dir`]). A simulated crash
//! ([`FaultFs::crash`]) throws away some or all of what was not durable, according to a
//! [`CrashMode`]. A write budget ([`FaultFs::set_write_budget`]) cuts the write stream at any byte:
//! the write that crosses the budget lands only partially and the file system then fails every call
//! until the crash, exactly like a machine losing power in the middle of a `pwrite`.
//!
//! Handles opened before a crash are dead afterwards (every call returns an error), so a storage
//! instance from "before the reboot" can never write into the recovered state.
//!
//! # Use from the engine simulator
//!
//! A simulated node owns one `FaultFs` (cheap to clone; clones share state) and opens
//! [`crate::Storage::open_with_vfs`] on it. To crash the node: drop its `Storage` (or keep it, its
//! handles die), call `crash(CrashMode::LoseUnsynced)` and open again; what the node recovers is
//! exactly what a real disk would have kept. Because everything is in memory and seeded by the
//! caller, runs are deterministic except for the writer thread's batching, which changes *when*
//! things become durable but never *what* a crash can keep.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::vfs::{OpenMode, Vfs, VfsFile};

/// What a simulated crash keeps of the data that was written but not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Power loss: only synced file contents and synced directory entries survive.
    LoseUnsynced,
    /// Process crash (`kill -9`): the kernel keeps everything written, including a torn last write.
    KeepWritten,
    /// Contents written reach the disk but unsynced directory operations are lost (the nastiest
    /// reordering ext4/xfs allow: data of a file whose new name is not yet durable).
    KeepDataLoseNames,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
    /// Lowest offset changed since the last sync (so a sync copies only the changed suffix).
    dirty_from: usize,
}

impl Inode {
    fn touch(&mut self, offset: usize) {
        self.dirty_from = self.dirty_from.min(offset);
    }
    fn sync(&mut self) {
        let keep = self.dirty_from.min(self.data.len()).min(self.synced.len());
        self.synced.truncate(keep);
        self.synced.extend_from_slice(&self.data[keep..]);
        self.dirty_from = self.data.len();
    }
    fn revert(&mut self) {
        self.data = self.synced.clone();
        self.dirty_from = self.data.len();
    }
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    next_inode: u64,
    epoch: u64,
    write_budget: Option<u64>,
    failed: bool,
    bytes_written: u64,
    syncs: u64,
}

/// In-memory crash-modelling file system. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct FaultFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    epoch: u64,
    writable: bool,
}

fn crashed() -> io::Error {
    io::Error::other("fault-fs: simulated power loss")
}

impl FaultFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allow `bytes` more bytes to be written; the write that crosses the budget is applied up to
    /// the budget and fails, and every call after it fails until [`FaultFs::crash`].
    /// `None` removes the budget.
    pub fn set_write_budget(&self, bytes: Option<u64>) {
        self.lock().write_budget = bytes;
    }

    /// Total bytes accepted by `write_all_at` since creation (used to enumerate cut points).
    pub fn bytes_written(&self) -> u64 {
        self.lock().bytes_written
    }

    /// Number of `sync_data` + `sync_dir` calls so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Simulate a crash and reboot: apply `mode`, clear the fault state, kill open handles.
    pub fn crash(&self, mode: CrashMode) {
        let mut s = self.lock();
        match mode {
            CrashMode::LoseUnsynced => {
                for inode in s.inodes.values_mut() {
                    inode.revert();
                }
                s.names = s.durable_names.clone();
            }
            CrashMode::KeepWritten => {
                for inode in s.inodes.values_mut() {
                    inode.sync();
                }
                s.durable_names = s.names.clone();
            }
            CrashMode::KeepDataLoseNames => {
                for inode in s.inodes.values_mut() {
                    inode.sync();
                }
                s.names = s.durable_names.clone();
            }
        }
        s.epoch += 1;
        s.failed = false;
        s.write_budget = None;
    }

    /// Copy of a file's current contents, if the name exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        let inode = s.names.get(path)?;
        s.inodes.get(inode).map(|i| i.data.clone())
    }

    /// Overwrite a file's contents durably (for corrupting files in tests). Returns false if absent.
    pub fn write_file_durable(&self, path: &Path, data: Vec<u8>) -> bool {
        let mut s = self.lock();
        let Some(&inode) = s.names.get(path) else {
            return false;
        };
        let Some(node) = s.inodes.get_mut(&inode) else {
            return false;
        };
        node.data = data;
        node.touch(0);
        node.sync();
        true
    }

    /// Flip bit `bit` (0..8) of byte `offset` in a file, durably. Returns false if out of range.
    pub fn flip_bit(&self, path: &Path, offset: usize, bit: u8) -> bool {
        let Some(mut data) = self.read_file(path) else {
            return false;
        };
        let Some(b) = data.get_mut(offset) else {
            return false;
        };
        *b ^= 1 << (bit % 8);
        self.write_file_durable(path, data)
    }

    /// Every path that currently exists, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }

    /// A deep copy that does not share state (to run many crash variants from one prefix).
    pub fn fork(&self) -> FaultFs {
        let s = self.lock();
        let copy = State {
            inodes: s.inodes.clone(),
            names: s.names.clone(),
            durable_names: s.durable_names.clone(),
            dirs: s.dirs.clone(),
            next_inode: s.next_inode,
            epoch: s.epoch + 1,
            write_budget: None,
            failed: false,
            bytes_written: s.bytes_written,
            syncs: s.syncs,
        };
        FaultFs {
            state: Arc::new(Mutex::new(copy)),
        }
    }
}

fn check(s: &State) -> io::Result<()> {
    if s.failed { Err(crashed()) } else { Ok(()) }
}

impl Vfs for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        check(&s)?;
        s.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        check(&s)?;
        if !s.dirs.contains(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "fault-fs: no such directory",
            ));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut s = self.lock();
        check(&s)?;
        let inode = match (mode, s.names.get(path).copied()) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "fault-fs: file exists",
                ));
            }
            (OpenMode::CreateNew, None) => {
                let parent_ok = path.parent().is_some_and(|p| s.dirs.contains(p));
                if !parent_ok {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "fault-fs: no parent dir",
                    ));
                }
                s.next_inode += 1;
                let id = s.next_inode;
                s.inodes.insert(id, Inode::default());
                s.names.insert(path.to_path_buf(), id);
                id
            }
            (_, Some(id)) => id,
            (_, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "fault-fs: no such file",
                ));
            }
        };
        Ok(Arc::new(FaultFile {
            state: self.state.clone(),
            inode,
            epoch: s.epoch,
            writable: mode != OpenMode::Read,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        check(&s)?;
        let id = s.names.remove(from).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "fault-fs: rename source missing")
        })?;
        s.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        check(&s)?;
        s.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "fault-fs: no such file"))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        check(&s)?;
        s.syncs += 1;
        s.durable_names.retain(|p, _| p.parent() != Some(dir));
        let current: Vec<(PathBuf, u64)> = s
            .names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        s.durable_names.extend(current);
        Ok(())
    }
}

impl FaultFile {
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.epoch != self.epoch || s.failed {
            return Err(crashed());
        }
        Ok(s)
    }
}

impl VfsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let s = self.lock()?;
        let data = &s.inodes.get(&self.inode).ok_or_else(crashed)?.data;
        let Ok(off) = usize::try_from(offset) else {
            return Ok(0);
        };
        if off >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - off);
        buf[..n].copy_from_slice(&data[off..off + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.lock()?;
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "fault-fs: read-only handle",
            ));
        }
        let (take, cut) = match s.write_budget {
            Some(b) if (buf.len() as u64) > b => (b as usize, true),
            _ => (buf.len(), false),
        };
        if let Some(b) = s.write_budget.as_mut() {
            *b -= take as u64;
        }
        s.bytes_written += take as u64;
        let off = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let node = s.inodes.get_mut(&self.inode).ok_or_else(crashed)?;
        node.touch(off);
        if node.data.len() < off + take {
            node.data.resize(off + take, 0);
        }
        node.data[off..off + take].copy_from_slice(&buf[..take]);
        if cut {
            s.failed = true;
            return Err(crashed());
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.lock()?;
        s.syncs += 1;
        s.inodes.get_mut(&self.inode).ok_or_else(crashed)?.sync();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.lock()?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        let node = s.inodes.get_mut(&self.inode).ok_or_else(crashed)?;
        node.touch(len.min(node.data.len()));
        node.data.resize(len, 0);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let s = self.lock()?;
        Ok(s.inodes.get(&self.inode).ok_or_else(crashed)?.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn power_loss_keeps_exactly_the_synced_bytes_and_synced_names() {
        let fs = FaultFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let f = fs.open(&p("/d/a"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        f.write_all_at(b" world", 5).unwrap();
        f.write_all_at(b"J", 0).unwrap();
        let g = fs.open(&p("/d/b"), OpenMode::CreateNew).unwrap();
        g.write_all_at(b"x", 0).unwrap();
        g.sync_data().unwrap(); // data synced, name not
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(fs.read_file(&p("/d/a")).unwrap(), b"hello");
        assert!(
            fs.read_file(&p("/d/b")).is_none(),
            "unsynced create must be lost"
        );
        assert!(
            f.read_at(&mut [0u8; 1], 0).is_err(),
            "pre-crash handles are dead"
        );
    }

    #[test]
    fn kill_nine_keeps_written_bytes_and_a_write_budget_tears_the_crossing_write() {
        let fs = FaultFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let f = fs.open(&p("/d/a"), OpenMode::CreateNew).unwrap();
        fs.set_write_budget(Some(7));
        f.write_all_at(b"abcd", 0).unwrap();
        assert!(f.write_all_at(b"efgh", 4).is_err());
        assert!(
            f.write_all_at(b"z", 0).is_err(),
            "everything fails after the cut"
        );
        fs.crash(CrashMode::KeepWritten);
        assert_eq!(fs.read_file(&p("/d/a")).unwrap(), b"abcdefg");
    }

    #[test]
    fn sync_after_truncate_and_overwrite_matches_the_written_file() {
        let fs = FaultFs::new();
        fs.create_dir_all(&p("/d")).unwrap();
        let f = fs.open(&p("/d/a"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        f.write_all_at(b"0123456789", 0).unwrap();
        f.sync_data().unwrap();
        f.set_len(4).unwrap();
        f.write_all_at(b"AB", 6).unwrap();
        f.write_all_at(b"q", 1).unwrap();
        f.sync_data().unwrap();
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(fs.read_file(&p("/d/a")).unwrap(), b"0q23\0\0AB");
    }

    #[test]
    fn unsynced_rename_is_lost_on_power_loss_but_kept_after_kill_nine() {
        for (mode, want_new) in [
            (CrashMode::LoseUnsynced, false),
            (CrashMode::KeepWritten, true),
        ] {
            let fs = FaultFs::new();
            fs.create_dir_all(&p("/d")).unwrap();
            let f = fs.open(&p("/d/tmp"), OpenMode::CreateNew).unwrap();
            f.write_all_at(b"v", 0).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(&p("/d")).unwrap();
            fs.rename(&p("/d/tmp"), &p("/d/final")).unwrap();
            fs.crash(mode);
            assert_eq!(fs.read_file(&p("/d/final")).is_some(), want_new, "{mode:?}");
            assert_eq!(fs.read_file(&p("/d/tmp")).is_some(), !want_new, "{mode:?}");
        }
    }
}
