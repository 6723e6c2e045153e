//! Inspecting checkpoints: what `tidemill status CHECKPOINT` prints.
//!
//! [`inspect`] reads a query's checkpoint directory (it holds a `metadata`
//! file), or a pipeline's checkpoint root (one such directory per query,
//! named after its sink, as `tidemill run` lays them out), and reports for
//! each query ([`QueryReport`]):
//!
//! - its id, sink and creation, and whether a run holds the checkpoint's
//!   lock now ([`LockState`]; on Linux, read from `/proc/locks`);
//! - the last committed batch: its id, when it committed, and the
//!   watermark it computed for the next batch ([`CommittedBatch`]);
//! - each source's description and committed offset (the end of the last
//!   committed batch; [`SourceReport`]), and, given the sources (the
//!   pipeline file's streams), how far behind it is ([`SourceLag`]);
//! - a batch in flight: an `offsets/<N>` without `commits/<N>`, planned
//!   but not committed — running now, or left by a crash and re-run on
//!   restart — with its planned ranges ([`InFlightBatch`]);
//! - each stateful operator's state ([`OperatorReport`]): its description
//!   from the checkpoint's metadata, and per state store (one, or a
//!   join's `left` and `right`) the rows, partitions and columns of the
//!   version the last committed batch wrote, and the files and bytes on
//!   disk ([`StoreReport`]).
//!
//! **On object storage.** A checkpoint named by a URL (`s3://bucket/chk`,
//! its client from the `AWS_*` variables as the engine makes it) is read
//! the same way through its object store; whether a run holds it is read
//! from its lease (`lock`, held until it expires), and the sizes are the
//! objects' under each store's prefix.
//!
//! **Read-only.** Nothing is locked, created or rewritten: the files are
//! read with the checkpoint's own decoders, each validated by its
//! checksum — the metadata, every entry of the offset and commit logs, and
//! each state store's `_metadata` and the commit file of the version
//! described — so a damaged file is a [`StatusError::File`] naming it, and
//! the inspection can run while a query holds the checkpoint. A batch
//! committed while the files are being read makes the inspection start
//! again, so the report is one consistent view.
//!
//! **Lag.** Given the sources, each is matched with the checkpoint's
//! source by its description and opened over an in-memory copy of its
//! private checkpoint directory (`sources/<i>/`), so that the offset it
//! reports as available now is computed exactly as a run would, without
//! writing its logs; the lag is that offset less the committed one: files
//! not yet read for a `files` stream, records per partition for `kafka`,
//! rows for `rate`. Offsets that are not numbers are shown side by side.
//! A source that cannot be asked (a broker down) gets a note; a damaged
//! file of its private directory is an error, as any damaged file.
//!
//! The report is text ([`StatusReport`]'s `Display`) or JSON (serde).
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidemill::status::StatusError> {
//! let report = tidemill::status::inspect("chk".as_ref(), None).await?;
//! for query in &report.queries {
//!     let last = query.last_committed.as_ref().map(|b| b.batch_id);
//!     println!("{}: last committed batch {last:?}", query.name);
//! }
//! println!("{report}");
//! # Ok(()) }
//! ```

mod files;
mod lag;
mod lock;
mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tidemill_engine::checkpoint::{
    CommitEntry, OffsetEntry, commit_log, offset_log, read_metadata,
};
use tidemill_engine::watermark::format_millis;
use tidemill_engine::{Offset, OutputMode, Source};
use tidemill_state::{CheckpointDir, NumberedLog, StateError, StateStore};

use files::Files;

pub use lock::LockState;

/// How often an inspection starts again when batches commit while it
/// reads.
const ATTEMPTS: usize = 5;

/// Why a checkpoint could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A checkpoint file is damaged (truncated, altered), of another kind
    /// or format version, missing where the others require it, or cannot
    /// be read.
    #[error("{problem} checkpoint file {}: {reason}", file.display())]
    File {
        /// The file.
        file: PathBuf,
        /// `corrupt`, `incompatible` or `unreadable`.
        problem: &'static str,
        /// What exactly is wrong with it.
        reason: String,
    },
    /// The directory holds no query checkpoint.
    #[error(
        "{} is not a Tidemill checkpoint: neither it nor any directory in it has a metadata file",
        path.display()
    )]
    NotACheckpoint {
        /// The directory given.
        path: PathBuf,
    },
    /// A directory could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

