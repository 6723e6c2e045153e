//! Placeholder, being written.

/// Placeholder.
pub struct MemoryStream;
