//! A batch's files as partitions the engine reads while the batch runs.
//!
//! The batch's files are cut into pieces (whole files, or, when there are
//! fewer files than partitions, the row groups of parquet files, and row
//! ranges of row groups too big for one partition) and the pieces into
//! contiguous runs of about equal rows (parquet) or bytes (text), one run
//! per partition. A row range is read with a row selection over the file's
//! offset index, so each partition decodes only the pages its rows are on. Parquet footers are read and checked
//! before the batch starts, so a missing file, a file that is not parquet
//! or one with the wrong columns fails the batch up front, naming the file;
//! the rows are decoded as the plan pulls them.

use std::fmt;
use std::ops::Range;
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

/// The fewest rows a row group is cut into when one is too big for one
/// partition: a cut costs each column one page decoded on both sides.
const MIN_RANGE_ROWS: u64 = 65_536;

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
    /// A range of the rows of one row group of a parquet file.
    ParquetRows {
        footer: Arc<ParquetFooter>,
        row_group: usize,
        rows: Range<u64>,
    },
}

/// A unit the partitions are cut from, with its weight.
struct Unit {
    file: usize,
    /// The parquet row group, when files are split into row groups.
    row_group: Option<usize>,
    /// The range of the row group's rows, when it is cut into ranges.
    rows: Option<Range<u64>>,
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
        // A partition's share of the rows, when row groups are split.
        let share = rows
            .iter()
            .flatten()
            .sum::<u64>()
            .div_ceil(partitions as u64);
        let units: Vec<Unit> = rows
            .iter()
            .enumerate()
            .flat_map(|(file, groups)| {
                if split {
                    groups
                        .iter()
                        .enumerate()
                        .flat_map(|(g, &n)| row_group_units(file, g, n, share))
                        .collect::<Vec<_>>()
                } else {
                    vec![Unit {
                        file,
                        row_group: None,
                        rows: None,
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
                rows: None,
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

/// The units of row group `g` of `file`, of `n` rows: the whole group, or,
/// when it holds more than a partition's `share` of the batch's rows, about
/// `n / share` ranges of it (of at least [`MIN_RANGE_ROWS`] rows each).
fn row_group_units(file: usize, g: usize, n: u64, share: u64) -> Vec<Unit> {
    let ranges = n.div_ceil(share.max(1)).min(n / MIN_RANGE_ROWS).max(1);
    if ranges == 1 {
        return vec![Unit {
            file,
            row_group: Some(g),
            rows: None,
            weight: n,
        }];
    }
    (0..ranges)
        .map(|i| {
            let rows = n * i / ranges..n * (i + 1) / ranges;
            Unit {
                file,
                row_group: Some(g),
                weight: rows.end - rows.start,
                rows: Some(rows),
            }
        })
        .collect()
}

/// Cuts `units` (in order) into up to `n` contiguous runs of about equal
/// weight; units of no weight (empty row groups) are dropped.
fn cut(units: &[Unit], n: usize) -> Vec<&[Unit]> {
    let total: u64 = units.iter().map(|u| u.weight).sum();
    let mut runs = Vec::with_capacity(n);
    let (mut start, mut sum) = (0usize, 0u64);
    for (i, unit) in units.iter().enumerate() {
        sum += unit.weight;
        // Run k ends where k/n of the total falls before the middle of
        // the next unit: the boundary nearest that point.
        let k = runs.len() as u64 + 1;
        let next = units.get(i + 1).map_or(0, |u| u.weight);
        if k < n as u64 && (2 * sum + next) * n as u64 >= 2 * total * k {
            runs.push(&units[start..=i]);
            start = i + 1;
        }
    }
    runs.push(&units[start..]);
    runs.retain(|run| run.iter().any(|u| u.weight > 0));
    runs
}

/// The pieces of a run of parquet units: consecutive whole row groups of one
/// file become one piece, a range of a row group a piece of its own.
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
        if let (Some(row_group), Some(rows)) = (unit.row_group, &unit.rows) {
            flush(&mut current, &mut pieces);
            pieces.push(Piece::ParquetRows {
                footer: Arc::clone(&footers[unit.file]),
                row_group,
                rows: rows.clone(),
            });
            continue;
        }
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
                            reader.parquet_stream(&footer, row_groups, None, &schema)
                        }
                        Piece::ParquetRows {
                            footer,
                            row_group,
                            rows,
                        } => reader.parquet_stream(
                            &footer,
                            Some(vec![row_group]),
                            Some(rows),
                            &schema,
                        ),
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
                rows: None,
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
        // A run ends at the boundary nearest its share, not past it.
        assert_eq!(
            files(cut(&units(&[75, 75, 75, 75, 1]), 4)),
            vec![vec![0], vec![1], vec![2], vec![3, 4]]
        );
        // Every unit lands in exactly one run, in order.
        let weights = [7, 0, 3, 9, 1, 1, 4, 0, 2];
        let all: Vec<usize> = files(cut(&units(&weights), 3)).concat();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    fn ranges(units: &[Unit]) -> Vec<Option<Range<u64>>> {
        units.iter().map(|u| u.rows.clone()).collect()
    }

    #[test]
    fn row_groups_bigger_than_a_share_are_cut_into_ranges() {
        // Within a partition's share: whole.
        assert_eq!(ranges(&row_group_units(0, 3, 250_000, 250_000)), [None]);
        // Twice a share: two halves, weighed by their rows.
        let halves = row_group_units(1, 3, 500_000, 250_000);
        assert_eq!(ranges(&halves), [Some(0..250_000), Some(250_000..500_000)]);
        assert!(halves.iter().all(|u| u.file == 1 && u.row_group == Some(3)));
        assert!(halves.iter().all(|u| u.weight == 250_000));
        // Never into ranges of fewer than MIN_RANGE_ROWS rows.
        assert_eq!(ranges(&row_group_units(0, 0, 100_000, 10_000)), [None]);
        let cut = row_group_units(0, 0, 4 * MIN_RANGE_ROWS + 3, 1000);
        assert_eq!(cut.len(), 4);
        // The ranges cover the group once, in order.
        let bounds: Vec<Range<u64>> = ranges(&cut).into_iter().flatten().collect();
        assert_eq!(bounds[0].start, 0);
        assert!(bounds.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(bounds[3].end, 4 * MIN_RANGE_ROWS + 3);
    }

    #[test]
    fn runs_without_weight_are_dropped() {
        assert!(cut(&units(&[0, 0]), 2).is_empty());
        assert!(cut(&[], 2).is_empty());
    }
}
