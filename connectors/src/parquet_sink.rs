//! Placeholder, being written.

/// Placeholder.
pub struct ParquetSink;
