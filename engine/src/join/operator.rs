//! One stream–stream join of a running query: what a batch's new rows of
//! each side match, what is stored and evicted, and which rows come out.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::common::JoinType;
use datafusion::error::Result as DFResult;
use datafusion::physical_expr::PhysicalExpr;
use foldhash::fast::FixedState;
use hashbrown::HashTable;
use tidemill_state::{CheckpointDir, StateError, StateStore, StateStoreConfig, map_parallel};
use tokio::sync::Mutex;

use super::side::{JoinSide, NewRows, SideLayout, SidePart};
use crate::progress::StateOperatorProgress;
use crate::stateful::{BatchWatermarks, StatefulOperator};
use crate::{Result, TidemillError};

const LEFT: usize = 0;
const RIGHT: usize = 1;

/// One stream–stream join of a running query.
#[derive(Debug)]
pub(crate) struct JoinOperator {
    join_type: JoinType,
    /// The non-equality condition, over the left columns followed by the
    /// right ones.
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// The left columns followed by the right ones.
    pair_schema: SchemaRef,
    /// The join's output.
    output_schema: SchemaRef,
    /// `(lo, hi)` with `lo <= left time - right time <= hi` (ms), for
    /// index lookups, where the condition bounds the sides' times.
    range: (Option<i64>, Option<i64>),
    /// The number of left columns.
    left_width: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    sides: [JoinSide; 2],
    watermarks: BatchWatermarks,
}

/// A batch's work on one state partition: the partition of each side and
/// the batch's new rows of each side whose join keys fall in it.
struct Part<'a> {
    sides: [SidePart<'a>; 2],
    new: [NewRows; 2],
}

/// The batch size (rows of both sides) from which a batch's partitions are
/// worked on on several threads.
const PARALLEL_ROWS: usize = 4096;

/// The rows one side's new rows matched.
#[derive(Default)]
struct Matches {
    /// Pairs (this side's row, other side's row) that passed the condition.
    pairs: (Vec<u32>, Vec<u32>),
}

/// What the join needs to open its state.
pub(crate) struct JoinSpec {
    pub join_type: JoinType,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    pub pair_schema: SchemaRef,
    pub output_schema: SchemaRef,
    pub range: (Option<i64>, Option<i64>),
    pub sides: [SideLayout; 2],
}

impl JoinOperator {
    /// Opens both sides' state in `dir` (`left/` and `right/`) as of
    /// `version`. Refuses state written for other join keys or columns.
    pub async fn open(spec: JoinSpec, dir: CheckpointDir, version: u64) -> Result<Self> {
        let [left, right] = spec.sides;
        let left_width = left.schema.fields().len();
        let mut opened = Vec::with_capacity(2);
        for layout in [left, right] {
            let side_dir = dir.child(layout.label);
            let schema = layout
                .state_schema()
                .map_err(|e| TidemillError::datafusion("planning the join's state", e))?;
            let store = StateStore::open(
                side_dir.clone(),
                schema,
                StateStoreConfig::default(),
                version,
            )
            .await
            .map_err(|e| match e {
                StateError::Incompatible { .. } => TidemillError::CheckpointMismatch {
                    location: side_dir.root().to_string(),
                    reason: format!(
                        "the join's {} side no longer matches its saved state ({e}); restore \
                         the previous query or start it with a new checkpoint",
                        layout.label
                    ),
                },
                other => other.into(),
            })?;
            opened.push(
                JoinSide::new(layout, store)
                    .map_err(|e| TidemillError::datafusion("opening the join's state", e))?,
            );
        }
        let right = opened.pop().expect("two sides");
        let left = opened.pop().expect("two sides");
        Ok(Self {
            join_type: spec.join_type,
            filter: spec.filter,
            pair_schema: spec.pair_schema,
            output_schema: spec.output_schema,
            range: spec.range,
            left_width,
            inner: Mutex::new(Inner {
                sides: [left, right],
                watermarks: BatchWatermarks::default(),
            }),
        })
    }

    /// The join's output schema.
    pub fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    fn preserves(&self, side: usize) -> bool {
        match self.join_type {
            JoinType::Left => side == LEFT,
            JoinType::Right => side == RIGHT,
            JoinType::Full => true,
            _ => false,
        }
    }

