//! Where checkpoints, input directories and output directories live.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::{ObjectStore, memory::InMemory, path::Path};
use tidemill_state::CheckpointDir;
use tidemill_state::Durability;
use tidemill_state::durable::MachineDurableFs;
use url::Url;

use crate::{Result, TidemillError};

/// A directory on an object store, resolved from what a user typed.
///
/// Accepts local paths (relative or absolute), `file://` URLs, and any URL
/// whose scheme has an object store registered in the session's
/// [`RuntimeEnv`] (DataFusion registers `file://` and `memory://` by
/// default; register others, such as `s3://`, the DataFusion way with
/// `RuntimeEnv::register_object_store`).
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
        let parsed = ListingTableUrl::parse(location)
            .map_err(|e| TidemillError::Config(format!("invalid location '{location}': {e}")))?;
        let store_url = parsed.object_store();
        if parsed.scheme() == "memory" {
            // Check and register under one lock so two callers never
            // install two different stores (the second would hide the
            // first one's files).
            static REGISTERING: Mutex<()> = Mutex::new(());
            let _guard = REGISTERING.lock().expect("lock poisoned");
            if runtime.object_store(&store_url).is_err() {
                runtime.register_object_store(store_url.as_ref(), Arc::new(InMemory::new()));
            }
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

    /// The location with writes as durable as `durability` asks: for
    /// [`Durability::Machine`] on a local disk, through
    /// [`MachineDurableFs`] (each file `fsync`ed before it is moved into
    /// place, and its directory after); otherwise unchanged (a cloud
    /// object store makes every write durable on its own).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        if durability == Durability::Machine && self.url.scheme() == "file" {
            self.store = Arc::new(MachineDurableFs::new());
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
