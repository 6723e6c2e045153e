//! Placeholder, being written.

/// Placeholder.
pub struct RateSource;
