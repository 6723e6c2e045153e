//! Exactly-once parquet output with a manifest of committed batches.
//!
//! See [`ParquetSink`] for the on-disk layout, which is a stable,
//! documented format: the manifest entries say exactly which files each
//! batch wrote, and only files listed in a manifest entry are part of the
//! output.

mod connector;

pub(crate) use connector::FilesSinkConnector;

use std::sync::{Arc, Mutex};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tidemill_engine::{Location, OutputMode, Result, Sink, SinkContext, TidemillError};
use tidemill_state::{NumberedLog, StateError};

/// The sub-directory of the output directory holding the manifest.
const MANIFEST_DIR: &str = "_tidemill_sink";
/// The kind in the header of a manifest entry.
const MANIFEST_KIND: &str = "sink-manifest";
/// The format version of manifest entries this build reads and writes.
const MANIFEST_VERSION: u32 = 1;

/// Writes each micro-batch as parquet files, exactly once, and records the
/// files of every committed batch in a manifest (like Spark's
/// `_spark_metadata`).
///
/// Only the [`Append`](OutputMode::Append) output mode is supported, as
/// with Spark's file sinks: a file, once committed, is never rewritten.
///
/// # Layout (format version 1)
///
/// ```text
/// <dir>/part-<batch id, 5+ digits>-<uuid>.parquet   data files
/// <dir>/_tidemill_sink/<batch id>                   manifest entries
/// ```
///
/// - A **data file** holds rows of one batch only, as parquet with snappy
///   compression. A batch writes one file, or several when
///   [`ParquetSink::max_rows_per_file`] is set; a batch with no rows writes
///   none. The batch id is zero-padded to at least five digits
///   (`part-00042-…`, `part-123456-…`).
/// - A **manifest entry** `_tidemill_sink/<N>` (`N` in plain decimal) is
///   the commit point of batch `N`: it is created atomically
///   (put-if-absent) after all of the batch's data files are written. It is
///   a Tidemill checkpoint file (see [`tidemill_state::envelope`]): a header
///   line `tidemill-sink-manifest v1`, one line of JSON, and a CRC-32
///   trailer line. The JSON body (a `ManifestEntry`, as returned by
///   [`ParquetSink::committed_batches`]) looks like this:
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
/// **Only files listed in a manifest entry are output.** A process that
/// dies while writing batch `N` can leave `part-<N>-*` files behind that no
/// manifest lists; readers must ignore them, and the sink deletes them when
/// it writes batch `N` again. Read the output with
/// [`ParquetSink::read_committed`] (a plain `read_parquet` of the directory
/// would also pick up such leftovers), and inspect it with
/// [`ParquetSink::committed_batches`].
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
/// use tidemill_connectors::ParquetSink;
///
/// # async fn example() -> tidemill_engine::Result<()> {
/// // Used as a query's sink: `...write_stream().format(sink)...`
/// let sink = ParquetSink::new("out/hourly").max_rows_per_file(1_000_000);
///
/// // Reading back exactly the committed output, as a batch DataFrame:
/// let ctx = SessionContext::new();
/// let hourly = ParquetSink::read_committed(&ctx, "out/hourly").await?;
/// hourly.show().await?;
/// # let _ = sink;
/// # Ok(())
/// # }
/// ```
pub struct ParquetSink {
    /// The location as the user gave it.
    location: String,
    /// The location as a URL, for descriptions.
    display: String,
    /// The most rows a data file holds, if limited.
    max_rows_per_file: Option<usize>,
    /// Set by `open`.
    state: Mutex<Option<OpenState>>,
}

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

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink")
            .field("location", &self.display)
            .field("max_rows_per_file", &self.max_rows_per_file)
            .finish()
    }
}

/// One committed batch of a [`ParquetSink`]: the body of the manifest entry
/// `<dir>/_tidemill_sink/<batch_id>` (see [`ParquetSink`] for the layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManifestEntry {
    /// The micro-batch id.
    pub batch_id: u64,
    /// The data files the batch wrote, in order; empty when the batch had no
    /// rows.
    pub files: Vec<ManifestFile>,
    /// The schema of the batch's rows.
    pub schema: Schema,
}

/// One data file listed in a [`ManifestEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManifestFile {
    /// The file name, relative to the output directory
    /// (`part-<batch id>-<uuid>.parquet`).
    pub name: String,
    /// The file's size in bytes.
    pub size_bytes: u64,
    /// The number of rows in the file.
    pub num_rows: u64,
}

