//! The streaming [`Source`] a query opens from a [`KafkaSource`]: offsets
//! `{"topic": {"partition": next offset}}` in the engine's offset log, the
//! starting offsets resolved once and kept in the checkpoint, bad records
//! to the dead-letter sink under ids from the [`DeadLetterLog`], and
//! optional commits of the offsets to a consumer group.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use tidemill_engine::{
    Offset, OutputMode, ReadLimit, Result, SinkContext, Source, SourceContext, TidemillError,
};
use tidemill_state::{CheckpointDir, StateError};

use super::super::client::blocking;
use super::super::json::{BadRecordPolicy, dead_letter_schema};
use super::super::offsets::{
    EndingOffsets, LATEST, PartitionOffsets, StartingOffsets, spread_limit,
};
use super::super::reader::{PartitionRange, Reader};
use super::KafkaSource;
use super::dead_letter::DeadLetterLog;

/// Kind and version of the resolved starting offsets in the checkpoint.
const INITIAL_KIND: &str = "kafka-source-initial-offsets";
const INITIAL_VERSION: u32 = 1;

/// A [`KafkaSource`] opened for one query.
pub(super) struct KafkaStream {
    description: String,
    spec: Arc<KafkaSource>,
    session: SessionContext,
    checkpoint: CheckpointDir,
    /// The consumer, between calls (taken while a blocking call runs).
    reader: Option<Reader>,
    /// The resolved starting offsets, once known.
    initial: Option<PartitionOffsets>,
    /// After `prepare_for_available_now`: the ends not to go past.
    available_now_cap: Option<PartitionOffsets>,
    dead_letters: DeadLetterLog,
    dead_letter_opened: bool,
    /// The consumer committing offsets to a group, if asked for.
    committer: Option<Arc<rdkafka::consumer::BaseConsumer>>,
}

impl std::fmt::Debug for KafkaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStream")
            .field("description", &self.description)
            .field("initial", &self.initial)
            .finish()
    }
}

impl KafkaStream {
    /// Opens `spec` (already validated) for the query of `ctx`: loads the
    /// dead-letter log from the source's checkpoint.
    pub(super) async fn open(spec: &KafkaSource, ctx: SourceContext) -> Result<Self> {
        let dead_letters = DeadLetterLog::load(ctx.checkpoint.child("dead_letter")).await?;
        Ok(KafkaStream {
            description: spec.describe(),
            spec: Arc::new(spec.clone()),
            session: ctx.session,
            checkpoint: ctx.checkpoint,
            reader: None,
            initial: None,
            available_now_cap: None,
            dead_letters,
            dead_letter_opened: false,
            committer: None,
        })
    }

    /// Runs `f` with the consumer on the blocking pool.
    async fn with_reader<T, F>(&mut self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&KafkaSource, &mut Reader) -> Result<T> + Send + 'static,
    {
        let reader = self.reader.take();
        let spec = Arc::clone(&self.spec);
        let (reader, result) = blocking(move || {
            let mut reader = match reader {
                Some(reader) => reader,
                None => match Reader::new(&spec.client) {
                    Ok(reader) => reader,
                    Err(e) => return (None, Err(spec.kafka_err(&e, "creating a consumer"))),
                },
            };
            let result = f(&spec, &mut reader);
            (Some(reader), result)
        })
        .await?;
        self.reader = reader;
        result
    }

