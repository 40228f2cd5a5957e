//! What the load generator sends: kv puts and gets, in JSON or in the kv machine's binary form,
//! and the etcd kit's key pattern. `wraft bench` and the `machine_ab` example share it.

/// How the load generator encodes kv commands and queries (`--codec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCodec {
    /// `{"op":"put",…}`, what a person types.
    Json,
    /// The kv machine's binary form: a 0 byte, then postcard (`examples/kv`, its `bin` module).
    Postcard,
}

/// The kv machine's binary command and query, as far as the benchmark sends them: the first
/// variant of each of `examples/kv`'s `Command` and `Query`, so index 0. A test
/// pins the bytes to the ones the kv crate's own test pins.
#[derive(serde::Serialize)]
enum KvBinaryCommand<'a> {
    Put {
        key: &'a str,
        value: &'a str,
        prev_kv: bool,
    },
}

#[derive(serde::Serialize)]
enum KvBinaryQuery<'a> {
    Get { key: &'a str },
}

/// A kv put of `value` at `key` that asks for no previous value (etcd's put returns none
/// unless asked, `prev_kv`; neither does this).
pub fn put_command(codec: KvCodec, key: &str, value: &str) -> Vec<u8> {
    match codec {
        KvCodec::Json => {
            format!(r#"{{"op":"put","key":"{key}","value":"{value}","prev_kv":false}}"#).into()
        }
        KvCodec::Postcard => binary(&KvBinaryCommand::Put {
            key,
            value,
            prev_kv: false,
        }),
    }
}

/// A kv get of `key`.
pub(super) fn get_query(codec: KvCodec, key: &str) -> Vec<u8> {
    match codec {
        KvCodec::Json => format!(r#"{{"op":"get","key":"{key}"}}"#).into(),
        KvCodec::Postcard => binary(&KvBinaryQuery::Get { key }),
    }
}

fn binary(value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(320);
    out.push(0);
    postcard::to_extend(value, out).expect("strings and a bool always encode into a growing Vec")
}

/// The key worker `i` uses for its `n`-th put (the etcd kit's pattern).
pub fn put_key(i: usize, n: u64) -> String {
    format!("k{:07}", (i as u64 * 1_000_003 + n) % 10_000_000)
}