    fn semi(&self) -> bool {
        self.join_type == JoinType::LeftSemi
    }

    /// Joins the batch's new rows of both sides with each other and with
    /// the stored rows, stores what may still match, evicts what the
    /// watermark has passed, and returns the batch's output rows. Each
    /// state partition (the rows of its join keys, on both sides) is
    /// worked on independently, on several threads for a large batch.
    pub async fn process(
        &self,
        left: Vec<RecordBatch>,
        right: Vec<RecordBatch>,
    ) -> DFResult<Vec<RecordBatch>> {
        let mut inner = self.inner.lock().await;
        let Inner { sides, watermarks } = &mut *inner;
        let (late_ms, evict_ms) = (watermarks.late, watermarks.evict);
        // The inputs are read: the watermark nodes (all of which feed the
        // join when `next` is given) have seen the batch's rows.
        let next_ms = watermarks.next.as_ref().and_then(|next| next.value());
        // A new row the next batch's eviction would remove unmatched is
        // not stored: no later row can match it (the next batch drops
        // rows at or below that watermark as late), and on a side whose
        // unmatched rows come out with nulls it is kept to come out then.
        let unneeded_ms = [LEFT, RIGHT].map(|side| match self.preserves(side) {
            true => evict_ms,
            false => evict_ms.max(next_ms),
        });
        let mut split = Vec::with_capacity(2);
        let mut rows = 0;
        for (side, batches) in sides.iter_mut().zip([left, right]) {
            let batch = concat_batches(&side.layout.schema, &batches)?;
            let batch = side.drop_late(batch, late_ms)?;
            rows += batch.num_rows();
            split.push(side.split(side.prepare(batch)?)?);
        }
        let new_right = split.pop().expect("two sides");
        let new_left = split.pop().expect("two sides");
        let [left_side, right_side] = sides;
        let jobs: Vec<Part<'_>> = left_side
            .parts()
            .into_iter()
            .zip(right_side.parts())
            .zip(new_left.into_iter().zip(new_right))
            .map(|((l, r), (nl, nr))| Part {
                sides: [l, r],
                new: [nl, nr],
            })
            .filter(|part| {
                part.new.iter().any(|n| n.batch.num_rows() > 0)
                    || evict_ms.is_some_and(|w| part.sides.iter().any(|s| s.has_expired(w)))
            })
            .collect();
        let outputs = map_parallel(jobs, rows >= PARALLEL_ROWS, |part| {
            self.process_part(part, evict_ms, unneeded_ms)
        });
        let mut output = Vec::new();
        for part in outputs {
            output.extend(part?);
        }
        Ok(output)
    }

