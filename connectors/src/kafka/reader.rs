//! Reading exact offset ranges of partitions with one assigned consumer.
//!
//! The consumer is never subscribed (no consumer group): partitions are
//! [assigned](rdkafka::consumer::Consumer::assign) at the offsets a range
//! starts at. A read that continues where the previous one ended keeps the
//! assignment, so what librdkafka prefetched is not thrown away; records
//! that arrive beyond a range's end are kept (up to a bound) for the next
//! read. Every call is blocking and bounded: a read fails when it makes no
//! progress for the configured timeout.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rdkafka::Offset as KafkaOffset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::metadata::Metadata;

use super::client::ClientOptions;
use super::schema::RecordsBuilder;

/// Rows per record batch a read produces.
const BATCH_ROWS: usize = 8192;
/// Records kept per partition beyond the end of a read, for the next one:
/// at most as many, and as many bytes of keys and values, as librdkafka
/// prefetches by default (`queued.min.messages`,
/// `queued.max.messages.kbytes`). A broker may answer one fetch with more
/// than that (Tansu ignores the per-partition fetch size); what does not
/// fit is fetched again.
const LOOKAHEAD_RECORDS: usize = 100_000;
const LOOKAHEAD_BYTES: usize = 64 << 20;
/// How long one poll waits.
const POLL: Duration = Duration::from_millis(100);

/// The records `[start, end)` of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl PartitionRange {
    fn key(&self) -> (String, i32) {
        (self.topic.clone(), self.partition)
    }
}

/// What a read returned: per range (in the order given), its batches and
/// the offset of the first record found at or after the range's start
/// (possibly past its end; `None` if none was seen).
pub(crate) struct ReadOutcome {
    pub batches: Vec<Vec<RecordBatch>>,
    pub first_offsets: Vec<Option<i64>>,
}

/// Why a read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// A client call failed.
    Kafka(KafkaError, String),
    /// The broker said a requested offset is not available (deleted by
    /// retention, or the partition was truncated or recreated).
    OffsetOutOfRange(String),
    /// No record arrived for the timeout; `(range index, next offset
    /// expected)` of the ranges not yet complete.
    Stalled(Vec<(usize, i64)>),
}

/// Where the consumer stands in one assigned partition.
#[derive(Default)]
struct Cursor {
    /// Every record before this offset has been handed out; records from
    /// here on are in `buffer` or still to come from the consumer.
    read_upto: i64,
    buffer: VecDeque<OwnedMessage>,
    /// The bytes of keys and values in `buffer`.
    buffered_bytes: usize,
}

impl Cursor {
    fn at(read_upto: i64) -> Self {
        Self {
            read_upto,
            ..Self::default()
        }
    }

    fn pop_front(&mut self) -> Option<OwnedMessage> {
        let message = self.buffer.pop_front()?;
        self.buffered_bytes -= size(&message);
        Some(message)
    }

    fn clear(&mut self) {
        self.buffer.clear();
        self.buffered_bytes = 0;
    }
}

/// The bytes of a record's key and value.
fn size<M: Message>(message: &M) -> usize {
    message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len)
}

/// A consumer closed on a blocking thread when dropped. rdkafka's
/// `BaseConsumer` drop waits for librdkafka to close the consumer in polls
/// of 100 ms, which would otherwise hold up the async runtime's worker (and
/// the end of a query) for that long.
struct ClosedInBackground(Option<BaseConsumer>);

impl std::ops::Deref for ClosedInBackground {
    type Target = BaseConsumer;

    fn deref(&self) -> &BaseConsumer {
        self.0.as_ref().expect("consumer present until dropped")
    }
}

impl Drop for ClosedInBackground {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || drop(consumer));
            }
            Err(_) => drop(consumer),
        }
    }
}

/// One assigned consumer and where it stands in each partition.
pub(crate) struct Reader {
    consumer: ClosedInBackground,
    /// A second client for metadata and offset queries: a broker answers
    /// the requests of one connection in order, so on the fetching
    /// consumer's connection they would wait behind its fetches.
    queries: ClosedInBackground,
    timeout: Duration,
    cursors: HashMap<(String, i32), Cursor>,
    needs_assign: bool,
}

