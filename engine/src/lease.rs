//! The single-writer lease of a checkpoint on object storage:
//! `<checkpoint>/lock`, where no OS file lock can reach (DESIGN §3: "a
//! lease on object stores").
//!
//! The lease object is JSON ([`LeaseRecord`]): the holder's owner id (new
//! for every run), host and process id, and when the lease expires, in
//! milliseconds since the Unix epoch. Every write of it is a conditional
//! put, so of two runs racing for it exactly one wins:
//!
//! - **Taking it.** A run reads the object. None there: it creates it
//!   (`PutMode::Create`, S3's `If-None-Match: *`). There and unexpired: the
//!   run is refused with [`TidemillError::CheckpointInUse`] naming the
//!   checkpoint and the holder. There and expired (its holder crashed or
//!   lost its storage), or not a lease (a local checkpoint's empty OS lock
//!   file, copied to the bucket): the run replaces it, conditional on the
//!   e-tag it read (`PutMode::Update`, S3's `If-Match`). Losing either race
//!   starts over, a few times, then refuses.
//! - **Keeping it.** A heartbeat task rewrites the lease every
//!   [`LeaseOptions::heartbeat`] with a new expiry, conditional on the
//!   e-tag of its own last write. A renewal refused by its precondition
//!   means another run took the lease over: the lease is *lost* for good.
//!   A renewal that fails otherwise (the store unreachable) is tried again
//!   at the next beat.
//! - **The rule before committing.** A holder starts a batch's sink commit
//!   only if [`Lease::check`] passes: the lease is not lost and at least
//!   half of [`LeaseOptions::duration`] is left of it, measured on this
//!   process's monotonic clock from the moment the last successful write
//!   was *sent* (so a slow answer only shortens it). A healthy heartbeat
//!   keeps more than two thirds left; a lease not renewed for half its
//!   length fails the check (as a transient error: the engine retries the
//!   batch, and a renewal meanwhile lets it through), a lost one fails it
//!   for good. Besides, every checkpoint log entry is written put-if-absent,
//!   so two writers that both got past the check still cannot both record
//!   the same batch.
//! - **Letting it go.** Dropping the [`Lease`] stops the heartbeat and, if
//!   a tokio runtime is still running, rewrites the lease as already
//!   expired (conditional on its e-tag), so the next run takes over at once
//!   (on a multi-threaded runtime the drop waits for that write, up to 5 s;
//!   on a current-thread runtime it is a task, which a runtime shutting down
//!   may never run).
//!   A killed process lets it go by expiry: a new run waits out the rest of
//!   [`LeaseOptions::duration`] (refused until then).
//!
//! Expiry is compared with wall-clock time by the run that wants the
//! lease: the clocks of machines running queries on one checkpoint must
//! agree to well within half a lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::{Result, TidemillError};

const FORMAT_VERSION: u32 = 1;
/// How many times taking the lease starts over after losing a race.
const ATTEMPTS: usize = 5;
/// The longest a dropped lease waits for its release to be written.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a checkpoint's lease on object storage lasts and how often its
/// holder renews it (see the module docs of `lease`); for the checkpoint
/// locations other than local directories and `memory://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long a written lease lasts: how long a crashed query's
    /// checkpoint stays refused to a new run. Default 30 s.
    pub duration: Duration,
    /// How often the holder renews the lease; less than half of
    /// `duration`. Default 10 s.
    pub heartbeat: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// The content of the lease object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The format version (1).
    pub format: u32,
    /// The holder's id, new for every run.
    pub owner: String,
    /// The holder's host name, for messages.
    pub host: String,
    /// The holder's process id, for messages.
    pub pid: u32,
    /// When the lease expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// A held lease; see the module docs. Stops its heartbeat and lets the
/// lease go when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    shared: Arc<Shared>,
    heartbeat: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The checkpoint, for messages.
    location: String,
    owner: String,
    options: LeaseOptions,
    state: Mutex<HeldState>,
}

