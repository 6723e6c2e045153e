//! Append mode's commit path, whose cost does not grow with the table.
//!
//! deltalake's write operations (and its `CommitBuilder`) work on an eager
//! snapshot: the table's whole active-file list, with each file's
//! statistics, rebuilt after every commit. For a stream of small appends
//! that list is the only part of a batch that grows with the table (one
//! file per batch), so it came to dominate the batch's time (see
//! `benches/results/notes/delta.md`). This path keeps no file list:
//!
//! - **What is committed** is tracked in a [`LogTail`]: the latest version
//!   the sink knows of and the query's transaction version as of it. It is
//!   read from the table once, when the sink opens (or takes the table
//!   over from the general path), and then advanced one version at a time:
//!   before each batch the sink reads `_delta_log/<version + 1>.json`, which
//!   is missing unless another writer committed (one failed read when the
//!   sink wrote the last version), and takes from each such version the
//!   query's `txn` and whether it changed the table's schema or protocol.
//! - **The data files** are written by deltalake's `RecordBatchWriter`
//!   (parquet, with each file's statistics in its `add` action).
//! - **The commit** is the `add` actions, the `txn` and a `commitInfo`,
//!   written with deltalake's log store as version `tail + 1` if that
//!   version does not exist yet (Delta's optimistic concurrency: a
//!   conditional put, or the log store's own protocol). If another writer
//!   took the version, the sink reads what it committed: a blind append
//!   does not conflict with other appends or removes, so it retries at the
//!   next version; a version carrying the query's own transaction (two runs
//!   of one query) or a change of schema or protocol is a conflict, and the
//!   batch fails, as deltalake's conflict checker decides.
//! - **Checkpoints** are written at the table's interval (and the expired
//!   log cleaned up after them, as with Spark): only then is the table's
//!   file list read, once every `delta.checkpointInterval` versions.
//!
//! The path is taken only for tables whose protocol and metadata need
//! nothing more of an append than data files and their `add` actions
//! ([`supports`]): no CHECK constraints, invariants, generated or identity
//! columns, column mapping, row tracking or in-commit timestamps. Other
//! tables go through deltalake's write operation, as every mode but append
//! does.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use deltalake::kernel::transaction::{CommitData, PROTOCOL, TransactionError};
use deltalake::kernel::{Action, Transaction};
use deltalake::logstore::{CommitOrBytes, LogStore};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError, Path};
use object_store::ObjectStoreExt;
use uuid::Uuid;

use super::DeltaSinkError;

/// How many times a commit is tried at the next version when other
/// writers' commits keep taking the version (deltalake's default).
const MAX_ATTEMPTS: usize = 16;

/// Writer features whose tables an append of data files and `add` actions
/// writes correctly (as long as the checks of [`supports`] on the
/// metadata hold): the others need more of a writer (row ids, in-commit
/// timestamps, ...) or are unknown to the sink.
const PLAIN_WRITER_FEATURES: &[&str] = &[
    "appendOnly",
    "invariants",
    "checkConstraints",
    "changeDataFeed",
    "generatedColumns",
    "columnMapping",
    "identityColumns",
    "timestampNtz",
    "deletionVectors",
    "domainMetadata",
    "v2Checkpoint",
    "vacuumProtocolCheck",
];

/// Whether the table's appends can take this path: a protocol deltalake
/// can write, no writer feature beyond [`PLAIN_WRITER_FEATURES`], and no
/// CHECK constraint, invariant, generated or identity column, column
/// mapping, row tracking or in-commit timestamps in use.
pub(super) fn supports(table: &DeltaTable) -> bool {
    let Ok(state) = table.snapshot() else {
        return false;
    };
    if PROTOCOL.can_write_to(state).is_err() {
        return false;
    }
    let protocol = serde_json::to_value(state.protocol()).unwrap_or_default();
    let writer_features_plain = protocol
        .get("writerFeatures")
        .and_then(|f| f.as_array())
        .is_none_or(|features| {
            features.iter().all(|f| {
                f.as_str()
                    .is_some_and(|name| PLAIN_WRITER_FEATURES.contains(&name))
            })
        });
    if !writer_features_plain {
        return false;
    }
    let metadata = state.metadata();
    let configuration = metadata.configuration();
    let enabled = |key: &str| {
        configuration
            .get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    };
    if configuration
        .keys()
        .any(|k| k.starts_with("delta.constraints."))
        || enabled("delta.enableRowTracking")
        || enabled("delta.enableInCommitTimestamps")
        || configuration
            .get("delta.columnMapping.mode")
            .is_some_and(|m| !m.eq_ignore_ascii_case("none"))
    {
        return false;
    }
    let schema = state.schema();
    let plain_columns = schema.fields().all(|field| {
        !field.metadata().keys().any(|k| {
            k == "delta.invariants"
                || k == "delta.generationExpression"
                || k.starts_with("delta.identity.")
        })
    });
    plain_columns
}