impl ManifestEntry {
    /// The total number of rows the batch wrote.
    pub fn num_rows(&self) -> u64 {
        self.files.iter().map(|f| f.num_rows).sum()
    }
}

impl ParquetSink {
    /// A sink writing to the directory `location`: a local path, a
    /// `file://` URL, or a URL of any object store registered in the
    /// query's session (such as `memory:///out`). The location is resolved
    /// when the query starts.
    pub fn new(location: impl Into<String>) -> Self {
        let location = location.into();
        let display = match ListingTableUrl::parse(&location) {
            Ok(url) => url.as_str().trim_end_matches('/').to_string(),
            Err(_) => location.clone(),
        };
        Self {
            location,
            display,
            max_rows_per_file: None,
            state: Mutex::new(None),
        }
    }

    /// Splits a batch into files of at most `n` rows each (a value of 0 is
    /// taken as 1). By default a batch is written as one file.
    pub fn max_rows_per_file(mut self, n: usize) -> Self {
        self.max_rows_per_file = Some(n.max(1));
        self
    }

    /// The committed output in `location` as a batch [`DataFrame`]: exactly
    /// the rows of the files listed in the manifest, never files of an
    /// attempt that did not commit.
    ///
    /// The DataFrame's schema is that of the latest committed batch. Fails
    /// if `location` has no manifest entry at all (it is not the output of
    /// a `ParquetSink`, or no batch has committed yet).
    pub async fn read_committed(ctx: &SessionContext, location: &str) -> Result<DataFrame> {
        let resolved = Location::resolve(location, &ctx.runtime_env())?;
        let entries = read_manifest(&resolved).await?;
        let description = describe(&resolved);
        let Some(latest) = entries.last() else {
            return Err(TidemillError::sink(
                description,
                format!(
                    "no committed batches: '{}' has no manifest entries, so it is not (yet) the output of a ParquetSink",
                    resolved.path().clone().join(MANIFEST_DIR)
                ),
            ));
        };
        let schema: SchemaRef = Arc::new(latest.schema.clone());
        let base = directory_url(&resolved);
        let mut urls = Vec::new();
        for entry in &entries {
            for file in &entry.files {
                let url = base.join(&file.name).map_err(|e| {
                    TidemillError::sink(
                        description.clone(),
                        format!(
                            "manifest of batch {} lists an invalid file name '{}': {e}",
                            entry.batch_id, file.name
                        ),
                    )
                })?;
                let url = ListingTableUrl::try_new(url, None).map_err(|e| {
                    TidemillError::datafusion(format!("{description}: file {}", file.name), e)
                })?;
                urls.push(url);
            }
        }
        if urls.is_empty() {
            let table = MemTable::try_new(schema, vec![Vec::new()]).map_err(|e| {
                TidemillError::datafusion(format!("{description}: empty output"), e)
            })?;
            return ctx
                .read_table(Arc::new(table))
                .map_err(|e| TidemillError::datafusion(format!("{description}: empty output"), e));
        }
        let options = ListingOptions::new(Arc::new(
            ParquetFormat::default().with_options(ctx.copied_table_options().parquet),
        ))
        .with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(schema);
        let table = ListingTable::try_new(config).map_err(|e| {
            TidemillError::datafusion(format!("{description}: reading committed files"), e)
        })?;
        ctx.read_table(Arc::new(table)).map_err(|e| {
            TidemillError::datafusion(format!("{description}: reading committed files"), e)
        })
    }

