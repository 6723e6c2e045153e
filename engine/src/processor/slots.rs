//! A batch's values of a value variable, for every key of the batch at
//! once: read in one conversion the first time a callback asks for one,
//! written back in one conversion after the batch's input rows. A key's
//! `get` and `set` then cost a clone, not an Arrow conversion each.

use std::any::Any;
use std::ops::Range;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ProcessorResult;
use super::input::BatchInput;
use super::stores::VariableStore;

/// The values of one variable for the batch's keys, of a type known to the
/// variable's accessors only.
pub(crate) trait BatchValues: Send {
    fn as_any(&mut self) -> &mut dyn Any;

    /// Writes the values set or cleared back to `variable`; the slots are
    /// `input`'s keys `keys`, in order.
    fn flush(
        &mut self,
        variable: &mut VariableStore,
        input: &BatchInput,
        keys: Range<usize>,
        now_ms: i64,
    ) -> ProcessorResult<()>;
}

/// One slot per key of the batch (or of an instance's share of it).
pub(crate) struct ValueSlots<T> {
    pub values: Vec<Option<T>>,
    pub changed: Vec<bool>,
}

impl<T: DeserializeOwned> ValueSlots<T> {
    /// The values `variable` holds for `input`'s keys `keys`.
    pub fn load(
        variable: &VariableStore,
        input: &BatchInput,
        keys: Range<usize>,
    ) -> ProcessorResult<Self> {
        let keys: Vec<&[u8]> = keys.map(|i| input.group(i)).collect();
        let rows = variable.values(&keys);
        let present: Vec<&[u8]> = rows.iter().flatten().copied().collect();
        let mut decoded = if present.is_empty() {
            Vec::new().into_iter()
        } else {
            variable.spec.value.decode::<T>(present)?.into_iter()
        };
        let values = rows
            .iter()
            .map(|row| row.and_then(|_| decoded.next()))
            .collect();
        Ok(Self {
            values,
            changed: vec![false; keys.len()],
        })
    }
}

impl<T: Serialize + Send + 'static> BatchValues for ValueSlots<T> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn flush(
        &mut self,
        variable: &mut VariableStore,
        input: &BatchInput,
        keys: Range<usize>,
        now_ms: i64,
    ) -> ProcessorResult<()> {
        let group = |i: usize| input.group(keys.start + i);
        let set: Vec<usize> = (0..self.values.len())
            .filter(|&i| self.changed[i] && self.values[i].is_some())
            .collect();
        if !set.is_empty() {
            let rows = variable
                .spec
                .value
                .encode_many(set.iter().filter_map(|&i| self.values[i].as_ref()))?;
            let entries: Vec<(&[u8], &[u8])> = set
                .iter()
                .enumerate()
                .map(|(n, &i)| (group(i), rows.row(n).data()))
                .collect();
            variable.set_values(&entries, now_ms);
        }
        for i in 0..self.values.len() {
            if self.changed[i] && self.values[i].is_none() {
                variable.clear(group(i));
            }
        }
        Ok(())
    }
}
