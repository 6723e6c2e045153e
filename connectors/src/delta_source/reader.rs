//! Reading a table's data files (parquet, through the object store) as
//! the stream's rows, partition columns restored from the log's partition
//! values, and a batch's files as partitions the engine reads while the
//! batch runs.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::scalar::ScalarValue;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use parquet::arrow::ProjectionMask;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

use super::DeltaSourceError;
use super::log::DataFile;
use super::schema::partition_value;
use crate::file_source::StoreParquetReader;
use crate::file_source::convert::{convert, readable_as};

/// Rows per record batch read from a file.
const BATCH_SIZE: usize = 8192;
/// Files read at once by [`FileReader::read_all`].
const READ_CONCURRENCY: usize = 4;

type Result<T, E = DeltaSourceError> = std::result::Result<T, E>;

/// Reads single data files of one table into batches of the stream's
/// columns.
#[derive(Debug, Clone)]
pub(super) struct FileReader {
    /// The source's description, for the errors partitions yield.
    description: String,
    /// The table's URL, for messages.
    table: String,
    store: Arc<dyn ObjectStore>,
    /// The stream's columns.
    schema: SchemaRef,
    /// The table's partition columns.
    partition_columns: Arc<Vec<String>>,
}

impl FileReader {
    /// A reader of `table`'s files in `store`, partitioned by
    /// `partition_columns`, as rows of `schema`.
    pub fn new(
        description: String,
        table: String,
        store: Arc<dyn ObjectStore>,
        schema: SchemaRef,
        partition_columns: Vec<String>,
    ) -> Self {
        Self {
            description,
            table,
            store,
            schema,
            partition_columns: Arc::new(partition_columns),
        }
    }

    /// The stream's columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn file_error(&self, file: &DataFile, reason: String) -> DeltaSourceError {
        DeltaSourceError::DataFile {
            table: self.table.clone(),
            version: file.version,
            file: file.name.clone(),
            reason,
        }
    }

    /// The rows of `file`, as a stream of batches decoded as it is polled.
    pub fn read(&self, file: DataFile) -> BoxStream<'static, Result<RecordBatch>> {
        let this = self.clone();
        futures::stream::once(async move { this.open(file).await })
            .try_flatten()
            .boxed()
    }

    /// Every row of `files`, read a few files at a time, in file order.
    pub async fn read_all(&self, files: Vec<DataFile>) -> Result<Vec<RecordBatch>> {
        let per_file: Vec<Vec<RecordBatch>> = futures::stream::iter(files)
            .map(|file| {
                let this = self.clone();
                async move {
                    let (name, version) = (file.name.clone(), file.version);
                    let task = tokio::spawn(async move {
                        this.read(file).try_collect::<Vec<RecordBatch>>().await
                    });
                    task.await.map_err(|e| DeltaSourceError::DataFile {
                        table: self.table.clone(),
                        version,
                        file: name,
                        reason: format!("reading stopped: {e}"),
                    })?
                }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(per_file.into_iter().flatten().collect())
    }

    /// Opens `file`: reads its footer, checks its columns, and returns the
    /// stream of its rows as the stream's columns.
    async fn open(&self, file: DataFile) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        if file.deletion_vector {
            return Err(DeltaSourceError::Unsupported {
                table: self.table.clone(),
                feature: format!(
                    "deletion vectors (file '{}' of version {} has one)",
                    file.name, file.version
                ),
            });
        }
        // The partition columns' values, the same for every row.
        let mut constants: Vec<Option<ScalarValue>> =
            Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            if self.partition_columns.contains(field.name()) {
                let value = file
                    .partition_values
                    .get(field.name())
                    .and_then(|v| v.as_deref());
                let scalar = partition_value(value, field)
                    .map_err(|reason| self.file_error(&file, reason))?;
                constants.push(Some(scalar));
            } else {
                constants.push(None);
            }
        }
        let reader = StoreParquetReader::new(Arc::clone(&self.store), file.path.clone(), file.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| self.file_error(&file, format!("cannot read the parquet file: {e}")))?;
        let file_schema = Arc::clone(builder.schema());
        let mut roots = Vec::new();
        for (field, constant) in self.schema.fields().iter().zip(&constants) {
            if constant.is_some() {
                continue;
            }
            match file_schema.index_of(field.name()) {
                Ok(i) => roots.push(i),
                Err(_) if field.is_nullable() => {}
                Err(_) => {
                    return Err(self.file_error(
                        &file,
                        format!(
                            "column '{}' is missing, and the stream's column is not nullable",
                            field.name()
                        ),
                    ));
                }
            }
        }
        roots.sort_unstable();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let stream = builder
            .with_projection(mask)
            .with_batch_size(BATCH_SIZE)
            .build()
            .map_err(|e| self.file_error(&file, format!("cannot read the parquet file: {e}")))?;
        let this = self.clone();
        let mut rows_before = 0usize;
        Ok(stream
            .map(move |batch| {
                let batch = batch.map_err(|e| {
                    this.file_error(&file, format!("cannot read the parquet file: {e}"))
                })?;
                let at = rows_before;
                rows_before += batch.num_rows();
                this.conform(&file, &batch, &constants, at)
            })
            .boxed())
    }

    /// Shapes a batch read from `file` into the stream's columns: data
    /// columns by name, converted where no value is lost, partition
    /// columns from `constants`; `rows_before` rows of the file came
    /// before it (to name a bad row).
    fn conform(
        &self,
        file: &DataFile,
        batch: &RecordBatch,
        constants: &[Option<ScalarValue>],
        rows_before: usize,
    ) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (field, constant) in self.schema.fields().iter().zip(constants) {
            let column = match constant {
                Some(value) => value
                    .to_array_of_size(rows)
                    .map_err(|e| self.file_error(file, e.to_string()))?,
                None => match batch.column_by_name(field.name()) {
                    Some(column) => {
                        self.column_as(file, field.name(), column, field.data_type(), rows_before)?
                    }
                    None => new_null_array(field.data_type(), rows),
                },
            };
            if !field.is_nullable() && column.null_count() > 0 {
                let row = (0..rows).find(|&r| column.is_null(r)).unwrap_or(0);
                return Err(self.file_error(
                    file,
                    format!(
                        "row {}: column '{}' is null, and the stream's column is not nullable",
                        rows_before + row + 1,
                        field.name()
                    ),
                ));
            }
            columns.push(column);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), columns, &options)
            .map_err(|e| self.file_error(file, e.to_string()))
    }

    /// `column` (named `name` in `file`) as type `expected`.
    fn column_as(
        &self,
        file: &DataFile,
        name: &str,
        column: &ArrayRef,
        expected: &DataType,
        rows_before: usize,
    ) -> Result<ArrayRef> {
        let actual = column.data_type();
        if actual == expected {
            return Ok(Arc::clone(column));
        }
        if readable_as(actual, expected) {
            return convert(column, expected).map_err(|loss| {
                let at = loss
                    .row
                    .map(|r| format!("row {}: ", rows_before + r + 1))
                    .unwrap_or_default();
                self.file_error(file, format!("{at}column '{name}': {}", loss.detail))
            });
        }
        // A nested column whose parquet form differs only in the
        // nullability or names of its children.
        if actual.is_nested()
            && expected.is_nested()
            && arrow::compute::can_cast_types(actual, expected)
            && let Ok(cast) = arrow::compute::cast(column, expected)
        {
            return Ok(cast);
        }
        Err(self.file_error(
            file,
            format!(
                "column '{name}' has type {actual}, but the stream's column is {expected} \
                 (columns are converted only where no value can be lost)"
            ),
        ))
    }

    /// The partitions reading `files` as up to `partitions` streams: files
    /// are spread by size, each partition reading its files one after the
    /// other.
    pub fn partitions(
        &self,
        files: Vec<DataFile>,
        partitions: usize,
    ) -> Vec<Arc<dyn PartitionStream>> {
        spread(files, partitions.max(1))
            .into_iter()
            .filter(|files| !files.is_empty())
            .map(|files| {
                Arc::new(FilesPartition {
                    reader: self.clone(),
                    files,
                }) as Arc<dyn PartitionStream>
            })
            .collect()
    }

    /// The engine's form of an error of this reader.
    fn to_datafusion(&self, error: DeltaSourceError) -> DataFusionError {
        DataFusionError::from(error.into_tidemill(&self.description))
    }
}

