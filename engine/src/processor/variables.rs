//! The state variables a [`StatefulProcessor`](super::StatefulProcessor)
//! keeps per grouping key: [`ValueState`], [`ListState`] and [`MapState`].
//!
//! A variable is described by a name and a type (any serde type whose Arrow
//! form serde_arrow can trace: numbers, strings, booleans, options, nested
//! structs and vectors), optionally with a time to live, and declared in
//! [`StatefulProcessor::init`](super::StatefulProcessor::init). Its methods
//! read and change the state of the key the running callback was called
//! for, through the callback's [`ProcessorContext`].

use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::Codec;
use super::{ProcessorContext, ProcessorResult};

/// What kind of variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VariableKind {
    Value,
    List,
    Map,
}

impl fmt::Display for VariableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Value => "ValueState",
            Self::List => "ListState",
            Self::Map => "MapState",
        })
    }
}

/// A declared variable: its name, kind, time to live and Arrow form.
#[derive(Debug, Clone)]
pub struct VariableSpec {
    pub(crate) name: String,
    pub(crate) kind: VariableKind,
    pub(crate) ttl_ms: Option<i64>,
    pub(crate) value: Arc<Codec>,
    pub(crate) map_key: Option<Arc<Codec>>,
    /// The Rust types, checked at every access.
    pub(crate) types: (TypeId, Option<TypeId>),
    pub(crate) type_names: String,
}

impl VariableSpec {
    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A state variable a processor declares in
/// [`init`](super::StatefulProcessor::init).
pub trait StateVariable {
    /// What the variable is; an error if its type has no Arrow form.
    fn spec(&self) -> ProcessorResult<VariableSpec>;
}

/// Where a processor declares its state variables, in
/// [`StatefulProcessor::init`](super::StatefulProcessor::init).
#[derive(Debug, Default)]
pub struct StateDeclarations {
    pub(crate) specs: Vec<VariableSpec>,
}

impl StateDeclarations {
    /// Declares `variable`. Names are unique within a processor and made of
    /// ASCII letters, digits, `-` and `_`, not starting with `_`.
    pub fn declare(&mut self, variable: &impl StateVariable) -> ProcessorResult<()> {
        let spec = variable.spec()?;
        let valid = !spec.name.is_empty()
            && !spec.name.starts_with('_')
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(format!(
                "state variable name '{}' is not valid: use ASCII letters, digits, '-' and '_', \
                 not starting with '_'",
                spec.name
            )
            .into());
        }
        if self.specs.iter().any(|s| s.name == spec.name) {
            return Err(format!("state variable '{}' is declared twice", spec.name).into());
        }
        self.specs.push(spec);
        Ok(())
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn codec<T: Serialize + DeserializeOwned>(
    name: &str,
    kind: VariableKind,
    role: &str,
) -> ProcessorResult<Arc<Codec>> {
    Codec::of::<T>(role).map(Arc::new).map_err(|e| {
        format!(
            "state variable '{name}' ({kind}): the type {} has no Arrow form: {e}",
            std::any::type_name::<T>()
        )
        .into()
    })
}

macro_rules! descriptor_basics {
    ($ty:ident < $($p:ident),+ >) => {
        impl<$($p),+> Clone for $ty<$($p),+> {
            fn clone(&self) -> Self {
                Self {
                    name: Arc::clone(&self.name),
                    ttl: self.ttl,
                    _types: PhantomData,
                }
            }
        }

        impl<$($p),+> fmt::Debug for $ty<$($p),+> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("name", &self.name)
                    .field("ttl", &self.ttl)
                    .finish()
            }
        }

        impl<$($p),+> $ty<$($p),+> {
            /// A variable named `name` (declare it in `init`), kept until
            /// cleared.
            pub fn new(name: &str) -> Self {
                Self {
                    name: name.into(),
                    ttl: None,
                    _types: PhantomData,
                }
            }

