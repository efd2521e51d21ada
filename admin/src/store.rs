//! The durable `Store`: an append-only journal of mutations plus a periodic checkpoint of the
//! whole state, in one data directory. Generic over any [`Durable`] state machine, so the
//! admin `State` and the toy state of the tests go through the same code.
//!
//! # Lifecycle
//!
//! `open` creates the directory if absent (mode 0700: the state holds private keys, such as
//! upstream mTLS keys), locks it, loads `checkpoint.bin` (if any), replays `journal.log`
//! through [`Durable::apply`] and hands back the recovered state. The owner then, per change:
//! validate → [`Store::append`] (returns once the record is fsynced) → apply to its state →
//! [`Store::maybe_checkpoint`]. A checkpoint writes the state and starts an empty journal.
//!
//! # On-disk format (all integers little-endian)
//!
//! ```text
//! LOCK                 empty; held with flock(LOCK_EX|LOCK_NB) while a Store is open
//! journal.log          (mode 0600, like checkpoint.bin) header (24 bytes), then frames
//!   header             magic "SGJOURNL" (8) | format version u32 | generation u64
//!                      | crc32 of the preceding 20 bytes u32
//!   frame              payload length u32 (>= 1) | crc32 of payload u32 | payload
//!                      payload = JSON (serde) of one Mutation
//! checkpoint.bin       magic "SGCHKPNT" (8) | format version u32 | generation u64
//!                      | payload length u64 | crc32 of (generation, length, payload) u32
//!                      | payload = JSON of the whole state
//! *.tmp                a checkpoint or journal being written; never read, removed on open
//! ```
//!
//! The *generation* ties the two files together. A store that never checkpointed is at
//! generation 0 (no `checkpoint.bin`, the state is `S::default()`). Checkpoint number `g`
//! carries generation `g`, and the journal that follows it carries the same number in its
//! header: its records are to be applied on top of exactly that checkpoint.
//!
//! # Why a crash at any point recovers correctly
//!
//! Both files are only ever *replaced* by `rename` of a fully written and fsynced temp file,
//! so each name holds either the complete old file or the complete new one — never a mix.
//! Only the journal is modified in place, and only by appending one frame at a time.
//!
//! Checkpoint from generation `g` to `g + 1`, and what a crash after each step leaves:
//!
//! 1. write + fsync `checkpoint.bin.tmp` (generation `g + 1`) — on disk: checkpoint `g`,
//!    journal `g`. Recovery replays journal `g` over checkpoint `g`; the temp file is deleted.
//! 2. rename it over `checkpoint.bin`, fsync the directory — on disk: checkpoint `g` or
//!    `g + 1` (the rename may not be durable yet), journal `g`. Checkpoint `g + 1` was written
//!    from a state that already had every record of journal `g` applied, so recovery
//!    **discards a journal whose generation is older than the checkpoint's** instead of
//!    replaying it: replaying would apply its records twice.
//! 3. write + fsync `journal.log.tmp` (header only, generation `g + 1`), rename it over
//!    `journal.log`, fsync the directory — on disk: checkpoint `g + 1` with journal `g` (as
//!    above) or with the new empty journal `g + 1`. Both recover to the checkpointed state.
//!
//! So a journal's records are replayed only over the checkpoint they were written after
//! (nothing applied twice), and a journal is discarded only when a newer checkpoint holds
//! its records (nothing lost). A journal *newer* than the checkpoint cannot arise from a
//! crash; it means `checkpoint.bin` was deleted or restored from an old copy, and replaying
//! it over the wrong base would silently produce a wrong state, so `open` refuses. Likewise
//! a missing `journal.log` next to a `checkpoint.bin`.
//!
//! Between the rename in step 2 and the end of step 3 the store must not append to the old
//! journal (recovery might discard it), so a failure there poisons the store; a later
//! successful [`Store::checkpoint`] (or a restart) clears it.
//!
//! # Torn tails and corruption
//!
//! An append is one `write` of the whole frame followed by `fdatasync`; the API answers only
//! after that. A crash mid-append can leave a *prefix* of the last frame, or (on filesystems
//! that extend the size before the data lands) a frame whose payload is partly zeros. So on
//! recovery the **final** frame is dropped, and the file truncated back to the frame before
//! it, when: its header is short, its length runs past the end of the file, its CRC does not
//! match although it ends exactly at the end of the file, or everything from it to the end
//! of the file is zero bytes. It was never acknowledged, so dropping it loses nothing the API
//! promised. The drop is logged with `tracing::warn!` and reported in [`StoreStats::recovery`].
//!
//! (A bit flip in the length field of a middle frame that makes it seem to run past the end
//! looks the same as a torn tail and is cut off too; the warning says how many bytes went.)
//!
//! Anything else is corruption and `open` refuses, naming the file and byte offset: a CRC
//! mismatch or a zero length with more bytes after the frame (a torn write only ever damages
//! the end), and — wherever it is — a frame whose CRC matches but whose payload does not
//! decode or does not apply. A matching CRC proves those bytes are what was written, so such
//! a frame is not torn: the journal no longer describes the state the API acknowledged
//! (a format change or a bug), and starting from a guess would be worse than not starting.
//! This is why the owner must validate a mutation *before* appending it.
//!
//! A failed append truncates the journal back to its previous length so that a partial
//! frame can never be followed by valid ones; if even that fails the store is poisoned.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const JOURNAL_FILE: &str = "journal.log";
const JOURNAL_TMP: &str = "journal.log.tmp";
const CHECKPOINT_FILE: &str = "checkpoint.bin";
const CHECKPOINT_TMP: &str = "checkpoint.bin.tmp";
const LOCK_FILE: &str = "LOCK";

const JOURNAL_MAGIC: [u8; 8] = *b"SGJOURNL";
const CHECKPOINT_MAGIC: [u8; 8] = *b"SGCHKPNT";
/// Bumped on any incompatible change to the framing, headers or payload encoding.
///
/// 2: payloads are JSON, which is self-describing: a field added to an entity later (with a
/// `#[serde(default)]`) reads old records unchanged, so the model can grow without a
/// migration. JSON costs space and time only in checkpoints and records, which are off the
/// request path.
const FORMAT_VERSION: u32 = 2;
/// Format 1: payloads were bincode, whose positional encoding cannot take a new field. It is
/// no longer read: the stored types have grown since (an upstream's `tls`), so bincode would
/// misread what format 1 wrote. The releases that wrote format 2 also read format 1 and
/// rewrote it as format 2 at open, so a format-1 directory is refused with that advice.
const FORMAT_BINCODE: u32 = 1;
/// The data directory's mode when `open` creates it: the owner only.
const DIR_MODE: u32 = 0o700;
/// The journal's and checkpoint's mode: they hold private keys.
const FILE_MODE: u32 = 0o600;
const JOURNAL_HEADER_LEN: usize = 24;
const CHECKPOINT_HEADER_LEN: usize = 32;
const FRAME_HEADER_LEN: usize = 8;

