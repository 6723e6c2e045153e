//! How durable a checkpoint write is before it counts as done, and a local
//! file system that makes writes survive power loss.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use serde::{Deserialize, Serialize};

/// How durable a checkpoint write (an offset or commit log entry, a state
/// file, a sink's manifest) is when it counts as done.
///
/// Both keep exactly-once across a killed process; they differ on a machine
/// that loses power. Cloud object stores make every write durable on their
/// own: the setting changes nothing there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A write is done once the operating system has it (no `fsync`): it
    /// survives the process being killed at any point, as Spark's
    /// file-based checkpoints on a local disk do. The default.
    #[default]
    Process,
    /// On a local disk, a file is written under a staging name, `fsync`ed,
    /// moved into place (renamed, or hard-linked for create-if-absent),
    /// and its directory `fsync`ed: a write that counts as done survives
    /// power loss. Costs two `fsync`s per file written.
    Machine,
}

impl std::str::FromStr for Durability {
    type Err = String;

    /// `process` or `machine`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "process" => Ok(Durability::Process),
            "machine" => Ok(Durability::Machine),
            other => Err(format!(
                "unknown durability '{other}': expected process or machine"
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Process => "process",
            Durability::Machine => "machine",
        })
    }
}

static SYNC_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many `fsync`s [`LocalFs`] has made in this process (files and
/// directories, with [`Durability::Machine`]): what `machine` durability
/// adds, for tests and benchmarks.
pub fn sync_calls() -> u64 {
    SYNC_CALLS.load(Ordering::Relaxed)
}

fn sync(file: &File) -> std::io::Result<()> {
    SYNC_CALLS.fetch_add(1, Ordering::Relaxed);
    file.sync_all()
}

/// Syncs the directory `dir`, so that names created, renamed or removed in
/// it survive power loss.
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    sync(&File::open(dir)?)
}

/// Puts of at most this many bytes with [`Durability::Process`] are
/// written on the calling thread: a checkpoint log entry, a sink's
/// manifest entry, a small data file. Such a put costs what the file
/// system charges for creating and linking a file (tens of microseconds
/// on most local disks) plus copying a few kilobytes into the page cache;
/// handing it to tokio's blocking pool would add two thread wake-ups on
/// top (on an idle virtual machine, a tenth to a quarter of a millisecond
/// each).
/// Larger puts, and every put with [`Durability::Machine`] (whose `fsync`s
/// may take milliseconds), run on the blocking pool.
pub const INLINE_PUT_BYTES: usize = 256 * 1024;

/// The local file system (as [`LocalFileSystem::new`], paths absolute),
/// writing as durably as its [`Durability`] asks. Every put writes a
/// staging file (`<name>#<n>`, which listings skip, as `LocalFileSystem`'s
/// own) and moves it into place: renamed, or hard-linked for
/// create-if-absent. With [`Durability::Machine`] it syncs the staging
/// file before the move and the directory after (a directory it has to
/// create first, it creates and makes durable in its parent), and a rename
/// or copy syncs the target file and its directory. With
/// [`Durability::Process`] nothing is synced, and small puts and deletes
/// run on the calling thread (see [`INLINE_PUT_BYTES`]). Reads and
/// listings are `LocalFileSystem`'s.
#[derive(Debug)]
pub struct LocalFs {
    inner: LocalFileSystem,
    durability: Durability,
}

impl LocalFs {
    /// The whole local file system, with writes as durable as
    /// `durability` asks.
    pub fn new(durability: Durability) -> Self {
        Self {
            inner: LocalFileSystem::new(),
            durability,
        }
    }

    fn local(&self, location: &Path) -> object_store::Result<PathBuf> {
        self.inner.path_to_filesystem(location)
    }

    fn machine(&self) -> bool {
        self.durability == Durability::Machine
    }

    /// Syncs the file at `location` and its directory.
    async fn sync_in_place(&self, location: &Path) -> object_store::Result<()> {
        sync_file_and_dir(self.local(location)?).await
    }
}

/// The directory holding `path`.
fn parent_of(path: &std::path::Path) -> &std::path::Path {
    path.parent().unwrap_or(std::path::Path::new("/"))
}

/// Syncs the file at `path`, then its directory (a file written in place
/// by another writer: a copy, a rename, a multipart upload).
async fn sync_file_and_dir(path: PathBuf) -> object_store::Result<()> {
    run_blocking(move || {
        sync(&File::open(&path)?)?;
        sync_dir(parent_of(&path))
    })
    .await
}

