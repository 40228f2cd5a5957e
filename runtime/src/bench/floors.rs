//! The machine figures every benchmark number sits next to: `fdatasync` latency (alone and
//! from one thread per node at once), the loopback UDP round trip, the round trip of a hand-off
//! between an async worker and a thread of its own, the load average.

use super::*;

/// Latency summary of a series of samples, milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Percentiles {
    /// Summarize a histogram recorded in microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// Operations per second implied by the median (serial rate).
    pub fn serial_rate_per_s(&self) -> f64 {
        if self.p50_ms > 0.0 {
            1000.0 / self.p50_ms
        } else {
            0.0
        }
    }
}

pub(super) fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (1 µs .. 60 s, 3 digits).
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

pub(super) fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).clamp(1, LATENCY_US_MAX));
}

/// The disk as the log sees it: `samples` serial (write 4 KiB + fdatasync)
/// in a temp file under `dir`, appending (file size changes, as in a log
/// segment without preallocation) and overwriting a preallocated region (as
/// etcd's WAL does). Costs `2 × samples` fdatasyncs; fails on any I/O error.
pub fn fsync_probe(dir: &Path, samples: usize) -> std::io::Result<(Percentiles, Percentiles)> {
    use std::os::unix::fs::FileExt as _;
    let block = vec![0x5au8; 4096];
    let samples = samples.max(1);

    let append_file = tempfile::tempfile_in(dir)?;
    let mut append = histogram();
    for i in 0..samples {
        let t = Instant::now();
        append_file.write_all_at(&block, (i * block.len()) as u64)?;
        append_file.sync_data()?;
        record(&mut append, t.elapsed());
    }

    let pre_file = tempfile::tempfile_in(dir)?;
    for i in 0..samples {
        pre_file.write_all_at(&block, (i * block.len()) as u64)?;
    }
    pre_file.sync_all()?;
    let mut overwrite = histogram();
    for i in 0..samples {
        let t = Instant::now();
        pre_file.write_all_at(&block, (i * block.len()) as u64)?;
        pre_file.sync_data()?;
        record(&mut overwrite, t.elapsed());
    }
    Ok((Percentiles::of(&append), Percentiles::of(&overwrite)))
}

/// `threads` threads each doing `samples` serial (write 4 KiB + fdatasync)
/// on its own file under `dir`, at the same time — what `threads` nodes
/// sharing one disk see. Appending (`overwrite` false) changes the file size
/// with every write; overwriting a region written and synced beforehand is
/// what the log does in its preallocated space. On some hosts a lone serial
/// fdatasync waits for a timer tick while concurrent ones complete sooner, so
/// both figures are needed to read a storage number. Returns all samples
/// together.
pub fn fsync_concurrent_probe(
    dir: &Path,
    threads: usize,
    samples: usize,
    overwrite: bool,
) -> std::io::Result<Percentiles> {
    use std::os::unix::fs::FileExt as _;
    let mut handles = Vec::new();
    // Every thread prepares its file before any starts measuring (the files exist before any
    // thread starts, so no thread can wait at the barrier for one that was never spawned).
    let files = (0..threads.max(1))
        .map(|_| tempfile::tempfile_in(dir))
        .collect::<std::io::Result<Vec<_>>>()?;
    let ready = Arc::new(std::sync::Barrier::new(files.len()));
    for file in files {
        let ready = ready.clone();
        handles.push(std::thread::spawn(
            move || -> std::io::Result<Histogram<u64>> {
                let block = vec![0x5au8; 4096];
                let prepared = (|| {
                    if overwrite {
                        for i in 0..samples.max(1) {
                            file.write_all_at(&block, (i * block.len()) as u64)?;
                        }
                        file.sync_all()?;
                    }
                    Ok::<_, std::io::Error>(())
                })();
                ready.wait();
                prepared?;
                let mut h = histogram();
                for i in 0..samples.max(1) {
                    let t = Instant::now();
                    file.write_all_at(&block, (i * block.len()) as u64)?;
                    file.sync_data()?;
                    record(&mut h, t.elapsed());
                }
                Ok(h)
            },
        ));
    }
    let mut all = histogram();
    for h in handles {
        let h = h
            .join()
            .map_err(|_| std::io::Error::other("fsync probe thread panicked"))??;
        all.add(&h)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(Percentiles::of(&all))
}

/// Loopback UDP ping-pong between two threads: `samples` serial round trips
/// of a 64-byte datagram.
pub fn udp_rtt_probe(samples: usize) -> std::io::Result<Percentiles> {
    let a = UdpSocket::bind("127.0.0.1:0")?;
    let b = UdpSocket::bind("127.0.0.1:0")?;
    a.connect(b.local_addr()?)?;
    b.connect(a.local_addr()?)?;
    a.set_read_timeout(Some(Duration::from_secs(2)))?;
    b.set_read_timeout(Some(Duration::from_secs(2)))?;
    let n = samples.max(1);
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let len = b.recv(&mut buf)?;
            b.send(&buf[..len])?;
        }
        Ok(())
    });
    let mut h = histogram();
    let mut buf = [0u8; 64];
    for _ in 0..n {
        let t = Instant::now();
        a.send(&[7u8; 64])?;
        a.recv(&mut buf)?;
        record(&mut h, t.elapsed());
    }
    echo.join()
        .map_err(|_| std::io::Error::other("udp echo thread panicked"))??;
    Ok(Percentiles::of(&h))
}

