//! The engine's crash-test hooks as the sinks call them. With the
//! `failpoints` feature they are the engine's (`tidemill_engine::failpoint`);
//! without it they are empty inline functions that compile to nothing.

#[cfg(all(feature = "failpoints", feature = "kafka"))]
pub(crate) use tidemill_engine::failpoint::armed;
#[cfg(feature = "failpoints")]
pub(crate) use tidemill_engine::failpoint::hit;

/// Does nothing (see the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_point: &str, _batch_id: u64) {}

/// Never armed (see the `failpoints` feature).
#[cfg(all(not(feature = "failpoints"), feature = "kafka"))]
#[inline(always)]
pub(crate) fn armed(_point: &str, _batch_id: u64) -> bool {
    false
}
