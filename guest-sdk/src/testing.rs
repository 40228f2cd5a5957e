//! Test a machine natively (plain `cargo test`, no wasm) through the same code paths the
//! component runs, and check the three things authors most often get wrong.
//!
//! - [`Harness`]: apply commands, run queries, assert on the bytes or on typed values.
//! - [`Harness::check_round_trip`]: a snapshot restored into a fresh instance answers every query
//!   identically and writes a byte-identical snapshot (a restore that drops or rewrites data fails).
//! - [`check_deterministic`]: the same log applied by independent replicas — one of them
//!   restarting from a snapshot half-way — gives the same outputs and byte-identical snapshots
//!   (iterating a `HashMap`, or state kept outside the snapshot, fails).
//! - [`check_golden_snapshots`]: snapshot files saved by earlier versions of the machine, kept in
//!   the project, still restore and answer as they did (an incompatible format change fails).
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # use wraft_guest::{AppError, DefaultSnapshot, EntryCtx, Json, Records, StateMachine};
//! # #[derive(Default, Serialize, Deserialize)]
//! # pub struct Counter { value: i64 }
//! # impl StateMachine for Counter {
//! #     const NAME: &'static str = "counter";
//! #     const VERSION: &'static str = "0.1.0";
//! #     type Codec = Json;
//! #     type Snapshot = DefaultSnapshot;
//! #     type Command = i64;
//! #     type Output = i64;
//! #     type Query = ();
//! #     type Reply = i64;
//! #     fn apply(&mut self, _: &EntryCtx, n: i64) -> Result<i64, AppError> { self.value += n; Ok(self.value) }
//! #     fn query(&self, _: ()) -> Result<i64, AppError> { Ok(self.value) }
//! # }
//! # impl Records for Counter {
//! #     type Record<'a> = &'a Counter;
//! #     type OwnedRecord = Counter;
//! #     fn records(&self) -> impl Iterator<Item = &Counter> { std::iter::once(self) }
//! #     fn restore_record(&mut self, r: Counter) -> Result<(), String> { *self = r; Ok(()) }
//! # }
//! use wraft_guest::testing::{Harness, assert_deterministic};
//!
//! let mut h = Harness::<Counter>::new();
//! h.assert_apply(b"5", b"5");
//! h.assert_apply(b"-2", b"3");
//! h.assert_query(b"null", b"3");
//! h.assert_round_trip(&[b"null"]);
//! assert_deterministic::<Counter>(&[b"1", b"2", b"3"], &[b"null"]);
//! ```

use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Serialize, de::DeserializeOwned};

use crate::{AppError, Codec, EntryCtx, SnapshotFormat, StateMachine, rt};

/// Chunk sizes, in bytes, the checks snapshot with: a tiny one (every record crosses chunk
/// boundaries) and the host's default.
pub const CHECK_CHUNK_BYTES: [usize; 2] = [61, 1 << 20];
/// Chunk size, in bytes, of the snapshots saved in golden files.
pub const GOLDEN_CHUNK_BYTES: usize = 64 << 10;
/// Largest golden file read, in bytes.
pub const GOLDEN_FILE_BYTES_MAX: u64 = 256 << 20;
/// Set this environment variable to `1` to rewrite the golden file of the current snapshot format.
pub const UPDATE_GOLDEN_ENV: &str = "WRAFT_UPDATE_GOLDEN";

/// A check found a bug in the machine. The message says what differed and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure(pub String);

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailure {}

fn fail<T>(msg: impl Into<String>) -> Result<T, CheckFailure> {
    Err(CheckFailure(msg.into()))
}

/// Bytes shown as UTF-8 when they are, else as hex; long values are cut.
fn show(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    };
    if s.len() > MAX {
        let cut = (0..=MAX)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}… ({} bytes)", &s[..cut], bytes.len())
    } else {
        s
    }
}

fn show_result(r: &Result<Vec<u8>, AppError>) -> String {
    match r {
        Ok(b) => format!("Ok({})", show(b)),
        Err(e) => format!("Err({e})"),
    }
}

