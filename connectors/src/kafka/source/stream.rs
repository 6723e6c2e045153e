//! The streaming [`SourceStream`] a query opens from a [`KafkaSource`]: offsets
//! `{"topic": {"partition": next offset}}` in the engine's offset log, the
//! starting offsets resolved once and kept in the checkpoint, bad records
//! to the dead-letter sink under ids from the [`DeadLetterLog`], and
//! optional commits of the offsets to a consumer group.
//!
//! **Where a batch ends.** A trigger normally asks the brokers for the
//! partitions and their end offsets (two round trips). After that the
//! consumer follows every partition from the next batch's start, so
//! librdkafka fetches them between reads. While records keep arriving and
//! the consumer holds most of what the brokers reported with their latest
//! fetch responses, the next batch ends after the records in hand instead
//! ([`Reader::caught_up_ends`]): no round trip, and
//! the read finds its records already fetched. The offset log records
//! those ends as it records any other, so recovery and re-runs do not
//! depend on where they came from. The brokers are asked again when
//! nothing new is in hand, when the consumer is behind, and at least
//! every [`KafkaSource::partition_discovery_interval`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use tidemill_engine::{
    Offset, OutputMode, ReadLimit, Result, SinkContext, SourceContext, SourceStream, TidemillError,
};
use tidemill_state::{CheckpointDir, StateError};

