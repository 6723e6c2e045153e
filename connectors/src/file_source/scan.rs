//! A batch's files as partitions the engine reads while the batch runs.
//!
//! The batch's files are cut into contiguous runs of about equal size,
//! one run per partition: text files whole, by bytes; parquet files by
//! rows, a run starting or ending inside a row group where that evens the
//! runs out. A run's rows inside a row group are read with a row selection
//! over the file's offset index, so each partition decodes only the pages
//! its rows are on. Parquet footers are read and checked
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
/// partition: a cut costs each column at most one page decoded on both
/// sides, and parquet writers (parquet-rs, parquet-mr) cap a page at
/// 20 000 rows, so a piece of this many rows wastes at most about one
/// page's decoding per column. A 100 000-row file (one small file per
/// trigger) is still cut in two.
const MIN_RANGE_ROWS: u64 = 16_384;

/// Part of a batch: a whole file, or rows of a parquet file.
#[derive(Debug, Clone)]
enum Piece {
    /// A text file, decoded whole.
    Text(SeenFile),
    /// Rows of a parquet file whose footer was read: its row groups
    /// `row_groups`, and of their rows only `rows` (counted from the first
    /// group's first row) when the piece starts or ends inside a group.
    Parquet {
        footer: Arc<ParquetFooter>,
        row_groups: Vec<usize>,
        rows: Option<Range<u64>>,
    },
}

/// A text file the partitions are cut from, with its weight (bytes).
struct Unit {
    file: usize,
    weight: u64,
}

/// Rows of one row group of a parquet file, in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slice {
    file: usize,
    row_group: usize,
    rows: Range<u64>,
}

/// The footers of the parquet files `files`, in order, each checked
/// against `schema`.
pub(super) async fn footers(
    reader: &FileReader,
    schema: &SchemaRef,
    files: &[SeenFile],
) -> Result<Vec<Arc<ParquetFooter>>> {
    futures::stream::iter(files.to_vec())
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
        .await
}