/// A machine driven natively: commands and queries as bytes, snapshots as chunk lists.
///
/// Entries get consecutive indexes from 1, term 1, and `timestamp_ms` = index unless
/// [`Harness::apply_at`] says otherwise. Cheap: one `M::default()`.
pub struct Harness<M> {
    state: Rc<M>,
    next_index: u64,
}

impl<M: StateMachine> Default for Harness<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: StateMachine> Harness<M> {
    /// A harness around `M::default()`.
    pub fn new() -> Self {
        Self {
            state: Rc::new(M::default()),
            next_index: 1,
        }
    }

    /// The current state.
    pub fn state(&self) -> &M {
        &self.state
    }

    /// The index the next [`apply`](Self::apply) gets.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Apply one encoded command, exactly as the component would (decode, `apply`, encode).
    pub fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, AppError> {
        let ctx = EntryCtx {
            index: self.next_index,
            term: 1,
            timestamp_ms: self.next_index,
        };
        self.apply_at(ctx, command)
    }

    /// Apply one encoded command with an explicit entry context (to test time-dependent logic).
    /// Later [`apply`](Self::apply) calls continue from `ctx.index + 1`.
    ///
    /// Panics if `ctx.index` is not above the previous entry's: the host never does that.
    #[track_caller]
    pub fn apply_at(&mut self, ctx: EntryCtx, command: &[u8]) -> Result<Vec<u8>, AppError> {
        assert!(
            ctx.index >= self.next_index,
            "entry index {} is not above the previous entry's {}",
            ctx.index,
            self.next_index - 1
        );
        self.next_index = ctx.index + 1;
        let m = Rc::get_mut(&mut self.state).ok_or_else(|| AppError::new(0, "state is shared"))?;
        rt::apply_one(m, &ctx, command)
    }

    /// Run one encoded query.
    pub fn query(&self, request: &[u8]) -> Result<Vec<u8>, AppError> {
        rt::query_one(&*self.state, request)
    }

    /// Encode `command` with the machine's codec, apply it, decode the output as `O`.
    ///
    /// A command type that derives `Serialize`, or a `serde_json::json!` value for a
    /// [`Json`](crate::Json) machine, both work. An output that does not decode as `O` is
    /// reported as an [`AppError`] with code [`AppError::CODE_BAD_OUTPUT`].
    pub fn apply_typed<C: Serialize, O: DeserializeOwned>(
        &mut self,
        command: &C,
    ) -> Result<O, AppError> {
        let bytes =
            M::Codec::encode(command).map_err(|e| AppError::new(AppError::CODE_BAD_COMMAND, e))?;
        let out = self.apply(&bytes)?;
        M::Codec::decode(&out).map_err(|e| AppError::new(AppError::CODE_BAD_OUTPUT, e))
    }

    /// Encode `request` with the machine's codec, run it, decode the reply as `R`.
    pub fn query_typed<Q: Serialize, R: DeserializeOwned>(
        &self,
        request: &Q,
    ) -> Result<R, AppError> {
        let bytes =
            M::Codec::encode(request).map_err(|e| AppError::new(AppError::CODE_BAD_QUERY, e))?;
        let out = self.query(&bytes)?;
        M::Codec::decode(&out).map_err(|e| AppError::new(AppError::CODE_BAD_OUTPUT, e))
    }

    /// Apply `command` and panic unless it succeeds with exactly `expected` (both shown as text).
    #[track_caller]
    pub fn assert_apply(&mut self, command: &[u8], expected: &[u8]) {
        let index = self.next_index;
        match self.apply(command) {
            Ok(out) if out == expected => {}
            other => panic!(
                "entry {index}: {}\n  expected Ok({})\n  found    {}",
                show(command),
                show(expected),
                show_result(&other)
            ),
        }
    }

    /// Apply `command` and panic unless it fails with application error `code`; returns the error.
    #[track_caller]
    pub fn assert_apply_err(&mut self, command: &[u8], code: u32) -> AppError {
        let index = self.next_index;
        match self.apply(command) {
            Err(e) if e.code == code => e,
            other => panic!(
                "entry {index}: {}\n  expected an application error with code {code}\n  found    {}",
                show(command),
                show_result(&other)
            ),
        }
    }

