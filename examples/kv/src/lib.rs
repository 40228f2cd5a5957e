//! A replicated string key/value store: put, delete and compare-and-swap commands; get and prefix
//! scan queries; JSON on the wire, or postcard for programs ([`JsonOrPostcard`]).
//!
//! ```text
//! {"op":"put","key":"a","value":"1"}                       -> {"prev":null}
//! {"op":"put","key":"a","value":"3","prev_kv":false}       -> null
//! {"op":"cas","key":"a","expected":"1","new":"2"}           -> {"swapped":true,"current":"2"}
//! {"op":"delete","key":"a"}                                 -> {"prev":"2"}
//! query {"op":"get","key":"a"}                              -> {"value":null}
//! query {"op":"scan","prefix":"user/","limit":100}          -> {"entries":[["user/1","x"]],"more":false}
//! ```
//!
//! A program can send the same commands and queries in the binary form instead: a 0 byte, then
//! the postcard encoding of a [`Command`] or [`Query`]; the answer comes back as a 0 byte and the
//! postcard of an [`Output`] or [`Reply`] ([`JsonOrPostcard`]). A Rust program encodes and
//! decodes these very types with postcard: their serde impls write the binary form for any format
//! that is not human-readable (layout: the private `bin` module).

use std::collections::BTreeMap;
use std::ops::Bound;

use wraft_guest::{AppError, DefaultSnapshot, EntryCtx, JsonOrPostcard, Records, StateMachine};

/// Most entries one scan returns; a scan with more matches reports `more: true`.
pub const SCAN_LIMIT_MAX: usize = 10_000;
/// Longest key accepted, in bytes.
pub const KEY_BYTES_MAX: usize = 4 << 10;
/// Application error code: the key is empty or longer than [`KEY_BYTES_MAX`].
pub const ERR_BAD_KEY: u32 = 1;

/// The replicated state. A `BTreeMap`, so iteration (scans, snapshots) is ordered identically on
/// every replica.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Kv {
    map: BTreeMap<Key, String>,
}

/// A write. In JSON `{"op":"put",…}`, decoded by hand (see `command_de`: serde's derived decoder
/// for an internally tagged enum first copies the whole object into a buffer of its own, which
/// was a third of the machine's time per put); in the binary form tagged by variant index.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value`. The previous value comes back unless `prev_kv` is false (etcd's
    /// `prev_kv` option: a writer that does not need it saves encoding and shipping it).
    Put {
        key: String,
        value: String,
        prev_kv: bool,
    },
    /// Remove `key`.
    Delete { key: String },
    /// Set `key` to `new` (or remove it if `new` is null) only if its current value equals
    /// `expected` (null = absent).
    Cas {
        key: String,
        expected: Option<String>,
        new: Option<String>,
    },
}

/// The result of a write. In JSON untagged (`{"prev":…}`, `{"swapped":…}`, `null`); in the binary
/// form tagged by variant index.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Put and delete return the previous value.
    Prev { prev: Option<String> },
    /// Compare-and-swap says whether it swapped and what the value is now.
    Cas {
        swapped: bool,
        current: Option<String>,
    },
    /// A put with `prev_kv: false`: nothing to report (`null`).
    Written,
}

/// A read. In JSON `{"op":"get",…}`; in the binary form tagged by variant index.
#[derive(Debug, PartialEq, Eq)]
pub enum Query {
    /// The value of `key`.
    Get { key: String },
    /// Entries whose key starts with `prefix`, in key order, starting after `after` if given.
    Scan {
        prefix: String,
        after: Option<String>,
        limit: Option<usize>,
    },
}

/// The answer to a read. In JSON untagged; in the binary form tagged by variant index.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer to `get`.
    Value { value: Option<String> },
    /// Answer to `scan`; `more` is true if the limit cut the list short.
    Entries {
        entries: Vec<(String, String)>,
        more: bool,
    },
}

mod key;
mod wire;

use key::Key;

fn check_key(key: &str) -> Result<(), AppError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(AppError::new(
            ERR_BAD_KEY,
            format!("key must be 1..={KEY_BYTES_MAX} bytes, got {}", key.len()),
        ));
    }
    Ok(())
}

