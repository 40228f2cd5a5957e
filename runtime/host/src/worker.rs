//! A machine instance on its own OS thread, fed by a bounded channel.

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::chunks::{ChunkSink, ChunkSource};
use crate::error::CallError;
use crate::instance::{Entry, EntryResult, Instance, SnapshotSummary};
use crate::module::{MachineInfo, MachineModule};

type Reply<T> = oneshot::Sender<Result<T, CallError>>;

enum Job {
    Apply(Entry, Reply<EntryResult>),
    ApplyBatch(Vec<Entry>, Reply<Vec<EntryResult>>),
    Query(Vec<u8>, Reply<EntryResult>),
    Snapshot(Box<dyn ChunkSink>, Reply<SnapshotSummary>),
    Restore(u32, Box<dyn ChunkSource>, Reply<()>),
    Reset(Reply<()>),
}

/// A handle to a machine instance running on its own thread.
///
/// Calls are queued (at most `call_queue_len`) and run one at a time, in order, so they never
/// overlap and never block an async runtime: every method comes as an `async fn` (awaits the
/// queue and the result) and a `_blocking` variant for plain threads (do not call those from
/// async code; they panic inside a Tokio runtime). Dropping the handle lets the thread finish
/// its queue and exit; [`MachineHandle::shutdown`] also waits for it.
pub struct MachineHandle {
    tx: mpsc::Sender<Job>,
    info: MachineInfo,
    sha256: [u8; 32],
    thread: Option<JoinHandle<()>>,
}

/// Nice value of background machine threads (see [`MachineModule::start_background`]): under
/// CPU contention the kernel gives such a thread about a tenth of a normal thread's share.
pub const BACKGROUND_NICE: i32 = 10;

/// Lower the calling thread's CPU priority to [`BACKGROUND_NICE`] (Linux: `setpriority` on the
/// thread id renices one thread). Best effort: a failure is logged and the thread runs at normal
/// priority.
pub(crate) fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE)
        };
        if rc != 0 {
            tracing::debug!(target: "wraft::host", error = %std::io::Error::last_os_error(),
                "cannot lower a background machine thread's priority");
        }
    }
}

impl MachineModule {
    /// Start an instance with the machine's default (empty) state on its own OS thread.
    ///
    /// Cost: one thread and one instantiation (tens of µs plus the guest's initial memory).
    pub fn start(&self) -> Result<MachineHandle, CallError> {
        MachineHandle::spawn(self.clone(), false)
    }

    /// [`start`](Self::start) for background work that must not compete with live machines and
    /// the node's consensus threads for CPU (snapshot creation from a shadow instance): the
    /// thread runs at nice [`BACKGROUND_NICE`] on Linux, so it gets spare cycles at full speed
    /// but about a tenth of a normal thread's share when the CPUs are busy. Determinism is
    /// unaffected: only scheduling changes.
    pub fn start_background(&self) -> Result<MachineHandle, CallError> {
        MachineHandle::spawn(self.clone(), true)
    }
}