impl From<StateError> for StatusError {
    fn from(error: StateError) -> Self {
        // Paths are relative to the root of the local file system.
        let file = |path: &object_store::path::Path| PathBuf::from(format!("/{path}"));
        match error {
            StateError::Corrupt { path, reason } => StatusError::File {
                file: file(&path),
                problem: "corrupt",
                reason,
            },
            StateError::Incompatible { path, reason } => StatusError::File {
                file: file(&path),
                problem: "incompatible",
                reason,
            },
            StateError::Io { path, source } => StatusError::File {
                file: file(&path),
                problem: "unreadable",
                reason: source.to_string(),
            },
            // Only writing fails so; nothing here writes.
            other => StatusError::File {
                file: PathBuf::new(),
                problem: "unreadable",
                reason: other.to_string(),
            },
        }
    }
}

/// Everything [`inspect`] found under a checkpoint directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The directory inspected (absolute).
    pub checkpoint: String,
    /// Its queries, by name.
    pub queries: Vec<QueryReport>,
}

/// One query's checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryReport {
    /// The query's name: its directory's name (a pipeline's sink).
    pub name: String,
    /// Its checkpoint directory.
    pub path: String,
    /// The query id, kept across restarts.
    pub query_id: String,
    /// The Tidemill version that created the checkpoint.
    pub engine_version: String,
    /// When the checkpoint was created (RFC 3339).
    pub created_at: String,
    /// The sink's description.
    pub sink: String,
    /// The output mode of the last batch planned, if any.
    pub output_mode: Option<OutputMode>,
    /// Whether a run holds the checkpoint now.
    pub lock: LockState,
    /// The last committed batch; `None` before the first commit.
    pub last_committed: Option<CommittedBatch>,
    /// A batch planned but not committed, if any.
    pub in_flight: Option<InFlightBatch>,
    /// The query's sources, by index.
    pub sources: Vec<SourceReport>,
    /// The query's stateful operators, by number.
    pub operators: Vec<OperatorReport>,
}

/// The last committed batch of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedBatch {
    /// Its id.
    pub batch_id: u64,
    /// When it committed, in milliseconds since the Unix epoch.
    pub committed_at_ms: i64,
    /// The same, in RFC 3339.
    pub committed_at: String,
    /// The watermark it computed at its end, which the next batch runs
    /// with, in milliseconds since the epoch; `None` without a watermark
    /// (or before any event time was seen).
    pub watermark_ms: Option<i64>,
    /// The same, in RFC 3339.
    pub watermark: Option<String>,
}

/// A batch planned (its `offsets/<N>` written) but not committed: running
/// now if a run holds the checkpoint, otherwise left by a crash or a kill
/// and re-run with exactly these ranges on restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlightBatch {
    /// Its id.
    pub batch_id: u64,
    /// When it was planned, in milliseconds since the Unix epoch.
    pub planned_at_ms: i64,
    /// The same, in RFC 3339.
    pub planned_at: String,
    /// The watermark it runs with, in milliseconds since the epoch.
    pub watermark_ms: Option<i64>,
    /// The same, in RFC 3339.
    pub watermark: Option<String>,
    /// Each source's planned range, by source index.
    pub ranges: Vec<PlannedRange>,
}

/// One source's range in a batch in flight: after `start`, up to and
/// including `end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRange {
    /// The source's index.
    pub index: usize,
    /// The source's description when the batch was planned.
    pub description: String,
    /// The end of the previous batch; `None` at the beginning.
    pub start: Option<Offset>,
    /// The end of this batch.
    pub end: Option<Offset>,
}

/// One source of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// The source's index in the query.
    pub index: usize,
    /// Its description, as the offset log recorded it.
    pub description: String,
    /// The end of the last committed batch's range; `None` if nothing has
    /// been committed from it.
    pub committed: Option<Offset>,
    /// How far behind the source is, when the sources were given.
    pub lag: Option<SourceLag>,
}

