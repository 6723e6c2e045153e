//! The checkpoint directory of a query: metadata, offset log, commit log,
//! and the lock that keeps a second query out.
//!
//! ```text
//! <checkpoint>/metadata        query id, engine version, sources, sink
//! <checkpoint>/offsets/<N>     OffsetEntry, written before batch N runs
//! <checkpoint>/commits/<N>     CommitEntry, written after its sink commit
//! <checkpoint>/state/0/…       the streaming aggregation's state store
//!                              (version N+1 = state after batch N; see
//!                              tidemill_state::StateStore for its files)
//! <checkpoint>/sources/<i>/…   source-private logs
//! <checkpoint>/lock            held while a query runs: an OS lock (flock) on
//!                              local disk, a lease on object storage
//! ```
//!
//! Every file is a [`tidemill_state::envelope`]: a header naming its kind
//! and format version, a JSON body, a CRC-32 trailer.
//!
//! **One writer.** On local disk the OS file lock keeps a second query
//! out and is released by the OS when its holder dies. On object storage
//! (`s3://…`) the lock is a lease written with conditional puts and renewed
//! by a heartbeat; the query checks it before each batch's sink commit and
//! fails if it was lost (see `lease` for the protocol and the rule). Within
//! one process a registry of open checkpoints refuses a second query at
//! once, on any store (`memory://` has nothing else).
//!
//! [`read_metadata`], [`offset_log`] and [`commit_log`] read these files
//! without the lock, for inspecting a checkpoint (`tidemill status`) while
//! a query may be running on it; they never write.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tidemill_state::{CheckpointDir, NumberedLog};

use crate::lease::{Lease, LeaseOptions};
use crate::{Location, Offset, OutputMode, Result, TidemillError};

const FORMAT_VERSION: u32 = 1;

/// Reads the `metadata` file of the checkpoint in `dir`; `Ok(None)` if
/// there is none. Only reads: takes no lock and writes nothing. Fails
/// naming the file if it is truncated, altered or of another format.
pub async fn read_metadata(dir: &CheckpointDir) -> tidemill_state::Result<Option<Metadata>> {
    dir.read("metadata", "metadata", FORMAT_VERSION).await
}

/// The offset log (`offsets/<N>`) of the checkpoint in `dir`. Reading it
/// ([`NumberedLog::ids`], [`NumberedLog::get`]) takes no lock and writes
/// nothing; only a query holding the checkpoint writes it.
pub fn offset_log(dir: &CheckpointDir) -> NumberedLog<OffsetEntry> {
    NumberedLog::new(dir.child("offsets"), "offsets", FORMAT_VERSION)
}

/// The commit log (`commits/<N>`) of the checkpoint in `dir`, as
/// [`offset_log`].
pub fn commit_log(dir: &CheckpointDir) -> NumberedLog<CommitEntry> {
    NumberedLog::new(dir.child("commits"), "commits", FORMAT_VERSION)
}

/// The `metadata` file: what the checkpoint belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The query's id, kept across restarts.
    pub query_id: String,
    /// The Tidemill version that created the checkpoint.
    pub engine_version: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The sources' descriptions, by index.
    pub sources: Vec<String>,
    /// The sink's description.
    pub sink: String,
    /// Each stateful operator's description, by operator number (see
    /// [`Checkpoint::check_operators`]); absent in checkpoints written
    /// before it was recorded.
    #[serde(default)]
    pub operators: Option<Vec<String>>,
}

/// One source's range in an offset log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRange {
    /// The source's description when the batch was planned.
    pub description: String,
    /// The end of the previous batch (exclusive start); `None` at the beginning.
    pub start: Option<Offset>,
    /// The end of this batch (inclusive); equal to `start` if the source
    /// contributed nothing.
    pub end: Option<Offset>,
}

/// An `offsets/<N>` file: the write-ahead record of batch N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsetEntry {
    /// The batch id N.
    pub batch_id: u64,
    /// When the batch was planned, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Each source's range, by source index.
    pub sources: Vec<SourceRange>,
    /// The event-time watermark the batch runs with, in milliseconds, if any.
    pub watermark_ms: Option<i64>,
    /// The previous batch's watermark: what stateful operators fed by
    /// another one drop late rows by (see `stateful::BatchWatermarks`).
    #[serde(default)]
    pub previous_watermark_ms: Option<i64>,
    /// The output mode.
    pub output_mode: OutputMode,
}

/// A `commits/<N>` file: batch N's output and state are committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitEntry {
    /// The batch id N.
    pub batch_id: u64,
    /// When the batch committed, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The watermark computed at the end of the batch, for the next one.
    pub next_watermark_ms: Option<i64>,
}

