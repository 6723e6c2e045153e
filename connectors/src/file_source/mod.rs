//! A streaming source over a directory of files: parquet, CSV or JSON lines.
//!
//! [`FileSource`] watches a directory on any object store (a local path,
//! `file://`, `memory://`, or a store registered with DataFusion) and turns
//! each file that appears in it into rows, once.
//!
//! # Which files are read
//!
//! Every trigger the directory is listed recursively. A file is a candidate
//! unless some component of its path *below the watched directory* starts
//! with `.` or `_`. **This is the rule for half-written files:** a writer
//! must write a file under a name starting with `.` or `_` (or into a
//! directory so named) and rename it to its final name once it is complete.
//! A file that becomes visible under a plain name must not change
//! afterwards; the source reads each file exactly once and does not notice
//! later changes (a changed modification time does not make a file new).
//! The same rule hides the metadata directories sinks keep next to their
//! output, such as `_tidemill_sink`.
//!
//! # The files-seen log
//!
//! A listing admits only the files last modified before it started, less a
//! margin ([`FileSource::listing_margin`], 50 ms by default), so that files
//! are admitted in the order they were written even when a listing races
//! with a writer's renames; a newer file waits for the next listing (the
//! same call lists again once such files are old enough).
//!
//! New files are ordered by (last modified, path) and appended to a
//! **files-seen log** in the source's private checkpoint directory
//! (`<checkpoint>/sources/<i>/seen/<first sequence number>`) *before* an
//! offset covering them is returned: the log is write-ahead. Each log file
//! lists, for a run of consecutive sequence numbers, the file's path, size
//! and modification time. An offset `k` means "the first `k` files of the
//! log", so a batch's range `(start, end]` (the files after the first
//! `start`, up to the `end`-th) names exactly the same files on every replay, in this process or after a restart. On open the whole log
//! is loaded, so a restarted query neither re-reads nor skips a file.
//!
//! A file that vanished after being logged is an error when its batch is
//! read (it is never skipped silently).
//!
//! # Schema
//!
//! Either given with [`FileSource::schema`], or inferred when the streaming
//! DataFrame is created: from the footer of the first parquet file, or from
//! the first rows of the first CSV / JSON files (inferred CSV and JSON
//! columns are nullable). Parquet strings and binary values are inferred as
//! `Utf8View` / `BinaryView` when the session's
//! `datafusion.execution.parquet.schema_force_view_types` is on (its
//! default), as DataFusion's own parquet reads do, so a batch query over
//! the same files sees the same schema. Columns are matched by name (CSV
//! files without a header: by position); a missing nullable column is
//! filled with nulls, a missing non-nullable column is an error naming the
//! file and the column. A column of another type is converted to the
//! declared one where no value can be lost: timestamps of any unit and
//! zone (the instant is kept; zone-less values are taken as UTC), integers
//! and floats into wider ones, strings in another Arrow encoding (parquet
//! decodes those straight into the source's encoding). Any other type is
//! an error naming the file and the column, and so is a value the declared
//! type cannot hold (a timestamp beyond the nanosecond range, 1677–2262,
//! say), naming its row or line too. CSV and JSON timestamps are parsed
//! into the declared type with or without a UTC offset
//! (`2024-03-04T14:30:00Z`, `2024-03-04T14:30:00+01:00`,
//! `2024-03-04 14:30:00`); one without an offset is taken as UTC.
//!
//! # Bounded reads
//!
//! [`FileSource::read_batch`] reads every visible file once, as a batch
//! DataFrame, through the same reader: the same files, schema, options and
//! errors as the stream, for running the same query as a batch job.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::parquet::transform_schema_to_view;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use tidemill_engine::{
    BatchInput, Location, Offset, ReadLimit, Result, Source, SourceContext, SourceStream,
    StorageOptions, TidemillError,
};
use tidemill_state::StateError;

use self::bad_record::strip_serde_position;
pub(crate) use self::connector::FilesConnector;
use self::reader::FileReader;
use self::seen_log::{
    META_KIND, META_VERSION, SeenFile, SeenLog, SourceMetadata, list_visible, sort_files,
};

mod bad_record;
mod connector;
// The Delta source reads parquet columns by the same conversion rules.
pub(crate) mod convert;
mod reader;
#[cfg(feature = "delta")]
pub(crate) use reader::StoreParquetReader;
mod scan;
mod seen_log;
#[cfg(test)]
mod tests;