/// A state machine the store can persist.
pub trait Durable: serde::Serialize + serde::de::DeserializeOwned + Default {
    type Mutation: serde::Serialize + serde::de::DeserializeOwned;
    type Error: std::fmt::Display;
    /// The one apply used both by live writes and by recovery. Must leave self unchanged on Err.
    fn apply(&mut self, m: &Self::Mutation) -> Result<(), Self::Error>;
}

/// How the store trades durability against speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Checkpoint once the journal holds at least this many bytes of records.
    /// Default 64 MiB. Smaller: faster start-up (less to replay) but more frequent full-state
    /// writes; larger: the reverse. Recovery reads the whole journal into memory, so this
    /// also bounds start-up memory.
    pub checkpoint_bytes: u64,
    /// fsync each record before `append` returns, and fsync files and the directory around
    /// checkpoints. Default `true`. `false` is for benchmarks only: a process crash still
    /// loses nothing (the page cache survives it) but a power loss or kernel crash may lose
    /// acknowledged writes.
    pub fsync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            checkpoint_bytes: 64 * 1024 * 1024,
            fsync: true,
        }
    }
}

/// What recovery found when the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Generation of the checkpoint recovery started from (0: none, the default state).
    pub checkpoint_generation: u64,
    /// Journal records replayed on top of the checkpoint.
    pub replayed_records: u64,
    /// An incomplete final record that was dropped (never acknowledged).
    pub torn_tail: Option<TornTail>,
    /// Generation of a journal left over from a checkpoint interrupted after its rename;
    /// its records were already in the checkpoint, so it was discarded.
    pub discarded_stale_journal: Option<u64>,
}

/// An incomplete record at the end of the journal, cut off by recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Byte offset in `journal.log` where the dropped record started; the file now ends here.
    pub offset: u64,
    /// How many bytes were cut off.
    pub dropped_bytes: u64,
}

/// A snapshot of the store's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Generation of the newest checkpoint (0: none yet).
    pub generation: u64,
    /// Size of `journal.log` in bytes, header included.
    pub journal_bytes: u64,
    /// Records appended since the newest checkpoint (replayed ones included).
    pub records_since_checkpoint: u64,
    /// Checkpoints written since `open`.
    pub checkpoints_written: u64,
    /// Whether appends are refused until a successful `checkpoint` (see [`StoreError::Poisoned`]).
    pub poisoned: bool,
    /// What `open` found.
    pub recovery: Recovery,
}

/// Which part of a file a corruption was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Header,
    Record,
    Checkpoint,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Region::Header => "header",
            Region::Record => "record",
            Region::Checkpoint => "checkpoint",
        })
    }
}

/// Why a file was judged damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corruption {
    /// The file does not start with the expected magic bytes: it is not this kind of file.
    WrongMagic {
        expected: &'static str,
    },
    /// Written in another format version: a newer one, or format 1 (bincode), which this
    /// build no longer reads.
    UnsupportedVersion {
        found: u32,
        supported: u32,
    },
    /// Shorter than its fixed header.
    ShortHeader {
        len: u64,
    },
    CrcMismatch,
    /// A record of length zero followed by more data (the store never writes empty records).
    ZeroLength,
    /// Checksum fine, but the payload is not a valid encoding of the expected type.
    Undecodable {
        detail: String,
    },
    /// Checksum fine and decoded, but `Durable::apply` rejected it.
    ApplyFailed {
        detail: String,
    },
    /// The checkpoint's declared payload length disagrees with the file size.
    LengthMismatch {
        declared: u64,
        actual: u64,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::WrongMagic { expected } => {
                write!(f, "bad magic bytes: not a shardgate {expected} file")
            }
            Corruption::UnsupportedVersion { found, supported } => write!(
                f,
                "format version {found}, this build reads version {supported}"
            ),
            Corruption::ShortHeader { len } => write!(f, "file is only {len} bytes long"),
            Corruption::CrcMismatch => f.write_str("crc mismatch"),
            Corruption::ZeroLength => f.write_str("zero-length record"),
            Corruption::Undecodable { detail } => write!(f, "undecodable payload: {detail}"),
            Corruption::ApplyFailed { detail } => write!(f, "replay rejected it: {detail}"),
            Corruption::LengthMismatch { declared, actual } => write!(
                f,
                "declares {declared} payload bytes but {actual} follow the header"
            ),
        }
    }
}