impl Reader {
    /// A consumer that assigns itself partitions: offsets are the
    /// engine's business. librdkafka wants a `group.id` even so; the group
    /// is never joined and nothing is committed to it.
    pub(crate) fn new(options: &ClientOptions) -> Result<Self, KafkaError> {
        let config = options.config(&[
            ("group.id", "tidemill-assign-only".into()),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("auto.offset.reset", "error".into()),
            ("enable.partition.eof", "true".into()),
            ("fetch.wait.max.ms", "100".into()),
            ("socket.timeout.ms", options.timeout_ms()),
        ]);
        let consumer: BaseConsumer = config.create()?;
        let queries: BaseConsumer = config.create()?;
        Ok(Self {
            consumer: ClosedInBackground(Some(consumer)),
            queries: ClosedInBackground(Some(queries)),
            timeout: options.timeout,
            cursors: HashMap::new(),
            needs_assign: false,
        })
    }

    /// Metadata of `topic`, or of every topic.
    pub(crate) fn metadata(&self, topic: Option<&str>) -> Result<Metadata, KafkaError> {
        self.queries.fetch_metadata(topic, self.timeout)
    }

    /// The earliest and the end offset of a partition.
    pub(crate) fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), KafkaError> {
        self.queries
            .fetch_watermarks(topic, partition, self.timeout)
    }

    /// The end offset of each of `partitions` (in their order), in one
    /// offsets request per leader, where [`Reader::watermarks`] takes two
    /// per partition.
    pub(crate) fn end_offsets(&self, partitions: &[(String, i32)]) -> Result<Vec<i64>, KafkaError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            // "Latest" is the timestamp -1 of an offsets request.
            tpl.add_partition_offset(topic, *partition, KafkaOffset::End)?;
        }
        let found = self.queries.offsets_for_times(tpl, self.timeout)?;
        partitions
            .iter()
            .map(|(topic, partition)| {
                let elem =
                    found
                        .find_partition(topic, *partition)
                        .ok_or(KafkaError::OffsetFetch(
                            RDKafkaErrorCode::UnknownTopicOrPartition,
                        ))?;
                elem.error()?;
                match elem.offset() {
                    KafkaOffset::Offset(o) if o >= 0 => Ok(o),
                    _ => Err(KafkaError::OffsetFetch(
                        RDKafkaErrorCode::OffsetNotAvailable,
                    )),
                }
            })
            .collect()
    }

    /// The first offset at or after `timestamp_ms` in each partition of
    /// `partitions`, `None` where there is none.
    pub(crate) fn offsets_for_times(
        &self,
        partitions: &[(String, i32, i64)],
    ) -> Result<Vec<Option<i64>>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, ts) in partitions {
            tpl.add_partition_offset(topic, *partition, KafkaOffset::Offset(*ts))?;
        }
        let found = self.queries.offsets_for_times(tpl, self.timeout)?;
        partitions
            .iter()
            .map(|(topic, partition, _)| {
                let Some(elem) = found.find_partition(topic, *partition) else {
                    return Ok(None);
                };
                elem.error()?;
                Ok(match elem.offset() {
                    KafkaOffset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                })
            })
            .collect()
    }

    /// Forgets every position: the next read assigns afresh.
    pub(crate) fn reset(&mut self) {
        self.cursors.clear();
        self.needs_assign = true;
    }

    /// Reads exactly the records in `ranges`.
    pub(crate) fn read(&mut self, ranges: &[PartitionRange]) -> Result<ReadOutcome, ReadError> {
        let result = self.read_inner(ranges);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn read_inner(&mut self, ranges: &[PartitionRange]) -> Result<ReadOutcome, ReadError> {
        let mut index: HashMap<(String, i32), usize> = HashMap::new();
        for (i, range) in ranges.iter().enumerate() {
            if range.end <= range.start {
                continue;
            }
            index.insert(range.key(), i);
            match self.cursors.get(&range.key()) {
                Some(cursor) if cursor.read_upto == range.start => {}
                _ => {
                    self.cursors.insert(range.key(), Cursor::at(range.start));
                    self.needs_assign = true;
                }
            }
        }
        if self.needs_assign {
            self.assign()
                .map_err(|e| ReadError::Kafka(e, "assigning partitions".into()))?;
        }

        let mut builders: Vec<RecordsBuilder> =
            ranges.iter().map(|_| RecordsBuilder::new()).collect();
        let mut batches: Vec<Vec<RecordBatch>> = ranges.iter().map(|_| Vec::new()).collect();
        let mut first: Vec<Option<i64>> = vec![None; ranges.len()];
        // The next offset each range still needs; `None` when complete.
        let mut next: Vec<Option<i64>> = ranges
            .iter()
            .map(|r| (r.end > r.start).then_some(r.start))
            .collect();
        let mut incomplete = next.iter().filter(|n| n.is_some()).count();

        // Records kept from the previous read.
        for (i, range) in ranges.iter().enumerate() {
            if next[i].is_none() {
                continue;
            }
            let cursor = self.cursors.get_mut(&range.key()).expect("cursor");
            while let Some(message) = cursor.buffer.front() {
                let offset = message.offset();
                if offset < range.start {
                    cursor.pop_front();
                    continue;
                }
                if offset >= range.end {
                    first[i].get_or_insert(offset);
                    next[i] = None;
                    incomplete -= 1;
                    break;
                }
                let message = cursor.pop_front().expect("front");
                take(&mut builders[i], &mut batches[i], &mut first[i], &message);
                if offset + 1 >= range.end {
                    next[i] = None;
                    incomplete -= 1;
                    break;
                }
                next[i] = Some(offset + 1);
            }
        }

        let mut last_progress = Instant::now();
        let mut last_position_check = Instant::now();
        let mut last_error: Option<String> = None;
        while incomplete > 0 {
            let mut check_positions = false;
            match self.consumer.poll(POLL) {
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    let key = (message.topic().to_string(), message.partition());
                    let offset = message.offset();
                    match index.get(&key) {
                        Some(&i) if next[i].is_some() => {
                            let range = &ranges[i];
                            if offset < range.start {
                                continue;
                            }
                            if offset >= range.end {
                                first[i].get_or_insert(offset);
                                next[i] = None;
                                incomplete -= 1;
                                self.keep(&key, message.detach());
                                continue;
                            }
                            take(&mut builders[i], &mut batches[i], &mut first[i], &message);
                            if offset + 1 >= range.end {
                                next[i] = None;
                                incomplete -= 1;
                            } else {
                                next[i] = Some(offset + 1);
                            }
                        }
                        _ => {
                            let detached = message.detach();
                            self.keep(&key, detached);
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => check_positions = true,
                Some(Err(e)) => {
                    if let Some(
                        RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                    ) = e.rdkafka_error_code()
                    {
                        return Err(ReadError::OffsetOutOfRange(e.to_string()));
                    }
                    if let KafkaError::MessageConsumptionFatal(_) = e {
                        return Err(ReadError::Kafka(e, "consuming".into()));
                    }
                    // Connection trouble: librdkafka reconnects by itself;
                    // the progress timeout bounds the wait.
                    tracing::debug!(error = %e, "Kafka consumer error while reading");
                    last_error = Some(e.to_string());
                    check_positions = true;
                }
                None => check_positions = true,
            }
            if check_positions && last_position_check.elapsed() >= Duration::from_millis(300) {
                last_position_check = Instant::now();
                // A range whose last offsets hold no record a consumer sees
                // (compacted away, transaction markers) completes when the
                // consumer's position has passed its end.
                if let Ok(positions) = self.consumer.position() {
                    for (i, range) in ranges.iter().enumerate() {
                        if next[i].is_none() {
                            continue;
                        }
                        if let Some(elem) = positions.find_partition(&range.topic, range.partition)
                            && let KafkaOffset::Offset(p) = elem.offset()
                            && p >= range.end
                            && first[i].is_some()
                        {
                            next[i] = None;
                            incomplete -= 1;
                        }
                    }
                }
            }
            if incomplete > 0 && last_progress.elapsed() >= self.timeout {
                if let Some(error) = last_error {
                    tracing::warn!(error, "Kafka read stalled");
                }
                let stalled = next
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| n.map(|n| (i, n)))
                    .collect();
                return Err(ReadError::Stalled(stalled));
            }
        }

        for (i, range) in ranges.iter().enumerate() {
            if range.end > range.start
                && let Some(cursor) = self.cursors.get_mut(&range.key())
            {
                cursor.read_upto = range.end;
            }
            if builders[i].len() > 0 {
                batches[i].push(builders[i].finish());
            }
        }
        Ok(ReadOutcome {
            batches,
            first_offsets: first,
        })
    }

    /// Assigns the consumer every partition it has a cursor for, at the
    /// cursor's position, forgetting what was kept ahead.
    fn assign(&mut self) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), cursor) in &mut self.cursors {
            cursor.clear();
            tpl.add_partition_offset(topic, *partition, KafkaOffset::Offset(cursor.read_upto))?;
        }
        self.consumer.assign(&tpl)?;
        self.needs_assign = false;
        Ok(())
    }

    /// Keeps the consumer assigned to each of `partitions` (topic,
    /// partition, next offset the query reads there), so that librdkafka
    /// fetches them between reads and [`Reader::caught_up_ends`] can tell
    /// where they end. A partition already followed from that offset keeps
    /// what was fetched ahead; one at another offset starts afresh there.
    pub(crate) fn follow(&mut self, partitions: &[(String, i32, i64)]) -> Result<(), KafkaError> {
        for (topic, partition, offset) in partitions {
            let key = (topic.clone(), *partition);
            match self.cursors.get(&key) {
                Some(cursor) if cursor.read_upto == *offset => {}
                _ => {
                    self.cursors.insert(key, Cursor::at(*offset));
                    self.needs_assign = true;
                }
            }
        }
        if self.needs_assign {
            self.assign()?;
        }
        Ok(())
    }

    /// Where a batch from `partitions` (topic, partition, start) can end
    /// without asking the broker: the offset after the last record the
    /// consumer already holds of each, with the partition's end as the
    /// broker last reported it. Such ends are offsets of records in hand,
    /// so never past a partition's true end.
    ///
    /// `None` — ask the broker — unless the consumer follows every
    /// partition from its start, holds at least one new record, and is
    /// close to the ends the broker reported with its latest fetch
    /// responses (the high watermarks librdkafka keeps): in all, it lacks
    /// no more records of them than it holds. A consumer further behind is
    /// catching up, and a batch to the broker's ends is bigger; an end
    /// below the records held means the partition was truncated or
    /// recreated, which the broker's answer shows.
    pub(crate) fn caught_up_ends(
        &mut self,
        partitions: &[(String, i32, i64)],
    ) -> Option<Vec<(i64, i64)>> {
        if self.needs_assign {
            return None;
        }
        for (topic, partition, start) in partitions {
            match self.cursors.get(&(topic.clone(), *partition)) {
                Some(cursor) if cursor.read_upto == *start => {}
                _ => return None,
            }
        }
        // Take what librdkafka has queued, without waiting.
        loop {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => {
                    let key = (message.topic().to_string(), message.partition());
                    let detached = message.detach();
                    self.keep(&key, detached);
                    if self.needs_assign {
                        // Kept too much ahead and forgot it: far behind,
                        // and no reason to drain a fast stream further.
                        return None;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                // Errors surface in the read that follows a broker query.
                Some(Err(_)) => return None,
            }
        }
        let mut ends = Vec::with_capacity(partitions.len());
        let (mut held, mut lacking) = (0_i64, 0_i64);
        for (topic, partition, start) in partitions {
            let cursor = self.cursors.get(&(topic.clone(), *partition))?;
            let end = cursor.buffer.back().map_or(*start, |m| m.offset() + 1);
            let high = self.cached_high_watermark(topic, *partition)?;
            if high < end {
                return None;
            }
            held += end - start;
            lacking += high - end;
            ends.push((end, high));
        }
        (held > 0 && lacking <= held).then_some(ends)
    }

    /// The end offset of a partition as the broker reported it with its
    /// latest fetch response, without a request (`None` before the first
    /// response).
    fn cached_high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let topic = std::ffi::CString::new(topic).ok()?;
        let (mut low, mut high) = (-1_i64, -1_i64);
        // SAFETY: the client handle lives as long as `self.consumer`, which
        // is borrowed for the call; `topic` is a NUL-terminated string that
        // outlives it; `low` and `high` are valid for writes. librdkafka
        // only reads its cache under its own lock.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    }

    /// Keeps a record that arrived ahead of being asked for.
    fn keep(&mut self, key: &(String, i32), message: OwnedMessage) {
        let Some(cursor) = self.cursors.get_mut(key) else {
            return;
        };
        if message.offset() < cursor.read_upto {
            return;
        }
        if cursor.buffer.len() >= LOOKAHEAD_RECORDS
            || cursor.buffered_bytes + size(&message) > LOOKAHEAD_BYTES
        {
            // Too far ahead: forget it all and assign afresh next time.
            cursor.clear();
            self.needs_assign = true;
            return;
        }
        cursor.buffered_bytes += size(&message);
        cursor.buffer.push_back(message);
    }
}

fn take<M: Message>(
    builder: &mut RecordsBuilder,
    batches: &mut Vec<RecordBatch>,
    first: &mut Option<i64>,
    message: &M,
) {
    if first.is_none() {
        *first = Some(message.offset());
    }
    builder.append(message);
    if builder.len() >= BATCH_ROWS {
        batches.push(builder.finish());
    }
}