    /// Run `request` and panic unless the answer is exactly `expected` (both shown as text).
    #[track_caller]
    pub fn assert_query(&self, request: &[u8], expected: &[u8]) {
        match self.query(request) {
            Ok(out) if out == expected => {}
            other => panic!(
                "query {}\n  expected Ok({})\n  found    {}",
                show(request),
                show(expected),
                show_result(&other)
            ),
        }
    }

    /// Read a whole snapshot out in chunks of at most `max_chunk_bytes`.
    pub fn snapshot(&self, max_chunk_bytes: usize) -> Result<Vec<Vec<u8>>, String> {
        let mut reader = M::Snapshot::begin_snapshot(Rc::clone(&self.state))?;
        let mut chunks = Vec::new();
        while let Some(c) = M::Snapshot::next_chunk(&mut reader, max_chunk_bytes)? {
            if c.len() > max_chunk_bytes {
                return Err(format!(
                    "chunk of {} bytes exceeds the {max_chunk_bytes} asked for",
                    c.len()
                ));
            }
            chunks.push(c);
        }
        Ok(chunks)
    }

    /// Restore a fresh harness from `chunks` written in format `M::SNAPSHOT_FORMAT`.
    pub fn restore<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, String> {
        Self::restore_format(M::SNAPSHOT_FORMAT, chunks)
    }

    /// Restore a fresh harness from `chunks` written in snapshot `format` — an older one is what
    /// an upgrade hands a new version.
    pub fn restore_format<'a>(
        format: u32,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, String> {
        let mut r = M::Snapshot::begin_restore(format)?;
        for c in chunks {
            M::Snapshot::write_chunk(&mut r, c)?;
        }
        Ok(Self {
            state: Rc::new(M::Snapshot::finish(r)?),
            next_index: 1,
        })
    }

    /// Snapshot into chunks of at most `max_chunk_bytes` and restore a new harness from them; the
    /// new harness continues at this one's next index.
    pub fn snapshot_restore(&self, max_chunk_bytes: usize) -> Result<Self, String> {
        let chunks = self.snapshot(max_chunk_bytes)?;
        let mut h = Self::restore(chunks.iter().map(Vec::as_slice))?;
        h.next_index = self.next_index;
        Ok(h)
    }

    /// Snapshot this state and restore it into a fresh instance, for each of
    /// [`CHECK_CHUNK_BYTES`]; the restored instance must answer every query in `queries` exactly
    /// as this one does, and must write a byte-identical snapshot.
    ///
    /// Catches a restore that drops, duplicates or rewrites records, and state that never reaches
    /// the snapshot. Cost: two snapshots and two restores per chunk size.
    pub fn check_round_trip(&self, queries: &[&[u8]]) -> Result<(), CheckFailure> {
        for chunk_bytes in CHECK_CHUNK_BYTES {
            let original = self
                .snapshot(chunk_bytes)
                .or_else(|e| fail(format!("snapshot ({chunk_bytes}-byte chunks) failed: {e}")))?;
            let restored = Self::restore(original.iter().map(Vec::as_slice)).or_else(|e| {
                fail(format!(
                    "restoring its own snapshot ({chunk_bytes}-byte chunks) failed: {e}"
                ))
            })?;
            for q in queries {
                let (want, got) = (self.query(q), restored.query(q));
                if want != got {
                    return fail(format!(
                        "after snapshot → restore ({chunk_bytes}-byte chunks), query {} \
                         answers differently:\n  before {}\n  after  {}\n(the restore loses or \
                         changes state, or some state is not in the snapshot's records)",
                        show(q),
                        show_result(&want),
                        show_result(&got)
                    ));
                }
            }
            let again = restored
                .snapshot(chunk_bytes)
                .or_else(|e| fail(format!("snapshot of the restored state failed: {e}")))?;
            if let Some(diff) = first_difference(&original, &again) {
                return fail(format!(
                    "after snapshot → restore ({chunk_bytes}-byte chunks), the restored state \
                     writes a different snapshot: {diff} (the restore loses, reorders or changes \
                     records)"
                ));
            }
        }
        Ok(())
    }

