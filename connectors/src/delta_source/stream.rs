//! A [`DeltaSource`](super::DeltaSource) opened for one query: admission
//! of new files under the read limits, replay of a recorded range, and
//! the source's own checkpoint file (where the stream started).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tidemill_engine::{BatchInput, Offset, ReadLimit, Result, SourceStream, TidemillError};
use tidemill_state::{CheckpointDir, StateError};

use super::data_loss::{DataLoss, keep_existing};
use super::log::{Commit, DataFile, TableLog, TableMeta, commit_name};
use super::offset::{DeltaOffset, Position};
use super::reader::FileReader;
use super::schema::misfit;
use super::{ChangeCommits, DeltaSourceError, DeltaStart};

/// Kind and format version of the source's checkpoint metadata file.
const META_KIND: &str = "delta-source-metadata";
const META_VERSION: u32 = 1;

/// The `metadata` file in the source's checkpoint directory: which table
/// the query reads and where its stream started, written before the first
/// offset is handed out (so the first batch, whose range starts at no
/// offset, replays the same files after a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SourceMeta {
    /// The table's URL.
    pub table: String,
    /// The table's id.
    pub table_id: String,
    /// The first version read.
    pub start_version: u64,
    /// Whether the first version is read as a snapshot (all its files).
    pub start_is_snapshot: bool,
}

/// The source's options, as a stream uses them.
#[derive(Debug, Clone)]
pub(super) struct StreamOptions {
    pub starting: DeltaStart,
    /// At most this many files per batch (`None`: no bound).
    pub max_files: Option<u64>,
    /// At most about this many bytes per batch (`None`: no bound).
    pub max_bytes: Option<u64>,
    pub fail_on_data_loss: bool,
    pub changes: ChangeCommits,
}

/// What one batch may admit.
#[derive(Debug, Clone, Copy)]
struct Limits {
    files: Option<u64>,
    bytes: Option<u64>,
}

impl Limits {
    fn reached(&self, files: u64, bytes: u64) -> bool {
        self.files.is_some_and(|max| files >= max) || self.bytes.is_some_and(|max| bytes >= max)
    }
}

/// How [`DeltaStream::files_of`] treats a version whose commit file is
/// not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The version was read before (it is in a recorded range): a missing
    /// commit file is data loss.
    Recorded,
    /// Looking for new data: a version after the latest listed one is
    /// simply not there yet.
    New,
}

/// The stream of one query over a Delta table.
#[derive(Debug)]
pub(super) struct DeltaStream {
    pub description: String,
    pub log: TableLog,
    pub reader: FileReader,
    pub options: StreamOptions,
    /// The table's id (its `metaData.id`), part of every offset.
    pub table_id: String,
    /// The table's partition columns.
    pub partition_columns: Vec<String>,
    /// The table's latest version when the stream was opened: a later
    /// version whose schema lacks a stream column dropped it.
    pub open_version: u64,
    pub checkpoint: CheckpointDir,
    /// Where the stream starts: from the checkpoint, or decided by the
    /// first `latest_offset`.
    pub initial: Option<Position>,
    /// Whether `initial` is in the checkpoint.
    pub initial_logged: bool,
    /// The snapshot files of a starting version, by version.
    pub snapshot: Option<(u64, Arc<Vec<DataFile>>)>,
    /// The files each version streams, once read.
    pub versions: BTreeMap<u64, Arc<Vec<DataFile>>>,
    /// The latest version listed.
    pub latest: u64,
    /// After `prepare_for_available_now`: the last version to read.
    pub available_now_cap: Option<u64>,
    pub data_loss: Arc<DataLoss>,
    /// The end of the range the last `latest_offset` returned.
    pub last_end: Option<Position>,
}

impl DeltaStream {
    fn table(&self) -> &str {
        self.log.display()
    }

    fn fail(&self, error: DeltaSourceError) -> TidemillError {
        error.into_tidemill(&self.description)
    }

    /// Loads the checkpoint's record of where the stream started, checking
    /// that it is about this table.
    pub async fn load_checkpoint(&mut self) -> std::result::Result<(), DeltaSourceError> {
        let checkpoint_error = |reason: String| DeltaSourceError::Checkpoint {
            table: self.table().to_string(),
            reason,
        };
        let meta = self
            .checkpoint
            .read::<SourceMeta>("metadata", META_KIND, META_VERSION)
            .await
            .map_err(|e| checkpoint_error(e.to_string()))?;
        let Some(meta) = meta else {
            return Ok(());
        };
        if meta.table != self.table() {
            return Err(checkpoint_error(format!(
                "it was made for the Delta table '{}'; a query's checkpoint cannot be reused for \
                 another table",
                meta.table
            )));
        }
        if meta.table_id != self.table_id {
            return Err(DeltaSourceError::TableReplaced {
                table: self.table().to_string(),
                detail: "the query's checkpoint was made for another table at this location"
                    .to_string(),
                expected: meta.table_id,
                found: self.table_id.clone(),
            });
        }
        self.initial = Some(Position::at(meta.start_version, meta.start_is_snapshot));
        self.initial_logged = true;
        Ok(())
    }