/// Where a restarted query resumes; see [`Checkpoint::recovery_point`].
#[derive(Debug)]
pub(crate) struct RecoveryPoint {
    /// The id of the next batch to run (or re-run).
    pub next_batch_id: u64,
    /// Each source's end of the last committed batch.
    pub committed: Vec<Option<Offset>>,
    /// The batch to re-run, if the last one never committed.
    pub pending: Option<OffsetEntry>,
    /// The watermark the next batch runs with.
    pub watermark_ms: Option<i64>,
    /// The watermark the last batch ran with (the next batch's previous
    /// watermark).
    pub last_watermark_ms: Option<i64>,
}

/// An open checkpoint, locked for one query.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    pub location: Location,
    pub dir: CheckpointDir,
    pub offsets: NumberedLog<OffsetEntry>,
    pub commits: NumberedLog<CommitEntry>,
    _lock: CheckpointLock,
}

impl Checkpoint {
    /// Locks the checkpoint at `location` (a checkpoint on object storage
    /// with a lease of `lease`); fails with
    /// [`TidemillError::CheckpointInUse`] if a running query holds it.
    pub async fn open(location: Location, lease: LeaseOptions) -> Result<Self> {
        let lock = CheckpointLock::acquire(&location, lease).await?;
        let dir = location.dir();
        Ok(Self {
            offsets: offset_log(&dir),
            commits: commit_log(&dir),
            dir,
            location,
            _lock: lock,
        })
    }

    /// Whether this query may still commit a batch: on object storage,
    /// whether it still holds the checkpoint's lease (see `lease`: lost
    /// for good, or not renewed for half its length, a transient error);
    /// always on local disk and in memory.
    pub fn check_lock(&self) -> Result<()> {
        match &self._lock.lease {
            Some(lease) => lease.check(),
            None => Ok(()),
        }
    }

    /// Reads the metadata, or writes `fresh` if this is a new checkpoint.
    /// Refuses a checkpoint made for a query with a different number of
    /// sources (offsets are recorded by source index).
    pub async fn load_or_init_metadata(&self, fresh: Metadata) -> Result<Metadata> {
        let existing = read_metadata(&self.dir).await?;
        let Some(existing) = existing else {
            self.dir
                .create("metadata", "metadata", FORMAT_VERSION, &fresh)
                .await?;
            return Ok(fresh);
        };
        if existing.sources.len() != fresh.sources.len() {
            return Err(TidemillError::CheckpointMismatch {
                location: self.location.to_string(),
                reason: format!(
                    "it was written by a query with {} source(s) ({}), this query has {} ({}); \
                     use a new checkpoint location for the changed query",
                    existing.sources.len(),
                    existing.sources.join(", "),
                    fresh.sources.len(),
                    fresh.sources.join(", ")
                ),
            });
        }
        for (i, (old, new)) in existing.sources.iter().zip(&fresh.sources).enumerate() {
            if old != new {
                tracing::warn!(
                    "source {i} of checkpoint {} changed from {old} to {new}; resuming from the recorded offsets",
                    self.location
                );
            }
        }
        Ok(existing)
    }

