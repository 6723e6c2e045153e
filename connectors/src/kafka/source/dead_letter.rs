//! The dead-letter log: the dead-letter batch id under which each range a
//! stream read wrote its bad records, kept in the source's checkpoint
//! (`dead_letter/<id>`), so that a replayed range writes under the same id.

use serde::{Deserialize, Serialize};
use tidemill_engine::Result;
use tidemill_state::CheckpointDir;

use super::super::offsets::PartitionOffsets;

/// Kind and version of a dead-letter log entry.
const DEAD_LETTER_KIND: &str = "kafka-source-dead-letter";
const DEAD_LETTER_VERSION: u32 = 1;

/// The dead-letter log: which dead-letter batch id each source range
/// wrote its bad records under, so a replay writes under the same id.
#[derive(Debug)]
pub(super) struct DeadLetterLog {
    dir: CheckpointDir,
    entries: Vec<DeadLetterEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeadLetterEntry {
    id: u64,
    start: serde_json::Value,
    end: serde_json::Value,
}

impl DeadLetterLog {
    pub(super) async fn load(dir: CheckpointDir) -> Result<Self> {
        let mut entries = Vec::new();
        for name in dir.list_names().await? {
            if name.parse::<u64>().is_err() {
                continue;
            }
            if let Some(entry) = dir
                .read::<DeadLetterEntry>(&name, DEAD_LETTER_KIND, DEAD_LETTER_VERSION)
                .await?
            {
                entries.push(entry);
            }
        }
        entries.sort_by_key(|e| e.id);
        Ok(Self { dir, entries })
    }

    pub(super) async fn id_for(
        &mut self,
        start: serde_json::Value,
        end: serde_json::Value,
    ) -> Result<u64> {
        if let Some(entry) = self
            .entries
            .iter()
            .find(|e| e.start == start && e.end == end)
        {
            return Ok(entry.id);
        }
        let id = self.entries.last().map_or(0, |e| e.id + 1);
        let entry = DeadLetterEntry { id, start, end };
        self.dir
            .create(
                &id.to_string(),
                DEAD_LETTER_KIND,
                DEAD_LETTER_VERSION,
                &entry,
            )
            .await?;
        self.entries.push(entry);
        Ok(id)
    }

    /// Forgets entries of ranges that end at or before `committed` (they
    /// will never be read again), keeping the newest for its id.
    pub(super) async fn purge(&mut self, committed: &PartitionOffsets) -> Result<()> {
        let Some(newest) = self.entries.last().map(|e| e.id) else {
            return Ok(());
        };
        let mut kept = Vec::new();
        for entry in std::mem::take(&mut self.entries) {
            let done = entry.id != newest
                && PartitionOffsets::from_json(&entry.end)
                    .map(|end| {
                        end.iter()
                            .all(|(t, p, o)| committed.get(t, p).is_some_and(|c| c >= o))
                    })
                    .unwrap_or(false);
            if done {
                self.dir.delete(&entry.id.to_string()).await?;
            } else {
                kept.push(entry);
            }
        }
        self.entries = kept;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;
    use serde_json::{Value, json};

    use super::super::testing::checkpoint;
    use super::*;

    /// A dead-letter log in the checkpoint under `dir`, as a stream opens
    /// it.
    async fn load(dir: &tempfile::TempDir) -> (DeadLetterLog, CheckpointDir) {
        let chk = checkpoint(&SessionContext::new(), dir.path()).child("dead_letter");
        (DeadLetterLog::load(chk.clone()).await.unwrap(), chk)
    }

    fn end(offset: i64) -> Value {
        json!({"trades": {"0": offset}})
    }

    async fn names(chk: &CheckpointDir) -> Vec<String> {
        let mut names = chk.list_names().await.unwrap();
        names.sort();
        names
    }

    /// A range gets the next id the first time, and the same id again.
    #[tokio::test]
    async fn ranges_get_ids_in_order_and_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, chk) = load(&dir).await;
        assert_eq!(log.id_for(Value::Null, end(5)).await.unwrap(), 0);
        assert_eq!(log.id_for(end(5), end(9)).await.unwrap(), 1);
        assert_eq!(log.id_for(Value::Null, end(5)).await.unwrap(), 0);
        assert_eq!(log.id_for(end(5), end(9)).await.unwrap(), 1);
        // Same end, other start: another range.
        assert_eq!(log.id_for(end(4), end(9)).await.unwrap(), 2);
        assert_eq!(names(&chk).await, ["0", "1", "2"]);
    }

    /// A restarted query finds the ids of the ranges it logged.
    #[tokio::test]
    async fn the_log_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = load(&dir).await;
        log.id_for(Value::Null, end(5)).await.unwrap();
        log.id_for(end(5), end(9)).await.unwrap();
        drop(log);
        let (mut log, _) = load(&dir).await;
        assert_eq!(log.id_for(end(5), end(9)).await.unwrap(), 1);
        assert_eq!(log.id_for(Value::Null, end(5)).await.unwrap(), 0);
        assert_eq!(log.id_for(end(9), end(12)).await.unwrap(), 2);
    }

    /// Committed ranges are forgotten, but the newest entry stays so that
    /// ids are never reused.
    #[tokio::test]
    async fn purge_forgets_committed_ranges_but_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, chk) = load(&dir).await;
        log.id_for(Value::Null, end(5)).await.unwrap();
        log.id_for(end(5), end(9)).await.unwrap();
        log.id_for(end(9), end(12)).await.unwrap();
        let committed = |offset| PartitionOffsets::new().with("trades", 0, offset);
        log.purge(&committed(8)).await.unwrap();
        assert_eq!(names(&chk).await, ["1", "2"]);
        log.purge(&committed(100)).await.unwrap();
        assert_eq!(names(&chk).await, ["2"]);
        assert_eq!(log.id_for(end(12), end(20)).await.unwrap(), 3);
        let (mut reloaded, _) = load(&dir).await;
        assert_eq!(reloaded.id_for(end(9), end(12)).await.unwrap(), 2);
        assert_eq!(reloaded.id_for(end(12), end(20)).await.unwrap(), 3);
    }

    /// A range ends committed only when every partition of its end is.
    #[tokio::test]
    async fn purge_keeps_a_range_with_a_partition_not_yet_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, chk) = load(&dir).await;
        let two = json!({"trades": {"0": 5, "1": 7}});
        log.id_for(Value::Null, two.clone()).await.unwrap();
        log.id_for(two, end(9)).await.unwrap();
        let partly = PartitionOffsets::new().with("trades", 0, 9);
        log.purge(&partly).await.unwrap();
        assert_eq!(names(&chk).await, ["0", "1"]);
        log.purge(&partly.with("trades", 1, 7)).await.unwrap();
        assert_eq!(names(&chk).await, ["1"]);
    }

    /// Other files in the directory are not entries.
    #[tokio::test]
    async fn names_that_are_not_ids_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (_, chk) = load(&dir).await;
        chk.create("notes", "other", 1, &json!({"id": 0}))
            .await
            .unwrap();
        let (mut log, _) = load(&dir).await;
        assert!(log.entries.is_empty());
        assert_eq!(log.id_for(Value::Null, end(1)).await.unwrap(), 0);
        assert_eq!(names(&chk).await, ["0", "notes"]);
    }
}
