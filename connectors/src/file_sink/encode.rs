//! A data file's bytes in each format the files sink writes, with arrow's
//! own writers.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::FileFormat;

/// Rows taking at most this many bytes in memory are encoded on the
/// calling thread (a small batch's file takes well under a millisecond).
const INLINE_ENCODE_BYTES: usize = 1024 * 1024;

/// How a data file is encoded: the format and, for CSV, whether the file
/// starts with a header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Encoding {
    /// The file format.
    pub format: FileFormat,
    /// CSV: whether the first line names the columns.
    pub header: bool,
}

impl Encoding {
    /// The data files' name extension, with its dot: `.parquet`, `.json`
    /// or `.csv`.
    pub fn extension(self) -> &'static str {
        match self.format {
            FileFormat::Parquet => ".parquet",
            FileFormat::Json => ".json",
            FileFormat::Csv => ".csv",
        }
    }

    /// Encodes `batches` (of `schema`) as one file: parquet with snappy
    /// compression, JSON lines (one object per row; null fields left out,
    /// as Spark writes them), or CSV (comma-separated, values quoted where
    /// needed, null as an empty field). Rows taking more than
    /// [`INLINE_ENCODE_BYTES`] in memory are encoded off the async
    /// runtime's worker threads; fewer are encoded on the calling thread,
    /// where it takes less time than the hand-off to another thread would.
    pub async fn encode(
        self,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> std::result::Result<Bytes, String> {
        let size: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        if size <= INLINE_ENCODE_BYTES {
            return self.encode_now(schema, &batches);
        }
        tokio::task::spawn_blocking(move || self.encode_now(schema, &batches))
            .await
            .map_err(|e| format!("encoder task failed: {e}"))?
    }

    fn encode_now(
        self,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> std::result::Result<Bytes, String> {
        let text = |e: arrow::error::ArrowError| e.to_string();
        let buffer = match self.format {
            FileFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(props))
                    .map_err(|e| e.to_string())?;
                for batch in batches {
                    writer.write(batch).map_err(|e| e.to_string())?;
                }
                writer.into_inner().map_err(|e| e.to_string())?
            }
            FileFormat::Json => {
                let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
                for batch in batches {
                    writer.write(batch).map_err(text)?;
                }
                writer.finish().map_err(text)?;
                writer.into_inner()
            }
            FileFormat::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(self.header)
                    .build(Vec::new());
                for batch in batches {
                    writer.write(batch).map_err(text)?;
                }
                writer.into_inner()
            }
        };
        Ok(Bytes::from(buffer))
    }
}
