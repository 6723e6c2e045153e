//! A directory of checkpoint files on an object store.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, path::Path,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Result, StateError, envelope};

/// A directory of checkpoint files on an [`ObjectStore`].
///
/// Writes are atomic: [`CheckpointDir::create`] is a put-if-absent (the
/// local file system implements it with a hard link, cloud stores with a
/// conditional put), [`CheckpointDir::overwrite`] a whole-object put (a
/// temp file and a rename locally). A reader therefore sees a file either
/// whole or not at all; a file that is damaged anyway (a disk fault, a
/// hand edit) is caught by the checksum in its [`envelope`].
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

impl CheckpointDir {
    /// A directory at `root` inside `store`.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> Self {
        Self { store, root }
    }

    /// The sub-directory `name` of this one.
    pub fn child(&self, name: &str) -> Self {
        Self {
            store: Arc::clone(&self.store),
            root: self.path(name),
        }
    }

    /// The object store holding this directory.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// This directory's path inside the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of the file `name` in this directory.
    pub fn path(&self, name: &str) -> Path {
        self.root.clone().join(name)
    }

    /// Writes `body` as file `name` unless it exists already, in which case
    /// it fails with [`StateError::AlreadyExists`] and leaves the file as it
    /// was.
    pub async fn create<T: Serialize>(
        &self,
        name: &str,
        kind: &str,
        version: u32,
        body: &T,
    ) -> Result<()> {
        let path = self.path(name);
        let bytes = envelope::encode(&path, kind, version, body)?;
        self.put_bytes(&path, bytes, PutMode::Create).await
    }

    /// Writes `body` as file `name`, atomically replacing any previous one.
    pub async fn overwrite<T: Serialize>(
        &self,
        name: &str,
        kind: &str,
        version: u32,
        body: &T,
    ) -> Result<()> {
        let path = self.path(name);
        let bytes = envelope::encode(&path, kind, version, body)?;
        self.put_bytes(&path, bytes, PutMode::Overwrite).await
    }

    /// Reads and validates file `name`; `Ok(None)` if it does not exist.
    pub async fn read<T: DeserializeOwned>(
        &self,
        name: &str,
        kind: &str,
        version: u32,
    ) -> Result<Option<T>> {
        let path = self.path(name);
        match self.get_bytes(&path).await? {
            Some(bytes) => envelope::decode(&path, kind, version, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Whether file `name` exists.
    pub async fn exists(&self, name: &str) -> Result<bool> {
        let path = self.path(name);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Deletes file `name`; deleting a missing file is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// The names of the files directly inside this directory (not of
    /// sub-directories), in no particular order.
    pub async fn list_names(&self) -> Result<Vec<String>> {
        let listing = match self.store.list_with_delimiter(Some(&self.root)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.root.clone(),
                    source,
                });
            }
        };
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_owned))
            .collect())
    }

    /// Removes every file under this directory, recursively.
    pub async fn delete_all(&self) -> Result<()> {
        let io = |source| StateError::Io {
            path: self.root.clone(),
            source,
        };
        let paths: Vec<Path> = self
            .store
            .list(Some(&self.root))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(io)?;
        for path in paths {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(StateError::Io { path, source }),
            }
        }
        Ok(())
    }

    /// Writes raw bytes at `path` with the given put mode: one buffer
    /// ([`Bytes`]) or several written one after the other (a
    /// [`PutPayload`] collected from them).
    pub async fn put_bytes(
        &self,
        path: &Path,
        bytes: impl Into<PutPayload>,
        mode: PutMode,
    ) -> Result<()> {
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self.store.put_opts(path, bytes.into(), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(StateError::AlreadyExists { path: path.clone() })
            }
            Err(source) => Err(StateError::Io {
                path: path.clone(),
                source,
            }),
        }
    }

    /// Reads the raw bytes at `path`; `Ok(None)` if there is no such file.
    pub async fn get_bytes(&self, path: &Path) -> Result<Option<Bytes>> {
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        match self.store.get(path).await {
            Ok(result) => result.bytes().await.map(Some).map_err(io),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(io(source)),
        }
    }

    /// Reads bytes `range` of the file at `path`, with the file's whole
    /// length; `Ok(None)` if there is no such file. A file that ends before
    /// `range` does gives fewer bytes (none if it ends before the range
    /// starts): the caller compares the length.
    pub async fn get_range(&self, path: &Path, range: Range<u64>) -> Result<Option<(Bytes, u64)>> {
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        match self.store.get_opts(path, opts).await {
            Ok(result) => {
                let len = result.meta.size;
                result.bytes().await.map(|b| Some((b, len))).map_err(io)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            // A range starting at or past the end: say how long the file
            // is instead.
            Err(source) if range.end > range.start => match self.store.head(path).await {
                Ok(meta) if meta.size <= range.start => Ok(Some((Bytes::new(), meta.size))),
                Ok(_) => Err(io(source)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(_) => Err(io(source)),
            },
            Err(source) => Err(io(source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{local::LocalFileSystem, memory::InMemory};

    async fn check_store(dir: CheckpointDir) {
        assert_eq!(dir.read::<u32>("a", "k", 1).await.unwrap(), None);
        dir.create("a", "k", 1, &5u32).await.unwrap();
        let err = dir.create("a", "k", 1, &6u32).await.unwrap_err();
        assert!(matches!(err, StateError::AlreadyExists { .. }), "{err}");
        assert_eq!(dir.read::<u32>("a", "k", 1).await.unwrap(), Some(5));
        dir.overwrite("a", "k", 1, &7u32).await.unwrap();
        assert_eq!(dir.read::<u32>("a", "k", 1).await.unwrap(), Some(7));
        dir.child("sub").create("b", "k", 1, &1u32).await.unwrap();
        assert_eq!(dir.list_names().await.unwrap(), vec!["a".to_string()]);
        assert!(dir.exists("a").await.unwrap());
        dir.delete("a").await.unwrap();
        dir.delete("a").await.unwrap();
        assert!(!dir.exists("a").await.unwrap());
        dir.delete_all().await.unwrap();
        assert!(!dir.child("sub").exists("b").await.unwrap());
    }

    #[tokio::test]
    async fn works_in_memory() {
        check_store(CheckpointDir::new(
            Arc::new(InMemory::new()),
            Path::from("chk"),
        ))
        .await;
    }

    #[tokio::test]
    async fn works_on_local_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = LocalFileSystem::new_with_prefix(tmp.path()).unwrap();
        check_store(CheckpointDir::new(Arc::new(fs), Path::from("chk"))).await;
    }
}