    /// [`check_round_trip`](Self::check_round_trip), panicking with its message.
    #[track_caller]
    pub fn assert_round_trip(&self, queries: &[&[u8]]) {
        if let Err(e) = self.check_round_trip(queries) {
            panic!("{} round trip: {e}", M::NAME);
        }
    }
}

/// Where two chunk lists first differ, or `None` if they are identical.
fn first_difference(a: &[Vec<u8>], b: &[Vec<u8>]) -> Option<String> {
    if a.len() != b.len() {
        let (la, lb): (usize, usize) = (a.iter().map(Vec::len).sum(), b.iter().map(Vec::len).sum());
        return Some(format!(
            "{} chunks ({la} bytes) vs {} chunks ({lb} bytes)",
            a.len(),
            b.len()
        ));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            let at = x
                .iter()
                .zip(y)
                .position(|(p, q)| p != q)
                .unwrap_or(x.len().min(y.len()));
            return Some(format!(
                "chunk {i} differs at byte {at} ({} vs {} bytes long)",
                x.len(),
                y.len()
            ));
        }
    }
    None
}

/// Apply `log` the way three replicas would — two from scratch, one restarting from a snapshot
/// taken half-way — and check that they agree: the same output for every entry, the same answer
/// to every query in `queries`, and byte-identical snapshots at the end.
///
/// Catches iteration over a `HashMap`/`HashSet` (each instance gets its own random hash seed
/// natively), state kept outside the snapshot (a cache, a counter not in any record), and
/// anything else that makes `apply` depend on more than the state and the entry. Entries get the
/// harness's indexes (1, 2, …). Cost: three applies of `log`, three snapshots, one restore.
pub fn check_deterministic<M: StateMachine>(
    log: &[&[u8]],
    queries: &[&[u8]],
) -> Result<(), CheckFailure> {
    let half = log.len() / 2;
    let mut a = Harness::<M>::new();
    let mut b = Harness::<M>::new();
    let mut c = Harness::<M>::new();
    for (i, cmd) in log.iter().enumerate() {
        let index = a.next_index();
        if i == half {
            c = c.snapshot_restore(CHECK_CHUNK_BYTES[1]).or_else(|e| {
                fail(format!(
                    "replica C could not restart from its snapshot after entry {}: {e}",
                    index - 1
                ))
            })?;
        }
        let (oa, ob, oc) = (a.apply(cmd), b.apply(cmd), c.apply(cmd));
        if oa != ob {
            return fail(format!(
                "entry {index} ({}): two replicas applying the same log disagree:\n  replica A \
                 {}\n  replica B {}\n(apply depends on something other than the state and the \
                 entry: a HashMap's iteration order, a clock, randomness?)",
                show(cmd),
                show_result(&oa),
                show_result(&ob)
            ));
        }
        if oa != oc {
            return fail(format!(
                "entry {index} ({}): a replica restarted from a snapshot after entry {half} \
                 disagrees:\n  replica A {}\n  restarted {}\n(some state is not in the \
                 snapshot, or the restore changes it)",
                show(cmd),
                show_result(&oa),
                show_result(&oc)
            ));
        }
    }
    for q in queries {
        let (qa, qb, qc) = (a.query(q), b.query(q), c.query(q));
        if qa != qb || qa != qc {
            return fail(format!(
                "after {} entries, query {} answers differently:\n  replica A {}\n  replica B \
                 {}\n  restarted {}",
                log.len(),
                show(q),
                show_result(&qa),
                show_result(&qb),
                show_result(&qc)
            ));
        }
    }
    let snap = |h: &Harness<M>, who: &str| {
        h.snapshot(CHECK_CHUNK_BYTES[1])
            .or_else(|e| fail(format!("snapshot of replica {who} failed: {e}")))
    };
    let (sa, sb, sc) = (snap(&a, "A")?, snap(&b, "B")?, snap(&c, "C")?);
    if let Some(diff) = first_difference(&sa, &sb) {
        return fail(format!(
            "two replicas applied the same {} entries but their snapshots are not \
             byte-identical: {diff}\n(records come out in an order that depends on more than \
             the state: iterating a HashMap or HashSet? use BTreeMap/BTreeSet)",
            log.len()
        ));
    }
    if let Some(diff) = first_difference(&sa, &sc) {
        return fail(format!(
            "a replica restarted from a snapshot after entry {half} ends with a different \
             snapshot than one that applied all {} entries: {diff}\n(some state is not in the \
             snapshot, or the restore changes it)",
            log.len()
        ));
    }
    Ok(())
}