/// Everything that can go wrong opening or writing the store.
#[derive(Debug)]
pub enum StoreError {
    /// A filesystem call failed.
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// Another process (or another `Store` in this one) holds the directory's `LOCK`.
    Locked { path: PathBuf },
    /// A file is damaged in a way a crash cannot explain; the store refuses to start.
    Corrupt {
        path: PathBuf,
        offset: u64,
        region: Region,
        reason: Corruption,
    },
    /// `journal.log` and `checkpoint.bin` do not belong together: the journal is missing or
    /// newer than the checkpoint, which no crash produces (see the module docs).
    GenerationMismatch {
        journal: PathBuf,
        /// `None`: the journal is missing.
        journal_generation: Option<u64>,
        checkpoint_generation: u64,
    },
    /// Serializing a mutation or the state failed.
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    /// A mutation encoded to a size a record cannot hold (1 ..= u32::MAX bytes).
    RecordSize { len: usize },
    /// An earlier append or checkpoint failed in a way that could not be rolled back, so the
    /// journal may not end where the store thinks. Appends are refused until a successful
    /// `checkpoint` rewrites both files (or the process restarts and recovers).
    Poisoned { journal: PathBuf },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, op, source } => {
                write!(f, "{}: {op} failed: {source}", path.display())
            }
            StoreError::Locked { path } => write!(
                f,
                "{}: data directory is locked by another running store (is another shardgate \
                 using it?)",
                path.display()
            ),
            StoreError::Corrupt {
                path,
                reason:
                    Corruption::UnsupportedVersion {
                        found: FORMAT_BINCODE,
                        ..
                    },
                ..
            } => write!(
                f,
                "{}: written in format version {FORMAT_BINCODE} (bincode), which this build no \
                 longer reads (it reads version {FORMAT_VERSION}): start the previous release \
                 once on this data directory, which rewrites it as version {FORMAT_VERSION}, \
                 then this one; refusing to start, nothing was changed",
                path.display()
            ),
            StoreError::Corrupt {
                path,
                reason: Corruption::UnsupportedVersion { found, .. },
                ..
            } => write!(
                f,
                "{}: written in format version {found}, and this build reads version \
                 {FORMAT_VERSION}: a newer release wrote it; refusing to start, nothing was \
                 changed",
                path.display()
            ),
            StoreError::Corrupt {
                path,
                offset,
                region,
                reason,
            } => write!(
                f,
                "{}: corrupt {region} at offset {offset} ({reason}); refusing to start — the \
                 data directory is damaged beyond a torn tail",
                path.display()
            ),
            StoreError::GenerationMismatch {
                journal,
                journal_generation: None,
                checkpoint_generation,
            } => write!(
                f,
                "{}: missing, but checkpoint.bin (generation {checkpoint_generation}) exists; \
                 records written after it would be lost; refusing to start",
                journal.display()
            ),
            StoreError::GenerationMismatch {
                journal,
                journal_generation: Some(j),
                checkpoint_generation,
            } => write!(
                f,
                "{}: follows checkpoint generation {j} but checkpoint.bin is at generation \
                 {checkpoint_generation} (deleted or restored from an older copy?); refusing \
                 to start",
                journal.display()
            ),
            StoreError::Encode { what, source } => write!(f, "encoding the {what}: {source}"),
            StoreError::RecordSize { len } => write!(
                f,
                "mutation encodes to {len} bytes; a journal record holds 1 to {} bytes",
                u32::MAX
            ),
            StoreError::Poisoned { journal } => write!(
                f,
                "{}: an earlier failed write could not be rolled back; appends are refused \
                 until a checkpoint succeeds or the process restarts",
                journal.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            StoreError::Encode { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The journal + checkpoint pair in one locked directory. See the module docs.
pub struct Store<S: Durable> {
    dir: PathBuf,
    journal_path: PathBuf,
    opts: StoreOptions,
    journal: File,
    /// Where the next frame goes. Tracked here rather than relying on the file cursor or
    /// O_APPEND so that a failed write can be cut back to exactly this length.
    journal_len: u64,
    records: u64,
    generation: u64,
    checkpoints_written: u64,
    poisoned: bool,
    recovery: Recovery,
    /// Holds the flock for as long as the store lives; closing it releases the lock.
    _lock: File,
    _state: PhantomData<fn() -> S>,
}

impl<S: Durable> fmt::Debug for Store<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("opts", &self.opts)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<S: Durable> Store<S> {
    /// Opens (creating if absent) the data directory, recovers checkpoint + journal, returns the store and the recovered state.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<(Store<S>, S), StoreError> {
        let existed = dir.exists();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io_err(dir, "create data directory"))?;
        if existed {
            warn_if_others_can_read(dir);
        } else if opts.fsync {
            // Make the new directory's own name durable, or a power loss could lose the
            // whole directory along with the acknowledged writes inside it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock = lock_dir(dir)?;

        // Leftovers of a checkpoint interrupted before its rename: never authoritative.
        for tmp in [CHECKPOINT_TMP, JOURNAL_TMP] {
            let path = dir.join(tmp);
            match fs::remove_file(&path) {
                Ok(()) => tracing::warn!(
                    path = %path.display(),
                    "removed a temp file left by an interrupted checkpoint"
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, "remove stale temp file")(e)),
            }
        }

        let checkpoint_path = dir.join(CHECKPOINT_FILE);
        // No checkpoint yet: generation 0, the default state.
        let (generation, mut state): (u64, S) =
            read_checkpoint(&checkpoint_path)?.unwrap_or((0, S::default()));
        let mut recovery = Recovery {
            checkpoint_generation: generation,
            ..Recovery::default()
        };

        let journal_path = dir.join(JOURNAL_FILE);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&journal_path);
        let (journal, journal_len, records) = match opened {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if generation > 0 {
                    return Err(StoreError::GenerationMismatch {
                        journal: journal_path,
                        journal_generation: None,
                        checkpoint_generation: generation,
                    });
                }
                let file = install_fresh_journal(dir, 0, opts.fsync)?;
                (file, JOURNAL_HEADER_LEN as u64, 0)
            }
            Err(e) => return Err(io_err(&journal_path, "open")(e)),
            Ok(mut file) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)
                    .map_err(io_err(&journal_path, "read"))?;
                let journal_generation = parse_journal_header(&journal_path, &bytes)?;
                if journal_generation < generation {
                    tracing::warn!(
                        journal = %journal_path.display(),
                        journal_generation,
                        checkpoint_generation = generation,
                        "discarding a journal already contained in the checkpoint \
                         (a checkpoint was interrupted after its rename)"
                    );
                    recovery.discarded_stale_journal = Some(journal_generation);
                    drop(file);
                    let file = install_fresh_journal(dir, generation, opts.fsync)?;
                    (file, JOURNAL_HEADER_LEN as u64, 0)
                } else if journal_generation > generation {
                    return Err(StoreError::GenerationMismatch {
                        journal: journal_path,
                        journal_generation: Some(journal_generation),
                        checkpoint_generation: generation,
                    });
                } else {
                    let replayed = replay(&journal_path, &bytes, &mut state)?;
                    if let Some(torn) = replayed.torn_tail {
                        tracing::warn!(
                            journal = %journal_path.display(),
                            offset = torn.offset,
                            dropped_bytes = torn.dropped_bytes,
                            "dropping an incomplete final record (torn write; it was never acknowledged)"
                        );
                        file.set_len(torn.offset)
                            .map_err(io_err(&journal_path, "truncate torn tail"))?;
                        if opts.fsync {
                            file.sync_all().map_err(io_err(&journal_path, "fsync"))?;
                        }
                    }
                    recovery.replayed_records = replayed.records;
                    recovery.torn_tail = replayed.torn_tail;
                    (file, replayed.good_len, replayed.records)
                }
            }
        };

        let store = Store {
            dir: dir.to_path_buf(),
            journal_path,
            opts,
            journal,
            journal_len,
            records,
            generation,
            checkpoints_written: 0,
            poisoned: false,
            recovery,
            _lock: lock,
            _state: PhantomData,
        };
        Ok((store, state))
    }

    /// Reads the state in `dir` without opening the store: no lock, no writes (a torn tail
    /// is skipped, not truncated; a stale journal is ignored). For `shardgate doctor`, which
    /// may run beside the gateway that holds the lock; what it reads is as of the last
    /// complete record.
    pub fn peek(dir: &Path) -> Result<S, StoreError> {
        let (generation, mut state): (u64, S) =
            read_checkpoint(&dir.join(CHECKPOINT_FILE))?.unwrap_or((0, S::default()));
        let journal_path = dir.join(JOURNAL_FILE);
        let bytes = match fs::read(&journal_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(io_err(&journal_path, "read")(e)),
        };
        if parse_journal_header(&journal_path, &bytes)? == generation {
            replay(&journal_path, &bytes, &mut state)?;
        }
        Ok(state)
    }

    /// Appends one mutation to the journal and fsyncs before returning. Caller applies it to its state after this returns Ok.
    ///
    /// The caller must have validated `m` so that `apply` will accept it: a journaled
    /// mutation that replay cannot apply makes the next `open` refuse (see the module docs).
    pub fn append(&mut self, m: &S::Mutation) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                journal: self.journal_path.clone(),
            });
        }
        let payload = serde_json::to_vec(m).map_err(|source| StoreError::Encode {
            what: "mutation",
            source,
        })?;
        // Zero is excluded so that a zero-filled tail can never parse as a valid record.
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len > 0)
            .ok_or(StoreError::RecordSize { len: payload.len() })?;
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);

        let written = self
            .journal
            .write_all_at(&frame, self.journal_len)
            .and_then(|()| {
                if self.opts.fsync {
                    self.journal.sync_data()
                } else {
                    Ok(())
                }
            });
        match written {
            Ok(()) => {
                self.journal_len += frame.len() as u64;
                self.records += 1;
                Ok(())
            }
            Err(source) => {
                self.roll_back_failed_append();
                Err(StoreError::Io {
                    path: self.journal_path.clone(),
                    op: "append record",
                    source,
                })
            }
        }
    }

    /// Cuts the journal back to the last acknowledged record, so that whatever part of the
    /// failed frame reached the file cannot end up in the middle of the journal once later
    /// appends succeed (recovery would call that corruption, or worse, replay it).
    fn roll_back_failed_append(&mut self) {
        let rolled_back = self.journal.set_len(self.journal_len).and_then(|()| {
            if self.opts.fsync {
                self.journal.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = rolled_back {
            tracing::error!(
                journal = %self.journal_path.display(),
                error = %e,
                "could not roll back a failed append; refusing further appends"
            );
            self.poisoned = true;
        }
    }

    /// Called by the owner after it applied a mutation: if the journal's records reached
    /// `opts.checkpoint_bytes`, write a checkpoint of `state` and start an empty journal.
    /// Returns whether it checkpointed. (Bytes only, no record-count trigger: replay time
    /// tracks bytes closely enough, and a second knob would be one more thing to tune.)
    pub fn maybe_checkpoint(&mut self, state: &S) -> Result<bool, StoreError> {
        let record_bytes = self.journal_len - JOURNAL_HEADER_LEN as u64;
        if self.records == 0 || record_bytes < self.opts.checkpoint_bytes {
            return Ok(false);
        }
        self.checkpoint(state)?;
        Ok(true)
    }

    /// Writes `state` as checkpoint generation + 1 and starts an empty journal after it.
    ///
    /// `state` must have every successfully appended mutation applied: the old journal is
    /// discarded on the strength of this checkpoint. Works on a poisoned store too, and on
    /// success clears the poison, since it rewrites both files from the in-memory state.
    pub fn checkpoint(&mut self, state: &S) -> Result<(), StoreError> {
        let next = self.generation + 1;
        let payload = serde_json::to_vec(state).map_err(|source| StoreError::Encode {
            what: "state",
            source,
        })?;
        let mut bytes = Vec::with_capacity(CHECKPOINT_HEADER_LEN + payload.len());
        bytes.extend_from_slice(&CHECKPOINT_MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&next.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[12..28]);
        crc.update(&payload);
        bytes.extend_from_slice(&crc.finalize().to_le_bytes());
        bytes.extend_from_slice(&payload);

        // Until the rename, the old checkpoint + journal stay authoritative and the store
        // stays usable if anything fails.
        let tmp = self.dir.join(CHECKPOINT_TMP);
        let written = write_synced(&tmp, &bytes, self.opts.fsync)
            .and_then(|()| fs::rename(&tmp, self.dir.join(CHECKPOINT_FILE)));
        if let Err(e) = written {
            // (No let-chain here: the workspace's rust-version is 1.85.)
            match fs::remove_file(&tmp) {
                Err(rm) if rm.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(path = %tmp.display(), error = %rm, "could not remove checkpoint temp file");
                }
                _ => {}
            }
            return Err(io_err(&tmp, "write checkpoint")(e));
        }

        // From here checkpoint.bin may already be generation `next`, and recovery would then
        // discard the current journal: appending to it now could lose acknowledged writes.
        self.poisoned = true;
        if self.opts.fsync {
            sync_dir(&self.dir)?;
        }
        self.journal = install_fresh_journal(&self.dir, next, self.opts.fsync)?;
        self.journal_len = JOURNAL_HEADER_LEN as u64;
        self.records = 0;
        self.generation = next;
        self.checkpoints_written += 1;
        self.poisoned = false;
        Ok(())
    }

    /// The data directory this store holds locked.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Journal size, records and generation now, plus what recovery found at `open`.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            generation: self.generation,
            journal_bytes: self.journal_len,
            records_since_checkpoint: self.records,
            checkpoints_written: self.checkpoints_written,
            poisoned: self.poisoned,
            recovery: self.recovery,
        }
    }
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, op, source }
}

