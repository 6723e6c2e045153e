//! When micro-batches run, and what each batch emits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a streaming query starts its micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// A batch every `interval`, measured from the start of the previous
    /// one; a batch that takes longer is followed at once by the next.
    /// `Duration::ZERO` runs batches back to back, as fast as possible.
    /// Triggers that find no new data consume no batch id.
    ProcessingTime(Duration),
    /// Process everything available when the query starts, in as many
    /// batches as the sources' read limits require, then stop. Data that
    /// arrives after the start is left for the next run.
    AvailableNow,
    /// Finish a batch left uncommitted by a crash, if any, then run one
    /// batch with everything available (ignoring read limits), then stop.
    Once,
}

impl Default for Trigger {
    /// Back-to-back batches, as Spark's default trigger.
    fn default() -> Self {
        Trigger::ProcessingTime(Duration::ZERO)
    }
}

/// What each batch writes to the sink (see the output-mode table in the
/// design document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// Only new rows; a row, once emitted, never changes.
    #[default]
    Append,
    /// The rows that changed in this batch.
    Update,
    /// The whole result table, every batch (aggregations only).
    Complete,
}

impl std::fmt::Display for OutputMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputMode::Append => "append",
            OutputMode::Update => "update",
            OutputMode::Complete => "complete",
        })
    }
}
