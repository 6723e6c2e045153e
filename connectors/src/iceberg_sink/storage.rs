//! The `iceberg` crate's file I/O on the table's object store.
//!
//! iceberg 0.10 reads and writes manifests, manifest lists (and, for the
//! REST catalog, table metadata) through its `FileIO`, whose backends are
//! pluggable: a [`Storage`] made by a [`StorageFactory`]. The crate's own
//! cloud backends come with its `storage-*` features and opendal; this
//! build has none of them. Instead [`ObjectStoreStorage`] implements
//! `Storage` on the `object_store::ObjectStore` the sink resolved for the
//! table's location (the local file system for a path or `file://` URL,
//! the bucket's S3 client for `s3://bucket/path`, configured by the
//! `AWS_*` variables or the sink's `aws_*` options as every other
//! Tidemill location on S3), so every file of a table — data files
//! (written by the sink itself with the workspace's parquet writer),
//! manifests, manifest lists and metadata — goes through one client.
//!
//! Paths iceberg hands the storage are URLs of that store
//! (`s3://bucket/key`, `file:///dir/file`; a bare absolute path is taken
//! as a local file); a URL of another scheme or bucket is refused, naming
//! it.
//!
//! **Serialization.** iceberg's `Storage` and `StorageFactory` traits are
//! serializable (with `typetag`), for engines that ship a `FileIO` to
//! other processes. What serializes here is which store the storage
//! answers for (its scheme and bucket), never the store itself: an S3
//! client's configuration holds credentials. A deserialized storage of
//! the local file system works (it opens the local file system again); one
//! of any other store has no client, and each of its operations fails
//! with an error saying so. The sink itself never serializes its storage.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileIO, FileIOBuilder, FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use iceberg::{Error, ErrorKind};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

/// The object store holding a table (its `file://` or `s3://bucket`
/// root), as an iceberg [`Storage`]. See the module docs, also for how it
/// serializes.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct ObjectStoreStorage {
    /// The scheme of the URLs the store holds: `file`, `s3`, …
    scheme: String,
    /// Their authority: the bucket; empty for `file`.
    authority: String,
    /// The store; `None` once deserialized (see the module docs).
    #[serde(skip)]
    store: Option<Arc<dyn ObjectStore>>,
}

impl std::fmt::Debug for ObjectStoreStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreStorage")
            .field("root", &self.root())
            .field("has_store", &self.store.is_some())
            .finish()
    }
}

/// An object store's failure while `doing` something to `location`, as an
/// iceberg error; the object store's error stays its source, so the sink
/// can tell a transient one.
fn store_error(doing: &str, location: &str, e: object_store::Error) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{doing} {location}: {e}")).with_source(e)
}

impl ObjectStoreStorage {
    /// The local file system (paths and `file://` URLs).
    pub(crate) fn local() -> Self {
        Self {
            scheme: "file".to_string(),
            authority: String::new(),
            store: Some(Arc::new(LocalFileSystem::new())),
        }
    }