fn corrupt(path: &Path, offset: usize, region: Region, reason: Corruption) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        region,
        reason,
    }
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Checks magic and version, the part of the header shared by both files. Magic first, so a
/// foreign file is reported as such rather than as a version or length problem.
fn check_magic_and_version(
    path: &Path,
    bytes: &[u8],
    magic: &[u8; 8],
    kind: &'static str,
    header_len: usize,
) -> Result<(), StoreError> {
    let short = Corruption::ShortHeader {
        len: bytes.len() as u64,
    };
    match bytes.get(..8) {
        Some(found) if found == magic => {}
        Some(_) => {
            return Err(corrupt(
                path,
                0,
                Region::Header,
                Corruption::WrongMagic { expected: kind },
            ));
        }
        None => return Err(corrupt(path, 0, Region::Header, short)),
    }
    if bytes.len() < header_len {
        return Err(corrupt(path, 0, Region::Header, short));
    }
    match le_u32(bytes, 8) {
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(corrupt(
            path,
            8,
            Region::Header,
            Corruption::UnsupportedVersion {
                found,
                supported: FORMAT_VERSION,
            },
        )),
        None => Err(corrupt(path, 0, Region::Header, short)),
    }
}

fn journal_header(generation: u64) -> [u8; JOURNAL_HEADER_LEN] {
    let mut h = [0u8; JOURNAL_HEADER_LEN];
    h[..8].copy_from_slice(&JOURNAL_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Returns the generation of the checkpoint this journal follows. The header is never torn
/// (the file is created whole by rename), so any defect here is corruption.
fn parse_journal_header(path: &Path, bytes: &[u8]) -> Result<u64, StoreError> {
    check_magic_and_version(path, bytes, &JOURNAL_MAGIC, "journal", JOURNAL_HEADER_LEN)?;
    let fields = bytes.get(..20);
    match (le_u64(bytes, 12), le_u32(bytes, 20), fields) {
        (Some(generation), Some(crc), Some(fields)) if crc32fast::hash(fields) == crc => {
            Ok(generation)
        }
        _ => Err(corrupt(path, 0, Region::Header, Corruption::CrcMismatch)),
    }
}

/// The checkpoint's generation and state; `None` when there is none.
fn read_checkpoint<S: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<(u64, S)>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "read")(e)),
    };
    check_magic_and_version(
        path,
        &bytes,
        &CHECKPOINT_MAGIC,
        "checkpoint",
        CHECKPOINT_HEADER_LEN,
    )?;
    let short = || {
        corrupt(
            path,
            0,
            Region::Header,
            Corruption::ShortHeader {
                len: bytes.len() as u64,
            },
        )
    };
    let generation = le_u64(&bytes, 12).ok_or_else(short)?;
    let declared = le_u64(&bytes, 20).ok_or_else(short)?;
    let crc = le_u32(&bytes, 28).ok_or_else(short)?;
    let covered = bytes.get(12..28).ok_or_else(short)?;
    let payload = bytes.get(CHECKPOINT_HEADER_LEN..).ok_or_else(short)?;
    if declared != payload.len() as u64 {
        return Err(corrupt(
            path,
            20,
            Region::Header,
            Corruption::LengthMismatch {
                declared,
                actual: payload.len() as u64,
            },
        ));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(covered);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Err(corrupt(
            path,
            12,
            Region::Checkpoint,
            Corruption::CrcMismatch,
        ));
    }
    let state = decode_exact::<S>(payload)
        .map_err(|reason| corrupt(path, CHECKPOINT_HEADER_LEN, Region::Checkpoint, reason))?;
    Ok(Some((generation, state)))
}

