//! The access log (`--access-log PATH`, `-` for stdout; off by default): one JSON line per
//! request, written by a thread of its own so that no worker ever waits on the disk.
//!
//! Each worker appends lines to its own buffer ([`WorkerLog`]) and hands a full buffer
//! (16 KiB), or whatever it has every 100 ms, to the writer over a bounded channel with
//! `try_send`. When the writer cannot keep up (a slow or full disk, a pipe nobody reads)
//! the channel fills, and the worker drops the buffer and counts its lines
//! (`shardgate_access_log_lines_dropped_total`): requests never wait for the log. A write
//! that fails (ENOSPC) loses its lines, counted in `shardgate_access_log_write_errors_total`.
//!
//! Close to half of what a line costs is the writer's (~270 ns a line on the bench VM, most
//! of it the file system's work for the page cache), and waking it has a price of its own.
//! So the writer is woken at most once per burst of traffic: after a write it sleeps
//! [`BUSY_NAP`] (not parked on the channel, so a worker's `try_send` wakes nobody) and then
//! writes everything that arrived meanwhile in one `writev`; only a channel found empty
//! parks it again. Emptied buffers go back to the workers, which therefore never allocate
//! one under load.
//!
//! SIGHUP makes the writer reopen the path before its next write (logrotate's
//! rename-then-HUP, no `copytruncate` needed). At shutdown the workers hand over what they
//! hold and the writer drains the channel before it exits.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use shardgate_core::metrics::{Telemetry, WorkerMetrics};

/// A worker hands its buffer over once it holds this much (measured side by side: 16 KiB
/// cost less than 8 or 64 KiB).
const FLUSH_BYTES: usize = 16 * 1024;
/// Buffers in flight to the writer at most (so at most ~8 MiB of log held in memory).
const CHANNEL_BUFFERS: usize = 512;
/// Emptied buffers kept for the workers to reuse.
const SPARE_BUFFERS: usize = 64;
/// After a write, the writer sleeps this long before it looks again: under load it writes
/// about 40 times a second, whatever the request rate, and is never woken by a worker
/// (each wake-up costs a context switch on a core that serves requests).
const BUSY_NAP: Duration = Duration::from_millis(25);
/// A look that finds this many batches waiting means the channel could fill during a nap
/// (8 MiB in 25 ms is 335 MB/s of log): the writer then writes again at once.
const NO_NAP_BATCHES: usize = CHANNEL_BUFFERS / 4;
/// Batches written with one `writev` at most (the kernel's IOV_MAX is 1024).
const WRITEV_BATCHES: usize = 256;

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

impl Batch {
    fn empty() -> Batch {
        Batch {
            bytes: Vec::new(),
            lines: 0,
        }
    }
}

/// The workers' end: where they send batches and take emptied buffers back (cloned into
/// each worker's settings).
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: Sender<Batch>,
    spare: Receiver<Vec<u8>>,
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
    let (spare_tx, spare) = crossbeam_channel::bounded(SPARE_BUFFERS);
    let flag = reopen.clone();
    let out = Output {
        destination,
        file,
        reopen: flag,
        warned: false,
    };
    let handle = std::thread::Builder::new()
        .name("shardgate-access-log".into())
        .spawn(move || write_loop(rx, spare_tx, out, &telemetry))?;
    Ok((AccessLog { tx, spare, reopen }, Writer { handle }))
}

impl AccessLog {
    /// Reopen the file before the next write (SIGHUP).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

/// The writer's destination.
struct Output {
    destination: Destination,
    file: Option<File>,
    reopen: Arc<AtomicBool>,
    warned: bool,
}

impl Output {
    /// Reopens the file when SIGHUP asked for it (a file that cannot be opened keeps the
    /// old one).
    fn reopen_if_asked(&mut self) {
        if self.reopen.swap(false, Ordering::AcqRel)
            && let Destination::File(path) = &self.destination
        {
            match open(path) {
                Ok(f) => {
                    self.file = Some(f);
                    tracing::info!(path = %path.display(), "access log reopened");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot reopen the access log; writing to the old file")
                }
            }
        }
    }

