//! Delta tables on S3-compatible storage (`s3://bucket/path`), with the
//! `delta` and `s3` features, without deltalake's own `s3` feature.
//!
//! deltalake finds a table's object store and log store by URL scheme in
//! two process-wide registries, which know only `file://` and `memory://`
//! unless its cloud features (here: `deltalake-aws`, which brings the AWS
//! SDK with it) add more. [`register_s3`] adds `s3://` and `s3a://` to
//! both:
//!
//! - the **log store** is deltalake's default one, which writes each
//!   commit `_delta_log/<version>.json` with a conditional put
//!   (`PutMode::Create`, S3's `If-None-Match: *`), so of two writers of a
//!   version exactly one succeeds, as on local disk. This is what
//!   deltalake-aws does too when told the store supports conditional puts
//!   (`aws_conditional_put = etag`, object_store's default for S3), and
//!   what S3 has offered since 2024, without a DynamoDB lock table;
//! - the **object store**, for tables opened by URL alone
//!   (`deltalake::open_table("s3://…")`, a reader outside a query), is
//!   object_store's `AmazonS3` built from the environment's `AWS_*`
//!   variables and the table's storage options.
//!
//! Tidemill's own Delta sink and source do not use the second: they give
//! deltalake the session's store for the bucket (the one
//! [`tidemill_engine::Location::resolve_with`] registered, with the
//! connector's `aws_*` options), so a query reads and writes the table
//! through one client.

use std::sync::{Arc, Once};

use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError, Path};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use url::Url;

/// Registers `s3://` and `s3a://` with deltalake's object store and log
/// store registries (see the module docs); once per process, later calls
/// do nothing. The Delta sink and source call it before opening a table;
/// a program reading Delta tables on S3 with deltalake directly calls it
/// first.
pub fn register_s3() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            let url = Url::parse(scheme).expect("a scheme URL");
            logstore_factories().insert(url.clone(), Arc::new(S3LogStoreFactory));
            object_store_factories()
                .entry(url)
                .or_insert_with(|| Arc::new(S3StoreFactory) as Arc<dyn ObjectStoreFactory>);
        }
    });
}

/// deltalake's default log store (commits by conditional put).
struct S3LogStoreFactory;

impl LogStoreFactory for S3LogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// `AmazonS3` from the environment and the table's storage options.
struct S3StoreFactory;

impl ObjectStoreFactory for S3StoreFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
        for (key, value) in &config.raw {
            if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value);
            }
        }
        let store = builder.build().map_err(DeltaTableError::from)?;
        let path = Path::from_url_path(url.path())
            .map_err(|e| DeltaTableError::InvalidTableLocation(format!("{url}: {e}")))?;
        Ok((Arc::new(store), path))
    }
}
