//! When a group of an aggregation with an event-time key closes, in the
//! key's time unit, and the watermark in that unit: the arithmetic shared
//! by the late-row split ([`super::late_rows`]) and the state's expiry
//! ([`super::operator`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::error::{DataFusionError, Result as DFResult};

use super::{EventTimeKey, EventTimeKind};

/// When each row's group closes, as integers in the key's time unit.
pub(crate) fn closing_time(value: &ArrayRef, key: &EventTimeKey) -> DFResult<ArrayRef> {
    let times = match key.kind {
        EventTimeKind::Window | EventTimeKind::Session => value
            .as_struct_opt()
            .and_then(|s| s.column_by_name("end"))
            .cloned()
            .ok_or_else(|| {
                DataFusionError::Internal(format!("window key '{}' has no end", key.name))
            })?,
        EventTimeKind::Timestamp => Arc::clone(value),
    };
    Ok(cast(&times, &DataType::Int64)?)
}

/// The watermark in `unit`: a time `t` in that unit is at or below the
/// watermark exactly when `t <= watermark_in_unit(..)`.
pub(crate) fn watermark_in_unit(watermark_ms: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => watermark_ms.div_euclid(1000),
        TimeUnit::Millisecond => watermark_ms,
        TimeUnit::Microsecond => watermark_ms.saturating_mul(1000),
        TimeUnit::Nanosecond => watermark_ms.saturating_mul(1_000_000),
    }
}

/// Times in `unit` as milliseconds rounded up, so that a group closing at
/// `t` expires exactly when the watermark (whole milliseconds) reaches `t`.
pub(crate) fn ceil_millis(times: &ArrayRef, unit: TimeUnit) -> Int64Array {
    let per_ms: i64 = match unit {
        TimeUnit::Second => {
            return times
                .as_primitive::<arrow::datatypes::Int64Type>()
                .unary(|t| t.saturating_mul(1000));
        }
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 1000,
        TimeUnit::Nanosecond => 1_000_000,
    };
    times
        .as_primitive::<arrow::datatypes::Int64Type>()
        .unary(|t| t.div_euclid(per_ms) + i64::from(t.rem_euclid(per_ms) != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_times_round_so_the_watermark_comparison_is_exact() {
        let ns: ArrayRef = Arc::new(Int64Array::from(vec![1_000_000, 1_000_001, -1]));
        assert_eq!(
            ceil_millis(&ns, TimeUnit::Nanosecond).values().to_vec(),
            vec![1, 2, 0]
        );
        let s: ArrayRef = Arc::new(Int64Array::from(vec![3]));
        assert_eq!(
            ceil_millis(&s, TimeUnit::Second).values().to_vec(),
            vec![3000]
        );
        assert_eq!(watermark_in_unit(2999, TimeUnit::Second), 2);
        assert_eq!(watermark_in_unit(-1, TimeUnit::Second), -1);
        assert_eq!(watermark_in_unit(2, TimeUnit::Microsecond), 2000);
    }
}
