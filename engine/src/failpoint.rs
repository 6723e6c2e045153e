//! Crash-test hooks, compiled only with the `failpoints` cargo feature.
//!
//! Tidemill's recovery tests kill a running pipeline with `SIGKILL` at each
//! step of a micro-batch. To make "each step" exact, the engine (and sinks)
//! call [`hit`] at named points. With the feature, this is a single read of
//! a value initialised once. Without it (any ordinary build), this module
//! is not part of the API: the engine and the connectors call empty inline
//! functions in its place, which compile to nothing. The test build of the
//! `tidemill` crate enables it through a dev-dependency, so the test
//! binaries and the `tidemill` command they run have the hooks.
//!
//! When the environment variable `TIDEMILL_FAILPOINT` is set to
//! `<point>@<batch id>` and that point is reached in that batch, the process
//! prints `TIDEMILL_FAILPOINT_REACHED <point>@<batch id>` on standard output
//! and then blocks forever, so the test harness can kill it at exactly that
//! moment.
//!
//! The points, in the order a batch passes them:
//! `before_offset_log`, `after_offset_log`, `before_sink`, `during_sink`
//! (inside a sink, after some output is written and before the sink records
//! the batch as done), `after_sink`, `before_state_commit`,
//! `after_state_commit` (around committing the state of a streaming
//! aggregation), `before_commit_log`, `after_commit_log`.

use std::io::Write;
use std::sync::OnceLock;

/// The environment variable naming the point to stop at.
pub const ENV_VAR: &str = "TIDEMILL_FAILPOINT";

fn configured() -> Option<&'static (String, u64)> {
    static POINT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            let value = std::env::var(ENV_VAR).ok()?;
            let (point, batch) = value.split_once('@')?;
            Some((point.to_string(), batch.parse().ok()?))
        })
        .as_ref()
}

/// Whether a test asked to stop at `point` of batch `batch_id`: a sink
/// that has a point inside its work can prepare for it (write part of the
/// batch's output first) only when the point will be hit.
pub fn armed(point: &str, batch_id: u64) -> bool {
    configured().is_some_and(|(want, want_batch)| want == point && *want_batch == batch_id)
}

/// Marks that `point` of batch `batch_id` was reached; blocks forever if a
/// test asked to stop there (see the module docs).
pub fn hit(point: &str, batch_id: u64) {
    if armed(point, batch_id) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "TIDEMILL_FAILPOINT_REACHED {point}@{batch_id}");
        let _ = out.flush();
        drop(out);
        loop {
            std::thread::park();
        }
    }
}
