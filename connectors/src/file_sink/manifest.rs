//! The manifest of a files sink: one entry per committed batch, in
//! `<dir>/_tidemill_sink/<batch id>` (see [`FileSink`](super::FileSink) for
//! the layout and both format versions).

use arrow::datatypes::Schema;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tidemill_engine::Location;
use tidemill_state::{CheckpointDir, StateError, envelope};

use crate::FileFormat;

/// The sub-directory of the output directory holding the manifest.
pub(crate) const MANIFEST_DIR: &str = "_tidemill_sink";
/// The kind in the header of a manifest entry.
const MANIFEST_KIND: &str = "sink-manifest";
/// The format version of entries of unpartitioned parquet output (the
/// only kind of output before version 2): older builds read them.
const VERSION_1: u32 = 1;
/// The format version of entries that need its fields: another format than
/// parquet, or partitioned output.
const VERSION_2: u32 = 2;

/// One committed batch of a [`FileSink`](super::FileSink): the body of the
/// manifest entry `<dir>/_tidemill_sink/<batch_id>` (see
/// [`FileSink`](super::FileSink) for the layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManifestEntry {
    /// The micro-batch id.
    pub batch_id: u64,
    /// The data files the batch wrote, in order; empty when the batch had no
    /// rows.
    pub files: Vec<ManifestFile>,
    /// The schema of the batch's rows, partition columns included (in
    /// their place among the columns).
    pub schema: Schema,
    /// The data files' format (version 2; absent, as in version 1: parquet).
    #[serde(default = "parquet", skip_serializing_if = "is_parquet")]
    pub format: FileFormat,
    /// CSV files only: how they are laid out (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvLayout>,
    /// The partition columns, outermost directory first; empty when the
    /// output is not partitioned (version 2; absent: empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
}

/// How the CSV files of a [`ManifestEntry`] are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CsvLayout {
    /// Whether each file's first line names the columns.
    pub header: bool,
}

/// One data file listed in a [`ManifestEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManifestFile {
    /// The file's path relative to the output directory, `/`-separated:
    /// `part-<batch id>-<uuid>.<extension>`, under its partition's
    /// directories (`sym=a%2Fb/part-…`) in partitioned output.
    pub name: String,
    /// The file's size in bytes.
    pub size_bytes: u64,
    /// The number of rows in the file.
    pub num_rows: u64,
    /// Partitioned output: the values of the partition columns of every row
    /// in the file, in [`ManifestEntry::partition_by`] order, as text before
    /// escaping (`None`: null); the file itself does not hold these
    /// columns. Empty when the output is not partitioned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_values: Vec<Option<String>>,
}

impl ManifestEntry {
    /// The total number of rows the batch wrote.
    pub fn num_rows(&self) -> u64 {
        self.files.iter().map(|f| f.num_rows).sum()
    }

    /// The entry of batch `batch_id`, writing `files` of rows of `schema`
    /// in `format`.
    pub(crate) fn new(
        batch_id: u64,
        files: Vec<ManifestFile>,
        schema: Schema,
        format: FileFormat,
        csv: Option<CsvLayout>,
        partition_by: Vec<String>,
    ) -> Self {
        Self {
            batch_id,
            files,
            schema,
            format,
            csv,
            partition_by,
        }
    }

    /// The format version that holds this entry: 1 for unpartitioned
    /// parquet output, 2 otherwise.
    fn version(&self) -> u32 {
        if self.format == FileFormat::Parquet && self.csv.is_none() && self.partition_by.is_empty()
        {
            VERSION_1
        } else {
            VERSION_2
        }
    }
}

impl ManifestFile {
    /// A file listed in a manifest entry.
    pub(crate) fn new(
        name: String,
        size_bytes: u64,
        num_rows: u64,
        partition_values: Vec<Option<String>>,
    ) -> Self {
        Self {
            name,
            size_bytes,
            num_rows,
            partition_values,
        }
    }
}

fn parquet() -> FileFormat {
    FileFormat::Parquet
}

fn is_parquet(format: &FileFormat) -> bool {
    *format == FileFormat::Parquet
}

/// The manifest of the output directory at a location.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    dir: CheckpointDir,
}

impl Manifest {
    /// The manifest of the output directory `location`.
    pub fn new(location: &Location) -> Self {
        Self {
            dir: location.dir().child(MANIFEST_DIR),
        }
    }

    /// The directory holding the entries.
    pub fn dir(&self) -> &CheckpointDir {
        &self.dir
    }

    /// Whether batch `id` is committed (without reading its entry).
    pub async fn contains(&self, id: u64) -> Result<bool, StateError> {
        self.dir.exists(&id.to_string()).await
    }

    /// Commits `entry`: creates its file, in the oldest format version
    /// that holds it. Fails with [`StateError::AlreadyExists`] if the batch
    /// is committed already.
    pub async fn add(&self, entry: &ManifestEntry) -> Result<(), StateError> {
        self.dir
            .create(
                &entry.batch_id.to_string(),
                MANIFEST_KIND,
                entry.version(),
                entry,
            )
            .await
    }

    /// The entry of batch `id`, if committed; version 1 and 2 entries alike.
    pub async fn get(&self, id: u64) -> Result<Option<ManifestEntry>, StateError> {
        let path = self.dir.path(&id.to_string());
        let Some(bytes) = self.dir.get_bytes(&path).await? else {
            return Ok(None);
        };
        let version = header_version(&bytes);
        match version {
            Some(v @ (VERSION_1 | VERSION_2)) => {
                envelope::decode(&path, MANIFEST_KIND, v, &bytes).map(Some)
            }
            Some(other) => Err(StateError::Incompatible {
                path,
                reason: format!(
                    "format version {other} is not supported (this build reads versions \
                     {VERSION_1} and {VERSION_2})"
                ),
            }),
            // Not a manifest header: the envelope says what is wrong.
            None => envelope::decode(&path, MANIFEST_KIND, VERSION_2, &bytes).map(Some),
        }
    }

    /// The committed batch ids, ascending. Files whose names are not ids
    /// (temporary files of an interrupted write, say) are ignored.
    pub async fn ids(&self) -> Result<Vec<u64>, StateError> {
        let mut ids: Vec<u64> = self
            .dir
            .list_names()
            .await?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

/// The version in a manifest entry's header line
/// (`tidemill-sink-manifest v<N>`), if it has one.
fn header_version(bytes: &Bytes) -> Option<u32> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix(&format!("tidemill-{MANIFEST_KIND} v"))?
        .parse()
        .ok()
}
