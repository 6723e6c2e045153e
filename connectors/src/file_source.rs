//! Placeholder, being written.

/// Placeholder.
pub struct FileSource;
/// Placeholder.
pub enum FileFormat {}