    /// `store`, which holds the URLs of `url`'s scheme and authority
    /// (for `s3://bucket/path`: the bucket's objects).
    pub(crate) fn new(url: &url::Url, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            scheme: url.scheme().to_string(),
            authority: url.authority().to_string(),
            store: Some(store),
        }
    }

    /// Whether the store is the local file system.
    pub(crate) fn is_local(&self) -> bool {
        self.scheme == "file"
    }

    /// `s3://bucket`, `file://`: what the store answers for.
    fn root(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// The store, or why there is none.
    pub(crate) fn store(&self) -> Result<Arc<dyn ObjectStore>, Error> {
        match &self.store {
            Some(store) => Ok(Arc::clone(store)),
            None if self.is_local() => Ok(Arc::new(LocalFileSystem::new())),
            None => Err(Error::new(
                ErrorKind::FeatureUnsupported,
                format!(
                    "this file I/O of {} was deserialized, and its object store is not \
                     serialized (its client's configuration holds credentials): build the \
                     FileIO in the process that uses it",
                    self.root()
                ),
            )),
        }
    }

    /// The path in the store of `location`: a URL of the store, or (for
    /// the local file system) an absolute path. The message says why not.
    pub(crate) fn path(&self, location: &str) -> Result<Path, String> {
        let url = if self.is_local() && location.starts_with('/') {
            url::Url::from_file_path(location)
                .map_err(|()| format!("'{location}' is not an absolute path"))?
        } else {
            url::Url::parse(location).map_err(|e| format!("'{location}' is not a URL: {e}"))?
        };
        if url.scheme() != self.scheme || url.authority() != self.authority {
            return Err(format!(
                "'{location}' is not in the table's object store ({}/…)",
                self.root()
            ));
        }
        Path::from_url_path(url.path()).map_err(|e| format!("'{location}': {e}"))
    }

    /// [`Self::path`] as an iceberg error.
    fn object_path(&self, location: &str) -> Result<Path, Error> {
        self.path(location)
            .map_err(|reason| Error::new(ErrorKind::DataInvalid, reason))
    }

    /// An iceberg `FileIO` on this storage.
    pub(crate) fn file_io(&self) -> FileIO {
        FileIOBuilder::new(Arc::new(ObjectStoreStorageFactory {
            storage: self.clone(),
        }))
        .build()
    }
}

