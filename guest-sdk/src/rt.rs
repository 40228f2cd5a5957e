//! The glue between the generated bindings and a [`StateMachine`]. Not public API.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::bindings::exports::wraft::machine::machine as wit;
use crate::{AppError, Codec, EntryCtx, SnapshotFormat, StateMachine};

thread_local! {
    /// The one machine of this guest. Single-threaded: wasm32-unknown-unknown has no threads.
    static STATE: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
}

/// Calls into the host; no-ops when the SDK runs natively (unit tests).
pub(crate) mod host {
    #[cfg(target_arch = "wasm32")]
    use crate::bindings::wraft::machine::host as imp;

    pub fn begin_entry() {
        #[cfg(target_arch = "wasm32")]
        imp::begin_entry();
    }

    pub fn end_entry() {
        #[cfg(target_arch = "wasm32")]
        imp::end_entry();
    }

    /// Send panics to the host's log before the trap, so the host can say why the guest died.
    pub fn install_panic_hook() {
        #[cfg(target_arch = "wasm32")]
        {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                std::panic::set_hook(Box::new(|info| {
                    imp::log(imp::LogLevel::Error, &format!("panic: {info}"));
                }));
            });
        }
    }
}

fn with_state<M: StateMachine, R>(f: impl FnOnce(&mut Rc<M>) -> R) -> R {
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let any = slot.get_or_insert_with(|| Rc::new(M::default()) as Rc<dyn Any>);
        let mut typed: Rc<M> = match Rc::clone(any).downcast::<M>() {
            Ok(m) => m,
            Err(_) => panic!("wraft-guest: the machine type changed between calls"),
        };
        // Drop the slot's reference while `f` runs so `Rc::get_mut` sees only live readers.
        *slot = None;
        let r = f(&mut typed);
        *slot = Some(typed as Rc<dyn Any>);
        r
    })
}

fn with_state_mut<M: StateMachine, R>(f: impl FnOnce(&mut M) -> R) -> R {
    with_state::<M, R>(|rc| match Rc::get_mut(rc) {
        Some(m) => f(m),
        None => panic!("wraft-guest: state changed while a snapshot reader is alive"),
    })
}

/// Decode, apply and encode one entry: the work the per-entry fuel budget pays for.
pub fn apply_one<M: StateMachine>(
    m: &mut M,
    ctx: &EntryCtx,
    command: &[u8],
) -> Result<Vec<u8>, AppError> {
    host::begin_entry();
    let r = (|| {
        let cmd = M::Codec::decode::<M::Command>(command)
            .map_err(|e| AppError::new(AppError::CODE_BAD_COMMAND, e))?;
        let out = m.apply(ctx, cmd)?;
        M::Codec::encode_reply(&out, command)
            .map_err(|e| AppError::new(AppError::CODE_BAD_OUTPUT, e))
    })();
    host::end_entry();
    r
}

/// Decode, run and encode one query.
pub fn query_one<M: StateMachine>(m: &M, request: &[u8]) -> Result<Vec<u8>, AppError> {
    let q = M::Codec::decode::<M::Query>(request)
        .map_err(|e| AppError::new(AppError::CODE_BAD_QUERY, e))?;
    let reply = m.query(q)?;
    M::Codec::encode_reply(&reply, request).map_err(|e| AppError::new(AppError::CODE_BAD_OUTPUT, e))
}

/// The component's exports for machine `M`; named by [`machine!`](crate::machine).
pub struct Exports<M>(PhantomData<M>);

/// The `snapshot-reader` resource.
pub struct Reader<M: StateMachine>(RefCell<<M::Snapshot as SnapshotFormat<M>>::Reader>);

/// The `restorer` resource.
pub struct Restorer<M: StateMachine>(RefCell<Option<<M::Snapshot as SnapshotFormat<M>>::Restorer>>);

fn ctx(meta: &crate::bindings::wraft::machine::types::EntryMeta) -> EntryCtx {
    EntryCtx {
        index: meta.index,
        term: meta.term,
        timestamp_ms: meta.timestamp_ms,
    }
}

fn to_wit(e: AppError) -> wit::AppError {
    wit::AppError {
        code: e.code,
        message: e.message,
    }
}

impl<M: StateMachine> wit::Guest for Exports<M> {
    type SnapshotReader = Reader<M>;
    type Restorer = Restorer<M>;

    fn info() -> wit::MachineInfo {
        wit::MachineInfo {
            name: M::NAME.into(),
            version: M::VERSION.into(),
            snapshot_format: M::SNAPSHOT_FORMAT,
        }
    }

    fn apply(entry: wit::Entry) -> Result<Vec<u8>, wit::AppError> {
        host::install_panic_hook();
        with_state_mut::<M, _>(|m| apply_one(m, &ctx(&entry.meta), &entry.command)).map_err(to_wit)
    }

    fn apply_batch(entries: Vec<wit::Entry>) -> Vec<Result<Vec<u8>, wit::AppError>> {
        host::install_panic_hook();
        with_state_mut::<M, _>(|m| {
            entries
                .iter()
                .map(|e| apply_one(m, &ctx(&e.meta), &e.command).map_err(to_wit))
                .collect()
        })
    }

    fn query(request: Vec<u8>) -> Result<Vec<u8>, wit::AppError> {
        host::install_panic_hook();
        with_state::<M, _>(|m| query_one(&**m, &request)).map_err(to_wit)
    }

    fn begin_snapshot() -> Result<wit::SnapshotReader, String> {
        host::install_panic_hook();
        let reader = with_state::<M, _>(|m| M::Snapshot::begin_snapshot(Rc::clone(m)))?;
        Ok(wit::SnapshotReader::new(Reader::<M>(RefCell::new(reader))))
    }

    fn begin_restore(format: u32) -> Result<wit::Restorer, String> {
        host::install_panic_hook();
        let r = M::Snapshot::begin_restore(format)?;
        Ok(wit::Restorer::new(Restorer::<M>(RefCell::new(Some(r)))))
    }
}

impl<M: StateMachine> wit::GuestSnapshotReader for Reader<M> {
    fn next_chunk(&self, max_bytes: u32) -> Result<Option<Vec<u8>>, String> {
        M::Snapshot::next_chunk(&mut self.0.borrow_mut(), max_bytes as usize)
    }
}

impl<M: StateMachine> wit::GuestRestorer for Restorer<M> {
    fn write_chunk(&self, chunk: Vec<u8>) -> Result<(), String> {
        match self.0.borrow_mut().as_mut() {
            Some(r) => M::Snapshot::write_chunk(r, &chunk),
            None => Err("restore already finished".into()),
        }
    }

    fn finish(&self) -> Result<(), String> {
        let r = self
            .0
            .borrow_mut()
            .take()
            .ok_or("restore already finished")?;
        let state = M::Snapshot::finish(r)?;
        // Commit: replace the state only now. Fails (traps) if a reader still holds the old one.
        with_state_mut::<M, _>(|m| *m = state);
        Ok(())
    }
}