    /// Writes the batches in order, all of them or up to the first failure, and counts
    /// their lines as written or lost.
    fn write(&mut self, batches: &[Batch], telemetry: &Telemetry) {
        let lines: u64 = batches.iter().map(|b| b.lines).sum();
        let written = match &mut self.file {
            Some(f) => write_batches(f, batches),
            None => write_batches(&mut io::stdout().lock(), batches),
        };
        match written {
            Ok(()) => {
                telemetry.log_written.fetch_add(lines, Ordering::Relaxed);
                self.warned = false;
            }
            Err(e) => {
                telemetry
                    .log_write_failed
                    .fetch_add(lines, Ordering::Relaxed);
                if !self.warned {
                    tracing::warn!(error = %e, "access log write failed; lines are lost until it succeeds again");
                    self.warned = true;
                }
            }
        }
    }
}

/// `write_all` over several buffers: one `writev` each time, resumed where a short write
/// stopped.
fn write_batches(out: &mut impl Write, batches: &[Batch]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batches.iter().map(|b| IoSlice::new(&b.bytes)).collect();
    let mut rest = &mut slices[..];
    // Skips leading empty buffers (a `writev` of nothing but empty ones returns 0).
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.flush()
}

fn write_loop(rx: Receiver<Batch>, spare: Sender<Vec<u8>>, mut out: Output, telemetry: &Telemetry) {
    let mut batches: Vec<Batch> = Vec::with_capacity(WRITEV_BATCHES);
    let mut open = true;
    while open {
        // Idle: parked on the channel (a worker's hand-over wakes it), looking up every
        // 200 ms for a SIGHUP.
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => {
                out.reopen_if_asked();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        batches.push(first);
        // Busy: write what has arrived, nap, repeat until a look finds nothing.
        loop {
            while batches.len() < WRITEV_BATCHES {
                match rx.try_recv() {
                    Ok(batch) => batches.push(batch),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if batches.is_empty() {
                break;
            }
            out.reopen_if_asked();
            out.write(&batches, telemetry);
            let busy = batches.len() >= NO_NAP_BATCHES;
            for batch in batches.drain(..) {
                let mut bytes = batch.bytes;
                bytes.clear();
                // More spares than the workers need are dropped.
                let _ = spare.try_send(bytes);
            }
            if !open {
                break;
            }
            if !busy {
                std::thread::sleep(BUSY_NAP);
            }
        }
    }
    // Disconnected is only reported once the channel is empty: everything queued has
    // been written above.
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
            buf: RefCell::new(Batch::empty()),
        }
    }

    /// Adds one line, written by `write` straight into the buffer; hands the buffer over
    /// when it is full.
    pub fn push(&self, write: impl FnOnce(&mut Vec<u8>), metrics: &WorkerMetrics) {
        let full = {
            let mut b = self.buf.borrow_mut();
            if b.bytes.capacity() == 0 {
                b.bytes = match self.log.spare.try_recv() {
                    Ok(bytes) => bytes,
                    Err(_) => Vec::with_capacity(FLUSH_BYTES + 4096),
                };
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
            std::mem::replace(&mut *b, Batch::empty())
        };
        match self.log.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => {
                metrics
                    .log_dropped
                    .fetch_add(batch.lines, Ordering::Relaxed);
                // The buffer is kept for the next lines.
                let mut bytes = batch.bytes;
                bytes.clear();
                self.buf.borrow_mut().bytes = bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `step` bytes per call, like a pipe or a short write.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut left = self.step;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn short_writes_resume_where_they_stopped_and_keep_the_order() {
        let batches: Vec<Batch> = ["first line\n", "", "second\nthird\n", "x\n"]
            .iter()
            .map(|t| Batch {
                bytes: t.as_bytes().to_vec(),
                lines: t.matches('\n').count() as u64,
            })
            .collect();
        for step in [1, 3, 7, 100] {
            let mut out = Trickle {
                out: Vec::new(),
                step,
            };
            write_batches(&mut out, &batches).expect("writes");
            assert_eq!(out.out, b"first line\nsecond\nthird\nx\n", "step {step}");
        }
    }

    #[test]
    fn a_writer_that_takes_nothing_is_an_error_not_a_loop() {
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let batch = Batch {
            bytes: b"line\n".to_vec(),
            lines: 1,
        };
        let err = write_batches(&mut Stuck, &[batch]).expect_err("no progress");
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
    }
}
