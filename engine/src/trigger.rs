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

/// The first wait of an idle spell: see [`IdleWait`].
const FIRST_IDLE_WAIT: Duration = Duration::from_millis(1);

/// How long a processing-time trigger that found no new data waits before
/// asking the sources again.
///
/// The first trigger of an idle spell waits [`FIRST_IDLE_WAIT`] (1 ms):
/// data often follows a batch closely (a back-to-back batch can finish in
/// a quarter of a millisecond, before the next row of a 10 000 rows/s
/// stream arrives), and a whole polling delay there is added to that
/// row's latency. Each further trigger without data doubles the wait, up
/// to the query's `no_data_polling_delay` (Spark's polling delay, 10 ms by
/// default): an idle query asks its sources a few more times at the start
/// of each idle spell, then as often as before.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleWait {
    next: Duration,
    max: Duration,
}

impl IdleWait {
    /// Waits growing up to `max` (the polling delay).
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            next: FIRST_IDLE_WAIT.min(max),
            max,
        }
    }

    /// A batch ran: the next idle spell starts with a short wait again.
    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.max);
    }

    /// The wait after a trigger that found no new data.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_spell_starts_with_a_short_wait_that_doubles_up_to_the_polling_delay() {
        let ms = Duration::from_millis;
        let mut wait = IdleWait::new(ms(10));
        let waits: Vec<Duration> = (0..6).map(|_| wait.next_wait()).collect();
        assert_eq!(waits, [ms(1), ms(2), ms(4), ms(8), ms(10), ms(10)]);
        // A batch ran: the next spell starts short again.
        wait.reset();
        assert_eq!(wait.next_wait(), ms(1));
        // A polling delay under the first wait bounds every wait.
        let mut short = IdleWait::new(Duration::from_micros(200));
        assert_eq!(short.next_wait(), Duration::from_micros(200));
        assert_eq!(short.next_wait(), Duration::from_micros(200));
        let mut zero = IdleWait::new(Duration::ZERO);
        assert_eq!(zero.next_wait(), Duration::ZERO);
    }
}
