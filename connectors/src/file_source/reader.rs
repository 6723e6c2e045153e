//! Decoding single files into record batches of the source schema.

use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use tidemill_engine::{Location, Result, Source, TidemillError};

use super::bad_record::{Walk, csv_walk, json_walk, line_at, name_csv_column, strip_arrow_line};
use super::convert::{convert, readable_as, same_values};
use super::seen_log::SeenFile;
use super::{FileFormat, FileSource};

/// Rows per record batch produced by the readers.
const BATCH_SIZE: usize = 8192;

/// Bytes read from a parquet file's end at first: enough for most footers
/// and their page indexes, which are read in one request instead of three.
const FOOTER_PREFETCH: usize = 64 * 1024;

/// Reads a parquet file on an object store: the parquet crate's
/// [`AsyncFileReader`] over ranged gets of a file whose size is known.
#[derive(Debug, Clone)]
pub(crate) struct StoreParquetReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl StoreParquetReader {
    /// A reader of the `size` bytes at `path` on `store` (the Delta
    /// source's; the file source builds its readers itself).
    #[cfg(feature = "delta")]
    pub(crate) fn new(store: Arc<dyn ObjectStore>, path: Path, size: u64) -> Self {
        Self { store, path, size }
    }
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
                .with_arrow_reader_options(options)
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// A parquet file's footer, read and checked against the source schema.
#[derive(Debug, Clone)]
pub(super) struct ParquetFooter {
    reader: StoreParquetReader,
    metadata: ArrowReaderMetadata,
    /// The file's top-level columns the source schema reads.
    roots: Vec<usize>,
}

impl ParquetFooter {
    /// Whether the file has an offset index (where each page starts), so a
    /// range of a row group's rows can be read without the whole group.
    pub(super) fn has_offset_index(&self) -> bool {
        self.metadata.metadata().offset_index().is_some()
    }

    /// Rows per row group.
    pub(super) fn row_group_rows(&self) -> Vec<u64> {
        self.metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| rg.num_rows().max(0) as u64)
            .collect()
    }
}

/// Reads single files of one format into batches of a given schema.
#[derive(Debug, Clone)]
pub(super) struct FileReader {
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
    /// A value the declared type cannot hold without loss (a timestamp
    /// beyond its unit's range, say), at `row` of the batch.
    Value {
        column: String,
        row: usize,
        detail: String,
    },
    Other(String),
}

impl Misfit {
    /// The same misfit with its row counted `rows_before` rows later.
    fn after(self, rows_before: usize) -> Self {
        match self {
            Misfit::Null { column, row } => Misfit::Null {
                column,
                row: row + rows_before,
            },
            Misfit::Value {
                column,
                row,
                detail,
            } => Misfit::Value {
                column,
                row: row + rows_before,
                detail,
            },
            other => other,
        }
    }
}