    /// The committed batches in `location`, by increasing batch id, with
    /// the files each wrote. Empty if nothing has been committed there.
    pub async fn committed_batches(
        ctx: &SessionContext,
        location: &str,
    ) -> Result<Vec<ManifestEntry>> {
        let resolved = Location::resolve(location, &ctx.runtime_env())?;
        read_manifest(&resolved).await
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
    /// staging files for them) that no manifest entry lists.
    async fn delete_leftovers(&self, location: &Location, batch_id: u64) -> Result<()> {
        let store = location.store();
        let prefix = file_prefix(batch_id);
        let listing = match store.list_with_delimiter(Some(location.path())).await {
            Ok(listing) => listing,
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
        for meta in listing.objects {
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

    /// Encodes and writes the batch's data files; returns what the manifest
    /// lists. On failure, deletes the files it wrote.
    async fn write_files(
        &self,
        location: &Location,
        batch_id: u64,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<ManifestFile>> {
        let chunks = split_rows(batches, self.max_rows_per_file);
        let mut written: Vec<ManifestFile> = Vec::new();
        for chunk in chunks {
            let name = format!("{}{}.parquet", file_prefix(batch_id), uuid::Uuid::new_v4());
            let path = location.path().clone().join(name.as_str());
            let result = async {
                let num_rows: usize = chunk.iter().map(RecordBatch::num_rows).sum();
                let bytes = encode_parquet(Arc::clone(schema), chunk)
                    .await
                    .map_err(|e| {
                        TidemillError::sink(
                            self.description(),
                            format!("batch {batch_id}: encoding parquet failed: {e}"),
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
                        // Storage I/O may recover (the engine then retries
                        // the batch); "Not a directory" and the like do not.
                        let error = TidemillError::sink(
                            self.description(),
                            format!("batch {batch_id}: writing '{path}' failed: {e}"),
                        );
                        TidemillError::storage(error, &e)
                    })?;
                Ok::<_, TidemillError>(ManifestFile {
                    name: name.clone(),
                    size_bytes,
                    num_rows: num_rows as u64,
                })
            }
            .await;
            match result {
                Ok(file) => written.push(file),
                Err(e) => {
                    self.delete_files(location, &written).await;
                    return Err(e);
                }
            }
        }
        Ok(written)
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
            let path = location.path().clone().join(file.name.as_str());
            if let Err(e) = delete_if_present(location.store(), &path).await {
                tracing::warn!(sink = %self.description(), file = %path, error = %e, "cannot delete an uncommitted file");
            }
        }
    }
}

#[async_trait]
impl Sink for ParquetSink {
    fn description(&self) -> String {
        format!("ParquetSink[{}]", self.display)
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
        let location = Location::resolve(&self.location, &ctx.session.runtime_env())?
            .with_durability(ctx.durability);
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
        let manifest = manifest_log(&location);
        let committed = manifest
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
        let entry = ManifestEntry {
            batch_id,
            files,
            schema: schema.as_ref().clone(),
        };
        match manifest.add(batch_id, &entry).await {
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

/// The manifest: one entry per committed batch id.
fn manifest_log(location: &Location) -> NumberedLog<ManifestEntry> {
    NumberedLog::new(
        location.dir().child(MANIFEST_DIR),
        MANIFEST_KIND,
        MANIFEST_VERSION,
    )
}

fn describe(location: &Location) -> String {
    format!(
        "ParquetSink[{}]",
        location.url().as_str().trim_end_matches('/')
    )
}

/// The location's URL with a trailing slash, so file names join under it.
fn directory_url(location: &Location) -> url::Url {
    let mut url = location.url().clone();
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// Reads every manifest entry in `location`, by increasing batch id.
async fn read_manifest(location: &Location) -> Result<Vec<ManifestEntry>> {
    let log = manifest_log(location);
    let mut entries = Vec::new();
    for id in log.ids().await? {
        let entry = log.get(id).await?.ok_or_else(|| {
            TidemillError::sink(
                describe(location),
                format!(
                    "manifest entry '{}' disappeared while reading",
                    log.dir().path(&id.to_string())
                ),
            )
        })?;
        if entry.batch_id != id {
            return Err(TidemillError::sink(
                describe(location),
                format!(
                    "manifest entry '{}' records batch id {}, not {id}",
                    log.dir().path(&id.to_string()),
                    entry.batch_id
                ),
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
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

/// Encodes `batches` as one snappy-compressed parquet file, off the async
/// runtime's worker threads.
async fn encode_parquet(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> std::result::Result<Bytes, String> {
    tokio::task::spawn_blocking(move || {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer =
            ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(|e| e.to_string())?;
        for batch in &batches {
            writer.write(batch).map_err(|e| e.to_string())?;
        }
        let buffer = writer.into_inner().map_err(|e| e.to_string())?;
        Ok(Bytes::from(buffer))
    })
    .await
    .map_err(|e| format!("encoder task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{Observed, SinkHarness, check_sink};
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use object_store::memory::InMemory;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn batch(ids: &[i64]) -> RecordBatch {
        let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    fn memory_ctx() -> SessionContext {
        let ctx = SessionContext::new();
        ctx.register_object_store(
            &url::Url::parse("memory://").unwrap(),
            Arc::new(InMemory::new()),
        );
        ctx
    }

    async fn open(ctx: &SessionContext, sink: &ParquetSink) {
        sink.open(&SinkContext {
            session: ctx.clone(),
            query_name: None,
            schema: schema(),
            output_mode: OutputMode::Append,
            durability: Default::default(),
        })
        .await
        .unwrap();
    }

    /// The committed ids, sorted.
    async fn read_ids(ctx: &SessionContext, location: &str) -> Vec<i64> {
        let df = ParquetSink::read_committed(ctx, location).await.unwrap();
        let batches = df.collect().await.unwrap();
        let mut ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The names of the data files in the output directory.
    async fn data_files(ctx: &SessionContext, location: &str) -> Vec<String> {
        let loc = Location::resolve(location, &ctx.runtime_env()).unwrap();
        let listing = loc
            .store()
            .list_with_delimiter(Some(loc.path()))
            .await
            .unwrap();
        let mut names: Vec<String> = listing
            .objects
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    async fn exactly_once_round_trip(ctx: SessionContext, location: &str) {
        let sink = ParquetSink::new(location);
        open(&ctx, &sink).await;
        sink.add_batch(0, schema(), vec![batch(&[1, 2]), batch(&[3])])
            .await
            .unwrap();
        sink.add_batch(1, schema(), vec![batch(&[4, 5])])
            .await
            .unwrap();
        assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3, 4, 5]);
        let files_before = data_files(&ctx, location).await;
        assert_eq!(files_before.len(), 2, "{files_before:?}");
        assert!(
            files_before[0].starts_with("part-00000-") && files_before[0].ends_with(".parquet")
        );
        assert!(files_before[1].starts_with("part-00001-"));

        // Re-adding committed ids (with different rows) changes nothing.
        sink.add_batch(1, schema(), vec![batch(&[100])])
            .await
            .unwrap();
        sink.add_batch(0, schema(), vec![batch(&[200])])
            .await
            .unwrap();
        assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(data_files(&ctx, location).await, files_before);

        // A fresh instance (a restarted query) skips them too.
        let restarted = ParquetSink::new(location);
        open(&ctx, &restarted).await;
        restarted
            .add_batch(1, schema(), vec![batch(&[100])])
            .await
            .unwrap();
        restarted
            .add_batch(2, schema(), vec![batch(&[6])])
            .await
            .unwrap();
        assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3, 4, 5, 6]);

        let entries = ParquetSink::committed_batches(&ctx, location)
            .await
            .unwrap();
        assert_eq!(
            entries.iter().map(|e| e.batch_id).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(
            entries
                .iter()
                .map(ManifestEntry::num_rows)
                .collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        for entry in &entries {
            assert_eq!(entry.files.len(), 1);
            assert!(
                entry.files[0]
                    .name
                    .starts_with(&file_prefix(entry.batch_id))
            );
            assert!(entry.files[0].size_bytes > 0);
            assert_eq!(entry.schema, *schema());
        }
        let mut listed: Vec<String> = entries
            .iter()
            .flat_map(|e| e.files.iter().map(|f| f.name.clone()))
            .collect();
        listed.sort();
        assert_eq!(listed, data_files(&ctx, location).await);
    }

    #[tokio::test]
    async fn exactly_once_on_local_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let location = tmp.path().join("out").to_str().unwrap().to_string();
        exactly_once_round_trip(SessionContext::new(), &location).await;
        // The manifest entry is a readable checkpoint file.
        let text = std::fs::read_to_string(tmp.path().join("out/_tidemill_sink/0")).unwrap();
        assert!(text.starts_with(
            "tidemill-sink-manifest v1\n{\"batch_id\":0,\"files\":[{\"name\":\"part-00000-"
        ));
    }

    #[tokio::test]
    async fn exactly_once_in_memory() {
        exactly_once_round_trip(memory_ctx(), "memory:///out/a").await;
    }

    #[tokio::test]
    async fn file_url_location() {
        let tmp = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(tmp.path().join("out")).unwrap();
        let ctx = SessionContext::new();
        let sink = ParquetSink::new(url.as_str());
        open(&ctx, &sink).await;
        sink.add_batch(0, schema(), vec![batch(&[7])])
            .await
            .unwrap();
        assert_eq!(read_ids(&ctx, url.as_str()).await, vec![7]);
        assert!(tmp.path().join("out/_tidemill_sink/0").exists());
    }

    #[tokio::test]
    async fn leftovers_of_a_crashed_attempt_are_never_read_and_are_replaced() {
        let ctx = memory_ctx();
        let location = "memory:///crash";
        let sink = ParquetSink::new(location);
        open(&ctx, &sink).await;
        sink.add_batch(0, schema(), vec![batch(&[1])])
            .await
            .unwrap();

        // A crashed attempt of batch 1: its data files are written (here
        // with the sink's own encoder), but no manifest entry.
        let loc = Location::resolve(location, &ctx.runtime_env()).unwrap();
        let crashed = ParquetSink::new(location);
        crashed
            .write_files(&loc, 1, &schema(), vec![batch(&[2, 3])])
            .await
            .unwrap();
        // And a staging file the local file system could leave behind.
        loc.store()
            .put(
                &loc.path().clone().join("part-00001-x.parquet#1"),
                PutPayload::from_static(b"junk"),
            )
            .await
            .unwrap();
        assert_eq!(data_files(&ctx, location).await.len(), 3);
        assert_eq!(
            read_ids(&ctx, location).await,
            vec![1],
            "uncommitted files must not be read"
        );

        // The restarted query re-runs batch 1.
        let restarted = ParquetSink::new(location);
        open(&ctx, &restarted).await;
        restarted
            .add_batch(1, schema(), vec![batch(&[2, 3])])
            .await
            .unwrap();
        assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3]);
        let files = data_files(&ctx, location).await;
        assert_eq!(files.len(), 2, "leftovers must be deleted: {files:?}");
        let entries = ParquetSink::committed_batches(&ctx, location)
            .await
            .unwrap();
        assert_eq!(entries[1].files[0].name, files[1]);
    }

    #[tokio::test]
    async fn a_retried_batch_in_the_same_instance_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let location = tmp.path().join("out").to_str().unwrap().to_string();
        let ctx = SessionContext::new();
        let sink = ParquetSink::new(location.as_str());
        open(&ctx, &sink).await;
        sink.add_batch(0, schema(), vec![batch(&[1])])
            .await
            .unwrap();
        // Batch 1 was attempted by this instance and left a file (as if the
        // manifest write had failed), then is retried.
        let loc = Location::resolve(&location, &ctx.runtime_env()).unwrap();
        sink.begin(1).unwrap();
        sink.write_files(&loc, 1, &schema(), vec![batch(&[2])])
            .await
            .unwrap();
        sink.add_batch(1, schema(), vec![batch(&[2])])
            .await
            .unwrap();
        assert_eq!(read_ids(&ctx, &location).await, vec![1, 2]);
        assert_eq!(data_files(&ctx, &location).await.len(), 2);
    }

    #[tokio::test]
    async fn empty_batches_commit_with_no_files() {
        let ctx = memory_ctx();
        let location = "memory:///empty";
        let sink = ParquetSink::new(location);
        open(&ctx, &sink).await;
        sink.add_batch(0, schema(), Vec::new()).await.unwrap();
        sink.add_batch(1, schema(), vec![RecordBatch::new_empty(schema())])
            .await
            .unwrap();

        let df = ParquetSink::read_committed(&ctx, location).await.unwrap();
        assert_eq!(df.schema().as_arrow(), schema().as_ref());
        assert_eq!(df.count().await.unwrap(), 0);
        assert!(data_files(&ctx, location).await.is_empty());
        let entries = ParquetSink::committed_batches(&ctx, location)
            .await
            .unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e.files.is_empty()));

        sink.add_batch(2, schema(), vec![batch(&[9])])
            .await
            .unwrap();
        assert_eq!(read_ids(&ctx, location).await, vec![9]);
    }

    #[tokio::test]
    async fn manifest_keeps_rich_schemas() {
        let ctx = memory_ctx();
        let location = "memory:///rich";
        let rich: SchemaRef = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new(
                    "ts",
                    DataType::Timestamp(
                        arrow::datatypes::TimeUnit::Millisecond,
                        Some("UTC".into()),
                    ),
                    true,
                ),
                Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
                Field::new("amount", DataType::Decimal128(12, 2), false),
            ],
            [("origin".to_string(), "test".to_string())].into(),
        ));
        let sink = ParquetSink::new(location);
        open(&ctx, &sink).await;
        sink.add_batch(0, Arc::clone(&rich), Vec::new())
            .await
            .unwrap();
        let entries = ParquetSink::committed_batches(&ctx, location)
            .await
            .unwrap();
        assert_eq!(entries[0].schema, *rich);
        let df = ParquetSink::read_committed(&ctx, location).await.unwrap();
        assert_eq!(df.schema().as_arrow().fields(), rich.fields());
    }

    #[tokio::test]
    async fn max_rows_per_file_splits_batches() {
        let ctx = memory_ctx();
        let location = "memory:///split";
        let sink = ParquetSink::new(location).max_rows_per_file(2);
        open(&ctx, &sink).await;
        sink.add_batch(
            0,
            schema(),
            vec![batch(&[1, 2, 3]), batch(&[4]), batch(&[5])],
        )
        .await
        .unwrap();
        let entries = ParquetSink::committed_batches(&ctx, location)
            .await
            .unwrap();
        let rows: Vec<u64> = entries[0].files.iter().map(|f| f.num_rows).collect();
        assert_eq!(rows, vec![2, 2, 1]);
        assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn no_manifest_is_a_clear_error() {
        let ctx = memory_ctx();
        let err = ParquetSink::read_committed(&ctx, "memory:///nothing")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no committed batches"), "{err}");
        assert!(
            ParquetSink::committed_batches(&ctx, "memory:///nothing")
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_sink_path_that_is_a_regular_file_fails_at_once_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::write(&out, b"not a directory").unwrap();
        let ctx = SessionContext::new();
        let sink = ParquetSink::new(out.to_str().unwrap());
        open(&ctx, &sink).await;
        let err = sink
            .add_batch(0, schema(), vec![batch(&[1])])
            .await
            .unwrap_err();
        let message = err.to_string();
        // The sink and its path, not "checkpoint I/O failed".
        assert!(
            message.starts_with(&format!(
                "sink ParquetSink[file://{}]: batch 0: ",
                out.display()
            )),
            "{message}"
        );
        assert!(message.contains("Not a directory"), "{message}");
        assert!(!message.contains("checkpoint"), "{message}");
        // Retrying cannot help, so the engine does not retry.
        assert!(!err.is_transient(), "{message}");
        assert_eq!(std::fs::read(&out).unwrap(), b"not a directory");
    }

    #[tokio::test]
    async fn corrupt_manifest_names_the_file() {
        let ctx = memory_ctx();
        let location = "memory:///corrupt";
        let sink = ParquetSink::new(location);
        open(&ctx, &sink).await;
        sink.add_batch(0, schema(), vec![batch(&[1])])
            .await
            .unwrap();
        let loc = Location::resolve(location, &ctx.runtime_env()).unwrap();
        loc.store()
            .put(
                &loc.path().clone().join(MANIFEST_DIR).join("0"),
                PutPayload::from_static(b"garbage\n"),
            )
            .await
            .unwrap();
        let err = ParquetSink::read_committed(&ctx, location)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("corrupt/_tidemill_sink/0"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn description_open_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(tmp.path().join("out").to_str().unwrap());
        let expected = format!("ParquetSink[file://{}]", tmp.path().join("out").display());
        assert_eq!(sink.description(), expected);

        let err = sink
            .add_batch(0, schema(), vec![batch(&[1])])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("before open"), "{err}");

        let err = sink
            .open(&SinkContext {
                session: SessionContext::new(),
                query_name: None,
                schema: schema(),
                output_mode: OutputMode::Complete,
                durability: Default::default(),
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append"), "{err}");
    }

    struct Harness {
        ctx: SessionContext,
        sink: Arc<ParquetSink>,
        location: String,
    }

    #[async_trait]
    impl SinkHarness for Harness {
        fn sink(&self) -> Arc<dyn Sink> {
            Arc::clone(&self.sink) as Arc<dyn Sink>
        }

        fn session(&self) -> SessionContext {
            self.ctx.clone()
        }

        async fn observe(&self) -> Result<Observed> {
            let df = ParquetSink::read_committed(&self.ctx, &self.location).await?;
            Ok(Observed::Rows(df.collect().await?))
        }
    }

    #[tokio::test]
    async fn conformance() {
        let location = "memory:///conformance".to_string();
        let harness = Harness {
            ctx: memory_ctx(),
            sink: Arc::new(ParquetSink::new(location.as_str())),
            location,
        };
        check_sink(
            &harness,
            vec![batch(&[1, 2])],
            vec![batch(&[3])],
            vec![batch(&[4, 5, 6])],
        )
        .await;
    }
}
