//! A batch's files as partitions the engine reads while the batch runs.
//!
//! The batch's files are cut into pieces (whole files, or, when there are
//! fewer files than partitions, the row groups of parquet files) and the
//! pieces into contiguous runs of about equal rows (parquet) or bytes
//! (text), one run per partition. Parquet footers are read and checked
//! before the batch starts, so a missing file, a file that is not parquet
//! or one with the wrong columns fails the batch up front, naming the file;
//! the rows are decoded as the plan pulls them.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::{StreamExt, TryStreamExt};
use tidemill_engine::Result;

use super::FileFormat;
use super::reader::{FileReader, ParquetFooter};
use super::seen_log::SeenFile;

/// Footers read at once when a batch starts.
const FOOTER_CONCURRENCY: usize = 8;

/// Part of a batch: a whole file, or some row groups of a parquet file.
#[derive(Debug, Clone)]
enum Piece {
    /// A text file, decoded whole.
    Text(SeenFile),
    /// Row groups of a parquet file whose footer was read (`None`: all).
    Parquet {
        footer: Arc<ParquetFooter>,
        row_groups: Option<Vec<usize>>,
    },
}

/// A unit the partitions are cut from, with its weight.
struct Unit {
    file: usize,
    /// The parquet row group, when files are split into row groups.
    row_group: Option<usize>,
    weight: u64,
}

/// The partitions reading `files` (in log order) as up to `partitions`
/// streams of rows of `schema`.
pub(super) async fn partitions(
    reader: &FileReader,
    schema: &SchemaRef,
    files: Vec<SeenFile>,
    partitions: usize,
) -> Result<Vec<Arc<dyn PartitionStream>>> {
    let partitions = partitions.max(1);
    let runs: Vec<Vec<Piece>> = if reader.format() == FileFormat::Parquet {
        let footers: Vec<Arc<ParquetFooter>> = futures::stream::iter(files.clone())
            .map(|file| {
                let (reader, schema) = (reader.clone(), Arc::clone(schema));
                async move {
                    let path = reader.logged_path(&file)?;
                    let footer = reader
                        .parquet_footer(&path, Some(file.seq), &schema)
                        .await?;
                    Ok::<_, tidemill_engine::TidemillError>(Arc::new(footer))
                }
            })
            .buffered(FOOTER_CONCURRENCY)
            .try_collect()
            .await?;
        let rows: Vec<Vec<u64>> = footers.iter().map(|f| f.row_group_rows()).collect();
        let split = files.len() < partitions;
        let units: Vec<Unit> = rows
            .iter()
            .enumerate()
            .flat_map(|(file, groups)| {
                if split {
                    groups
                        .iter()
                        .enumerate()
                        .map(|(g, &n)| Unit {
                            file,
                            row_group: Some(g),
                            weight: n,
                        })
                        .collect::<Vec<_>>()
                } else {
                    vec![Unit {
                        file,
                        row_group: None,
                        weight: groups.iter().sum(),
                    }]
                }
            })
            .collect();
        cut(&units, partitions)
            .into_iter()
            .map(|run| parquet_pieces(run, &footers))
            .collect()
    } else {
        let units: Vec<Unit> = files
            .iter()
            .enumerate()
            .map(|(file, f)| Unit {
                file,
                row_group: None,
                weight: f.size.max(1),
            })
            .collect();
        cut(&units, partitions)
            .into_iter()
            .map(|run| {
                run.iter()
                    .map(|u| Piece::Text(files[u.file].clone()))
                    .collect()
            })
            .collect()
    };
    Ok(runs
        .into_iter()
        .filter(|run| !run.is_empty())
        .map(|pieces| {
            Arc::new(FilesPartition {
                reader: reader.clone(),
                schema: Arc::clone(schema),
                pieces,
            }) as Arc<dyn PartitionStream>
        })
        .collect())
}