#[derive(Debug)]
struct HeldState {
    /// The e-tag and version of the holder's last write.
    version: UpdateVersion,
    /// Until when the lease is surely held: when the last successful write
    /// was sent, plus the lease's duration.
    valid_until: Instant,
    /// Why the lease is lost, once it is.
    lost: Option<String>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown host".to_string())
}

impl Lease {
    /// Takes the lease at `path` of `store` for the checkpoint `location`,
    /// or refuses with [`TidemillError::CheckpointInUse`] if another run
    /// holds it; starts the heartbeat (on the current tokio runtime).
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        path: Path,
        location: &str,
        options: LeaseOptions,
    ) -> Result<Self> {
        if options.heartbeat.is_zero() || options.heartbeat * 2 >= options.duration {
            return Err(TidemillError::Config(format!(
                "checkpoint lease: the heartbeat ({:?}) must be shorter than half the lease \
                 ({:?})",
                options.heartbeat, options.duration
            )));
        }
        let owner = uuid::Uuid::new_v4().to_string();
        let record = |expires_at_ms| LeaseRecord {
            format: FORMAT_VERSION,
            owner: owner.clone(),
            host: host_name(),
            pid: std::process::id(),
            expires_at_ms,
        };
        let fail = |doing: &str, e: object_store::Error| {
            let hint = match &e {
                object_store::Error::NotFound { .. } => " (does the bucket exist?)",
                _ => "",
            };
            TidemillError::storage(
                TidemillError::Config(format!(
                    "cannot {doing} the lease {path} of checkpoint {location}{hint}: {e}"
                )),
                &e,
            )
        };
        for _ in 0..ATTEMPTS {
            let mode = match store.get(&path).await {
                Err(object_store::Error::NotFound { .. }) => PutMode::Create,
                Err(e) => return Err(fail("read", e)),
                Ok(got) => {
                    let version = UpdateVersion {
                        e_tag: got.meta.e_tag.clone(),
                        version: got.meta.version.clone(),
                    };
                    let bytes = got.bytes().await.map_err(|e| fail("read", e))?;
                    if let Ok(held) = serde_json::from_slice::<LeaseRecord>(&bytes) {
                        let left = held.expires_at_ms - now_ms();
                        if left > 0 {
                            return Err(TidemillError::CheckpointInUse {
                                location: location.to_string(),
                                detail: format!(
                                    " (its lease {path} is held by run {} on {}, process {}, \
                                     for {:.1} s more unless renewed)",
                                    held.owner,
                                    held.host,
                                    held.pid,
                                    left as f64 / 1000.0
                                ),
                            });
                        }
                        tracing::info!(
                            checkpoint = location,
                            previous = %held.owner,
                            "taking over the expired lease of the checkpoint"
                        );
                    }
                    PutMode::Update(version)
                }
            };
            let sent = Instant::now();
            let body = serde_json::to_vec(&record(now_ms() + millis(options.duration)))
                .expect("a lease serializes");
            let put = PutOptions {
                mode,
                ..Default::default()
            };
            match store.put_opts(&path, PutPayload::from(body), put).await {
                Ok(written) => {
                    let shared = Arc::new(Shared {
                        store,
                        path,
                        location: location.to_string(),
                        owner,
                        options,
                        state: Mutex::new(HeldState {
                            version: UpdateVersion {
                                e_tag: written.e_tag,
                                version: written.version,
                            },
                            valid_until: sent + options.duration,
                            lost: None,
                        }),
                    });
                    let heartbeat = tokio::spawn(heartbeat(Arc::clone(&shared)));
                    return Ok(Self { shared, heartbeat });
                }
                // Another run wrote it between our read and our write.
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => continue,
                Err(e) => return Err(fail("write", e)),
            }
        }
        Err(TidemillError::CheckpointInUse {
            location: location.to_string(),
            detail: format!(
                " (its lease {path} kept changing hands while this run tried to take it)"
            ),
        })
    }

    /// Whether this run may commit a batch: see the module docs' rule.
    pub fn check(&self) -> Result<()> {
        let shared = &self.shared;
        let state = shared.state.lock().expect("lock poisoned");
        if let Some(reason) = &state.lost {
            return Err(TidemillError::CheckpointInUse {
                location: shared.location.clone(),
                detail: format!(" (this run lost its lease {}: {reason})", shared.path),
            });
        }
        let left = state.valid_until.saturating_duration_since(Instant::now());
        if left < shared.options.duration / 2 {
            return Err(TidemillError::transient(TidemillError::CheckpointInUse {
                location: shared.location.clone(),
                detail: format!(
                    " (maybe: this run's lease {} was not renewed in time, {left:?} of {:?} \
                     left; the batch waits for a renewal)",
                    shared.path, shared.options.duration
                ),
            }));
        }
        Ok(())
    }

    /// The holder's id, as written in the lease.
    #[cfg(test)]
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Renews the lease every heartbeat until it is lost or the task aborted.
async fn heartbeat(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(shared.options.heartbeat).await;
        let version = shared.state.lock().expect("lock poisoned").version.clone();
        let record = LeaseRecord {
            format: FORMAT_VERSION,
            owner: shared.owner.clone(),
            host: host_name(),
            pid: std::process::id(),
            expires_at_ms: now_ms() + millis(shared.options.duration),
        };
        let body = serde_json::to_vec(&record).expect("a lease serializes");
        let sent = Instant::now();
        let put = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        let written = shared
            .store
            .put_opts(&shared.path, PutPayload::from(body), put)
            .await;
        let mut state = shared.state.lock().expect("lock poisoned");
        match written {
            Ok(written) => {
                state.version = UpdateVersion {
                    e_tag: written.e_tag,
                    version: written.version,
                };
                state.valid_until = sent + shared.options.duration;
            }
            Err(
                e @ (object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. }),
            ) => {
                tracing::error!(
                    checkpoint = %shared.location,
                    error = %e,
                    "the checkpoint's lease was taken over by another run; this run commits no more batches"
                );
                state.lost = Some(format!("another run took it over ({e})"));
                return;
            }
            Err(e) => {
                tracing::warn!(
                    checkpoint = %shared.location,
                    error = %e,
                    "renewing the checkpoint's lease failed; trying again at the next heartbeat"
                );
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
        let shared = Arc::clone(&self.shared);
        let version = {
            let state = shared.state.lock().expect("lock poisoned");
            if state.lost.is_some() {
                return;
            }
            state.version.clone()
        };
        let release = async move {
            let record = LeaseRecord {
                format: FORMAT_VERSION,
                owner: shared.owner.clone(),
                host: host_name(),
                pid: std::process::id(),
                expires_at_ms: 0,
            };
            let body = serde_json::to_vec(&record).expect("a lease serializes");
            let put = PutOptions {
                mode: PutMode::Update(version),
                ..Default::default()
            };
            let written = tokio::time::timeout(
                RELEASE_TIMEOUT,
                shared
                    .store
                    .put_opts(&shared.path, PutPayload::from(body), put),
            )
            .await;
            if !matches!(written, Ok(Ok(_))) {
                tracing::warn!(
                    checkpoint = %shared.location,
                    "releasing the checkpoint's lease failed; it expires by itself"
                );
            }
        };
        // On a multi-threaded runtime the release is waited for (a process
        // that ends right after its query would otherwise drop it
        // unsent); elsewhere it runs as a task.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(release));
            }
            Ok(handle) => {
                handle.spawn(release);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn short() -> LeaseOptions {
        LeaseOptions {
            duration: Duration::from_millis(600),
            heartbeat: Duration::from_millis(100),
        }
    }

    fn lock() -> Path {
        Path::from("chk/lock")
    }

    async fn record(store: &InMemory) -> LeaseRecord {
        let bytes = store.get(&lock()).await.unwrap().bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_second_run_is_refused_while_the_lease_is_renewed() {
        let store = Arc::new(InMemory::new());
        let first = Lease::acquire(store.clone(), lock(), "memory:///chk", short())
            .await
            .unwrap();
        // Well past the lease's length: the heartbeat keeps it.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let err = Lease::acquire(store.clone(), lock(), "memory:///chk", short())
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, TidemillError::CheckpointInUse { .. }),
                "{text}"
            );
            assert!(text.contains("memory:///chk"), "{text}");
            assert!(text.contains(first.owner()), "{text}");
            first.check().unwrap();
        }
        assert_eq!(record(&store).await.owner, first.owner());
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_old_holder_loses_it() {
        let store = Arc::new(InMemory::new());
        let first = Lease::acquire(store.clone(), lock(), "memory:///chk", short())
            .await
            .unwrap();
        // A crashed holder: no more renewals.
        first.heartbeat.abort();
        tokio::time::sleep(Duration::from_millis(700)).await;
        // Its own check refuses: not renewed for more than half the lease.
        let stale = first.check().unwrap_err();
        assert!(stale.is_transient(), "{stale}");
        let second = Lease::acquire(store.clone(), lock(), "memory:///chk", short())
            .await
            .unwrap();
        assert_eq!(record(&store).await.owner, second.owner());
        second.check().unwrap();
        // The old holder's heartbeat, were it alive, finds the lease taken.
        let revived = tokio::spawn(heartbeat(Arc::clone(&first.shared)));
        tokio::time::timeout(Duration::from_secs(5), revived)
            .await
            .unwrap()
            .unwrap();
        let lost = first.check().unwrap_err();
        assert!(!lost.is_transient(), "{lost}");
        assert!(lost.to_string().contains("lost its lease"), "{lost}");
        // ... and dropping it leaves the new holder's lease alone.
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(record(&store).await.owner, second.owner());
        second.check().unwrap();
    }

    #[tokio::test]
    async fn a_dropped_lease_is_released_at_once() {
        let store = Arc::new(InMemory::new());
        let first = Lease::acquire(store.clone(), lock(), "memory:///chk", short())
            .await
            .unwrap();
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(record(&store).await.expires_at_ms, 0);
        Lease::acquire(store.clone(), lock(), "memory:///chk", short())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn racing_runs_get_one_lease() {
        let store = Arc::new(InMemory::new());
        let runs = (0..8).map(|_| {
            let store = store.clone();
            tokio::spawn(
                async move { Lease::acquire(store, lock(), "memory:///chk", short()).await },
            )
        });
        let results = futures::future::join_all(runs).await;
        let held: Vec<_> = results
            .into_iter()
            .map(|r| r.unwrap())
            .filter_map(|r| r.ok())
            .collect();
        assert_eq!(held.len(), 1);
        assert_eq!(record(&store).await.owner, held[0].owner());
    }

    #[tokio::test]
    async fn a_lock_object_that_is_no_lease_is_replaced() {
        let store = Arc::new(InMemory::new());
        store
            .put(&lock(), PutPayload::from_static(b""))
            .await
            .unwrap();
        let lease = Lease::acquire(store.clone(), lock(), "memory:///chk", short())
            .await
            .unwrap();
        assert_eq!(record(&store).await.owner, lease.owner());
    }

    #[tokio::test]
    async fn a_heartbeat_not_shorter_than_half_the_lease_is_refused() {
        let store = Arc::new(InMemory::new());
        let options = LeaseOptions {
            duration: Duration::from_secs(1),
            heartbeat: Duration::from_millis(500),
        };
        let err = Lease::acquire(store, lock(), "memory:///chk", options)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");
    }
}
