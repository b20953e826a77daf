//! The access log's writer thread.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};

/// Writes access log lines on a thread of its own (`mesh-access-log`), from a bounded queue:
/// [`write`](Self::write) never blocks, and a line that finds the queue full is dropped and
/// counted ([`dropped`](Self::dropped)). The thread buffers its writes and flushes whenever
/// the queue is empty, so a line reaches the file as soon as the thread is idle.
///
/// [`reopen`](Self::reopen) closes and reopens the file (after a log rotation); the thread
/// ends, after writing what was queued, when the writer is dropped.
#[derive(Debug)]
pub struct AccessLogWriter {
    pub(super) tx: SyncSender<Cmd>,
    pub(super) dropped: AtomicU64,
    pub(super) path: PathBuf,
}

pub(super) enum Cmd {
    Line(Vec<u8>),
    Reopen,
    Flush(SyncSender<()>),
}

/// Lines waiting for the writer thread, at most, by default.
pub const DEFAULT_QUEUE: usize = 4096;

impl AccessLogWriter {
    /// Opens `path` for appending (creating it; `/dev/stdout` is the process's standard
    /// output) and starts the thread, with room for `queue` lines.
    pub fn open(path: impl AsRef<Path>, queue: usize) -> io::Result<AccessLogWriter> {
        let path = path.as_ref().to_path_buf();
        let file = open(&path)?;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let p = path.clone();
        std::thread::Builder::new()
            .name("mesh-access-log".into())
            .spawn(move || write_loop(file, &p, rx))?;
        Ok(AccessLogWriter {
            tx,
            dropped: AtomicU64::new(0),
            path,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `line` (which ends with its `\n`); drops and counts it when the queue is full.
    pub fn write(&self, line: Vec<u8>) {
        match self.tx.try_send(Cmd::Line(line)) {
            Ok(()) => {}
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
    /// only when the queue is full; never call it on a request's path.
    pub fn reopen(&self) {
        let _ = self.tx.send(Cmd::Reopen);
    }

    /// Blocks until every line queued before the call is written and flushed (tests,
    /// shutdown).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(file: File, path: &Path, rx: Receiver<Cmd>) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut failing = false;
    let mut next = rx.recv().ok();
    while let Some(cmd) = next {
        match cmd {
            Cmd::Line(line) => {
                if let Err(e) = out.write_all(&line) {
                    if !failing {
                        tracing::warn!(path = %path.display(), error = %e, "access log write failed");
                    }
                    failing = true;
                }
            }
            Cmd::Reopen => {
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
            Cmd::Flush(ack) => {
                let _ = out.flush();
                let _ = ack.send(());
            }
        }
        next = match rx.try_recv() {
            Ok(cmd) => Some(cmd),
            Err(TryRecvError::Empty) => {
                // idle: what was written reaches the file now
                if out.flush().is_ok() {
                    failing = false;
                }
                rx.recv().ok()
            }
            Err(TryRecvError::Disconnected) => None,
        };
    }
    let _ = out.flush();
}
