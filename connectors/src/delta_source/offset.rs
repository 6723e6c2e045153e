//! The Delta source's offsets: positions in the table's sequence of data
//! files, as JSON in the query's offset log.

use serde::{Deserialize, Serialize};
use tidemill_engine::Offset;

use super::DeltaSourceError;

/// The format version of [`DeltaOffset`] (Spark's `sourceVersion`).
const OFFSET_FORMAT: u32 = 1;

/// A position in the stream of a Delta table's data files.
///
/// The stream is the files of each table version in turn: for the
/// *starting version* (the snapshot a query reads first, by default), every
/// file of the table at that version, by path; for every other version, the
/// files its commit adds with `dataChange = true`, in the commit's order.
/// A position `(version, index)` means "every file of the versions before
/// `version`, and the first `index` files of `version`"; a version read to
/// its end is written as `(version + 1, 0)`, so a position never has to
/// know how many files its version holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Position {
    /// The version being read.
    pub version: u64,
    /// How many of its files are read.
    pub index: u64,
    /// Whether `version`'s files are the table's snapshot at that version
    /// (the starting version) rather than the files its commit adds.
    pub starting: bool,
}

impl Position {
    /// The start of `version`'s files.
    pub fn at(version: u64, starting: bool) -> Self {
        Self {
            version,
            index: 0,
            starting,
        }
    }

    /// The start of the version after this one (its changes, never a
    /// snapshot).
    pub fn next_version(self) -> Self {
        Self::at(self.version + 1, false)
    }

    /// Whether `self` is at or after `other`. Positions in one stream are
    /// ordered by version and index; the starting version's snapshot comes
    /// before that version's later positions only in the sense of its
    /// index, as both are never mixed in one stream.
    pub fn reaches(self, other: Self) -> bool {
        (self.version, self.index) >= (other.version, other.index)
    }
}

/// The JSON form of a [`Position`] in the offset log, with the table's id
/// (Spark's `reservoirId`), so an offset is never applied to another table.
///
/// ```json
/// {"source_version": 1, "table_id": "3f1c…", "version": 12, "index": 0, "is_starting_version": false}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DeltaOffset {
    /// [`OFFSET_FORMAT`].
    pub source_version: u32,
    /// The table's id (its `metaData.id`).
    pub table_id: String,
    /// [`Position::version`].
    pub version: u64,
    /// [`Position::index`].
    pub index: u64,
    /// [`Position::starting`].
    pub is_starting_version: bool,
}

impl DeltaOffset {
    /// The offset of `position` in the table `table_id`.
    pub fn new(table_id: &str, position: Position) -> Self {
        Self {
            source_version: OFFSET_FORMAT,
            table_id: table_id.to_string(),
            version: position.version,
            index: position.index,
            is_starting_version: position.starting,
        }
    }

    /// The position the offset holds.
    pub fn position(&self) -> Position {
        Position {
            version: self.version,
            index: self.index,
            starting: self.is_starting_version,
        }
    }

    /// As the engine's [`Offset`].
    pub fn to_offset(&self) -> Offset {
        Offset(serde_json::to_value(self).expect("a Delta offset serializes"))
    }

    /// Reads an engine [`Offset`] made by a Delta source of `table`
    /// (URL, for messages) whose id is `table_id`.
    pub fn parse(offset: &Offset, table: &str, table_id: &str) -> Result<Self, DeltaSourceError> {
        let invalid = |reason: String| DeltaSourceError::InvalidOffset {
            table: table.to_string(),
            offset: offset.to_string(),
            reason,
        };
        let parsed: DeltaOffset = serde_json::from_value(offset.0.clone())
            .map_err(|e| invalid(format!("not a Delta source offset: {e}")))?;
        if parsed.source_version != OFFSET_FORMAT {
            return Err(invalid(format!(
                "offset format {} is not supported (this build writes format {OFFSET_FORMAT})",
                parsed.source_version
            )));
        }
        if parsed.table_id != table_id {
            return Err(DeltaSourceError::TableReplaced {
                table: table.to_string(),
                detail: "the query's offsets were made for another table at this location"
                    .to_string(),
                expected: parsed.table_id,
                found: table_id.to_string(),
            });
        }
        Ok(parsed)
    }
}
