//! The access log's writer thread.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

/// Writes access log lines on a thread of its own (`mesh-access-log`), from a bounded queue:
/// [`write`](Self::write) never blocks and makes no system call, and a line that finds the
/// queue full is dropped and counted ([`dropped`](Self::dropped)).
///
/// The thread is not woken per line (a wake-up is a system call, several microseconds on a
/// busy machine: more than formatting the line): it wakes every [`FLUSH_INTERVAL`], or as
/// soon as the queue is half full, writes what has queued and flushes it. A line reaches the
/// file within about [`FLUSH_INTERVAL`].
///
/// Lines are written into buffers the thread hands back once written ([`buffer`](Self::buffer)):
/// no allocation per line on the worker and no free on the thread, once the buffers of the
/// lines in flight exist.
///
/// [`reopen`](Self::reopen) closes and reopens the file (after a log rotation); the thread
/// ends, after writing what was queued, when the writer is dropped.
#[derive(Debug)]
pub struct AccessLogWriter {
    pub(super) tx: SyncSender<Cmd>,
    /// Written lines' buffers, emptied, for the next lines (at most the queue's size).
    pub(super) spare: Arc<Mutex<Vec<Vec<u8>>>>,
    pub(super) dropped: AtomicU64,
    pub(super) path: PathBuf,
    /// Lines queued and not yet taken by the thread.
    pub(super) pending: Arc<AtomicUsize>,
    /// `pending` at which the thread is woken early.
    pub(super) high: usize,
    /// The writer thread (`None` in tests that drive no thread).
    pub(super) thread: Option<Thread>,
}

pub(super) enum Cmd {
    Line(Vec<u8>),
    Reopen,
    Flush(SyncSender<()>),
}

/// Lines waiting for the writer thread, at most, by default.
pub const DEFAULT_QUEUE: usize = 4096;

/// How long the writer thread sleeps when it has nothing to write.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A buffer larger than this (a line with a long path or user agent) is freed, not reused.
const SPARE_MAX_CAPACITY: usize = 4096;

/// Buffers a worker takes from the shared spares at once (one lock per batch).
const BATCH: usize = 32;

thread_local! {
    /// This worker's empty line buffers, taken from a writer's spares in batches.
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl AccessLogWriter {
    /// Opens `path` for appending (creating it; `/dev/stdout` is the process's standard
    /// output) and starts the thread, with room for `queue` lines.
    pub fn open(path: impl AsRef<Path>, queue: usize) -> io::Result<AccessLogWriter> {
        let path = path.as_ref().to_path_buf();
        let file = open(&path)?;
        let queue = queue.max(1);
        let (tx, rx) = mpsc::sync_channel(queue);
        let pending = Arc::new(AtomicUsize::new(0));
        let spare = Arc::new(Mutex::new(Vec::new()));
        let (p, n, sp) = (path.clone(), pending.clone(), spare.clone());
        let thread = std::thread::Builder::new()
            .name("mesh-access-log".into())
            .spawn(move || write_loop(file, &p, &rx, &n, &sp, queue))?;
        Ok(AccessLogWriter {
            tx,
            spare,
            dropped: AtomicU64::new(0),
            path,
            pending,
            high: queue.div_ceil(2),
            thread: Some(thread.thread().clone()),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An empty buffer for a line, with `capacity` bytes at least: one the thread wrote
    /// before when there is one (this thread's, or a batch of the thread's spares), else a
    /// new one. Hand it back through [`write`](Self::write).
    pub fn buffer(&self, capacity: usize) -> Vec<u8> {
        let reused = BUFFERS.with_borrow_mut(|local| {
            if local.is_empty() {
                let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
                let from = spare.len().saturating_sub(BATCH);
                local.extend(spare.drain(from..));
            }
            local.pop()
        });
        match reused {
            Some(mut b) => {
                b.clear();
                b.reserve(capacity);
                b
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Queues `line` (which ends with its `\n`); drops and counts it when the queue is full.
    pub fn write(&self, line: Vec<u8>) {
        match self.tx.try_send(Cmd::Line(line)) {
            Ok(()) => {
                if self.pending.fetch_add(1, Ordering::Relaxed) + 1 == self.high {
                    self.wake();
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped because the queue was full (or the thread gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Closes and reopens the file after the lines queued before (log rotation). Blocks
    /// only while the queue is full; never call it on a request's path.
    pub fn reopen(&self) {
        self.wake();
        let _ = self.tx.send(Cmd::Reopen);
        self.wake();
    }

    /// Blocks until every line queued before the call is written and flushed (tests,
    /// shutdown).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.wake();
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            self.wake();
            let _ = rx.recv();
        }
    }

    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        // the thread sees the queue closed at once, writes what is left and ends
        let (tx, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.tx, tx));
        self.wake();
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Hands the written lines' buffers back to the workers (at most `max` kept, one lock).
fn give_back(written: &mut Vec<Vec<u8>>, spare: &Mutex<Vec<Vec<u8>>>, max: usize) {
    if written.is_empty() {
        return;
    }
    let mut spare = spare.lock().unwrap_or_else(|e| e.into_inner());
    let room = max.saturating_sub(spare.len());
    let keep = written.len().min(room);
    spare.extend(written.drain(..keep));
    drop(spare);
    written.clear();
}

fn write_loop(
    file: File,
    path: &Path,
    rx: &Receiver<Cmd>,
    pending: &AtomicUsize,
    spare: &Mutex<Vec<Vec<u8>>>,
    max_spare: usize,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut failing = false;
    let mut written = Vec::new();
    loop {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Line(mut line)) => {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    if let Err(e) = out.write_all(&line) {
                        if !failing {
                            tracing::warn!(path = %path.display(), error = %e, "access log write failed");
                        }
                        failing = true;
                    }
                    if line.capacity() <= SPARE_MAX_CAPACITY {
                        line.clear();
                        written.push(line);
                        if written.len() >= BATCH {
                            give_back(&mut written, spare, max_spare);
                        }
                    }
                }
                Ok(Cmd::Reopen) => {
                    let _ = out.flush();
                    match open(path) {
                        Ok(f) => {
                            out = BufWriter::with_capacity(64 * 1024, f);
                            failing = false;
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "access log reopen failed; writing to the old file")
                        }
                    }
                }
                Ok(Cmd::Flush(ack)) => {
                    give_back(&mut written, spare, max_spare);
                    let _ = out.flush();
                    let _ = ack.send(());
                }
                Err(TryRecvError::Empty) => {
                    give_back(&mut written, spare, max_spare);
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        // idle: what was written reaches the file now
        if out.flush().is_ok() {
            failing = false;
        }
        std::thread::park_timeout(FLUSH_INTERVAL);
    }
}