            /// This variable with a time to live: a value (for a list, an
            /// element; for a map, an entry) is gone once `ttl` of
            /// processing time has passed since it was last written, as
            /// Spark's TTL: it is removed when the first batch whose clock
            /// is past its expiry begins.
            pub fn with_ttl(mut self, ttl: Duration) -> Self {
                self.ttl = Some(ttl);
                self
            }

            /// The variable's name.
            pub fn name(&self) -> &str {
                &self.name
            }
        }
    };
}

/// `clear` and `exists` of a list or map variable.
macro_rules! clear_and_exists {
    ($ty:ident < $($p:ident),+ >) => {
        impl<$($p),+> $ty<$($p),+> {
            /// Removes the current key's state in this variable.
            pub fn clear(&self, ctx: &mut ProcessorContext<'_>) -> ProcessorResult<()> {
                ctx.variable_mut(&self.name)?.clear(ctx.group());
                Ok(())
            }

            /// Whether the current key has state in this variable.
            pub fn exists(&self, ctx: &ProcessorContext<'_>) -> ProcessorResult<bool> {
                Ok(ctx.variable(&self.name)?.exists(ctx.group()))
            }
        }
    };
}

/// One value per grouping key, as Spark's `ValueState`.
///
/// ```
/// use tidemill_engine::processor::ValueState;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Running { notional: f64, volume: f64 }
/// let vwap: ValueState<Running> = ValueState::new("vwap");
/// assert_eq!(vwap.name(), "vwap");
/// ```
pub struct ValueState<T> {
    name: Arc<str>,
    ttl: Option<Duration>,
    _types: PhantomData<fn() -> T>,
}

descriptor_basics!(ValueState<T>);

impl<T: Serialize + DeserializeOwned + Clone + Send + 'static> ValueState<T> {
    /// The current key's value, if it has one. In a batch's input
    /// callbacks the values of all the batch's keys are read at once, the
    /// first time one is asked for.
    pub fn get(&self, ctx: &mut ProcessorContext<'_>) -> ProcessorResult<Option<T>> {
        if let Some((slots, i)) = ctx.value_slot::<T>(&self.name)? {
            return Ok(slots.values[i].clone());
        }
        let var = ctx.typed(&self.name, VariableKind::Value, TypeId::of::<T>(), None)?;
        match var.value(ctx.group()) {
            Some(row) => Ok(Some(var.spec.value.decode_one(row)?)),
            None => Ok(None),
        }
    }

    /// Sets the current key's value.
    pub fn set(&self, ctx: &mut ProcessorContext<'_>, value: &T) -> ProcessorResult<()> {
        if let Some((slots, i)) = ctx.value_slot::<T>(&self.name)? {
            slots.values[i] = Some(value.clone());
            slots.changed[i] = true;
            return Ok(());
        }
        let now = ctx.processing_time_ms();
        let mut var = ctx.typed_mut(&self.name, VariableKind::Value, TypeId::of::<T>(), None)?;
        let row = var.spec.value.encode(value)?;
        var.set_value(ctx.group(), &row, now);
        Ok(())
    }

    /// Removes the current key's value.
    pub fn clear(&self, ctx: &mut ProcessorContext<'_>) -> ProcessorResult<()> {
        if let Some((slots, i)) = ctx.value_slot::<T>(&self.name)? {
            slots.values[i] = None;
            slots.changed[i] = true;
            return Ok(());
        }
        ctx.typed_mut(&self.name, VariableKind::Value, TypeId::of::<T>(), None)?
            .clear(ctx.group());
        Ok(())
    }

    /// Whether the current key has a value.
    pub fn exists(&self, ctx: &mut ProcessorContext<'_>) -> ProcessorResult<bool> {
        if let Some((slots, i)) = ctx.value_slot::<T>(&self.name)? {
            return Ok(slots.values[i].is_some());
        }
        Ok(ctx
            .typed(&self.name, VariableKind::Value, TypeId::of::<T>(), None)?
            .exists(ctx.group()))
    }
}

