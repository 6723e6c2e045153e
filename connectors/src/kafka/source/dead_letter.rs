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