/// Schema inference reads at most this many files...
const INFER_MAX_FILES: usize = 8;
/// ...and at most this many records (CSV, JSON) across them.
const INFER_MAX_RECORDS: usize = 1000;
/// How many files of one batch are fetched concurrently.
const READ_CONCURRENCY: usize = 4;

/// The format of the files a [`FileSource`] reads or a
/// [`FileSink`](crate::FileSink) writes. In a sink's manifest it is written
/// as its [name](FileFormat::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Apache Parquet files; the schema is taken from the file footer.
    Parquet,
    /// Comma-separated values (header and delimiter configurable).
    Csv,
    /// JSON lines: one JSON object per line.
    Json,
}

impl FileFormat {
    /// The format's short name (`parquet`, `csv`, `json`), as used in the
    /// descriptions of sources and sinks and in pipeline options.
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv => "csv",
            FileFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A streaming source reading the files that appear in a directory.
///
/// **Half-written files.** Every trigger the directory is listed
/// recursively; a file whose path below the directory has a component
/// starting with `.` or `_` is ignored. Writers must write a file under such
/// a name (or into such a directory) and rename it once it is complete; a
/// visible file must not change afterwards. This also hides sink metadata
/// such as `_tidemill_sink`.
///
/// **The files-seen log.** New files, ordered by (last modified, path), are
/// appended to a log in the source's checkpoint directory before an offset
/// covering them is returned. Offset `k` means "the first `k` files of the
/// log", so a range names the same files on every replay, and a restarted
/// query neither re-reads nor skips a file. A file already in the log is
/// never read again, even if its modification time changes; a logged file
/// that vanished is an error when its batch is read.
///
/// **Schema.** Given with [`FileSource::schema`] or inferred when the
/// streaming DataFrame is made (parquet: the first file's footer; CSV and
/// JSON: the first rows of the first files, all columns nullable). Columns
/// are matched by name (headerless CSV: by position); a missing nullable
/// column reads as nulls, a missing non-nullable one is an error naming
/// the file and column. A column of another type is converted where no
/// value can be lost (timestamps of any unit or zone, wider integers and
/// floats, other string encodings), else it is an error naming the file
/// and column. Malformed records are errors naming the file and line.
///
/// **Order.** Each listing admits only files last modified at least
/// [`FileSource::listing_margin`] before it started, so files are admitted
/// in the order they were written even when a listing races with renames.
///
/// ```no_run
/// # use tidemill_connectors::FileSource;
/// let source = FileSource::json("data/trades/").max_files_per_trigger(10);
/// let csv = FileSource::csv("memory:///in").has_header(false).delimiter(b';');
/// ```
#[derive(Debug, Clone)]
pub struct FileSource {
    location: String,
    format: FileFormat,
    schema: Option<SchemaRef>,
    max_files_per_trigger: Option<u64>,
    has_header: bool,
    delimiter: u8,
    listing_margin: Duration,
    storage: StorageOptions,
}

impl FileSource {
    /// The default of [`FileSource::listing_margin`]: a listing admits the
    /// files last modified at least this long before it started.
    pub const DEFAULT_LISTING_MARGIN: Duration = Duration::from_millis(50);

    /// A source of `format` files in the directory `location` (a local
    /// path, a `file://` URL, or a URL of any object store registered in
    /// the session, such as `memory://`).
    pub fn new(location: impl Into<String>, format: FileFormat) -> Self {
        Self {
            location: location.into(),
            format,
            schema: None,
            max_files_per_trigger: None,
            has_header: true,
            delimiter: b',',
            listing_margin: Self::DEFAULT_LISTING_MARGIN,
            storage: StorageOptions::default(),
        }
    }

    /// Settings of the S3 store an `s3://bucket/path` location is read
    /// from, over the environment's `AWS_*` variables (see
    /// [`tidemill_engine::storage`]); none by default.
    pub fn storage_options(mut self, options: StorageOptions) -> Self {
        self.storage = options;
        self
    }

    /// A source of parquet files in `location`.
    pub fn parquet(location: impl Into<String>) -> Self {
        Self::new(location, FileFormat::Parquet)
    }

    /// A source of CSV files in `location` (with a header line unless
    /// [`FileSource::has_header`] says otherwise).
    pub fn csv(location: impl Into<String>) -> Self {
        Self::new(location, FileFormat::Csv)
    }

