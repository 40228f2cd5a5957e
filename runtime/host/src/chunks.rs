//! The caller's end of snapshot streaming: where snapshot chunks go ([`ChunkSink`]) and where
//! restore chunks come from ([`ChunkSource`]), with the usual channel and `Vec` adapters.

/// Where snapshot chunks go, in order. Runs on the machine's thread.
pub trait ChunkSink: Send {
    /// Take one chunk. An error aborts the snapshot.
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String>;
}

/// Where restore chunks come from, in order. Runs on the machine's thread.
pub trait ChunkSource: Send {
    /// The next chunk, or `None` at the end. An error aborts the restore.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String>;
}

impl ChunkSink for Vec<Vec<u8>> {
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.push(chunk);
        Ok(())
    }
}

impl ChunkSink for std::sync::mpsc::SyncSender<Vec<u8>> {
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.send(chunk).map_err(|_| "receiver dropped".to_string())
    }
}

impl ChunkSink for tokio::sync::mpsc::Sender<Vec<u8>> {
    /// Blocks the machine thread (never an async task) while the channel is full.
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.blocking_send(chunk)
            .map_err(|_| "receiver dropped".to_string())
    }
}

impl ChunkSource for std::vec::IntoIter<Vec<u8>> {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.next())
    }
}

impl ChunkSource for std::sync::mpsc::Receiver<Vec<u8>> {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.recv().ok())
    }
}

impl ChunkSource for tokio::sync::mpsc::Receiver<Vec<u8>> {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.blocking_recv())
    }
}

/// Adapts a closure into a [`ChunkSink`].
pub struct FnSink<F>(pub F);

impl<F: FnMut(Vec<u8>) -> Result<(), String> + Send> ChunkSink for FnSink<F> {
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        (self.0)(chunk)
    }
}