/// Runs blocking file work on tokio's blocking pool, with I/O errors as
/// object store errors.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| generic(std::io::Error::other(e)))?
        .map_err(generic)
}

fn generic(source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFs",
        source: Box::new(source),
    }
}

impl std::fmt::Display for LocalFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalFs({}, {})", self.inner, self.durability)
    }
}

/// Creates the directory `dir` and its missing ancestors, and syncs the
/// parent of each directory it created, so that a file written in a new
/// directory (a sink's new partition directory, a checkpoint's first
/// file) is not lost with its directory's name on power loss. Returns the
/// directories it created, outermost first.
fn create_dir_all_durably(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    if dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(current) = next.filter(|d| !d.exists()) {
        missing.push(current.to_path_buf());
        next = current.parent();
    }
    missing.reverse();
    std::fs::create_dir_all(dir)?;
    for created in &missing {
        sync_dir(parent_of(created))?;
    }
    Ok(missing)
}

/// Opens a new staging file for `path`: `<path>#<n>` for the first free
/// `n`.
fn open_staging(path: &std::path::Path) -> std::io::Result<(File, PathBuf)> {
    (1u64..)
        .find_map(|n| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!("#{n}"));
            let staging = PathBuf::from(name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&staging)
            {
                Ok(file) => Some(Ok((file, staging))),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => None,
                Err(e) => Some(Err(e)),
            }
        })
        .expect("an unused staging name")
}

