//! The data files of a state store: per-partition deltas and snapshots,
//! written as Arrow IPC files.
//!
//! - `<dir>/<version>.delta`: the changes of `version`, one part per
//!   partition with changes, the parts one after the other. Each part is
//!   a whole Arrow IPC file of its own: the keys of the partition that
//!   changed in `version`, with their new value, or a null value for a
//!   removed key. The commit file records where each part starts.
//!   (Stores written before deltas were shared have one delta file per
//!   partition instead, `<dir>/<partition>/<version>.delta`; they are
//!   still read.)
//! - `<dir>/<partition>/<version>-<tag>.snapshot` (or
//!   `<version>.snapshot`): the whole content of the partition as of
//!   `version` (never a null value). A snapshot written in the background
//!   carries a tag (16 hex digits) unique to the store instance that wrote
//!   it, so two runs compacting the same version never write the same
//!   file.
//!
//! Both kinds of IPC file have the columns `key: Binary` (non-null), `value: Binary`
//! (nullable) and `expires_at_ms: Int64` (nullable), one row per key in no
//! particular order, and carry in their schema metadata the format version, the kind of file,
//! the partition and the version, so a file that was moved or copied to the
//! wrong name is caught instead of being replayed.

use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, BinaryBuilder, Int64Array, Int64Builder, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::{Result, StateError};

/// The version of the state store's file formats (data files, `_metadata`
/// and commit files).
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Schema metadata keys of a data file.
const META_FORMAT_VERSION: &str = "tidemill.state.format_version";
const META_KIND: &str = "tidemill.state.kind";
const META_PARTITION: &str = "tidemill.state.partition";
const META_VERSION: &str = "tidemill.state.version";

/// A record batch is closed after this many rows…
const BATCH_ROWS: usize = 64 * 1024;
/// …or this many bytes of keys and values, far below the 2 GiB a `Binary`
/// array can hold.
const BATCH_BYTES: usize = 64 * 1024 * 1024;

/// The two kinds of data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FileKind {
    /// The changes of one version.
    Delta,
    /// The full content of a partition at one version.
    Snapshot,
}

impl FileKind {
    fn as_str(self) -> &'static str {
        match self {
            FileKind::Delta => "delta",
            FileKind::Snapshot => "snapshot",
        }
    }

    /// The file name of this kind of file for `version`, with the writer's
    /// `tag` if it has one: `7.delta`, `7-00000000000000ff.snapshot`.
    pub(crate) fn file_name(self, version: u64, tag: Option<u64>) -> String {
        match tag {
            None => format!("{version}.{}", self.as_str()),
            Some(tag) => format!("{version}-{tag:016x}.{}", self.as_str()),
        }
    }

    /// Parses a file name made by [`FileKind::file_name`] into version,
    /// kind and tag; `None` for any other name (a temporary file of an
    /// interrupted write, say).
    pub(crate) fn parse_file_name(name: &str) -> Option<(u64, FileKind, Option<u64>)> {
        let (stem, ext) = name.split_once('.')?;
        let kind = match ext {
            "delta" => FileKind::Delta,
            "snapshot" => FileKind::Snapshot,
            _ => return None,
        };
        let digits = |s: &str, radix: u32| {
            (!s.is_empty() && s.chars().all(|c| c.is_digit(radix))).then_some(())
        };
        let (version, tag) = match stem.split_once('-') {
            Some((version, tag)) if tag.len() == 16 => {
                digits(tag, 16)?;
                (version, Some(u64::from_str_radix(tag, 16).ok()?))
            }
            Some(_) => return None,
            None => (stem, None),
        };
        digits(version, 10)?;
        Some((version.parse().ok()?, kind, tag))
    }
}

/// One row of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row<'a> {
    pub key: &'a [u8],
    /// `None` marks a removed key (deltas only).
    pub value: Option<&'a [u8]>,
    pub expires_at_ms: Option<i64>,
}

