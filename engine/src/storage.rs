//! Object storage by URL: the stores [`crate::Location::resolve`] registers
//! on first use, and the options they are built from.
//!
//! **S3-compatible storage** (`s3://bucket/path`, with the `s3` cargo
//! feature): the first location of a bucket registers one
//! [`object_store::aws::AmazonS3`] store for `s3://bucket` in the session's
//! [`RuntimeEnv`](datafusion::execution::runtime_env::RuntimeEnv), built
//! with `AmazonS3Builder::from_env()`: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
//! `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` (an S3-compatible server),
//! `AWS_ALLOW_HTTP` (`true` for a plain-HTTP endpoint) and the other
//! `AWS_*` variables object_store knows. A location resolved with
//! [`StorageOptions`] (a connector's `aws_*` options) builds its store
//! from the environment overridden by those options and registers it for
//! its bucket, replacing the one registered before; locations already
//! resolved keep the store they were given.
//!
//! Credentials must be given: an access key and secret (variables or
//! options), a web identity token file, a container credentials URI, an
//! explicit `aws_metadata_endpoint` / `AWS_METADATA_ENDPOINT` (to use an
//! instance's role), or
//! `aws_skip_signature = true` (public buckets). Without any of them the
//! location is refused with a message naming it, instead of object_store
//! asking the instance metadata service of a machine that has none.
//!
//! Every write Tidemill makes on S3 that must not overwrite (offset and
//! commit log entries, Delta commits, the checkpoint's lease) is a
//! conditional put (`If-None-Match: *`, `If-Match: <e-tag>`), which S3
//! and most S3-compatible servers honour; object_store's default
//! (`aws_conditional_put = etag`) is kept.

use std::collections::BTreeMap;
use std::fmt;

#[cfg(feature = "s3")]
use std::sync::Arc;

#[cfg(feature = "s3")]
use object_store::ObjectStore;

#[cfg(feature = "s3")]
use crate::Result;
#[cfg(feature = "s3")]
use crate::TidemillError;

/// Settings of the object store a location is on, as `key = value` pairs
/// (for S3: object_store's `AmazonS3ConfigKey` names, such as
/// `aws_endpoint`, `aws_region`, `aws_access_key_id`,
/// `aws_secret_access_key`, `aws_session_token`, `aws_allow_http`). They
/// override the environment's `AWS_*` variables. Empty by default.
///
/// Printed with its keys only: values (secrets among them) are never
/// shown.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageOptions {
    entries: BTreeMap<String, String>,
}

impl StorageOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (lower-cased) to `value`; refuses a key the object
    /// store does not know, or any key in a build without the `s3`
    /// feature, saying why.
    pub fn insert(
        &mut self,
        key: &str,
        value: impl Into<String>,
    ) -> std::result::Result<(), String> {
        let key = key.to_ascii_lowercase();
        Self::check_key(&key)?;
        self.entries.insert(key, value.into());
        Ok(())
    }

    /// The options with `key` set to `value` (see [`Self::insert`]).
    pub fn with(
        mut self,
        key: &str,
        value: impl Into<String>,
    ) -> std::result::Result<Self, String> {
        self.insert(key, value)?;
        Ok(self)
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The options, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether `key` names an S3 setting; the message says why not.
    pub fn check_key(key: &str) -> std::result::Result<(), String> {
        #[cfg(feature = "s3")]
        {
            key.parse::<object_store::aws::AmazonS3ConfigKey>()
                .map(|_| ())
                .map_err(|_| {
                    format!(
                        "unknown S3 option '{key}' (valid: aws_endpoint, aws_region, \
                         aws_access_key_id, aws_secret_access_key, aws_session_token, \
                         aws_allow_http, and object_store's other AmazonS3ConfigKey names)"
                    )
                })
        }
        #[cfg(not(feature = "s3"))]
        {
            Err(format!(
                "option '{key}' is an S3 setting, and this build has no S3 support \
                 (build Tidemill with the `s3` cargo feature)"
            ))
        }
    }
}

impl fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.entries.keys()).finish()
    }
}