    /// A source of JSON-lines files in `location`.
    pub fn json(location: impl Into<String>) -> Self {
        Self::new(location, FileFormat::Json)
    }

    /// Uses `schema` instead of inferring one from the files present.
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Admits at most `n` new files into one micro-batch (the source's
    /// default read limit becomes [`ReadLimit::MaxFiles`]). `n` must be at
    /// least 1.
    pub fn max_files_per_trigger(mut self, n: u64) -> Self {
        self.max_files_per_trigger = Some(n);
        self
    }

    /// CSV only: whether each file starts with a header line naming the
    /// columns (default `true`). With a header, columns are matched to the
    /// schema by name; without one, by position.
    pub fn has_header(mut self, has_header: bool) -> Self {
        self.has_header = has_header;
        self
    }

    /// CSV only: the field delimiter (default `b','`).
    pub fn delimiter(mut self, delimiter: u8) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// Admits, per directory listing, only the files last modified at
    /// least `margin` before the listing started (default
    /// [`FileSource::DEFAULT_LISTING_MARGIN`], 50 ms); newer files wait for the next
    /// listing.
    ///
    /// A directory listing may miss a file added while it runs and yet see
    /// one added after it (POSIX leaves open whether `readdir` returns
    /// entries added during it; object store listings are not snapshots
    /// either). A writer that renames file `k` into place before writing
    /// file `k + 1` would then see `k + 1` admitted, and perhaps move the
    /// watermark, before `k`. With the margin, a file is admitted only
    /// once every file renamed into place before it was written existed
    /// when a listing started, so it is admitted in the same listing or a
    /// later one than those: files are admitted in the order they were
    /// written (ties in modification time go by path).
    ///
    /// The margin must cover the difference between the clock that stamps
    /// modification times and this process's clock: on a local file system
    /// the kernel's coarse clock (a few milliseconds); on an object store
    /// its clock skew and the granularity of its times (S3's are whole
    /// seconds, so give it more than a second).
    ///
    /// A listing that finds files too new to admit waits until they are
    /// old enough and lists once more, so a file written just before a
    /// trigger is read by that trigger (and by `process_all_available` or
    /// an available-now run): the margin delays such files by about its
    /// length, never to a later trigger.
    pub fn listing_margin(mut self, margin: Duration) -> Self {
        self.listing_margin = margin;
        self
    }

    /// The format of the files read.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The location as the user gave it.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Reads every file the directory holds now as one batch [`DataFrame`]
    /// with the stream's columns: the bounded counterpart of the stream,
    /// for running the same query as a batch job.
    ///
    /// It reads exactly what the stream would read, the same way: the same
    /// files (a name below the directory starting with `.` or `_` is
    /// skipped), the same schema (given, or inferred from the same first
    /// files), the same decoding through the stream's reader, with the same
    /// options (CSV header and delimiter). So malformed input is the same
    /// error as in the stream, naming the source, the file, and the line
    /// and column where known; executing the DataFrame fails with it (a
    /// [`TidemillError`] inside DataFusion's external error, which
    /// `TidemillError::from` recovers). [`FileSource::max_files_per_trigger`]
    /// does not apply: the read is one batch.
    ///
    /// The directory is listed when this is called; files are read lazily
    /// when the DataFrame executes, in (last modified, path) order within
    /// each of up to `target_partitions` partitions of the scan. A file
    /// removed in between is an error. A missing or empty directory is an
    /// empty table when the schema is given (and an error otherwise, as no
    /// schema can be inferred).
    ///
    /// ```no_run
    /// # async fn demo() -> tidemill_engine::Result<()> {
    /// use datafusion::prelude::SessionContext;
    /// use tidemill_connectors::FileSource;
    ///
    /// let ctx = SessionContext::new();
    /// let trades = FileSource::json("data/trades/").read_batch(&ctx).await?;
    /// let rows = trades.count().await?;
    /// # let _ = rows;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_batch(&self, ctx: &SessionContext) -> Result<DataFrame> {
        let schema = Source::schema(self, ctx).await?;
        let location = self.resolve(ctx)?;
        let mut files = list_visible(&location)
            .await
            .map_err(|e| self.err(format!("cannot list {}: {e}", location.url())))?;
        sort_files(&mut files);
        let reader = FileReader::new(self, &location);
        let partitions = ctx
            .state()
            .config()
            .target_partitions()
            .clamp(1, files.len().max(1));
        let per_partition = files.len().div_ceil(partitions).max(1);
        let mut scans: Vec<Arc<dyn PartitionStream>> = files
            .chunks(per_partition)
            .map(|chunk| {
                Arc::new(BoundedFiles {
                    reader: reader.clone(),
                    schema: Arc::clone(&schema),
                    files: chunk.to_vec(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        if scans.is_empty() {
            scans.push(Arc::new(BoundedFiles {
                reader,
                schema: Arc::clone(&schema),
                files: Vec::new(),
            }));
        }
        let context = || format!("{}: bounded read", self.description());
        let table = StreamingTable::try_new(schema, scans)
            .map_err(|e| TidemillError::datafusion(context(), e))?;
        ctx.read_table(Arc::new(table))
            .map_err(|e| TidemillError::datafusion(context(), e))
    }

    /// The location as a URL, without a trailing `/`, when it parses.
    fn url_string(&self) -> String {
        match ListingTableUrl::parse(&self.location) {
            Ok(url) => {
                let url = url.as_str();
                match url.strip_suffix('/') {
                    Some(trimmed) if !trimmed.ends_with(':') && !trimmed.ends_with("//") => {
                        trimmed.to_string()
                    }
                    _ => url.to_string(),
                }
            }
            Err(_) => self.location.clone(),
        }
    }

    fn resolve(&self, session: &SessionContext) -> Result<Location> {
        Location::resolve_with(&self.location, &self.storage, &session.runtime_env())
    }

    fn err(&self, message: impl Into<String>) -> TidemillError {
        TidemillError::source(self.description(), message)
    }

    /// Infers the schema from the first files in `location`.
    async fn infer_schema(&self, location: &Location) -> Result<SchemaRef> {
        let reader = FileReader::new(self, location);
        let mut files = list_visible(location)
            .await
            .map_err(|e| self.err(format!("cannot list {}: {e}", location.url())))?;
        if files.is_empty() {
            return Err(self.err(format!(
                "cannot infer the schema of {}: the directory has no {} files yet (names starting with '.' or '_' \
                 are ignored); pass the schema explicitly with `.schema(...)`",
                location.url(),
                self.format
            )));
        }
        sort_files(&mut files);
        files.truncate(INFER_MAX_FILES);
        match self.format {
            FileFormat::Parquet => {
                let (_, metadata) = reader.parquet_metadata(&files[0].location, None).await?;
                let fields = metadata.schema().fields().clone();
                Ok(Arc::new(Schema::new(fields)))
            }
            FileFormat::Csv => {
                let mut merged: Vec<Field> = Vec::new();
                let mut budget = INFER_MAX_RECORDS;
                for meta in &files {
                    let bytes = reader.fetch(&meta.location, None).await?;
                    let name = reader.display(&meta.location);
                    let (schema, read) = reader
                        .csv_format()
                        .infer_schema(Cursor::new(&bytes[..]), Some(budget))
                        .map_err(|e| self.err(format!("cannot infer the schema of {name}: {e}")))?;
                    merge_csv_fields(&mut merged, &schema);
                    budget = budget.saturating_sub(read);
                    if budget == 0 {
                        break;
                    }
                }
                Ok(Arc::new(Schema::new(merged)))
            }
            FileFormat::Json => {
                let mut values = Vec::new();
                for meta in &files {
                    let bytes = reader.fetch(&meta.location, None).await?;
                    let name = reader.display(&meta.location);
                    let stream = serde_json::Deserializer::from_slice(&bytes)
                        .into_iter::<serde_json::Value>();
                    for value in stream.take(INFER_MAX_RECORDS - values.len()) {
                        let value = value.map_err(|e| {
                            self.err(format!(
                                "cannot infer the schema of {name}, line {}: invalid JSON: {}",
                                e.line(),
                                strip_serde_position(&e)
                            ))
                        })?;
                        values.push(value);
                    }
                    if values.len() >= INFER_MAX_RECORDS {
                        break;
                    }
                }
                let schema = arrow::json::reader::infer_json_schema_from_iterator(
                    values.into_iter().map(Ok),
                )
                .map_err(|e| {
                    self.err(format!(
                        "cannot infer the schema of {}: {e}",
                        location.url()
                    ))
                })?;
                let fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect();
                if fields.is_empty() {
                    return Err(self.err(format!(
                        "cannot infer the schema of {}: the first files hold no JSON objects; pass the schema \
                         explicitly with `.schema(...)`",
                        location.url()
                    )));
                }
                Ok(Arc::new(Schema::new(fields)))
            }
        }
    }
}

/// Merges the columns of one CSV file's inferred schema into `merged`:
/// a column seen as integer in one file and float in another becomes a
/// float; any other disagreement becomes a string.
fn merge_csv_fields(merged: &mut Vec<Field>, schema: &Schema) {
    for field in schema.fields() {
        match merged.iter_mut().find(|f| f.name() == field.name()) {
            None => merged.push(field.as_ref().clone().with_nullable(true)),
            Some(existing) => {
                let (a, b) = (existing.data_type(), field.data_type());
                let widened = if a == b || *b == DataType::Null {
                    a.clone()
                } else if *a == DataType::Null {
                    b.clone()
                } else if matches!(
                    (a, b),
                    (DataType::Int64, DataType::Float64) | (DataType::Float64, DataType::Int64)
                ) {
                    DataType::Float64
                } else {
                    DataType::Utf8
                };
                *existing = Field::new(existing.name(), widened, true);
            }
        }
    }
}

#[async_trait]
impl Source for FileSource {
    fn description(&self) -> String {
        format!("FileSource[{}: {}]", self.format, self.url_string())
    }

    async fn read_batch(&self, session: &SessionContext) -> Result<DataFrame> {
        FileSource::read_batch(self, session).await
    }

    async fn schema(&self, session: &SessionContext) -> Result<SchemaRef> {
        if let Some(schema) = &self.schema {
            return Ok(Arc::clone(schema));
        }
        let location = self.resolve(session)?;
        let schema = self.infer_schema(&location).await?;
        // Strings and binary values in parquet files read as view types
        // when the session says so (DataFusion's default), as DataFusion's
        // own parquet reads do: a batch read of the same files has the
        // same schema.
        let view_types = session
            .copied_config()
            .options()
            .execution
            .parquet
            .schema_force_view_types;
        Ok(match self.format {
            FileFormat::Parquet if view_types => Arc::new(transform_schema_to_view(&schema)),
            _ => schema,
        })
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn SourceStream>> {
        if self.max_files_per_trigger == Some(0) {
            return Err(TidemillError::Config(format!(
                "{}: max_files_per_trigger must be at least 1",
                self.description()
            )));
        }
        let location = self.resolve(&ctx.session)?;
        let description = self.description();

        // The checkpoint remembers which directory it logged files of.
        let meta = SourceMetadata {
            format: self.format.name().to_string(),
            url: self.url_string(),
        };
        match ctx
            .checkpoint
            .read::<SourceMetadata>("metadata", META_KIND, META_VERSION)
            .await?
        {
            Some(existing) if existing != meta => {
                return Err(TidemillError::CheckpointMismatch {
                    location: ctx.checkpoint.root().to_string(),
                    reason: format!(
                        "source {description} was checkpointed as reading {} files from {}; a checkpoint's files-seen \
                         log cannot be reused for another directory or format",
                        existing.format, existing.url
                    ),
                });
            }
            Some(_) => {}
            None => match ctx
                .checkpoint
                .create("metadata", META_KIND, META_VERSION, &meta)
                .await
            {
                Ok(()) | Err(StateError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            },
        }

        let log = SeenLog::load(ctx.checkpoint.child("seen"), &description).await?;
        Ok(Box::new(FileStream {
            description,
            reader: FileReader::new(self, &location),
            location,
            schema: ctx.schema,
            log,
            max_files_per_trigger: self.max_files_per_trigger,
            listing_margin: self.listing_margin,
            available_now_cap: None,
            footers_ahead: None,
        }))
    }
}

/// A [`FileSource`] opened for one query.
#[derive(Debug)]
struct FileStream {
    description: String,
    location: Location,
    reader: FileReader,
    schema: SchemaRef,
    log: SeenLog,
    max_files_per_trigger: Option<u64>,
    listing_margin: Duration,
    /// After `prepare_for_available_now`: the log length not to go past.
    available_now_cap: Option<u64>,
    /// The next batch's parquet footers, being read while a batch runs.
    footers_ahead: Option<FootersAhead>,
}

/// The footers of the parquet files at log positions `(from, to]`, being
/// read in the background: the next batch's, read while the batch before
/// it runs, so that the batch starts without waiting for them. Only a
/// guess at the next range (the engine asks for what its offset log says):
/// a read of any other range, or a failed read ahead, reads the footers
/// as usual (and reports their errors as usual). Files are immutable once
/// logged, so a footer read early is the footer a later read would find.
#[derive(Debug)]
struct FootersAhead {
    range: (u64, u64),
    task: tokio::task::JoinHandle<Option<Vec<Arc<reader::ParquetFooter>>>>,
}

impl FootersAhead {
    /// The footers, if they are those of the files in `range` and were
    /// read.
    async fn take(mut self, range: (u64, u64)) -> Option<Vec<Arc<reader::ParquetFooter>>> {
        if self.range != range {
            return None;
        }
        (&mut self.task).await.ok().flatten()
    }
}

impl Drop for FootersAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one listing of the directory found that the log does not hold.
struct Listing {
    /// Files last modified before the listing started, less the margin.
    admitted: Vec<ObjectMeta>,
    /// The latest modification time of the files too new to admit.
    held_back_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl FileStream {
    fn err(&self, message: impl Into<String>) -> TidemillError {
        TidemillError::source(&self.description, message)
    }

    fn parse_offset(&self, offset: Option<&Offset>) -> Result<u64> {
        let Some(offset) = offset else { return Ok(0) };
        let n = offset.as_u64().ok_or_else(|| {
            self.err(format!(
                "invalid offset {offset}: a file source offset is a number of files"
            ))
        })?;
        if n > self.log.len() {
            return Err(self.err(format!(
                "offset {n} is beyond the {} files in the files-seen log at {}; the source's checkpoint directory \
                 is missing files or belongs to another query",
                self.log.len(),
                self.log.dir.root()
            )));
        }
        Ok(n)
    }

    /// How many logged files batches may read: all of them, or under
    /// `Trigger::AvailableNow` those logged when it was prepared.
    fn available(&self) -> u64 {
        self.log
            .len()
            .min(self.available_now_cap.unwrap_or(u64::MAX))
    }

    /// Starts reading the footers of the parquet files the batch after one
    /// ending at log position `end` will read, when that is known: the
    /// source reads a fixed number of files per trigger and they are
    /// logged already.
    fn read_footers_ahead(&self, end: u64) -> Option<FootersAhead> {
        let per_trigger = self.max_files_per_trigger?;
        if self.reader.format() != FileFormat::Parquet {
            return None;
        }
        let available = self.available();
        let next = end.saturating_add(per_trigger).min(available);
        if next <= end {
            return None;
        }
        let files = self.log.files[end as usize..next as usize].to_vec();
        let (reader, schema) = (self.reader.clone(), Arc::clone(&self.schema));
        let task = tokio::spawn(async move {
            scan::footers(&reader, &schema, &files)
                .await
                .inspect_err(|e| tracing::debug!(error = %e, "footers read ahead dropped"))
                .ok()
        });
        Some(FootersAhead {
            range: (end, next),
            task,
        })
    }

    /// The logged files in `(start, end]`.
    fn range(&self, start: Option<&Offset>, end: &Offset) -> Result<Vec<SeenFile>> {
        let from = self.parse_offset(start)?;
        let to = self.parse_offset(Some(end))?;
        if to < from {
            return Err(self.err(format!(
                "invalid range: end offset {to} is before start offset {from}"
            )));
        }
        self.log
            .files
            .get(from as usize..to as usize)
            .map(<[SeenFile]>::to_vec)
            .ok_or_else(|| {
                self.err(format!(
                    "offsets {from}..{to} are beyond the {} files in the files-seen log",
                    self.log.files.len()
                ))
            })
    }

    /// Lists the directory and logs the files not seen before that were
    /// last modified before the listing started, less the listing margin
    /// (see [`FileSource::listing_margin`]). When some files were too new,
    /// waits until they are old enough and lists again, so that a file
    /// written before this call is logged by it.
    async fn discover(&mut self) -> Result<()> {
        let mut listing = self.list_new().await?;
        if let Some(newest) = listing.held_back_until {
            let ready_at = newest
                .checked_add_signed(self.margin())
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
            let wait = (ready_at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(self.listing_margin)
                + Duration::from_millis(1);
            tokio::time::sleep(wait).await;
            listing = self.list_new().await?;
        }
        let mut new = listing.admitted;
        if new.is_empty() {
            return Ok(());
        }
        sort_files(&mut new);
        self.log.add(new, &self.description).await
    }

    /// The listing margin as a time difference.
    fn margin(&self) -> chrono::TimeDelta {
        chrono::TimeDelta::from_std(self.listing_margin).unwrap_or(chrono::TimeDelta::MAX)
    }

    /// One listing: the files the log does not hold, split by whether they
    /// were last modified before the listing started, less the margin.
    async fn list_new(&self) -> Result<Listing> {
        let started = chrono::Utc::now();
        let cutoff = started
            .checked_sub_signed(self.margin())
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let listed = list_visible(&self.location).await.map_err(|e| {
            let error = self.err(format!("cannot list {}: {e}", self.location.url()));
            TidemillError::storage(error, &e)
        })?;
        let mut listing = Listing {
            admitted: Vec::new(),
            held_back_until: None,
        };
        for meta in listed {
            if self.log.contains(meta.location.as_ref()) {
                continue;
            }
            if meta.last_modified < cutoff {
                listing.admitted.push(meta);
            } else {
                let newest = listing.held_back_until.get_or_insert(meta.last_modified);
                *newest = (*newest).max(meta.last_modified);
            }
        }
        Ok(listing)
    }
}

#[async_trait]
impl SourceStream for FileStream {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn default_read_limit(&self) -> ReadLimit {
        match self.max_files_per_trigger {
            Some(n) => ReadLimit::MaxFiles(n),
            None => ReadLimit::All,
        }
    }

    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let from = self.parse_offset(start)?;
        // A row limit cannot split files; it admits whole files.
        let wanted = match limit {
            ReadLimit::MaxFiles(n) => Some(from.saturating_add(n)),
            ReadLimit::All | ReadLimit::MaxRows(_) => None,
        };
        let backlog_suffices = wanted.is_some_and(|w| self.log.len() >= w);
        if self.available_now_cap.is_none() && !backlog_suffices {
            self.discover().await?;
        }
        let available = self.available();
        let end = wanted.map_or(available, |w| w.min(available)).max(from);
        if end == from {
            return Ok(start.cloned());
        }
        Ok(Some(Offset::from_u64(end)))
    }

    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let files = self.range(start, end)?;
        // Each file is read as its own task, so files decode on several
        // threads (parquet decoding runs inside the read future).
        let this = &*self;
        let per_file: Vec<Vec<RecordBatch>> = futures::stream::iter(files)
            .map(|file| {
                let reader = this.reader.clone();
                let schema = Arc::clone(&this.schema);
                let path = file.path.clone();
                let task = tokio::spawn(async move { reader.read(&file, &schema).await });
                async move {
                    task.await
                        .map_err(|e| this.err(format!("reading {path} stopped: {e}")))?
                }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(per_file.into_iter().flatten().collect())
    }

    async fn read_input(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
        partitions: usize,
    ) -> Result<BatchInput> {
        let files = self.range(start, end)?;
        let range = (self.parse_offset(start)?, self.parse_offset(Some(end))?);
        let footers = match self.footers_ahead.take() {
            Some(ahead) => ahead.take(range).await,
            None => None,
        };
        let parts =
            scan::partitions(&self.reader, &self.schema, files, footers, partitions).await?;
        self.footers_ahead = self.read_footers_ahead(range.1);
        Ok(BatchInput::Partitions(parts))
    }

    async fn prepare_for_available_now(&mut self) -> Result<()> {
        self.discover().await?;
        self.available_now_cap = Some(self.log.len());
        Ok(())
    }

    fn available_now_target(&self) -> Option<Offset> {
        self.available_now_cap.map(Offset::from_u64)
    }
}

/// One partition of [`FileSource::read_batch`]'s scan: files read one
/// after the other by the stream's reader.
#[derive(Debug)]
struct BoundedFiles {
    reader: FileReader,
    schema: SchemaRef,
    files: Vec<ObjectMeta>,
}

impl PartitionStream for BoundedFiles {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let reader = self.reader.clone();
        let schema = Arc::clone(&self.schema);
        let batches = futures::stream::iter(self.files.clone())
            .then(move |file| {
                let reader = reader.clone();
                let schema = Arc::clone(&schema);
                async move { reader.read_listed(&file, &schema).await }
            })
            .map_err(DataFusionError::from)
            .map_ok(|batches| {
                futures::stream::iter(batches.into_iter().map(Ok::<_, DataFusionError>))
            })
            .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        ))
    }
}
