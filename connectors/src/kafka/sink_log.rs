//! The exactly-once Kafka sink's log: which batches are planned (with
//! their messages and where they go) and which are committed.
//!
//! Layout (format version 1), in the directory given to
//! `KafkaSink::exactly_once`:
//!
//! ```text
//! metadata                the sink's id (a UUID), put in every message's headers
//! pending/<N>             batch N is being written: the end offset of every target
//!                         partition before it, its message count and data file
//! data/<N>-<uuid>.arrow   batch N's messages (Arrow IPC file), in order
//! commits/<N>             batch N is completely written
//! ```
//!
//! `pending/<N>` is created (put-if-absent) after its data file, so a
//! pending entry always has its messages. A committed batch's pending
//! entry and data are deleted, and commits older than 100 batches purged,
//! after the commit and off the batch's path ([`SinkLog::clean_up`], run
//! by the sink in the background); what a crash leaves of that is cleaned
//! up when the log is next opened ([`SinkLog::clean_up_committed`]).

use std::io::Cursor;

use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::PutMode;
use serde::{Deserialize, Serialize};
use tidemill_engine::{Result, TidemillError};
use tidemill_state::{CheckpointDir, NumberedLog, StateError};

use super::schema::messages_schema;

const META_KIND: &str = "kafka-sink-metadata";
const PENDING_KIND: &str = "kafka-sink-pending";
const COMMIT_KIND: &str = "kafka-sink-commit";
const VERSION: u32 = 1;
/// Commits kept for recovery checks.
const COMMITS_TO_RETAIN: u64 = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Metadata {
    sink_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingEntry {
    batch_id: u64,
    messages: u64,
    data: String,
    /// `(topic, partition, end offset before the batch)`.
    starts: Vec<(String, i32, i64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CommitEntry {
    batch_id: u64,
    messages: u64,
}

/// A batch as planned before its first message is produced.
pub(crate) struct PendingBatch {
    pub batch_id: u64,
    /// Every target partition's end offset before the batch.
    pub starts: Vec<(String, i32, i64)>,
    /// The messages, in sequence-number order.
    pub messages: RecordBatch,
}

/// The log, opened.
pub(crate) struct SinkLog {
    dir: CheckpointDir,
    sink_id: String,
    pending: NumberedLog<PendingEntry>,
    commits: NumberedLog<CommitEntry>,
    description: String,
}

impl SinkLog {
    /// Opens the log in `dir`, creating its metadata on first use.
    pub(crate) async fn open(dir: CheckpointDir, description: &str) -> Result<Self> {
        let meta = match dir.read::<Metadata>("metadata", META_KIND, VERSION).await? {
            Some(meta) => meta,
            None => {
                let meta = Metadata {
                    sink_id: uuid::Uuid::new_v4().to_string(),
                };
                match dir.create("metadata", META_KIND, VERSION, &meta).await {
                    Ok(()) => meta,
                    Err(StateError::AlreadyExists { .. }) => dir
                        .read::<Metadata>("metadata", META_KIND, VERSION)
                        .await?
                        .ok_or_else(|| {
                            TidemillError::sink(description, "the sink log's metadata vanished")
                        })?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(Self {
            pending: NumberedLog::new(dir.child("pending"), PENDING_KIND, VERSION),
            commits: NumberedLog::new(dir.child("commits"), COMMIT_KIND, VERSION),
            dir,
            sink_id: meta.sink_id,
            description: description.to_string(),
        })
    }

    /// The id in every message's `tidemill.sink` header.
    pub(crate) fn sink_id(&self) -> &str {
        &self.sink_id
    }

    /// The highest committed batch id.
    pub(crate) async fn last_committed(&self) -> Result<Option<u64>> {
        Ok(self.commits.ids().await?.into_iter().max())
    }

    /// The pending batch `batch_id` with its messages, if planned.
    pub(crate) async fn pending(&self, batch_id: u64) -> Result<Option<PendingBatch>> {
        let Some(entry) = self.pending.get(batch_id).await? else {
            return Ok(None);
        };
        let path = self.dir.child("data").path(&entry.data);
        let bytes = self.dir.get_bytes(&path).await?.ok_or_else(|| {
            TidemillError::Checkpoint(StateError::Corrupt {
                path: path.clone(),
                reason: format!("the messages of pending batch {batch_id} are missing"),
            })
        })?;
        let corrupt = |reason: String| {
            TidemillError::Checkpoint(StateError::Corrupt {
                path: path.clone(),
                reason,
            })
        };
        let reader =
            FileReader::try_new(Cursor::new(bytes), None).map_err(|e| corrupt(e.to_string()))?;
        let batches: Vec<RecordBatch> = reader
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| corrupt(e.to_string()))?;
        let messages = arrow::compute::concat_batches(&messages_schema(), &batches)
            .map_err(|e| corrupt(e.to_string()))?;
        if messages.num_rows() as u64 != entry.messages {
            return Err(corrupt(format!(
                "holds {} messages, the pending entry says {}",
                messages.num_rows(),
                entry.messages
            )));
        }
        Ok(Some(PendingBatch {
            batch_id,
            starts: entry.starts,
            messages,
        }))
    }

    /// Logs `batch` as planned: its messages, then its entry.
    pub(crate) async fn begin(&self, batch: &PendingBatch) -> Result<()> {
        let data = format!("{}-{}.arrow", batch.batch_id, uuid::Uuid::new_v4());
        let mut bytes = Vec::new();
        {
            let mut writer = FileWriter::try_new(&mut bytes, &messages_schema()).map_err(|e| {
                TidemillError::sink(&self.description, format!("logging messages: {e}"))
            })?;
            writer.write(&batch.messages).map_err(|e| {
                TidemillError::sink(&self.description, format!("logging messages: {e}"))
            })?;
            writer.finish().map_err(|e| {
                TidemillError::sink(&self.description, format!("logging messages: {e}"))
            })?;
        }
        self.dir
            .put_bytes(
                &self.dir.child("data").path(&data),
                Bytes::from(bytes),
                PutMode::Overwrite,
            )
            .await?;
        let entry = PendingEntry {
            batch_id: batch.batch_id,
            messages: batch.messages.num_rows() as u64,
            data,
            starts: batch.starts.clone(),
        };
        self.pending.add(batch.batch_id, &entry).await?;
        Ok(())
    }

    /// Records `batch_id` as completely written. What it leaves behind is
    /// for [`SinkLog::clean_up`].
    pub(crate) async fn commit(&self, batch_id: u64, messages: u64) -> Result<()> {
        match self
            .commits
            .add(batch_id, &CommitEntry { batch_id, messages })
            .await
        {
            Ok(()) | Err(StateError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the pending entry and data of every committed batch up to
    /// `last_committed` still there (a crash between a commit and its
    /// clean-up leaves them).
    pub(crate) async fn clean_up_committed(&self, last_committed: u64) -> Result<()> {
        for batch_id in self.pending.ids().await? {
            if batch_id <= last_committed {
                self.delete_pending(batch_id).await?;
            }
        }
        Ok(())
    }

    /// Deletes committed batch `batch_id`'s pending entry and data, and the
    /// commit entry 100 batches before it. Only after
    /// [`SinkLog::commit`]`(batch_id)`: a committed batch is never planned
    /// or re-run again, so nothing reads what this deletes.
    pub(crate) async fn clean_up(&self, batch_id: u64) -> Result<()> {
        self.delete_pending(batch_id).await?;
        if let Some(old) = batch_id.checked_sub(COMMITS_TO_RETAIN) {
            self.commits.remove(old).await?;
        }
        Ok(())
    }

    /// Deletes pending batch `batch_id`'s data, then its entry.
    async fn delete_pending(&self, batch_id: u64) -> Result<()> {
        if let Some(entry) = self.pending.get(batch_id).await? {
            self.dir.child("data").delete(&entry.data).await?;
            self.pending.remove(batch_id).await?;
        }
        Ok(())
    }
}