    /// [`process`](Self::process) of one state partition: its new rows of
    /// both sides and its stored ones.
    /// New rows of side `s` that would expire at or below `unneeded_ms[s]`
    /// are not stored.
    fn process_part(
        &self,
        part: Part<'_>,
        evict_ms: Option<i64>,
        unneeded_ms: [Option<i64>; 2],
    ) -> DFResult<Vec<RecordBatch>> {
        let Part { mut sides, new } = part;
        let (new_left, new_right) = (&new[LEFT], &new[RIGHT]);
        let mut output = Vec::new();

        // New left rows with new right rows, then each side's new rows
        // with the other side's stored rows (stored before this batch):
        // every pair once.
        let both_new = self.match_new(new_left, new_right)?;
        let (stored_right, right_keys, left_stored) =
            self.match_stored(&sides[RIGHT], new_left, LEFT)?;
        let (stored_left, left_keys, right_stored) =
            self.match_stored(&sides[LEFT], new_right, RIGHT)?;

        let mut matched_new = [
            vec![false; new_left.batch.num_rows()],
            vec![false; new_right.batch.num_rows()],
        ];
        for &i in &both_new.pairs.0 {
            matched_new[LEFT][i as usize] = true;
        }
        for &j in &both_new.pairs.1 {
            matched_new[RIGHT][j as usize] = true;
        }
        for &i in &left_stored.pairs.0 {
            matched_new[LEFT][i as usize] = true;
        }
        for &j in &right_stored.pairs.0 {
            matched_new[RIGHT][j as usize] = true;
        }

        if self.semi() {
            // Each left row once: new ones that matched, and stored ones
            // (kept only while unmatched) that a new right row matched.
            let firsts: Vec<u32> = (0..new_left.batch.num_rows() as u32)
                .filter(|&i| matched_new[LEFT][i as usize])
                .collect();
            output.push(self.outer_rows(LEFT, &take_rows(&new_left.batch, &firsts)?)?);
            let mut seen = std::collections::HashSet::new();
            let stored: Vec<u32> = right_stored
                .pairs
                .1
                .iter()
                .copied()
                .filter(|&s| seen.insert(s))
                .collect();
            output.push(self.outer_rows(LEFT, &take_rows(&stored_left.0, &stored)?)?);
            for &s in &stored {
                sides[LEFT].remove(&left_keys[s as usize]);
            }
        } else {
            output.push(self.pairs(
                &new_left.batch,
                &both_new.pairs.0,
                &new_right.batch,
                &both_new.pairs.1,
            )?);
            output.push(self.pairs(
                &new_left.batch,
                &left_stored.pairs.0,
                &stored_right.0,
                &left_stored.pairs.1,
            )?);
            output.push(self.pairs(
                &stored_left.0,
                &right_stored.pairs.1,
                &new_right.batch,
                &right_stored.pairs.0,
            )?);
            // Stored rows of a preserved side that matched now will never
            // come out with nulls.
            if self.preserves(RIGHT) {
                for &s in &left_stored.pairs.1 {
                    if !stored_right.1[s as usize] {
                        sides[RIGHT].mark_matched(&right_keys[s as usize]);
                    }
                }
            }
            if self.preserves(LEFT) {
                for &s in &right_stored.pairs.1 {
                    if !stored_left.1[s as usize] {
                        sides[LEFT].mark_matched(&left_keys[s as usize]);
                    }
                }
            }
        }

        // Store the new rows that may still match; a preserved side's rows
        // that never can and never did come out with nulls now.
        for side in [LEFT, RIGHT] {
            let rows = &new[side];
            let mut keep = Vec::new();
            let mut unmatched = Vec::new();
            for i in 0..rows.batch.num_rows() {
                let matched = matched_new[side][i];
                let expired = match (&rows.expiries, unneeded_ms[side]) {
                    (Some(at), Some(w)) => at.is_valid(i) && at.value(i) <= w,
                    _ => false,
                };
                let storable = rows.usable[i] && !expired;
                if storable && !(self.semi() && side == LEFT && matched) {
                    keep.push((i, matched));
                } else if !storable && !matched && self.preserves(side) {
                    unmatched.push(i as u32);
                }
            }
            sides[side].store(rows, &keep)?;
            output.push(self.outer_rows(side, &take_rows(&rows.batch, &unmatched)?)?);
        }

        // Evict what the watermark has passed; a preserved side's rows that
        // never matched come out with nulls.
        if let Some(watermark) = evict_ms {
            for side in [LEFT, RIGHT] {
                let values = sides[side].take_expired(watermark, self.preserves(side));
                if values.is_empty() {
                    continue;
                }
                let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                let (rows, _) = sides[side].decode(&refs)?;
                output.push(self.outer_rows(side, &rows)?);
            }
        }
        output.retain(|b| b.num_rows() > 0);
        Ok(output)
    }

    /// The pairs of new left and new right rows that pass the condition.
    fn match_new(&self, left: &NewRows, right: &NewRows) -> DFResult<Matches> {
        // The right rows by join key: each key's first row in a table,
        // and a chain from each row to the key's next one (in row order).
        const END: u32 = u32::MAX;
        let mut firsts: HashTable<u32> = HashTable::new();
        let mut next = vec![END; right.batch.num_rows()];
        for j in (0..right.batch.num_rows()).rev() {
            if !right.usable[j] {
                continue;
            }
            let (hash, key) = (right.hash(j), right.key(j));
            let same = |&f: &u32| right.hash(f as usize) == hash && right.key(f as usize) == key;
            match firsts.find_mut(hash, same) {
                Some(first) => {
                    next[j] = *first;
                    *first = j as u32;
                }
                None => {
                    firsts.insert_unique(hash, j as u32, |&f| right.hash(f as usize));
                }
            }
        }
        let (mut li, mut ri) = (Vec::new(), Vec::new());
        for i in 0..left.batch.num_rows() {
            if !left.usable[i] {
                continue;
            }
            let (hash, key) = (left.hash(i), left.key(i));
            let same = |&f: &u32| right.hash(f as usize) == hash && right.key(f as usize) == key;
            let Some(&first) = firsts.find(hash, same) else {
                continue;
            };
            let (from, to) = self.window(LEFT, left.times[i]);
            let mut j = first;
            while j != END {
                let t = right.times[j as usize];
                if t >= from && t <= to {
                    li.push(i as u32);
                    ri.push(j);
                }
                j = next[j as usize];
            }
        }
        self.passing(&left.batch, li, &right.batch, ri, false)
    }

