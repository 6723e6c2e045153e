//! How a state variable's Rust values become state-store bytes and back:
//! serde traces the type's Arrow fields, and each value is one row of
//! those fields in arrow's row format, the encoding every state store of
//! the engine uses (so `tidemill state` decodes them like any other).

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_arrow::schema::{SchemaLike, TracingOptions};
use serde_arrow::utils::Item;

use super::ProcessorResult;

/// The Arrow form of one Rust type kept in state.
#[derive(Debug)]
pub(crate) struct Codec {
    /// The columns as stored (a plain type's one column renamed to the
    /// codec's role, e.g. `value`).
    stored: SchemaRef,
    /// The columns as serde reads and writes them.
    serde_fields: Vec<FieldRef>,
    /// Whether the type is not a struct and travels in serde_arrow's
    /// `Item` wrapper (one column named `item`).
    wrapped: bool,
    converter: RowConverter,
    /// Reused by [`encode`](Self::encode) (building one per value costs
    /// more than the value).
    builder: std::sync::Mutex<serde_arrow::ArrayBuilder>,
}

fn tracing() -> TracingOptions {
    TracingOptions::default()
        .strings_as_large_utf8(false)
        .sequence_as_large_list(false)
        .bytes_as_large_binary(false)
        .allow_null_fields(true)
}

impl Codec {
    /// The codec of `T`: a struct's fields as columns, any other type as
    /// one column named `role`.
    pub fn of<T: Serialize + DeserializeOwned>(role: &str) -> Result<Self, String> {
        let (serde_fields, stored, wrapped) = match Vec::<FieldRef>::from_type::<T>(tracing()) {
            Ok(fields) => (fields.clone(), fields, false),
            Err(as_struct) => match Vec::<FieldRef>::from_type::<Item<T>>(tracing()) {
                Ok(fields) => {
                    let stored = fields
                        .iter()
                        .map(|f| Arc::new(f.as_ref().clone().with_name(role)))
                        .collect();
                    (fields, stored, true)
                }
                Err(_) => return Err(as_struct.to_string()),
            },
        };
        Self::with_fields(serde_fields, stored, wrapped)
    }

    fn with_fields(
        serde_fields: Vec<FieldRef>,
        stored: Vec<FieldRef>,
        wrapped: bool,
    ) -> Result<Self, String> {
        let converter = RowConverter::new(
            stored
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| format!("its Arrow form cannot be kept in state: {e}"))?;
        let builder = serde_arrow::ArrayBuilder::from_arrow(&serde_fields)
            .map_err(|e| format!("its Arrow form cannot be built: {e}"))?;
        Ok(Self {
            stored: Arc::new(Schema::new(stored)),
            serde_fields,
            wrapped,
            converter,
            builder: std::sync::Mutex::new(builder),
        })
    }

    /// The columns as stored.
    pub fn schema(&self) -> &SchemaRef {
        &self.stored
    }

    /// `value` as row bytes.
    pub fn encode<T: Serialize>(&self, value: &T) -> ProcessorResult<Vec<u8>> {
        let rows = self.encode_many(std::iter::once(value))?;
        Ok(rows.row(0).as_ref().to_vec())
    }

    /// Rows of `columns` (in the stored layout).
    pub fn encode_columns(&self, columns: &[ArrayRef]) -> ProcessorResult<arrow::row::Rows> {
        Ok(self.converter.convert_columns(columns)?)
    }

    /// The columns of rows `rows` (each from [`encode`](Self::encode)).
    pub fn decode_columns<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a [u8]>,
    ) -> ProcessorResult<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        let rows: Vec<_> = rows.into_iter().map(|r| parser.parse(r)).collect();
        Ok(self.converter.convert_rows(rows)?)
    }

    /// The values of rows `rows`.
    pub fn decode<'a, T: DeserializeOwned>(
        &self,
        rows: impl IntoIterator<Item = &'a [u8]>,
    ) -> ProcessorResult<Vec<T>> {
        let columns = self.decode_columns(rows)?;
        if self.wrapped {
            let items: Vec<Item<T>> = serde_arrow::from_arrow(&self.serde_fields, &columns)?;
            Ok(items.into_iter().map(|Item(v)| v).collect())
        } else {
            Ok(serde_arrow::from_arrow(&self.serde_fields, &columns)?)
        }
    }

    /// `values` as rows, in one conversion.
    pub fn encode_many<'a, T: Serialize + 'a>(
        &self,
        values: impl IntoIterator<Item = &'a T>,
    ) -> ProcessorResult<arrow::row::Rows> {
        let columns = {
            let mut builder = self
                .builder
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut pushed = Ok(());
            for value in values {
                pushed = if self.wrapped {
                    builder.push(Item(value))
                } else {
                    builder.push(value)
                };
                if pushed.is_err() {
                    break;
                }
            }
            let columns = builder.to_arrow();
            pushed?;
            columns?
        };
        Ok(self.converter.convert_columns(&columns)?)
    }

    /// The value of one row.
    pub fn decode_one<T: DeserializeOwned>(&self, row: &[u8]) -> ProcessorResult<T> {
        self.decode(std::iter::once(row))?
            .pop()
            .ok_or_else(|| "a state row decoded to no value".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Acc {
        notional: f64,
        volume: i64,
        last: Option<String>,
    }

    #[test]
    fn structs_are_columns_and_round_trip() {
        let codec = Codec::of::<Acc>("value").unwrap();
        let names: Vec<_> = codec.schema().fields().iter().map(|f| f.name()).collect();
        assert_eq!(names, ["notional", "volume", "last"]);
        assert!(codec.schema().field(2).is_nullable());
        let v = Acc {
            notional: 12.5,
            volume: 3,
            last: Some("AAPL".into()),
        };
        let row = codec.encode(&v).unwrap();
        assert_eq!(codec.decode_one::<Acc>(&row).unwrap(), v);
        let none = Acc {
            notional: 0.0,
            volume: -1,
            last: None,
        };
        let row = codec.encode(&none).unwrap();
        assert_eq!(codec.decode_one::<Acc>(&row).unwrap(), none);
    }

    #[test]
    fn plain_types_are_one_column_named_for_their_role() {
        let codec = Codec::of::<f64>("value").unwrap();
        assert_eq!(codec.schema().field(0).name(), "value");
        assert_eq!(codec.schema().field(0).data_type(), &DataType::Float64);
        let row = codec.encode(&2.5f64).unwrap();
        assert_eq!(codec.decode_one::<f64>(&row).unwrap(), 2.5);
        let strings = Codec::of::<String>("key").unwrap();
        assert_eq!(strings.schema().field(0).data_type(), &DataType::Utf8);
        let rows: Vec<Vec<u8>> = ["b", "a"]
            .iter()
            .map(|s| strings.encode(&s.to_string()).unwrap())
            .collect();
        let back: Vec<String> = strings.decode(rows.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(back, ["b", "a"]);
        // The row format keeps the order of values.
        assert!(rows[1] < rows[0]);
    }
}
