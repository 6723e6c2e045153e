//! A log of checkpoint files named by batch id.

use std::marker::PhantomData;

use serde::{Serialize, de::DeserializeOwned};

use crate::{CheckpointDir, Result, StateError};

/// A write-once log of entries named by a batch id: `<dir>/0`, `<dir>/1`, ….
///
/// The offset log and the commit log of a query are `NumberedLog`s. Each
/// entry is written once, atomically, and never changed; old entries are
/// removed by [`NumberedLog::purge_before`].
#[derive(Debug, Clone)]
pub struct NumberedLog<T> {
    dir: CheckpointDir,
    kind: &'static str,
    version: u32,
    _entry: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> NumberedLog<T> {
    /// A log in `dir` whose files carry the given kind and format version.
    pub fn new(dir: CheckpointDir, kind: &'static str, version: u32) -> Self {
        Self {
            dir,
            kind,
            version,
            _entry: PhantomData,
        }
    }

    /// The directory holding the log.
    pub fn dir(&self) -> &CheckpointDir {
        &self.dir
    }

    /// Writes entry `id`. Fails with [`StateError::AlreadyExists`] if it is
    /// already there: log entries are never rewritten.
    pub async fn add(&self, id: u64, entry: &T) -> Result<()> {
        self.dir
            .create(&id.to_string(), self.kind, self.version, entry)
            .await
    }

    /// Reads entry `id`, if present.
    pub async fn get(&self, id: u64) -> Result<Option<T>> {
        self.dir
            .read(&id.to_string(), self.kind, self.version)
            .await
    }

    /// Whether entry `id` exists (without reading it).
    pub async fn contains(&self, id: u64) -> Result<bool> {
        self.dir.exists(&id.to_string()).await
    }

    /// The ids present, ascending. Files whose names are not ids (temporary
    /// files of an interrupted write, say) are ignored.
    pub async fn ids(&self) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self
            .dir
            .list_names()
            .await?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The entry with the highest id, if any.
    pub async fn latest(&self) -> Result<Option<(u64, T)>> {
        let Some(&id) = self.ids().await?.last() else {
            return Ok(None);
        };
        match self.get(id).await? {
            Some(entry) => Ok(Some((id, entry))),
            None => Err(StateError::Corrupt {
                path: self.dir.path(&id.to_string()),
                reason:
                    "listed but vanished while being read (is another query using this checkpoint?)"
                        .into(),
            }),
        }
    }

    /// Deletes entry `id` if present.
    pub async fn remove(&self, id: u64) -> Result<()> {
        self.dir.delete(&id.to_string()).await
    }

    /// Deletes every entry with an id below `id`.
    pub async fn purge_before(&self, id: u64) -> Result<()> {
        for old in self.ids().await?.into_iter().take_while(|&old| old < id) {
            self.remove(old).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{memory::InMemory, path::Path};
    use std::sync::Arc;

    #[tokio::test]
    async fn latest_and_purge() {
        let dir = CheckpointDir::new(Arc::new(InMemory::new()), Path::from("chk/offsets"));
        let log = NumberedLog::<String>::new(dir, "offsets", 1);
        assert!(log.latest().await.unwrap().is_none());
        for id in [0u64, 1, 2, 10] {
            log.add(id, &format!("e{id}")).await.unwrap();
        }
        assert!(log.add(2, &"again".to_string()).await.is_err());
        assert_eq!(log.latest().await.unwrap(), Some((10, "e10".to_string())));
        log.purge_before(2).await.unwrap();
        assert_eq!(log.ids().await.unwrap(), vec![2, 10]);
        assert_eq!(log.get(2).await.unwrap().as_deref(), Some("e2"));
    }
}