impl<T: Serialize + DeserializeOwned + 'static> StateVariable for ValueState<T> {
    fn spec(&self) -> ProcessorResult<VariableSpec> {
        Ok(VariableSpec {
            name: self.name.to_string(),
            kind: VariableKind::Value,
            ttl_ms: self.ttl.map(ttl_ms),
            value: codec::<T>(&self.name, VariableKind::Value, "value")?,
            map_key: None,
            types: (TypeId::of::<T>(), None),
            type_names: format!("ValueState<{}>", std::any::type_name::<T>()),
        })
    }
}

/// A list of values per grouping key, in append order, as Spark's
/// `ListState`. Each element is stored as its own entry, so appending
/// costs the same whatever the list's length; a time to live applies to
/// each element.
pub struct ListState<T> {
    name: Arc<str>,
    ttl: Option<Duration>,
    _types: PhantomData<fn() -> T>,
}

descriptor_basics!(ListState<T>);
clear_and_exists!(ListState<T>);

impl<T: Serialize + DeserializeOwned + 'static> ListState<T> {
    /// The current key's elements, in append order (empty if none).
    pub fn get(&self, ctx: &ProcessorContext<'_>) -> ProcessorResult<Vec<T>> {
        let var = ctx.typed(&self.name, VariableKind::List, TypeId::of::<T>(), None)?;
        let elements = var.elements(ctx.group());
        if elements.is_empty() {
            return Ok(Vec::new());
        }
        var.spec.value.decode(elements.into_iter().map(|(_, v)| v))
    }

    /// Appends `value` to the current key's list.
    pub fn append(&self, ctx: &mut ProcessorContext<'_>, value: &T) -> ProcessorResult<()> {
        self.append_all(ctx, std::slice::from_ref(value))
    }

    /// Appends `values`, in order, to the current key's list.
    pub fn append_all(&self, ctx: &mut ProcessorContext<'_>, values: &[T]) -> ProcessorResult<()> {
        let now = ctx.processing_time_ms();
        let mut var = ctx.typed_mut(&self.name, VariableKind::List, TypeId::of::<T>(), None)?;
        let rows = values
            .iter()
            .map(|v| var.spec.value.encode(v))
            .collect::<ProcessorResult<Vec<_>>>()?;
        var.append(ctx.group(), &rows, now);
        Ok(())
    }

    /// Replaces the current key's list by `values`.
    pub fn put(&self, ctx: &mut ProcessorContext<'_>, values: &[T]) -> ProcessorResult<()> {
        self.clear(ctx)?;
        self.append_all(ctx, values)
    }
}

impl<T: Serialize + DeserializeOwned + 'static> StateVariable for ListState<T> {
    fn spec(&self) -> ProcessorResult<VariableSpec> {
        Ok(VariableSpec {
            name: self.name.to_string(),
            kind: VariableKind::List,
            ttl_ms: self.ttl.map(ttl_ms),
            value: codec::<T>(&self.name, VariableKind::List, "value")?,
            map_key: None,
            types: (TypeId::of::<T>(), None),
            type_names: format!("ListState<{}>", std::any::type_name::<T>()),
        })
    }
}

/// A map per grouping key, as Spark's `MapState`: each entry stored on its
/// own (a time to live applies to each entry), iterated in the map keys'
/// order.
pub struct MapState<K, V> {
    name: Arc<str>,
    ttl: Option<Duration>,
    _types: PhantomData<fn() -> (K, V)>,
}

descriptor_basics!(MapState<K, V>);
clear_and_exists!(MapState<K, V>);

