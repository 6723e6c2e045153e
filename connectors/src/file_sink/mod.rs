//! Exactly-once file output (parquet, JSON lines or CSV, optionally
//! partitioned Hive-style) with a manifest of committed batches.
//!
//! See [`FileSink`] for the on-disk layout, which is a stable, documented
//! format: the manifest entries say exactly which files each batch wrote,
//! and only files listed in a manifest entry are part of the output.
//!
//! The modules: `partition` (which columns may partition, splitting a
//! batch's rows with arrow's sort and partition kernels, Hive's escaping of
//! directory names), `encode` (a data file in each format), `manifest` (the
//! entries and their two format versions), `read` (the committed output as
//! a DataFrame) and `connector` (`connector = 'files'` in pipelines).

mod connector;
mod encode;
mod manifest;
mod partition;
mod read;
#[cfg(test)]
mod tests;

pub(crate) use connector::FilesSinkConnector;
pub use manifest::{CsvLayout, ManifestEntry, ManifestFile};

use std::sync::{Arc, Mutex};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tidemill_engine::{
    Location, OutputMode, Result, Sink, SinkContext, StorageOptions, TidemillError,
};
use tidemill_state::StateError;

use crate::FileFormat;
use encode::Encoding;
use manifest::Manifest;

/// Writes each micro-batch as files (parquet, JSON lines or CSV), exactly
/// once, optionally partitioned into Hive-style `column=value/`
/// directories, and records the files of every committed batch in a
/// manifest (like Spark's `_spark_metadata`).
///
/// Only the [`Append`](OutputMode::Append) output mode is supported, as
/// with Spark's file sinks: a file, once committed, is never rewritten.
///
/// # Formats
///
/// - **parquet** (the default; [`FileSink::new`], [`FileSink::parquet`]):
///   snappy-compressed parquet files.
/// - **JSON** ([`FileSink::json`]): newline-delimited JSON, one object per
///   row, as Spark's JSON sink writes: a null field is left out of its
///   object; timestamps and dates are strings (`2024-01-01T10:00:00`).
/// - **CSV** ([`FileSink::csv`]): comma-separated, values quoted where they
///   need it, with a header line naming the columns unless
///   [`FileSink::has_header`] turns it off (Spark's `header` option, whose
///   default here is on). A null is an empty field, so in CSV a null and
///   an empty string read back alike (as null), as with Spark. Nested
///   columns (lists, structs, maps) cannot be written as CSV: the query is
///   refused when it starts.
///
/// Any of them reads back with DataFusion's or Spark's readers, or exactly
/// as committed with [`FileSink::read_committed`].
///
/// # Partitioning
///
/// With [`FileSink::partition_by`], each row goes to the directory of its
/// values of the partition columns, one level per column, in the order
/// given: `<dir>/day=2024-01-01/symbol=ABC/part-…`. As with Hive and Spark,
/// the partition columns are left out of the data files (their values are
/// in the directory names), characters such as `/`, `=`, `%`, `:`, `#` or
/// `?` in a value (or column name) are escaped as `%` and two hex digits
/// (`a/b` → `a%2Fb`), and a null or empty value is written
/// `__HIVE_DEFAULT_PARTITION__`. Timestamps are written as Spark writes
/// them (`2024-01-01 10:00:00`, with its offset for a timestamp with a
/// time zone). DataFusion (`table_partition_cols`) and Spark read such a
/// directory back with the partition columns (DataFusion, which does not
/// know Hive's null marker, reads a null as the text
/// `__HIVE_DEFAULT_PARTITION__`); [`FileSink::read_committed`] gives the
/// rows exactly as written, partition columns in their place.
///
/// A partition column must be a column of the query's output of an
/// integer, boolean, string, date, timestamp or decimal type, and at least
/// one column must be left for the data files: otherwise the query is
/// refused when it starts, with an error naming the column.
///
/// # Layout (format versions 1 and 2)
///
/// ```text
/// <dir>/part-<batch id, 5+ digits>-<uuid>.<ext>       data files (ext: parquet, json, csv)
/// <dir>/<col>=<value>/…/part-<batch id>-<uuid>.<ext>  data files, partitioned output
/// <dir>/_tidemill_sink/<batch id>                     manifest entries
/// ```
///
/// - A **data file** holds rows of one batch (and one partition) only. A
///   batch writes one file per partition (one file when unpartitioned), or
///   several when [`FileSink::max_rows_per_file`] is set; a batch with no
///   rows writes none. The batch id is zero-padded to at least five digits
///   (`part-00042-…`, `part-123456-…`).
/// - A **manifest entry** `_tidemill_sink/<N>` (`N` in plain decimal) is
///   the commit point of batch `N`: it is created atomically
///   (put-if-absent) after all of the batch's data files, in every
///   partition, are written. It is a Tidemill checkpoint file (see
///   [`tidemill_state::envelope`]): a header line `tidemill-sink-manifest
///   v1` (or `v2`), one line of JSON, and a CRC-32 trailer line. The JSON
///   body (a [`ManifestEntry`], as returned by
///   [`FileSink::committed_batches`]) looks like this:
///
///   ```json
///   {"batch_id":3,
///    "files":[{"name":"part-00003-5f0c….parquet","size_bytes":1834,"num_rows":120}],
///    "schema":{"fields":[…],"metadata":{}}}
///   ```
///
///   `batch_id` repeats the file's name; `files` lists the batch's data
///   files in the order written (empty for a batch with no rows), each with
///   its `name` relative to `<dir>`, its size in bytes and its row count;
///   `schema` is the batch's Arrow schema in `arrow-schema`'s serde JSON
///   form. Read an entry with `sed -n 2p <dir>/_tidemill_sink/3 | jq`.
///
///   Version 2 adds what unpartitioned parquet output does not need:
///   `format` (`"json"` or `"csv"`; absent: parquet), `csv`
///   (`{"header":true}` for CSV files), `partition_by` (the partition
///   columns, outermost first) and, per file, `partition_values` (its
///   partition's values as text before escaping, `null` for null), e.g.
///   `{"name":"sym=a%2Fb/part-00003-….json","size_bytes":80,"num_rows":2,
///   "partition_values":["a/b"]}`. The sink writes version 1 whenever the
///   entry fits it (unpartitioned parquet), so builds that read only
///   version 1 keep reading such output, and refuse the rest with a clear
///   error rather than misreading it.
///
/// **Only files listed in a manifest entry are output.** A process that
/// dies while writing batch `N` can leave `part-<N>-*` files behind (in
/// any partition) that no manifest lists; readers must ignore them, and
/// the sink deletes them when it writes batch `N` again. Read the output
/// with [`FileSink::read_committed`] (a plain read of the directory would
/// also pick up such leftovers), and inspect it with
/// [`FileSink::committed_batches`]. Keep one format and one partitioning
/// per directory: `read_committed` reads every committed file as written,
/// but other readers read a directory as one table.
///
/// # Exactly-once
///
/// [`Sink::add_batch`] with a batch id whose manifest entry exists returns
/// at once and writes nothing. Otherwise it deletes leftovers of an earlier
/// attempt of that batch, writes the data files, and creates the manifest
/// entry. Together with the engine's offset log this makes the output
/// exactly-once across crashes. As with Spark, batch ids are tied to the
/// query's checkpoint: starting a query with a *new* checkpoint on an
/// existing output directory would have its batches skipped as already
/// committed, so give a new checkpoint a new output directory.
///
/// # Example
///
/// ```
/// use datafusion::prelude::SessionContext;
/// use tidemill_connectors::FileSink;
///
/// # async fn example() -> tidemill_engine::Result<()> {
/// // Used as a query's sink: `...write_stream().sink(sink)...`
/// let sink = FileSink::parquet("out/hourly").max_rows_per_file(1_000_000);
/// // JSON lines in `day=…/symbol=…/` directories.
/// let by_day = FileSink::json("out/by_day").partition_by(["day", "symbol"]);
///
/// // Reading back exactly the committed output, as a batch DataFrame:
/// let ctx = SessionContext::new();
/// let hourly = FileSink::read_committed(&ctx, "out/hourly").await?;
/// hourly.show().await?;
/// # let _ = (sink, by_day);
/// # Ok(())
/// # }
/// ```
pub struct FileSink {
    /// The location as the user gave it.
    location: String,
    /// The location as a URL, for descriptions.
    display: String,
    /// The data files' format and layout.
    encoding: Encoding,
    /// The partition columns, outermost directory first.
    partition_by: Vec<String>,
    /// The most rows a data file holds, if limited.
    max_rows_per_file: Option<usize>,
    /// Settings of an `s3://` location's store.
    storage: StorageOptions,
    /// Set by `open`.
    state: Mutex<Option<OpenState>>,
}