    /// The starting offsets, resolved once and kept in the checkpoint.
    async fn initial_offsets(&mut self) -> Result<PartitionOffsets> {
        if let Some(initial) = &self.initial {
            return Ok(initial.clone());
        }
        let stored: Option<serde_json::Value> = self
            .checkpoint
            .read("initial", INITIAL_KIND, INITIAL_VERSION)
            .await?;
        let offsets = match stored {
            Some(json) => PartitionOffsets::from_json(&json).map_err(|e| {
                TidemillError::Checkpoint(StateError::Corrupt {
                    path: self.checkpoint.path("initial"),
                    reason: e,
                })
            })?,
            None => {
                let starting = self
                    .spec
                    .starting_offsets
                    .clone()
                    .unwrap_or(StartingOffsets::Latest);
                let resolved = self
                    .with_reader(move |spec, reader| {
                        let partitions = spec.discover(reader)?;
                        spec.resolve_starting(reader, &partitions, &starting)
                    })
                    .await?;
                match self
                    .checkpoint
                    .create(
                        "initial",
                        INITIAL_KIND,
                        INITIAL_VERSION,
                        &resolved.to_json(),
                    )
                    .await
                {
                    Ok(()) => resolved,
                    Err(StateError::AlreadyExists { .. }) => {
                        let json: serde_json::Value = self
                            .checkpoint
                            .read("initial", INITIAL_KIND, INITIAL_VERSION)
                            .await?
                            .unwrap_or_default();
                        PartitionOffsets::from_json(&json).map_err(|e| self.spec.err(e))?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        tracing::debug!(source = %self.description, initial = %offsets, "starting offsets");
        self.initial = Some(offsets.clone());
        Ok(offsets)
    }

    fn parse(&self, offset: &Offset) -> Result<PartitionOffsets> {
        PartitionOffsets::from_offset(offset).map_err(|e| {
            self.spec.err(format!(
                "invalid offset {offset}: {e} (is the checkpoint of another source?)"
            ))
        })
    }

    async fn start_offsets(&mut self, start: Option<&Offset>) -> Result<PartitionOffsets> {
        match start {
            Some(offset) => self.parse(offset),
            None => self.initial_offsets().await,
        }
    }

    /// The ends now: every partition's end offset, with its earliest.
    async fn ends_now(&mut self) -> Result<Vec<(String, i32, i64, i64)>> {
        self.with_reader(|spec, reader| {
            let partitions = spec.discover(reader)?;
            let mut out = Vec::with_capacity(partitions.len());
            for (topic, partition) in partitions {
                let (low, high) = reader
                    .watermarks(&topic, partition)
                    .map_err(|e| spec.kafka_err(&e, format!("offsets of {topic}/{partition}")))?;
                out.push((topic, partition, low, high));
            }
            Ok(out)
        })
        .await
    }

    /// The dead-letter batch id of the range `(start, end]`: the one logged
    /// for it, or a new one logged now (before the sink is written).
    async fn dead_letter_id(&mut self, start: Option<&Offset>, end: &Offset) -> Result<u64> {
        let start = start
            .map(|o| o.0.clone())
            .unwrap_or(serde_json::Value::Null);
        self.dead_letters.id_for(start, end.0.clone()).await
    }

    async fn write_dead_letters(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
        rows: Vec<RecordBatch>,
    ) -> Result<()> {
        let BadRecordPolicy::DeadLetter(sink) = self.spec.bad_records.clone() else {
            return Ok(());
        };
        if !self.dead_letter_opened {
            sink.open(&SinkContext {
                session: self.session.clone(),
                query_name: None,
                schema: dead_letter_schema(),
                output_mode: OutputMode::Append,
            })
            .await?;
            self.dead_letter_opened = true;
        }
        let id = self.dead_letter_id(start, end).await?;
        let count: usize = rows.iter().map(RecordBatch::num_rows).sum();
        tracing::warn!(
            source = %self.description,
            records = count,
            dead_letter_batch = id,
            "records whose value did not decode sent to the dead-letter sink {}",
            sink.description()
        );
        sink.add_batch(id, dead_letter_schema(), rows).await
    }
}

#[async_trait]
impl Source for KafkaStream {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn default_read_limit(&self) -> ReadLimit {
        match self.spec.max_offsets_per_trigger {
            Some(n) => ReadLimit::MaxRows(n),
            None => ReadLimit::All,
        }
    }

    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let from = self.start_offsets(start).await?;
        let now = match &self.available_now_cap {
            // The ends were taken when the AvailableNow query started and
            // bound every batch: as Spark, the source does not ask the
            // broker again (the earliest offsets are not used here).
            Some(cap) => cap
                .iter()
                .map(|(topic, partition, end)| (topic.to_string(), partition, 0, end))
                .collect(),
            None => self.ends_now().await?,
        };
        let next = batch_end(
            &self.spec,
            &from,
            &now,
            self.available_now_cap.as_ref(),
            limit,
        )?;
        if next == from {
            return Ok(start.cloned());
        }
        Ok(Some(next.to_offset()))
    }

    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let from = self.start_offsets(start).await?;
        let until = self.parse(end)?;
        let ranges = ranges_to_read(&self.spec, &from, &until)?;
        if ranges.iter().all(|r| r.end <= r.start) {
            return Ok(Vec::new());
        }
        let per_range = self
            .with_reader(move |spec, reader| spec.read_ranges(reader, ranges))
            .await?;
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for batch in per_range.into_iter().flatten() {
            if let Some(batch) = self.spec.decode(&batch, &mut dead)? {
                out.push(batch);
            }
        }
        if !dead.is_empty() {
            self.write_dead_letters(start, end, dead).await?;
        }
        Ok(out)
    }

    async fn commit(&mut self, end: &Offset) -> Result<()> {
        let committed = self.parse(end)?;
        self.dead_letters.purge(&committed).await?;
        let Some(group) = self.spec.commit_group.clone() else {
            return Ok(());
        };
        if self.committer.is_none() {
            let config = self.spec.client.config(&[
                ("group.id", group.clone()),
                ("enable.auto.commit", "false".into()),
            ]);
            match config.create::<rdkafka::consumer::BaseConsumer>() {
                Ok(consumer) => self.committer = Some(Arc::new(consumer)),
                Err(e) => {
                    tracing::warn!(source = %self.description, group, error = %e, "cannot create the consumer that commits offsets");
                    return Ok(());
                }
            }
        }
        let consumer = Arc::clone(self.committer.as_ref().expect("committer"));
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (topic, partition, offset) in committed.iter() {
            let _ = tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset));
        }
        let description = self.description.clone();
        blocking(move || {
            use rdkafka::consumer::{CommitMode, Consumer};
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(source = %description, group, error = %e, "committing offsets to the group failed");
            }
            // Serve the commit's callback.
            let _ = consumer.poll(Duration::ZERO);
        })
        .await
    }

    async fn prepare_for_available_now(&mut self) -> Result<()> {
        let now = self.ends_now().await?;
        let mut cap = PartitionOffsets::new();
        for (topic, partition, _, high) in now {
            cap.insert(topic, partition, high);
        }
        self.available_now_cap = Some(cap);
        Ok(())
    }
}

