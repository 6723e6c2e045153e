//! The engine's crash-test hooks as the sinks call them. With the
//! `failpoints` feature they are the engine's (`tidemill_engine::failpoint`);
//! without it they are empty inline functions that compile to nothing.

#[cfg(feature = "failpoints")]
pub(crate) use tidemill_engine::failpoint::{armed, hit};

/// Does nothing (see the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_point: &str, _batch_id: u64) {}

/// Never armed (see the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn armed(_point: &str, _batch_id: u64) -> bool {
    false
}