/// The files sink under its first name: [`FileSink`], whose default format
/// is parquet (`ParquetSink::new(dir)` writes parquet files, as it always
/// has).
pub type ParquetSink = FileSink;

/// What the sink knows once opened.
#[derive(Debug, Clone)]
struct OpenState {
    location: Location,
    /// The highest batch id this instance has started writing, if any.
    /// Leftovers of earlier attempts can only exist for the first batch an
    /// instance writes (one re-run after a restart) or for a batch it tries
    /// again; for any other batch the (full) directory listing is skipped,
    /// so a batch's cost does not grow with the number of files written so
    /// far.
    highest_attempted: Option<u64>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("location", &self.display)
            .field("format", &self.encoding.format)
            .field("header", &self.encoding.header)
            .field("partition_by", &self.partition_by)
            .field("max_rows_per_file", &self.max_rows_per_file)
            .finish()
    }
}

impl FileSink {
    /// A sink writing parquet files to the directory `location`: a local
    /// path, a `file://` URL, or a URL of any object store registered in
    /// the query's session (such as `memory:///out`). The location is
    /// resolved when the query starts.
    pub fn new(location: impl Into<String>) -> Self {
        let location = location.into();
        let display = match ListingTableUrl::parse(&location) {
            Ok(url) => url.as_str().trim_end_matches('/').to_string(),
            Err(_) => location.clone(),
        };
        Self {
            location,
            display,
            encoding: Encoding {
                format: FileFormat::Parquet,
                header: true,
            },
            partition_by: Vec::new(),
            max_rows_per_file: None,
            storage: StorageOptions::default(),
            state: Mutex::new(None),
        }
    }

