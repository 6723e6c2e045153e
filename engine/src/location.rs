//! Where checkpoints, input directories and output directories live.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::{ObjectStore, memory::InMemory, path::Path};
use tidemill_state::CheckpointDir;
use tidemill_state::Durability;
use tidemill_state::durable::LocalFs;
use url::Url;

use crate::storage::StorageOptions;
use crate::{Result, TidemillError};

/// A directory on an object store, resolved from what a user typed.
///
/// Accepts local paths (relative or absolute), `file://` URLs,
/// `s3://bucket/path` URLs (with the `s3` feature; the bucket's store is
/// registered on first use, see [`crate::storage`]), and any URL whose
/// scheme has an object store registered in the session's [`RuntimeEnv`]
/// (DataFusion registers `file://` and `memory://` by default; register
/// others the DataFusion way with `RuntimeEnv::register_object_store`).
#[derive(Debug, Clone)]
pub struct Location {
    url: Url,
    store: Arc<dyn ObjectStore>,
    path: Path,
}

impl Location {
    /// Resolves `location` against the object stores of `runtime`.
    ///
    /// `memory://` needs no registration: the first use registers one
    /// in-memory store in `runtime`, which every later `memory://` location
    /// of that runtime shares.
    pub fn resolve(location: &str, runtime: &RuntimeEnv) -> Result<Self> {
        Self::resolve_with(location, &StorageOptions::default(), runtime)
    }

    /// Resolves `location` as [`Location::resolve`] does, with `options`
    /// for the store of an `s3://` location: without options, the bucket's
    /// registered store is used, or one built from the environment's
    /// `AWS_*` variables is registered; with options, a store built from
    /// the environment overridden by them is registered for the bucket
    /// (see [`crate::storage`]). Refuses options for a location that is
    /// not on S3, and an S3 location without credentials.
    pub fn resolve_with(
        location: &str,
        options: &StorageOptions,
        runtime: &RuntimeEnv,
    ) -> Result<Self> {
        let parsed = ListingTableUrl::parse(location)
            .map_err(|e| TidemillError::Config(format!("invalid location '{location}': {e}")))?;
        let store_url = parsed.object_store();
        // Check and register under one lock so two callers never install
        // two different stores (the second would hide the first one's
        // files).
        static REGISTERING: Mutex<()> = Mutex::new(());
        match parsed.scheme() {
            "memory" => {
                let _guard = REGISTERING.lock().expect("lock poisoned");
                if runtime.object_store(&store_url).is_err() {
                    runtime.register_object_store(store_url.as_ref(), Arc::new(InMemory::new()));
                }
            }
            #[cfg(feature = "s3")]
            "s3" => {
                let _guard = REGISTERING.lock().expect("lock poisoned");
                if !options.is_empty() || runtime.object_store(&store_url).is_err() {
                    let bucket = parsed.get_url().host_str().unwrap_or_default();
                    let store = crate::storage::s3_store(bucket, location, options)?;
                    runtime.register_object_store(store_url.as_ref(), store);
                }
            }
            #[cfg(not(feature = "s3"))]
            "s3" if runtime.object_store(&store_url).is_err() => {
                return Err(TidemillError::Config(format!(
                    "location '{location}' is on S3, and this build has no S3 support \
                     (build Tidemill with the `s3` cargo feature, or register an object store \
                     for the bucket in the session)"
                )));
            }
            _ => {}
        }
        if !options.is_empty() && parsed.scheme() != "s3" {
            return Err(TidemillError::Config(format!(
                "S3 options ({options:?}) given for location '{location}', which is not on S3"
            )));
        }
        let store = runtime
            .object_store(&store_url)
            .map_err(|e| TidemillError::Config(format!("no object store for '{location}': {e}")))?;
        Ok(Self {
            url: parsed.get_url().clone(),
            store,
            path: parsed.prefix().clone(),
        })
    }

    /// The location as a URL (local paths become `file://` URLs).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The object store holding the location.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The location's path inside its object store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The local directory, for `file://` locations.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }

    /// The location with writes as durable as `durability` asks. On a
    /// local disk, through [`LocalFs`]: with [`Durability::Machine`] each
    /// file is `fsync`ed before it is moved into place, and its directory
    /// after; with [`Durability::Process`] nothing is synced and small
    /// writes are made on the calling thread. Other stores are unchanged
    /// (a cloud object store makes every write durable on its own).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        if self.url.scheme() == "file" {
            self.store = Arc::new(LocalFs::new(durability));
        }
        self
    }

    /// The location as a checkpoint directory.
    pub fn dir(&self) -> CheckpointDir {
        CheckpointDir::new(Arc::clone(&self.store), self.path.clone())
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)
    }
}
