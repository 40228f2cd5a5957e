//! The harness's checks pass on correct machines and fail, naming the cause, on machines with the
//! bugs they exist to catch.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use wraft_guest::testing::{
    Harness, assert_deterministic, check_deterministic, check_golden_snapshots,
};
use wraft_guest::{AppError, DefaultSnapshot, EntryCtx, Json, Records, StateMachine};

/// Commands: `["put", key, value]`; queries: a key, or `null` for every entry.
macro_rules! map_machine {
    ($name:ident, $map:ty, $kind:literal, format = $format:literal, oldest = $oldest:literal) => {
        #[derive(Default)]
        struct $name {
            map: $map,
            applied: u64,
        }

        impl StateMachine for $name {
            const NAME: &'static str = $kind;
            const VERSION: &'static str = concat!(stringify!($name), "-", $format);
            const SNAPSHOT_FORMAT: u32 = $format;
            const OLDEST_SNAPSHOT_FORMAT: u32 = $oldest;
            type Codec = Json;
            type Snapshot = DefaultSnapshot;
            type Command = (String, String);
            type Output = Option<String>;
            type Query = Option<String>;
            type Reply = Vec<(String, String)>;

            fn apply(
                &mut self,
                _: &EntryCtx,
                (k, v): (String, String),
            ) -> Result<Option<String>, AppError> {
                self.applied += 1;
                Ok(self.map.insert(k, v))
            }

            fn query(&self, q: Option<String>) -> Result<Vec<(String, String)>, AppError> {
                Ok(self
                    .map
                    .iter()
                    .filter(|(k, _)| q.as_ref().is_none_or(|q| *k == q))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect())
            }
        }
    };
}

map_machine!(Good, BTreeMap<String, String>, "map", format = 1, oldest = 1);
map_machine!(Hashy, HashMap<String, String>, "map", format = 1, oldest = 1);
map_machine!(Lossy, BTreeMap<String, String>, "map", format = 1, oldest = 1);
map_machine!(GoodV2, BTreeMap<String, String>, "map", format = 2, oldest = 1);
map_machine!(StrictV2, BTreeMap<String, String>, "map", format = 2, oldest = 2);

impl Records for Good {
    type Record<'a> = (&'a str, &'a str);
    type OwnedRecord = (String, String);
    fn records(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    fn restore_record(&mut self, (k, v): (String, String)) -> Result<(), String> {
        self.map.insert(k, v);
        Ok(())
    }
}

/// Iterates a `HashMap`: each instance has its own hash seed, so record order differs.
impl Records for Hashy {
    type Record<'a> = (&'a str, &'a str);
    type OwnedRecord = (String, String);
    fn records(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    fn restore_record(&mut self, (k, v): (String, String)) -> Result<(), String> {
        self.map.insert(k, v);
        Ok(())
    }
}

/// Drops every key that starts with `z` on restore.
impl Records for Lossy {
    type Record<'a> = (&'a str, &'a str);
    type OwnedRecord = (String, String);
    fn records(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    fn restore_record(&mut self, (k, v): (String, String)) -> Result<(), String> {
        if !k.starts_with('z') {
            self.map.insert(k, v);
        }
        Ok(())
    }
}

/// Format 2 stores `(key, value, value length)`; migrates format 1 records.
#[derive(Deserialize)]
struct V1Record(String, String);

impl Records for GoodV2 {
    type Record<'a> = (&'a str, &'a str, u64);
    type OwnedRecord = (String, String, u64);
    fn records(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.map
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str(), v.len() as u64))
    }
    fn restore_record(&mut self, (k, v, _): (String, String, u64)) -> Result<(), String> {
        self.map.insert(k, v);
        Ok(())
    }
    fn restore_old_record(&mut self, format: u32, record: &[u8]) -> Result<(), String> {
        match format {
            1 => {
                let V1Record(k, v) = wraft_guest::decode_record(record)?;
                self.map.insert(k, v);
                Ok(())
            }
            f => Err(format!("format {f} unsupported")),
        }
    }
}

/// Format 2 without a migration: refuses format 1.
impl Records for StrictV2 {
    type Record<'a> = (&'a str, &'a str, u64);
    type OwnedRecord = (String, String, u64);
    fn records(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.map
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str(), v.len() as u64))
    }
    fn restore_record(&mut self, (k, v, _): (String, String, u64)) -> Result<(), String> {
        self.map.insert(k, v);
        Ok(())
    }
}

wraft_guest::machine!(Good);

fn log(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            serde_json::to_vec(&(format!("{}{i:03}", ["a", "m", "z"][i % 3]), format!("v{i}")))
                .unwrap()
        })
        .collect()
}

fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(Vec::as_slice).collect()
}

const ALL: &[u8] = b"null";

fn filled<M: StateMachine>(n: usize) -> Harness<M> {
    let mut h = Harness::<M>::new();
    for c in log(n) {
        h.apply(&c).unwrap();
    }
    h
}