    /// Settings of the S3 store an `s3://bucket/path` location is written
    /// to, over the environment's `AWS_*` variables (see
    /// [`tidemill_engine::storage`]); none by default.
    pub fn storage_options(mut self, options: StorageOptions) -> Self {
        self.storage = options;
        self
    }

    /// A sink writing parquet files to `location` (the same as
    /// [`FileSink::new`]).
    pub fn parquet(location: impl Into<String>) -> Self {
        Self::new(location)
    }

    /// A sink writing newline-delimited JSON files to `location`.
    pub fn json(location: impl Into<String>) -> Self {
        Self::new(location).with_format(FileFormat::Json)
    }

    /// A sink writing CSV files, each with a header line, to `location`.
    pub fn csv(location: impl Into<String>) -> Self {
        Self::new(location).with_format(FileFormat::Csv)
    }

    /// Writes the data files in `format` (parquet by default).
    pub fn with_format(mut self, format: FileFormat) -> Self {
        self.encoding.format = format;
        self
    }

    /// CSV: whether each file starts with a line naming the columns
    /// (default `true`). Other formats ignore it.
    pub fn has_header(mut self, has_header: bool) -> Self {
        self.encoding.header = has_header;
        self
    }

    /// Partitions the output by the values of `columns`, Hive-style: one
    /// directory level `column=value` per column, outermost first (see
    /// [Partitioning](FileSink#partitioning)). No columns (the default):
    /// all files in the output directory.
    pub fn partition_by<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.partition_by = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Splits a batch (a partition of a batch, when partitioned) into files
    /// of at most `n` rows each (a value of 0 is taken as 1). By default
    /// it is written as one file.
    pub fn max_rows_per_file(mut self, n: usize) -> Self {
        self.max_rows_per_file = Some(n.max(1));
        self
    }

