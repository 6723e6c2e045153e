//! `within_watermark(keys…)`: SQL's way to ask for Spark's
//! `dropDuplicatesWithinWatermark`, as the one key of `DISTINCT ON`.
//!
//! `SELECT DISTINCT ON (within_watermark(symbol, exchange)) … FROM stream`
//! deduplicates the stream by `symbol` and `exchange` within the watermark
//! (see [`super::distinct_on_as_dedup`]). Evaluated, as a batch job does,
//! the function is the struct of its arguments, so `DISTINCT ON` keeps one
//! row per combination of them: the batch form of the same query.

use std::sync::Arc;

use arrow::array::{ArrayRef, StructArray};
use arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// The name the function is registered under.
pub(crate) const NAME: &str = "within_watermark";

/// `within_watermark(keys…)`: the struct of its arguments (fields `c0`,
/// `c1`, …), a marker for deduplication within the watermark.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct WithinWatermark {
    signature: Signature,
}

impl WithinWatermark {
    pub(crate) fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn fields(arg_types: &[DataType]) -> Fields {
    arg_types
        .iter()
        .enumerate()
        .map(|(i, t)| Field::new(format!("c{i}"), t.clone(), true))
        .collect()
}

impl ScalarUDFImpl for WithinWatermark {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types.is_empty() {
            return plan_err!("within_watermark(keys…) takes at least one key column");
        }
        Ok(DataType::Struct(fields(arg_types)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let types: Vec<DataType> = arrays.iter().map(|a| a.data_type().clone()).collect();
        let keys: ArrayRef = Arc::new(StructArray::try_new(fields(&types), arrays, None)?);
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&keys, 0)?)
        } else {
            ColumnarValue::Array(keys)
        })
    }
}