use super::super::client::blocking;
use super::super::json::{BadRecordPolicy, dead_letter_schema};
use super::super::offsets::{PartitionOffsets, StartingOffsets, spread_limit};
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
    /// Records behind each partition's end after the last planned batch,
    /// by `topic/partition`.
    lag: std::collections::BTreeMap<String, u64>,
    /// When the partitions were last discovered and their ends asked of
    /// the broker, and the partitions found then.
    discovered: Option<(Instant, Vec<(String, i32)>)>,
    /// Where the last planned batch's ends came from: `"brokers"` or
    /// `"fetched"` (records the consumer already held).
    ends_from: &'static str,
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
            lag: std::collections::BTreeMap::new(),
            discovered: None,
            ends_from: "brokers",
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

    /// The ends now: every partition's end offset. Two round trips to the
    /// brokers whatever the number of partitions: the metadata, then one
    /// offsets request per leader for all partitions at once (the
    /// earliest offsets are not needed: a partition whose records were
    /// deleted shows when it is read).
    ///
    /// With `from`, the consumer then follows every partition found from
    /// there (from offset 0 where `from` does not know it), for
    /// [`KafkaStream::caught_up_ends`].
    async fn ends_now(
        &mut self,
        from: Option<&PartitionOffsets>,
    ) -> Result<Vec<(String, i32, i64)>> {
        let follow_from = from.cloned();
        let ends = self
            .with_reader(move |spec, reader| {
                let partitions = spec.discover(reader)?;
                let ends = reader
                    .end_offsets(&partitions)
                    .map_err(|e| spec.kafka_err(&e, "end offsets of the partitions"))?;
                if let Some(from) = follow_from {
                    let starts = following(spec, &from, &partitions);
                    if let Err(e) = reader.follow(&starts) {
                        // Only the shortcut is lost: the next batch asks
                        // the broker again, and its read assigns afresh.
                        tracing::debug!(source = %spec.describe(), error = %e, "cannot follow the partitions");
                    }
                }
                Ok(partitions
                    .into_iter()
                    .zip(ends)
                    .map(|((topic, partition), end)| (topic, partition, end))
                    .collect::<Vec<_>>())
            })
            .await?;
        self.discovered = Some((
            Instant::now(),
            ends.iter().map(|(t, p, _)| (t.clone(), *p)).collect(),
        ));
        Ok(ends)
    }

    /// The ends of a batch from `from` that the consumer can give without
    /// a round trip to the broker ([`Reader::caught_up_ends`]): while
    /// records keep coming, each partition ends after the last record
    /// already fetched. Returned with the partitions' ends as the broker
    /// last reported them, for the lag. `None` when the broker must be asked: the
    /// shortcut is off, the partitions were discovered longer than the
    /// discovery interval ago, the consumer is behind or holds nothing
    /// new. So a trigger that finds no new data always has the broker's
    /// word for it.
    async fn caught_up_ends(
        &mut self,
        from: &PartitionOffsets,
    ) -> Result<Option<(Vec<(String, i32, i64)>, Vec<(String, i32, i64)>)>> {
        let interval = self.spec.partition_discovery_interval;
        let Some((at, partitions)) = &self.discovered else {
            return Ok(None);
        };
        if interval.is_zero() || at.elapsed() >= interval || self.reader.is_none() {
            return Ok(None);
        }
        let starts = following(&self.spec, from, partitions);
        self.with_reader(move |_, reader| {
            Ok(reader.caught_up_ends(&starts).map(|ends| {
                starts
                    .into_iter()
                    .zip(ends)
                    .map(|((topic, partition, _), (end, high))| {
                        ((topic.clone(), partition, end), (topic, partition, high))
                    })
                    .unzip()
            }))
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
                // Dead-letter batch ids are logged in the source's checkpoint.
                query_id: format!("{} dead letters", self.description),
                schema: dead_letter_schema(),
                output_mode: OutputMode::Append,
                durability: Default::default(),
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
impl SourceStream for KafkaStream {
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
        // The ends the batch may go to, and, where they are the records
        // in hand, the partitions' ends for the lag.
        let (now, reported) = match &self.available_now_cap {
            // The ends were taken when the AvailableNow query started and
            // bound every batch: as Spark, the source does not ask the
            // broker again.
            Some(cap) => (
                cap.iter()
                    .map(|(topic, partition, end)| (topic.to_string(), partition, end))
                    .collect(),
                None,
            ),
            None => match self.caught_up_ends(&from).await? {
                Some((ends, reported)) => {
                    self.ends_from = "fetched";
                    (ends, Some(reported))
                }
                None => {
                    self.ends_from = "brokers";
                    (self.ends_now(Some(&from)).await?, None)
                }
            },
        };
        let next = batch_end(
            &self.spec,
            &from,
            &now,
            self.available_now_cap.as_ref(),
            limit,
        )?;
        self.lag = reported
            .as_ref()
            .unwrap_or(&now)
            .iter()
            .map(|(topic, partition, end)| {
                let read = next
                    .get(topic, *partition)
                    .or_else(|| from.get(topic, *partition))
                    .unwrap_or(0);
                (format!("{topic}/{partition}"), (end - read).max(0) as u64)
            })
            .collect();
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

    fn lag(&self) -> std::collections::BTreeMap<String, u64> {
        self.lag.clone()
    }

    fn metrics(&self) -> std::collections::BTreeMap<String, String> {
        [("ends_from".to_string(), self.ends_from.to_string())].into()
    }

    async fn prepare_for_available_now(&mut self) -> Result<()> {
        let now = self.ends_now(None).await?;
        let mut cap = PartitionOffsets::new();
        for (topic, partition, high) in now {
            cap.insert(topic, partition, high);
        }
        self.available_now_cap = Some(cap);
        Ok(())
    }

    fn available_now_target(&self) -> Option<Offset> {
        self.available_now_cap
            .as_ref()
            .map(PartitionOffsets::to_offset)
    }
}

/// Each of `partitions` the stream still reads, with the offset a batch
/// from `from` starts at there (0 for a partition `from` does not know
/// yet). A partition that has reached its explicit ending offset is left
/// out: following it would only fetch records no batch reads.
fn following(
    spec: &KafkaSource,
    from: &PartitionOffsets,
    partitions: &[(String, i32)],
) -> Vec<(String, i32, i64)> {
    partitions
        .iter()
        .filter_map(|(topic, partition)| {
            let start = from.get(topic, *partition).unwrap_or(0);
            let ended = spec
                .explicit_end(topic, *partition)
                .is_some_and(|end| start >= end);
            (!ended).then(|| (topic.clone(), *partition, start))
        })
        .collect()
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
    now: &[(String, i32, i64)],
    cap: Option<&PartitionOffsets>,
    limit: ReadLimit,
) -> Result<PartitionOffsets> {
    let mut keys = Vec::new();
    let mut spans = Vec::new();
    for (topic, partition, high) in now {
        let begin = from.get(topic, *partition);
        let s = begin.unwrap_or(0);
        let mut available = *high;
        if let Some(cap) = cap {
            available = available.min(cap.get(topic, *partition).unwrap_or(0));
        }
        if let Some(end) = spec.explicit_end(topic, *partition) {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::super::offsets::{EndingOffsets, LATEST};
    use super::super::testing::{checkpoint, records, trade_schema, unreachable};
    use super::*;
    use crate::MemorySink;

    fn offsets(entries: &[(&str, i32, i64)]) -> PartitionOffsets {
        let mut out = PartitionOffsets::new();
        for (topic, partition, offset) in entries {
            out.insert(*topic, *partition, *offset);
        }
        out
    }

    /// Partition ends now: (topic, partition, end).
    fn now(ends: &[(&str, i32, i64)]) -> Vec<(String, i32, i64)> {
        ends.iter()
            .map(|(t, p, end)| (t.to_string(), *p, *end))
            .collect()
    }

    /// Every partition to its end; a new partition enters the offsets
    /// once it has records, from offset 0.
    #[test]
    fn a_batch_reads_every_partition_to_its_end() {
        let from = offsets(&[("t", 0, 2)]);
        let ends = now(&[("t", 0, 10), ("t", 1, 0), ("t", 2, 4)]);
        let next = batch_end(&unreachable(), &from, &ends, None, ReadLimit::All).unwrap();
        assert_eq!(next, offsets(&[("t", 0, 10), ("t", 2, 4)]));
        // Nothing new: the same offsets.
        let again = batch_end(&unreachable(), &next, &ends, None, ReadLimit::All).unwrap();
        assert_eq!(again, next);
    }

    /// The consumer follows every partition from where the next batch
    /// starts (a new one from 0), except those at their explicit ending
    /// offset.
    #[test]
    fn the_consumer_follows_the_partitions_still_read() {
        let from = offsets(&[("t", 0, 5), ("t", 1, 7)]);
        let partitions = vec![
            ("t".to_string(), 0),
            ("t".to_string(), 1),
            ("t".to_string(), 2),
        ];
        assert_eq!(
            following(&unreachable(), &from, &partitions),
            now(&[("t", 0, 5), ("t", 1, 7), ("t", 2, 0)])
        );
        let ends = offsets(&[("t", 0, 5), ("t", 1, LATEST), ("t", 2, 3)]);
        let source = unreachable().ending_offsets(EndingOffsets::Offsets(ends));
        assert_eq!(
            following(&source, &from, &partitions),
            now(&[("t", 1, 7), ("t", 2, 0)])
        );
    }

    /// A row limit is spread in proportion to the partitions' lag.
    #[test]
    fn a_row_limit_is_spread_across_partitions() {
        let from = offsets(&[("t", 0, 0), ("t", 1, 100)]);
        let ends = now(&[("t", 0, 10), ("t", 1, 130)]);
        let next = batch_end(&unreachable(), &from, &ends, None, ReadLimit::MaxRows(8)).unwrap();
        assert_eq!(next, offsets(&[("t", 0, 2), ("t", 1, 106)]));
        // More than the lag: everything.
        let all = batch_end(&unreachable(), &from, &ends, None, ReadLimit::MaxRows(1000));
        assert_eq!(all.unwrap(), offsets(&[("t", 0, 10), ("t", 1, 130)]));
    }

    /// The AvailableNow cap and explicit ending offsets bound the batch; a
    /// partition the cap does not know is not read.
    #[test]
    fn the_available_now_cap_and_explicit_ends_bound_a_batch() {
        let from = offsets(&[("t", 0, 1), ("t", 1, 1)]);
        let ends = now(&[("t", 0, 10), ("t", 1, 10), ("t", 2, 10)]);
        let cap = offsets(&[("t", 0, 5), ("t", 1, 20)]);
        let next = batch_end(&unreachable(), &from, &ends, Some(&cap), ReadLimit::All).unwrap();
        assert_eq!(next, offsets(&[("t", 0, 5), ("t", 1, 10)]));
        let explicit = offsets(&[("t", 0, 3), ("t", 1, LATEST)]);
        let source = unreachable().ending_offsets(EndingOffsets::Offsets(explicit));
        let next = batch_end(&source, &from, &ends, None, ReadLimit::All).unwrap();
        assert_eq!(next, offsets(&[("t", 0, 3), ("t", 1, 10), ("t", 2, 10)]));
    }

    /// A partition whose end is before where the query is (the topic
    /// recreated or truncated) fails the query, or with
    /// `fail_on_data_loss(false)` is read on from its new end.
    #[test]
    fn an_end_that_moved_back_is_data_loss() {
        let from = offsets(&[("t", 0, 8)]);
        let ends = now(&[("t", 0, 5)]);
        let message = batch_end(&unreachable(), &from, &ends, None, ReadLimit::All)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(
                "topic t partition 0: the query has read up to offset 8 but the partition now ends at 5"
            ) && message.contains("fail_on_data_loss(false)"),
            "{message}"
        );
        let lenient = unreachable().fail_on_data_loss(false);
        let next = batch_end(&lenient, &from, &ends, None, ReadLimit::All).unwrap();
        assert_eq!(next, offsets(&[("t", 0, 5)]));
    }

    #[test]
    fn a_batch_reads_from_where_the_last_one_ended() {
        let from = offsets(&[("t", 0, 3)]);
        let until = offsets(&[("t", 0, 7), ("t", 1, 2)]);
        let ranges = ranges_to_read(&unreachable(), &from, &until).unwrap();
        let spans: Vec<(i32, i64, i64)> = ranges
            .iter()
            .map(|r| (r.partition, r.start, r.end))
            .collect();
        assert_eq!(spans, [(0, 3, 7), (1, 0, 2)]);
        assert!(ranges.iter().all(|r| r.topic == "t"));
    }

    #[test]
    fn a_batch_ending_before_its_start_is_data_loss() {
        let from = offsets(&[("t", 0, 9), ("t", 1, 0)]);
        let until = offsets(&[("t", 0, 4), ("t", 1, 3)]);
        let message = ranges_to_read(&unreachable(), &from, &until)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("the batch was to read from offset 9 but the partition ended at 4"),
            "{message}"
        );
        let lenient = unreachable().fail_on_data_loss(false);
        let ranges = ranges_to_read(&lenient, &from, &until).unwrap();
        assert_eq!(ranges.len(), 1);
        assert_eq!(
            (ranges[0].partition, ranges[0].start, ranges[0].end),
            (1, 0, 3)
        );
    }

    async fn open(spec: &KafkaSource, dir: &tempfile::TempDir) -> KafkaStream {
        let session = SessionContext::new();
        KafkaStream::open(
            spec,
            SourceContext {
                schema: spec.output_schema().unwrap(),
                checkpoint: checkpoint(&session, dir.path()),
                session,
            },
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_read_limit_is_max_offsets_per_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let stream = open(&unreachable(), &dir).await;
        assert_eq!(stream.default_read_limit(), ReadLimit::All);
        assert_eq!(
            stream.description(),
            "KafkaSource[127.0.0.1:1: topics trades]"
        );
        let limited = open(&unreachable().max_offsets_per_trigger(500), &dir).await;
        assert_eq!(limited.default_read_limit(), ReadLimit::MaxRows(500));
    }

    /// Starting offsets resolved by an earlier run are read from the
    /// checkpoint, not asked of the broker (which does not exist here).
    #[tokio::test]
    async fn starting_offsets_kept_in_the_checkpoint_are_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = open(&unreachable(), &dir).await;
        let initial = offsets(&[("trades", 0, 5)]);
        stream
            .checkpoint
            .create("initial", INITIAL_KIND, INITIAL_VERSION, &initial.to_json())
            .await
            .unwrap();
        let batches = stream.read(None, &initial.to_offset()).await.unwrap();
        assert!(batches.is_empty());
        assert_eq!(stream.initial, Some(initial));
    }

    #[tokio::test]
    async fn corrupt_starting_offsets_are_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = open(&unreachable(), &dir).await;
        stream
            .checkpoint
            .create("initial", INITIAL_KIND, INITIAL_VERSION, &json!([1, 2]))
            .await
            .unwrap();
        let end = offsets(&[("trades", 0, 5)]).to_offset();
        match stream.read(None, &end).await {
            Err(TidemillError::Checkpoint(StateError::Corrupt { path, .. })) => {
                assert!(path.as_ref().ends_with("initial"), "{path}")
            }
            other => panic!(
                "expected a corrupt checkpoint, got {:?}",
                other.map(|b| b.len())
            ),
        }
    }

    #[tokio::test]
    async fn an_offset_of_another_source_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = open(&unreachable(), &dir).await;
        let other = Offset(json!({"files": ["a.json"]}));
        let message = stream
            .latest_offset(Some(&other), ReadLimit::All)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("(is the checkpoint of another source?)"),
            "{message}"
        );
    }

    /// A replayed batch writes its bad records under the id it had, also
    /// after a restart; a committed batch's entry is forgotten.
    #[tokio::test]
    async fn dead_letters_of_a_replayed_batch_keep_their_id() {
        let dir = tempfile::tempdir().unwrap();
        let sink = MemorySink::new();
        let spec = unreachable()
            .json_values(trade_schema())
            .on_bad_record(BadRecordPolicy::DeadLetter(Arc::new(sink.clone())));
        let first = offsets(&[("trades", 0, 2)]).to_offset();
        let second = offsets(&[("trades", 0, 4)]).to_offset();
        let bad = |offset| {
            let mut dead = Vec::new();
            let batch = records(&[("trades", 0, offset, "not json")]);
            spec.decode(&batch, &mut dead).unwrap();
            dead
        };
        let mut stream = open(&spec, &dir).await;
        stream
            .write_dead_letters(None, &first, bad(1))
            .await
            .unwrap();
        stream
            .write_dead_letters(Some(&first), &second, bad(3))
            .await
            .unwrap();
        stream
            .write_dead_letters(None, &first, bad(1))
            .await
            .unwrap();
        assert_eq!(sink.batch_ids(), [0, 1]);
        assert_eq!(sink.num_rows(), 2);

        let mut restarted = open(&spec, &dir).await;
        assert_eq!(
            restarted
                .dead_letter_id(Some(&first), &second)
                .await
                .unwrap(),
            1
        );
        restarted.commit(&second).await.unwrap();
        let log = restarted.checkpoint.child("dead_letter");
        assert_eq!(log.list_names().await.unwrap(), ["1"]);
        let third = offsets(&[("trades", 0, 6)]).to_offset();
        assert_eq!(
            restarted
                .dead_letter_id(Some(&second), &third)
                .await
                .unwrap(),
            2
        );
    }
}
