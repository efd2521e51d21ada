//! The access log (`--access-log PATH`, `-` for stdout; off by default): one JSON line per
//! request, written by a thread of its own so that no worker ever waits on the disk.
//!
//! Each worker appends lines to its own buffer ([`WorkerLog`]) and hands a full buffer
//! (32 KiB), or whatever it has every 100 ms, to the writer over a bounded channel with
//! `try_send`. When the writer cannot keep up (a slow or full disk, a pipe nobody reads)
//! the channel fills, and the worker drops the buffer and counts its lines
//! (`shardgate_access_log_lines_dropped_total`): requests never wait for the log. A write
//! that fails (ENOSPC) loses its lines, counted in `shardgate_access_log_write_errors_total`.
//!
//! SIGHUP makes the writer reopen the path before its next write (logrotate's
//! rename-then-HUP, no `copytruncate` needed). At shutdown the workers hand over what they
//! hold and the writer drains the channel before it exits.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use shardgate_core::metrics::{Telemetry, WorkerMetrics};

/// A worker hands its buffer over once it holds this much.
const FLUSH_BYTES: usize = 32 * 1024;
/// Buffers in flight to the writer at most (so at most ~8 MiB of log held in memory).
const CHANNEL_BUFFERS: usize = 256;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

impl Destination {
    pub fn parse(text: &str) -> Destination {
        if text == "-" {
            Destination::Stdout
        } else {
            Destination::File(PathBuf::from(text))
        }
    }
}

/// A batch of lines.
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

/// The workers' end: where they send batches (cloned into each worker's settings).
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: Sender<Batch>,
    reopen: Arc<AtomicBool>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("lines", &self.lines).finish()
    }
}

/// The writer thread, for shutdown.
#[derive(Debug)]
pub struct Writer {
    handle: JoinHandle<()>,
}

impl Writer {
    /// Waits until the writer has written what the (already stopped) workers handed over,
    /// up to `limit` (a writer stuck on a blocked destination is left behind).
    pub fn finish(self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while !self.handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.handle.is_finished() {
            let _ = self.handle.join();
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Opens the destination (so a bad path fails start-up) and starts the writer.
pub fn start(
    destination: Destination,
    telemetry: Arc<Telemetry>,
    reopen: Arc<AtomicBool>,
) -> io::Result<(AccessLog, Writer)> {
    let file = match &destination {
        Destination::Stdout => None,
        Destination::File(path) => Some(open(path)?),
    };
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL_BUFFERS);
    let flag = reopen.clone();
    let handle = std::thread::Builder::new()
        .name("shardgate-access-log".into())
        .spawn(move || write_loop(rx, destination, file, flag, &telemetry))?;
    Ok((AccessLog { tx, reopen }, Writer { handle }))
}

impl AccessLog {
    /// Reopen the file before the next write (SIGHUP).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

fn write_loop(
    rx: Receiver<Batch>,
    destination: Destination,
    mut file: Option<File>,
    reopen: Arc<AtomicBool>,
    telemetry: &Telemetry,
) {
    let mut warned = false;
    loop {
        let batch = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(batch) => Some(batch),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if reopen.swap(false, Ordering::AcqRel)
            && let Destination::File(path) = &destination
        {
            match open(path) {
                Ok(f) => {
                    file = Some(f);
                    tracing::info!(path = %path.display(), "access log reopened");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot reopen the access log; writing to the old file")
                }
            }
        }
        let Some(batch) = batch else { continue };
        let written = match &mut file {
            Some(f) => f.write_all(&batch.bytes),
            None => io::stdout().lock().write_all(&batch.bytes),
        };
        match written {
            Ok(()) => {
                telemetry
                    .log_written
                    .fetch_add(batch.lines, Ordering::Relaxed);
                warned = false;
            }
            Err(e) => {
                telemetry
                    .log_write_failed
                    .fetch_add(batch.lines, Ordering::Relaxed);
                if !warned {
                    tracing::warn!(error = %e, "access log write failed; lines are lost until it succeeds again");
                    warned = true;
                }
            }
        }
    }
}

/// One worker's buffer of lines not yet handed to the writer.
#[derive(Debug)]
pub struct WorkerLog {
    log: AccessLog,
    buf: RefCell<Batch>,
}

impl WorkerLog {
    pub fn new(log: AccessLog) -> WorkerLog {
        WorkerLog {
            log,
            buf: RefCell::new(Batch {
                bytes: Vec::new(),
                lines: 0,
            }),
        }
    }

    /// Adds one line, written by `write` straight into the buffer; hands the buffer over
    /// when it is full.
    pub fn push(&self, write: impl FnOnce(&mut Vec<u8>), metrics: &WorkerMetrics) {
        let full = {
            let mut b = self.buf.borrow_mut();
            if b.bytes.capacity() == 0 {
                b.bytes.reserve(FLUSH_BYTES + 4096);
            }
            write(&mut b.bytes);
            b.lines += 1;
            b.bytes.len() >= FLUSH_BYTES
        };
        if full {
            self.flush(metrics);
        }
    }

    /// Hands what is buffered to the writer, or drops and counts it when the writer is
    /// behind.
    pub fn flush(&self, metrics: &WorkerMetrics) {
        let batch = {
            let mut b = self.buf.borrow_mut();
            if b.lines == 0 {
                return;
            }
            std::mem::replace(
                &mut *b,
                Batch {
                    bytes: Vec::new(),
                    lines: 0,
                },
            )
        };
        match self.log.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => {
                metrics
                    .log_dropped
                    .fetch_add(batch.lines, Ordering::Relaxed);
            }
        }
    }
}