/// What identifies a data file: where it is (for messages), kind,
/// partition and version.
#[derive(Debug, Clone)]
pub(crate) struct FileId {
    pub path: Path,
    /// For a part of a version's shared delta file: its bytes in the file.
    pub part: Option<Range<u64>>,
    pub kind: FileKind,
    pub partition: usize,
    pub version: u64,
}

impl FileId {
    /// `reason`, prefixed with which part of the file it concerns when the
    /// file is shared by several partitions.
    pub(crate) fn describe(&self, reason: impl std::fmt::Display) -> String {
        match &self.part {
            None => reason.to_string(),
            Some(bytes) => format!(
                "partition {}'s part (bytes {}..{}): {reason}",
                self.partition, bytes.start, bytes.end
            ),
        }
    }

    /// A [`StateError::Corrupt`] naming this file (and part) and `reason`.
    pub(crate) fn corrupt(&self, reason: impl std::fmt::Display) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            reason: self.describe(reason),
        }
    }
}

fn file_schema(id: &FileId) -> SchemaRef {
    let metadata = [
        (META_FORMAT_VERSION, FORMAT_VERSION.to_string()),
        (META_KIND, id.kind.as_str().to_string()),
        (META_PARTITION, id.partition.to_string()),
        (META_VERSION, id.version.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Arc::new(
        Schema::new(vec![
            Field::new("key", DataType::Binary, false),
            Field::new("value", DataType::Binary, true),
            Field::new("expires_at_ms", DataType::Int64, true),
        ])
        .with_metadata(metadata),
    )
}

/// Encodes `rows` as the Arrow IPC file `id`. Returns the bytes and the
/// number of rows.
pub(crate) fn encode<'a>(
    id: &FileId,
    rows: impl IntoIterator<Item = Row<'a>>,
) -> Result<(Bytes, u64)> {
    let err = |source| StateError::Encode {
        path: id.path.clone(),
        source,
    };
    let schema = file_schema(id);
    let mut writer = FileWriter::try_new(Vec::new(), &schema).map_err(err)?;
    let mut keys = BinaryBuilder::new();
    let mut values = BinaryBuilder::new();
    let mut expiries = Int64Builder::new();
    let (mut batch_rows, mut batch_bytes, mut total) = (0usize, 0usize, 0u64);
    let flush = |keys: &mut BinaryBuilder,
                 values: &mut BinaryBuilder,
                 expiries: &mut Int64Builder,
                 writer: &mut FileWriter<Vec<u8>>| {
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(keys.finish()),
                Arc::new(values.finish()),
                Arc::new(expiries.finish()),
            ],
        )
        .map_err(err)?;
        writer.write(&batch).map_err(err)
    };
    for row in rows {
        keys.append_value(row.key);
        values.append_option(row.value);
        expiries.append_option(row.expires_at_ms);
        batch_rows += 1;
        total += 1;
        batch_bytes += row.key.len() + row.value.map_or(0, <[u8]>::len);
        if batch_rows >= BATCH_ROWS || batch_bytes >= BATCH_BYTES {
            flush(&mut keys, &mut values, &mut expiries, &mut writer)?;
            (batch_rows, batch_bytes) = (0, 0);
        }
    }
    if batch_rows > 0 {
        flush(&mut keys, &mut values, &mut expiries, &mut writer)?;
    }
    writer.finish().map_err(err)?;
    let bytes = writer.into_inner().map_err(err)?;
    Ok((Bytes::from(bytes), total))
}