/// What the sink knows of the table's log: the latest version and the
/// query's transaction version as of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LogTail {
    /// The latest version the sink committed or read.
    pub(super) version: u64,
    /// The latest batch id the query committed, as of `version` (its
    /// `txn` version), if any.
    pub(super) committed: Option<i64>,
    /// Whether a version read since the table was loaded changed its
    /// schema, properties or protocol: the sink loads it again before it
    /// writes.
    pub(super) table_changed: bool,
}

/// What versions written by other writers held, as far as the sink cares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    /// Versions read.
    pub(super) versions: u64,
    /// Whether one of them held a transaction of the query.
    pub(super) own_transaction: bool,
    /// Whether one of them changed the table's schema, properties or
    /// protocol (a `metaData` or `protocol` action).
    pub(super) table_changed: bool,
}

/// The actions of a commit (`_delta_log/<version>.json`) that matter to
/// the sink: the highest `txn` version of `app_id`, and whether it has a
/// `metaData` or `protocol` action. Actions are read as plain JSON, so
/// those deltalake does not know do not stop the sink.
fn scan_commit(bytes: &[u8], app_id: &str) -> Result<(Option<i64>, bool), serde_json::Error> {
    let mut txn: Option<i64> = None;
    let mut table_changed = false;
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let action: serde_json::Value = serde_json::from_slice(line)?;
        if action.get("metaData").is_some() || action.get("protocol").is_some() {
            table_changed = true;
        }
        if let Some(t) = action.get("txn")
            && t.get("appId").and_then(|a| a.as_str()) == Some(app_id)
            && let Some(version) = t.get("version").and_then(|v| v.as_i64())
        {
            txn = Some(txn.map_or(version, |v| v.max(version)));
        }
    }
    Ok((txn, table_changed))
}

impl LogTail {
    /// The tail of `table` as loaded: its version and the transaction
    /// version of `app_id` in it.
    pub(super) async fn of(
        url: &str,
        table: &DeltaTable,
        app_id: &str,
    ) -> Result<Self, DeltaSinkError> {
        let state = table
            .snapshot()
            .map_err(|e| DeltaSinkError::delta(url, "reading", e))?;
        let committed = state
            .transaction_version(table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| DeltaSinkError::delta(url, "reading the transactions of", e))?;
        Ok(Self {
            version: state.version(),
            committed,
            table_changed: false,
        })
    }

    /// Reads the versions committed after `self.version`, one at a time
    /// until the next is missing, and advances over them.
    pub(super) async fn catch_up(
        &mut self,
        url: &str,
        log_store: &dyn LogStore,
        app_id: &str,
    ) -> Result<Seen, DeltaSinkError> {
        let mut seen = Seen::default();
        loop {
            let next = self.version + 1;
            let bytes = log_store
                .read_commit_entry(next)
                .await
                .map_err(|e| DeltaSinkError::delta(url, "reading the log of", e))?;
            let Some(bytes) = bytes else {
                return Ok(seen);
            };
            let (txn, table_changed) = scan_commit(&bytes, app_id).map_err(|e| {
                DeltaSinkError::delta(
                    url,
                    format!("reading version {next} of"),
                    DeltaTableError::InvalidJsonLog {
                        json_err: e,
                        line: String::new(),
                        version: next,
                    },
                )
            })?;
            if let Some(txn) = txn {
                seen.own_transaction = true;
                self.committed = Some(self.committed.map_or(txn, |c| c.max(txn)));
            }
            seen.table_changed |= table_changed;
            self.table_changed |= table_changed;
            seen.versions += 1;
            self.version = next;
        }
    }