    /// The stored rows of `stored` (the other side) that `new` rows (of
    /// side `side`) can match, read once each with their matched flags
    /// and state keys, and the passing pairs (new row, stored row).
    #[allow(clippy::type_complexity)]
    fn match_stored(
        &self,
        stored: &SidePart<'_>,
        new: &NewRows,
        side: usize,
    ) -> DFResult<((RecordBatch, Vec<bool>), Vec<Vec<u8>>, Matches)> {
        // Each stored row once, by its row number (unique in its side):
        // its state key is built and its value read when first seen. A row
        // the store does not hold under the new row's key is another key's
        // of the same hash: skipped, and looked up again for its own key.
        let mut positions: HashMap<u64, u32, FixedState> = HashMap::default();
        let mut state_keys = Vec::new();
        let mut values = Vec::new();
        let (mut ni, mut si) = (Vec::new(), Vec::new());
        for i in 0..new.batch.num_rows() {
            if !new.usable[i] {
                continue;
            }
            let key = new.key(i);
            let (from, to) = self.window(side, new.times[i]);
            for slot in stored.lookup(new.hash(i), from, to) {
                let position = match positions.entry(slot.1) {
                    Entry::Occupied(seen) => *seen.get(),
                    Entry::Vacant(first) => {
                        let state_key = JoinSide::state_key(key, slot);
                        let Some(value) = stored.value(&state_key) else {
                            continue;
                        };
                        values.push(value);
                        state_keys.push(state_key);
                        *first.insert((state_keys.len() - 1) as u32)
                    }
                };
                ni.push(i as u32);
                si.push(position);
            }
        }
        let rows = stored.decode(&values)?;
        let matches = if side == LEFT {
            self.passing(&new.batch, ni, &rows.0, si, false)?
        } else {
            // Pairs are (left, right) for the condition: stored left rows
            // with new right rows; reported as (new, stored).
            self.passing(&rows.0, si, &new.batch, ni, true)?
        };
        Ok((rows, state_keys, matches))
    }

