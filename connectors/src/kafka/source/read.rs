//! What the stream and the bounded read share: the partitions of the
//! subscribed topics, starting offsets resolved to numbers, exact reads of
//! offset ranges, and records that are gone (`fail_on_data_loss`).

use std::collections::BTreeSet;

use arrow::array::RecordBatch;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tidemill_engine::{Result, TidemillError};

use super::super::offsets::{EARLIEST, LATEST, PartitionOffsets, StartingOffsets};
use super::super::reader::{PartitionRange, ReadError, Reader};
use super::{KafkaSource, Subscription};

impl KafkaSource {
    /// The partitions of the subscribed topics now, ordered.
    pub(super) fn discover(&self, reader: &Reader) -> Result<Vec<(String, i32)>> {
        let mut out = BTreeSet::new();
        match &self.subscription {
            Subscription::Topics(topics) => {
                for topic in topics {
                    let metadata = reader
                        .metadata(Some(topic))
                        .map_err(|e| self.kafka_err(&e, format!("metadata of topic {topic}")))?;
                    for t in metadata.topics() {
                        if t.name() != topic {
                            continue;
                        }
                        if let Some(err) = t.error() {
                            let code = RDKafkaErrorCode::from(err);
                            if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                                tracing::warn!(source = %self.describe(), topic, "topic does not exist (yet)");
                                continue;
                            }
                            let e = KafkaError::MetadataFetch(code);
                            return Err(self.kafka_err(&e, format!("metadata of topic {topic}")));
                        }
                        for p in t.partitions() {
                            out.insert((topic.clone(), p.id()));
                        }
                    }
                }
            }
            Subscription::Pattern(pattern) => {
                let regex = regex::Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| self.err(format!("invalid topic pattern: {e}")))?;
                let metadata = reader
                    .metadata(None)
                    .map_err(|e| self.kafka_err(&e, "metadata of all topics"))?;
                for t in metadata.topics() {
                    if t.error().is_some()
                        || t.name().starts_with("__")
                        || !regex.is_match(t.name())
                    {
                        continue;
                    }
                    for p in t.partitions() {
                        out.insert((t.name().to_string(), p.id()));
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Resolves `starting` to numbers for `partitions`.
    pub(super) fn resolve_starting(
        &self,
        reader: &Reader,
        partitions: &[(String, i32)],
        starting: &StartingOffsets,
    ) -> Result<PartitionOffsets> {
        let watermarks = |topic: &str, partition: i32| {
            reader
                .watermarks(topic, partition)
                .map_err(|e| self.kafka_err(&e, format!("offsets of {topic}/{partition}")))
        };
        let mut out = PartitionOffsets::new();
        let by_time = |times: Vec<(String, i32, i64)>, out: &mut PartitionOffsets| -> Result<()> {
            let found = reader
                .offsets_for_times(&times)
                .map_err(|e| self.kafka_err(&e, "offsets for timestamps"))?;
            for ((topic, partition, _), offset) in times.iter().zip(found) {
                let offset = match offset {
                    Some(o) => o,
                    None => watermarks(topic, *partition)?.1,
                };
                out.insert(topic.clone(), *partition, offset);
            }
            Ok(())
        };
        match starting {
            StartingOffsets::Earliest | StartingOffsets::Latest => {
                for (topic, partition) in partitions {
                    let (low, high) = watermarks(topic, *partition)?;
                    let offset = if *starting == StartingOffsets::Earliest {
                        low
                    } else {
                        high
                    };
                    out.insert(topic.clone(), *partition, offset);
                }
            }
            StartingOffsets::Offsets(given) => {
                for (topic, partition) in partitions {
                    let offset = match given.get(topic, *partition) {
                        Some(EARLIEST) | None => watermarks(topic, *partition)?.0,
                        Some(LATEST) => watermarks(topic, *partition)?.1,
                        Some(o) if o >= 0 => o,
                        Some(o) => {
                            return Err(TidemillError::Config(format!(
                                "{}: starting offset {o} of {topic}/{partition} is invalid (use -2 for earliest, -1 \
                                 for latest, or an offset >= 0)",
                                self.describe()
                            )));
                        }
                    };
                    out.insert(topic.clone(), *partition, offset);
                }
            }
            StartingOffsets::Timestamp(ts) => {
                let times = partitions
                    .iter()
                    .map(|(t, p)| (t.clone(), *p, *ts))
                    .collect();
                by_time(times, &mut out)?;
            }
            StartingOffsets::Timestamps(given) => {
                let mut times = Vec::new();
                for (topic, partition) in partitions {
                    match given.get(topic, *partition) {
                        Some(ts) => times.push((topic.clone(), *partition, ts)),
                        None => {
                            out.insert(topic.clone(), *partition, watermarks(topic, *partition)?.0)
                        }
                    }
                }
                if !times.is_empty() {
                    by_time(times, &mut out)?;
                }
            }
        }
        Ok(out)
    }

    /// Handles records the query needed that are gone: an error, or a
    /// warning when `fail_on_data_loss` is off.
    pub(super) fn data_loss(&self, message: String) -> Result<()> {
        if self.fail_on_data_loss {
            Err(self.err(format!(
                "{message}. Some data may have been lost: records were deleted (retention) or the topic was \
                 deleted and recreated. Set fail_on_data_loss(false) to continue without them"
            )))
        } else {
            tracing::warn!(source = %self.describe(), "{message}; continuing without them (fail_on_data_loss is off)");
            Ok(())
        }
    }

    /// Reads `ranges` exactly (blocking), handling records that are gone
    /// per `fail_on_data_loss`. Returns the batches of each range.
    pub(super) fn read_ranges(
        &self,
        reader: &mut Reader,
        mut ranges: Vec<PartitionRange>,
    ) -> Result<Vec<Vec<RecordBatch>>> {
        for _attempt in 0..4 {
            match reader.read(&ranges) {
                Ok(outcome) => {
                    // A range whose first record is past its start: gone
                    // records, or a gap (compaction) that is not a loss.
                    for (range, first) in ranges.iter().zip(&outcome.first_offsets) {
                        if let Some(first) = first
                            && *first > range.start
                        {
                            let (low, _) = reader
                                .watermarks(&range.topic, range.partition)
                                .map_err(|e| {
                                    self.kafka_err(
                                        &e,
                                        format!("offsets of {}/{}", range.topic, range.partition),
                                    )
                                })?;
                            if low > range.start {
                                self.data_loss(format!(
                                    "topic {} partition {}: offsets {}..{} are no longer available (the earliest \
                                     is {low})",
                                    range.topic,
                                    range.partition,
                                    range.start,
                                    low.min(*first)
                                ))?;
                            }
                        }
                    }
                    return Ok(outcome.batches);
                }
                Err(ReadError::Kafka(e, context)) => return Err(self.kafka_err(&e, context)),
                Err(ReadError::OffsetOutOfRange(message)) => {
                    let mut moved = false;
                    for range in &mut ranges {
                        if range.end <= range.start {
                            continue;
                        }
                        let (low, high) = reader
                            .watermarks(&range.topic, range.partition)
                            .map_err(|e| {
                                self.kafka_err(
                                    &e,
                                    format!("offsets of {}/{}", range.topic, range.partition),
                                )
                            })?;
                        if low > range.start || high < range.end {
                            let available_end = high.min(range.end);
                            self.data_loss(format!(
                                "topic {} partition {}: offsets {}..{} were to be read but only {low}..{high} \
                                 are available",
                                range.topic, range.partition, range.start, range.end
                            ))?;
                            range.start = range.start.max(low).min(available_end);
                            range.end = available_end;
                            moved = true;
                        }
                    }
                    if !moved {
                        return Err(TidemillError::transient(
                            self.err(format!("reading: {message}")),
                        ));
                    }
                }
                Err(ReadError::Stalled(stalled)) => {
                    let mut moved = false;
                    let mut waiting = Vec::new();
                    for (i, next) in stalled {
                        let range = &mut ranges[i];
                        match reader.watermarks(&range.topic, range.partition) {
                            Ok((low, high)) if high < range.end || low > next => {
                                self.data_loss(format!(
                                    "topic {} partition {}: offsets up to {} were to be read but only {low}..{high} \
                                     are available",
                                    range.topic, range.partition, range.end
                                ))?;
                                range.end = high.max(range.start);
                                range.start = range.start.max(low).min(range.end);
                                moved = true;
                            }
                            _ => waiting.push(format!(
                                "{}/{} at offset {next} of {}..{}",
                                range.topic, range.partition, range.start, range.end
                            )),
                        }
                    }
                    if !moved {
                        return Err(TidemillError::transient(self.err(format!(
                            "reading made no progress for {:?}: waiting for {}",
                            self.client.timeout,
                            waiting.join(", ")
                        ))));
                    }
                }
            }
        }
        Err(TidemillError::transient(self.err(
            "reading failed repeatedly while records were being deleted; retrying the batch",
        )))
    }
}