/// [`check_deterministic`], panicking with its message.
#[track_caller]
pub fn assert_deterministic<M: StateMachine>(log: &[&[u8]], queries: &[&[u8]]) {
    if let Err(e) = check_deterministic::<M>(log, queries) {
        panic!("{} determinism: {e}", M::NAME);
    }
}

/// The answer recorded in a golden file: `Ok(bytes)` or an application error.
type Answer = Result<Vec<u8>, (u32, String)>;

/// A golden snapshot file: a snapshot written by one version of a machine, plus questions and the
/// answers that version gave. Encoded with postcard behind a magic and version, followed by the
/// CRC-32C of everything before it.
#[derive(serde::Serialize, serde::Deserialize)]
struct GoldenFile {
    machine: String,
    machine_version: String,
    snapshot_format: u32,
    answers: Vec<(Vec<u8>, Answer)>,
    chunks: Vec<Vec<u8>>,
}

const GOLDEN_MAGIC: &[u8; 8] = b"WRFTGLD1";

fn to_answer(r: Result<Vec<u8>, AppError>) -> Answer {
    r.map_err(|e| (e.code, e.message))
}

fn show_answer(a: &Answer) -> String {
    match a {
        Ok(b) => format!("Ok({})", show(b)),
        Err((code, msg)) => format!("Err(application error {code}: {msg})"),
    }
}

/// What [`check_golden_snapshots`] did.
#[derive(Debug, Clone, Default)]
pub struct GoldenReport {
    /// The golden file written for the current format, if it was missing (or
    /// [`UPDATE_GOLDEN_ENV`] was set). Commit it.
    pub written: Option<PathBuf>,
    /// Every golden file restored, with its snapshot format.
    pub checked: Vec<(PathBuf, u32)>,
}