    /// The time window `(from, to)` in which rows of the other side may
    /// match a row of `side` at `time` (ms, floored), widened by a
    /// millisecond for the rounding; everything without a range.
    fn window(&self, side: usize, time: i64) -> (i64, i64) {
        let (lo, hi) = self.range;
        if lo.is_none() && hi.is_none() {
            return (i64::MIN, i64::MAX);
        }
        // lo <= left - right <= hi.
        let (from, to) = if side == LEFT {
            (hi.map(|hi| time - hi - 1), lo.map(|lo| time - lo + 1))
        } else {
            (lo.map(|lo| time + lo - 1), hi.map(|hi| time + hi + 1))
        };
        (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX))
    }

    /// Of the pairs `(left[li], right[ri])`, those passing the condition.
    /// `swap` reports them as (right, left).
    fn passing(
        &self,
        left: &RecordBatch,
        li: Vec<u32>,
        right: &RecordBatch,
        ri: Vec<u32>,
        swap: bool,
    ) -> DFResult<Matches> {
        let (li, ri) = match &self.filter {
            Some(filter) if !li.is_empty() => {
                let pairs = self.pair_batch(&self.pair_schema, left, &li, right, &ri)?;
                let mask = filter.evaluate(&pairs)?.into_array(pairs.num_rows())?;
                let mask = mask
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Internal(
                            "the join condition is not a boolean".into(),
                        )
                    })?;
                let keep = |k: usize| mask.is_valid(k) && mask.value(k);
                let li = li
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| keep(*k))
                    .map(|(_, &i)| i)
                    .collect();
                let ri = ri
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| keep(*k))
                    .map(|(_, &j)| j)
                    .collect();
                (li, ri)
            }
            _ => (li, ri),
        };
        Ok(Matches {
            pairs: if swap { (ri, li) } else { (li, ri) },
        })
    }

    /// The pairs' left columns followed by their right columns.
    fn pair_batch(
        &self,
        schema: &SchemaRef,
        left: &RecordBatch,
        li: &[u32],
        right: &RecordBatch,
        ri: &[u32],
    ) -> DFResult<RecordBatch> {
        let (li, ri) = (
            UInt32Array::from(li.to_vec()),
            UInt32Array::from(ri.to_vec()),
        );
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for column in left.columns() {
            columns.push(take(column, &li, None)?);
        }
        for column in right.columns() {
            columns.push(take(column, &ri, None)?);
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(li.len())),
        )?)
    }

    /// Joined output rows of the pairs.
    fn pairs(
        &self,
        left: &RecordBatch,
        li: &[u32],
        right: &RecordBatch,
        ri: &[u32],
    ) -> DFResult<RecordBatch> {
        self.pair_batch(&self.output_schema, left, li, right, ri)
    }

    /// Rows of `side` with nulls for the other side's columns.
    fn outer_rows(&self, side: usize, rows: &RecordBatch) -> DFResult<RecordBatch> {
        let n = rows.num_rows();
        let fields = self.output_schema.fields();
        let left_width = self.left_width;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
        for (k, field) in fields.iter().enumerate() {
            let from_side = if k < left_width { LEFT } else { RIGHT };
            columns.push(if from_side == side {
                let index = if side == LEFT { k } else { k - left_width };
                Arc::clone(rows.column(index))
            } else {
                new_null_array(field.data_type(), n)
            });
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.output_schema),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }
}

/// Rows `indices` of `batch`.
fn take_rows(batch: &RecordBatch, indices: &[u32]) -> DFResult<RecordBatch> {
    if indices.len() == batch.num_rows()
        && indices.iter().enumerate().all(|(k, &i)| k == i as usize)
    {
        return Ok(batch.clone());
    }
    let indices = UInt32Array::from(indices.to_vec());
    Ok(arrow::compute::take_record_batch(batch, &indices)?)
}

#[async_trait]
impl StatefulOperator for JoinOperator {
    async fn begin_batch(&self, version: u64, watermarks: BatchWatermarks) -> Result<()> {
        let mut inner = self.inner.lock().await;
        for side in inner.sides.iter_mut() {
            side.begin_batch(version).await?;
        }
        inner.watermarks = watermarks;
        Ok(())
    }

    async fn commit(&self) -> Result<StateOperatorProgress> {
        let mut inner = self.inner.lock().await;
        let mut total: Option<StateOperatorProgress> = None;
        for side in inner.sides.iter_mut() {
            let dropped = side.dropped_by_watermark;
            let progress = side.state.commit("symmetricHashJoin", dropped, 0).await?;
            total = Some(match total {
                None => progress,
                Some(t) => StateOperatorProgress {
                    num_rows_total: t.num_rows_total + progress.num_rows_total,
                    num_rows_updated: t.num_rows_updated + progress.num_rows_updated,
                    num_rows_removed: t.num_rows_removed + progress.num_rows_removed,
                    memory_used_bytes: t.memory_used_bytes + progress.memory_used_bytes,
                    commit_time_ms: t.commit_time_ms + progress.commit_time_ms,
                    num_rows_dropped_by_watermark: t.num_rows_dropped_by_watermark
                        + progress.num_rows_dropped_by_watermark,
                    ..t
                },
            });
        }
        Ok(total.expect("two sides"))
    }

    async fn purge(&self, keep_from_version: u64) -> Result<()> {
        let inner = self.inner.lock().await;
        for side in &inner.sides {
            side.state.store.purge(keep_from_version).await?;
        }
        Ok(())
    }

    async fn has_closable_state(&self, watermark_ms: Option<i64>, _now_ms: i64) -> bool {
        let Some(watermark) = watermark_ms else {
            return false;
        };
        let inner = self.inner.lock().await;
        inner.sides.iter().any(|s| s.has_expired(watermark))
    }
}