/// The S3 store for `bucket`, from the environment and `options`; refuses
/// a configuration without credentials (see the module docs), naming
/// `location`.
#[cfg(feature = "s3")]
pub(crate) fn s3_store(
    bucket: &str,
    location: &str,
    options: &StorageOptions,
) -> Result<Arc<dyn ObjectStore>> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as K};

    let refuse = |what: String| TidemillError::Config(format!("S3 location '{location}': {what}"));
    if bucket.is_empty() {
        return Err(refuse(
            "no bucket name (write s3://<bucket>/<path>)".to_string(),
        ));
    }
    let mut builder = AmazonS3Builder::from_env();
    for (key, value) in options.iter() {
        let key: K = key
            .parse()
            .map_err(|_| refuse(format!("unknown S3 option '{key}'")))?;
        builder = builder.with_config(key, value);
    }
    builder = builder.with_bucket_name(bucket);
    let set = |key: K| {
        builder
            .get_config_value(&key)
            .is_some_and(|v| !v.trim().is_empty())
    };
    let (key_id, secret) = (set(K::AccessKeyId), set(K::SecretAccessKey));
    if key_id != secret {
        return Err(refuse(format!(
            "incomplete credentials: {} is set but {} is not",
            if key_id {
                "the access key id"
            } else {
                "the secret access key"
            },
            if key_id {
                "the secret access key (AWS_SECRET_ACCESS_KEY or option aws_secret_access_key)"
            } else {
                "the access key id (AWS_ACCESS_KEY_ID or option aws_access_key_id)"
            },
        )));
    }
    let skip_signature = builder
        .get_config_value(&K::SkipSignature)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let other_credentials = set(K::WebIdentityTokenFile)
        || set(K::ContainerCredentialsRelativeUri)
        || set(K::ContainerCredentialsFullUri)
        || set(K::MetadataEndpoint);
    if !key_id && !skip_signature && !other_credentials {
        return Err(refuse(
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the options \
             aws_access_key_id and aws_secret_access_key), or aws_metadata_endpoint to use the \
             instance's role, or aws_skip_signature = true for a public bucket"
                .to_string(),
        ));
    }
    let store = builder
        .build()
        .map_err(|e| refuse(format!("cannot configure the S3 client: {e}")))?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_keys_not_values() {
        let mut options = StorageOptions::new();
        if options.insert("AWS_SECRET_ACCESS_KEY", "hunter2").is_ok() {
            let shown = format!("{options:?}");
            assert!(shown.contains("aws_secret_access_key"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[cfg(feature = "s3")]
    #[test]
    fn unknown_keys_are_refused() {
        let err = StorageOptions::new()
            .with("aws_endpoitn", "http://127.0.0.1:1")
            .unwrap_err();
        assert!(err.contains("aws_endpoitn"), "{err}");
        StorageOptions::new()
            .with("aws_endpoint", "http://127.0.0.1:1")
            .unwrap();
    }

    #[cfg(feature = "s3")]
    #[test]
    fn a_store_without_credentials_is_refused_naming_the_location() {
        // Options override the environment: an empty key pair counts as
        // unset whatever the test process's environment holds.
        let options = StorageOptions::new()
            .with("aws_access_key_id", "")
            .unwrap()
            .with("aws_secret_access_key", "")
            .unwrap()
            .with("aws_web_identity_token_file", "")
            .unwrap()
            .with("aws_container_credentials_relative_uri", "")
            .unwrap()
            .with("aws_container_credentials_full_uri", "")
            .unwrap()
            .with("aws_skip_signature", "false")
            .unwrap();
        let err = s3_store("bkt", "s3://bkt/chk", &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3://bkt/chk"), "{err}");
        assert!(err.contains("no credentials"), "{err}");
        let half = options.clone().with("aws_access_key_id", "AKID").unwrap();
        let err = s3_store("bkt", "s3://bkt/chk", &half)
            .unwrap_err()
            .to_string();
        assert!(err.contains("incomplete credentials"), "{err}");
        let full = half.with("aws_secret_access_key", "secret").unwrap();
        s3_store("bkt", "s3://bkt/chk", &full).unwrap();
    }
}
