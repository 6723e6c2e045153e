//! The bounded batch read ([`KafkaSource::read_batch`]): one DataFusion
//! partition per topic-partition, read lazily in chunks when the DataFrame
//! executes; the bad records of each go to the dead-letter sink at its end.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable as DataFusionStreamingTable;
use datafusion::dataframe::DataFrame;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use tidemill_engine::{OutputMode, Result, Sink, SinkContext, TidemillError};

use super::super::client::blocking;
use super::super::json::{BadRecordPolicy, dead_letter_schema};
use super::super::offsets::{EndingOffsets, LATEST, StartingOffsets};
use super::super::reader::{PartitionRange, Reader};
use super::KafkaSource;

/// Offsets per chunk of a bounded batch read.
const BATCH_READ_CHUNK: i64 = 8192;

impl KafkaSource {
    /// Reads the records from the starting offsets (default: earliest) to
    /// the ending offsets (default: the end of each partition now) as a
    /// batch [`DataFrame`], with the same columns as the stream. This is
    /// the same plan as a batch job: reprocess a topic from the start with
    /// the function a streaming query uses.
    ///
    /// Each topic-partition is one partition of the scan, read lazily when
    /// the DataFrame executes. With a dead-letter policy, the bad records
    /// of the i-th topic-partition (in topic, partition order) go to the
    /// sink as batch id `i`.
    pub async fn read_batch(&self, ctx: &SessionContext) -> Result<DataFrame> {
        self.validate()?;
        let schema = self.output_schema()?;
        let spec = self.clone();
        let ranges = blocking(move || -> Result<Vec<PartitionRange>> {
            let reader =
                Reader::new(&spec.client).map_err(|e| spec.kafka_err(&e, "creating a consumer"))?;
            let partitions = spec.discover(&reader)?;
            let starting = spec
                .starting_offsets
                .clone()
                .unwrap_or(StartingOffsets::Earliest);
            let start = spec.resolve_starting(&reader, &partitions, &starting)?;
            let mut ranges = Vec::with_capacity(partitions.len());
            for (topic, partition) in &partitions {
                let (_, high) = reader
                    .watermarks(topic, *partition)
                    .map_err(|e| spec.kafka_err(&e, format!("offsets of {topic}/{partition}")))?;
                let from = start.get(topic, *partition).unwrap_or(0);
                ranges.push(spec.bounded_range(topic, *partition, from, high)?);
            }
            Ok(ranges)
        })
        .await??;
        let spec = Arc::new(self.clone());
        let partitions: Vec<Arc<dyn PartitionStream>> = ranges
            .into_iter()
            .enumerate()
            .map(|(i, range)| {
                Arc::new(BoundedPartition {
                    spec: Arc::clone(&spec),
                    schema: Arc::clone(&schema),
                    range,
                    index: i as u64,
                    session: ctx.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        let table =
            DataFusionStreamingTable::try_new(Arc::clone(&schema), partitions).map_err(|e| {
                TidemillError::datafusion(format!("{}: bounded read", self.describe()), e)
            })?;
        ctx.read_table(Arc::new(table))
            .map_err(|e| TidemillError::datafusion(format!("{}: bounded read", self.describe()), e))
    }

    /// The range a bounded read takes of `topic`/`partition`: from `from`
    /// to the ending offset given for it, or to `high` (the partition's end
    /// now) for latest or none given.
    fn bounded_range(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        high: i64,
    ) -> Result<PartitionRange> {
        let until = match &self.ending_offsets {
            Some(EndingOffsets::Offsets(ends)) => match ends.get(topic, partition) {
                Some(LATEST) | None => high,
                Some(end) => end,
            },
            _ => high,
        };
        if until < from {
            return Err(self.err(format!(
                "topic {topic} partition {partition}: the ending offset {until} is before the starting offset {from}"
            )));
        }
        Ok(PartitionRange {
            topic: topic.to_string(),
            partition,
            start: from,
            end: until,
        })
    }
}

/// One topic-partition of a bounded read, as a DataFusion partition.
struct BoundedPartition {
    spec: Arc<KafkaSource>,
    schema: SchemaRef,
    range: PartitionRange,
    index: u64,
    session: SessionContext,
}

impl std::fmt::Debug for BoundedPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedPartition")
            .field("range", &self.range)
            .finish()
    }
}

struct BoundedState {
    spec: Arc<KafkaSource>,
    reader: Option<Reader>,
    next: i64,
    range: PartitionRange,
    dead: Vec<RecordBatch>,
    index: u64,
    session: SessionContext,
    done: bool,
}

impl PartitionStream for BoundedPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let state = BoundedState {
            spec: Arc::clone(&self.spec),
            reader: None,
            next: self.range.start,
            range: self.range.clone(),
            dead: Vec::new(),
            index: self.index,
            session: self.session.clone(),
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            loop {
                if state.done {
                    return None;
                }
                if state.next >= state.range.end {
                    state.done = true;
                    if let Err(e) = flush_dead_letters(&mut state).await {
                        return Some((Err(e.into()), state));
                    }
                    return None;
                }
                let chunk = PartitionRange {
                    start: state.next,
                    end: (state.next + BATCH_READ_CHUNK).min(state.range.end),
                    ..state.range.clone()
                };
                let spec = Arc::clone(&state.spec);
                let reader = state.reader.take();
                let read = blocking(move || {
                    let mut reader = match reader {
                        Some(r) => r,
                        None => match Reader::new(&spec.client) {
                            Ok(r) => r,
                            Err(e) => {
                                return (None, Err(spec.kafka_err(&e, "creating a consumer")));
                            }
                        },
                    };
                    let result = spec.read_ranges(&mut reader, vec![chunk]);
                    (Some(reader), result)
                })
                .await;
                let batches = match read {
                    Ok((reader, Ok(batches))) => {
                        state.reader = reader;
                        batches
                    }
                    Ok((_, Err(e))) | Err(e) => {
                        state.done = true;
                        return Some((Err(e.into()), state));
                    }
                };
                state.next = (state.next + BATCH_READ_CHUNK).min(state.range.end);
                let mut out = Vec::new();
                for batch in batches.into_iter().flatten() {
                    match state.spec.decode(&batch, &mut state.dead) {
                        Ok(Some(b)) => out.push(b),
                        Ok(None) => {}
                        Err(e) => {
                            state.done = true;
                            return Some((Err(e.into()), state));
                        }
                    }
                }
                if out.is_empty() {
                    continue;
                }
                let schema = out[0].schema();
                match arrow::compute::concat_batches(&schema, &out) {
                    Ok(batch) => return Some((Ok(batch), state)),
                    Err(e) => {
                        state.done = true;
                        return Some((Err(e.into()), state));
                    }
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        ))
    }
}

async fn flush_dead_letters(state: &mut BoundedState) -> Result<()> {
    let BadRecordPolicy::DeadLetter(sink) = &state.spec.bad_records else {
        return Ok(());
    };
    if state.dead.is_empty() {
        return Ok(());
    }
    let sink: Arc<dyn Sink> = Arc::clone(sink);
    sink.open(&SinkContext {
        session: state.session.clone(),
        query_name: None,
        schema: dead_letter_schema(),
        output_mode: OutputMode::Append,
    })
    .await?;
    let rows = std::mem::take(&mut state.dead);
    sink.add_batch(state.index, dead_letter_schema(), rows)
        .await
}
