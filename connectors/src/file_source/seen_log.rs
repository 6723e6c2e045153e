//! The files-seen log: which files a [`FileSource`](super::FileSource) has admitted, in order,
//! kept write-ahead in the source's checkpoint directory.

use std::collections::HashSet;

use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};
use tidemill_engine::{Location, Result, TidemillError};
use tidemill_state::{CheckpointDir, StateError};

/// Kind and format version of a files-seen log file.
const SEEN_KIND: &str = "file-source-seen";
const SEEN_VERSION: u32 = 1;
/// Kind and format version of the source's metadata file.
pub(super) const META_KIND: &str = "file-source-metadata";
pub(super) const META_VERSION: u32 = 1;

/// The `metadata` file in the source's checkpoint directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SourceMetadata {
    pub(super) format: String,
    pub(super) url: String,
}

/// One file in the files-seen log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct SeenFile {
    /// The file's position in the log (0-based).
    pub(super) seq: u64,
    /// The file's path inside its object store.
    pub(super) path: String,
    /// Its size when it was logged.
    pub(super) size: u64,
    /// Its modification time when it was logged (RFC 3339).
    last_modified: String,
}

/// One file of the files-seen log: a run of consecutive entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SeenLogFile {
    files: Vec<SeenFile>,
}

/// The files-seen log, loaded in memory.
#[derive(Debug)]
pub(super) struct SeenLog {
    pub(super) dir: CheckpointDir,
    pub(super) files: Vec<SeenFile>,
    paths: HashSet<String>,
}

impl SeenLog {
    /// Loads every log file in `dir`, checking that they hold consecutive
    /// sequence numbers.
    pub(super) async fn load(dir: CheckpointDir, description: &str) -> Result<Self> {
        let mut ids: Vec<u64> = dir
            .list_names()
            .await?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut log = Self {
            dir,
            files: Vec::new(),
            paths: HashSet::new(),
        };
        for id in ids {
            let name = id.to_string();
            let entry: SeenLogFile = log
                .dir
                .read(&name, SEEN_KIND, SEEN_VERSION)
                .await?
                .ok_or_else(|| {
                    TidemillError::source(
                        description,
                        format!(
                            "files-seen log file {} vanished while being read",
                            log.dir.path(&name)
                        ),
                    )
                })?;
            log.append(&name, entry)?;
        }
        Ok(log)
    }

    fn corrupt(&self, name: &str, reason: String) -> TidemillError {
        TidemillError::Checkpoint(StateError::Corrupt {
            path: self.dir.path(name),
            reason,
        })
    }

    /// Adds the entries of log file `name` to the in-memory log.
    fn append(&mut self, name: &str, entry: SeenLogFile) -> Result<()> {
        if name.parse::<u64>().ok() != Some(self.len()) {
            return Err(self.corrupt(
                name,
                format!(
                    "files-seen log file starts at sequence number {name} but the log before it holds {} files \
                     (a log file is missing)",
                    self.len()
                ),
            ));
        }
        for file in entry.files {
            if file.seq != self.len() {
                return Err(self.corrupt(
                    name,
                    format!(
                        "entry for {} has sequence number {}, expected {}",
                        file.path,
                        file.seq,
                        self.len()
                    ),
                ));
            }
            if !self.paths.insert(file.path.clone()) {
                return Err(self.corrupt(name, format!("file {} is logged twice", file.path)));
            }
            self.files.push(file);
        }
        Ok(())
    }

    pub(super) fn len(&self) -> u64 {
        self.files.len() as u64
    }

    pub(super) fn contains(&self, path: &str) -> bool {
        self.paths.contains(path)
    }

    /// Appends `new` files durably (write-ahead), then in memory.
    pub(super) async fn add(&mut self, new: Vec<ObjectMeta>, description: &str) -> Result<()> {
        let first = self.len();
        let name = first.to_string();
        let entry = SeenLogFile {
            files: new
                .into_iter()
                .enumerate()
                .map(|(i, meta)| SeenFile {
                    seq: first + i as u64,
                    path: meta.location.to_string(),
                    size: meta.size,
                    last_modified: meta
                        .last_modified
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                })
                .collect(),
        };
        match self
            .dir
            .create(&name, SEEN_KIND, SEEN_VERSION, &entry)
            .await
        {
            Ok(()) => self.append(&name, entry),
            Err(StateError::AlreadyExists { .. }) => {
                // An earlier attempt of ours may have been written although it
                // reported an error; whatever is on disk is the log's truth.
                let existing: SeenLogFile = self
                    .dir
                    .read(&name, SEEN_KIND, SEEN_VERSION)
                    .await?
                    .ok_or_else(|| self.corrupt(&name, "exists but cannot be read".into()))?;
                tracing::warn!(
                    source = description,
                    file = %self.dir.path(&name),
                    "files-seen log file already existed; adopting it (is another query using this checkpoint?)"
                );
                self.append(&name, existing)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Lists the files under `location` that are not hidden by the `.`/`_` rule.
pub(super) async fn list_visible(
    location: &Location,
) -> std::result::Result<Vec<ObjectMeta>, object_store::Error> {
    let prefix = location.path();
    let listed: Vec<ObjectMeta> = match location.store().list(Some(prefix)).try_collect().await {
        Ok(listed) => listed,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(listed
        .into_iter()
        .filter(|meta| match meta.location.prefix_match(prefix) {
            Some(mut parts) => !parts.any(|part| {
                let part = part.as_ref();
                part.starts_with('.') || part.starts_with('_')
            }),
            None => false,
        })
        .collect())
}

/// Orders files by (last modified, path).
pub(super) fn sort_files(files: &mut [ObjectMeta]) {
    files.sort_by(|a, b| {
        a.last_modified
            .cmp(&b.last_modified)
            .then_with(|| a.location.as_ref().cmp(b.location.as_ref()))
    });
}