#[async_trait]
#[typetag::serde(name = "TidemillObjectStoreStorage")]
impl Storage for ObjectStoreStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let location = self.object_path(path)?;
        match self.store()?.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error("looking for", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let location = self.object_path(path)?;
        let meta = self
            .store()?
            .head(&location)
            .await
            .map_err(|e| store_error("reading the size of", path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let location = self.object_path(path)?;
        let store = self.store()?;
        let got = store
            .get(&location)
            .await
            .map_err(|e| store_error("reading", path, e))?;
        got.bytes()
            .await
            .map_err(|e| store_error("reading", path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        Ok(Box::new(RangeReader {
            store: self.store()?,
            location: self.object_path(path)?,
            url: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let location = self.object_path(path)?;
        self.store()?
            .put(&location, PutPayload::from(bs))
            .await
            .map_err(|e| store_error("writing", path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        Ok(Box::new(BufferedWriter {
            store: self.store()?,
            location: self.object_path(path)?,
            url: path.to_string(),
            buffer: Some(Vec::new()),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let location = self.object_path(path)?;
        match self.store()?.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("deleting", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let prefix = self.object_path(path)?;
        let store = self.store()?;
        let listed = store
            .list(Some(&prefix))
            .filter_map(|entry| async move {
                match entry {
                    Ok(meta) => Some(Ok(meta.location)),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed();
        let mut deleted = store.delete_stream(listed);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error("deleting the files under", path, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        self.object_path(path)?;
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        self.object_path(path)?;
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Reads byte ranges of one object.
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    location: Path,
    url: String,
}

#[async_trait]
impl FileRead for RangeReader {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.location, range)
            .await
            .map_err(|e| store_error("reading", &self.url, e))
    }
}

/// Collects a file's bytes and writes the object with one put when closed,
/// so a writer that stops before closing leaves nothing. What iceberg
/// writes this way are manifests and manifest lists: kilobytes to a few
/// megabytes, well within one put.
struct BufferedWriter {
    store: Arc<dyn ObjectStore>,
    location: Path,
    url: String,
    /// `None` once closed.
    buffer: Option<Vec<u8>>,
}

fn closed(url: &str) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{url} is already closed"))
}

#[async_trait]
impl FileWrite for BufferedWriter {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let buffer = self.buffer.as_mut().ok_or_else(|| closed(&self.url))?;
        buffer.extend_from_slice(&bs);
        Ok(())
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let buffer = self.buffer.take().ok_or_else(|| closed(&self.url))?;
        self.store
            .put(&self.location, PutPayload::from(buffer))
            .await
            .map_err(|e| store_error("writing", &self.url, e))?;
        Ok(())
    }
}

/// Makes the [`ObjectStoreStorage`] it holds, whatever the `FileIO`'s
/// properties: the store is configured where Tidemill resolves the
/// table's location (the `AWS_*` variables, the sink's `aws_*` options),
/// not by iceberg's `s3.*` properties. Serializes as the storage does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ObjectStoreStorageFactory {
    storage: ObjectStoreStorage,
}

#[typetag::serde(name = "TidemillObjectStoreStorageFactory")]
impl StorageFactory for ObjectStoreStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(self.storage.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn memory() -> (ObjectStoreStorage, Arc<dyn ObjectStore>) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let url = url::Url::parse("s3://lake/t").unwrap();
        (ObjectStoreStorage::new(&url, Arc::clone(&store)), store)
    }

    #[tokio::test]
    async fn file_io_reads_and_writes_the_store() {
        let (storage, store) = memory();
        let io = storage.file_io();
        let output = io.new_output("s3://lake/t/metadata/m.avro").unwrap();
        let mut writer = output.writer().await.unwrap();
        writer.write(Bytes::from_static(b"hello ")).await.unwrap();
        assert!(
            !io.exists("s3://lake/t/metadata/m.avro").await.unwrap(),
            "nothing before close"
        );
        writer.write(Bytes::from_static(b"world")).await.unwrap();
        writer.close().await.unwrap();
        assert!(writer.close().await.is_err(), "closed twice");
        let got = store
            .get(&Path::from("t/metadata/m.avro"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], b"hello world");

        let input = io.new_input("s3://lake/t/metadata/m.avro").unwrap();
        assert_eq!(input.metadata().await.unwrap().size, 11);
        assert_eq!(&input.read().await.unwrap()[..], b"hello world");
        let reader = input.reader().await.unwrap();
        assert_eq!(&reader.read(6..11).await.unwrap()[..], b"world");

        io.new_output("s3://lake/t/data/a")
            .unwrap()
            .write(Bytes::from_static(b"a"))
            .await
            .unwrap();
        io.delete_prefix("s3://lake/t/metadata").await.unwrap();
        assert!(!io.exists("s3://lake/t/metadata/m.avro").await.unwrap());
        assert!(io.exists("s3://lake/t/data/a").await.unwrap());
        io.delete("s3://lake/t/data/a").await.unwrap();
        io.delete("s3://lake/t/data/a").await.unwrap();
        assert!(!io.exists("s3://lake/t/data/a").await.unwrap());
    }

    #[test]
    fn paths_outside_the_store_are_refused() {
        let (storage, _) = memory();
        let io = storage.file_io();
        let err = io.new_input("s3://other/t/x").unwrap_err().to_string();
        assert!(
            err.contains("'s3://other/t/x' is not in the table's object store (s3://lake/…)"),
            "{err}"
        );
        assert!(io.new_input("file:///tmp/x").is_err());
        assert!(io.new_input("/tmp/x").is_err());
        let local = ObjectStoreStorage::local();
        assert_eq!(local.path("/tmp/a b/x").unwrap(), Path::from("tmp/a b/x"));
        assert_eq!(
            local.path("file:///tmp/a%20b/x").unwrap(),
            Path::from("tmp/a b/x")
        );
        assert!(local.path("s3://lake/x").is_err());
    }

    #[tokio::test]
    async fn serialized_it_names_its_store_and_keeps_no_client() {
        let (storage, _) = memory();
        let json = serde_json::to_string(&storage as &dyn Storage).unwrap();
        assert!(json.contains("TidemillObjectStoreStorage"), "{json}");
        assert!(json.contains("\"lake\""), "{json}");
        let back: Box<dyn Storage> = serde_json::from_str(&json).unwrap();
        let err = back.read("s3://lake/t/x").await.unwrap_err().to_string();
        assert!(err.contains("deserialized"), "{err}");
        assert!(err.contains("s3://lake"), "{err}");

        // The local file system opens again.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"local").unwrap();
        let json = serde_json::to_string(&ObjectStoreStorage::local() as &dyn Storage).unwrap();
        let back: Box<dyn Storage> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            &back.read(file.to_str().unwrap()).await.unwrap()[..],
            b"local"
        );
    }
}
