//! The module store's tests: round trips, refusals, a crash at every byte and between every
//! call of a put, damage of every kind, listing, retention and concurrent puts.

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
