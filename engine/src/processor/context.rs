//! What a processor's callback sees: the key it is called for, the
//! batch's clocks, its state variables and its timers.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;

use arrow::datatypes::{Field, Schema};
use serde::de::DeserializeOwned;

use super::input::{BatchInput, GroupKey};
use super::slots::{BatchValues, ValueSlots};
use super::stores::{TimerStore, VariableStore};
use super::variables::VariableKind;
use super::{ProcessorResult, TimeMode};

/// A timer that is due, given to
/// [`StatefulProcessor::handle_expired_timer`](super::StatefulProcessor::handle_expired_timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredTimer {
    /// The time the timer was registered for, in milliseconds (event time
    /// or processing time, by the processor's [`TimeMode`]).
    pub time_ms: i64,
    /// The batch's watermark, in event-time mode.
    pub watermark_ms: Option<i64>,
    /// The batch's processing time.
    pub processing_time_ms: i64,
}

/// A processor's variables and timers, with the running batch's clocks.
#[derive(Debug)]
pub(crate) struct Stores {
    pub variables: Vec<VariableStore>,
    pub by_name: HashMap<String, usize, foldhash::fast::RandomState>,
    pub timers: TimerStore,
    pub time_mode: TimeMode,
    pub processing_time_ms: i64,
    pub watermark_ms: Option<i64>,
    /// Rows given to [`ProcessorContext::emit`] in the running batch.
    pub output: serde_arrow::ArrayBuilder,
    pub emitted: usize,
    /// The running batch's timer figures.
    pub timers_registered: u64,
    pub timers_deleted: u64,
    pub timers_fired: u64,
    /// Per variable, its values for the batch's input keys once a
    /// callback read or wrote one (value variables only).
    pub slots: Vec<Option<Box<dyn BatchValues>>>,
}

impl fmt::Debug for dyn BatchValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BatchValues")
    }
}

impl Stores {
    /// Writes the batch's values held in slots (for `input`'s keys) back
    /// to their variables.
    pub fn flush_slots(&mut self, input: &BatchInput) -> ProcessorResult<()> {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(mut values) = slot.take() {
                values.flush(&mut self.variables[i], input, self.processing_time_ms)?;
            }
        }
        Ok(())
    }
}

/// What a callback reads and changes: the state of the key it was called
/// for, and that key's timers.
pub struct ProcessorContext<'a> {
    group: &'a [u8],
    key: &'a GroupKey,
    stores: &'a mut Stores,
    /// The batch's input and the key's place among its keys (`None` in a
    /// timer's or the initial state's callback).
    input: Option<(&'a BatchInput, usize)>,
}

impl fmt::Debug for ProcessorContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorContext")
            .field("key", &self.key.to_string())
            .field("processing_time_ms", &self.stores.processing_time_ms)
            .field("watermark_ms", &self.stores.watermark_ms)
            .finish()
    }
}

impl<'a> ProcessorContext<'a> {
    pub(crate) fn new(group: &'a [u8], key: &'a GroupKey, stores: &'a mut Stores) -> Self {
        Self {
            group,
            key,
            stores,
            input: None,
        }
    }

    /// The context of `input`'s `ordinal`th key.
    pub(crate) fn for_input(
        input: &'a BatchInput,
        ordinal: usize,
        key: &'a GroupKey,
        stores: &'a mut Stores,
    ) -> Self {
        Self {
            group: input.group(ordinal),
            key,
            stores,
            input: Some((input, ordinal)),
        }
    }

    /// The batch's values of value variable `name` (of type `T`) and the
    /// current key's slot among them, loaded on first use; `None` outside
    /// the batch's input callbacks.
    pub(crate) fn value_slot<T>(
        &mut self,
        name: &str,
    ) -> ProcessorResult<Option<(&mut ValueSlots<T>, usize)>>
    where
        T: serde::Serialize + DeserializeOwned + Send + 'static,
    {
        let Some((input, ordinal)) = self.input else {
            return Ok(None);
        };
        let i = self.index(name)?;
        Self::check(
            &self.stores.variables[i],
            VariableKind::Value,
            (TypeId::of::<T>(), None),
        )?;
        let stores = &mut *self.stores;
        if stores.slots[i].is_none() {
            let loaded = ValueSlots::<T>::load(&stores.variables[i], input)?;
            stores.slots[i] = Some(Box::new(loaded));
        }
        let slots = stores.slots[i]
            .as_mut()
            .expect("loaded above")
            .as_any()
            .downcast_mut::<ValueSlots<T>>()
            .ok_or_else(|| format!("state variable '{name}' was read as another type"))?;
        Ok(Some((slots, ordinal)))
    }