/// Writes `payload` to `path`: staging file, moved into place (hard-linked
/// for [`PutMode::Create`], so an existing file fails the put with
/// `AlreadyExists`; renamed otherwise). With `machine` durability, also
/// syncs the staging file before the move and the directory after (and the
/// parents of directories it had to create); otherwise creates missing
/// directories only when the staging file cannot be opened for want of
/// them.
fn put_file(
    path: &std::path::Path,
    payload: PutPayload,
    mode: PutMode,
    machine: bool,
) -> std::io::Result<()> {
    let dir = parent_of(path);
    if machine {
        create_dir_all_durably(dir)?;
    }
    let (mut staging_file, staging) = match open_staging(path) {
        Err(e) if e.kind() == ErrorKind::NotFound && !machine => {
            std::fs::create_dir_all(dir)?;
            open_staging(path)?
        }
        opened => opened?,
    };
    let written = (|| {
        for chunk in payload.iter() {
            staging_file.write_all(chunk)?;
        }
        if machine {
            sync(&staging_file)?;
        }
        drop(staging_file);
        match mode {
            PutMode::Create => {
                std::fs::hard_link(&staging, path)?;
                std::fs::remove_file(&staging)
            }
            _ => std::fs::rename(&staging, path),
        }
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    written?;
    if machine {
        sync_dir(dir)?;
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalFs {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let mode = opts.mode.clone();
        if !matches!(mode, PutMode::Overwrite | PutMode::Create) {
            // Conditional updates: the local file system has none either.
            return self.inner.put_opts(location, payload, opts).await;
        }
        let path = self.local(location)?;
        let at = location.clone();
        let machine = self.machine();
        let outcome = if !machine && payload.content_length() <= INLINE_PUT_BYTES {
            put_file(&path, payload, mode, false)
        } else {
            tokio::task::spawn_blocking(move || put_file(&path, payload, mode, machine))
                .await
                .map_err(|e| generic(std::io::Error::other(e)))?
        };
        match outcome {
            Ok(()) => Ok(PutResult {
                e_tag: None,
                version: None,
            }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                Err(object_store::Error::AlreadyExists {
                    path: at.to_string(),
                    source: Box::new(e),
                })
            }
            Err(e) => Err(generic(e)),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        if !self.machine() {
            return Ok(inner);
        }
        Ok(Box::new(DurableUpload {
            inner,
            path: self.local(location)?,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        if self.machine() {
            return self.inner.delete_stream(locations);
        }
        // Unlinking a file is one system call: done on the calling thread
        // (the retention deletes of old log entries, one batch's leftovers).
        let inner = self.inner.clone();
        locations
            .map(move |location| {
                let location = location?;
                let path = inner.path_to_filesystem(&location)?;
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(location),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        Err(object_store::Error::NotFound {
                            path: path.display().to_string(),
                            source: Box::new(e),
                        })
                    }
                    Err(e) => Err(generic(e)),
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        if self.machine() {
            self.sync_in_place(to).await?;
        }
        Ok(())
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        if self.machine() {
            self.sync_in_place(to).await?;
        }
        Ok(())
    }
}

/// A multipart upload that syncs the file and its directory once complete.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    path: PathBuf,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.inner.complete().await?;
        sync_file_and_dir(self.path.clone()).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn machine_writes_sync_each_file_and_directory_and_stay_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFs::new(Durability::Machine);
        let at = |name: &str| Path::from_absolute_path(dir.path().join(name)).unwrap();
        let before = sync_calls();
        store
            .put(&at("a/x"), PutPayload::from_static(b"one"))
            .await
            .unwrap();
        // The staging file and the directory.
        assert!(sync_calls() - before >= 2);
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let again = store
            .put_opts(&at("a/x"), PutPayload::from_static(b"two"), create.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(again, object_store::Error::AlreadyExists { .. }),
            "{again}"
        );
        store
            .put(&at("a/x"), PutPayload::from_static(b"three"))
            .await
            .unwrap();
        store
            .put_opts(&at("a/y"), PutPayload::from_static(b"new"), create)
            .await
            .unwrap();
        let read = store.get(&at("a/x")).await.unwrap().bytes().await.unwrap();
        assert_eq!(&read[..], b"three");
        // No staging file is left, and listings show the two files.
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["x", "y"]);
        let listed = store.list_with_delimiter(Some(&at("a"))).await.unwrap();
        assert_eq!(listed.objects.len(), 2);
    }

    #[tokio::test]
    async fn process_writes_are_atomic_create_if_absent_and_deletes_report_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFs::new(Durability::Process);
        let at = |name: &str| Path::from_absolute_path(dir.path().join(name)).unwrap();
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        // Missing directories are created; small and large puts (inline
        // and on the blocking pool) land whole.
        let large = vec![7u8; INLINE_PUT_BYTES + 1];
        store
            .put_opts(
                &at("a/b/x"),
                PutPayload::from_static(b"one"),
                create.clone(),
            )
            .await
            .unwrap();
        store
            .put(&at("a/b/large"), PutPayload::from(large.clone()))
            .await
            .unwrap();
        let again = store
            .put_opts(&at("a/b/x"), PutPayload::from_static(b"two"), create)
            .await
            .unwrap_err();
        assert!(
            matches!(again, object_store::Error::AlreadyExists { .. }),
            "{again}"
        );
        let read = |name: &'static str| {
            let store = &store;
            async move { store.get(&at(name)).await.unwrap().bytes().await.unwrap() }
        };
        assert_eq!(&read("a/b/x").await[..], b"one");
        assert_eq!(read("a/b/large").await.len(), large.len());
        store
            .put(&at("a/b/x"), PutPayload::from_static(b"three"))
            .await
            .unwrap();
        assert_eq!(&read("a/b/x").await[..], b"three");
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["large", "x"], "no staging file is left");
        store.delete(&at("a/b/x")).await.unwrap();
        let missing = store.delete(&at("a/b/x")).await.unwrap_err();
        assert!(
            matches!(missing, object_store::Error::NotFound { .. }),
            "{missing}"
        );
        assert!(!dir.path().join("a/b/x").exists());
    }

    #[test]
    fn new_directories_are_created_and_their_parents_synced() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("out/day=1/sym=a%2Fb");
        let before = sync_calls();
        let created = create_dir_all_durably(&deep).unwrap();
        assert_eq!(
            created,
            [
                root.path().join("out"),
                root.path().join("out/day=1"),
                deep.clone()
            ]
        );
        assert!(deep.is_dir());
        // One sync per parent: the root, out and out/day=1.
        assert!(sync_calls() - before >= 3);
        // An existing directory costs nothing more.
        assert!(create_dir_all_durably(&deep).unwrap().is_empty());
        let sibling = root.path().join("out/day=2");
        assert_eq!(create_dir_all_durably(&sibling).unwrap(), [sibling]);
    }

    #[test]
    fn durability_reads_and_prints_its_names() {
        assert_eq!(
            "Machine".parse::<Durability>().unwrap(),
            Durability::Machine
        );
        assert_eq!(
            "process".parse::<Durability>().unwrap(),
            Durability::Process
        );
        assert!(
            "power"
                .parse::<Durability>()
                .unwrap_err()
                .contains("process or machine")
        );
        assert_eq!(Durability::default().to_string(), "process");
    }
}
