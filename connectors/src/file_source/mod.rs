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
//! New files are ordered by (last modified, path) and appended to a
//! **files-seen log** in the source's private checkpoint directory
//! (`<checkpoint>/sources/<i>/seen/<first sequence number>`) *before* an
//! offset covering them is returned: the log is write-ahead. Each log file
//! lists, for a run of consecutive sequence numbers, the file's path, size
//! and modification time. An offset `k` means "the first `k` files of the
//! log", so a batch's range `[start, end)` names exactly the same files on
//! every replay, in this process or after a restart. On open the whole log
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
//! columns are nullable). Columns are matched by name (CSV files without a
//! header: by position); a missing nullable column is filled with nulls, a
//! missing non-nullable column or a column of another type is an error
//! naming the file and the column.

use std::collections::HashSet;
use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use serde::{Deserialize, Serialize};
use tidemill_engine::{
    Location, Offset, ReadLimit, Result, Source, SourceContext, SourceProvider, TidemillError,
};
use tidemill_state::{CheckpointDir, StateError};

/// Rows per record batch produced by the readers.
const BATCH_SIZE: usize = 8192;
/// Schema inference reads at most this many files...
const INFER_MAX_FILES: usize = 8;
/// ...and at most this many records (CSV, JSON) across them.
const INFER_MAX_RECORDS: usize = 1000;
/// How many files of one batch are fetched concurrently.
const READ_CONCURRENCY: usize = 4;

/// Kind and format version of a files-seen log file.
const SEEN_KIND: &str = "file-source-seen";
const SEEN_VERSION: u32 = 1;
/// Kind and format version of the source's metadata file.
const META_KIND: &str = "file-source-metadata";
const META_VERSION: u32 = 1;

/// The format of the files a [`FileSource`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// source's description.
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
/// column reads as nulls, a missing non-nullable one or a column of another
/// type is an error naming the file and column. Malformed records are
/// errors naming the file and line.
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
}

impl FileSource {
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
        }
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

    /// The format of the files read.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The location as the user gave it.
    pub fn location(&self) -> &str {
        &self.location
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
        Location::resolve(&self.location, &session.runtime_env())
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
                let builder = reader.parquet_builder(&files[0].location, None).await?;
                let fields = builder.schema().fields().clone();
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
impl SourceProvider for FileSource {
    fn description(&self) -> String {
        format!("FileSource[{}: {}]", self.format, self.url_string())
    }

    async fn schema(&self, session: &SessionContext) -> Result<SchemaRef> {
        if let Some(schema) = &self.schema {
            return Ok(Arc::clone(schema));
        }
        let location = self.resolve(session)?;
        self.infer_schema(&location).await
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>> {
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
            available_now_cap: None,
        }))
    }
}

/// The `metadata` file in the source's checkpoint directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SourceMetadata {
    format: String,
    url: String,
}

/// One file in the files-seen log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SeenFile {
    /// The file's position in the log (0-based).
    seq: u64,
    /// The file's path inside its object store.
    path: String,
    /// Its size when it was logged.
    size: u64,
    /// Its modification time when it was logged (RFC 3339).
    last_modified: String,
}

/// One file of the files-seen log: a run of consecutive entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SeenLogFile {
    files: Vec<SeenFile>,
}

/// The files-seen log, loaded in memory.
#[derive(Debug)]
struct SeenLog {
    dir: CheckpointDir,
    files: Vec<SeenFile>,
    paths: HashSet<String>,
}

impl SeenLog {
    /// Loads every log file in `dir`, checking that they hold consecutive
    /// sequence numbers.
    async fn load(dir: CheckpointDir, description: &str) -> Result<Self> {
        let mut ids: Vec<u64> = dir
            .list_names()
            .await?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut log = Self {
            dir,
            files: Vec::new(),
            paths: HashSet::new(),
        };
        for id in ids {
            let name = id.to_string();
            let entry: SeenLogFile = log
                .dir
                .read(&name, SEEN_KIND, SEEN_VERSION)
                .await?
                .ok_or_else(|| {
                    TidemillError::source(
                        description,
                        format!(
                            "files-seen log file {} vanished while being read",
                            log.dir.path(&name)
                        ),
                    )
                })?;
            log.append(&name, entry)?;
        }
        Ok(log)
    }

    fn corrupt(&self, name: &str, reason: String) -> TidemillError {
        TidemillError::Checkpoint(StateError::Corrupt {
            path: self.dir.path(name),
            reason,
        })
    }