    /// Commits `bytes` (batch `batch_id`, the query's transaction
    /// `txn_version`) as the version after the tail, advancing over other
    /// writers' versions that take it first unless they conflict: a
    /// version with a transaction of the query (`app_id`), or one that
    /// changed the table's schema, properties or protocol, fails the batch.
    /// Returns the version committed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit(
        &mut self,
        url: &str,
        log_store: &dyn LogStore,
        app_id: &str,
        batch_id: u64,
        txn_version: i64,
        bytes: Bytes,
    ) -> Result<u64, DeltaSinkError> {
        for _ in 0..MAX_ATTEMPTS {
            let target = self.version + 1;
            match write_commit(log_store, target, bytes.clone()).await {
                Ok(()) => {
                    self.version = target;
                    self.committed = Some(txn_version);
                    return Ok(target);
                }
                Err(TransactionError::VersionAlreadyExists(_)) => {
                    // Another writer took the version: see what it wrote.
                    let seen = self.catch_up(url, log_store, app_id).await?;
                    if seen.own_transaction {
                        return Err(conflict(
                            url,
                            batch_id,
                            &format!(
                                "it holds a transaction of the same query (app id '{app_id}'): \
                                 two runs of one query are writing to the table"
                            ),
                        ));
                    }
                    if seen.table_changed {
                        return Err(conflict(
                            url,
                            batch_id,
                            "it changed the table's schema, properties or protocol",
                        ));
                    }
                    // Other appends or removes: a blind append does not
                    // conflict with them; try the next version.
                }
                Err(e) => {
                    return Err(DeltaSinkError::delta(
                        url,
                        format!("batch {batch_id}: committing to"),
                        e.into(),
                    ));
                }
            }
        }
        Err(conflict(
            url,
            batch_id,
            &format!("other writers took the next version {MAX_ATTEMPTS} times in a row"),
        ))
    }
}

/// Writes `batches` as data files of the table (none if there are no
/// rows); their `add` actions. On failure the files written so far are
/// left unreferenced (a vacuum removes them), as a crash would.
pub(super) async fn write_files(
    url: &str,
    batch_id: u64,
    writer: &mut RecordBatchWriter,
    batches: Vec<RecordBatch>,
) -> Result<Vec<deltalake::kernel::Add>, DeltaSinkError> {
    let failed =
        |e| DeltaSinkError::delta(url, format!("batch {batch_id}: writing data files of"), e);
    let schema = writer.arrow_schema();
    let mut result = Ok(());
    for batch in batches {
        let written = match conform(&batch, &schema) {
            Ok(batch) => writer.write(batch).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            result = Err(e);
            break;
        }
    }
    match result {
        Ok(()) => writer.flush().await.map_err(failed),
        Err(e) => {
            writer.reset();
            Err(failed(e))
        }
    }
}

/// `batch` with the table's Arrow types (`schema`, the writer's), column
/// by column by name: strings and string views as the table's strings,
/// timestamps in microseconds, as the output's Delta types say (checked
/// against the table when the sink opened).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, DeltaTableError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column = batch.column_by_name(field.name()).ok_or_else(|| {
                DeltaTableError::Generic(format!(
                    "the batch has no column '{}' of the table",
                    field.name()
                ))
            })?;
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                arrow::compute::cast(column, field.data_type()).map_err(DeltaTableError::from)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(DeltaTableError::from)
}

/// The bytes of the commit of `adds` with the transaction `txn`, read at
/// `read_version`.
pub(super) fn commit_bytes(
    adds: Vec<deltalake::kernel::Add>,
    partition_by: &[String],
    txn: Transaction,
    read_version: u64,
) -> Result<Bytes, TransactionError> {
    let files = adds.len();
    let bytes_written: i64 = adds.iter().map(|a| a.size).sum();
    let rows: i64 = adds
        .iter()
        .filter_map(|a| a.stats.as_deref())
        .filter_map(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .filter_map(|s| s.get("numRecords").and_then(|n| n.as_i64()))
        .sum();
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: (!partition_by.is_empty()).then(|| partition_by.to_vec()),
        predicate: None,
    };
    let app_metadata = HashMap::from([
        ("readVersion".to_string(), serde_json::json!(read_version)),
        ("isBlindAppend".to_string(), serde_json::json!(true)),
        (
            "operationMetrics".to_string(),
            serde_json::json!({
                "numFiles": files,
                "numOutputRows": rows,
                "numOutputBytes": bytes_written,
            }),
        ),
    ]);
    let actions = adds.into_iter().map(Action::Add).collect();
    CommitData::new(actions, operation, app_metadata, vec![txn]).get_bytes()
}