/// Cuts `units` (in order) into up to `n` contiguous runs of about equal
/// weight; units of no weight (empty row groups) are dropped.
fn cut(units: &[Unit], n: usize) -> Vec<&[Unit]> {
    let total: u64 = units.iter().map(|u| u.weight).sum();
    let mut runs = Vec::with_capacity(n);
    let (mut start, mut sum) = (0usize, 0u64);
    for (i, unit) in units.iter().enumerate() {
        sum += unit.weight;
        // Run k ends once the weight so far reaches k/n of the total.
        let k = runs.len() as u64 + 1;
        if k < n as u64 && sum * n as u64 >= total * k {
            runs.push(&units[start..=i]);
            start = i + 1;
        }
    }
    runs.push(&units[start..]);
    runs.retain(|run| run.iter().any(|u| u.weight > 0));
    runs
}

/// The pieces of a run of parquet units: consecutive row groups of one
/// file become one piece.
fn parquet_pieces(run: &[Unit], footers: &[Arc<ParquetFooter>]) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut current: Option<(usize, Vec<usize>)> = None;
    let flush = |current: &mut Option<(usize, Vec<usize>)>, pieces: &mut Vec<Piece>| {
        if let Some((file, groups)) = current.take() {
            pieces.push(Piece::Parquet {
                footer: Arc::clone(&footers[file]),
                row_groups: Some(groups),
            });
        }
    };
    for unit in run.iter().filter(|u| u.weight > 0) {
        match unit.row_group {
            None => {
                flush(&mut current, &mut pieces);
                pieces.push(Piece::Parquet {
                    footer: Arc::clone(&footers[unit.file]),
                    row_groups: None,
                });
            }
            Some(g) => match &mut current {
                Some((file, groups)) if *file == unit.file => groups.push(g),
                _ => {
                    flush(&mut current, &mut pieces);
                    current = Some((unit.file, vec![g]));
                }
            },
        }
    }
    flush(&mut current, &mut pieces);
    pieces
}

/// One partition of a batch: its pieces, read one after another.
struct FilesPartition {
    reader: FileReader,
    schema: SchemaRef,
    pieces: Vec<Piece>,
}

impl fmt::Debug for FilesPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilesPartition")
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

impl PartitionStream for FilesPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (reader, schema) = (self.reader.clone(), Arc::clone(&self.schema));
        let batches = futures::stream::iter(self.pieces.clone())
            .then(move |piece| {
                let (reader, schema) = (reader.clone(), Arc::clone(&schema));
                async move {
                    match piece {
                        Piece::Text(file) => {
                            let batches = reader.read(&file, &schema).await?;
                            Ok(futures::stream::iter(batches.into_iter().map(Ok)).boxed())
                        }
                        Piece::Parquet { footer, row_groups } => {
                            reader.parquet_stream(&footer, row_groups, &schema)
                        }
                    }
                }
            })
            .try_flatten()
            .map_err(DataFusionError::from);
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(weights: &[u64]) -> Vec<Unit> {
        weights
            .iter()
            .enumerate()
            .map(|(file, &weight)| Unit {
                file,
                row_group: None,
                weight,
            })
            .collect()
    }

    fn files(runs: Vec<&[Unit]>) -> Vec<Vec<usize>> {
        runs.into_iter()
            .map(|run| run.iter().map(|u| u.file).collect())
            .collect()
    }

    #[test]
    fn cuts_contiguous_runs_of_about_equal_weight() {
        assert_eq!(
            files(cut(&units(&[1, 1, 1, 1]), 2)),
            vec![vec![0, 1], vec![2, 3]]
        );
        assert_eq!(
            files(cut(&units(&[5, 1, 1, 1]), 2)),
            vec![vec![0], vec![1, 2, 3]]
        );
        assert_eq!(
            files(cut(&units(&[1, 1, 1]), 8)),
            vec![vec![0], vec![1], vec![2]]
        );
        assert_eq!(files(cut(&units(&[3]), 2)), vec![vec![0]]);
        // Every unit lands in exactly one run, in order.
        let weights = [7, 0, 3, 9, 1, 1, 4, 0, 2];
        let all: Vec<usize> = files(cut(&units(&weights), 3)).concat();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn runs_without_weight_are_dropped() {
        assert!(cut(&units(&[0, 0]), 2).is_empty());
        assert!(cut(&[], 2).is_empty());
    }
}
