//! Merging session windows across micro-batches.
//!
//! Each batch's rows are grouped into sessions within the batch (by the
//! session-window rewrite, [`crate::window::expand_grouping_windows`]). A
//! batch session may overlap sessions kept in the state for the same other
//! group keys (its *owner*), or bridge two of them; [`plan_merge`] finds,
//! per owner, the runs of overlapping or touching sessions and the merged
//! session each batch row and each absorbed stored session belongs to.
//! [`SessionIndex`] finds the stored sessions of an owner without scanning
//! the state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use datafusion::error::{DataFusionError, Result as DFResult};

/// A session's `[start, end)`, in the event-time column's unit.
pub(crate) type Span = (i64, i64);

/// The sessions the state holds, by owner (the other group keys, in row
/// format), with their state-store keys.
#[derive(Debug, Default)]
pub(crate) struct SessionIndex {
    by_owner: HashMap<Vec<u8>, BTreeMap<Vec<u8>, Span>>,
    owner_of: HashMap<Vec<u8>, Vec<u8>>,
}

impl SessionIndex {
    /// Records that store key `key` holds `owner`'s session `span`.
    pub fn insert(&mut self, owner: &[u8], span: Span, key: &[u8]) {
        self.by_owner
            .entry(owner.to_vec())
            .or_default()
            .insert(key.to_vec(), span);
        self.owner_of.insert(key.to_vec(), owner.to_vec());
    }

    /// Forgets store key `key`.
    pub fn remove(&mut self, key: &[u8]) {
        let Some(owner) = self.owner_of.remove(key) else {
            return;
        };
        if let Some(sessions) = self.by_owner.get_mut(&owner) {
            sessions.remove(key);
            if sessions.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    /// The stored sessions of `owner`: store key and span.
    pub fn sessions(&self, owner: &[u8]) -> impl Iterator<Item = (&Vec<u8>, &Span)> {
        self.by_owner.get(owner).into_iter().flatten()
    }
}

/// Where a session in a merge comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    /// Row `i` of the batch's partial aggregate.
    Batch(usize),
    /// A stored session, by store key.
    Stored(Vec<u8>),
}

/// The merged session of every member of a run that holds a batch session:
/// runs are maximal sets of overlapping or touching sessions (one starting
/// exactly where another ends continues it, as Spark and Flink merge them). Stored sessions in runs
/// without a batch session are unaffected and not returned.
pub(crate) fn plan_merge(mut members: Vec<(Span, Member)>) -> Vec<(Member, Span)> {
    members.sort_by_key(|((start, end), _)| (*start, *end));
    let mut merged = Vec::new();
    let mut run: Vec<Member> = Vec::new();
    let mut span: Option<Span> = None;
    let mut flush = |run: &mut Vec<Member>, span: Span| {
        if run.iter().any(|m| matches!(m, Member::Batch(_))) {
            merged.extend(run.drain(..).map(|m| (m, span)));
        } else {
            run.clear();
        }
    };
    for ((start, end), member) in members {
        match span {
            Some((s, e)) if start <= e => span = Some((s, e.max(end))),
            Some(done) => {
                flush(&mut run, done);
                span = Some((start, end));
            }
            None => span = Some((start, end)),
        }
        run.push(member);
    }
    if let Some(done) = span {
        flush(&mut run, done);
    }
    merged
}

/// The spans of a session column: `None` for a null session.
pub(crate) fn spans(column: &ArrayRef) -> DFResult<Vec<Option<Span>>> {
    let sessions = column.as_struct_opt().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "session column is {}, not a struct",
            column.data_type()
        ))
    })?;
    let part = |i: usize| -> DFResult<Int64Array> {
        Ok(cast(sessions.column(i), &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .clone())
    };
    let (starts, ends) = (part(0)?, part(1)?);
    Ok((0..sessions.len())
        .map(|i| {
            (sessions.is_valid(i) && starts.is_valid(i) && ends.is_valid(i))
                .then(|| (starts.value(i), ends.value(i)))
        })
        .collect())
}

/// A session column of `data_type` (a window struct) holding `spans`.
pub(crate) fn session_column(data_type: &DataType, spans: &[Option<Span>]) -> DFResult<ArrayRef> {
    let DataType::Struct(fields) = data_type else {
        return Err(DataFusionError::Internal(format!(
            "session column type {data_type} is not a struct"
        )));
    };
    let part = |pick: fn(Span) -> i64| -> DFResult<ArrayRef> {
        let values: Int64Array = spans.iter().map(|s| s.map(pick)).collect();
        Ok(cast(&values, fields[0].data_type())?)
    };
    let nulls = arrow::buffer::NullBuffer::from_iter(spans.iter().map(Option::is_some));
    let array = StructArray::try_new(
        fields.clone(),
        vec![part(|s| s.0)?, part(|s| s.1)?],
        Some(nulls),
    )?;
    Ok(Arc::new(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(key: &str) -> Member {
        Member::Stored(key.as_bytes().to_vec())
    }

    #[test]
    fn batch_sessions_absorb_overlapping_and_bridged_stored_sessions() {
        let merged = plan_merge(vec![
            ((0, 10), stored("a")),
            ((20, 30), stored("b")),
            ((50, 60), stored("c")),
            // Overlaps a and reaches into b: bridges a and b.
            ((9, 22), Member::Batch(0)),
            // Alone.
            ((100, 105), Member::Batch(1)),
        ]);
        assert_eq!(
            merged,
            vec![
                (stored("a"), (0, 30)),
                (Member::Batch(0), (0, 30)),
                (stored("b"), (0, 30)),
                (Member::Batch(1), (100, 105)),
            ]
        );
    }

    #[test]
    fn touching_sessions_merge_and_a_gap_keeps_them_apart() {
        let merged = plan_merge(vec![((0, 10), stored("a")), ((10, 12), Member::Batch(0))]);
        assert_eq!(
            merged,
            vec![(stored("a"), (0, 12)), (Member::Batch(0), (0, 12))]
        );
        let merged = plan_merge(vec![((0, 10), stored("a")), ((11, 12), Member::Batch(0))]);
        assert_eq!(merged, vec![(Member::Batch(0), (11, 12))]);
        // A batch session touching two stored ones bridges them.
        let merged = plan_merge(vec![
            ((0, 10), stored("a")),
            ((15, 20), stored("b")),
            ((10, 15), Member::Batch(0)),
        ]);
        assert_eq!(
            merged,
            vec![
                (stored("a"), (0, 20)),
                (Member::Batch(0), (0, 20)),
                (stored("b"), (0, 20)),
            ]
        );
    }

    #[test]
    fn the_index_finds_an_owners_sessions_and_forgets_removed_keys() {
        let mut index = SessionIndex::default();
        index.insert(b"u1", (0, 10), b"k1");
        index.insert(b"u1", (20, 30), b"k2");
        index.insert(b"u2", (0, 5), b"k3");
        let spans: Vec<Span> = index.sessions(b"u1").map(|(_, s)| *s).collect();
        assert_eq!(spans, vec![(0, 10), (20, 30)]);
        index.remove(b"k1");
        index.remove(b"k2");
        assert_eq!(index.sessions(b"u1").count(), 0);
        assert_eq!(index.sessions(b"u2").count(), 1);
    }
}