/// Decodes the Arrow IPC file `id` from `bytes`, calling `apply` on every
/// row in order. Returns the number of rows.
///
/// Fails with [`StateError::Corrupt`] naming the file if it is truncated
/// (the IPC footer is checked), unreadable, not the file it should be, or
/// holds a removal in a snapshot; with [`StateError::Incompatible`] if it
/// was written by another format version.
pub(crate) fn decode(id: &FileId, bytes: &[u8], mut apply: impl FnMut(Row<'_>)) -> Result<u64> {
    let mut total = 0u64;
    for batch in read(id, bytes)? {
        total += batch.len() as u64;
        batch.rows().for_each(&mut apply);
    }
    Ok(total)
}

/// The record batches of a data file, checked as [`decode`] checks them.
pub(crate) fn read(id: &FileId, bytes: &[u8]) -> Result<Vec<Columns>> {
    let corrupt = |reason: String| id.corrupt(reason);
    let reader = FileReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| corrupt(format!("not a readable Arrow IPC file ({e})")))?;
    check_schema(id, &reader.schema())?;
    let mut out = Vec::new();
    for (index, batch) in reader.enumerate() {
        let batch =
            batch.map_err(|e| corrupt(format!("record batch {index} is unreadable ({e})")))?;
        let column = |i: usize| batch.column(i).as_any();
        let (Some(keys), Some(values), Some(expiries)) = (
            column(0).downcast_ref::<BinaryArray>(),
            column(1).downcast_ref::<BinaryArray>(),
            column(2).downcast_ref::<Int64Array>(),
        ) else {
            return Err(corrupt(format!(
                "record batch {index} has unexpected column types"
            )));
        };
        if keys.null_count() > 0 {
            return Err(corrupt(format!("record batch {index} has a null key")));
        }
        if id.kind == FileKind::Snapshot && values.null_count() > 0 {
            return Err(corrupt(format!(
                "record batch {index} has a null value, which a snapshot cannot hold"
            )));
        }
        out.push(Columns {
            keys: keys.clone(),
            values: values.clone(),
            expiries: expiries.clone(),
        });
    }
    Ok(out)
}

/// The columns of one record batch of a data file.
pub(crate) struct Columns {
    keys: BinaryArray,
    values: BinaryArray,
    expiries: Int64Array,
}

impl Columns {
    /// Rows in the batch.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The batch's rows, in order.
    pub(crate) fn rows(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        (0..self.len()).map(|i| self.row(i))
    }

    /// Row `i` of the batch.
    pub(crate) fn row(&self, i: usize) -> Row<'_> {
        Row {
            key: self.keys.value(i),
            value: self.values.is_valid(i).then(|| self.values.value(i)),
            expires_at_ms: self.expiries.is_valid(i).then(|| self.expiries.value(i)),
        }
    }

    /// The key of row `i`.
    pub(crate) fn key(&self, i: usize) -> &[u8] {
        self.keys.value(i)
    }
}