impl Kv {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl StateMachine for Kv {
    const NAME: &'static str = "kv";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Codec = JsonOrPostcard;
    type Snapshot = DefaultSnapshot;
    type Command = Command;
    type Output = Output;
    type Query = Query;
    type Reply = Reply;

    fn apply(&mut self, _ctx: &EntryCtx, cmd: Command) -> Result<Output, AppError> {
        match cmd {
            Command::Put {
                key,
                value,
                prev_kv,
            } => {
                check_key(&key)?;
                let prev = self.map.insert(Key::new(key), value);
                Ok(match prev_kv {
                    true => Output::Prev { prev },
                    false => Output::Written,
                })
            }
            Command::Delete { key } => Ok(Output::Prev {
                prev: self.map.remove(&Key::new(key)),
            }),
            Command::Cas { key, expected, new } => {
                check_key(&key)?;
                let key = Key::new(key);
                let current = self.map.get(&key);
                if current != expected.as_ref() {
                    return Ok(Output::Cas {
                        swapped: false,
                        current: current.cloned(),
                    });
                }
                match &new {
                    Some(v) => self.map.insert(key, v.clone()),
                    None => self.map.remove(&key),
                };
                Ok(Output::Cas {
                    swapped: true,
                    current: new,
                })
            }
        }
    }

    fn query(&self, q: Query) -> Result<Reply, AppError> {
        match q {
            Query::Get { key } => Ok(Reply::Value {
                value: self.map.get(&Key::new(key)).cloned(),
            }),
            Query::Scan {
                prefix,
                after,
                limit,
            } => {
                let limit = limit.unwrap_or(SCAN_LIMIT_MAX).min(SCAN_LIMIT_MAX);
                let start = match &after {
                    Some(a) if a.as_str() >= prefix.as_str() => Bound::Excluded(a.as_str()),
                    _ => Bound::Included(prefix.as_str()),
                };
                let mut it = self
                    .map
                    .range::<str, _>((start, Bound::Unbounded))
                    .take_while(|(k, _)| k.text.starts_with(&prefix));
                let entries: Vec<_> = it
                    .by_ref()
                    .take(limit)
                    .map(|(k, v)| (k.text.clone(), v.clone()))
                    .collect();
                let more = it.next().is_some();
                Ok(Reply::Entries { entries, more })
            }
        }
    }
}

impl Records for Kv {
    type Record<'a> = (&'a str, &'a str);
    type OwnedRecord = (String, String);

    fn records(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.text.as_str(), v.as_str()))
    }

    fn restore_record(&mut self, (k, v): (String, String)) -> Result<(), String> {
        // Records arrive in key order; anything else means a corrupt or foreign snapshot.
        if let Some((last, _)) = self.map.last_key_value()
            && last.text >= k
        {
            return Err(format!("keys out of order: {k:?} after {:?}", last.text));
        }
        self.map.insert(Key::new(k), v);
        Ok(())
    }
}