/// Decodes a whole JSON payload; trailing bytes mean the writer and reader disagree.
fn decode_exact<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Corruption> {
    serde_json::from_slice(payload).map_err(|e| Corruption::Undecodable {
        detail: e.to_string(),
    })
}

struct Replayed {
    /// Length of the journal up to the end of the last good record.
    good_len: u64,
    records: u64,
    torn_tail: Option<TornTail>,
}

enum Frame<'a> {
    Complete(&'a [u8]),
    /// Explainable by a crash during the final append.
    Torn,
    Corrupt(Corruption),
}

/// Classifies the frame at the start of `rest` (which runs to the end of the file).
fn next_frame(rest: &[u8]) -> Frame<'_> {
    if rest.iter().all(|&b| b == 0) {
        // The size reached disk before the data did. We never write a zero length, so this
        // cannot be a run of real records.
        return Frame::Torn;
    }
    let (Some(len), Some(crc)) = (le_u32(rest, 0), le_u32(rest, 4)) else {
        return Frame::Torn; // short frame header
    };
    let Some(end) = FRAME_HEADER_LEN.checked_add(len as usize) else {
        return Frame::Torn;
    };
    let Some(payload) = rest.get(FRAME_HEADER_LEN..end) else {
        return Frame::Torn; // length runs past the end of the file
    };
    // A torn write damages only the end of the file: a bad frame that ends exactly there may
    // be our interrupted append (length written, payload only partly); one with more bytes
    // after it cannot be.
    let is_last = end == rest.len();
    let bad = if len == 0 {
        Corruption::ZeroLength
    } else if crc32fast::hash(payload) != crc {
        Corruption::CrcMismatch
    } else {
        return Frame::Complete(payload);
    };
    if is_last {
        Frame::Torn
    } else {
        Frame::Corrupt(bad)
    }
}

fn replay<S: Durable>(path: &Path, bytes: &[u8], state: &mut S) -> Result<Replayed, StoreError> {
    let mut pos = JOURNAL_HEADER_LEN;
    let mut records = 0;
    while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
        match next_frame(rest) {
            Frame::Complete(payload) => {
                let m = decode_exact::<S::Mutation>(payload)
                    .map_err(|reason| corrupt(path, pos, Region::Record, reason))?;
                state.apply(&m).map_err(|e| {
                    corrupt(
                        path,
                        pos,
                        Region::Record,
                        Corruption::ApplyFailed {
                            detail: e.to_string(),
                        },
                    )
                })?;
                pos += FRAME_HEADER_LEN + payload.len();
                records += 1;
            }
            Frame::Torn => {
                return Ok(Replayed {
                    good_len: pos as u64,
                    records,
                    torn_tail: Some(TornTail {
                        offset: pos as u64,
                        dropped_bytes: rest.len() as u64,
                    }),
                });
            }
            Frame::Corrupt(reason) => return Err(corrupt(path, pos, Region::Record, reason)),
        }
    }
    Ok(Replayed {
        good_len: pos as u64,
        records,
        torn_tail: None,
    })
}

fn write_synced(path: &Path, bytes: &[u8], fsync: bool) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.write_all(bytes)?;
    if fsync {
        file.sync_all()?;
    }
    Ok(())
}

/// Atomically replaces `journal.log` with an empty journal following checkpoint
/// `generation`, and returns it open for appending. The whole file is written and fsynced
/// under a temp name first, so `journal.log` never exists with a partial header.
fn install_fresh_journal(dir: &Path, generation: u64, fsync: bool) -> Result<File, StoreError> {
    let tmp = dir.join(JOURNAL_TMP);
    let path = dir.join(JOURNAL_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(io_err(&tmp, "create"))?;
    file.write_all(&journal_header(generation))
        .map_err(io_err(&tmp, "write"))?;
    if fsync {
        file.sync_all().map_err(io_err(&tmp, "fsync"))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path, "rename new journal into place"))?;
    if fsync {
        sync_dir(dir)?;
    }
    // The handle now names journal.log.
    Ok(file)
}

/// Warns when an existing data directory lets others than its owner in: the state holds
/// private keys. Its mode is the operator's choice, so it is not changed.
fn warn_if_others_can_read(dir: &Path) {
    if let Ok(meta) = fs::metadata(dir)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the data directory is open to other users, and its files hold private keys; \
             chmod 700 it"
        );
    }
}

/// Makes renames and file creations in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path, "open"))?;
    match try_flock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(StoreError::Locked { path }),
        Err(source) => Err(StoreError::Io {
            path,
            op: "lock",
            source,
        }),
    }
}