    /// Records `initial` in the checkpoint (once).
    async fn log_initial(&mut self, initial: Position) -> Result<()> {
        if self.initial_logged {
            return Ok(());
        }
        let meta = SourceMeta {
            table: self.table().to_string(),
            table_id: self.table_id.clone(),
            start_version: initial.version,
            start_is_snapshot: initial.starting,
        };
        match self
            .checkpoint
            .create("metadata", META_KIND, META_VERSION, &meta)
            .await
        {
            Ok(()) | Err(StateError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.initial_logged = true;
        Ok(())
    }

    /// Where a new stream starts, as the options say (decided once).
    async fn decide_initial(&mut self) -> std::result::Result<Position, DeltaSourceError> {
        if let Some(initial) = self.initial {
            return Ok(initial);
        }
        let latest = match self.available_now_cap {
            Some(cap) => cap,
            None => {
                self.refresh_latest().await?;
                self.latest
            }
        };
        let initial = match self.options.starting {
            DeltaStart::Snapshot => Position::at(latest, true),
            DeltaStart::Latest => Position::at(latest + 1, false),
            DeltaStart::Version(version) => {
                if version > latest {
                    return Err(DeltaSourceError::StartingVersion {
                        table: self.table().to_string(),
                        requested: version,
                        latest,
                    });
                }
                Position::at(version, false)
            }
            DeltaStart::Timestamp(at) => {
                // The first version committed at or after `at`; none yet:
                // the next one.
                let commits = self.log.list_commits(0).await?;
                let first = commits
                    .iter()
                    .filter(|(version, _)| **version <= latest)
                    .find(|(_, committed)| **committed >= at)
                    .map(|(version, _)| *version);
                Position::at(first.unwrap_or(latest + 1), false)
            }
        };
        self.initial = Some(initial);
        Ok(initial)
    }

    /// Lists the log for versions after the latest one known.
    async fn refresh_latest(&mut self) -> std::result::Result<(), DeltaSourceError> {
        let found = self.log.list_commits(self.latest + 1).await?;
        if let Some((&version, _)) = found.last_key_value() {
            self.latest = self.latest.max(version);
        }
        Ok(())
    }

    /// Refuses a table `meta` (of `version`) the stream cannot read.
    fn check_meta(
        &self,
        version: u64,
        meta: &TableMeta,
        missing_is_null: bool,
    ) -> std::result::Result<(), DeltaSourceError> {
        if meta.id != self.table_id {
            return Err(DeltaSourceError::TableReplaced {
                table: self.table().to_string(),
                detail: format!("version {version} has another table id"),
                expected: self.table_id.clone(),
                found: meta.id.clone(),
            });
        }
        if let Some(mode) = &meta.column_mapping {
            return Err(DeltaSourceError::Unsupported {
                table: self.table().to_string(),
                feature: format!(
                    "column mapping (delta.columnMapping.mode = '{mode}', from version {version})"
                ),
            });
        }
        if let Some(detail) = misfit(
            self.reader.schema(),
            &self.partition_columns,
            meta,
            missing_is_null,
        ) {
            return Err(DeltaSourceError::SchemaChanged {
                table: self.table().to_string(),
                version,
                detail,
            });
        }
        Ok(())
    }

    /// The files version `version`'s commit streams: its `dataChange`
    /// adds, unless it is a change commit the options skip (or refuse).
    fn classify(
        &self,
        version: u64,
        commit: Commit,
    ) -> std::result::Result<Vec<DataFile>, DeltaSourceError> {
        if let Some(meta) = &commit.metadata {
            self.check_meta(version, meta, version <= self.open_version)?;
        }
        let changes = self.options.changes;
        if let Some(removed) = commit.data_removes.first() {
            let skip =
                changes.skip_change_commits || (changes.ignore_deletes && commit.adds.is_empty());
            if skip {
                tracing::debug!(source = %self.description, version, "skipping a version that removes rows");
                return Ok(Vec::new());
            }
            if !changes.ignore_changes {
                return Err(DeltaSourceError::ChangeCommit {
                    table: self.table().to_string(),
                    version,
                    operation: commit.operation.unwrap_or_else(|| "a commit".to_string()),
                    file: removed.clone(),
                });
            }
        }
        if let Some(file) = commit.adds.iter().find(|f| f.deletion_vector) {
            return Err(DeltaSourceError::Unsupported {
                table: self.table().to_string(),
                feature: format!(
                    "deletion vectors (file '{}' of version {version} has one)",
                    file.name
                ),
            });
        }
        Ok(commit.adds)
    }

    /// The files the stream reads at `version` (a snapshot's files when
    /// `starting`); `None` if the version is not there yet.
    async fn files_of(
        &mut self,
        version: u64,
        starting: bool,
        need: Need,
    ) -> std::result::Result<Option<Arc<Vec<DataFile>>>, DeltaSourceError> {
        if starting {
            if let Some((v, files)) = &self.snapshot
                && *v == version
            {
                return Ok(Some(Arc::clone(files)));
            }
            let files = match self.log.snapshot(Some(version)).await {
                Ok(snapshot) => {
                    self.check_meta(version, &snapshot.meta, true)?;
                    snapshot.files
                }
                Err(DeltaSourceError::DataLoss { reason, .. })
                    if !self.options.fail_on_data_loss =>
                {
                    self.data_loss.version_skipped(
                        &self.description,
                        self.table(),
                        version,
                        &reason,
                    );
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let files = Arc::new(files);
            self.snapshot = Some((version, Arc::clone(&files)));
            return Ok(Some(files));
        }
        if let Some(files) = self.versions.get(&version) {
            return Ok(Some(Arc::clone(files)));
        }
        if need == Need::New {
            let beyond_cap = self.available_now_cap.is_some_and(|cap| version > cap);
            if beyond_cap || version > self.latest {
                return Ok(None);
            }
        }
        let files = match self.log.read_commit(version).await? {
            Some(commit) => self.classify(version, commit)?,
            None => {
                let reason = if need == Need::Recorded {
                    "a batch of the query read it before".to_string()
                } else {
                    format!("version {} exists", self.latest)
                };
                let reason = format!("{reason}; the log was probably cleaned up");
                if self.options.fail_on_data_loss {
                    return Err(DeltaSourceError::DataLoss {
                        table: self.table().to_string(),
                        version,
                        what: "log file",
                        file: commit_name(version),
                        reason,
                    });
                }
                self.data_loss
                    .version_skipped(&self.description, self.table(), version, &reason);
                Vec::new()
            }
        };
        let files = Arc::new(files);
        self.versions.insert(version, Arc::clone(&files));
        Ok(Some(files))
    }

    /// Admits files after `from` up to `limits`: the end position, how many
    /// files it admits, and how many versions (not counting a starting
    /// snapshot) it moves past.
    async fn admit(
        &mut self,
        from: Position,
        limits: Limits,
    ) -> std::result::Result<(Position, u64, u64), DeltaSourceError> {
        let mut at = from;
        let (mut files, mut bytes, mut passed) = (0u64, 0u64, 0u64);
        while !limits.reached(files, bytes) {
            let Some(version_files) = self.files_of(at.version, at.starting, Need::New).await?
            else {
                break;
            };
            let count = version_files.len() as u64;
            while at.index < count && !limits.reached(files, bytes) {
                files += 1;
                bytes += version_files[at.index as usize].size;
                at.index += 1;
            }
            if at.index < count {
                break;
            }
            if !at.starting {
                passed += 1;
            }
            at = at.next_version();
        }
        Ok((at, files, passed))
    }

    /// The position an offset holds.
    fn parse(&self, offset: &Offset) -> std::result::Result<Position, DeltaSourceError> {
        Ok(DeltaOffset::parse(offset, self.table(), &self.table_id)?.position())
    }

    /// The files in `(start, end]`.
    async fn files_in(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
    ) -> std::result::Result<Vec<DataFile>, DeltaSourceError> {
        let from = match start {
            Some(offset) => self.parse(offset)?,
            None => self.initial.ok_or_else(|| DeltaSourceError::Checkpoint {
                table: self.table().to_string(),
                reason: "it does not say where the stream started (the source's metadata file \
                         is missing), so the query's first batch cannot be read again"
                    .to_string(),
            })?,
        };
        let to = self.parse(end)?;
        let table = self.table().to_string();
        let invalid = |reason: String| DeltaSourceError::InvalidOffset {
            table: table.clone(),
            offset: end.to_string(),
            reason,
        };
        if !to.reaches(from) {
            return Err(invalid(format!(
                "the range ends before it starts (at version {}, file {})",
                from.version, from.index
            )));
        }
        let mut out = Vec::new();
        let mut at = from;
        while at != to {
            let files = self
                .files_of(at.version, at.starting, Need::Recorded)
                .await?
                .unwrap_or_default();
            let count = files.len() as u64;
            if at.version == to.version {
                if to.starting != at.starting {
                    return Err(invalid(format!(
                        "it reads version {} as a {}, and the range starts reading it as a {}",
                        to.version,
                        if to.starting { "snapshot" } else { "commit" },
                        if at.starting { "snapshot" } else { "commit" },
                    )));
                }
                // Fewer files than the offset counts only if some are gone
                // (and skipped, without fail_on_data_loss).
                let (first, last) = (at.index.min(count), to.index.min(count));
                out.extend_from_slice(&files[first as usize..last as usize]);
                break;
            }
            out.extend_from_slice(&files[(at.index.min(count)) as usize..]);
            at = at.next_version();
        }
        Ok(out)
    }

    /// `files` without those that are gone (see [`keep_existing`]).
    async fn existing(&self, files: Vec<DataFile>) -> Result<Vec<DataFile>> {
        keep_existing(
            &self.log,
            files,
            self.options.fail_on_data_loss,
            &self.data_loss,
            &self.description,
        )
        .await
        .map_err(|e| self.fail(e))
    }

    fn limits(&self, limit: ReadLimit) -> Limits {
        match limit {
            ReadLimit::All => Limits {
                files: None,
                bytes: None,
            },
            ReadLimit::MaxFiles(n) => Limits {
                files: (n != u64::MAX).then_some(n.max(1)),
                bytes: self.options.max_bytes,
            },
            ReadLimit::MaxRows(_) => Limits {
                files: self.options.max_files,
                bytes: self.options.max_bytes,
            },
        }
    }
}

#[async_trait]
impl SourceStream for DeltaStream {
    fn description(&self) -> String {
        self.description.clone()
    }

    /// `max_files_per_trigger` (1000 unless only `max_bytes_per_trigger`
    /// is given); with only a byte limit, a file limit no query reaches,
    /// so the engine still asks within the source's limits.
    fn default_read_limit(&self) -> ReadLimit {
        match (self.options.max_files, self.options.max_bytes) {
            (Some(n), _) => ReadLimit::MaxFiles(n),
            (None, Some(_)) => ReadLimit::MaxFiles(u64::MAX),
            (None, None) => ReadLimit::All,
        }
    }

    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let from = match start {
            Some(offset) => self.parse(offset).map_err(|e| self.fail(e))?,
            None => self.decide_initial().await.map_err(|e| self.fail(e))?,
        };
        if self.available_now_cap.is_none() {
            self.refresh_latest().await.map_err(|e| self.fail(e))?;
        }
        let limits = self.limits(limit);
        let (end, files, passed) = self.admit(from, limits).await.map_err(|e| self.fail(e))?;
        self.last_end = Some(end);
        if end == from || (start.is_none() && files == 0 && passed == 0) {
            return Ok(start.cloned());
        }
        if start.is_none() {
            self.log_initial(from).await?;
        }
        Ok(Some(DeltaOffset::new(&self.table_id, end).to_offset()))
    }

    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let files = self.files_in(start, end).await.map_err(|e| self.fail(e))?;
        let files = self.existing(files).await?;
        self.reader.read_all(files).await.map_err(|e| self.fail(e))
    }

    async fn read_input(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
        partitions: usize,
    ) -> Result<BatchInput> {
        let files = self.files_in(start, end).await.map_err(|e| self.fail(e))?;
        let files = self.existing(files).await?;
        if files.is_empty() {
            return Ok(BatchInput::Rows(Vec::new()));
        }
        Ok(BatchInput::Partitions(
            self.reader.partitions(files, partitions),
        ))
    }

    async fn commit(&mut self, end: &Offset) -> Result<()> {
        let at = self.parse(end).map_err(|e| self.fail(e))?;
        self.versions.retain(|version, _| *version >= at.version);
        if self
            .snapshot
            .as_ref()
            .is_some_and(|(version, _)| at.version > *version)
        {
            self.snapshot = None;
        }
        Ok(())
    }

    async fn prepare_for_available_now(&mut self) -> Result<()> {
        self.refresh_latest().await.map_err(|e| self.fail(e))?;
        self.available_now_cap = Some(self.latest);
        Ok(())
    }

    fn available_now_target(&self) -> Option<Offset> {
        let cap = self.available_now_cap?;
        let initial = self.initial.map_or(0, |p| p.version);
        let target = Position::at((cap + 1).max(initial), false);
        Some(DeltaOffset::new(&self.table_id, target).to_offset())
    }

    /// `versions`: how many versions after the last admitted range's end
    /// the table holds (the one it ends in counted, if partly read).
    fn lag(&self) -> BTreeMap<String, u64> {
        let mut lag = BTreeMap::new();
        if let Some(end) = self.last_end {
            lag.insert(
                "versions".to_string(),
                (self.latest + 1).saturating_sub(end.version),
            );
        }
        lag
    }
}
