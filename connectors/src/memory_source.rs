//! A source fed by test code, like Spark's `MemoryStream`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use tidemill_engine::{
    Offset, ReadLimit, Result, Source, SourceContext, SourceStream, TidemillError,
};

/// An in-memory stream that test code appends record batches to.
///
/// Clones share the same data: keep one clone to push batches while the
/// query reads another. The offset is the number of batches pushed so far;
/// pushed batches are kept for the life of the stream, so any range can be
/// replayed. The data lives only in this process: a query restarted in a
/// new process finds the stream empty.
///
/// ```
/// # use std::sync::Arc;
/// # use arrow::array::Int64Array;
/// # use arrow::datatypes::{DataType, Field, Schema};
/// # use arrow::record_batch::RecordBatch;
/// use tidemill_connectors::MemoryStream;
///
/// let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
/// let stream = MemoryStream::new(schema.clone());
/// let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
/// let offset = stream.push(batch).unwrap();
/// assert_eq!(offset.as_u64(), Some(1));
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStream {
    id: u64,
    schema: SchemaRef,
    batches: Arc<Mutex<Vec<RecordBatch>>>,
    max_rows_per_trigger: Option<u64>,
}

impl MemoryStream {
    /// An empty stream of rows with `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            schema,
            batches: Arc::default(),
            max_rows_per_trigger: None,
        }
    }

    /// Admits at most about `n` rows per trigger: whole pushed batches, at
    /// least one.
    pub fn max_rows_per_trigger(mut self, n: u64) -> Self {
        self.max_rows_per_trigger = Some(n);
        self
    }

    /// The schema of the stream's rows.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Appends a batch; returns the offset that covers it. Fails if the
    /// batch's schema differs from the stream's.
    pub fn push(&self, batch: RecordBatch) -> Result<Offset> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(TidemillError::source(
                self.describe(),
                format!(
                    "pushed batch has schema {:?}, the stream's is {:?}",
                    batch.schema(),
                    self.schema
                ),
            ));
        }
        let mut batches = self.batches.lock().expect("memory stream lock poisoned");
        batches.push(batch);
        Ok(Offset::from_u64(batches.len() as u64))
    }

    /// Appends several batches; returns the offset that covers the last.
    pub fn push_all(&self, batches: impl IntoIterator<Item = RecordBatch>) -> Result<Offset> {
        let mut last = Offset::from_u64(self.len() as u64);
        for batch in batches {
            last = self.push(batch)?;
        }
        Ok(last)
    }

    /// The number of batches pushed so far.
    pub fn len(&self) -> usize {
        self.batches
            .lock()
            .expect("memory stream lock poisoned")
            .len()
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn describe(&self) -> String {
        format!("MemoryStream[{}]", self.id)
    }
}

#[async_trait]
impl Source for MemoryStream {
    fn description(&self) -> String {
        self.describe()
    }

    async fn schema(&self, _session: &SessionContext) -> Result<SchemaRef> {
        Ok(Arc::clone(&self.schema))
    }

    async fn open(&self, _ctx: SourceContext) -> Result<Box<dyn SourceStream>> {
        Ok(Box::new(self.clone()))
    }
}

fn index(source: &MemoryStream, offset: Option<&Offset>) -> Result<usize> {
    match offset {
        None => Ok(0),
        Some(offset) => offset.as_u64().map(|n| n as usize).ok_or_else(|| {
            TidemillError::source(
                source.describe(),
                format!("offset {offset} is not a batch count"),
            )
        }),
    }
}

#[async_trait]
impl SourceStream for MemoryStream {
    fn description(&self) -> String {
        self.describe()
    }

    fn default_read_limit(&self) -> ReadLimit {
        self.max_rows_per_trigger
            .map_or(ReadLimit::All, ReadLimit::MaxRows)
    }

    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let from = index(self, start)?;
        let batches = self.batches.lock().expect("memory stream lock poisoned");
        let end = match limit {
            ReadLimit::MaxRows(max) => {
                let mut end = from;
                let mut rows = 0u64;
                while end < batches.len()
                    && (end == from || rows + batches[end].num_rows() as u64 <= max)
                {
                    rows += batches[end].num_rows() as u64;
                    end += 1;
                }
                end
            }
            ReadLimit::MaxFiles(_) | ReadLimit::All => batches.len(),
        };
        Ok((end > 0).then(|| Offset::from_u64(end as u64)))
    }

    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let (from, to) = (index(self, start)?, index(self, Some(end))?);
        let batches = self.batches.lock().expect("memory stream lock poisoned");
        if to > batches.len() || from > to {
            return Err(TidemillError::source(
                self.describe(),
                format!(
                    "range ({from}, {to}] is not available: the stream holds {} batches \
                     (memory streams do not survive a restart of the process)",
                    batches.len()
                ),
            ));
        }
        Ok(batches[from..to].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{SourceHarness, check_source};
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(schema: &SchemaRef, values: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![Arc::new(Int64Array::from_iter_values(values))],
        )
        .unwrap()
    }

    struct Harness(MemoryStream);

    #[async_trait]
    impl SourceHarness for Harness {
        fn provider(&self) -> Arc<dyn Source> {
            Arc::new(self.0.clone())
        }
        fn session(&self) -> SessionContext {
            SessionContext::new()
        }
        async fn add_data(&mut self, round: usize) -> Result<()> {
            let start = round as i64 * 10;
            self.0.push(batch(&self.0.schema(), start..start + 5))?;
            self.0
                .push(batch(&self.0.schema(), start + 5..start + 10))?;
            Ok(())
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
    }

    #[tokio::test]
    async fn conformance() {
        check_source(&mut Harness(MemoryStream::new(schema()))).await;
    }

    #[tokio::test]
    async fn max_rows_admits_whole_batches_and_at_least_one() {
        let stream = MemoryStream::new(schema()).max_rows_per_trigger(7);
        for i in 0..4 {
            stream
                .push(batch(&stream.schema(), i * 5..i * 5 + 5))
                .unwrap();
        }
        stream.push(batch(&stream.schema(), 100..120)).unwrap();
        let mut source = stream.clone();
        let limit = source.default_read_limit();
        assert_eq!(limit, ReadLimit::MaxRows(7));
        let mut ends = Vec::new();
        let mut start: Option<Offset> = None;
        loop {
            let end = source.latest_offset(start.as_ref(), limit).await.unwrap();
            if end == start {
                break;
            }
            ends.push(end.as_ref().unwrap().as_u64().unwrap());
            start = end;
        }
        // 5 rows fit (5+5 would not), ..., and the 20-row batch alone.
        assert_eq!(ends, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn wrong_schema_and_missing_range_are_errors() {
        let stream = MemoryStream::new(schema());
        let other = Arc::new(Schema::new(vec![Field::new("w", DataType::Int64, false)]));
        let err = stream.push(batch(&other, 0..1)).unwrap_err();
        assert!(err.to_string().contains("MemoryStream"), "{err}");
        let mut source = stream.clone();
        let err = source.read(None, &Offset::from_u64(3)).await.unwrap_err();
        assert!(err.to_string().contains("not available"), "{err}");
    }
}
