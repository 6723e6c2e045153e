//! Where a checkpoint's files are: the local file system, or an object
//! store (`s3://bucket/path`, with the `AWS_*` variables), and how the
//! inspection lists, sizes and reads them there.

use std::path::Path;
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt};
use tidemill_engine::LeaseRecord;
use tidemill_state::CheckpointDir;

use super::{LockState, StatusError, lock};

/// The file system a checkpoint is on. Paths are [`Path`]s either way: a
/// checkpoint on an object store is named by its URL
/// (`s3://bucket/chk/query`), which `Path::join` extends as a local path.
#[derive(Clone)]
pub(super) enum Files {
    /// The local file system.
    Local,
    /// An object store; `base` is the URL of its root (`s3://bucket`), the
    /// prefix of every path given.
    Store {
        store: Arc<dyn ObjectStore>,
        base: String,
    },
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local => f.write_str("Local"),
            Self::Store { base, .. } => f.debug_struct("Store").field("base", base).finish(),
        }
    }
}

fn io(path: &Path, error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StatusError {
    StatusError::Io {
        path: path.to_path_buf(),
        error: std::io::Error::other(error),
    }
}

impl Files {
    /// `path`'s path in the object store.
    fn object_path(&self, base: &str, path: &Path) -> object_store::path::Path {
        let text = path.to_string_lossy();
        let relative = text
            .strip_prefix(base)
            .unwrap_or(&text)
            .trim_start_matches('/');
        object_store::path::Path::from(relative)
    }

    /// The checkpoint directory `dir`.
    pub(super) fn checkpoint_dir(&self, dir: &Path) -> Result<CheckpointDir, StatusError> {
        match self {
            Self::Local => {
                let path =
                    object_store::path::Path::from_absolute_path(dir).map_err(|e| io(dir, e))?;
                Ok(CheckpointDir::new(
                    Arc::new(object_store::local::LocalFileSystem::new()),
                    path,
                ))
            }
            Self::Store { store, base } => Ok(CheckpointDir::new(
                Arc::clone(store),
                self.object_path(base, dir),
            )),
        }
    }

    /// Whether the file `path` exists.
    pub(super) async fn is_file(&self, path: &Path) -> bool {
        match self {
            Self::Local => path.is_file(),
            Self::Store { store, base } => store.head(&self.object_path(base, path)).await.is_ok(),
        }
    }

    /// Whether anything is under `dir`.
    pub(super) async fn exists(&self, dir: &Path) -> bool {
        match self {
            Self::Local => dir.exists(),
            Self::Store { store, base } => store
                .list_with_delimiter(Some(&self.object_path(base, dir)))
                .await
                .is_ok_and(|l| !l.objects.is_empty() || !l.common_prefixes.is_empty()),
        }
    }

    /// The names of the directories in `dir`, sorted (none if it does not
    /// exist).
    pub(super) async fn subdirectories(&self, dir: &Path) -> Result<Vec<String>, StatusError> {
        match self {
            Self::Local => local_subdirectories(dir),
            Self::Store { store, base } => {
                let listing = store
                    .list_with_delimiter(Some(&self.object_path(base, dir)))
                    .await
                    .map_err(|e| io(dir, e))?;
                let mut names: Vec<String> = listing
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .collect();
                names.sort();
                Ok(names)
            }
        }
    }

    /// The files under `dir`, recursively, and their bytes.
    pub(super) async fn disk_usage(&self, dir: &Path) -> Result<(u64, u64), StatusError> {
        match self {
            Self::Local => local_disk_usage(dir),
            Self::Store { store, base } => {
                let objects = list_recursively(store.as_ref(), &self.object_path(base, dir))
                    .await
                    .map_err(|e| io(dir, e))?;
                Ok((
                    objects.len() as u64,
                    objects.iter().map(|meta| meta.size).sum(),
                ))
            }
        }
    }

    /// Whether a run holds the checkpoint in `dir`: its OS lock on local
    /// disk; on an object store its lease (`lock`, see the engine's
    /// `lease`), held while it has not expired.
    pub(super) async fn lock_state(&self, dir: &Path) -> LockState {
        match self {
            Self::Local => lock::state(dir),
            Self::Store { store, base } => {
                let path = self.object_path(base, &dir.join("lock"));
                let bytes = match store.get(&path).await {
                    Ok(got) => match got.bytes().await {
                        Ok(bytes) => bytes,
                        Err(_) => return LockState::Unknown,
                    },
                    Err(object_store::Error::NotFound { .. }) => return LockState::Free,
                    Err(_) => return LockState::Unknown,
                };
                let Ok(record) = serde_json::from_slice::<LeaseRecord>(&bytes) else {
                    return LockState::Unknown;
                };
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                if record.expires_at_ms > now_ms {
                    LockState::Held {
                        pid: Some(record.pid),
                    }
                } else {
                    LockState::Free
                }
            }
        }
    }

    /// The files under `dir` (a source's private checkpoint directory),
    /// read into a new in-memory store at the same path, as a checkpoint
    /// directory; none for a local one (see `lag`).
    pub(super) async fn copy_to_memory(
        &self,
        dir: &Path,
    ) -> Option<std::io::Result<CheckpointDir>> {
        let Self::Store { store, base } = self else {
            return None;
        };
        let prefix = self.object_path(base, dir);
        let copy = async {
            let memory = Arc::new(object_store::memory::InMemory::new());
            let listed = list_recursively(store.as_ref(), &prefix)
                .await
                .map_err(std::io::Error::other)?;
            for meta in listed {
                let bytes = match store.get(&meta.location).await {
                    Ok(got) => got.bytes().await.map_err(std::io::Error::other)?,
                    Err(object_store::Error::NotFound { .. }) => continue,
                    Err(e) => return Err(std::io::Error::other(e)),
                };
                memory
                    .put(&meta.location, bytes.into())
                    .await
                    .map_err(std::io::Error::other)?;
            }
            let memory: Arc<dyn ObjectStore> = memory;
            Ok(CheckpointDir::new(memory, prefix.clone()))
        };
        Some(copy.await)
    }
}

/// Every object under `prefix`, listed a level at a time.
async fn list_recursively(
    store: &dyn ObjectStore,
    prefix: &object_store::path::Path,
) -> object_store::Result<Vec<object_store::ObjectMeta>> {
    let mut objects = Vec::new();
    let mut pending = vec![prefix.clone()];
    while let Some(prefix) = pending.pop() {
        let listing = store.list_with_delimiter(Some(&prefix)).await?;
        objects.extend(listing.objects);
        pending.extend(listing.common_prefixes);
    }
    Ok(objects)
}

/// The names of the directories in `dir` (none if it does not exist).
fn local_subdirectories(dir: &Path) -> Result<Vec<String>, StatusError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(StatusError::Io {
                path: dir.to_path_buf(),
                error,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The files under `dir`, recursively, and their bytes. A file removed
/// while being counted (a running query purging) is left out.
fn local_disk_usage(dir: &Path) -> Result<(u64, u64), StatusError> {
    let mut total = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(StatusError::Io { path: dir, error }),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total.0 += 1;
                total.1 += meta.len();
            }
        }
    }
    Ok(total)
}
