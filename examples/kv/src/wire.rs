//! The kv machine's two wire forms: JSON for people (with a hand-written command decoder) and
//! postcard for programs, chosen per message by [`JsonOrPostcard`](wraft_guest::JsonOrPostcard); the serde impls of the public
//! types pick one by `is_human_readable()`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Command, Output, Query, Reply};

/// `Command`'s decoder: the same JSON as the derived one would take (`op` anywhere in the object,
/// unknown fields ignored, `prev_kv` true unless given, a missing `expected` or `new` meaning
/// null), read in one pass.
mod command_de {
    use std::fmt;

    use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    use crate::Command;

    #[derive(Deserialize)]
    #[serde(field_identifier, rename_all = "snake_case")]
    enum Field {
        Op,
        Key,
        Value,
        PrevKv,
        Expected,
        New,
        #[serde(other)]
        Other,
    }

    #[derive(Deserialize, Clone, Copy)]
    #[serde(rename_all = "snake_case")]
    enum Op {
        Put,
        Delete,
        Cas,
    }

    fn set<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
        slot: &mut Option<T>,
        name: &'static str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        if slot.is_some() {
            return Err(de::Error::duplicate_field(name));
        }
        *slot = Some(map.next_value()?);
        Ok(())
    }

    struct CommandVisitor;

    impl<'de> Visitor<'de> for CommandVisitor {
        type Value = Command;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a kv command object with an \"op\" of put, delete or cas")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Command, A::Error> {
            let mut op = None;
            let mut key = None;
            let mut value = None;
            let mut prev_kv = None;
            let mut expected: Option<Option<String>> = None;
            let mut new: Option<Option<String>> = None;
            while let Some(field) = map.next_key()? {
                match field {
                    Field::Op => set(&mut op, "op", &mut map)?,
                    Field::Key => set(&mut key, "key", &mut map)?,
                    Field::Value => set(&mut value, "value", &mut map)?,
                    Field::PrevKv => set(&mut prev_kv, "prev_kv", &mut map)?,
                    Field::Expected => set(&mut expected, "expected", &mut map)?,
                    Field::New => set(&mut new, "new", &mut map)?,
                    Field::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let op = op.ok_or_else(|| de::Error::missing_field("op"))?;
            let key = key.ok_or_else(|| de::Error::missing_field("key"))?;
            Ok(match op {
                Op::Put => Command::Put {
                    key,
                    value: value.ok_or_else(|| de::Error::missing_field("value"))?,
                    prev_kv: prev_kv.unwrap_or(true),
                },
                Op::Delete => Command::Delete { key },
                Op::Cas => Command::Cas {
                    key,
                    expected: expected.flatten(),
                    new: new.flatten(),
                },
            })
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Command, A::Error> {
            Self::from_seq(seq)
        }
    }

    impl CommandVisitor {
        /// The rarely used array form serde's derived decoder also takes: `["put", key, value]`,
        /// the fields in declaration order after the tag.
        fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Command, A::Error> {
            let mut at = 0;
            let cmd = match need::<A, Op>(&mut seq, &mut at)? {
                Op::Put => Command::Put {
                    key: need(&mut seq, &mut at)?,
                    value: need(&mut seq, &mut at)?,
                    prev_kv: seq.next_element()?.unwrap_or(true),
                },
                Op::Delete => Command::Delete {
                    key: need(&mut seq, &mut at)?,
                },
                Op::Cas => Command::Cas {
                    key: need(&mut seq, &mut at)?,
                    expected: need(&mut seq, &mut at)?,
                    new: need(&mut seq, &mut at)?,
                },
            };
            if seq.next_element::<IgnoredAny>()?.is_some() {
                return Err(de::Error::invalid_length(at + 2, &"a complete command"));
            }
            Ok(cmd)
        }
    }

    /// The next element of a command in array form, which must be there.
    fn need<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
        seq: &mut A,
        at: &mut usize,
    ) -> Result<T, A::Error> {
        let found = seq.next_element()?;
        let i = *at;
        *at += 1;
        found.ok_or_else(|| de::Error::invalid_length(i, &"a complete command"))
    }

    impl<'de> Deserialize<'de> for Command {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Command, D::Error> {
            if d.is_human_readable() {
                d.deserialize_any(CommandVisitor)
            } else {
                super::bin::Command::deserialize(d)
            }
        }
    }
}

/// The JSON forms, as serde derives them for the public types (`remote`): kept private, so that
/// the only `serialize`/`deserialize` a caller finds are the public types' own, which choose the
/// form by `is_human_readable()`.
mod json {
    use serde::{Deserialize, Serialize};

    fn is_true(b: &bool) -> bool {
        *b
    }

    #[derive(Serialize)]
    #[serde(remote = "crate::Command", tag = "op", rename_all = "snake_case")]
    pub(super) enum Command {
        Put {
            key: String,
            value: String,
            #[serde(skip_serializing_if = "is_true")]
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

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "crate::Output", untagged)]
    pub(super) enum Output {
        Prev {
            prev: Option<String>,
        },
        Cas {
            swapped: bool,
            current: Option<String>,
        },
        Written,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "crate::Query", tag = "op", rename_all = "snake_case")]
    pub(super) enum Query {
        Get {
            key: String,
        },
        Scan {
            prefix: String,
            #[serde(default)]
            after: Option<String>,
            #[serde(default)]
            limit: Option<usize>,
        },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "crate::Reply", untagged)]
    pub(super) enum Reply {
        Value {
            value: Option<String>,
        },
        Entries {
            entries: Vec<(String, String)>,
            more: bool,
        },
    }
}

/// The binary forms (postcard after [`JsonOrPostcard`](wraft_guest::JsonOrPostcard)'s 0 byte), as serde derives them, for the
/// public types (`remote`): the same fields as the JSON forms, but every enum is tagged by its
/// variant's index in declaration order, since a format that does not describe itself cannot
/// carry the JSON forms' internal tags and untagged outputs. Postcard carries no field names or
/// lengths, so this layout is the contract: new variants are only ever appended, and a variant's
/// fields never change (a new field set is a new variant). The tests pin the bytes.
mod bin {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "crate::Command")]
    pub(super) enum Command {
        Put {
            key: String,
            value: String,
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

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "crate::Output")]
    pub(super) enum Output {
        Prev {
            prev: Option<String>,
        },
        Cas {
            swapped: bool,
            current: Option<String>,
        },
        Written,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "crate::Query")]
    pub(super) enum Query {
        Get {
            key: String,
        },
        Scan {
            prefix: String,
            after: Option<String>,
            limit: Option<usize>,
        },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "crate::Reply")]
    pub(super) enum Reply {
        Value {
            value: Option<String>,
        },
        Entries {
            entries: Vec<(String, String)>,
            more: bool,
        },
    }
}

/// Serde impls for a type with a JSON form (`json::$t`) and a binary form (`bin::$t`), chosen by
/// `is_human_readable()`.
macro_rules! two_forms {
    (serialize $t:ident) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    json::$t::serialize(self, s)
                } else {
                    bin::$t::serialize(self, s)
                }
            }
        }
    };
    (deserialize $t:ident) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                if d.is_human_readable() {
                    json::$t::deserialize(d)
                } else {
                    bin::$t::deserialize(d)
                }
            }
        }
    };
}

two_forms!(serialize Command);
two_forms!(serialize Output);
two_forms!(deserialize Output);
two_forms!(serialize Query);
two_forms!(deserialize Query);
two_forms!(serialize Reply);
two_forms!(deserialize Reply);