impl FileReader {
    pub(super) fn new(source: &FileSource, location: &Location) -> Self {
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

    /// The format of the files this reader decodes.
    pub(super) fn format(&self) -> FileFormat {
        self.format
    }

    /// A file as a URL, for messages.
    pub(super) fn display(&self, path: &Path) -> String {
        format!("{}{}", self.store_root, path)
    }

    pub(super) fn csv_format(&self) -> arrow::csv::reader::Format {
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
    pub(super) async fn fetch(&self, path: &Path, seq: Option<u64>) -> Result<Bytes> {
        let result = match self.store.get(path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(self.vanished(path, seq)),
            // Storage I/O may recover: the engine retries the batch.
            Err(e) => {
                return Err(TidemillError::transient(
                    self.err(format!("cannot read {}: {e}", self.display(path))),
                ));
            }
        };
        result.bytes().await.map_err(|e| {
            TidemillError::transient(self.err(format!("cannot read {}: {e}", self.display(path))))
        })
    }

    /// Opens a parquet file (number `seq` in the files-seen log, if logged)
    /// and reads its footer.
    pub(super) async fn parquet_metadata(
        &self,
        path: &Path,
        seq: Option<u64>,
    ) -> Result<(StoreParquetReader, ArrowReaderMetadata)> {
        let name = self.display(path);
        let meta = match self.store.head(path).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Err(self.vanished(path, seq)),
            Err(e) => return Err(self.err(format!("cannot read {name}: {e}"))),
        };
        let mut reader = StoreParquetReader {
            store: Arc::clone(&self.store),
            path: path.clone(),
            size: meta.size,
        };
        // The offset index (where each page starts) lets a partition reading
        // a range of a row group fetch and decode only the pages it needs.
        let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load_async(&mut reader, options)
            .await
            .map_err(|e| self.err(format!("cannot read parquet file {name}: {e}")))?;
        Ok((reader, metadata))
    }

    /// Reads one logged file into batches of exactly `schema`.
    pub(super) async fn read(
        &self,
        file: &SeenFile,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        let path = self.logged_path(file)?;
        self.read_path(path, Some(file.seq), file.size, schema)
            .await
    }

    /// The store path of a logged file.
    pub(super) fn logged_path(&self, file: &SeenFile) -> Result<Path> {
        Path::parse(&file.path).map_err(|e| {
            self.err(format!(
                "invalid path {} in the files-seen log: {e}",
                file.path
            ))
        })
    }

    /// Reads one file just listed (a bounded read, no files-seen log) into
    /// batches of exactly `schema`.
    pub(super) async fn read_listed(
        &self,
        file: &ObjectMeta,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        self.read_path(file.location.clone(), None, file.size, schema)
            .await
    }

    /// Reads the file at `path` (number `seq` in the files-seen log, if
    /// logged; `size` bytes when it was listed).
    async fn read_path(
        &self,
        path: Path,
        seq: Option<u64>,
        size: u64,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        if self.format == FileFormat::Parquet {
            return self.read_parquet(&path, seq, schema).await;
        }
        let bytes = self.fetch(&path, seq).await?;
        self.check_size(&path, size, &bytes);
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

    fn check_size(&self, path: &Path, size: u64, bytes: &Bytes) {
        if bytes.len() as u64 != size {
            tracing::warn!(
                source = %self.description,
                file = %self.display(path),
                listed = size,
                now = bytes.len(),
                "file changed size after it was listed; files must not change once visible"
            );
        }
    }

    async fn read_parquet(
        &self,
        path: &Path,
        seq: Option<u64>,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        let footer = self.parquet_footer(path, seq, schema).await?;
        self.parquet_stream(&footer, None, None, schema)?
            .try_collect()
            .await
    }

    /// Reads a parquet file's footer (number `seq` in the files-seen log, if
    /// logged) and checks the whole file schema against `schema` up front, so
    /// even an empty file with the wrong columns is reported.
    pub(super) async fn parquet_footer(
        &self,
        path: &Path,
        seq: Option<u64>,
        schema: &SchemaRef,
    ) -> Result<ParquetFooter> {
        let name = self.display(path);
        let (reader, metadata) = self.parquet_metadata(path, seq).await?;
        let file_schema = Arc::clone(metadata.schema());
        let mut roots = Vec::new();
        for field in schema.fields() {
            match file_schema.index_of(field.name()) {
                Ok(i) => {
                    let actual = file_schema.field(i).data_type();
                    if !readable_as(actual, field.data_type()) {
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
        let metadata = decode_as(metadata, schema);
        Ok(ParquetFooter {
            reader,
            metadata,
            roots,
        })
    }

    /// Decodes a parquet file whose footer was read (its `row_groups`, or all
    /// of them; with `rows`, only that range of their rows, counted from the
    /// first row of the first group read) into batches of exactly `schema`,
    /// as a stream: rows are decoded as the stream is polled.
    pub(super) fn parquet_stream(
        &self,
        footer: &ParquetFooter,
        row_groups: Option<Vec<usize>>,
        rows: Option<Range<u64>>,
        schema: &SchemaRef,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let name = self.display(&footer.reader.path);
        let mask = ProjectionMask::roots(footer.metadata.parquet_schema(), footer.roots.clone());
        // The first row read, counted in the whole file.
        let in_groups = footer.row_group_rows();
        let first_group = row_groups
            .as_ref()
            .and_then(|groups| groups.first().copied())
            .unwrap_or(0);
        let first_row = in_groups.iter().take(first_group).sum::<u64>()
            + rows.as_ref().map_or(0, |rows| rows.start);
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
            footer.reader.clone(),
            footer.metadata.clone(),
        )
        .with_projection(mask)
        .with_batch_size(BATCH_SIZE);
        if let Some(rows) = rows {
            let total: u64 = match &row_groups {
                Some(groups) => groups.iter().filter_map(|&g| in_groups.get(g)).sum(),
                None => in_groups.iter().sum(),
            };
            let (start, end) = (rows.start.min(total), rows.end.clamp(rows.start, total));
            builder = builder.with_row_selection(RowSelection::from(vec![
                RowSelector::skip(start as usize),
                RowSelector::select((end - start) as usize),
                RowSelector::skip((total - end) as usize),
            ]));
        }
        if let Some(row_groups) = row_groups {
            builder = builder.with_row_groups(row_groups);
        }
        let stream = builder
            .build()
            .map_err(|e| self.err(format!("cannot read parquet file {name}: {e}")))?;
        let (this, schema) = (self.clone(), Arc::clone(schema));
        // The file's rows before the next batch, to name a bad value's row.
        let mut rows_before = first_row as usize;
        Ok(stream
            .map(move |batch| {
                let batch =
                    batch.map_err(|e| this.err(format!("cannot read parquet file {name}: {e}")))?;
                let at = rows_before;
                rows_before += batch.num_rows();
                conform(&batch, &schema).map_err(|m| this.misfit(&name, None, m.after(at)))
            })
            .boxed())
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
        self.conform_batches(
            &name,
            reader,
            schema,
            |e| self.csv_error(&name, bytes, &decode_schema, &projection, e),
            |row| {
                csv_walk(
                    bytes,
                    self.csv_builder(&decode_schema, &projection),
                    self.has_header,
                    Some(row),
                )
            },
            bytes,
        )
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
        self.conform_batches(
            &name,
            reader,
            schema,
            |original| match json_walk(bytes, &decode_schema, None) {
                Walk::Error(offset, message) => self.err(format!(
                    "{name}, line {}: {message}",
                    line_at(bytes, offset)
                )),
                _ => self.err(format!("{name}: {original}")),
            },
            |row| json_walk(bytes, &decode_schema, Some(row)),
            bytes,
        )
    }

    /// Collects the batches a CSV or JSON reader decodes, conformed to
    /// `schema`. A decoding error becomes `decode_error(e)`; a batch that
    /// does not fit the schema is reported with the line of the offending
    /// row, which `walk_to_row(n)` finds by decoding again up to row `n`.
    fn conform_batches(
        &self,
        name: &str,
        reader: impl Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
        schema: &SchemaRef,
        decode_error: impl Fn(ArrowError) -> TidemillError,
        walk_to_row: impl Fn(usize) -> Walk,
        bytes: &[u8],
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let mut rows_before = 0;
        for batch in reader {
            let batch = batch.map_err(&decode_error)?;
            match conform(&batch, schema) {
                Ok(conformed) => {
                    rows_before += batch.num_rows();
                    out.push(conformed);
                }
                Err(misfit) => {
                    let misfit = misfit.after(rows_before);
                    let line = match &misfit {
                        Misfit::Null { row, .. } | Misfit::Value { row, .. } => {
                            match walk_to_row(*row) {
                                Walk::Row(offset) => Some(line_at(bytes, offset)),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    return Err(self.misfit(name, line, misfit));
                }
            }
        }
        Ok(out)
    }

    /// The error for a file `name` that does not fit the source schema, at
    /// `line` of a text file where known (else a bad value is placed by its
    /// row in the file, counted from 1).
    fn misfit(&self, name: &str, line: Option<usize>, misfit: Misfit) -> TidemillError {
        let at = match (line, &misfit) {
            (Some(line), _) => format!("{name}, line {line}"),
            (None, Misfit::Value { row, .. }) => format!("{name}, row {}", row + 1),
            (None, _) => name.to_string(),
        };
        self.err(match misfit {
            Misfit::Missing(column) => {
                format!("{at}: column '{column}' is missing, and the source schema says it is not nullable")
            }
            Misfit::Type {
                column,
                actual,
                expected,
            } => format!(
                "{at}: column '{column}' has type {actual}, but the source schema expects {expected} (columns are \
                 converted only where no value can be lost: timestamps of any unit or zone, wider integers and \
                 floats, other string encodings)"
            ),
            Misfit::Value { column, detail, .. } => format!("{at}: column '{column}': {detail}"),
            Misfit::Null { column, .. } => {
                format!("{at}: column '{column}' is missing or null, but the source schema says it is not nullable")
            }
            Misfit::Other(message) => format!("{at}: does not match the source schema: {message}"),
        })
    }
}

/// The footer `metadata` set to decode each string or binary column the
/// source `schema` holds in another encoding (`Utf8View` for the file's
/// `Utf8`, say) straight into the source's, instead of decoding and then
/// casting. Left as it is if the parquet reader cannot decode the file's
/// columns that way (the batches are then cast).
fn decode_as(metadata: ArrowReaderMetadata, schema: &SchemaRef) -> ArrowReaderMetadata {
    let file_schema = metadata.schema();
    let mut changed = false;
    let fields: Vec<Field> = file_schema
        .fields()
        .iter()
        .map(|field| match schema.field_with_name(field.name()) {
            Ok(wanted)
                if wanted.data_type() != field.data_type()
                    && same_values(field.data_type(), wanted.data_type()) =>
            {
                changed = true;
                field
                    .as_ref()
                    .clone()
                    .with_data_type(wanted.data_type().clone())
            }
            _ => field.as_ref().clone(),
        })
        .collect();
    if !changed {
        return metadata;
    }
    let hint = Arc::new(Schema::new_with_metadata(
        fields,
        file_schema.metadata().clone(),
    ));
    let options = ArrowReaderOptions::new().with_schema(hint);
    ArrowReaderMetadata::try_new(Arc::clone(metadata.metadata()), options).unwrap_or(metadata)
}

/// Shapes `batch` into exactly `schema`: columns by name, in schema order,
/// converted to the schema's types where no value is lost (see
/// [`super::convert`]); a missing nullable column becomes nulls.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> std::result::Result<RecordBatch, Misfit> {
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match batch.schema().index_of(field.name()) {
            Ok(i) => {
                let column = Arc::clone(batch.column(i));
                if column.data_type() == field.data_type() {
                    column
                } else if readable_as(column.data_type(), field.data_type()) {
                    convert(&column, field.data_type()).map_err(|loss| match loss.row {
                        Some(row) => Misfit::Value {
                            column: field.name().clone(),
                            row,
                            detail: loss.detail,
                        },
                        None => {
                            Misfit::Other(format!("column '{}': {}", field.name(), loss.detail))
                        }
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