/// How far behind a source the committed offset is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceLag {
    /// The offset available now, as a run would plan it (no read limit);
    /// `None` if it could not be found (see `note`) or the source holds
    /// nothing yet.
    pub latest: Option<Offset>,
    /// What the offsets count: `files`, `records`, `rows` or `offsets`.
    pub unit: String,
    /// How many units the source holds after the committed offset, when
    /// known.
    pub behind: Option<u64>,
    /// Per partition, for offsets that are maps (a Kafka source's
    /// `{topic: {partition: offset}}`).
    pub partitions: Vec<PartitionLag>,
    /// Why the lag is not known, or what to read it with.
    pub note: Option<String>,
}

/// The lag of one partition of a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionLag {
    /// The partition, as the path of keys in the offset (`topic/0`).
    pub partition: String,
    /// Its committed offset, if it has one.
    pub committed: Option<u64>,
    /// Its offset available now.
    pub latest: u64,
    /// `latest - committed`, when both are known.
    pub behind: Option<u64>,
}

/// One stateful operator of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorReport {
    /// Its number: its state is in `state/<number>`.
    pub number: usize,
    /// Its description, from the checkpoint's metadata.
    pub description: Option<String>,
    /// Its state stores: one, or a stream–stream join's `left` and `right`.
    pub stores: Vec<StoreReport>,
}

/// One state store of an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreReport {
    /// `left` or `right` for a join's side; `None` for an operator's one
    /// store.
    pub side: Option<String>,
    /// Its directory.
    pub path: String,
    /// The version described: the one the last committed batch wrote
    /// (batch N writes version N + 1; 0 is the empty state).
    pub version: u64,
    /// Live entries at that version.
    pub rows: u64,
    /// The store's partition count.
    pub partitions: usize,
    /// Partitions holding entries at that version.
    pub partitions_with_rows: usize,
    /// The columns its keys encode.
    pub key_columns: Vec<String>,
    /// The columns its values encode.
    pub value_columns: Vec<String>,
    /// Bytes of the data files the version is loaded from.
    pub version_bytes: u64,
    /// Files in the store's directory (every version retained, snapshots
    /// in progress).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Inspects the checkpoint at `checkpoint`: one query's (a directory with
/// a `metadata` file) or a pipeline's root (each directory in it that has
/// one), reading only. With `sources` (the streams of the pipeline, as
/// [`crate::sql::Pipeline::stream_sources`] makes them), also says how far
/// behind each source is; a source whose lag cannot be measured gets a
/// note saying why, not an error (unless a file of its private checkpoint
/// directory is damaged).
///
/// Fails with [`StatusError::File`] naming the file if a file it needs is
/// damaged, and [`StatusError::NotACheckpoint`] if there is no checkpoint
/// there.
pub async fn inspect(
    checkpoint: &Path,
    sources: Option<&[Arc<dyn Source>]>,
) -> Result<StatusReport, StatusError> {
    let io = |error| StatusError::Io {
        path: checkpoint.to_path_buf(),
        error,
    };
    let text = checkpoint.to_string_lossy();
    let (files, root) = match text.split_once("://") {
        Some((scheme, _)) if scheme != "file" => {
            // A checkpoint on an object store, named by its URL (the
            // client of an `s3://` one from the `AWS_*` variables).
            let url = text.trim_end_matches('/').to_string();
            let location = tidemill_engine::Location::resolve(
                &url,
                &datafusion::execution::runtime_env::RuntimeEnv::default(),
            )
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let prefix = location.path().to_string();
            let base = url
                .strip_suffix(prefix.as_str())
                .unwrap_or(&url)
                .trim_end_matches('/')
                .to_string();
            let files = Files::Store {
                store: Arc::clone(location.store()),
                base,
            };
            (files, PathBuf::from(url))
        }
        _ => {
            let local = match text.strip_prefix("file://") {
                Some(path) => PathBuf::from(path),
                None => checkpoint.to_path_buf(),
            };
            (Files::Local, std::fs::canonicalize(local).map_err(io)?)
        }
    };
    let mut dirs = Vec::new();
    if files.is_file(&root.join("metadata")).await {
        dirs.push(root.clone());
    } else {
        for name in files.subdirectories(&root).await? {
            let path = root.join(name);
            if files.is_file(&path.join("metadata")).await {
                dirs.push(path);
            }
        }
        dirs.sort();
    }
    if dirs.is_empty() {
        return Err(StatusError::NotACheckpoint {
            path: checkpoint.to_path_buf(),
        });
    }
    let mut queries = Vec::with_capacity(dirs.len());
    for dir in &dirs {
        let mut query = inspect_query(&files, dir).await?;
        if let Some(sources) = sources {
            lag::measure(&mut query, &files, dir, sources).await?;
        }
        queries.push(query);
    }
    Ok(StatusReport {
        checkpoint: root.display().to_string(),
        queries,
    })
}

