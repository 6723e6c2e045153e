//! Placeholder, being written.

/// Placeholder.
pub struct ConsoleSink;
