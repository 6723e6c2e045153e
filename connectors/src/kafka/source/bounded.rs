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
use super::super::offsets::StartingOffsets;
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
        let until = self.explicit_end(topic, partition).unwrap_or(high);
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
        // A bounded read is a run of its own.
        query_id: uuid::Uuid::new_v4().to_string(),
        schema: dead_letter_schema(),
        output_mode: OutputMode::Append,
        durability: Default::default(),
    })
    .await?;
    let rows = std::mem::take(&mut state.dead);
    sink.add_batch(state.index, dead_letter_schema(), rows)
        .await
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::super::super::offsets::{EndingOffsets, LATEST, PartitionOffsets};
    use super::super::testing::{config_error, records, trade_schema, unreachable};
    use super::*;
    use crate::MemorySink;

    fn range(start: i64, end: i64) -> PartitionRange {
        PartitionRange {
            topic: "trades".into(),
            partition: 0,
            start,
            end,
        }
    }

    #[test]
    fn a_bounded_read_ends_at_the_partition_end_by_default() {
        let source = unreachable();
        assert_eq!(
            source.bounded_range("trades", 0, 3, 10).unwrap(),
            range(3, 10)
        );
        let latest = source.ending_offsets(EndingOffsets::Latest);
        assert_eq!(
            latest.bounded_range("trades", 0, 3, 10).unwrap(),
            range(3, 10)
        );
    }

    /// An explicit ending offset ends the read; `LATEST` or a partition not
    /// named means the partition's end.
    #[test]
    fn explicit_ending_offsets_end_the_read() {
        let ends = PartitionOffsets::new()
            .with("trades", 0, 7)
            .with("trades", 1, LATEST);
        let source = unreachable().ending_offsets(EndingOffsets::Offsets(ends));
        assert_eq!(
            source.bounded_range("trades", 0, 2, 10).unwrap(),
            range(2, 7)
        );
        let p1 = source.bounded_range("trades", 1, 2, 10).unwrap();
        assert_eq!((p1.partition, p1.start, p1.end), (1, 2, 10));
        let p2 = source.bounded_range("trades", 2, 0, 4).unwrap();
        assert_eq!((p2.partition, p2.start, p2.end), (2, 0, 4));
        // Up to the end: an empty range, not an error.
        assert_eq!(
            source.bounded_range("trades", 0, 7, 10).unwrap(),
            range(7, 7)
        );
    }

    #[test]
    fn an_ending_offset_before_the_start_is_an_error() {
        let ends = PartitionOffsets::new().with("trades", 0, 2);
        let source = unreachable().ending_offsets(EndingOffsets::Offsets(ends));
        let message = source
            .bounded_range("trades", 0, 5, 10)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(
                "topic trades partition 0: the ending offset 2 is before the starting offset 5"
            ),
            "{message}"
        );
    }

    /// Mistakes are said before any broker is asked.
    #[tokio::test]
    async fn read_batch_validates_first() {
        let ctx = SessionContext::new();
        let message = config_error(KafkaSource::new("127.0.0.1:1").read_batch(&ctx).await);
        assert!(message.contains("no topics"), "{message}");
    }

    /// A partition with nothing to read yields no rows and never creates a
    /// consumer (the source's broker does not exist).
    #[tokio::test]
    async fn an_empty_partition_reads_nothing() {
        let session = SessionContext::new();
        let spec = Arc::new(unreachable());
        let partition = BoundedPartition {
            schema: spec.output_schema().unwrap(),
            spec,
            range: range(4, 4),
            index: 0,
            session: session.clone(),
        };
        let batches: Vec<RecordBatch> = partition
            .execute(session.task_ctx())
            .try_collect()
            .await
            .unwrap();
        assert!(batches.is_empty());
    }

    fn bounded_state(policy: BadRecordPolicy, dead: Vec<RecordBatch>, index: u64) -> BoundedState {
        BoundedState {
            spec: Arc::new(
                unreachable()
                    .json_values(trade_schema())
                    .on_bad_record(policy),
            ),
            reader: None,
            next: 0,
            range: range(0, 2),
            dead,
            index,
            session: SessionContext::new(),
            done: true,
        }
    }

    fn bad_rows() -> RecordBatch {
        let batch = records(&[("trades", 0, 0, "x"), ("trades", 0, 1, "y")]);
        let mut dead = Vec::new();
        let spec = unreachable()
            .json_values(trade_schema())
            .on_bad_record(BadRecordPolicy::DeadLetter(Arc::new(MemorySink::new())));
        assert!(spec.decode(&batch, &mut dead).unwrap().is_none());
        dead.remove(0)
    }

    /// The bad records of the i-th topic-partition go to the sink as batch
    /// id i, once.
    #[tokio::test]
    async fn dead_letters_go_under_the_partition_index() {
        let sink = MemorySink::new();
        let mut state = bounded_state(
            BadRecordPolicy::DeadLetter(Arc::new(sink.clone())),
            vec![bad_rows()],
            3,
        );
        flush_dead_letters(&mut state).await.unwrap();
        assert_eq!(sink.batch_ids(), [3]);
        assert_eq!(sink.num_rows(), 2);
        assert_eq!(sink.batches()[0].schema(), dead_letter_schema());
        assert!(state.dead.is_empty());
        flush_dead_letters(&mut state).await.unwrap();
        assert_eq!(sink.num_rows(), 2);
    }

    #[tokio::test]
    async fn no_bad_records_write_no_dead_letter_batch() {
        let sink = MemorySink::new();
        let mut state = bounded_state(
            BadRecordPolicy::DeadLetter(Arc::new(sink.clone())),
            vec![],
            0,
        );
        flush_dead_letters(&mut state).await.unwrap();
        assert!(sink.batch_ids().is_empty());
        let mut failing = bounded_state(BadRecordPolicy::Fail, vec![bad_rows()], 0);
        flush_dead_letters(&mut failing).await.unwrap();
        assert_eq!(failing.dead.len(), 1);
    }
}