wraft_guest::machine!(Kv);

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use serde_json::json;
    use wraft_guest::testing::Harness;

    fn apply(h: &mut Harness<Kv>, cmd: serde_json::Value) -> Result<serde_json::Value, AppError> {
        h.apply(&serde_json::to_vec(&cmd).unwrap())
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn query(h: &Harness<Kv>, q: serde_json::Value) -> serde_json::Value {
        serde_json::from_slice(&h.query(&serde_json::to_vec(&q).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn put_get_delete_report_previous_values() {
        let mut h = Harness::<Kv>::new();
        assert_eq!(
            apply(&mut h, json!({"op":"put","key":"a","value":"1"})).unwrap(),
            json!({"prev":null})
        );
        assert_eq!(
            apply(&mut h, json!({"op":"put","key":"a","value":"2"})).unwrap(),
            json!({"prev":"1"})
        );
        assert_eq!(
            query(&h, json!({"op":"get","key":"a"})),
            json!({"value":"2"})
        );
        assert_eq!(
            apply(&mut h, json!({"op":"delete","key":"a"})).unwrap(),
            json!({"prev":"2"})
        );
        assert_eq!(
            query(&h, json!({"op":"get","key":"a"})),
            json!({"value":null})
        );
    }

    /// `bytes` (a 0 byte, then postcard) decoded as `T`.
    fn from_binary<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        assert_eq!(
            bytes.first(),
            Some(&JsonOrPostcard::BINARY_TAG),
            "{bytes:?}"
        );
        postcard::from_bytes(&bytes[1..]).unwrap()
    }

    fn bin(value: &impl Serialize) -> Vec<u8> {
        JsonOrPostcard::encode_binary(value).unwrap()
    }

    #[test]
    fn a_binary_put_is_these_bytes() {
        // `wraft bench --codec postcard` writes these bytes by hand: they must not drift.
        let put = Command::Put {
            key: "k1".into(),
            value: "v".repeat(200),
            prev_kv: false,
        };
        let mut want = vec![0, 0, 2, b'k', b'1', 0xc8, 0x01];
        want.extend(std::iter::repeat_n(b'v', 200));
        want.push(0);
        assert_eq!(bin(&put), want);
    }

    #[test]
    fn binary_and_json_commands_share_one_state_and_are_answered_in_their_own_form() {
        let mut h = Harness::<Kv>::new();
        let put = |key: &str, value: &str, prev_kv| Command::Put {
            key: key.into(),
            value: value.into(),
            prev_kv,
        };
        let out = h.apply(&bin(&put("a", "1", true))).unwrap();
        assert_eq!(from_binary::<Output>(&out), Output::Prev { prev: None });
        let out = h.apply(&bin(&put("a", "2", false))).unwrap();
        assert_eq!(from_binary::<Output>(&out), Output::Written);
        // A JSON client sees the binary client's write, and the other way round.
        assert_eq!(
            query(&h, json!({"op":"get","key":"a"})),
            json!({"value":"2"})
        );
        apply(&mut h, json!({"op":"put","key":"b","value":"3"})).unwrap();
        let reply = h.query(&bin(&Query::Get { key: "b".into() })).unwrap();
        assert_eq!(
            from_binary::<Reply>(&reply),
            Reply::Value {
                value: Some("3".into())
            }
        );
        let cas = Command::Cas {
            key: "a".into(),
            expected: Some("2".into()),
            new: None,
        };
        assert_eq!(
            from_binary::<Output>(&h.apply(&bin(&cas)).unwrap()),
            Output::Cas {
                swapped: true,
                current: None
            }
        );
        let out = h.apply(&bin(&Command::Delete { key: "b".into() })).unwrap();
        assert_eq!(
            from_binary::<Output>(&out),
            Output::Prev {
                prev: Some("3".into())
            }
        );
        for k in ["p/1", "p/2", "p/3"] {
            h.apply(&bin(&put(k, k, false))).unwrap();
        }
        let scan = Query::Scan {
            prefix: "p/".into(),
            after: Some("p/1".into()),
            limit: Some(1),
        };
        assert_eq!(
            from_binary::<Reply>(&h.query(&bin(&scan)).unwrap()),
            Reply::Entries {
                entries: vec![("p/2".into(), "p/2".into())],
                more: true
            }
        );
    }

    #[test]
    fn every_variant_has_pinned_binary_bytes_and_the_json_forms_are_unchanged() {
        let some = |v: &str| Some(v.to_owned());
        let commands = [
            (
                Command::Put {
                    key: "k".into(),
                    value: "v".into(),
                    prev_kv: false,
                },
                vec![0, 0, 1, b'k', 1, b'v', 0],
            ),
            (Command::Delete { key: "k".into() }, vec![0, 1, 1, b'k']),
            (
                Command::Cas {
                    key: "k".into(),
                    expected: None,
                    new: some("n"),
                },
                vec![0, 2, 1, b'k', 0, 1, 1, b'n'],
            ),
        ];
        for (c, bytes) in commands {
            assert_eq!(bin(&c), bytes, "{c:?}");
            assert_eq!(from_binary::<Command>(&bytes), c);
        }
        let outputs = [
            (Output::Prev { prev: None }, vec![0, 0, 0]),
            (
                Output::Cas {
                    swapped: true,
                    current: some("x"),
                },
                vec![0, 1, 1, 1, 1, b'x'],
            ),
            (Output::Written, vec![0, 2]),
        ];
        for (o, bytes) in outputs {
            assert_eq!(bin(&o), bytes, "{o:?}");
            assert_eq!(from_binary::<Output>(&bytes), o);
        }
        let queries = [
            (Query::Get { key: "k".into() }, vec![0, 0, 1, b'k']),
            (
                Query::Scan {
                    prefix: "p".into(),
                    after: None,
                    limit: Some(5),
                },
                vec![0, 1, 1, b'p', 0, 1, 5],
            ),
        ];
        for (q, bytes) in queries {
            assert_eq!(bin(&q), bytes, "{q:?}");
            assert_eq!(from_binary::<Query>(&bytes), q);
        }
        let replies = [
            (Reply::Value { value: some("v") }, vec![0, 0, 1, 1, b'v']),
            (
                Reply::Entries {
                    entries: vec![("a".into(), "b".into())],
                    more: false,
                },
                vec![0, 1, 1, 1, b'a', 1, b'b', 0],
            ),
        ];
        for (r, bytes) in replies {
            assert_eq!(bin(&r), bytes, "{r:?}");
            assert_eq!(from_binary::<Reply>(&bytes), r);
        }
        // The JSON forms are unchanged by the binary ones.
        assert_eq!(
            serde_json::to_value(Command::Put {
                key: "k".into(),
                value: "v".into(),
                prev_kv: false
            })
            .unwrap(),
            json!({"op":"put","key":"k","value":"v","prev_kv":false})
        );
        assert_eq!(serde_json::to_value(Output::Written).unwrap(), json!(null));
        assert_eq!(
            serde_json::from_value::<Query>(json!({"op":"scan","prefix":"p"})).unwrap(),
            Query::Scan {
                prefix: "p".into(),
                after: None,
                limit: None
            }
        );
    }

    #[test]
    fn a_malformed_binary_command_is_a_replicated_error_that_changes_nothing() {
        let mut h = Harness::<Kv>::new();
        let mut truncated = bin(&Command::Put {
            key: "a".into(),
            value: "1".into(),
            prev_kv: true,
        });
        truncated.pop();
        // Put, key "a", value of one byte that is not UTF-8, prev_kv.
        let not_utf8 = vec![0, 0, 1, b'a', 1, 0xff, 1];
        // Put, key "a", value "1", prev_kv = 2 (not a bool).
        let not_bool = vec![0, 0, 1, b'a', 1, b'1', 2];
        // Cas, key "a", expected with option tag 2.
        let not_option = vec![0, 2, 1, b'a', 2];
        let mut trailing = bin(&Command::Delete { key: "a".into() });
        trailing.push(0);
        for bad in [
            truncated,
            not_utf8,
            not_bool,
            not_option,
            trailing,
            vec![0, 9],
            vec![0],
        ] {
            let e = h.apply(&bad).unwrap_err();
            assert_eq!(e.code, AppError::CODE_BAD_COMMAND, "{bad:?}: {e:?}");
        }
        assert!(h.state().is_empty());
    }

    #[test]
    fn put_without_prev_kv_writes_and_answers_null() {
        let mut h = Harness::<Kv>::new();
        apply(&mut h, json!({"op":"put","key":"a","value":"1"})).unwrap();
        let r = apply(
            &mut h,
            json!({"op":"put","key":"a","value":"2","prev_kv":false}),
        );
        assert_eq!(r.unwrap(), json!(null));
        assert_eq!(
            query(&h, json!({"op":"get","key":"a"})),
            json!({"value":"2"})
        );
        // Asking explicitly is the default.
        let r = apply(
            &mut h,
            json!({"op":"put","key":"a","value":"3","prev_kv":true}),
        );
        assert_eq!(r.unwrap(), json!({"prev":"2"}));
    }

    #[test]
    fn cas_swaps_only_on_expected_value() {
        let mut h = Harness::<Kv>::new();
        let r = apply(
            &mut h,
            json!({"op":"cas","key":"k","expected":null,"new":"v1"}),
        )
        .unwrap();
        assert_eq!(r, json!({"swapped":true,"current":"v1"}));
        let r = apply(
            &mut h,
            json!({"op":"cas","key":"k","expected":"nope","new":"v2"}),
        )
        .unwrap();
        assert_eq!(r, json!({"swapped":false,"current":"v1"}));
        let r = apply(
            &mut h,
            json!({"op":"cas","key":"k","expected":"v1","new":null}),
        )
        .unwrap();
        assert_eq!(r, json!({"swapped":true,"current":null}));
        assert_eq!(h.state().len(), 0);
    }

    #[test]
    fn scan_returns_prefix_matches_in_order_and_pages() {
        let mut h = Harness::<Kv>::new();
        for k in ["u/3", "u/1", "v/1", "u/2", "t/9"] {
            apply(&mut h, json!({"op":"put","key":k,"value":k})).unwrap();
        }
        let r = query(&h, json!({"op":"scan","prefix":"u/","limit":2}));
        assert_eq!(
            r,
            json!({"entries":[["u/1","u/1"],["u/2","u/2"]],"more":true})
        );
        let r = query(&h, json!({"op":"scan","prefix":"u/","after":"u/2"}));
        assert_eq!(r, json!({"entries":[["u/3","u/3"]],"more":false}));
    }

    #[test]
    fn empty_key_is_rejected_with_app_error() {
        let mut h = Harness::<Kv>::new();
        let e = apply(&mut h, json!({"op":"put","key":"","value":"x"})).unwrap_err();
        assert_eq!(e.code, ERR_BAD_KEY);
    }

    #[test]
    fn snapshot_restores_identical_state_across_many_small_chunks() {
        let mut h = Harness::<Kv>::new();
        for i in 0..5000 {
            apply(
                &mut h,
                json!({"op":"put","key":format!("key{i:05}"),"value":"v".repeat(i % 50)}),
            )
            .unwrap();
        }
        let chunks = h.snapshot(256).unwrap();
        assert!(
            chunks.len() > 10,
            "expected many chunks, got {}",
            chunks.len()
        );
        let r = Harness::<Kv>::restore(chunks.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(r.state(), h.state());
    }

    /// A log touching every command: puts, overwrites, deletes, both cas outcomes, a rejected key.
    fn mixed_log() -> Vec<Vec<u8>> {
        let mut log = Vec::new();
        for i in 0..200 {
            let k = format!("k{:03}", (i * 37) % 101);
            let cmd = match i % 5 {
                0 | 1 => json!({"op":"put","key":k,"value":format!("v{i}")}),
                2 => json!({"op":"delete","key":k}),
                3 => json!({"op":"cas","key":k,"expected":null,"new":"fresh"}),
                _ => json!({"op":"put","key":"","value":"rejected"}),
            };
            log.push(serde_json::to_vec(&cmd).unwrap());
        }
        log
    }

    const SCAN_ALL: &[u8] = br#"{"op":"scan","prefix":""}"#;

    #[test]
    fn replicas_applying_the_same_log_agree_byte_for_byte() {
        let log = mixed_log();
        let log: Vec<&[u8]> = log.iter().map(Vec::as_slice).collect();
        wraft_guest::testing::assert_deterministic::<Kv>(&log, &[SCAN_ALL]);
    }

    #[test]
    fn snapshot_restore_answers_every_query_identically() {
        let mut h = Harness::<Kv>::new();
        for c in mixed_log() {
            let _ = h.apply(&c);
        }
        h.assert_round_trip(&[SCAN_ALL, br#"{"op":"get","key":"k036"}"#]);
    }

    #[test]
    fn snapshots_of_every_released_format_still_restore() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        wraft_guest::testing::assert_golden_snapshots::<Kv>(
            &dir,
            |h| {
                for c in mixed_log() {
                    let _ = h.apply(&c);
                }
            },
            &[SCAN_ALL, br#"{"op":"get","key":"k036"}"#],
        );
    }

    #[test]
    fn flipped_byte_in_a_chunk_is_caught_by_its_checksum() {
        let mut h = Harness::<Kv>::new();
        for i in 0..100 {
            apply(
                &mut h,
                json!({"op":"put","key":format!("k{i}"),"value":"x"}),
            )
            .unwrap();
        }
        let mut chunks = h.snapshot(128).unwrap();
        let last = chunks[1].len() - 1;
        chunks[1][last] ^= 0x40;
        let e = Harness::<Kv>::restore(chunks.iter().map(Vec::as_slice))
            .err()
            .unwrap();
        assert!(e.contains("chunk 1: checksum mismatch"), "{e}");
    }

    #[test]
    fn missing_final_chunk_fails_finish() {
        let mut h = Harness::<Kv>::new();
        for i in 0..100 {
            apply(
                &mut h,
                json!({"op":"put","key":format!("k{i}"),"value":"x"}),
            )
            .unwrap();
        }
        let chunks = h.snapshot(128).unwrap();
        let e = Harness::<Kv>::restore(chunks[..chunks.len() - 1].iter().map(Vec::as_slice))
            .err()
            .unwrap();
        assert!(e.contains("no final chunk"), "{e}");
    }

    /// The hand-written decoder takes exactly what serde's derived one for the same internally
    /// tagged enum takes, and gives the same command.
    #[test]
    fn the_command_decoder_agrees_with_the_derived_one() {
        #[derive(Deserialize, Debug)]
        #[serde(tag = "op", rename_all = "snake_case")]
        enum Derived {
            Put {
                key: String,
                value: String,
                #[serde(default = "yes")]
                prev_kv: bool,
            },
            Delete {
                key: String,
            },
            Cas {
                key: String,
                expected: Option<String>,
                new: Option<String>,
            },
        }
        fn yes() -> bool {
            true
        }
        let inputs = [
            r#"{"op":"put","key":"a","value":"1"}"#,
            r#"{"key":"a","value":"1","op":"put"}"#,
            r#"{"op":"put","key":"a","value":"1","prev_kv":false}"#,
            r#"{"op":"put","key":"a","value":"1","prev_kv":true,"extra":[1,{"x":2}]}"#,
            r#"{"op":"put","key":"a\u00e9\n","value":"\"q\""}"#,
            r#"{"op":"put","key":"a"}"#,
            r#"{"op":"put","value":"1"}"#,
            r#"{"op":"put","key":"a","value":1}"#,
            r#"{"op":"put","key":"a","key":"b","value":"1"}"#,
            r#"{"op":"delete","key":"a"}"#,
            r#"{"op":"delete","key":"a","value":"ignored"}"#,
            r#"{"op":"delete"}"#,
            r#"{"op":"cas","key":"a","expected":"1","new":"2"}"#,
            r#"{"op":"cas","key":"a","expected":null,"new":"2"}"#,
            r#"{"op":"cas","key":"a","new":null}"#,
            r#"{"op":"cas","key":"a"}"#,
            r#"{"op":"cas","key":"a","expected":3}"#,
            r#"{"op":"scan","key":"a"}"#,
            r#"{"key":"a"}"#,
            r#"{"op":null,"key":"a"}"#,
            r#"["put","a","1"]"#,
            r#"["put","a","1",false]"#,
            r#"["put","a","1",false,3]"#,
            r#"["put","a"]"#,
            r#"["delete","a"]"#,
            r#"["delete"]"#,
            r#"["cas","a",null,"2"]"#,
            r#"["cas","a","1"]"#,
            r#"[]"#,
            r#""put""#,
            r#"{"op":"put","key":"a","value":"1""#,
            r#"{"op":"put","key":"a","value":"1"} x"#,
        ];
        for input in inputs {
            let ours = serde_json::from_str::<Command>(input);
            let derived = serde_json::from_str::<Derived>(input);
            let derived = derived.map(|d| match d {
                Derived::Put {
                    key,
                    value,
                    prev_kv,
                } => Command::Put {
                    key,
                    value,
                    prev_kv,
                },
                Derived::Delete { key } => Command::Delete { key },
                Derived::Cas { key, expected, new } => Command::Cas { key, expected, new },
            });
            match (ours, derived) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{input}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{input}: ours {a:?}, derived {b:?}"),
            }
        }
        // And what the derived encoder writes reads back.
        for cmd in [
            Command::Put {
                key: "k".into(),
                value: "v".into(),
                prev_kv: false,
            },
            Command::Cas {
                key: "k".into(),
                expected: None,
                new: Some("n".into()),
            },
        ] {
            let bytes = serde_json::to_vec(&cmd).unwrap();
            assert_eq!(serde_json::from_slice::<Command>(&bytes).unwrap(), cmd);
        }
    }
}
