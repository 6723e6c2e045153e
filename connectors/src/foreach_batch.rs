//! Placeholder, being written.

/// Placeholder.
pub struct ForeachBatchSink;
