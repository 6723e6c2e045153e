//! What a Delta source skipped because it was gone, with
//! `fail_on_data_loss = false`.

use std::collections::HashSet;
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt};

use super::DeltaSourceError;
use super::log::{DataFile, TableLog};

/// Data files checked for existence at once before they are read.
const CHECK_CONCURRENCY: usize = 16;

/// Counts of what a [`DeltaSource`](super::DeltaSource) skipped because it
/// no longer existed when the stream came to read it (only with
/// [`DeltaSource::fail_on_data_loss`](super::DeltaSource::fail_on_data_loss)
/// off; otherwise that is an error). Each version or file is counted once,
/// however often its range is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataLossCounts {
    /// Versions whose log file was gone (their added rows are not known).
    pub versions: u64,
    /// Data files that were gone.
    pub files: u64,
    /// The rows of those files, as far as the log's statistics say.
    pub rows: u64,
}

/// The shared tally of a source and the streams opened from it.
#[derive(Debug, Default)]
pub(super) struct DataLoss {
    inner: Mutex<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    /// What was counted: `v<version>` for versions, store paths for files.
    counted: HashSet<String>,
    counts: DataLossCounts,
}

impl DataLoss {
    /// The counts so far.
    pub fn counts(&self) -> DataLossCounts {
        self.inner.lock().map(|t| t.counts).unwrap_or_default()
    }

    /// Counts version `version` of `table` (read by `source`) as skipped,
    /// saying why in a warning.
    pub fn version_skipped(&self, source: &str, table: &str, version: u64, reason: &str) {
        let Ok(mut tally) = self.inner.lock() else {
            return;
        };
        if tally.counted.insert(format!("v{version}")) {
            tally.counts.versions += 1;
            tracing::warn!(
                source,
                table,
                version,
                skipped_versions = tally.counts.versions,
                "data loss: skipping version {version} of {table}, whose log file is gone \
                 ({reason}); its rows are not streamed (fail_on_data_loss = false)"
            );
        }
    }

    /// Counts `file` of `table` (read by `source`) as skipped.
    pub fn file_skipped(&self, source: &str, table: &str, file: &DataFile) {
        let Ok(mut tally) = self.inner.lock() else {
            return;
        };
        if tally.counted.insert(file.path.to_string()) {
            tally.counts.files += 1;
            tally.counts.rows += file.num_records.unwrap_or(0);
            tracing::warn!(
                source,
                table,
                version = file.version,
                file = %file.name,
                rows = ?file.num_records,
                skipped_files = tally.counts.files,
                skipped_rows = tally.counts.rows,
                "data loss: skipping the data file {} of version {} of {table}, which is gone \
                 (vacuumed?); its rows are not streamed (fail_on_data_loss = false)",
                file.name,
                file.version
            );
        }
    }
}

/// `files` of `log`'s table without those that are gone: with
/// `fail_on_data_loss`, the first one gone is an error naming it;
/// otherwise those gone are counted in `loss` (for `source`) and skipped.
pub(super) async fn keep_existing(
    log: &TableLog,
    files: Vec<DataFile>,
    fail_on_data_loss: bool,
    loss: &DataLoss,
    source: &str,
) -> Result<Vec<DataFile>, DeltaSourceError> {
    let paths: Vec<DataFile> = files.clone();
    let present: Vec<bool> = futures::stream::iter(paths)
        .map(move |file| async move { log.file_exists(&file).await })
        .buffered(CHECK_CONCURRENCY)
        .try_collect()
        .await?;
    let mut out = Vec::with_capacity(files.len());
    for (file, present) in files.into_iter().zip(present) {
        if present {
            out.push(file);
        } else if fail_on_data_loss {
            return Err(DeltaSourceError::DataLoss {
                table: log.display().to_string(),
                version: file.version,
                what: "data file",
                file: file.name,
                reason: "the table was probably vacuumed".to_string(),
            });
        } else {
            loss.file_skipped(source, log.display(), &file);
        }
    }
    Ok(out)
}
