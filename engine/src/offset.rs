//! Source offsets.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A position in a source, opaque to the engine.
///
/// Each source chooses its own shape (a row count, a file-log index, a map
/// of partition → offset) as JSON, which is how offsets are recorded in the
/// offset log. The engine only compares offsets for equality (an unchanged
/// offset means "no new data") and hands them back to the source that made
/// them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub serde_json::Value);

impl Offset {
    /// An offset that is a single non-negative number, the common case.
    pub fn from_u64(n: u64) -> Self {
        Self(serde_json::Value::from(n))
    }

    /// The offset as a number, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        self.0.as_u64()
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