/// One query's checkpoint, read again if a batch commits meanwhile.
async fn inspect_query(files: &Files, dir: &Path) -> Result<QueryReport, StatusError> {
    let chk = files.checkpoint_dir(dir)?;
    let mut attempt = 0;
    loop {
        let before = newest_ids(&chk).await;
        match read_query(files, dir, &chk).await {
            Ok(report) => return Ok(report),
            Err(e) => {
                attempt += 1;
                // A file read while a running query moved on (purged an old
                // entry, say) is not damage: read again.
                if attempt < ATTEMPTS && newest_ids(&chk).await != before {
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// The newest ids of the offset and commit logs, to tell whether a query
/// moved on; `None` if they cannot be listed.
async fn newest_ids(chk: &CheckpointDir) -> Option<(Option<u64>, Option<u64>)> {
    let offsets = offset_log(chk).ids().await.ok()?;
    let commits = commit_log(chk).ids().await.ok()?;
    Some((offsets.last().copied(), commits.last().copied()))
}

/// Reads one query's checkpoint once.
async fn read_query(
    files: &Files,
    dir: &Path,
    chk: &CheckpointDir,
) -> Result<QueryReport, StatusError> {
    let missing = |name: &str, reason: String| StatusError::File {
        file: dir.join(name),
        problem: "corrupt",
        reason,
    };
    let metadata = read_metadata(chk)
        .await?
        .ok_or_else(|| missing("metadata", "missing".into()))?;
    // Every entry of both logs is read, so that damage anywhere in them
    // is reported, not only in the entries a restart reads.
    let mut offsets = read_log(&offset_log(chk)).await?;
    let commits = read_log(&commit_log(chk)).await?;

    // The last committed batch, and the ranges it read.
    let committed: Option<(CommitEntry, OffsetEntry)> = match commits.last_key_value() {
        None => None,
        Some((&id, commit)) => {
            let planned = offsets.get(&id).cloned().ok_or_else(|| {
                missing(
                    &format!("offsets/{id}"),
                    format!("missing, but commits/{id} says batch {id} committed"),
                )
            })?;
            Some((commit.clone(), planned))
        }
    };
    let last_id = committed.as_ref().map(|(c, _)| c.batch_id);

    // A batch planned after it, not committed.
    let in_flight: Option<OffsetEntry> = match offsets.last_key_value() {
        Some((&id, _)) if last_id.is_none_or(|last| id > last) => offsets.remove(&id),
        _ => None,
    };

    let sources = match &committed {
        Some((_, planned)) => planned
            .sources
            .iter()
            .enumerate()
            .map(|(index, range)| SourceReport {
                index,
                description: range.description.clone(),
                committed: range.end.clone(),
                lag: None,
            })
            .collect(),
        None => metadata
            .sources
            .iter()
            .enumerate()
            .map(|(index, description)| SourceReport {
                index,
                description: in_flight
                    .as_ref()
                    .and_then(|e| e.sources.get(index))
                    .map_or_else(|| description.clone(), |r| r.description.clone()),
                committed: None,
                lag: None,
            })
            .collect(),
    };

    let state_version = last_id.map_or(0, |id| id + 1);
    let operators = read_operators(
        files,
        dir,
        chk,
        metadata.operators.as_deref(),
        state_version,
    )
    .await?;

    let output_mode = in_flight
        .as_ref()
        .or(committed.as_ref().map(|(_, p)| p))
        .map(|e| e.output_mode);
    Ok(QueryReport {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string()),
        path: dir.display().to_string(),
        query_id: metadata.query_id,
        engine_version: metadata.engine_version,
        created_at: metadata.created_at,
        sink: metadata.sink,
        output_mode,
        lock: files.lock_state(dir).await,
        last_committed: committed.map(|(commit, _)| CommittedBatch {
            batch_id: commit.batch_id,
            committed_at_ms: commit.timestamp_ms,
            committed_at: format_millis(commit.timestamp_ms),
            watermark_ms: commit.next_watermark_ms,
            watermark: commit.next_watermark_ms.map(format_millis),
        }),
        in_flight: in_flight.map(|entry| InFlightBatch {
            batch_id: entry.batch_id,
            planned_at_ms: entry.timestamp_ms,
            planned_at: format_millis(entry.timestamp_ms),
            watermark_ms: entry.watermark_ms,
            watermark: entry.watermark_ms.map(format_millis),
            ranges: entry
                .sources
                .into_iter()
                .enumerate()
                .map(|(index, range)| PlannedRange {
                    index,
                    description: range.description,
                    start: range.start,
                    end: range.end,
                })
                .collect(),
        }),
        sources,
        operators,
    })
}

/// Every entry of `log`, by id, each read and checked. An entry listed
/// but gone when read was purged by a running query meanwhile: it is left
/// out.
async fn read_log<T: serde::Serialize + serde::de::DeserializeOwned>(
    log: &NumberedLog<T>,
) -> Result<BTreeMap<u64, T>, StatusError> {
    let mut entries = BTreeMap::new();
    for id in log.ids().await? {
        if let Some(entry) = log.get(id).await? {
            entries.insert(id, entry);
        }
    }
    Ok(entries)
}

/// Every stateful operator: those the metadata records and those with a
/// directory under `state/`, each store described at `version`.
async fn read_operators(
    files: &Files,
    dir: &Path,
    chk: &CheckpointDir,
    described: Option<&[String]>,
    version: u64,
) -> Result<Vec<OperatorReport>, StatusError> {
    let state = dir.join("state");
    let mut numbers: Vec<usize> = (0..described.map_or(0, <[String]>::len)).collect();
    for name in files.subdirectories(&state).await? {
        if let Ok(n) = name.parse::<usize>()
            && !numbers.contains(&n)
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    let mut operators = Vec::with_capacity(numbers.len());
    for number in numbers {
        let op_dir = state.join(number.to_string());
        let op_chk = chk.child("state").child(&number.to_string());
        // A join keeps a store per side in `left/` and `right/`; any other
        // operator one store in its directory (whose own subdirectories
        // are numbered partitions).
        let sides: Vec<String> = if files.is_file(&op_dir.join("_metadata")).await {
            Vec::new()
        } else {
            let mut sides: Vec<String> = files
                .subdirectories(&op_dir)
                .await?
                .into_iter()
                .filter(|name| name.parse::<usize>().is_err())
                .collect();
            sides.sort_by_key(|s| (s != "left", s != "right", s.clone()));
            sides
        };
        let mut stores = Vec::new();
        if !files.exists(&op_dir).await {
            // Recorded, but never opened.
        } else if sides.is_empty() {
            stores.push(read_store(files, None, &op_dir, &op_chk, version).await?);
        } else {
            for side in sides {
                stores.push(
                    read_store(
                        files,
                        Some(side.clone()),
                        &op_dir.join(&side),
                        &op_chk.child(&side),
                        version,
                    )
                    .await?,
                );
            }
        }
        operators.push(OperatorReport {
            number,
            description: described.and_then(|d| d.get(number)).cloned(),
            stores,
        });
    }
    Ok(operators)
}

/// One state store at `version`, and its files on disk.
async fn read_store(
    files: &Files,
    side: Option<String>,
    dir: &Path,
    chk: &CheckpointDir,
    version: u64,
) -> Result<StoreReport, StatusError> {
    let info = StateStore::inspect(chk, version).await?;
    let (file_count, bytes) = files.disk_usage(dir).await?;
    Ok(StoreReport {
        side,
        path: dir.display().to_string(),
        version,
        rows: info.rows,
        partitions: info.num_partitions,
        partitions_with_rows: info.partitions_with_rows,
        key_columns: info.key_columns,
        value_columns: info.value_columns,
        version_bytes: info.data_bytes,
        files: file_count,
        bytes,
    })
}
