//! The crash tests' log store (builds with the `failpoints` feature only):
//! deltalake's own log store, which stops at the failpoint `during_sink`
//! when it is about to write a commit — the batch's data files are
//! written, its `_delta_log/<version>.json` is not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use deltalake::kernel::Version;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::{CommitOrBytes, LogStore, LogStoreConfig, LogStoreRef};
use deltalake::{DeltaResult, ObjectStore};
use url::Url;
use uuid::Uuid;

/// A log store that hits `during_sink` of the batch in `batch` before
/// each commit, and otherwise is `inner`.
pub(super) struct FailpointLogStore {
    inner: LogStoreRef,
    batch: Arc<AtomicU64>,
}

impl FailpointLogStore {
    /// `inner`, stopping before commits of the batch in `batch`.
    pub(super) fn wrap(inner: LogStoreRef, batch: Arc<AtomicU64>) -> LogStoreRef {
        Arc::new(Self { inner, batch })
    }
}

#[async_trait::async_trait]
impl LogStore for FailpointLogStore {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(&self, version: Version) -> DeltaResult<Option<Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        crate::failpoint::hit("during_sink", self.batch.load(Ordering::SeqCst));
        self.inner
            .write_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn abort_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        self.inner
            .abort_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn get_latest_version(&self, start_version: Version) -> DeltaResult<Version> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn transaction_url(&self, operation_id: Option<Uuid>) -> DeltaResult<Url> {
        self.inner.transaction_url(operation_id)
    }

    async fn is_delta_table_location(&self) -> DeltaResult<bool> {
        self.inner.is_delta_table_location().await
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }
}