/// Snapshots saved by every version of the machine must keep restoring.
///
/// Golden files live in `dir`, one per snapshot format: `format-<N>.snap`. If the file for the
/// current [`StateMachine::SNAPSHOT_FORMAT`] is missing, `setup` builds a state on a fresh
/// harness and the file is written with its snapshot and the answers to `queries` (commit it; it
/// is the old format of your next format bump). Then every `*.snap` in `dir` is restored — with
/// the format it was written in, exactly as an upgrade restores the previous version's snapshot
/// — and must give its recorded answers, and the restored state must pass
/// [`Harness::check_round_trip`] in the current format.
///
/// Fails with the file, its format and what went wrong: a format outside
/// [`StateMachine::OLDEST_SNAPSHOT_FORMAT`]`..=SNAPSHOT_FORMAT`, a record the migration cannot
/// read, a changed answer, a damaged file. Cost: one snapshot and restore per file.
pub fn check_golden_snapshots<M: StateMachine>(
    dir: &Path,
    setup: impl FnOnce(&mut Harness<M>),
    queries: &[&[u8]],
) -> Result<GoldenReport, CheckFailure> {
    let mut report = GoldenReport::default();
    let current = dir.join(format!("format-{}.snap", M::SNAPSHOT_FORMAT));
    let update = std::env::var(UPDATE_GOLDEN_ENV).is_ok_and(|v| v == "1");
    if update || !current.exists() {
        let mut h = Harness::<M>::new();
        setup(&mut h);
        let chunks = h
            .snapshot(GOLDEN_CHUNK_BYTES)
            .or_else(|e| fail(format!("snapshot for {} failed: {e}", current.display())))?;
        let file = GoldenFile {
            machine: M::NAME.into(),
            machine_version: M::VERSION.into(),
            snapshot_format: M::SNAPSHOT_FORMAT,
            answers: queries
                .iter()
                .map(|q| (q.to_vec(), to_answer(h.query(q))))
                .collect(),
            chunks,
        };
        write_golden(&current, &file)?;
        report.written = Some(current.clone());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .or_else(|e| {
            fail(format!(
                "cannot list golden snapshots in {}: {e}",
                dir.display()
            ))
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    files.sort();
    for path in files {
        let g = read_golden(&path)?;
        let at = |what: String| {
            CheckFailure(format!(
                "{} (written by {} {}, snapshot format {}): {what}",
                path.display(),
                g.machine,
                g.machine_version,
                g.snapshot_format
            ))
        };
        if g.machine != M::NAME {
            return Err(at(format!(
                "a snapshot of another machine, this is {:?}",
                M::NAME
            )));
        }
        let h = Harness::<M>::restore_format(g.snapshot_format, g.chunks.iter().map(Vec::as_slice))
            .map_err(|e| {
                at(format!(
                    "{} {} cannot restore it: {e}\n(a cluster running that version could not \
                     upgrade to this one)",
                    M::NAME,
                    M::VERSION
                ))
            })?;
        for (q, want) in &g.answers {
            let got = to_answer(h.query(q));
            if &got != want {
                return Err(at(format!(
                    "after restoring it, query {} answers differently:\n  recorded {}\n  now      {}",
                    show(q),
                    show_answer(want),
                    show_answer(&got)
                )));
            }
        }
        let qs: Vec<&[u8]> = g.answers.iter().map(|(q, _)| q.as_slice()).collect();
        h.check_round_trip(&qs)
            .map_err(|e| at(format!("the restored state fails the round trip: {e}")))?;
        report.checked.push((path.clone(), g.snapshot_format));
    }
    Ok(report)
}

/// [`check_golden_snapshots`], panicking with its message; prints which file it wrote, if any.
#[track_caller]
pub fn assert_golden_snapshots<M: StateMachine>(
    dir: &Path,
    setup: impl FnOnce(&mut Harness<M>),
    queries: &[&[u8]],
) -> GoldenReport {
    match check_golden_snapshots::<M>(dir, setup, queries) {
        Ok(r) => {
            if let Some(p) = &r.written {
                eprintln!(
                    "wrote golden snapshot {} (snapshot format {}); commit it",
                    p.display(),
                    M::SNAPSHOT_FORMAT
                );
            }
            r
        }
        Err(e) => panic!("{} golden snapshots: {e}", M::NAME),
    }
}

fn write_golden(path: &Path, g: &GoldenFile) -> Result<(), CheckFailure> {
    let io = |e: std::io::Error| CheckFailure(format!("writing {}: {e}", path.display()));
    let mut bytes = GOLDEN_MAGIC.to_vec();
    bytes = postcard::to_extend(g, bytes)
        .or_else(|e| fail(format!("encoding {}: {e}", path.display())))?;
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    // Write then rename: a crash leaves the old file or the new one, never half of one.
    let tmp = path.with_extension(format!("snap.tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn read_golden(path: &Path) -> Result<GoldenFile, CheckFailure> {
    let bad = |what: String| CheckFailure(format!("golden snapshot {}: {what}", path.display()));
    let len = std::fs::metadata(path)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if len > GOLDEN_FILE_BYTES_MAX {
        return Err(bad(format!(
            "{len} bytes, over the {GOLDEN_FILE_BYTES_MAX}-byte limit"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if bytes.len() < GOLDEN_MAGIC.len() + 4 || !bytes.starts_with(GOLDEN_MAGIC) {
        return Err(bad(format!(
            "not a golden snapshot (expected magic {:?})",
            String::from_utf8_lossy(GOLDEN_MAGIC)
        )));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let want = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let found = crc32c::crc32c(body);
    if want != found {
        return Err(bad(format!(
            "checksum mismatch (expected {want:08x}, computed {found:08x}): the file is damaged"
        )));
    }
    postcard::from_bytes(&body[GOLDEN_MAGIC.len()..])
        .map_err(|e| bad(format!("cannot decode: {e}")))
}