/// The end of the next batch from `from`: for each partition of `now`
/// (topic, partition, earliest and end offsets), as far as its end,
/// bounded by the AvailableNow `cap`, explicit ending offsets and `limit`
/// (spread across partitions in proportion to their lag). A new partition
/// enters the offsets once it has records; an end that moved back (the
/// topic recreated or truncated) is data loss.
fn batch_end(
    spec: &KafkaSource,
    from: &PartitionOffsets,
    now: &[(String, i32, i64, i64)],
    cap: Option<&PartitionOffsets>,
    limit: ReadLimit,
) -> Result<PartitionOffsets> {
    let explicit_ends = match &spec.ending_offsets {
        Some(EndingOffsets::Offsets(ends)) => Some(ends.clone()),
        _ => None,
    };
    let mut keys = Vec::new();
    let mut spans = Vec::new();
    for (topic, partition, _low, high) in now {
        let begin = from.get(topic, *partition);
        let s = begin.unwrap_or(0);
        let mut available = *high;
        if let Some(cap) = cap {
            available = available.min(cap.get(topic, *partition).unwrap_or(0));
        }
        if let Some(ends) = &explicit_ends
            && let Some(end) = ends.get(topic, *partition)
            && end != LATEST
        {
            available = available.min(end);
        }
        if *high < s {
            // The partition's end moved back: the topic was recreated
            // or truncated.
            spec.data_loss(format!(
                "topic {topic} partition {partition}: the query has read up to offset {s} but the partition now \
                 ends at {high}"
            ))?;
            keys.push((topic.clone(), *partition, begin.is_some()));
            spans.push((*high, *high));
            continue;
        }
        keys.push((topic.clone(), *partition, begin.is_some()));
        spans.push((s, available.max(s)));
    }
    let ends = match limit {
        ReadLimit::MaxRows(n) => spread_limit(&spans, n),
        ReadLimit::All | ReadLimit::MaxFiles(_) => spans.iter().map(|(_, e)| *e).collect(),
    };
    let mut next = from.clone();
    for ((topic, partition, known), end) in keys.into_iter().zip(ends) {
        // A new partition enters the offsets once it has records.
        if known || end > 0 {
            next.insert(topic, partition, end);
        }
    }
    Ok(next)
}

/// The ranges of the batch `(from, until]`, one per partition of `until`
/// (from offset 0 where `from` does not know the partition). An end
/// before its start (the partition recreated or truncated) is data loss.
fn ranges_to_read(
    spec: &KafkaSource,
    from: &PartitionOffsets,
    until: &PartitionOffsets,
) -> Result<Vec<PartitionRange>> {
    let mut ranges = Vec::with_capacity(until.len());
    for (topic, partition, e) in until.iter() {
        let s = from.get(topic, partition).unwrap_or(0);
        if e < s {
            spec.data_loss(format!(
                "topic {topic} partition {partition}: the batch was to read from offset {s} but the partition \
                 ended at {e} (recreated or truncated)"
            ))?;
            continue;
        }
        ranges.push(PartitionRange {
            topic: topic.to_string(),
            partition,
            start: s,
            end: e,
        });
    }
    Ok(ranges)
}