/// Writes `bytes` as the commit of `version`, failing with
/// [`TransactionError::VersionAlreadyExists`] if the version exists: as
/// deltalake's own commit does, directly for log stores with a conditional
/// put, through a temporary file for the others.
pub(super) async fn write_commit(
    log_store: &dyn LogStore,
    version: u64,
    bytes: Bytes,
) -> Result<(), TransactionError> {
    let operation_id = Uuid::new_v4();
    let commit = if ["LakeFSLogStore", "DefaultLogStore"].contains(&log_store.name().as_str()) {
        CommitOrBytes::LogBytes(bytes)
    } else {
        let path = Path::from_iter(["_delta_log", &format!("_commit_{operation_id}.json.tmp")]);
        log_store
            .object_store(Some(operation_id))
            .put(&path, bytes.into())
            .await
            .map_err(TransactionError::from)?;
        CommitOrBytes::TmpCommit(path)
    };
    match log_store
        .write_commit_entry(version, commit.clone(), operation_id)
        .await
    {
        Ok(()) => Ok(()),
        Err(TransactionError::VersionAlreadyExists(v)) => {
            if let CommitOrBytes::TmpCommit(path) = &commit {
                let _ = log_store
                    .object_store(Some(operation_id))
                    .delete(path)
                    .await;
            }
            Err(TransactionError::VersionAlreadyExists(v))
        }
        Err(e) => {
            let _ = log_store
                .abort_commit_entry(version, commit, operation_id)
                .await;
            Err(e)
        }
    }
}

/// After the commit of `version`: a checkpoint if the table's interval
/// says so, then the expired log's cleanup if the table asks for it.
/// `table` (the sink's loaded table) is brought to `version` first, which
/// reads its file list, once per interval. A failure is logged, not
/// returned: the batch is committed, and the next interval writes the
/// next checkpoint.
pub(super) async fn checkpoint_if_due(url: &str, table: &mut DeltaTable, version: u64) {
    let Ok(state) = table.snapshot() else {
        return;
    };
    let interval = state.table_config().checkpoint_interval().get();
    if !(version + 1).is_multiple_of(interval) {
        return;
    }
    let result = async {
        table.update_incremental(Some(version)).await?;
        deltalake::checkpoints::create_checkpoint(table, None).await?;
        if table
            .snapshot()?
            .table_config()
            .enable_expired_log_cleanup()
        {
            deltalake::checkpoints::cleanup_metadata(table, None).await?;
        }
        Ok::<_, DeltaTableError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(table = %url, version, error = %e, "writing the Delta checkpoint failed; the next interval writes one");
    }
}

/// The error for a commit another writer's commit conflicts with.
pub(super) fn conflict(url: &str, batch_id: u64, reason: &str) -> DeltaSinkError {
    DeltaSinkError::Conflict {
        table: url.to_string(),
        batch_id,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::scan_commit;

    #[test]
    fn a_commit_is_scanned_for_the_query_transaction_and_table_changes() {
        let commit = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE"}}
{"add":{"path":"a.parquet","partitionValues":{},"size":1,"modificationTime":1,"dataChange":true}}
{"txn":{"appId":"q1","version":4}}
{"txn":{"appId":"q2","version":9}}
"#;
        assert_eq!(scan_commit(commit, "q1").unwrap(), (Some(4), false));
        assert_eq!(scan_commit(commit, "q3").unwrap(), (None, false));
        let changed = br#"{"metaData":{"id":"x"}}
{"unknownAction":{"x":1}}"#;
        assert_eq!(scan_commit(changed, "q1").unwrap(), (None, true));
        assert!(scan_commit(b"{not json", "q1").is_err());
    }
}