    /// Adds the entries of log file `name` to the in-memory log.
    fn append(&mut self, name: &str, entry: SeenLogFile) -> Result<()> {
        if name.parse::<u64>().ok() != Some(self.len()) {
            return Err(self.corrupt(
                name,
                format!(
                    "files-seen log file starts at sequence number {name} but the log before it holds {} files \
                     (a log file is missing)",
                    self.len()
                ),
            ));
        }
        for file in entry.files {
            if file.seq != self.len() {
                return Err(self.corrupt(
                    name,
                    format!(
                        "entry for {} has sequence number {}, expected {}",
                        file.path,
                        file.seq,
                        self.len()
                    ),
                ));
            }
            if !self.paths.insert(file.path.clone()) {
                return Err(self.corrupt(name, format!("file {} is logged twice", file.path)));
            }
            self.files.push(file);
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.files.len() as u64
    }

    fn contains(&self, path: &str) -> bool {
        self.paths.contains(path)
    }

    /// Appends `new` files durably (write-ahead), then in memory.
    async fn add(&mut self, new: Vec<ObjectMeta>, description: &str) -> Result<()> {
        let first = self.len();
        let name = first.to_string();
        let entry = SeenLogFile {
            files: new
                .into_iter()
                .enumerate()
                .map(|(i, meta)| SeenFile {
                    seq: first + i as u64,
                    path: meta.location.to_string(),
                    size: meta.size,
                    last_modified: meta
                        .last_modified
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                })
                .collect(),
        };
        match self
            .dir
            .create(&name, SEEN_KIND, SEEN_VERSION, &entry)
            .await
        {
            Ok(()) => self.append(&name, entry),
            Err(StateError::AlreadyExists { .. }) => {
                // An earlier attempt of ours may have been written although it
                // reported an error; whatever is on disk is the log's truth.
                let existing: SeenLogFile = self
                    .dir
                    .read(&name, SEEN_KIND, SEEN_VERSION)
                    .await?
                    .ok_or_else(|| self.corrupt(&name, "exists but cannot be read".into()))?;
                tracing::warn!(
                    source = description,
                    file = %self.dir.path(&name),
                    "files-seen log file already existed; adopting it (is another query using this checkpoint?)"
                );
                self.append(&name, existing)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Lists the files under `location` that are not hidden by the `.`/`_` rule.
async fn list_visible(
    location: &Location,
) -> std::result::Result<Vec<ObjectMeta>, object_store::Error> {
    let prefix = location.path();
    let listed: Vec<ObjectMeta> = match location.store().list(Some(prefix)).try_collect().await {
        Ok(listed) => listed,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(listed
        .into_iter()
        .filter(|meta| match meta.location.prefix_match(prefix) {
            Some(mut parts) => !parts.any(|part| {
                let part = part.as_ref();
                part.starts_with('.') || part.starts_with('_')
            }),
            None => false,
        })
        .collect())
}

/// Orders files by (last modified, path).
fn sort_files(files: &mut [ObjectMeta]) {
    files.sort_by(|a, b| {
        a.last_modified
            .cmp(&b.last_modified)
            .then_with(|| a.location.as_ref().cmp(b.location.as_ref()))
    });
}

/// Reads a parquet file on an object store: the parquet crate's
/// [`AsyncFileReader`] over ranged gets of a file whose size is known.
#[derive(Debug, Clone)]
struct StoreParquetReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn parquet_io_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreParquetReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(parquet_io_error)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(parquet_io_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_metadata_options(options.map(|o| o.metadata_options().clone()))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Reads single files of one format into batches of a given schema.
#[derive(Debug, Clone)]
struct FileReader {
    description: String,
    format: FileFormat,
    has_header: bool,
    delimiter: u8,
    store: Arc<dyn ObjectStore>,
    /// `scheme://host/`, prefixed to store paths to name files in errors.
    store_root: String,
}

/// Why a batch does not fit the source schema.
enum Misfit {
    Missing(String),
    Type {
        column: String,
        actual: DataType,
        expected: DataType,
    },
    Null {
        column: String,
        row: usize,
    },
    Other(String),
}

impl FileReader {
    fn new(source: &FileSource, location: &Location) -> Self {
        let url = location.url();
        Self {
            description: source.description(),
            format: source.format,
            has_header: source.has_header,
            delimiter: source.delimiter,
            store: Arc::clone(location.store()),
            store_root: format!("{}://{}/", url.scheme(), url.host_str().unwrap_or("")),
        }
    }

    fn err(&self, message: impl Into<String>) -> TidemillError {
        TidemillError::source(&self.description, message)
    }

    /// A file as a URL, for messages.
    fn display(&self, path: &Path) -> String {
        format!("{}{}", self.store_root, path)
    }

    fn csv_format(&self) -> arrow::csv::reader::Format {
        arrow::csv::reader::Format::default()
            .with_header(self.has_header)
            .with_delimiter(self.delimiter)
    }

    fn vanished(&self, path: &Path, seq: Option<u64>) -> TidemillError {
        match seq {
            Some(seq) => self.err(format!(
                "file {} (number {seq} in the files-seen log) no longer exists; files must not be removed before the \
                 batches reading them are committed",
                self.display(path)
            )),
            None => self.err(format!("file {} vanished while being read", self.display(path))),
        }
    }

    /// The whole content of a file.
    async fn fetch(&self, path: &Path, seq: Option<u64>) -> Result<Bytes> {
        let result = match self.store.get(path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(self.vanished(path, seq)),
            Err(e) => return Err(self.err(format!("cannot read {}: {e}", self.display(path)))),
        };
        result
            .bytes()
            .await
            .map_err(|e| self.err(format!("cannot read {}: {e}", self.display(path))))
    }

    async fn parquet_builder(
        &self,
        path: &Path,
        seq: Option<u64>,
    ) -> Result<ParquetRecordBatchStreamBuilder<StoreParquetReader>> {
        let meta = match self.store.head(path).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Err(self.vanished(path, seq)),
            Err(e) => return Err(self.err(format!("cannot read {}: {e}", self.display(path)))),
        };
        let reader = StoreParquetReader {
            store: Arc::clone(&self.store),
            path: path.clone(),
            size: meta.size,
        };
        ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| {
                self.err(format!(
                    "cannot read parquet file {}: {e}",
                    self.display(path)
                ))
            })
    }

    /// Reads one logged file into batches of exactly `schema`.
    async fn read(&self, file: &SeenFile, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        let path = Path::parse(&file.path).map_err(|e| {
            self.err(format!(
                "invalid path {} in the files-seen log: {e}",
                file.path
            ))
        })?;
        if self.format == FileFormat::Parquet {
            return self.read_parquet(&path, file.seq, schema).await;
        }
        let bytes = self.fetch(&path, Some(file.seq)).await?;
        self.check_size(&path, file, &bytes);
        // Decoding text is CPU-bound: keep it off the async worker threads
        // (which also lets the files of one batch decode in parallel).
        let this = self.clone();
        let schema = Arc::clone(schema);
        let name = self.display(&path);
        tokio::task::spawn_blocking(move || match this.format {
            FileFormat::Csv => this.read_csv(&path, &bytes, &schema),
            _ => this.read_json(&path, &bytes, &schema),
        })
        .await
        .map_err(|e| self.err(format!("decoding {name} failed: {e}")))?
    }

    fn check_size(&self, path: &Path, file: &SeenFile, bytes: &Bytes) {
        if bytes.len() as u64 != file.size {
            tracing::warn!(
                source = %self.description,
                file = %self.display(path),
                logged = file.size,
                now = bytes.len(),
                "file changed size after it was logged; files must not change once visible"
            );
        }
    }

    async fn read_parquet(
        &self,
        path: &Path,
        seq: u64,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        let name = self.display(path);
        let builder = self.parquet_builder(path, Some(seq)).await?;
        let file_schema = Arc::clone(builder.schema());
        // Check the whole file schema up front, so even an empty file with the
        // wrong columns is reported.
        let mut roots = Vec::new();
        for field in schema.fields() {
            match file_schema.index_of(field.name()) {
                Ok(i) => {
                    let actual = file_schema.field(i).data_type();
                    if !actual.equals_datatype(field.data_type()) {
                        return Err(self.misfit(
                            &name,
                            None,
                            Misfit::Type {
                                column: field.name().clone(),
                                actual: actual.clone(),
                                expected: field.data_type().clone(),
                            },
                        ));
                    }
                    roots.push(i);
                }
                Err(_) if field.is_nullable() => {}
                Err(_) => {
                    return Err(self.misfit(&name, None, Misfit::Missing(field.name().clone())));
                }
            }
        }
        roots.sort_unstable();
        roots.dedup();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let mut stream = builder
            .with_projection(mask)
            .with_batch_size(BATCH_SIZE)
            .build()
            .map_err(|e| self.err(format!("cannot read parquet file {name}: {e}")))?;
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch =
                batch.map_err(|e| self.err(format!("cannot read parquet file {name}: {e}")))?;
            let conformed = conform(&batch, schema).map_err(|m| self.misfit(&name, None, m))?;
            out.push(conformed);
        }
        Ok(out)
    }

    /// The CSV reader for a file: the schema the file is decoded with (all
    /// of its columns, nullable) and the projection onto the columns the
    /// source schema wants.
    fn csv_layout(
        &self,
        name: &str,
        bytes: &[u8],
        schema: &SchemaRef,
    ) -> Result<(SchemaRef, Option<Vec<usize>>)> {
        let relaxed = |f: &Field| f.clone().with_nullable(true);
        if !self.has_header {
            let fields: Vec<Field> = schema.fields().iter().map(|f| relaxed(f)).collect();
            return Ok((Arc::new(Schema::new(fields)), None));
        }
        let (header, _) = self
            .csv_format()
            .infer_schema(Cursor::new(bytes), Some(0))
            .map_err(|e| self.err(format!("{name}, line 1: cannot read the CSV header: {e}")))?;
        let mut fields = Vec::with_capacity(header.fields().len());
        let mut projection = Vec::new();
        for (i, column) in header.fields().iter().enumerate() {
            match schema.field_with_name(column.name()) {
                Ok(wanted)
                    if !projection
                        .iter()
                        .any(|&p: &usize| header.field(p).name() == column.name()) =>
                {
                    fields.push(relaxed(wanted));
                    projection.push(i);
                }
                _ => fields.push(Field::new(column.name(), DataType::Utf8, true)),
            }
        }
        Ok((Arc::new(Schema::new(fields)), Some(projection)))
    }

    fn csv_builder(
        &self,
        decode_schema: &SchemaRef,
        projection: &Option<Vec<usize>>,
    ) -> arrow::csv::ReaderBuilder {
        let builder = arrow::csv::ReaderBuilder::new(Arc::clone(decode_schema))
            .with_header(self.has_header)
            .with_delimiter(self.delimiter)
            .with_batch_size(BATCH_SIZE);
        match projection {
            Some(p) => builder.with_projection(p.clone()),
            None => builder,
        }
    }

    fn read_csv(&self, path: &Path, bytes: &Bytes, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        let name = self.display(path);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        let (decode_schema, projection) = self.csv_layout(&name, bytes, schema)?;
        // Columns the source schema requires that the header lacks.
        if self.has_header {
            for field in schema.fields() {
                if decode_schema.field_with_name(field.name()).is_err() && !field.is_nullable() {
                    return Err(self.misfit(&name, None, Misfit::Missing(field.name().clone())));
                }
            }
        }
        let reader = self
            .csv_builder(&decode_schema, &projection)
            .build(Cursor::new(&bytes[..]))
            .map_err(|e| self.err(format!("cannot read CSV file {name}: {e}")))?;
        let mut out = Vec::new();
        let mut rows_before = 0;
        for batch in reader {
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => return Err(self.csv_error(&name, bytes, &decode_schema, &projection, e)),
            };
            match conform(&batch, schema) {
                Ok(conformed) => {
                    rows_before += batch.num_rows();
                    out.push(conformed);
                }
                Err(misfit) => {
                    let line = match &misfit {
                        Misfit::Null { row, .. } => {
                            match csv_walk(
                                bytes,
                                self.csv_builder(&decode_schema, &projection),
                                self.has_header,
                                Some(rows_before + row),
                            ) {
                                Walk::Row(offset) => Some(line_at(bytes, offset)),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    return Err(self.misfit(&name, line, misfit));
                }
            }
        }
        Ok(out)
    }

    /// The error for a CSV file arrow could not decode, with the line of the
    /// first bad record (found by decoding the file again record by record).
    fn csv_error(
        &self,
        name: &str,
        bytes: &[u8],
        decode_schema: &SchemaRef,
        projection: &Option<Vec<usize>>,
        original: ArrowError,
    ) -> TidemillError {
        match csv_walk(
            bytes,
            self.csv_builder(decode_schema, projection),
            self.has_header,
            None,
        ) {
            Walk::Error(offset, e) => self.err(format!(
                "{name}, line {}: {}",
                line_at(bytes, offset),
                name_csv_column(&strip_arrow_line(&e), decode_schema)
            )),
            _ => self.err(format!("{name}: {original}")),
        }
    }

    fn read_json(
        &self,
        path: &Path,
        bytes: &Bytes,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        let name = self.display(path);
        // Decode with top-level columns nullable, so a missing required
        // column is reported by name (and line) rather than by arrow.
        let decode_schema: SchemaRef = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let builder = || {
            arrow::json::ReaderBuilder::new(Arc::clone(&decode_schema)).with_batch_size(BATCH_SIZE)
        };
        let reader = builder()
            .build(Cursor::new(&bytes[..]))
            .map_err(|e| self.err(format!("cannot read JSON file {name}: {e}")))?;
        let mut out = Vec::new();
        let mut rows_before = 0;
        for batch in reader {
            let batch = match batch {
                Ok(batch) => batch,
                Err(original) => {
                    return Err(match json_walk(bytes, &decode_schema, None) {
                        Walk::Error(offset, message) => self.err(format!(
                            "{name}, line {}: {message}",
                            line_at(bytes, offset)
                        )),
                        _ => self.err(format!("{name}: {original}")),
                    });
                }
            };
            match conform(&batch, schema) {
                Ok(conformed) => {
                    rows_before += batch.num_rows();
                    out.push(conformed);
                }
                Err(misfit) => {
                    let line = match &misfit {
                        Misfit::Null { row, .. } => {
                            match json_walk(bytes, &decode_schema, Some(rows_before + row)) {
                                Walk::Row(offset) => Some(line_at(bytes, offset)),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    return Err(self.misfit(&name, line, misfit));
                }
            }
        }
        Ok(out)
    }

    fn misfit(&self, name: &str, line: Option<usize>, misfit: Misfit) -> TidemillError {
        let at = match line {
            Some(line) => format!("{name}, line {line}"),
            None => name.to_string(),
        };
        self.err(match misfit {
            Misfit::Missing(column) => {
                format!("{at}: column '{column}' is missing, and the source schema says it is not nullable")
            }
            Misfit::Type {
                column,
                actual,
                expected,
            } => format!("{at}: column '{column}' has type {actual}, but the source schema expects {expected}"),
            Misfit::Null { column, .. } => {
                format!("{at}: column '{column}' is missing or null, but the source schema says it is not nullable")
            }
            Misfit::Other(message) => format!("{at}: does not match the source schema: {message}"),
        })
    }
}

/// Shapes `batch` into exactly `schema`: columns by name, in schema order;
/// a missing nullable column becomes nulls.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> std::result::Result<RecordBatch, Misfit> {
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match batch.schema().index_of(field.name()) {
            Ok(i) => {
                let column = Arc::clone(batch.column(i));
                if column.data_type() == field.data_type() {
                    column
                } else if column.data_type().equals_datatype(field.data_type()) {
                    arrow::compute::cast(&column, field.data_type()).map_err(|_| Misfit::Type {
                        column: field.name().clone(),
                        actual: column.data_type().clone(),
                        expected: field.data_type().clone(),
                    })?
                } else {
                    return Err(Misfit::Type {
                        column: field.name().clone(),
                        actual: column.data_type().clone(),
                        expected: field.data_type().clone(),
                    });
                }
            }
            Err(_) if field.is_nullable() => new_null_array(field.data_type(), rows),
            Err(_) => return Err(Misfit::Missing(field.name().clone())),
        };
        if !field.is_nullable() && column.null_count() > 0 {
            let row = (0..rows).find(|&r| column.is_null(r)).unwrap_or(0);
            return Err(Misfit::Null {
                column: field.name().clone(),
                row,
            });
        }
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
        .map_err(|e| Misfit::Other(e.to_string()))
}

/// Where a record-by-record walk over a file stopped.
enum Walk {
    /// The requested row starts at this byte offset.
    Row(usize),
    /// The record starting at this byte offset failed to decode.
    Error(usize, String),
    /// The end of the file, without error or requested row.
    End,
}

/// The 1-based line of the record starting at byte `offset` (skipping the
/// line breaks that precede it).
fn line_at(bytes: &[u8], offset: usize) -> usize {
    let mut start = offset.min(bytes.len());
    while start < bytes.len() && bytes[start].is_ascii_whitespace() {
        start += 1;
    }
    if start == bytes.len() {
        start = offset.min(bytes.len());
    }
    1 + bytes[..start].iter().filter(|&&b| b == b'\n').count()
}

/// Decodes a CSV file one record at a time (error path only) to find the
/// byte offset of data row `stop_at` or of the first record that fails.
fn csv_walk(
    bytes: &[u8],
    builder: arrow::csv::ReaderBuilder,
    has_header: bool,
    stop_at: Option<usize>,
) -> Walk {
    let mut decoder = builder.with_batch_size(1).build_decoder();
    // The first decode call of a file with a header only skips the header.
    let mut header_pending = has_header;
    let mut pos = 0;
    let mut record_start = 0;
    let mut row = 0;
    loop {
        if !header_pending && stop_at == Some(row) {
            return Walk::Row(record_start);
        }
        let consumed = match decoder.decode(&bytes[pos..]) {
            Ok(n) => n,
            Err(e) => return Walk::Error(record_start, e.to_string()),
        };
        pos += consumed;
        if header_pending {
            header_pending = false;
            record_start = pos;
            if consumed == 0 {
                return Walk::End;
            }
            continue;
        }
        if decoder.capacity() == 0 {
            // One whole record is buffered: parsing it may fail.
            if let Err(e) = decoder.flush() {
                return Walk::Error(record_start, e.to_string());
            }
            row += 1;
            record_start = pos;
            continue;
        }
        if consumed == 0 {
            return match decoder.flush() {
                Err(e) => Walk::Error(record_start, e.to_string()),
                Ok(_) => Walk::End,
            };
        }
        // Otherwise the input ended inside a record that has no final line
        // break: the next (empty) decode call completes it.
    }
}

/// Walks a JSON-lines file value by value (error path only): the byte
/// offset of row `stop_at`, or of the first value that is not valid JSON or
/// does not decode to the schema.
fn json_walk(bytes: &[u8], schema: &SchemaRef, stop_at: Option<usize>) -> Walk {
    let mut decoder = match arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(1)
        .build_decoder()
    {
        Ok(decoder) => decoder,
        Err(_) => return Walk::End,
    };
    let mut stream =
        serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    let mut row = 0;
    loop {
        // Skip the whitespace between values.
        while start < bytes.len() && bytes[start].is_ascii_whitespace() {
            start += 1;
        }
        if stop_at == Some(row) {
            return Walk::Row(start);
        }
        match stream.next() {
            None => return Walk::End,
            Some(Err(e)) => {
                // Report the line the bad value starts on (a JSON-lines
                // record); serde's column only where it is on that line.
                let message = if e.line() == line_at(bytes, start) {
                    format!(
                        "invalid JSON at column {}: {}",
                        e.column(),
                        strip_serde_position(&e)
                    )
                } else {
                    format!("invalid JSON: {}", strip_serde_position(&e))
                };
                return Walk::Error(start, message);
            }
            Some(Ok(_)) => {
                let end = stream.byte_offset();
                let result = decoder
                    .decode(&bytes[start..end])
                    .and_then(|_| decoder.flush());
                if let Err(e) = result {
                    return Walk::Error(start, e.to_string());
                }
                start = end;
                row += 1;
            }
        }
    }
}

/// serde_json's message without its " at line L column C" suffix.
fn strip_serde_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    }
}

/// Arrow's CSV message without its own (record-counting) line number.
fn strip_arrow_line(message: &str) -> String {
    let mut out = message.to_string();
    for marker in [" for line ", " at line "] {
        if let Some(i) = out.find(marker) {
            let rest = &out[i + marker.len()..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            out = format!("{}{}", &out[..i], &rest[digits..]);
        }
    }
    out
}

/// Arrow's CSV parse message names a column by index; name it by name.
fn name_csv_column(message: &str, decode_schema: &SchemaRef) -> String {
    let marker = " for column ";
    let Some(i) = message.find(marker) else {
        return message.to_string();
    };
    let rest = &message[i + marker.len()..];
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    match rest[..digits].parse::<usize>() {
        Ok(index) if index < decode_schema.fields().len() => format!(
            "{}{marker}'{}'{}",
            &message[..i],
            decode_schema.field(index).name(),
            &rest[digits..]
        ),
        _ => message.to_string(),
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
    /// After `prepare_for_available_now`: the log length not to go past.
    available_now_cap: Option<u64>,
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

    /// Lists the directory and logs the files not seen before.
    async fn discover(&mut self) -> Result<()> {
        let listed = list_visible(&self.location)
            .await
            .map_err(|e| self.err(format!("cannot list {}: {e}", self.location.url())))?;
        let mut new: Vec<ObjectMeta> = listed
            .into_iter()
            .filter(|meta| !self.log.contains(meta.location.as_ref()))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        sort_files(&mut new);
        self.log.add(new, &self.description).await
    }
}

#[async_trait]
impl Source for FileStream {
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
        let available = self
            .log
            .len()
            .min(self.available_now_cap.unwrap_or(u64::MAX));
        let end = wanted.map_or(available, |w| w.min(available)).max(from);
        if end == from {
            return Ok(start.cloned());
        }
        Ok(Some(Offset::from_u64(end)))
    }

    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let from = self.parse_offset(start)?;
        let to = self.parse_offset(Some(end))?;
        if to < from {
            return Err(self.err(format!(
                "invalid range: end offset {to} is before start offset {from}"
            )));
        }
        let files = self.log.files[from as usize..to as usize].to_vec();
        let per_file: Vec<Vec<RecordBatch>> = futures::stream::iter(files)
            .map(|file| {
                let reader = self.reader.clone();
                let schema = Arc::clone(&self.schema);
                async move { reader.read(&file, &schema).await }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(per_file.into_iter().flatten().collect())
    }

    async fn prepare_for_available_now(&mut self) -> Result<()> {
        self.discover().await?;
        self.available_now_cap = Some(self.log.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::Int64Type;
    use datafusion::execution::object_store::ObjectStoreUrl;
    use object_store::PutPayload;
    use std::path::Path as FsPath;

    /// A session, and a checkpoint directory for the source under `chk`.
    fn checkpoint(session: &SessionContext, chk: &FsPath) -> CheckpointDir {
        Location::resolve(chk.to_str().unwrap(), &session.runtime_env())
            .unwrap()
            .dir()
            .child("sources")
            .child("0")
    }

    async fn open(
        source: &FileSource,
        session: &SessionContext,
        chk: CheckpointDir,
    ) -> Box<dyn Source> {
        let schema = SourceProvider::schema(source, session).await.unwrap();
        source
            .open(SourceContext {
                session: session.clone(),
                schema,
                checkpoint: chk,
            })
            .await
            .unwrap()
    }

    /// Writes a file the way writers must: under a hidden name, then renamed.
    fn write(dir: &FsPath, name: &str, content: &[u8]) {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    fn json_rows(ids: std::ops::Range<i64>) -> Vec<u8> {
        ids.map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let col = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
                col.iter().map(|v| v.unwrap()).collect::<Vec<_>>()
            })
            .collect()
    }

    fn off(n: u64) -> Offset {
        Offset::from_u64(n)
    }

    fn id_name_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    async fn read_err(source: &FileSource, session: &SessionContext, chk: CheckpointDir) -> String {
        let mut s = open(source, session, chk).await;
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        s.read(None, &end).await.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn discovers_new_files_across_calls() {
        let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let session = SessionContext::new();
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        assert_eq!(s.default_read_limit(), ReadLimit::All);

        // Nothing yet: no offset at all.
        assert_eq!(s.latest_offset(None, ReadLimit::All).await.unwrap(), None);

        write(data.path(), "a.json", &json_rows(0..3));
        write(data.path(), "b.json", &json_rows(3..5));
        let first = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, off(2));
        let batches = s.read(None, &first).await.unwrap();
        assert_eq!(ids(&batches), vec![0, 1, 2, 3, 4]);
        assert!(batches.iter().all(|b| b.schema() == id_name_schema()));

        // Unchanged directory: the same offset comes back.
        assert_eq!(
            s.latest_offset(Some(&first), ReadLimit::All).await.unwrap(),
            Some(off(2))
        );

        write(data.path(), "c.json", &json_rows(5..7));
        let second = s
            .latest_offset(Some(&first), ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second, off(3));
        assert_eq!(
            ids(&s.read(Some(&first), &second).await.unwrap()),
            vec![5, 6]
        );
        // An empty range yields no rows.
        assert!(s.read(Some(&second), &second).await.unwrap().is_empty());
        // Ranges beyond the log are refused.
        let err = s.read(None, &off(9)).await.unwrap_err().to_string();
        assert!(err.contains("beyond"), "{err}");

        // Files in sub-directories are found too.
        std::fs::create_dir(data.path().join("day=2")).unwrap();
        write(&data.path().join("day=2"), "d.json", &json_rows(7..8));
        let third = s
            .latest_offset(Some(&second), ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids(&s.read(Some(&second), &third).await.unwrap()), vec![7]);
    }

    #[tokio::test]
    async fn max_files_per_trigger_bounds_offsets() {
        let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for i in 0..5 {
            write(
                data.path(),
                &format!("f{i}.json"),
                &json_rows(i * 10..i * 10 + 2),
            );
        }
        let session = SessionContext::new();
        let source = FileSource::json(data.path().to_str().unwrap())
            .schema(id_name_schema())
            .max_files_per_trigger(2);
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let limit = s.default_read_limit();
        assert_eq!(limit, ReadLimit::MaxFiles(2));

        let mut start: Option<Offset> = None;
        let mut seen = Vec::new();
        for expected in [2, 4, 5] {
            let end = s
                .latest_offset(start.as_ref(), limit)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(end, off(expected));
            seen.extend(ids(&s.read(start.as_ref(), &end).await.unwrap()));
            start = Some(end);
        }
        assert_eq!(
            s.latest_offset(start.as_ref(), limit).await.unwrap(),
            Some(off(5))
        );
        assert_eq!(seen, vec![0, 1, 10, 11, 20, 21, 30, 31, 40, 41]);

        let err = FileSource::json("x")
            .schema(id_name_schema())
            .max_files_per_trigger(0)
            .open(SourceContext {
                session: session.clone(),
                schema: id_name_schema(),
                checkpoint: checkpoint(&session, chk.path()),
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[tokio::test]
    async fn restart_continues_without_rereading_or_skipping() {
        let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let session = SessionContext::new();
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        write(data.path(), "a.json", &json_rows(0..2));
        write(data.path(), "b.json", &json_rows(2..4));
        write(data.path(), "c.json", &json_rows(4..6));

        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        // Admit one file; the other two are logged but not yet read.
        let first = s
            .latest_offset(None, ReadLimit::MaxFiles(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, off(1));
        let first_rows = s.read(None, &first).await.unwrap();
        assert_eq!(ids(&first_rows), vec![0, 1]);
        drop(s);

        // Touch an already logged file (new mtime, same name) and add a new one.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(data.path().join("a.json"), json_rows(0..2)).unwrap();
        write(data.path(), "d.json", &json_rows(6..8));

        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        // Replaying the old range gives identical rows.
        assert_eq!(s.read(None, &first).await.unwrap(), first_rows);
        let end = s
            .latest_offset(Some(&first), ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, off(4));
        assert_eq!(
            ids(&s.read(Some(&first), &end).await.unwrap()),
            vec![2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            s.latest_offset(Some(&end), ReadLimit::All).await.unwrap(),
            Some(off(4))
        );

        // The log is on disk, one numbered file per append.
        let mut names = checkpoint(&session, chk.path())
            .child("seen")
            .list_names()
            .await
            .unwrap();
        names.sort();
        assert_eq!(names, vec!["0".to_string(), "3".to_string()]);

        // The same checkpoint cannot be reused for another directory.
        let other = tempfile::tempdir().unwrap();
        let err = FileSource::json(other.path().to_str().unwrap())
            .schema(id_name_schema())
            .open(SourceContext {
                session: session.clone(),
                schema: id_name_schema(),
                checkpoint: checkpoint(&session, chk.path()),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, TidemillError::CheckpointMismatch { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn hidden_files_are_ignored_until_renamed() {
        let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let session = SessionContext::new();
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;

        std::fs::write(data.path().join(".part-0.json"), json_rows(0..2)).unwrap();
        std::fs::write(data.path().join("_part-1.json"), json_rows(2..4)).unwrap();
        std::fs::create_dir_all(data.path().join("_tidemill_sink")).unwrap();
        std::fs::write(data.path().join("_tidemill_sink/manifest.json"), b"{}").unwrap();
        std::fs::create_dir_all(data.path().join(".staging")).unwrap();
        std::fs::write(data.path().join(".staging/x.json"), json_rows(9..10)).unwrap();
        assert_eq!(s.latest_offset(None, ReadLimit::All).await.unwrap(), None);

        std::fs::rename(
            data.path().join(".part-0.json"),
            data.path().join("part-0.json"),
        )
        .unwrap();
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, off(1));
        assert_eq!(ids(&s.read(None, &end).await.unwrap()), vec![0, 1]);

        std::fs::rename(
            data.path().join("_part-1.json"),
            data.path().join("part-1.json"),
        )
        .unwrap();
        let end2 = s
            .latest_offset(Some(&end), ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids(&s.read(Some(&end), &end2).await.unwrap()), vec![2, 3]);
    }

    #[tokio::test]
    async fn json_schema_explicit_and_inferred() {
        let data = tempfile::tempdir().unwrap();
        write(
            data.path(),
            "a.json",
            b"{\"id\": 1, \"name\": \"x\", \"score\": 1.5}\n{\"id\": 2, \"score\": 2}\n",
        );
        let session = SessionContext::new();

        let inferred =
            SourceProvider::schema(&FileSource::json(data.path().to_str().unwrap()), &session)
                .await
                .unwrap();
        let expected = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ]);
        assert_eq!(inferred.as_ref(), &expected);

        let chk = tempfile::tempdir().unwrap();
        let source = FileSource::json(data.path().to_str().unwrap());
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        let batch = &s.read(None, &end).await.unwrap()[0];
        assert_eq!(batch.schema(), inferred);
        let names = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(names.value(0), "x");
        assert!(names.is_null(1));

        // An explicit schema picks and orders columns by name; a nullable
        // column the file lacks is all nulls.
        let explicit = Arc::new(Schema::new(vec![
            Field::new("score", DataType::Float64, true),
            Field::new("id", DataType::Int64, false),
            Field::new("extra", DataType::Utf8, true),
        ]));
        let source = FileSource::json(data.path().to_str().unwrap()).schema(Arc::clone(&explicit));
        assert_eq!(
            SourceProvider::schema(&source, &session).await.unwrap(),
            explicit
        );
        let chk = tempfile::tempdir().unwrap();
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        let batch = &s.read(None, &end).await.unwrap()[0];
        assert_eq!(batch.schema(), explicit);
        let scores = batch
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(scores.values().to_vec(), vec![1.5, 2.0]);
        assert_eq!(batch.column(2).null_count(), 2);
    }

    #[tokio::test]
    async fn csv_schema_explicit_and_inferred() {
        let data = tempfile::tempdir().unwrap();
        write(
            data.path(),
            "a.csv",
            b"id,name,price\n1,apple,0.5\n2,pear,1\n",
        );
        write(data.path(), "b.csv", b"name,id,price\nplum,3,2\n");
        let session = SessionContext::new();
        let inferred =
            SourceProvider::schema(&FileSource::csv(data.path().to_str().unwrap()), &session)
                .await
                .unwrap();
        let expected = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("price", DataType::Float64, true),
        ]);
        assert_eq!(inferred.as_ref(), &expected);

        let chk = tempfile::tempdir().unwrap();
        let source = FileSource::csv(data.path().to_str().unwrap());
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        let batches = s.read(None, &end).await.unwrap();
        // Columns are matched by header name, so b.csv's order does not matter.
        assert_eq!(ids(&batches), vec![1, 2, 3]);
        assert!(batches.iter().all(|b| b.schema() == inferred));

        // Explicit schema, no header, another delimiter: columns by position.
        let plain = tempfile::tempdir().unwrap();
        write(plain.path(), "x.csv", b"7;seven\n8;eight\n");
        let explicit = id_name_schema();
        let source = FileSource::csv(plain.path().to_str().unwrap())
            .has_header(false)
            .delimiter(b';')
            .schema(Arc::clone(&explicit));
        let chk = tempfile::tempdir().unwrap();
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        let batches = s.read(None, &end).await.unwrap();
        assert_eq!(ids(&batches), vec![7, 8]);
        assert_eq!(batches[0].schema(), explicit);
        assert_eq!(batches[0].column(1).as_string::<i32>().value(1), "eight");

        // Inferred without a header: column_1, column_2.
        let headerless = FileSource::csv(plain.path().to_str().unwrap())
            .has_header(false)
            .delimiter(b';');
        let inferred = SourceProvider::schema(&headerless, &session).await.unwrap();
        assert_eq!(inferred.field(0).name(), "column_1");
        assert_eq!(inferred.field(0).data_type(), &DataType::Int64);
    }

    fn write_parquet(dir: &FsPath, name: &str, batch: &RecordBatch) {
        let tmp = dir.join(format!("_{name}"));
        let file = std::fs::File::create(&tmp).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    #[tokio::test]
    async fn parquet_schema_explicit_inferred_and_mismatch() {
        let data = tempfile::tempdir().unwrap();
        let file_schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("extra", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&file_schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Float64Array::from(vec![0.5, 1.5])),
            ],
        )
        .unwrap();
        write_parquet(data.path(), "p1.parquet", &batch);
        let session = SessionContext::new();

        // Inferred: from the footer, nullability included.
        let inferred = SourceProvider::schema(
            &FileSource::parquet(data.path().to_str().unwrap()),
            &session,
        )
        .await
        .unwrap();
        assert_eq!(inferred, file_schema);
        let chk = tempfile::tempdir().unwrap();
        let source = FileSource::parquet(data.path().to_str().unwrap());
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.read(None, &end).await.unwrap(), vec![batch.clone()]);

        // Explicit: a subset, reordered.
        let explicit = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("id", DataType::Int64, false),
        ]));
        let chk = tempfile::tempdir().unwrap();
        let source =
            FileSource::parquet(data.path().to_str().unwrap()).schema(Arc::clone(&explicit));
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        let batches = s.read(None, &end).await.unwrap();
        assert_eq!(batches[0].schema(), explicit);
        assert_eq!(ids(&batches), vec![1, 2]);

        // Wrong type for a column.
        let wrong = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let chk = tempfile::tempdir().unwrap();
        let source = FileSource::parquet(data.path().to_str().unwrap()).schema(wrong);
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(
            err.contains("p1.parquet") && err.contains("'id'") && err.contains("Utf8"),
            "{err}"
        );

        // A required column the file lacks.
        let missing = Arc::new(Schema::new(vec![Field::new("qty", DataType::Int64, false)]));
        let chk = tempfile::tempdir().unwrap();
        let source = FileSource::parquet(data.path().to_str().unwrap()).schema(missing);
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(
            err.contains("p1.parquet") && err.contains("'qty'") && err.contains("missing"),
            "{err}"
        );

        // Not a parquet file at all.
        write(data.path(), "junk.parquet", b"not parquet");
        let chk = tempfile::tempdir().unwrap();
        let source =
            FileSource::parquet(data.path().to_str().unwrap()).schema(Arc::clone(&file_schema));
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(err.contains("junk.parquet"), "{err}");
    }

    #[tokio::test]
    async fn bad_json_line_names_file_and_line() {
        let data = tempfile::tempdir().unwrap();
        write(
            data.path(),
            "bad.json",
            b"{\"id\": 1, \"name\": \"a\"}\n{\"id\": 2, \"name\": \"b\"}\n{\"id\": 3, \"name\": \"c\"\n{\"id\": 4}\n",
        );
        let session = SessionContext::new();
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(err.contains("bad.json, line 3: invalid JSON"), "{err}");

        // A value of the wrong type.
        let data = tempfile::tempdir().unwrap();
        write(
            data.path(),
            "typed.json",
            b"{\"id\": 1}\n\n{\"id\": \"two\"}\n",
        );
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(err.contains("typed.json, line 3"), "{err}");

        // A required column missing on one line.
        let data = tempfile::tempdir().unwrap();
        write(
            data.path(),
            "gap.json",
            b"{\"id\": 1}\n{\"name\": \"no id\"}\n",
        );
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(
            err.contains("gap.json, line 2") && err.contains("'id'"),
            "{err}"
        );

        // Inference over a bad file names it too.
        let data = tempfile::tempdir().unwrap();
        write(data.path(), "worse.json", b"{\"id\": 1}\n{oops}\n");
        let err =
            SourceProvider::schema(&FileSource::json(data.path().to_str().unwrap()), &session)
                .await
                .unwrap_err()
                .to_string();
        assert!(err.contains("worse.json, line 2"), "{err}");
    }

    #[tokio::test]
    async fn bad_csv_row_names_file_and_line() {
        let data = tempfile::tempdir().unwrap();
        write(data.path(), "bad.csv", b"id,name\n1,a\n2,b,extra\n3,c\n");
        let session = SessionContext::new();
        let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(
            err.contains("bad.csv, line 3") && err.contains("number of fields"),
            "{err}"
        );

        // Too few fields, a quoted multi-line field before it.
        let data = tempfile::tempdir().unwrap();
        write(data.path(), "short.csv", b"id,name\n1,\"two\nlines\"\n2\n");
        let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(err.contains("short.csv, line 4"), "{err}");

        // A value that does not parse as the column's type.
        let data = tempfile::tempdir().unwrap();
        write(data.path(), "typed.csv", b"id,name\n1,a\n2,b\nthree,c\n");
        let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(
            err.contains("typed.csv, line 4") && err.contains("three"),
            "{err}"
        );

        // A required value left empty.
        let data = tempfile::tempdir().unwrap();
        write(data.path(), "empty.csv", b"id,name\n1,a\n,b\n");
        let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(
            err.contains("empty.csv, line 3") && err.contains("'id'"),
            "{err}"
        );

        // A header without a required column.
        let data = tempfile::tempdir().unwrap();
        write(data.path(), "noid.csv", b"name\na\n");
        let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(
            err.contains("noid.csv") && err.contains("'id'") && err.contains("missing"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn error_lines_are_right_beyond_the_first_batch() {
        let session = SessionContext::new();
        // JSON: 10 000 good lines (two arrow batches), then a line without
        // the required id; CRLF line ends.
        let data = tempfile::tempdir().unwrap();
        let mut json: String = (0..10_000)
            .map(|i| format!("{{\"id\": {i}}}\r\n"))
            .collect();
        json.push_str("{\"name\": \"x\"}\r\n");
        write(data.path(), "long.json", json.as_bytes());
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(
            err.contains("long.json, line 10001") && err.contains("'id'"),
            "{err}"
        );

        // CSV: the bad value is on the last line, which has no line break.
        let data = tempfile::tempdir().unwrap();
        let mut csv: String = "id,name\n".into();
        csv.extend((0..9_000).map(|i| format!("{i},n{i}\n")));
        csv.push_str("x9000,last");
        write(data.path(), "long.csv", csv.as_bytes());
        let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        assert!(
            err.contains("long.csv, line 9002") && err.contains("x9000"),
            "{err}"
        );

        // And the good rows of a long file come in batches of the schema.
        let data = tempfile::tempdir().unwrap();
        write(data.path(), "ok.json", &json_rows(0..20_000));
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        let chk = tempfile::tempdir().unwrap();
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        let batches = s.read(None, &end).await.unwrap();
        assert!(batches.len() > 1 && batches.iter().all(|b| b.num_rows() <= 8192));
        assert_eq!(ids(&batches), (0..20_000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn vanished_file_is_an_error() {
        let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(data.path(), "gone.json", &json_rows(0..1));
        let session = SessionContext::new();
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        std::fs::remove_file(data.path().join("gone.json")).unwrap();
        let err = s.read(None, &end).await.unwrap_err().to_string();
        assert!(
            err.contains("gone.json") && err.contains("no longer exists"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn no_files_and_no_schema_is_a_clear_error() {
        let data = tempfile::tempdir().unwrap();
        let session = SessionContext::new();
        let err = SourceProvider::schema(&FileSource::csv(data.path().to_str().unwrap()), &session)
            .await
            .unwrap_err()
            .to_string();
        let dir = data.path().to_str().unwrap();
        assert!(err.contains(dir) && err.contains(".schema(...)"), "{err}");
    }

    #[tokio::test]
    async fn available_now_caps_at_files_known_when_prepared() {
        let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(data.path(), "a.json", &json_rows(0..1));
        write(data.path(), "b.json", &json_rows(1..2));
        let session = SessionContext::new();
        let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        s.prepare_for_available_now().await.unwrap();
        write(data.path(), "c.json", &json_rows(2..3));

        let first = s
            .latest_offset(None, ReadLimit::MaxFiles(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, off(1));
        let second = s
            .latest_offset(Some(&first), ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second, off(2));
        assert_eq!(
            s.latest_offset(Some(&second), ReadLimit::All)
                .await
                .unwrap(),
            Some(off(2))
        );
        assert_eq!(ids(&s.read(None, &second).await.unwrap()), vec![0, 1]);
    }

    #[tokio::test]
    async fn works_on_memory_store() {
        let session = SessionContext::new();
        // Resolving a memory:// location registers the session's in-memory
        // store; files written through the runtime's store are then visible.
        Location::resolve("memory:///", &session.runtime_env()).unwrap();
        let store = session
            .runtime_env()
            .object_store(ObjectStoreUrl::parse("memory://").unwrap())
            .unwrap();
        store
            .put(&Path::from("in/a.json"), PutPayload::from(json_rows(0..2)))
            .await
            .unwrap();
        store
            .put(
                &Path::from("in/_tmp/b.json"),
                PutPayload::from(json_rows(2..4)),
            )
            .await
            .unwrap();
        let source = FileSource::json("memory:///in");
        assert_eq!(source.description(), "FileSource[json: memory:///in]");
        let chk = Location::resolve("memory:///chk/sources/0", &session.runtime_env())
            .unwrap()
            .dir();
        let mut s = open(&source, &session, chk.clone()).await;
        assert_eq!(s.description(), "FileSource[json: memory:///in]");
        let first = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ids(&s.read(None, &first).await.unwrap()), vec![0, 1]);

        // "Rename" the hidden file into place.
        store
            .copy(&Path::from("in/_tmp/b.json"), &Path::from("in/b.json"))
            .await
            .unwrap();
        store.delete(&Path::from("in/_tmp/b.json")).await.unwrap();
        let second = s
            .latest_offset(Some(&first), ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ids(&s.read(Some(&first), &second).await.unwrap()),
            vec![2, 3]
        );

        // The files-seen log lives in the memory store too.
        let mut reopened = open(&source, &session, chk).await;
        assert_eq!(
            reopened
                .latest_offset(Some(&second), ReadLimit::All)
                .await
                .unwrap(),
            Some(second)
        );
    }

    #[test]
    fn description_names_format_and_absolute_url() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().to_str().unwrap();
        let expected = format!("FileSource[parquet: file://{dir}]");
        assert_eq!(FileSource::parquet(dir).description(), expected);
        assert_eq!(
            FileSource::parquet(format!("{dir}/")).description(),
            expected
        );
        assert_eq!(
            FileSource::parquet(format!("file://{dir}")).description(),
            expected
        );
    }
}