/// A hand-off from an async task to a thread of its own and back, as a node makes one to its
/// log writer (the driver never blocks on the disk) and one to a machine's thread (consensus
/// never waits for a guest): `samples` serial round trips of a job over a bounded Tokio channel
/// to a thread blocked in `blocking_recv`, answered over a `oneshot` that wakes a runtime of
/// one worker, which is what a node on a shared machine runs. These are the machine thread's
/// primitives; the log writer is woken through a `Condvar` and answers through a callback.
///
/// With `gap` zero the samples run back to back; with a gap (a blocking sleep between samples)
/// each hand-off wakes a thread that has been idle that long, as at one client, where every
/// thread on a put's path waits most of a put between its turns. On this VM back to back took
/// 3–4 µs in some runs and 43–55 µs in others, paced 5–9 µs in every run (BENCHMARKS.md
/// series o): read it as a range, not a floor.
pub fn handoff_rtt_probe(samples: usize, gap: Duration) -> std::io::Result<Percentiles> {
    let n = samples.max(1);
    // A thread of its own: the probe's runtime must not be nested in the caller's.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(16);
        let thread = std::thread::spawn(move || {
            while let Some(reply) = rx.blocking_recv() {
                let _ = reply.send(());
            }
        });
        let h = rt.block_on(async move {
            let task = tokio::spawn(async move {
                let mut h = histogram();
                for _ in 0..n {
                    let t = Instant::now();
                    let (reply, answered) = tokio::sync::oneshot::channel();
                    tx.send(reply)
                        .await
                        .map_err(|_| std::io::Error::other("hand-off thread stopped"))?;
                    answered
                        .await
                        .map_err(|_| std::io::Error::other("hand-off thread stopped"))?;
                    record(&mut h, t.elapsed());
                    if !gap.is_zero() {
                        // Blocking on purpose: this runtime runs nothing else, and a sleeping
                        // worker is what a node's idle worker is.
                        std::thread::sleep(gap);
                    }
                }
                Ok::<_, std::io::Error>(h)
            });
            task.await.map_err(std::io::Error::other)?
        })?;
        thread
            .join()
            .map_err(|_| std::io::Error::other("hand-off thread panicked"))?;
        Ok(Percentiles::of(&h))
    })
    .join()
    .map_err(|_| std::io::Error::other("hand-off probe panicked"))?
}

/// The 1-, 5- and 15-minute load averages from `/proc/loadavg` (zeros if unreadable).
pub fn load_average() -> [f64; 3] {
    let mut s = String::new();
    let _ = std::fs::File::open("/proc/loadavg").and_then(|mut f| f.read_to_string(&mut s));
    let mut it = s
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}