impl<K, V> MapState<K, V>
where
    K: Serialize + DeserializeOwned + 'static,
    V: Serialize + DeserializeOwned + 'static,
{
    fn types() -> (TypeId, Option<TypeId>) {
        (TypeId::of::<V>(), Some(TypeId::of::<K>()))
    }

    fn var<'c>(
        &self,
        ctx: &ProcessorContext<'c>,
    ) -> ProcessorResult<RwLockReadGuard<'c, super::stores::VariableStore>> {
        let (v, k) = Self::types();
        ctx.typed(&self.name, VariableKind::Map, v, k)
    }

    fn key_row(var: &super::stores::VariableStore, key: &K) -> ProcessorResult<Vec<u8>> {
        var.spec
            .map_key
            .as_ref()
            .expect("a map has a key codec")
            .encode(key)
    }

    /// The current key's value for map key `key`.
    pub fn get(&self, ctx: &ProcessorContext<'_>, key: &K) -> ProcessorResult<Option<V>> {
        let var = self.var(ctx)?;
        let part = Self::key_row(&var, key)?;
        match var.entry(ctx.group(), &part) {
            Some(row) => Ok(Some(var.spec.value.decode_one(row)?)),
            None => Ok(None),
        }
    }

    /// Whether the current key's map has `key`.
    pub fn contains_key(&self, ctx: &ProcessorContext<'_>, key: &K) -> ProcessorResult<bool> {
        let var = self.var(ctx)?;
        let part = Self::key_row(&var, key)?;
        Ok(var.entry(ctx.group(), &part).is_some())
    }

    /// Sets map key `key` to `value` in the current key's map.
    pub fn insert(
        &self,
        ctx: &mut ProcessorContext<'_>,
        key: &K,
        value: &V,
    ) -> ProcessorResult<()> {
        let now = ctx.processing_time_ms();
        let (v, k) = Self::types();
        let mut var = ctx.typed_mut(&self.name, VariableKind::Map, v, k)?;
        let part = Self::key_row(&var, key)?;
        let row = var.spec.value.encode(value)?;
        var.set_entry(ctx.group(), &part, &row, now);
        Ok(())
    }

    /// Removes map key `key` from the current key's map; returns whether it
    /// was there.
    pub fn remove(&self, ctx: &mut ProcessorContext<'_>, key: &K) -> ProcessorResult<bool> {
        let (v, k) = Self::types();
        let mut var = ctx.typed_mut(&self.name, VariableKind::Map, v, k)?;
        let part = Self::key_row(&var, key)?;
        Ok(var.remove_entry(ctx.group(), &part))
    }

    /// The current key's map entries, in map-key order.
    pub fn entries(&self, ctx: &ProcessorContext<'_>) -> ProcessorResult<Vec<(K, V)>> {
        let var = self.var(ctx)?;
        let elements = var.elements(ctx.group());
        if elements.is_empty() {
            return Ok(Vec::new());
        }
        let codec = var.spec.map_key.as_ref().expect("a map has a key codec");
        let keys: Vec<K> = codec.decode(elements.iter().map(|(k, _)| *k))?;
        let values: Vec<V> = var.spec.value.decode(elements.iter().map(|(_, v)| *v))?;
        Ok(keys.into_iter().zip(values).collect())
    }

    /// The current key's map keys, in order.
    pub fn keys(&self, ctx: &ProcessorContext<'_>) -> ProcessorResult<Vec<K>> {
        let var = self.var(ctx)?;
        let elements = var.elements(ctx.group());
        if elements.is_empty() {
            return Ok(Vec::new());
        }
        let codec = var.spec.map_key.as_ref().expect("a map has a key codec");
        codec.decode(elements.iter().map(|(k, _)| *k))
    }
}

impl<K, V> StateVariable for MapState<K, V>
where
    K: Serialize + DeserializeOwned + 'static,
    V: Serialize + DeserializeOwned + 'static,
{
    fn spec(&self) -> ProcessorResult<VariableSpec> {
        Ok(VariableSpec {
            name: self.name.to_string(),
            kind: VariableKind::Map,
            ttl_ms: self.ttl.map(ttl_ms),
            value: codec::<V>(&self.name, VariableKind::Map, "value")?,
            map_key: Some(codec::<K>(&self.name, VariableKind::Map, "key")?),
            types: Self::types(),
            type_names: format!(
                "MapState<{}, {}>",
                std::any::type_name::<K>(),
                std::any::type_name::<V>()
            ),
        })
    }
}