impl MachineHandle {
    fn spawn(module: MachineModule, background: bool) -> Result<Self, CallError> {
        let (tx, mut rx) = mpsc::channel::<Job>(module.inner.engine.config().call_queue_len.max(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let info = module.info().clone();
        let sha256 = module.sha256();
        let thread = std::thread::Builder::new()
            .name(format!("wraft-machine-{}", info.name))
            .spawn(move || {
                if background {
                    lower_this_threads_priority();
                }
                let mut inst = match Instance::new(module) {
                    Ok(i) => {
                        let _ = ready_tx.send(Ok(()));
                        i
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = rx.blocking_recv() {
                    match job {
                        Job::Apply(e, r) => drop(r.send(inst.apply(e))),
                        Job::ApplyBatch(es, r) => drop(r.send(inst.apply_batch(es))),
                        Job::Query(q, r) => drop(r.send(inst.query(&q))),
                        Job::Snapshot(mut sink, r) => drop(r.send(inst.snapshot(&mut *sink))),
                        Job::Restore(f, mut src, r) => drop(r.send(inst.restore(f, &mut *src))),
                        Job::Reset(r) => drop(r.send(inst.reset())),
                    }
                }
            })
            .map_err(|e| CallError::Instantiate(format!("spawning machine thread: {e}")))?;
        ready_rx.recv().map_err(|_| CallError::Stopped)??;
        Ok(Self {
            tx,
            info,
            sha256,
            thread: Some(thread),
        })
    }

    /// The guest's self-description.
    pub fn info(&self) -> &MachineInfo {
        &self.info
    }

    /// SHA-256 of the component this instance runs.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    async fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(job(tx))
            .await
            .map_err(|_| CallError::Stopped)?;
        rx.await.map_err(|_| CallError::Stopped)?
    }

    fn call_blocking<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .blocking_send(job(tx))
            .map_err(|_| CallError::Stopped)?;
        rx.blocking_recv().map_err(|_| CallError::Stopped)?
    }

    /// See [`Instance::apply`].
    pub async fn apply(&self, entry: Entry) -> Result<EntryResult, CallError> {
        self.call(|r| Job::Apply(entry, r)).await
    }
    /// See [`Instance::apply`].
    pub fn apply_blocking(&self, entry: Entry) -> Result<EntryResult, CallError> {
        self.call_blocking(|r| Job::Apply(entry, r))
    }
    /// See [`Instance::apply_batch`].
    pub async fn apply_batch(&self, entries: Vec<Entry>) -> Result<Vec<EntryResult>, CallError> {
        self.call(|r| Job::ApplyBatch(entries, r)).await
    }
    /// See [`Instance::apply_batch`].
    pub fn apply_batch_blocking(&self, entries: Vec<Entry>) -> Result<Vec<EntryResult>, CallError> {
        self.call_blocking(|r| Job::ApplyBatch(entries, r))
    }
    /// See [`Instance::query`].
    pub async fn query(&self, request: Vec<u8>) -> Result<EntryResult, CallError> {
        self.call(|r| Job::Query(request, r)).await
    }
    /// See [`Instance::query`].
    pub fn query_blocking(&self, request: Vec<u8>) -> Result<EntryResult, CallError> {
        self.call_blocking(|r| Job::Query(request, r))
    }
    /// See [`Instance::snapshot`]. The sink runs on the machine's thread; a
    /// `tokio::sync::mpsc::Sender<Vec<u8>>` sink streams chunks to async code with bounded memory.
    pub async fn snapshot(
        &self,
        sink: impl ChunkSink + 'static,
    ) -> Result<SnapshotSummary, CallError> {
        self.call(|r| Job::Snapshot(Box::new(sink), r)).await
    }
    /// See [`Instance::snapshot`].
    pub fn snapshot_blocking(
        &self,
        sink: impl ChunkSink + 'static,
    ) -> Result<SnapshotSummary, CallError> {
        self.call_blocking(|r| Job::Snapshot(Box::new(sink), r))
    }
    /// See [`Instance::restore`]. The source runs on the machine's thread.
    pub async fn restore(
        &self,
        format: u32,
        source: impl ChunkSource + 'static,
    ) -> Result<(), CallError> {
        self.call(|r| Job::Restore(format, Box::new(source), r))
            .await
    }
    /// See [`Instance::restore`].
    pub fn restore_blocking(
        &self,
        format: u32,
        source: impl ChunkSource + 'static,
    ) -> Result<(), CallError> {
        self.call_blocking(|r| Job::Restore(format, Box::new(source), r))
    }
    /// See [`Instance::reset`].
    pub async fn reset(&self) -> Result<(), CallError> {
        self.call(Job::Reset).await
    }
    /// See [`Instance::reset`].
    pub fn reset_blocking(&self) -> Result<(), CallError> {
        self.call_blocking(Job::Reset)
    }

    /// Stop accepting calls, let queued ones finish, and wait for the thread to exit (at most
    /// one watchdog period per queued call). Blocking.
    pub fn shutdown(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}