/// The partitions reading `files` (in log order) as up to `partitions`
/// streams of rows of `schema`; for parquet files, with their `footers`
/// if already read (by [`footers`], over the same files).
pub(super) async fn partitions(
    reader: &FileReader,
    schema: &SchemaRef,
    files: Vec<SeenFile>,
    footers_read: Option<Vec<Arc<ParquetFooter>>>,
    partitions: usize,
) -> Result<Vec<Arc<dyn PartitionStream>>> {
    let partitions = partitions.max(1);
    let runs: Vec<Vec<Piece>> = if reader.format() == FileFormat::Parquet {
        let footers = match footers_read {
            Some(footers) if footers.len() == files.len() => footers,
            _ => footers(reader, schema, &files).await?,
        };
        let rows: Vec<Vec<u64>> = footers.iter().map(|f| f.row_group_rows()).collect();
        let cuttable: Vec<bool> = footers.iter().map(|f| f.has_offset_index()).collect();
        parquet_runs(&rows, &cuttable, partitions)
            .iter()
            .map(|run| parquet_pieces(run, &rows, &footers))
            .collect()
    } else {
        let units: Vec<Unit> = files
            .iter()
            .enumerate()
            .map(|(file, f)| Unit {
                file,
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

/// Cuts the rows of parquet files (`rows[file][row group]`: rows per row
/// group, files in order) into up to `n` contiguous runs of about equal
/// rows. Run `k` ends near row `k/n` of the total: inside a row group when
/// its file is `cuttable` (it has an offset index, so each side fetches
/// and decodes only its own pages) and both sides keep at least
/// [`MIN_RANGE_ROWS`] rows, else at the nearer edge of the group's rest.
/// Empty row groups are dropped.
fn parquet_runs(rows: &[Vec<u64>], cuttable: &[bool], n: usize) -> Vec<Vec<Slice>> {
    let total: u64 = rows.iter().flatten().sum();
    let n = n.max(1);
    let mut runs: Vec<Vec<Slice>> = vec![Vec::new()];
    let mut placed = 0u64;
    for (file, groups) in rows.iter().enumerate() {
        for (row_group, &len) in groups.iter().enumerate() {
            let mut start = 0;
            while start < len {
                // Where the current run ends; the last one takes the rest.
                let end_of_run = match runs.len() {
                    k if k < n => total * k as u64 / n as u64,
                    _ => u64::MAX,
                };
                let room = end_of_run.saturating_sub(placed);
                let left = len - start;
                let take = if left <= room {
                    left
                } else if cuttable.get(file).copied().unwrap_or(false)
                    && room >= MIN_RANGE_ROWS
                    && left - room >= MIN_RANGE_ROWS
                {
                    // The boundary falls inside the group: cut it there.
                    room
                } else if 2 * room >= left {
                    left
                } else {
                    0
                };
                if take > 0 {
                    let run = runs.last_mut().expect("there is always a run");
                    run.push(Slice {
                        file,
                        row_group,
                        rows: start..start + take,
                    });
                    (start, placed) = (start + take, placed + take);
                }
                if take < left || placed >= end_of_run {
                    runs.push(Vec::new());
                }
            }
        }
    }
    runs.retain(|run| !run.is_empty());
    runs
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

/// The pieces of a run of parquet rows: one per file, its row groups and,
/// when the run starts or ends inside one, the range of their rows.
fn parquet_pieces(run: &[Slice], rows: &[Vec<u64>], footers: &[Arc<ParquetFooter>]) -> Vec<Piece> {
    run.chunk_by(|a, b| a.file == b.file)
        .map(|slices| {
            let (first, last) = (&slices[0], &slices[slices.len() - 1]);
            let in_groups = &rows[first.file];
            // Rows of the piece's groups before its last one.
            let before_last: u64 = slices[..slices.len() - 1]
                .iter()
                .map(|s| in_groups[s.row_group])
                .sum();
            let whole = first.rows.start == 0 && last.rows.end == in_groups[last.row_group];
            Piece::Parquet {
                footer: Arc::clone(&footers[first.file]),
                row_groups: slices.iter().map(|s| s.row_group).collect(),
                rows: (!whole).then(|| first.rows.start..before_last + last.rows.end),
            }
        })
        .collect()
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
                        Piece::Parquet {
                            footer,
                            row_groups,
                            rows,
                        } => reader.parquet_stream(&footer, Some(row_groups), rows, &schema),
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
            .map(|(file, &weight)| Unit { file, weight })
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

    /// Rows per run of `parquet_runs`.
    fn run_rows(runs: &[Vec<Slice>]) -> Vec<u64> {
        runs.iter()
            .map(|run| run.iter().map(|s| s.rows.end - s.rows.start).sum())
            .collect()
    }

    /// The runs of files that all have an offset index.
    fn runs_of(rows: &[Vec<u64>], n: usize) -> Vec<Vec<Slice>> {
        parquet_runs(rows, &vec![true; rows.len()], n)
    }

    #[test]
    fn a_small_file_is_cut_in_two_only_with_an_offset_index() {
        // One 100 000-row row group (one small file per trigger) on two
        // partitions: two halves, when the pages can be found.
        let runs = parquet_runs(&[vec![100_000]], &[true], 2);
        assert_eq!(run_rows(&runs), [50_000, 50_000]);
        // Without an offset index both sides would decode the whole
        // column chunks: the group stays whole.
        let runs = parquet_runs(&[vec![100_000]], &[false], 2);
        assert_eq!(run_rows(&runs), [100_000]);
        // Two files, only the second with an index: the boundary falls in
        // the first, which is not cut, so it moves to the file's end.
        let runs = parquet_runs(&[vec![100_000], vec![20_000]], &[false, true], 2);
        assert_eq!(run_rows(&runs), [100_000, 20_000]);
    }

    #[test]
    fn parquet_rows_are_cut_into_even_runs_inside_row_groups() {
        const M: u64 = MIN_RANGE_ROWS;
        // One big group on two partitions: its two halves.
        let runs = runs_of(&[vec![8 * M]], 2);
        assert_eq!(
            runs,
            [
                vec![Slice {
                    file: 0,
                    row_group: 0,
                    rows: 0..4 * M
                }],
                vec![Slice {
                    file: 0,
                    row_group: 0,
                    rows: 4 * M..8 * M
                }],
            ]
        );
        // Five one-group files on two partitions: the third is shared.
        let five = vec![vec![8 * M]; 5];
        let runs = runs_of(&five, 2);
        assert_eq!(run_rows(&runs), [20 * M, 20 * M]);
        assert_eq!(runs[0][2].rows, 0..4 * M);
        assert_eq!(runs[1][0].rows, 4 * M..8 * M);
        // Many files fall on run boundaries: none is cut.
        let runs = runs_of(&vec![vec![M]; 20], 2);
        assert!(runs.iter().flatten().all(|s| s.rows == (0..M)));
        assert_eq!(run_rows(&runs), [10 * M, 10 * M]);
        // A cut never leaves fewer than MIN_RANGE_ROWS on a side: the
        // boundary moves to the nearer edge.
        let runs = runs_of(&[vec![M / 2], vec![M]], 2);
        assert_eq!(run_rows(&runs), [M / 2, M]);
        let runs = runs_of(&[vec![M], vec![M / 2]], 2);
        assert_eq!(run_rows(&runs), [M, M / 2]);
        let runs = runs_of(&[vec![10, 20, 30]], 8);
        assert!(runs.iter().flatten().all(|s| s.rows.start == 0));
        // Every row lands in exactly one run, in order; empty groups are
        // dropped; never more runs than partitions.
        let rows = vec![vec![3 * M, 0, 5 * M + 7], vec![0], vec![M + 1, 9 * M]];
        for n in 1..=6 {
            let runs = runs_of(&rows, n);
            assert!(runs.len() <= n && runs.iter().all(|r| !r.is_empty()));
            let slices: Vec<Slice> = runs.concat();
            let mut expected = (0, 0, 0);
            for s in &slices {
                if (s.file, s.row_group) != (expected.0, expected.1) {
                    assert_eq!(expected.2, 0, "{s:?} after a partial group");
                }
                assert_eq!(s.rows.start, expected.2, "{s:?}");
                let len = rows[s.file][s.row_group];
                expected = match s.rows.end {
                    end if end == len => (s.file, s.row_group + 1, 0),
                    end => (s.file, s.row_group, end),
                };
            }
            assert_eq!(
                run_rows(&runs).iter().sum::<u64>(),
                rows.iter().flatten().sum::<u64>()
            );
        }
    }

    #[test]
    fn runs_without_weight_are_dropped() {
        assert!(cut(&units(&[0, 0]), 2).is_empty());
        assert!(cut(&[], 2).is_empty());
    }
}