    /// The key the callback was called for.
    pub fn key(&self) -> &GroupKey {
        self.key
    }

    /// The batch's processing time, in milliseconds since the epoch: when
    /// the batch's offsets were logged, the same if the batch is re-run.
    pub fn processing_time_ms(&self) -> i64 {
        self.stores.processing_time_ms
    }

    /// The batch's event-time watermark in milliseconds, in event-time mode
    /// once the input has one.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.stores.watermark_ms
    }

    /// Emits `row`, a value whose fields are the declared output schema's
    /// columns (by name; an `Option` for a nullable column), as an output
    /// row of this batch. The same as returning it in a record batch, and
    /// cheaper for a few rows per key: the batch's emitted rows become
    /// Arrow columns at once. An error if `row` does not fit the schema.
    pub fn emit<T: serde::Serialize>(&mut self, row: &T) -> ProcessorResult<()> {
        self.stores.output.push(row)?;
        self.stores.emitted += 1;
        Ok(())
    }

    /// Registers a timer for the current key at `time_ms` (event time or
    /// processing time, by the [`TimeMode`]); registering one that exists
    /// changes nothing. It fires in the first batch whose clock is at or
    /// past it (at the earliest the next batch).
    pub fn register_timer(&mut self, time_ms: i64) -> ProcessorResult<()> {
        self.timers_allowed()?;
        if self.stores.timers.register(self.group, time_ms) {
            self.stores.timers_registered += 1;
        }
        Ok(())
    }

    /// Deletes the current key's timer at `time_ms`; returns whether there
    /// was one. A deleted timer never fires.
    pub fn delete_timer(&mut self, time_ms: i64) -> ProcessorResult<bool> {
        self.timers_allowed()?;
        let deleted = self.stores.timers.delete(self.group, time_ms);
        self.stores.timers_deleted += u64::from(deleted);
        Ok(deleted)
    }

    /// The current key's timers, earliest first.
    pub fn list_timers(&self) -> ProcessorResult<Vec<i64>> {
        self.timers_allowed()?;
        Ok(self.stores.timers.list(self.group()))
    }

    fn timers_allowed(&self) -> ProcessorResult<()> {
        if self.stores.time_mode == TimeMode::None {
            return Err(
                "timers need TimeMode::ProcessingTime or TimeMode::EventTime; the \
                        processor runs with TimeMode::None"
                    .into(),
            );
        }
        Ok(())
    }

    pub(crate) fn group(&self) -> &[u8] {
        self.group
    }

    fn index(&self, name: &str) -> ProcessorResult<usize> {
        self.stores.by_name.get(name).copied().ok_or_else(|| {
            format!("state variable '{name}' was not declared in init (call states.declare)").into()
        })
    }

    pub(crate) fn variable(&self, name: &str) -> ProcessorResult<&VariableStore> {
        let i = self.index(name)?;
        Ok(&self.stores.variables[i])
    }

    pub(crate) fn variable_mut(&mut self, name: &str) -> ProcessorResult<&mut VariableStore> {
        let i = self.index(name)?;
        Ok(&mut self.stores.variables[i])
    }

    fn check(
        var: &VariableStore,
        kind: VariableKind,
        types: (TypeId, Option<TypeId>),
    ) -> ProcessorResult<()> {
        if var.spec.kind != kind || var.spec.types != types {
            return Err(format!(
                "state variable '{}' was declared as {} and is used as another type or kind \
                 ({kind})",
                var.spec.name, var.spec.type_names
            )
            .into());
        }
        Ok(())
    }

    pub(crate) fn typed(
        &self,
        name: &str,
        kind: VariableKind,
        value: TypeId,
        key: Option<TypeId>,
    ) -> ProcessorResult<&VariableStore> {
        let var = self.variable(name)?;
        Self::check(var, kind, (value, key))?;
        Ok(var)
    }

    pub(crate) fn typed_mut(
        &mut self,
        name: &str,
        kind: VariableKind,
        value: TypeId,
        key: Option<TypeId>,
    ) -> ProcessorResult<&mut VariableStore> {
        let var = self.variable_mut(name)?;
        Self::check(var, kind, (value, key))?;
        Ok(var)
    }
}

/// The key columns of `fields`, for the stores' key schemas.
pub(crate) fn key_fields(schema: &Schema, keys: &[String]) -> Result<Vec<Field>, String> {
    keys.iter()
        .map(|k| {
            schema
                .field_with_name(k)
                .map(|f| f.clone())
                .map_err(|_| format!("no column '{k}' to key by"))
        })
        .collect()
}