    /// Refuses a restart whose stateful operators differ from those the
    /// checkpoint's state was written by (`recorded`, from its metadata),
    /// naming each difference; records them if the checkpoint predates
    /// the record.
    pub async fn check_operators(&self, recorded: &Metadata, operators: &[String]) -> Result<()> {
        let Some(old) = &recorded.operators else {
            let mut updated = recorded.clone();
            updated.operators = Some(operators.to_vec());
            self.dir
                .overwrite("metadata", "metadata", FORMAT_VERSION, &updated)
                .await?;
            return Ok(());
        };
        let mut changes = Vec::new();
        for n in 0..old.len().max(operators.len()) {
            match (old.get(n), operators.get(n)) {
                (Some(a), Some(b)) if a != b => {
                    changes.push(format!("operator {n} changed from {a} to {b}"))
                }
                (Some(a), None) => changes.push(format!("operator {n} ({a}) was removed")),
                (None, Some(b)) => changes.push(format!("operator {n} ({b}) was added")),
                _ => {}
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        Err(TidemillError::CheckpointMismatch {
            location: self.location.to_string(),
            reason: format!(
                "the query's stateful operators differ from those its state was written by: \
                 {}; restore the previous query or start this one with a new checkpoint",
                changes.join("; ")
            ),
        })
    }

    /// Where a query on this checkpoint resumes: after the last committed
    /// batch, or at the last planned batch if it never committed (to be
    /// re-run with exactly its recorded ranges). Refuses an offset log
    /// written for a different number of sources.
    pub async fn recovery_point(&self, num_sources: usize) -> Result<RecoveryPoint> {
        let Some((id, entry)) = self.offsets.latest().await? else {
            return Ok(RecoveryPoint {
                next_batch_id: 0,
                committed: vec![None; num_sources],
                pending: None,
                watermark_ms: None,
                last_watermark_ms: None,
            });
        };
        if entry.sources.len() != num_sources {
            return Err(TidemillError::CheckpointMismatch {
                location: self.location.to_string(),
                reason: format!(
                    "offsets/{id} records {} source(s), this query has {num_sources}",
                    entry.sources.len()
                ),
            });
        }
        Ok(match self.commits.get(id).await? {
            Some(commit) => RecoveryPoint {
                next_batch_id: id + 1,
                committed: entry.sources.iter().map(|r| r.end.clone()).collect(),
                pending: None,
                watermark_ms: commit.next_watermark_ms,
                last_watermark_ms: entry.watermark_ms,
            },
            None => RecoveryPoint {
                next_batch_id: id,
                committed: entry.sources.iter().map(|r| r.start.clone()).collect(),
                watermark_ms: entry.watermark_ms,
                last_watermark_ms: entry.previous_watermark_ms,
                pending: Some(entry),
            },
        })
    }

    /// The private directory of source `index`.
    pub fn source_dir(&self, index: usize) -> CheckpointDir {
        self.dir.child("sources").child(&index.to_string())
    }
}

/// Keeps a second query off a checkpoint while one runs.
///
/// Within a process, a registry of open checkpoint URLs; across processes,
/// for local directories, an OS file lock (`flock`) on `<checkpoint>/lock`,
/// which the OS releases when the holder dies, so a crashed query never
/// blocks its own restart; for object stores other than `memory://`, a
/// lease on `<checkpoint>/lock` ([`Lease`]), which a crashed query's
/// restart takes over once it expires.
#[derive(Debug)]
struct CheckpointLock {
    key: String,
    file: Option<std::fs::File>,
    lease: Option<Lease>,
}

fn open_checkpoints() -> &'static Mutex<HashSet<String>> {
    static OPEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

impl CheckpointLock {
    async fn acquire(location: &Location, lease: LeaseOptions) -> Result<Self> {
        let key = location.url().as_str().trim_end_matches('/').to_string();
        let in_use = || TidemillError::CheckpointInUse {
            location: location.to_string(),
            detail: String::new(),
        };
        if !open_checkpoints()
            .lock()
            .expect("lock poisoned")
            .insert(key.clone())
        {
            return Err(in_use());
        }
        let release = |key: &str| {
            open_checkpoints()
                .lock()
                .expect("lock poisoned")
                .remove(key)
        };
        let file = match location.local_path() {
            None => None,
            Some(dir) => {
                let opened = std::fs::create_dir_all(&dir).and_then(|()| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(dir.join("lock"))
                });
                let file = match opened {
                    Ok(file) => file,
                    Err(e) => {
                        release(&key);
                        return Err(TidemillError::Config(format!(
                            "cannot create checkpoint directory {location}: {e}"
                        )));
                    }
                };
                if let Err(e) = file.try_lock() {
                    release(&key);
                    return Err(match e {
                        std::fs::TryLockError::WouldBlock => TidemillError::CheckpointInUse {
                            location: location.to_string(),
                            detail: " (in another process)".into(),
                        },
                        std::fs::TryLockError::Error(e) => {
                            TidemillError::Config(format!("cannot lock checkpoint {location}: {e}"))
                        }
                    });
                }
                Some(file)
            }
        };
        let lease = match location.url().scheme() {
            "file" | "memory" => None,
            _ => {
                let path = location.path().clone().join("lock");
                match Lease::acquire(
                    std::sync::Arc::clone(location.store()),
                    path,
                    &location.to_string(),
                    lease,
                )
                .await
                {
                    Ok(lease) => Some(lease),
                    Err(e) => {
                        release(&key);
                        return Err(e);
                    }
                }
            }
        };
        Ok(Self { key, file, lease })
    }
}

impl Drop for CheckpointLock {
    fn drop(&mut self) {
        // Unlocked explicitly rather than by closing the file: a process
        // spawned meanwhile (a sink's helper, a test's child) holds a copy
        // of the descriptor until it execs, and the lock would outlive this
        // query until then, refusing its own restart.
        if let Some(file) = &self.file {
            let _ = file.unlock();
        }
        open_checkpoints()
            .lock()
            .expect("lock poisoned")
            .remove(&self.key);
    }
}