fn check_schema(id: &FileId, schema: &Schema) -> Result<()> {
    let meta = |key: &str| schema.metadata().get(key).map(String::as_str);
    let Some(format) = meta(META_FORMAT_VERSION) else {
        return Err(StateError::Incompatible {
            path: id.path.clone(),
            reason: id.describe(format_args!(
                "not a Tidemill state file: its schema metadata has no '{META_FORMAT_VERSION}'"
            )),
        });
    };
    if format != FORMAT_VERSION.to_string() {
        return Err(StateError::Incompatible {
            path: id.path.clone(),
            reason: id.describe(format_args!(
                "format version {format} is not supported (this build reads version {FORMAT_VERSION})"
            )),
        });
    }
    let expected = file_schema(id);
    let found = (meta(META_KIND), meta(META_PARTITION), meta(META_VERSION));
    let wanted = (
        Some(id.kind.as_str()),
        Some(id.partition.to_string()),
        Some(id.version.to_string()),
    );
    if found.0 != wanted.0 || found.1 != wanted.1.as_deref() || found.2 != wanted.2.as_deref() {
        return Err(id.corrupt(format_args!(
                "holds the {} of partition {} at version {}, expected the {} of partition {} at version {}",
                found.0.unwrap_or("?"),
                found.1.unwrap_or("?"),
                found.2.unwrap_or("?"),
                id.kind.as_str(),
                id.partition,
                id.version
        )));
    }
    if schema.fields() != expected.fields() {
        return Err(id.corrupt(format_args!(
            "unexpected columns {:?} (expected key: Binary, value: Binary, expires_at_ms: Int64)",
            schema
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: FileKind) -> FileId {
        FileId {
            path: Path::from("chk/state/3/7.delta"),
            part: None,
            kind,
            partition: 3,
            version: 7,
        }
    }

    type Rows = Vec<(Vec<u8>, Option<Vec<u8>>, Option<i64>)>;

    fn rows() -> Rows {
        vec![
            (b"".to_vec(), Some(b"empty key".to_vec()), None),
            (b"a".to_vec(), Some(Vec::new()), Some(5)),
            (b"b".to_vec(), None, None),
            (vec![0, 255, 7], Some(vec![1, 2, 3]), Some(-3)),
        ]
    }

    fn encode_rows(id: &FileId, rows: &Rows) -> Bytes {
        encode(
            id,
            rows.iter().map(|(k, v, e)| Row {
                key: k,
                value: v.as_deref(),
                expires_at_ms: *e,
            }),
        )
        .unwrap()
        .0
    }

    fn decode_rows(id: &FileId, bytes: &[u8]) -> Result<Rows> {
        let mut out = Vec::new();
        decode(id, bytes, |r| {
            out.push((r.key.to_vec(), r.value.map(<[u8]>::to_vec), r.expires_at_ms))
        })?;
        Ok(out)
    }

    #[test]
    fn round_trips_removals_and_empty_values() {
        let id = id(FileKind::Delta);
        let bytes = encode_rows(&id, &rows());
        assert_eq!(decode_rows(&id, &bytes).unwrap(), rows());
        let empty = encode_rows(&id, &Vec::new());
        assert!(decode_rows(&id, &empty).unwrap().is_empty());
    }

    #[test]
    fn truncation_is_reported_with_the_path() {
        let id = id(FileKind::Delta);
        let bytes = encode_rows(&id, &rows());
        for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            let err = decode_rows(&id, &bytes[..len]).unwrap_err();
            assert!(
                matches!(err, StateError::Corrupt { .. }),
                "len {len}: {err}"
            );
            assert!(err.to_string().contains("chk/state/3/7.delta"), "{err}");
        }
    }

    #[test]
    fn a_file_under_the_wrong_name_is_refused() {
        let bytes = encode_rows(&id(FileKind::Delta), &rows());
        let mut other = id(FileKind::Delta);
        other.version = 8;
        let err = decode_rows(&other, &bytes).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds the delta of partition 3 at version 7"),
            "{err}"
        );
        let err = decode_rows(&id(FileKind::Snapshot), &bytes).unwrap_err();
        assert!(err.to_string().contains("expected the snapshot"), "{err}");
    }

    #[test]
    fn a_snapshot_cannot_hold_removals() {
        let id = id(FileKind::Snapshot);
        let bytes = encode_rows(&id, &rows());
        let err = decode_rows(&id, &bytes).unwrap_err();
        assert!(err.to_string().contains("null value"), "{err}");
    }

    #[test]
    fn file_names() {
        assert_eq!(FileKind::Delta.file_name(12, None), "12.delta");
        assert_eq!(
            FileKind::Snapshot.file_name(12, Some(255)),
            "12-00000000000000ff.snapshot"
        );
        assert_eq!(
            FileKind::parse_file_name("12.snapshot"),
            Some((12, FileKind::Snapshot, None))
        );
        assert_eq!(
            FileKind::parse_file_name("12-00000000000000ff.snapshot"),
            Some((12, FileKind::Snapshot, Some(255)))
        );
        assert_eq!(FileKind::parse_file_name("12-ff.snapshot"), None);
        assert_eq!(
            FileKind::parse_file_name("-00000000000000ff.snapshot"),
            None
        );
        assert_eq!(FileKind::parse_file_name("12.delta#1"), None);
        assert_eq!(FileKind::parse_file_name("+1.delta"), None);
        assert_eq!(FileKind::parse_file_name("x.delta"), None);
    }
}
