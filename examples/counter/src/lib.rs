//! The smallest wraft machine: a counter. `{"Add":5}` adds, `"Reset"` resets; any query reads it.

use serde::{Deserialize, Serialize};
use wraft_guest::{AppError, DefaultSnapshot, EntryCtx, Json, Records, StateMachine};

/// The replicated state: one integer.
#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: i64,
}

/// What clients submit.
#[derive(Deserialize)]
pub enum Command {
    /// Add a (possibly negative) amount; fails on overflow.
    Add(i64),
    /// Set the counter to zero.
    Reset,
}

impl StateMachine for Counter {
    const NAME: &'static str = "counter";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Codec = Json;
    type Snapshot = DefaultSnapshot;
    type Command = Command;
    type Output = i64;
    type Query = serde::de::IgnoredAny;
    type Reply = i64;

    fn apply(&mut self, _ctx: &EntryCtx, cmd: Command) -> Result<i64, AppError> {
        match cmd {
            Command::Add(n) => {
                self.value = self.value.checked_add(n).ok_or_else(|| {
                    AppError::new(1, format!("{} + {n} overflows i64", self.value))
                })?;
            }
            Command::Reset => self.value = 0,
        }
        Ok(self.value)
    }

    fn query(&self, _q: serde::de::IgnoredAny) -> Result<i64, AppError> {
        Ok(self.value)
    }
}

impl Records for Counter {
    type Record<'a> = &'a Counter;
    type OwnedRecord = Counter;
    fn records(&self) -> impl Iterator<Item = &Counter> {
        std::iter::once(self)
    }
    fn restore_record(&mut self, record: Counter) -> Result<(), String> {
        *self = record;
        Ok(())
    }
}

wraft_guest::machine!(Counter);

#[cfg(test)]
mod tests {
    use super::*;
    use wraft_guest::testing::Harness;

    #[test]
    fn adds_resets_and_survives_snapshot() {
        let mut h = Harness::<Counter>::new();
        assert_eq!(h.apply(br#"{"Add":40}"#).unwrap(), b"40");
        assert_eq!(h.apply(br#"{"Add":2}"#).unwrap(), b"42");
        let r = h.snapshot_restore(64).unwrap();
        assert_eq!(r.query(b"null").unwrap(), b"42");
        assert_eq!(h.apply(br#""Reset""#).unwrap(), b"0");
    }

    #[test]
    fn overflow_is_an_app_error_and_leaves_state_alone() {
        let mut h = Harness::<Counter>::new();
        h.apply(format!(r#"{{"Add":{}}}"#, i64::MAX).as_bytes())
            .unwrap();
        let e = h.apply(br#"{"Add":1}"#).unwrap_err();
        assert_eq!(e.code, 1);
        assert_eq!(h.query(b"{}").unwrap(), i64::MAX.to_string().as_bytes());
    }

    #[test]
    fn garbage_command_is_a_deterministic_bad_command_error() {
        let mut h = Harness::<Counter>::new();
        let e = h.apply(b"add five").unwrap_err();
        assert_eq!(e.code, AppError::CODE_BAD_COMMAND);
    }
}
