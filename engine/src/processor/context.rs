//! What a processor's callback sees: the key it is called for, the
//! batch's clocks, its state variables and its timers.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

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

/// A processor's variables and timers, with the running batch's clocks:
/// what every instance of the processor shares. Callbacks for different
/// keys may run on several threads at once; each variable and the timers
/// are behind a lock that one state operation holds at a time.
#[derive(Debug)]
pub(crate) struct Stores {
    pub variables: Vec<RwLock<VariableStore>>,
    pub by_name: HashMap<String, usize, foldhash::fast::RandomState>,
    pub timers: RwLock<TimerStore>,
    pub time_mode: TimeMode,
    pub processing_time_ms: i64,
    pub watermark_ms: Option<i64>,
}

/// `lock`'s value (a lock poisoned by a panicking callback is still read:
/// the panic stops the query, which restarts from the checkpoint).
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// `lock`'s value, to change.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// `lock`'s value, to change, with no other user.
pub(crate) fn owned<T>(lock: &mut RwLock<T>) -> &mut T {
    lock.get_mut().unwrap_or_else(PoisonError::into_inner)
}

/// What one processor instance gathers in a batch while its callbacks run:
/// the rows it emitted, its timer figures, and the values of the batch's
/// keys it was given (`first..first + slots' length`).
#[derive(Debug)]
pub(crate) struct Local {
    /// Rows given to [`ProcessorContext::emit`].
    pub output: serde_arrow::ArrayBuilder,
    pub emitted: usize,
    pub timers_registered: u64,
    pub timers_deleted: u64,
    /// The first of the batch's input keys this instance is called for.
    pub first: usize,
    /// How many.
    pub keys: usize,
    /// Per variable, its values for those keys once a callback read or
    /// wrote one (value variables only).
    pub slots: Vec<Option<Box<dyn BatchValues>>>,
}

impl Local {
    /// An instance's share of a batch, emitting rows of `fields`.
    pub fn new(fields: &arrow::datatypes::Fields) -> Result<Self, serde_arrow::Error> {
        Ok(Self {
            output: serde_arrow::ArrayBuilder::from_arrow(fields)?,
            emitted: 0,
            timers_registered: 0,
            timers_deleted: 0,
            first: 0,
            keys: 0,
            slots: Vec::new(),
        })
    }

    /// Readies it for the batch's input keys `first..first + keys`, with
    /// `variables` variables; rows a failed attempt emitted are dropped.
    pub fn begin(&mut self, first: usize, keys: usize, variables: usize) {
        if self.emitted > 0 {
            self.emitted = 0;
            let _ = self.output.to_arrow();
        }
        self.timers_registered = 0;
        self.timers_deleted = 0;
        self.first = first;
        self.keys = keys;
        self.slots.clear();
        self.slots.resize_with(variables, || None);
    }

    /// Writes the values held in slots back to `stores`' variables.
    pub fn flush_slots(&mut self, stores: &mut Stores, input: &BatchInput) -> ProcessorResult<()> {
        let keys = self.first..self.first + self.keys;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(mut values) = slot.take() {
                values.flush(
                    owned(&mut stores.variables[i]),
                    input,
                    keys.clone(),
                    stores.processing_time_ms,
                )?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for dyn BatchValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BatchValues")
    }
}

/// What a callback reads and changes: the state of the key it was called
/// for, and that key's timers.
pub struct ProcessorContext<'a> {
    group: &'a [u8],
    key: &'a GroupKey,
    stores: &'a Stores,
    local: &'a mut Local,
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
    pub(crate) fn new(
        group: &'a [u8],
        key: &'a GroupKey,
        stores: &'a Stores,
        local: &'a mut Local,
    ) -> Self {
        Self {
            group,
            key,
            stores,
            local,
            input: None,
        }
    }

    /// The context of `input`'s `ordinal`th key.
    pub(crate) fn for_input(
        input: &'a BatchInput,
        ordinal: usize,
        key: &'a GroupKey,
        stores: &'a Stores,
        local: &'a mut Local,
    ) -> Self {
        Self {
            group: input.group(ordinal),
            key,
            stores,
            local,
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
        let local = &mut *self.local;
        if local.slots[i].is_none() {
            let variable = read(&self.stores.variables[i]);
            Self::check(&variable, VariableKind::Value, (TypeId::of::<T>(), None))?;
            let keys = local.first..local.first + local.keys;
            let loaded = ValueSlots::<T>::load(&variable, input, keys)?;
            local.slots[i] = Some(Box::new(loaded));
        }
        let first = local.first;
        let Some(slots) = local.slots[i]
            .as_mut()
            .expect("loaded above")
            .as_any()
            .downcast_mut::<ValueSlots<T>>()
        else {
            // Loaded by a use with the declared type: say which it is.
            let variable = read(&self.stores.variables[i]);
            Self::check(&variable, VariableKind::Value, (TypeId::of::<T>(), None))?;
            return Err(format!("state variable '{name}' was read as another type").into());
        };
        Ok(Some((slots, ordinal - first)))
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
        self.local.output.push(row)?;
        self.local.emitted += 1;
        Ok(())
    }

    /// Registers a timer for the current key at `time_ms` (event time or
    /// processing time, by the [`TimeMode`]); registering one that exists
    /// changes nothing. It fires in the first batch whose clock is at or
    /// past it (at the earliest the next batch).
    pub fn register_timer(&mut self, time_ms: i64) -> ProcessorResult<()> {
        self.timers_allowed()?;
        if write(&self.stores.timers).register(self.group, time_ms) {
            self.local.timers_registered += 1;
        }
        Ok(())
    }

    /// Deletes the current key's timer at `time_ms`; returns whether there
    /// was one. A deleted timer never fires.
    pub fn delete_timer(&mut self, time_ms: i64) -> ProcessorResult<bool> {
        self.timers_allowed()?;
        let deleted = write(&self.stores.timers).delete(self.group, time_ms);
        self.local.timers_deleted += u64::from(deleted);
        Ok(deleted)
    }

    /// The current key's timers, earliest first.
    pub fn list_timers(&self) -> ProcessorResult<Vec<i64>> {
        self.timers_allowed()?;
        Ok(read(&self.stores.timers).list(self.group()))
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

    /// Variable `name`, checked to be a `kind` of these types, to read.
    pub(crate) fn typed(
        &self,
        name: &str,
        kind: VariableKind,
        value: TypeId,
        key: Option<TypeId>,
    ) -> ProcessorResult<RwLockReadGuard<'a, VariableStore>> {
        let var = read(&self.stores.variables[self.index(name)?]);
        Self::check(&var, kind, (value, key))?;
        Ok(var)
    }

    /// Variable `name`, checked to be a `kind` of these types, to change.
    pub(crate) fn typed_mut(
        &self,
        name: &str,
        kind: VariableKind,
        value: TypeId,
        key: Option<TypeId>,
    ) -> ProcessorResult<RwLockWriteGuard<'a, VariableStore>> {
        let var = write(&self.stores.variables[self.index(name)?]);
        Self::check(&var, kind, (value, key))?;
        Ok(var)
    }

    /// Variable `name` of any type, to read.
    pub(crate) fn variable(
        &self,
        name: &str,
    ) -> ProcessorResult<RwLockReadGuard<'a, VariableStore>> {
        Ok(read(&self.stores.variables[self.index(name)?]))
    }

    /// Variable `name` of any type, to change.
    pub(crate) fn variable_mut(
        &self,
        name: &str,
    ) -> ProcessorResult<RwLockWriteGuard<'a, VariableStore>> {
        Ok(write(&self.stores.variables[self.index(name)?]))
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