/// `Ok(false)` when someone else holds the lock. std's `File::try_lock` does this safely but
/// needs Rust 1.89, above the workspace's `rust-version`; switch to it when that moves.
#[allow(unsafe_code)]
fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock only reads its two integer arguments; the descriptor comes from a `File`
    // borrowed for the duration of the call, so it is open and owned by us throughout.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::error::Error;

    use serde::{Deserialize, Serialize};

    use super::*;

    type TestResult = Result<(), Box<dyn Error>>;

    /// A toy state: a string map plus a count of applied mutations, so that a record applied
    /// twice shows up even when the map alone would not reveal it.
    #[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Kv {
        entries: BTreeMap<String, String>,
        applied: u64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    enum Op {
        Put(String, String),
        Delete(String),
    }

    impl Durable for Kv {
        type Mutation = Op;
        type Error = String;
        fn apply(&mut self, m: &Op) -> Result<(), String> {
            match m {
                Op::Put(k, v) => {
                    self.entries.insert(k.clone(), v.clone());
                }
                Op::Delete(k) => {
                    if self.entries.remove(k).is_none() {
                        return Err(format!("no key {k:?}"));
                    }
                }
            }
            self.applied += 1;
            Ok(())
        }
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put(k.to_owned(), v.to_owned())
    }

    fn del(k: &str) -> Op {
        Op::Delete(k.to_owned())
    }

    fn open(dir: &Path) -> Result<(Store<Kv>, Kv), StoreError> {
        Store::open(dir, StoreOptions::default())
    }

    /// What the admin thread does per change: journal first, then apply.
    fn write(store: &mut Store<Kv>, state: &mut Kv, op: Op) -> TestResult {
        store.append(&op)?;
        state.apply(&op)?;
        Ok(())
    }

    fn kv(pairs: &[(&str, &str)], applied: u64) -> Kv {
        Kv {
            entries: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            applied,
        }
    }

    fn open_err(dir: &Path) -> Result<StoreError, Box<dyn Error>> {
        match open(dir) {
            Ok(_) => Err("open succeeded but should have refused".into()),
            Err(e) => Ok(e),
        }
    }

    /// A version-1 data directory as releases before format 2 wrote it: checkpoint
    /// generation 1, then a journal of one record after it. The payloads stand in for
    /// bincode: the version in the headers is all that `open` may look at.
    fn write_version_1(dir: &Path) -> TestResult {
        fs::create_dir_all(dir)?;
        let payload = b"\x01\x02 bincode of the previous release";
        let mut checkpoint = Vec::new();
        checkpoint.extend_from_slice(&CHECKPOINT_MAGIC);
        checkpoint.extend_from_slice(&FORMAT_BINCODE.to_le_bytes());
        checkpoint.extend_from_slice(&1u64.to_le_bytes());
        checkpoint.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&checkpoint[12..28]);
        crc.update(payload);
        checkpoint.extend_from_slice(&crc.finalize().to_le_bytes());
        checkpoint.extend_from_slice(payload);
        fs::write(dir.join(CHECKPOINT_FILE), checkpoint)?;

        let mut journal = journal_header(1).to_vec();
        journal[8..12].copy_from_slice(&FORMAT_BINCODE.to_le_bytes());
        let crc = crc32fast::hash(&journal[..20]);
        journal[20..24].copy_from_slice(&crc.to_le_bytes());
        journal.extend_from_slice(&u32::try_from(payload.len())?.to_le_bytes());
        journal.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        journal.extend_from_slice(payload);
        fs::write(dir.join(JOURNAL_FILE), journal)?;
        Ok(())
    }

    #[test]
    fn a_version_1_directory_is_refused_saying_to_open_it_with_the_previous_release_first()
    -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data");
        write_version_1(&dir)?;
        let before = files_in(&dir)?;

        let err = open_err(&dir)?;
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    reason: Corruption::UnsupportedVersion { found: 1, .. },
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("format version 1 (bincode)")
                && message.contains("no longer reads")
                && message.contains("previous release")
                && message.contains("nothing was changed"),
            "{message}"
        );
        assert_eq!(files_in(&dir)?, before, "the directory is left as it was");
        Ok(())
    }

    /// Every file in `dir` but the lock, with its bytes.
    fn files_in(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, Box<dyn Error>> {
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != LOCK_FILE {
                files.insert(name, fs::read(entry.path())?);
            }
        }
        Ok(files)
    }

    #[test]
    fn the_data_directory_is_created_owner_only_and_its_files_are_0600() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data");
        let (mut store, mut state) = open(&dir)?;
        write(
            &mut store,
            &mut state,
            put("secret", "-----BEGIN PRIVATE KEY-----"),
        )?;
        store.checkpoint(&state)?;
        write(&mut store, &mut state, put("b", "2"))?;
        let mode = |path: &Path| -> io::Result<u32> {
            Ok(fs::metadata(path)?.permissions().mode() & 0o777)
        };
        assert_eq!(mode(&dir)?, 0o700, "the data directory");
        for file in [JOURNAL_FILE, CHECKPOINT_FILE] {
            assert_eq!(mode(&dir.join(file))?, 0o600, "{file}");
        }
        Ok(())
    }

    #[test]
    fn an_unknown_format_version_is_refused_naming_both() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data");
        drop(open(&dir)?);
        let path = dir.join(JOURNAL_FILE);
        let mut bytes = fs::read(&path)?;
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        fs::write(&path, bytes)?;
        let message = open_err(&dir)?.to_string();
        assert!(
            message.contains("format version 7")
                && message.contains("reads version 2")
                && message.contains("nothing was changed"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn fresh_directory_is_created_and_opens_with_default_state() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("nested/data");
        let (store, state) = open(&dir)?;
        assert_eq!(state, Kv::default());
        assert_eq!(store.dir(), dir);
        assert!(dir.join(JOURNAL_FILE).is_file());
        assert!(!dir.join(CHECKPOINT_FILE).exists());
        let stats = store.stats();
        assert_eq!(stats.generation, 0);
        assert_eq!(stats.journal_bytes, JOURNAL_HEADER_LEN as u64);
        assert_eq!(stats.recovery, Recovery::default());
        Ok(())
    }

    #[test]
    fn appended_records_survive_reopen() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, mut state) = open(tmp.path())?;
        write(&mut store, &mut state, put("a", "1"))?;
        write(&mut store, &mut state, put("b", "2"))?;
        write(&mut store, &mut state, del("a"))?;
        drop(store);

        let (store, recovered) = open(tmp.path())?;
        assert_eq!(recovered, state);
        assert_eq!(recovered, kv(&[("b", "2")], 3));
        assert_eq!(store.stats().recovery.replayed_records, 3);
        assert_eq!(store.stats().records_since_checkpoint, 3);
        Ok(())
    }

    #[test]
    fn checkpoint_empties_journal_and_state_survives_reopen() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, mut state) = open(tmp.path())?;
        write(&mut store, &mut state, put("a", "1"))?;
        write(&mut store, &mut state, put("b", "2"))?;
        store.checkpoint(&state)?;
        assert_eq!(store.stats().generation, 1);
        assert_eq!(store.stats().journal_bytes, JOURNAL_HEADER_LEN as u64);
        assert_eq!(
            fs::metadata(tmp.path().join(JOURNAL_FILE))?.len(),
            JOURNAL_HEADER_LEN as u64
        );
        drop(store);

        let (store, recovered) = open(tmp.path())?;
        assert_eq!(recovered, kv(&[("a", "1"), ("b", "2")], 2));
        assert_eq!(store.stats().recovery.checkpoint_generation, 1);
        assert_eq!(store.stats().recovery.replayed_records, 0);
        Ok(())
    }

    #[test]
    fn records_after_a_checkpoint_replay_on_top_of_it() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, mut state) = open(tmp.path())?;
        write(&mut store, &mut state, put("a", "1"))?;
        store.checkpoint(&state)?;
        write(&mut store, &mut state, del("a"))?;
        write(&mut store, &mut state, put("c", "3"))?;
        store.checkpoint(&state)?;
        write(&mut store, &mut state, put("d", "4"))?;
        drop(store);

        let (store, recovered) = open(tmp.path())?;
        assert_eq!(recovered, state);
        assert_eq!(recovered, kv(&[("c", "3"), ("d", "4")], 4));
        assert_eq!(store.stats().generation, 2);
        assert_eq!(store.stats().recovery.replayed_records, 1);
        Ok(())
    }

    #[test]
    fn maybe_checkpoint_fires_only_once_journal_reaches_the_threshold() -> TestResult {
        let tmp = tempfile::tempdir()?;
        // Every record below has the same size: frame header + JSON of `Put("x", "1")`.
        let record = (FRAME_HEADER_LEN + serde_json::to_vec(&put("a", "1"))?.len()) as u64;
        let opts = StoreOptions {
            checkpoint_bytes: 3 * record + 1,
            ..StoreOptions::default()
        };
        let (mut store, mut state) = Store::<Kv>::open(tmp.path(), opts)?;
        assert!(!store.maybe_checkpoint(&state)?, "empty journal");
        write(&mut store, &mut state, put("a", "1"))?;
        assert!(!store.maybe_checkpoint(&state)?);
        write(&mut store, &mut state, put("b", "2"))?;
        write(&mut store, &mut state, put("c", "3"))?;
        assert!(
            !store.maybe_checkpoint(&state)?,
            "3 records, one byte short"
        );
        write(&mut store, &mut state, put("d", "4"))?;
        assert!(store.maybe_checkpoint(&state)?, "4 records");
        assert_eq!(store.stats().checkpoints_written, 1);
        assert_eq!(store.stats().records_since_checkpoint, 0);
        assert!(!store.maybe_checkpoint(&state)?);
        Ok(())
    }

    /// Writes three records and returns the journal bytes and where the last frame starts.
    fn three_record_journal(dir: &Path) -> Result<(Vec<u8>, usize), Box<dyn Error>> {
        let (mut store, mut state) = open(dir)?;
        write(&mut store, &mut state, put("a", "1"))?;
        write(&mut store, &mut state, put("b", "2"))?;
        let last_start = usize::try_from(store.stats().journal_bytes)?;
        write(&mut store, &mut state, put("c", "a longer value"))?;
        drop(store);
        Ok((fs::read(dir.join(JOURNAL_FILE))?, last_start))
    }

    #[test]
    fn torn_last_record_is_dropped_and_earlier_records_survive() -> TestResult {
        let original = tempfile::tempdir()?;
        let (journal, last_start) = three_record_journal(original.path())?;
        for cut in last_start + 1..journal.len() {
            let tmp = tempfile::tempdir()?;
            let path = tmp.path().join(JOURNAL_FILE);
            fs::write(&path, &journal[..cut])?;

            let (mut store, mut state) = open(tmp.path())?;
            assert_eq!(state, kv(&[("a", "1"), ("b", "2")], 2), "cut at {cut}");
            assert_eq!(
                store.stats().recovery.torn_tail,
                Some(TornTail {
                    offset: last_start as u64,
                    dropped_bytes: (cut - last_start) as u64,
                }),
                "cut at {cut}"
            );
            assert_eq!(fs::metadata(&path)?.len(), last_start as u64);

            // New records go right after the surviving ones and replay cleanly.
            write(&mut store, &mut state, put("d", "4"))?;
            drop(store);
            let (store, recovered) = open(tmp.path())?;
            assert_eq!(recovered, kv(&[("a", "1"), ("b", "2"), ("d", "4")], 3));
            assert_eq!(store.stats().recovery.torn_tail, None);
        }
        Ok(())
    }

    #[test]
    fn last_record_with_crc_mismatch_is_treated_as_torn() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut journal, last_start) = three_record_journal(tmp.path())?;
        let last = journal.len() - 1;
        journal[last] ^= 0xff;
        fs::write(tmp.path().join(JOURNAL_FILE), &journal)?;

        let (store, state) = open(tmp.path())?;
        assert_eq!(state, kv(&[("a", "1"), ("b", "2")], 2));
        let torn = store.stats().recovery.torn_tail;
        assert_eq!(torn.map(|t| t.offset), Some(last_start as u64));
        Ok(())
    }

    #[test]
    fn zero_filled_tail_is_treated_as_torn() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut journal, _) = three_record_journal(tmp.path())?;
        let good_len = journal.len();
        journal.extend_from_slice(&[0u8; 100]);
        fs::write(tmp.path().join(JOURNAL_FILE), &journal)?;

        let (store, state) = open(tmp.path())?;
        assert_eq!(state.applied, 3);
        assert_eq!(
            store.stats().recovery.torn_tail,
            Some(TornTail {
                offset: good_len as u64,
                dropped_bytes: 100,
            })
        );
        Ok(())
    }

    #[test]
    fn corrupted_middle_record_refuses_to_open_naming_file_and_offset() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut journal, _) = three_record_journal(tmp.path())?;
        // The second record starts after the header and the first frame.
        let second =
            JOURNAL_HEADER_LEN + FRAME_HEADER_LEN + serde_json::to_vec(&put("a", "1"))?.len();
        journal[second + FRAME_HEADER_LEN + 1] ^= 0x01;
        fs::write(tmp.path().join(JOURNAL_FILE), &journal)?;

        let err = open_err(tmp.path())?;
        assert!(
            matches!(
                &err,
                StoreError::Corrupt { offset, reason: Corruption::CrcMismatch, .. }
                    if *offset == second as u64
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("journal.log"), "{msg}");
        assert!(msg.contains(&format!("offset {second}")), "{msg}");
        assert!(msg.contains("crc mismatch"), "{msg}");
        // Refusing must not have "repaired" anything.
        assert_eq!(fs::read(tmp.path().join(JOURNAL_FILE))?, journal);
        Ok(())
    }

    #[test]
    fn record_that_replay_cannot_apply_refuses_to_open() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, _) = open(tmp.path())?;
        // Journaled without validation, which the owner must never do.
        store.append(&del("missing"))?;
        store.append(&put("a", "1"))?;
        drop(store);

        let msg = open_err(tmp.path())?.to_string();
        assert!(msg.contains("journal.log"), "{msg}");
        assert!(
            msg.contains(&format!("offset {JOURNAL_HEADER_LEN}")),
            "{msg}"
        );
        assert!(msg.contains("no key \"missing\""), "{msg}");
        Ok(())
    }

    #[test]
    fn corrupt_checkpoint_refuses_to_open() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, mut state) = open(tmp.path())?;
        write(&mut store, &mut state, put("a", "1"))?;
        store.checkpoint(&state)?;
        drop(store);
        let path = tmp.path().join(CHECKPOINT_FILE);
        let mut bytes = fs::read(&path)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes)?;

        let msg = open_err(tmp.path())?.to_string();
        assert!(msg.contains("checkpoint.bin"), "{msg}");
        assert!(msg.contains("crc mismatch"), "{msg}");
        Ok(())
    }

    #[test]
    fn foreign_file_in_place_of_journal_is_refused_as_not_a_journal() -> TestResult {
        let tmp = tempfile::tempdir()?;
        fs::write(
            tmp.path().join(JOURNAL_FILE),
            b"2024-01-01 INFO started\n2024-01-01 INFO stopped\n",
        )?;
        let msg = open_err(tmp.path())?.to_string();
        assert!(msg.contains("journal.log"), "{msg}");
        assert!(msg.contains("not a shardgate journal file"), "{msg}");
        Ok(())
    }

    #[test]
    fn crash_after_checkpoint_rename_before_journal_reset_applies_nothing_twice() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, mut state) = open(tmp.path())?;
        write(&mut store, &mut state, put("a", "1"))?;
        store.checkpoint(&state)?; // generation 1 holds a
        // Journal generation 1: replaying it twice would fail on the second delete.
        write(&mut store, &mut state, del("a"))?;
        write(&mut store, &mut state, put("b", "2"))?;
        let stale_journal = fs::read(tmp.path().join(JOURNAL_FILE))?;
        store.checkpoint(&state)?; // generation 2 holds b
        drop(store);
        // The crash: checkpoint 2 renamed into place, journal 1 not yet replaced.
        fs::write(tmp.path().join(JOURNAL_FILE), &stale_journal)?;

        let (mut store, mut recovered) = open(tmp.path())?;
        assert_eq!(recovered, kv(&[("b", "2")], 3));
        assert_eq!(store.stats().recovery.discarded_stale_journal, Some(1));
        assert_eq!(store.stats().generation, 2);

        // The store carries on at generation 2 and the stale journal is gone for good.
        write(&mut store, &mut recovered, put("c", "3"))?;
        drop(store);
        let (store, again) = open(tmp.path())?;
        assert_eq!(again, kv(&[("b", "2"), ("c", "3")], 4));
        assert_eq!(store.stats().recovery.discarded_stale_journal, None);
        Ok(())
    }

    #[test]
    fn crash_before_checkpoint_rename_keeps_old_checkpoint_and_journal() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, mut state) = open(tmp.path())?;
        write(&mut store, &mut state, put("a", "1"))?;
        drop(store);
        // A half-written checkpoint and journal temp file from the interrupted attempt.
        fs::write(tmp.path().join(CHECKPOINT_TMP), b"SGCHKPNT\x01\x00")?;
        fs::write(tmp.path().join(JOURNAL_TMP), b"SGJ")?;

        let (_store, recovered) = open(tmp.path())?;
        assert_eq!(recovered, kv(&[("a", "1")], 1));
        assert!(!tmp.path().join(CHECKPOINT_TMP).exists());
        assert!(!tmp.path().join(JOURNAL_TMP).exists());
        Ok(())
    }

    #[test]
    fn journal_newer_than_checkpoint_is_refused() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, mut state) = open(tmp.path())?;
        write(&mut store, &mut state, put("a", "1"))?;
        store.checkpoint(&state)?;
        write(&mut store, &mut state, put("b", "2"))?;
        drop(store);
        fs::remove_file(tmp.path().join(CHECKPOINT_FILE))?;

        let err = open_err(tmp.path())?;
        assert!(
            matches!(
                err,
                StoreError::GenerationMismatch {
                    journal_generation: Some(1),
                    checkpoint_generation: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn missing_journal_next_to_a_checkpoint_is_refused() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, mut state) = open(tmp.path())?;
        write(&mut store, &mut state, put("a", "1"))?;
        store.checkpoint(&state)?;
        drop(store);
        fs::remove_file(tmp.path().join(JOURNAL_FILE))?;

        let msg = open_err(tmp.path())?.to_string();
        assert!(msg.contains("journal.log: missing"), "{msg}");
        Ok(())
    }

    #[test]
    fn second_open_of_a_locked_directory_is_refused_until_the_first_closes() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (first, _) = open(tmp.path())?;
        let err = open_err(tmp.path())?;
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("locked"), "{err}");
        drop(first);
        let (_second, _) = open(tmp.path())?;
        Ok(())
    }

    #[test]
    fn append_that_cannot_be_rolled_back_poisons_the_store_until_a_checkpoint() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let (mut store, mut state) = open(tmp.path())?;
        write(&mut store, &mut state, put("a", "1"))?;
        // A read-only handle makes both the write and the truncate-back fail.
        store.journal = File::open(tmp.path().join(JOURNAL_FILE))?;
        assert!(matches!(
            store.append(&put("b", "2")),
            Err(StoreError::Io { .. })
        ));
        assert!(store.stats().poisoned);
        assert!(matches!(
            store.append(&put("c", "3")),
            Err(StoreError::Poisoned { .. })
        ));

        store.checkpoint(&state)?;
        assert!(!store.stats().poisoned);
        write(&mut store, &mut state, put("d", "4"))?;
        drop(store);
        let (_store, recovered) = open(tmp.path())?;
        assert_eq!(recovered, kv(&[("a", "1"), ("d", "4")], 2));
        Ok(())
    }
}
