//! How far behind its sources a query's committed offsets are.
//!
//! Each source of the checkpoint is matched by description with one of the
//! given sources and opened as a run opens it, but over an in-memory copy
//! of its private checkpoint directory: the offset it returns as available
//! now is computed exactly as a run would (a `files` source lists its
//! directory and extends its files-seen log, a `kafka` source asks the
//! brokers for the partitions' ends), and nothing it logs reaches the disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::SessionContext;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tidemill_engine::{Offset, ReadLimit, Source, SourceContext, TidemillError};
use tidemill_state::{CheckpointDir, StateError};

use super::files::Files;
use super::{PartitionLag, QueryReport, SourceLag, StatusError};

/// How long a source may take to say what it holds (a broker that does not
/// answer).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a source could not say what it holds.
enum Failure {
    /// A file of its private checkpoint directory is damaged.
    Damaged(StateError),
    /// Anything else (a broker down, a directory gone): said in a note.
    Other(String),
}

impl From<TidemillError> for Failure {
    fn from(error: TidemillError) -> Self {
        match error {
            TidemillError::Checkpoint(
                e @ (StateError::Corrupt { .. } | StateError::Incompatible { .. }),
            ) => Failure::Damaged(e),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// Fills in the lag of every source of `query`, whose checkpoint is `dir`.
/// Fails only if a file of a source's private checkpoint directory is
/// damaged; a source that cannot be asked otherwise gets a note.
pub(super) async fn measure(
    query: &mut QueryReport,
    files: &Files,
    dir: &Path,
    sources: &[Arc<dyn Source>],
) -> Result<(), StatusError> {
    for report in &mut query.sources {
        let unit = unit_of(&report.description);
        let lag = match sources
            .iter()
            .find(|s| s.description() == report.description)
        {
            None => SourceLag {
                latest: None,
                unit,
                behind: None,
                partitions: Vec::new(),
                note: Some(format!(
                    "no stream of the pipeline is this source (its streams: {})",
                    sources
                        .iter()
                        .map(|s| s.description())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
            Some(source) => {
                let latest = tokio::time::timeout(
                    TIMEOUT,
                    latest_offset(
                        source.as_ref(),
                        files,
                        dir,
                        report.index,
                        report.committed.as_ref(),
                    ),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::Other(format!(
                        "the source did not say what it holds within {} s",
                        TIMEOUT.as_secs()
                    )))
                });
                match latest {
                    Ok(latest) => compare(report.committed.as_ref(), latest, unit),
                    Err(Failure::Damaged(error)) => return Err(error.into()),
                    Err(Failure::Other(error)) => SourceLag {
                        latest: None,
                        unit,
                        behind: None,
                        partitions: Vec::new(),
                        note: Some(format!("cannot tell what the source holds: {error}")),
                    },
                }
            }
        };
        report.lag = Some(lag);
    }
    Ok(())
}

/// What an offset of the source described so counts.
fn unit_of(description: &str) -> String {
    let unit = if description.starts_with("FileSource[") {
        "files"
    } else if description.starts_with("KafkaSource[") {
        "records"
    } else if description.starts_with("RateSource[") {
        "rows"
    } else {
        "offsets"
    };
    unit.to_string()
}

/// The offset `source` (source `index` of the checkpoint in `dir`) holds
/// now after `committed`, asked as a run asks it, with no read limit.
async fn latest_offset(
    source: &dyn Source,
    files: &Files,
    dir: &Path,
    index: usize,
    committed: Option<&Offset>,
) -> Result<Option<Offset>, Failure> {
    let session = SessionContext::new();
    let schema = source.schema(&session).await?;
    let private_dir = dir.join("sources").join(index.to_string());
    let private = match files.copy_to_memory(&private_dir).await {
        Some(copied) => copied,
        None => copy_to_memory(&private_dir).await,
    }
    .map_err(|e| Failure::Other(format!("cannot copy its checkpoint directory: {e}")))?;
    let mut stream = source
        .open(SourceContext {
            session,
            schema,
            checkpoint: private,
        })
        .await?;
    Ok(stream.latest_offset(committed, ReadLimit::All).await?)
}

/// The files under `dir`, read into a new in-memory store at the same
/// path (so that errors name the files as they are on disk), as a
/// checkpoint directory. Files of writes in progress (`#` in their name:
/// the local store's temporary files) are left out.
async fn copy_to_memory(dir: &Path) -> std::io::Result<CheckpointDir> {
    let store = Arc::new(InMemory::new());
    let root = object_store::path::Path::from_absolute_path(dir).map_err(std::io::Error::other)?;
    let mut pending = vec![(dir.to_path_buf(), root.clone())];
    while let Some((local, at)) = pending.pop() {
        let entries = match std::fs::read_dir(&local) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = at.clone().join(name.as_str());
            if entry.file_type()?.is_dir() {
                pending.push((entry.path(), path));
            } else if !name.contains('#') {
                let bytes = match std::fs::read(entry.path()) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map_err(std::io::Error::other)?;
            }
        }
    }
    let store: Arc<dyn ObjectStore> = store;
    Ok(CheckpointDir::new(store, root))
}

/// The lag of `latest` behind `committed`: for numbers, their difference
/// (no committed offset counting as 0); for maps of numbers (Kafka's
/// `{topic: {partition: offset}}`), per partition and in total; other
/// offsets are shown, not compared.
fn compare(committed: Option<&Offset>, latest: Option<Offset>, unit: String) -> SourceLag {
    let mut lag = SourceLag {
        latest: latest.clone(),
        unit,
        behind: None,
        partitions: Vec::new(),
        note: None,
    };
    let Some(latest) = latest else {
        // Nothing available at all.
        lag.behind = committed.is_none().then_some(0);
        return lag;
    };
    let (Some(now), Some(then)) = (
        leaves(&latest.0),
        committed.map_or(Some(BTreeMap::new()), |c| leaves(&c.0)),
    ) else {
        lag.note = Some("the offsets are not numbers: compare them as shown".into());
        return lag;
    };
    if let (Some(&now), 1) = (now.get(""), now.len()) {
        let then = then.get("").copied().unwrap_or(0);
        lag.behind = Some(now.saturating_sub(then));
        if now < then {
            lag.note = Some(format!(
                "the source holds less ({now}) than the checkpoint committed ({then})"
            ));
        }
        return lag;
    }
    let mut total = Some(0u64);
    for (partition, &now) in &now {
        let then = then.get(partition).copied();
        let behind = then.map(|then| now.saturating_sub(then));
        total = total.zip(behind).map(|(t, b)| t + b);
        lag.partitions.push(PartitionLag {
            partition: partition.clone(),
            committed: then,
            latest: now,
            behind,
        });
    }
    lag.behind = total;
    if total.is_none() {
        lag.note = Some(
            "partitions without a committed offset are read from their starting offset: \
             their lag is not known here"
                .into(),
        );
    }
    lag
}

/// The numbers in `value` by their path of keys joined with `/` (`""` for
/// a number itself); `None` if it holds anything else.
fn leaves(value: &serde_json::Value) -> Option<BTreeMap<String, u64>> {
    fn walk(value: &serde_json::Value, path: &str, out: &mut BTreeMap<String, u64>) -> bool {
        match value {
            serde_json::Value::Number(n) => n.as_u64().is_some_and(|n| {
                out.insert(path.to_string(), n);
                true
            }),
            serde_json::Value::Object(map) => map.iter().all(|(key, value)| {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}/{key}")
                };
                walk(value, &path, out)
            }),
            _ => false,
        }
    }
    let mut out = BTreeMap::new();
    walk(value, "", &mut out).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn offset(v: serde_json::Value) -> Offset {
        Offset(v)
    }

    #[test]
    fn numbers_and_maps_compare() {
        let lag = compare(
            Some(&Offset::from_u64(3)),
            Some(Offset::from_u64(7)),
            "files".into(),
        );
        assert_eq!(lag.behind, Some(4));
        let lag = compare(None, Some(Offset::from_u64(7)), "files".into());
        assert_eq!(lag.behind, Some(7));
        let lag = compare(None, None, "files".into());
        assert_eq!(lag.behind, Some(0));

        let committed = offset(json!({"t": {"0": 5, "1": 7}}));
        let latest = offset(json!({"t": {"0": 9, "1": 7, "2": 4}}));
        let lag = compare(Some(&committed), Some(latest), "records".into());
        assert_eq!(lag.behind, None);
        assert!(lag.note.is_some());
        let by: Vec<(String, Option<u64>)> = lag
            .partitions
            .iter()
            .map(|p| (p.partition.clone(), p.behind))
            .collect();
        assert_eq!(
            by,
            [
                ("t/0".to_string(), Some(4)),
                ("t/1".to_string(), Some(0)),
                ("t/2".to_string(), None)
            ]
        );
        let latest = offset(json!({"t": {"0": 9, "1": 8}}));
        let lag = compare(Some(&committed), Some(latest), "records".into());
        assert_eq!(lag.behind, Some(5));
        assert_eq!(lag.note, None);

        let lag = compare(None, Some(offset(json!("abc"))), "offsets".into());
        assert_eq!(lag.behind, None);
        assert!(lag.note.unwrap().contains("not numbers"));
    }
}