    /// The committed output in `location` as a batch [`DataFrame`]: exactly
    /// the rows of the files listed in the manifest, never files of an
    /// attempt that did not commit, each file read in the format it was
    /// written in, partition columns restored (in their place among the
    /// columns, with their types).
    ///
    /// The DataFrame's schema is that of the latest committed batch. Fails
    /// if `location` has no manifest entry at all (it is not the output of
    /// a `FileSink`, or no batch has committed yet).
    pub async fn read_committed(ctx: &SessionContext, location: &str) -> Result<DataFrame> {
        read::read_committed(ctx, location).await
    }

    /// The committed batches in `location`, by increasing batch id, with
    /// the files each wrote. Empty if nothing has been committed there.
    pub async fn committed_batches(
        ctx: &SessionContext,
        location: &str,
    ) -> Result<Vec<ManifestEntry>> {
        let resolved = Location::resolve(location, &ctx.runtime_env())?;
        read::read_manifest(&resolved).await
    }

    /// Refuses output of `schema` this sink cannot write, naming the
    /// column: a partition column that is not a column of `schema` or
    /// whose type cannot partition (see
    /// [Partitioning](FileSink#partitioning)), a partition column named
    /// twice, no column left for the data files, or a nested column in CSV
    /// output. Checked when the query starts.
    pub(crate) fn check_schema(&self, schema: &Schema) -> Result<()> {
        let indices = self.partition_indices(schema)?;
        if self.encoding.format == FileFormat::Csv {
            let nested = schema
                .fields()
                .iter()
                .enumerate()
                .find(|(i, f)| !indices.contains(i) && f.data_type().is_nested());
            if let Some((_, field)) = nested {
                return Err(TidemillError::sink(
                    self.description(),
                    format!(
                        "format 'csv' cannot hold column '{}' of type {}; write it as JSON or \
                         parquet, or select its parts as columns of their own",
                        field.name(),
                        field.data_type()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The positions of the partition columns in `schema`, checked.
    fn partition_indices(&self, schema: &Schema) -> Result<Vec<usize>> {
        partition::partition_indices(schema, &self.partition_by)
            .map_err(|e| TidemillError::sink(self.description(), e.to_string()))
    }

    /// The resolved location and whether leftovers of an earlier attempt of
    /// `batch_id` may exist; records `batch_id` as attempted.
    fn begin(&self, batch_id: u64) -> Result<(Location, bool)> {
        let mut guard = self
            .state
            .lock()
            .map_err(|_| TidemillError::sink(self.description(), "internal lock poisoned"))?;
        let Some(state) = guard.as_mut() else {
            return Err(TidemillError::sink(
                self.description(),
                format!("add_batch({batch_id}) called before open()"),
            ));
        };
        let may_have_leftovers = state.highest_attempted.is_none_or(|h| batch_id <= h);
        state.highest_attempted = Some(
            state
                .highest_attempted
                .map_or(batch_id, |h| h.max(batch_id)),
        );
        Ok((state.location.clone(), may_have_leftovers))
    }

    /// Deletes `part-<batch_id>-*` files (and the local file system's
    /// staging files for them), in the output directory and in every
    /// partition directory under it, that no manifest entry lists.
    async fn delete_leftovers(&self, location: &Location, batch_id: u64) -> Result<()> {
        let store = location.store();
        let prefix = file_prefix(batch_id);
        let listed: Vec<object_store::ObjectMeta> =
            match store.list(Some(location.path())).try_collect().await {
                Ok(listed) => listed,
                Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => {
                    let error = TidemillError::sink(
                        self.description(),
                        format!(
                            "batch {batch_id}: cannot list the output directory for leftovers: {e}"
                        ),
                    );
                    return Err(TidemillError::storage(error, &e));
                }
            };
        for meta in listed {
            if meta
                .location
                .filename()
                .is_some_and(|name| name.starts_with(&prefix))
            {
                tracing::info!(
                    sink = %self.description(),
                    batch_id,
                    file = %meta.location,
                    "deleting a file of an earlier, uncommitted attempt of the batch"
                );
                delete_if_present(store, &meta.location)
                    .await
                    .map_err(|e| {
                        TidemillError::sink(
                            self.description(),
                            format!(
                                "batch {batch_id}: cannot delete leftover file '{}': {e}",
                                meta.location
                            ),
                        )
                    })?;
            }
        }
        Ok(())
    }

    /// Splits the batch's rows by partition, encodes and writes its data
    /// files; returns what the manifest lists. On failure, deletes the
    /// files it wrote.
    async fn write_files(
        &self,
        location: &Location,
        batch_id: u64,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<ManifestFile>> {
        let groups = self.partitions(batch_id, schema, batches).await?;
        let mut written: Vec<ManifestFile> = Vec::new();
        for mut group in groups {
            let batches = std::mem::take(&mut group.batches);
            for chunk in split_rows(batches, self.max_rows_per_file) {
                let result = self.write_file(location, batch_id, &group, chunk).await;
                match result {
                    Ok(file) => written.push(file),
                    Err(e) => {
                        self.delete_files(location, &written).await;
                        return Err(e);
                    }
                }
            }
        }
        Ok(written)
    }

    /// The batch's rows by partition (one group with every row when the
    /// output is not partitioned), without the partition columns.
    async fn partitions(
        &self,
        batch_id: u64,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<Group>> {
        let indices = self.partition_indices(schema)?;
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        if indices.is_empty() {
            return Ok(vec![Group {
                directories: Vec::new(),
                values: Vec::new(),
                schema: Arc::clone(schema),
                batches,
            }]);
        }
        let schema = Arc::clone(schema);
        let columns = self.partition_by.clone();
        let split = tokio::task::spawn_blocking(move || {
            partition::split(&schema, &batches, &indices).map(|parts| {
                parts
                    .into_iter()
                    .map(|part| Group {
                        directories: columns
                            .iter()
                            .zip(&part.values)
                            .map(|(column, value)| {
                                partition::directory_name(column, value.as_deref())
                            })
                            .collect(),
                        values: part.values,
                        schema: part.rows.schema(),
                        batches: vec![part.rows],
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await;
        match split {
            Ok(Ok(groups)) => Ok(groups),
            Ok(Err(e)) => Err(TidemillError::sink(
                self.description(),
                format!("batch {batch_id}: splitting the rows by partition failed: {e}"),
            )),
            Err(e) => Err(TidemillError::sink(
                self.description(),
                format!("batch {batch_id}: the partitioning task failed: {e}"),
            )),
        }
    }

    /// Encodes `chunk` (rows of the partition `group`) and writes it as a
    /// new data file of batch `batch_id` under the partition's directories.
    async fn write_file(
        &self,
        location: &Location,
        batch_id: u64,
        group: &Group,
        chunk: Vec<RecordBatch>,
    ) -> Result<ManifestFile> {
        let directories = &group.directories;
        let file_name = format!(
            "{}{}{}",
            file_prefix(batch_id),
            uuid::Uuid::new_v4(),
            self.encoding.extension()
        );
        let mut path = location.path().clone();
        for directory in directories {
            // Escaped already: taken as it is, so that `%2F` stays `%2F`
            // on disk and in object keys (as Hive and Spark write it).
            let part = PathPart::parse(directory).map_err(|e| {
                TidemillError::sink(
                    self.description(),
                    format!("batch {batch_id}: partition directory '{directory}' is not a valid path segment: {e}"),
                )
            })?;
            path = path.join(part);
        }
        let path = path.join(file_name.as_str());
        let num_rows: usize = chunk.iter().map(RecordBatch::num_rows).sum();
        let bytes = self
            .encoding
            .encode(Arc::clone(&group.schema), chunk)
            .await
            .map_err(|e| {
                TidemillError::sink(
                    self.description(),
                    format!(
                        "batch {batch_id}: encoding {} failed: {e}",
                        self.encoding.format
                    ),
                )
            })?;
        let size_bytes = bytes.len() as u64;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        location
            .store()
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
            .map_err(|e| {
                // Storage I/O may recover (the engine then retries the
                // batch); "Not a directory" and the like do not.
                let error = TidemillError::sink(
                    self.description(),
                    format!("batch {batch_id}: writing '{path}' failed: {e}"),
                );
                TidemillError::storage(error, &e)
            })?;
        let mut name = directories.join("/");
        if !name.is_empty() {
            name.push('/');
        }
        name.push_str(&file_name);
        Ok(ManifestFile::new(
            name,
            size_bytes,
            num_rows as u64,
            group.values.clone(),
        ))
    }

    /// A failed read or write of batch `batch_id`'s manifest entry, as the
    /// sink's error: it names the sink (so its path) rather than reading as
    /// a failure of the query's checkpoint. Transient only when the storage
    /// error behind it may pass by itself; a sink path that is a regular
    /// file ("Not a directory") or that may not be written fails at once.
    fn manifest_error(&self, batch_id: u64, doing: &str, error: StateError) -> TidemillError {
        match error {
            StateError::Io { path, source } => {
                let error = TidemillError::sink(
                    self.description(),
                    format!(
                        "batch {batch_id}: {doing} the manifest entry '{path}' failed: {source}"
                    ),
                );
                TidemillError::storage(error, &source)
            }
            other => other.into(),
        }
    }

    /// Best-effort removal of files of a failed or superseded attempt.
    async fn delete_files(&self, location: &Location, files: &[ManifestFile]) {
        for file in files {
            let mut path = location.path().clone();
            for part in file.name.split('/') {
                match PathPart::parse(part) {
                    Ok(part) => path = path.join(part),
                    Err(_) => return,
                }
            }
            if let Err(e) = delete_if_present(location.store(), &path).await {
                tracing::warn!(sink = %self.description(), file = %path, error = %e, "cannot delete an uncommitted file");
            }
        }
    }

    /// The manifest entry of batch `batch_id` that wrote `files`.
    fn entry(&self, batch_id: u64, schema: &Schema, files: Vec<ManifestFile>) -> ManifestEntry {
        let csv = (self.encoding.format == FileFormat::Csv).then_some(CsvLayout {
            header: self.encoding.header,
        });
        ManifestEntry::new(
            batch_id,
            files,
            schema.clone(),
            self.encoding.format,
            csv,
            self.partition_by.clone(),
        )
    }
}

/// The rows of one partition of a batch, and where they go.
struct Group {
    /// The partition's directories (`column=value`, escaped), outermost
    /// first; empty when the output is not partitioned.
    directories: Vec<String>,
    /// The partition columns' values (see [`ManifestFile::partition_values`]).
    values: Vec<Option<String>>,
    /// The data files' schema: the rows' without the partition columns.
    schema: SchemaRef,
    /// The rows, without the partition columns.
    batches: Vec<RecordBatch>,
}

#[async_trait]
impl Sink for FileSink {
    /// `FileSink[<format>: <url>]`, as a [`FileSource`](crate::FileSource)
    /// names itself.
    fn description(&self) -> String {
        format!("FileSink[{}: {}]", self.encoding.format, self.display)
    }

    async fn open(&self, ctx: &SinkContext) -> Result<()> {
        if ctx.output_mode != OutputMode::Append {
            return Err(TidemillError::Unsupported {
                operator: self.description(),
                reason: format!(
                    "supports only the append output mode, not {} (committed files are never rewritten)",
                    ctx.output_mode
                ),
                fix: "use OutputMode::Append, or write to a MemorySink or ForeachBatchSink"
                    .to_string(),
            });
        }
        self.check_schema(&ctx.schema)?;
        let location =
            Location::resolve_with(&self.location, &self.storage, &ctx.session.runtime_env())?
                .with_durability(ctx.durability);
        if !matches!(location.url().scheme(), "file" | "memory") {
            // A listing fails where the bucket is missing or refused (an
            // empty prefix of a bucket lists as empty): the query fails to
            // start, instead of at its first batch.
            if let Err(e) = location
                .store()
                .list_with_delimiter(Some(location.path()))
                .await
            {
                let missing = matches!(e, object_store::Error::NotFound { .. })
                    || e.to_string().contains("NoSuchBucket");
                let hint = if missing {
                    " (does the bucket exist?)"
                } else {
                    ""
                };
                return Err(TidemillError::sink(
                    self.description(),
                    format!("cannot list its location {}{hint}: {e}", self.location),
                ));
            }
        }
        let mut guard = self
            .state
            .lock()
            .map_err(|_| TidemillError::sink(self.description(), "internal lock poisoned"))?;
        *guard = Some(OpenState {
            location,
            highest_attempted: None,
        });
        Ok(())
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        let (location, may_have_leftovers) = self.begin(batch_id)?;
        let manifest = Manifest::new(&location);
        // A batch id above every one this sink was given since it opened
        // was never attempted, by this run or an earlier one (a run only
        // starts a batch after the one before it committed, and its first
        // batch is always checked): no manifest read for it. Should it be
        // committed after all, the manifest's create-if-absent below still
        // keeps the first attempt's files.
        let committed = may_have_leftovers
            && manifest
                .contains(batch_id)
                .await
                .map_err(|e| self.manifest_error(batch_id, "reading", e))?;
        if committed {
            tracing::debug!(sink = %self.description(), batch_id, "batch already committed; skipping");
            return Ok(());
        }
        if may_have_leftovers {
            self.delete_leftovers(&location, batch_id).await?;
        }
        let files = self
            .write_files(&location, batch_id, &schema, batches)
            .await?;
        crate::failpoint::hit("during_sink", batch_id);
        let entry = self.entry(batch_id, &schema, files);
        match manifest.add(&entry).await {
            Ok(()) => Ok(()),
            Err(StateError::AlreadyExists { .. }) => {
                // Another attempt committed the batch first; its files are
                // the batch's output and ours are not.
                tracing::warn!(sink = %self.description(), batch_id, "batch was committed concurrently; discarding this attempt's files");
                self.delete_files(&location, &entry.files).await;
                Ok(())
            }
            Err(e) => {
                self.delete_files(&location, &entry.files).await;
                Err(self.manifest_error(batch_id, "writing", e))
            }
        }
    }
}

/// `part-<batch id, zero-padded to 5>-`: the name prefix of a batch's files.
/// The trailing dash keeps batch 10000's prefix from matching batch
/// 100000's files.
fn file_prefix(batch_id: u64) -> String {
    format!("part-{batch_id:05}-")
}

async fn delete_if_present(store: &Arc<dyn ObjectStore>, path: &Path) -> object_store::Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Groups the non-empty rows of `batches` into files of at most `max_rows`
/// rows each (one group if unlimited); no group if there are no rows.
fn split_rows(batches: Vec<RecordBatch>, max_rows: Option<usize>) -> Vec<Vec<RecordBatch>> {
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Vec::new();
    }
    let Some(max_rows) = max_rows else {
        return vec![batches];
    };
    let mut groups = Vec::new();
    let mut current: Vec<RecordBatch> = Vec::new();
    let mut current_rows = 0;
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (max_rows - current_rows).min(batch.num_rows() - offset);
            current.push(batch.slice(offset, take));
            current_rows += take;
            offset += take;
            if current_rows == max_rows {
                groups.push(std::mem::take(&mut current));
                current_rows = 0;
            }
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}
