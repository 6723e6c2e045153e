//! Placeholder, being written.

/// Placeholder.
pub struct MemorySink;