#[test]
fn a_correct_machine_passes_every_check() {
    let l = log(64);
    assert_deterministic::<Good>(&refs(&l), &[ALL, br#""m004""#]);
    filled::<Good>(64).assert_round_trip(&[ALL]);
}

#[test]
fn assert_helpers_report_entry_expected_and_found() {
    let mut h = Harness::<Good>::new();
    h.assert_apply(br#"["a","1"]"#, b"null");
    h.assert_query(ALL, br#"[["a","1"]]"#);
    let e = h.assert_apply_err(b"not json", AppError::CODE_BAD_COMMAND);
    assert!(e.message.contains("invalid JSON"), "{e}");
    let typed: Option<String> = h.apply_typed(&("a", "2")).unwrap();
    assert_eq!(typed.as_deref(), Some("1"));
    let all: Vec<(String, String)> = h.query_typed(&None::<String>).unwrap();
    assert_eq!(all, [("a".to_string(), "2".to_string())]);
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.assert_apply(br#"["b","1"]"#, b"\"wrong\"")
    }))
    .expect_err("a wrong output must fail the assertion");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("entry 4")
            && msg.contains("expected Ok(\"wrong\")")
            && msg.contains("found    Ok(null)"),
        "{msg}"
    );
}

#[test]
fn iterating_a_hashmap_fails_the_determinism_check() {
    let l = log(64);
    let e = check_deterministic::<Hashy>(&refs(&l), &[]).expect_err("HashMap order must be caught");
    assert!(
        e.0.contains("not byte-identical") && e.0.contains("HashMap"),
        "{e}"
    );
    // The answers also show it, when the query iterates.
    let e = check_deterministic::<Hashy>(&refs(&l), &[ALL]).expect_err("caught by a query");
    assert!(e.0.contains("query null answers differently"), "{e}");
}

#[test]
fn state_outside_the_snapshot_fails_the_determinism_check() {
    // `applied` is not in the records; a machine whose output depends on it diverges on restart.
    #[derive(Default)]
    struct Counting(Good);
    impl StateMachine for Counting {
        const NAME: &'static str = "map";
        const VERSION: &'static str = "0";
        type Codec = Json;
        type Snapshot = DefaultSnapshot;
        type Command = (String, String);
        type Output = u64;
        type Query = ();
        type Reply = ();
        fn apply(&mut self, ctx: &EntryCtx, c: (String, String)) -> Result<u64, AppError> {
            self.0.apply(ctx, c)?;
            Ok(self.0.applied)
        }
        fn query(&self, _: ()) -> Result<(), AppError> {
            Ok(())
        }
    }
    impl Records for Counting {
        type Record<'a> = (&'a str, &'a str);
        type OwnedRecord = (String, String);
        fn records(&self) -> impl Iterator<Item = (&str, &str)> {
            self.0.records()
        }
        fn restore_record(&mut self, r: (String, String)) -> Result<(), String> {
            self.0.restore_record(r)
        }
    }
    let l = log(10);
    let e =
        check_deterministic::<Counting>(&refs(&l), &[]).expect_err("hidden state must be caught");
    assert!(
        e.0.contains("entry 6") && e.0.contains("restarted from a snapshot after entry 5"),
        "{e}"
    );
}

#[test]
fn a_restore_that_drops_records_fails_the_round_trip() {
    let h = filled::<Lossy>(30);
    let e = h
        .check_round_trip(&[br#""a000""#])
        .expect_err("dropped records must be caught");
    assert!(e.0.contains("writes a different snapshot"), "{e}");
    let e = h.check_round_trip(&[ALL]).expect_err("caught by a query");
    assert!(e.0.contains("query null answers differently"), "{e}");
    // And the determinism check sees it through the restarted replica.
    let l = log(30);
    let e = check_deterministic::<Lossy>(&refs(&l), &[ALL]).expect_err("caught by replay");
    assert!(e.0.contains("restarted"), "{e}");
}

#[test]
fn a_format_bump_with_a_migration_restores_the_old_golden_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let setup = |h: &mut Harness<Good>| {
        for c in log(20) {
            h.apply(&c).unwrap();
        }
    };
    let r = check_golden_snapshots::<Good>(dir.path(), setup, &[ALL, br#""z002""#]).unwrap();
    assert_eq!(
        r.written.as_deref(),
        Some(dir.path().join("format-1.snap").as_path())
    );
    // Version 2 bumps the format and migrates: both files restore and answer as recorded.
    let setup2 = |h: &mut Harness<GoodV2>| {
        for c in log(5) {
            h.apply(&c).unwrap();
        }
    };
    let r = check_golden_snapshots::<GoodV2>(dir.path(), setup2, &[ALL]).unwrap();
    assert!(r.written.is_some());
    let formats: Vec<u32> = r.checked.iter().map(|(_, f)| *f).collect();
    assert_eq!(formats, [1, 2]);
    // A second run writes nothing.
    let r = check_golden_snapshots::<GoodV2>(dir.path(), |_| unreachable!(), &[ALL]).unwrap();
    assert!(r.written.is_none());
}

#[test]
fn a_format_bump_without_a_migration_fails_on_the_old_golden_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    check_golden_snapshots::<Good>(
        dir.path(),
        |h| {
            h.apply(br#"["k","v"]"#).unwrap();
        },
        &[ALL],
    )
    .unwrap();
    let e = check_golden_snapshots::<StrictV2>(dir.path(), |_| {}, &[ALL])
        .expect_err("format 1 cannot restore without a migration");
    assert!(
        e.0.contains("format-1.snap")
            && e.0
                .contains("restores snapshot formats 2..=2, got format 1"),
        "{e}"
    );
}

#[test]
fn a_golden_snapshot_whose_answers_changed_or_whose_bytes_rotted_fails() {
    let dir = tempfile::tempdir().unwrap();
    check_golden_snapshots::<Good>(
        dir.path(),
        |h| {
            h.apply(br#"["zed","v"]"#).unwrap();
        },
        &[ALL],
    )
    .unwrap();
    // The lossy restore loses "zed": the recorded answer no longer holds.
    let e =
        check_golden_snapshots::<Lossy>(dir.path(), |_| {}, &[ALL]).expect_err("changed answer");
    assert!(
        e.0.contains("answers differently") && e.0.contains("zed"),
        "{e}"
    );
    let path = dir.path().join("format-1.snap");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = check_golden_snapshots::<Good>(dir.path(), |_| {}, &[ALL]).expect_err("damaged file");
    assert!(e.0.contains("checksum mismatch"), "{e}");
}