/// Spreads `files` over `n` groups of about equal bytes (largest files
/// first, each to the lightest group so far); each group keeps the files'
/// order.
fn spread(files: Vec<DataFile>, n: usize) -> Vec<Vec<DataFile>> {
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(files[i].size));
    let mut load = vec![0u64; n];
    let mut group_of = vec![0usize; files.len()];
    for i in order {
        let lightest = (0..n).min_by_key(|&g| (load[g], g)).unwrap_or(0);
        load[lightest] += files[i].size.max(1);
        group_of[i] = lightest;
    }
    let mut groups: Vec<Vec<DataFile>> = (0..n).map(|_| Vec::new()).collect();
    for (file, group) in files.into_iter().zip(group_of) {
        groups[group].push(file);
    }
    groups
}

/// One partition of a batch (or of a bounded read): files read one after
/// the other.
#[derive(Debug)]
pub(super) struct FilesPartition {
    reader: FileReader,
    files: Vec<DataFile>,
}

impl FilesPartition {
    /// A partition reading `files` with `reader` (also when there are
    /// none: an empty partition).
    pub fn new(reader: FileReader, files: Vec<DataFile>) -> Self {
        Self { reader, files }
    }
}

impl PartitionStream for FilesPartition {
    fn schema(&self) -> &SchemaRef {
        self.reader.schema()
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let reader = self.reader.clone();
        let to_error = self.reader.clone();
        let batches = futures::stream::iter(self.files.clone())
            .map(move |file| reader.read(file))
            .flatten()
            .map_err(move |e| to_error.to_datafusion(e));
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(self.reader.schema()),
            batches,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> DataFile {
        DataFile {
            version: 0,
            path: object_store::path::Path::from(name),
            name: name.to_string(),
            size,
            partition_values: Default::default(),
            num_records: None,
            deletion_vector: false,
        }
    }

    #[test]
    fn files_are_spread_by_size_keeping_their_order() {
        let files = vec![file("a", 100), file("b", 10), file("c", 90), file("d", 5)];
        let groups = spread(files, 2);
        let names: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|f| f.name.as_str()).collect())
            .collect();
        // a (100) and c (90) first, then b to the lighter c, d to a.
        assert_eq!(names, vec![vec!["a", "d"], vec!["b", "c"]]);
        assert_eq!(spread(vec![file("a", 1)], 3)[0].len(), 1);
    }
}
