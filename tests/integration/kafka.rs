//! The Kafka source and sink against a real Kafka-protocol broker (Tansu
//! 0.6.0, started per test by `tidemill_harness::kafka_broker`): multi-partition topics,
//! resuming after a restart, read limits, discovery, bounded reads, bad
//! records, deleted records, the conformance suite, exactly-once output
//! under SIGKILL, and a broker that stops mid-stream.
//!
//! Tansu cannot add partitions to a topic (no CreatePartitions API) nor
//! delete records on request (DeleteRecords is unimplemented in its SQLite
//! engine): new partitions are tested as the partitions of a new topic
//! matching the source's pattern, and deleted records through retention
//! (`retention.ms`), which Tansu applies when it starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use async_trait::async_trait;
use datafusion::prelude::*;
use rand::Rng;
use tidemill::connectors::conformance::{
    Observed, SinkHarness, SourceHarness, check_sink, check_source,
};
use tidemill::connectors::kafka::rdkafka::message::{Headers, Message, OwnedMessage};
use tidemill::connectors::kafka::{
    BadRecordPolicy, EndingOffsets, HEADER_BATCH, KafkaSink, KafkaSource, PartitionOffsets,
    StartingOffsets, decode_json_values, kafka_schema,
};
use tidemill::prelude::*;
use tidemill::{QueryOptions, RetryPolicy, Sink, Source};
use tidemill_harness::trades::trade_schema;

use crate::child::{self, Child, Event};
use crate::common::{events, events_schema, run_available_now, sorted_rows};

use tidemill_harness::kafka_broker::{
    Broker, Out, consume_all, create_topic, delete_topic, earliest_offsets, end_offsets, produce,
    produce_paced, unique_topic, values,
};

/// A Kafka timeout short enough for tests that expect failures.
const SHORT: Duration = Duration::from_secs(5);

fn event_json(id: i64) -> String {
    format!(
        "{{\"id\":{id},\"symbol\":\"{}\",\"price\":{}}}",
        ["A", "B", "C"][(id % 3) as usize],
        id as f64 * 1.5
    )
}

/// Events `ids` as JSON values, event `i` to partition `i % partitions`.
fn produce_events(bootstrap: &str, topic: &str, partitions: i32, ids: std::ops::Range<i64>) {
    produce(bootstrap, topic, &event_messages(partitions, ids));
}

/// The messages of events `ids`, event `i` to partition `i % partitions`.
fn event_messages(partitions: i32, ids: std::ops::Range<i64>) -> Vec<Out> {
    ids.map(|i| Out {
        partition: Some((i % partitions as i64) as i32),
        key: Some(format!("k{i}").into_bytes()),
        value: Some(event_json(i).into_bytes()),
        headers: vec![("id".into(), i.to_string().into_bytes())],
        timestamp: None,
    })
    .collect()
}

fn events_source(bootstrap: &str, topic: &str) -> KafkaSource {
    KafkaSource::new(bootstrap)
        .topic(topic)
        .starting_offsets(StartingOffsets::Earliest)
        .json_values(events_schema())
        .timeout(SHORT)
}

/// Starts a query of `source` into a new memory sink at `trigger`, its
/// checkpoint in `dir`.
async fn start_into_memory(
    source: KafkaSource,
    trigger: Trigger,
    dir: &std::path::Path,
) -> (MemorySink, StreamingQuery) {
    let sink = MemorySink::new();
    let query = SessionContext::new()
        .read_stream(source)
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .trigger(trigger)
        .checkpoint(dir.join("chk").to_str().unwrap())
        .start()
        .await
        .unwrap();
    (sink, query)
}

/// The `id`, `symbol`, `price` rows of `batches`, sorted, as text.
fn event_rows(batches: &[RecordBatch]) -> Vec<String> {
    let projected: Vec<RecordBatch> = batches
        .iter()
        .map(|b| b.project(&[0, 1, 2]).unwrap())
        .collect();
    sorted_rows(&projected)
}

fn expected_events(ids: std::ops::Range<i64>) -> Vec<String> {
    sorted_rows(&[events(ids)])
}

fn column_i64(batch: &RecordBatch, name: &str) -> Vec<i64> {
    batch
        .column_by_name(name)
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

#[tokio::test]
async fn a_multi_partition_topic_is_read_with_the_kafka_columns() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let topic = unique_topic("multi");
    create_topic(&b, &topic, 3, &[]).await;
    produce_events(&b, &topic, 3, 0..30);

    let tmp = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let raw = KafkaSource::new(&b)
        .topic(&topic)
        .starting_offsets(StartingOffsets::Earliest)
        .timeout(SHORT);
    let df = ctx.read_stream(raw).await.unwrap();
    assert_eq!(df.schema().as_arrow(), kafka_schema().as_ref());
    let (sink, _) = run_available_now(df, &tmp.path().join("chk"))
        .await
        .unwrap();
    let batches = sink.batches();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 30);
    // Every record once, with its coordinates, key, value and headers.
    let mut seen = BTreeMap::new();
    for batch in &batches {
        let keys = batch.column(0).as_binary::<i32>();
        let values = batch.column(1).as_binary::<i32>();
        let topics = batch.column(2).as_string::<i32>();
        let partitions = batch.column(3).as_primitive::<Int32Type>();
        let offsets = batch.column(4).as_primitive::<Int64Type>();
        let timestamps = batch.column(5);
        let kinds = batch.column(6).as_primitive::<Int32Type>();
        let headers = batch.column(7).as_list::<i32>();
        for row in 0..batch.num_rows() {
            let value = String::from_utf8(values.value(row).to_vec()).unwrap();
            let id: i64 = serde_json::from_str::<serde_json::Value>(&value).unwrap()["id"]
                .as_i64()
                .unwrap();
            assert_eq!(topics.value(row), topic);
            assert_eq!(partitions.value(row) as i64, id % 3);
            assert_eq!(
                offsets.value(row),
                id / 3,
                "records of a partition in order"
            );
            assert_eq!(keys.value(row), format!("k{id}").as_bytes());
            assert!(timestamps.is_valid(row));
            assert_eq!(kinds.value(row), 0, "create time");
            let header = headers.value(row);
            let header = header.as_struct();
            assert_eq!(header.column(0).as_string::<i32>().value(0), "id");
            assert_eq!(
                header.column(1).as_binary::<i32>().value(0),
                id.to_string().as_bytes()
            );
            assert!(seen.insert(id, ()).is_none(), "record {id} read twice");
        }
    }
    assert_eq!(seen.len(), 30);
}

#[tokio::test]
async fn offsets_resume_after_a_restart() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let topic = unique_topic("resume");
    create_topic(&b, &topic, 2, &[]).await;
    produce_events(&b, &topic, 2, 0..20);
    let tmp = tempfile::tempdir().unwrap();
    let chk = tmp.path().join("chk");
    let ctx = SessionContext::new();

    let (first, _) = run_available_now(
        ctx.read_stream(events_source(&b, &topic)).await.unwrap(),
        &chk,
    )
    .await
    .unwrap();
    assert_eq!(event_rows(&first.batches()), expected_events(0..20));

    // Nothing new: a restart reads nothing.
    let (idle, _) = run_available_now(
        ctx.read_stream(events_source(&b, &topic)).await.unwrap(),
        &chk,
    )
    .await
    .unwrap();
    assert_eq!(
        idle.batches()
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>(),
        0
    );

    produce_events(&b, &topic, 2, 20..35);
    let (second, query) = run_available_now(
        ctx.read_stream(events_source(&b, &topic)).await.unwrap(),
        &chk,
    )
    .await
    .unwrap();
    assert_eq!(event_rows(&second.batches()), expected_events(20..35));
    // The offset log holds Spark's per-partition JSON.
    let end = query.last_progress().unwrap().sources[0]
        .end_offset
        .clone()
        .unwrap();
    let expected = PartitionOffsets::new()
        .with(topic.as_str(), 0, 18)
        .with(topic.as_str(), 1, 17);
    assert_eq!(PartitionOffsets::from_offset(&end).unwrap(), expected);
}

#[tokio::test]
async fn max_offsets_per_trigger_is_spread_in_proportion_to_lag() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let topic = unique_topic("limit");
    create_topic(&b, &topic, 2, &[]).await;
    // 30 records in partition 0, 10 in partition 1.
    let mut messages = Vec::new();
    for i in 0..40i64 {
        let partition = if i < 30 { 0 } else { 1 };
        messages.push(Out::to(partition, event_json(i)));
    }
    produce(&b, &topic, &messages);
    let tmp = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let source = events_source(&b, &topic).max_offsets_per_trigger(8);
    let (sink, query) = run_available_now(
        ctx.read_stream(source).await.unwrap(),
        &tmp.path().join("chk"),
    )
    .await
    .unwrap();
    assert_eq!(event_rows(&sink.batches()), expected_events(0..40));
    let progress = query.recent_progress();
    let sizes: Vec<u64> = progress.iter().map(|p| p.num_input_rows).collect();
    assert_eq!(sizes, vec![8, 8, 8, 8, 8], "{progress:#?}");
    let first =
        PartitionOffsets::from_offset(progress[0].sources[0].end_offset.as_ref().unwrap()).unwrap();
    assert_eq!(
        first,
        PartitionOffsets::new()
            .with(topic.as_str(), 0, 6)
            .with(topic.as_str(), 1, 2)
    );
    // Each batch's progress says how far behind each partition was after
    // it: 24 and 8 records after the first batch, none after the last.
    let lag = |p: &tidemill::QueryProgress, partition: i32| {
        p.sources[0].lag[&format!("{topic}/{partition}")]
    };
    assert_eq!((lag(&progress[0], 0), lag(&progress[0], 1)), (24, 8));
    let last = progress.last().unwrap();
    assert_eq!((lag(last, 0), lag(last, 1)), (0, 0));
}

#[tokio::test]
async fn new_topics_and_their_partitions_are_picked_up() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let prefix = unique_topic("disc");
    let first = format!("{prefix}-a");
    create_topic(&b, &first, 1, &[]).await;
    produce_events(&b, &first, 1, 0..5);
    let tmp = tempfile::tempdir().unwrap();
    let source = KafkaSource::new(&b)
        .topic_pattern(format!("{prefix}-.*"))
        .starting_offsets(StartingOffsets::Earliest)
        .json_values(events_schema())
        .timeout(SHORT);
    let (sink, query) = start_into_memory(
        source,
        Trigger::ProcessingTime(Duration::from_millis(100)),
        tmp.path(),
    )
    .await;
    query.process_all_available().await.unwrap();
    assert_eq!(event_rows(&sink.batches()), expected_events(0..5));

    // A new topic with three partitions appears, then more records in both.
    let second = format!("{prefix}-b");
    create_topic(&b, &second, 3, &[]).await;
    produce_events(&b, &second, 3, 5..20);
    produce_events(&b, &first, 1, 20..25);
    // Not matching the pattern: never read.
    let other = unique_topic("other");
    create_topic(&b, &other, 1, &[]).await;
    produce_events(&b, &other, 1, 100..110);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sink.num_rows() < 25 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(event_rows(&sink.batches()), expected_events(0..25));
    let batches = sink.batches();
    let partitions: std::collections::BTreeSet<(String, i32)> = batches
        .iter()
        .flat_map(|b| {
            let topics = b
                .column_by_name("topic")
                .unwrap()
                .as_string::<i32>()
                .clone();
            let parts = b
                .column_by_name("partition")
                .unwrap()
                .as_primitive::<Int32Type>()
                .clone();
            (0..b.num_rows()).map(move |r| (topics.value(r).to_string(), parts.value(r)))
        })
        .collect();
    assert_eq!(partitions.len(), 4, "{partitions:?}");
}

/// At trigger 0 while records keep arriving, a batch can end after the
/// records the consumer already fetched, without asking the broker
/// (progress metric `ends_from` = `fetched`). Across partition counts and
/// repeated runs, every record is read exactly once and each batch starts
/// where the previous one ended. A trigger that finds nothing new asks the
/// broker, so `process_all_available` after the last produce sees every
/// record. With a discovery interval of zero, every batch asks the broker.
#[tokio::test]
async fn batches_ended_by_fetched_records_read_every_record_once() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let second = Duration::from_secs(1);
    let rounds = [
        (1, second),
        (2, second),
        (4, second),
        (2, second),
        (3, Duration::ZERO),
    ];
    for (round, (partitions, interval)) in rounds.into_iter().enumerate() {
        let topic = unique_topic("tail");
        create_topic(&b, &topic, partitions, &[]).await;
        let tmp = tempfile::tempdir().unwrap();
        let source = events_source(&b, &topic).partition_discovery_interval(interval);
        let (sink, query) =
            start_into_memory(source, Trigger::ProcessingTime(Duration::ZERO), tmp.path()).await;
        // 2 000 records, one every millisecond or so.
        let (bootstrap, target) = (b.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let messages = event_messages(partitions, 0..2000);
            produce_paced(&bootstrap, &target, &messages, Duration::from_millis(1));
        })
        .await
        .unwrap();
        query.process_all_available().await.unwrap();
        query.stop().await.unwrap();
        let what = format!("round {round}: {partitions} partitions, interval {interval:?}");
        assert_eq!(
            event_rows(&sink.batches()),
            expected_events(0..2000),
            "{what}"
        );
        let progress = query.recent_progress();
        for pair in progress.windows(2) {
            assert_eq!(
                pair[1].sources[0].start_offset, pair[0].sources[0].end_offset,
                "{what}: batch {} does not start where batch {} ended",
                pair[1].batch_id, pair[0].batch_id
            );
        }
        let fetched = progress
            .iter()
            .filter(|p| {
                p.sources[0].metrics.get("ends_from").map(String::as_str) == Some("fetched")
            })
            .count();
        if interval.is_zero() {
            assert_eq!(fetched, 0, "{what}: {progress:#?}");
        } else {
            assert!(fetched > 0, "{what}: no batch ended by fetched records");
        }
    }
}

#[tokio::test]
async fn starting_offsets_latest_json_and_timestamp() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let topic = unique_topic("start");
    create_topic(&b, &topic, 2, &[]).await;
    // Timestamps 1000, 2000, ... ms: event i at (i + 1) seconds.
    let messages: Vec<Out> = (0..10i64)
        .map(|i| Out {
            partition: Some((i % 2) as i32),
            value: Some(event_json(i).into_bytes()),
            timestamp: Some((i + 1) * 1000),
            ..Default::default()
        })
        .collect();
    produce(&b, &topic, &messages);
    let ctx = SessionContext::new();
    let tmp = tempfile::tempdir().unwrap();
    let run = |source: KafkaSource, name: &'static str| {
        let ctx = ctx.clone();
        let chk = tmp.path().join(name);
        async move {
            let (sink, _) = run_available_now(ctx.read_stream(source).await.unwrap(), &chk)
                .await
                .unwrap();
            event_rows(&sink.batches())
        }
    };
    let base = || {
        KafkaSource::new(&b)
            .topic(&topic)
            .json_values(events_schema())
            .timeout(SHORT)
    };

    // Latest: only what arrives after the query first runs.
    let latest_chk = tmp.path().join("latest");
    let df = ctx
        .read_stream(base().starting_offsets(StartingOffsets::Latest))
        .await
        .unwrap();
    let (sink, _) = run_available_now(df, &latest_chk).await.unwrap();
    assert_eq!(sink.num_rows(), 0);
    produce_events(&b, &topic, 2, 10..14);
    let df = ctx
        .read_stream(base().starting_offsets(StartingOffsets::Latest))
        .await
        .unwrap();
    let (sink, _) = run_available_now(df, &latest_chk).await.unwrap();
    assert_eq!(event_rows(&sink.batches()), expected_events(10..14));

    // Per-partition JSON: partition 0 from offset 3 (event 6), partition 1
    // from its earliest.
    let json = StartingOffsets::parse(&format!(r#"{{"{topic}": {{"0": 3, "1": -2}}}}"#)).unwrap();
    let mut expected: Vec<i64> = vec![6, 8, 10, 12];
    expected.extend([1, 3, 5, 7, 9, 11, 13]);
    let expected = sorted_rows(&[events(expected)]);
    assert_eq!(run(base().starting_offsets(json), "json").await, expected);

    // By timestamp: the first record at or after 5.5 s in each partition
    // (events 5.. with timestamps 6 s..), and the later ones.
    let by_time = run(
        base().starting_offsets(StartingOffsets::Timestamp(5500)),
        "time",
    )
    .await;
    assert_eq!(by_time, expected_events(5..14));
}

#[tokio::test]
async fn a_bounded_batch_read_equals_the_stream_over_the_same_range() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let topic = unique_topic("bounded");
    create_topic(&b, &topic, 2, &[]).await;
    produce_events(&b, &topic, 2, 0..40);
    let ends = EndingOffsets::Offsets(PartitionOffsets::new().with(topic.as_str(), 0, 15).with(
        topic.as_str(),
        1,
        12,
    ));
    let source = || events_source(&b, &topic).ending_offsets(ends.clone());
    let pipeline = |df: DataFrame| {
        df.filter(col("price").gt(lit(3.0)))
            .unwrap()
            .select(vec![
                col("id"),
                col("symbol"),
                (col("price") * lit(2.0)).alias("doubled"),
                col("offset"),
            ])
            .unwrap()
    };
    let ctx = SessionContext::new();
    let tmp = tempfile::tempdir().unwrap();
    let stream = pipeline(
        ctx.read_stream(source().max_offsets_per_trigger(7))
            .await
            .unwrap(),
    );
    let (sink, query) = run_available_now(stream, &tmp.path().join("chk"))
        .await
        .unwrap();
    assert!(query.recent_progress().len() >= 4, "several micro-batches");
    let streamed = sorted_rows(&sink.batches());

    let batch = pipeline(source().read_batch(&ctx).await.unwrap());
    let batched = sorted_rows(&batch.collect().await.unwrap());
    assert_eq!(streamed, batched);
    // Partition 0 holds the even events, partition 1 the odd ones.
    let mut ids: Vec<i64> = (0..15)
        .map(|o| o * 2)
        .chain((0..12).map(|o| o * 2 + 1))
        .collect();
    ids.retain(|i| *i as f64 * 1.5 > 3.0);
    assert_eq!(batched.len(), ids.len());

    // The whole topic, from the earliest offset, as a batch job.
    let all = events_source(&b, &topic).read_batch(&ctx).await.unwrap();
    assert_eq!(
        event_rows(&all.collect().await.unwrap()),
        expected_events(0..40)
    );
}

#[tokio::test]
async fn processed_offsets_can_be_committed_to_a_group_for_monitoring() {
    use tidemill::connectors::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    let broker = Broker::start();
    let b = broker.bootstrap();
    let topic = unique_topic("group");
    create_topic(&b, &topic, 2, &[]).await;
    produce_events(&b, &topic, 2, 0..11);
    let group = unique_topic("monitor");
    let ctx = SessionContext::new();
    let tmp = tempfile::tempdir().unwrap();
    let source = events_source(&b, &topic).commit_offsets_to_group(&group);
    let (sink, _) = run_available_now(
        ctx.read_stream(source).await.unwrap(),
        &tmp.path().join("chk"),
    )
    .await
    .unwrap();
    assert_eq!(sink.num_rows(), 11);
    // A lag monitor reading the group sees the query's position.
    let (b2, t2, g2) = (b.clone(), topic.clone(), group.clone());
    let committed = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = tidemill::connectors::kafka::rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &b2)
            .set("group.id", &g2)
            .create()
            .unwrap();
        let mut tpl = tidemill::connectors::kafka::rdkafka::TopicPartitionList::new();
        tpl.add_partition(&t2, 0);
        tpl.add_partition(&t2, 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = consumer
                .committed_offsets(tpl.clone(), Duration::from_secs(5))
                .unwrap();
            let offsets: Vec<i64> = found
                .elements()
                .iter()
                .map(|e| e.offset().to_raw().unwrap_or(-1))
                .collect();
            if offsets == vec![6, 5] || std::time::Instant::now() > deadline {
                return offsets;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    assert_eq!(committed, vec![6, 5]);
}

/// Values 0..10 with 3 and 7 malformed (not JSON, a string where a number
/// belongs), all in partition 0.
fn produce_with_bad_values(bootstrap: &str, topic: &str) {
    let messages: Vec<Out> = (0..10i64)
        .map(|i| match i {
            3 => Out::to(0, "not json"),
            7 => Out::to(0, r#"{"id": "seven", "symbol": "B", "price": 1.0}"#),
            _ => Out::to(0, event_json(i)),
        })
        .collect();
    produce(bootstrap, topic, &messages);
}

#[tokio::test]
async fn a_malformed_value_fails_the_query_naming_partition_and_offset() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let topic = unique_topic("bad-fail");
    create_topic(&b, &topic, 1, &[]).await;
    produce_with_bad_values(&b, &topic);
    let ctx = SessionContext::new();
    let tmp = tempfile::tempdir().unwrap();
    let df = ctx.read_stream(events_source(&b, &topic)).await.unwrap();
    let err = run_available_now(df, &tmp.path().join("chk"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("topic {topic} partition 0 offset 3"))
            && err.contains("1 more bad record"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_values_go_to_the_dead_letter_sink_exactly_once() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let topic = unique_topic("bad-dlq");
    create_topic(&b, &topic, 1, &[]).await;
    produce_with_bad_values(&b, &topic);
    let ctx = SessionContext::new();
    let tmp = tempfile::tempdir().unwrap();
    let dead_dir = tmp.path().join("dead");
    let source = || {
        events_source(&b, &topic)
            .max_offsets_per_trigger(5)
            .on_bad_record(BadRecordPolicy::DeadLetter(Arc::new(ParquetSink::new(
                dead_dir.to_str().unwrap(),
            ))))
    };
    let chk = tmp.path().join("chk");
    let (sink, _) = run_available_now(ctx.read_stream(source()).await.unwrap(), &chk)
        .await
        .unwrap();
    let good: Vec<i64> = vec![0, 1, 2, 4, 5, 6, 8, 9];
    assert_eq!(
        event_rows(&sink.batches()),
        sorted_rows(&[events(good.clone())])
    );
    let dead = ParquetSink::read_committed(&ctx, dead_dir.to_str().unwrap())
        .await
        .unwrap()
        .sort(vec![col("offset").sort(true, false)])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let dead = arrow::compute::concat_batches(&dead[0].schema(), &dead).unwrap();
    assert_eq!(column_i64(&dead, "offset"), vec![3, 7]);
    let errors = dead.column_by_name("error").unwrap().as_string::<i32>();
    assert!(!errors.value(0).is_empty() && !errors.value(1).is_empty());
    assert_eq!(
        dead.column_by_name("value")
            .unwrap()
            .as_binary::<i32>()
            .value(0),
        b"not json"
    );

    // A replay of the batches (a new checkpoint over the same dead-letter
    // log is a different query; here the same query re-runs its last
    // batch after a kill) adds no duplicate: the dead-letter batch ids are
    // logged with the source's ranges.
    let (again, _) = run_available_now(ctx.read_stream(source()).await.unwrap(), &chk)
        .await
        .unwrap();
    assert_eq!(again.num_rows(), 0);
    let count = ParquetSink::read_committed(&ctx, dead_dir.to_str().unwrap())
        .await
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn deleted_records_follow_fail_on_data_loss() {
    let mut broker = Broker::start();
    let b = broker.bootstrap();
    let topic = unique_topic("loss");
    create_topic(
        &b,
        &topic,
        1,
        &[("cleanup.policy", "delete"), ("retention.ms", "1000")],
    )
    .await;
    produce_events(&b, &topic, 1, 0..10);
    let ctx = SessionContext::new();
    let tmp = tempfile::tempdir().unwrap();
    let chk = tmp.path().join("chk");
    let source = |fail: bool| {
        events_source(&b, &topic)
            .max_offsets_per_trigger(4)
            .fail_on_data_loss(fail)
    };
    // The query reads offsets 0..4 (a stream stops at explicit ending
    // offsets).
    let first = source(true).ending_offsets(EndingOffsets::Offsets(PartitionOffsets::new().with(
        topic.as_str(),
        0,
        4,
    )));
    let (sink, _) = run_available_now(ctx.read_stream(first).await.unwrap(), &chk)
        .await
        .unwrap();
    assert_eq!(event_rows(&sink.batches()), expected_events(0..4));

    // Retention deletes the records (Tansu applies it when it starts),
    // then new ones arrive at offsets 10..15.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.restart();
    produce_events(&b, &topic, 1, 10..15);
    assert_eq!(end_offsets(&b, &topic), vec![15]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while earliest_offsets(&b, &topic) != vec![10] {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not delete offsets 0..10: earliest {:?}",
            earliest_offsets(&b, &topic)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let df = ctx.read_stream(source(true)).await.unwrap();
    let err = run_available_now(df, &chk).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "topic {topic} partition 0: offsets 4..10 are no longer available"
        )),
        "{err}"
    );
    assert!(err.contains("fail_on_data_loss(false)"), "{err}");

    // With fail_on_data_loss off, the query goes on with what is there.
    let df = ctx.read_stream(source(false)).await.unwrap();
    let (sink, _) = run_available_now(df, &chk).await.unwrap();
    assert_eq!(event_rows(&sink.batches()), expected_events(10..15));
}

// ---------------------------------------------------------------------
// Conformance

struct SourceTopic {
    bootstrap: String,
    topic: String,
}

#[async_trait]
impl SourceHarness for SourceTopic {
    fn provider(&self) -> Arc<dyn Source> {
        Arc::new(events_source(&self.bootstrap, &self.topic))
    }

    fn session(&self) -> SessionContext {
        SessionContext::new()
    }

    async fn add_data(&mut self, round: usize) -> tidemill::Result<()> {
        let start = round as i64 * 10;
        produce_events(&self.bootstrap, &self.topic, 3, start..start + 10);
        Ok(())
    }
}

#[tokio::test]
async fn the_kafka_source_conforms() {
    let broker = Broker::start();
    let topic = unique_topic("conform-src");
    create_topic(&broker.bootstrap(), &topic, 3, &[]).await;
    check_source(&mut SourceTopic {
        bootstrap: broker.bootstrap(),
        topic,
    })
    .await;
}

struct SinkTopic {
    sink: Arc<KafkaSink>,
    bootstrap: String,
    topic: String,
}

#[async_trait]
impl SinkHarness for SinkTopic {
    fn sink(&self) -> Arc<dyn Sink> {
        self.sink.clone()
    }

    fn session(&self) -> SessionContext {
        SessionContext::new()
    }

    async fn observe(&self) -> tidemill::Result<Observed> {
        let (b, t) = (self.bootstrap.clone(), self.topic.clone());
        let messages = tokio::task::spawn_blocking(move || consume_all(&b, &t))
            .await
            .unwrap();
        let values = arrow::array::StringArray::from(values(&messages));
        let decoded = decode_json_values(&values, &events_schema()).unwrap();
        assert!(decoded.errors.is_empty());
        Ok(Observed::Rows(vec![decoded.batch]))
    }
}

#[tokio::test]
async fn the_kafka_sink_conforms_in_both_modes() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let tmp = tempfile::tempdir().unwrap();
    for exactly_once in [false, true] {
        let topic = unique_topic("conform-sink");
        create_topic(&b, &topic, 2, &[]).await;
        let mut sink = KafkaSink::new(&b)
            .topic(&topic)
            .json_values()
            .key_column("symbol")
            .timeout(SHORT);
        if exactly_once {
            sink = sink.exactly_once(tmp.path().join("log").to_str().unwrap());
        }
        let harness = SinkTopic {
            sink: Arc::new(sink),
            bootstrap: b.clone(),
            topic,
        };
        check_sink(
            &harness,
            vec![events(0..3)],
            vec![events(3..5)],
            vec![events(5..9)],
        )
        .await;
    }
}

// ---------------------------------------------------------------------
// Exactly-once under SIGKILL

/// Trades `i` in 0..n ([`trade_schema`]): symbol A/B/C, price i, quantity
/// 1, event time i seconds (a few out of order), in `partitions` partitions.
fn produce_trades(bootstrap: &str, topic: &str, partitions: i32, ids: std::ops::Range<i64>) {
    produce(bootstrap, topic, &trade_messages(partitions, ids));
}

/// The messages of [`produce_trades`].
fn trade_messages(partitions: i32, ids: std::ops::Range<i64>) -> Vec<Out> {
    ids.map(|i| {
        // Every 7th trade arrives 3 seconds late.
        let ts = if i % 7 == 0 && i >= 3 { i - 3 } else { i };
        Out {
            partition: Some((i % partitions as i64) as i32),
            value: Some(
                format!(
                    r#"{{"symbol":"{}","exchange":"X","price":{i},"quantity":1,"event_time":{}}}"#,
                    ["A", "B", "C"][(i % 3) as usize],
                    ts * 1000
                )
                .into_bytes(),
            ),
            ..Default::default()
        }
    })
    .collect()
}

/// The exactly-once tests' watermark delay, in seconds.
const WATERMARK_DELAY_S: i64 = 5;

/// Per 10-second window and symbol: trade count and price sum, with a
/// watermark `delay_s` seconds behind; `start` in seconds.
fn windowed_with_delay(df: DataFrame, delay_s: i64) -> anyhow::Result<DataFrame> {
    let df = df.with_watermark("event_time", &format!("{delay_s} seconds"))?;
    Ok(child::ten_second_totals(df)?)
}

/// The child process of the exactly-once tests: Kafka → windowed
/// aggregation → Kafka (exactly-once), small batches; `AvailableNow`, or
/// trigger 0 (running until killed) with `KAFKA_CHILD_TRIGGER=0`; the
/// watermark delay [`WATERMARK_DELAY_S`] or `KAFKA_CHILD_DELAY_S`.
#[tokio::test]
#[ignore = "entry point of the Kafka exactly-once tests' child process, not a test by itself"]
async fn kafka_child() -> anyhow::Result<()> {
    let (Ok(bootstrap), Ok(output_bootstrap), Ok(input), Ok(output), Ok(dir)) = (
        std::env::var("KAFKA_CHILD_BOOTSTRAP"),
        std::env::var("KAFKA_CHILD_OUT_BOOTSTRAP"),
        std::env::var("KAFKA_CHILD_IN"),
        std::env::var("KAFKA_CHILD_OUT"),
        std::env::var("KAFKA_CHILD_DIR"),
    ) else {
        anyhow::bail!("run by the Kafka exactly-once tests only");
    };
    let dir = PathBuf::from(dir);
    let ctx = SessionContext::new();
    let source = KafkaSource::new(&bootstrap)
        .topic(&input)
        .starting_offsets(StartingOffsets::Earliest)
        .max_offsets_per_trigger(40)
        .json_values(trade_schema())
        .metadata_columns(false)
        .timeout(SHORT);
    let sink = KafkaSink::new(&output_bootstrap)
        .topic(&output)
        .json_values()
        .key_column("symbol")
        .exactly_once(dir.join("sink-log").to_str().unwrap())
        .timeout(SHORT);
    let trigger = match std::env::var("KAFKA_CHILD_TRIGGER").as_deref() {
        Ok("0") => Trigger::ProcessingTime(Duration::ZERO),
        _ => Trigger::AvailableNow,
    };
    let delay_s = match std::env::var("KAFKA_CHILD_DELAY_S") {
        Ok(text) => text.parse()?,
        Err(_) => WATERMARK_DELAY_S,
    };
    let query = windowed_with_delay(ctx.read_stream(source).await?, delay_s)?
        .write_stream()
        .sink(sink)
        .checkpoint(dir.join("checkpoint").to_str().unwrap())
        .trigger(trigger)
        .start()
        .await;
    child::report(query).await
}

struct Pipeline {
    bootstrap: String,
    /// The output topic's broker: the input's, or one of its own.
    output_bootstrap: String,
    input: String,
    output: String,
    dir: tempfile::TempDir,
}

impl Pipeline {
    async fn new(broker: &Broker) -> Self {
        Self::with_output_on(broker, broker).await
    }

    /// The input topic on `broker`, the output topic on `output_broker`.
    async fn with_output_on(broker: &Broker, output_broker: &Broker) -> Self {
        let bootstrap = broker.bootstrap();
        let output_bootstrap = output_broker.bootstrap();
        let input = unique_topic("eo-in");
        let output = unique_topic("eo-out");
        create_topic(&bootstrap, &input, 3, &[]).await;
        create_topic(&output_bootstrap, &output, 2, &[]).await;
        Self {
            bootstrap,
            output_bootstrap,
            input,
            output,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The child running the pipeline, stopping at `failpoint`.
    fn command(&self, failpoint: Option<&str>) -> Command {
        let mut cmd = child::command("kafka::kafka_child", failpoint);
        cmd.env("KAFKA_CHILD_BOOTSTRAP", &self.bootstrap)
            .env("KAFKA_CHILD_OUT_BOOTSTRAP", &self.output_bootstrap)
            .env("KAFKA_CHILD_IN", &self.input)
            .env("KAFKA_CHILD_OUT", &self.output)
            .env("KAFKA_CHILD_DIR", self.dir.path());
        cmd
    }

    fn spawn(&self, failpoint: Option<&str>) -> Child {
        Child::spawn(&mut self.command(failpoint))
    }

    fn run_to_completion(&self) {
        Child::run_to_completion(&mut self.command(None));
    }

    /// How many messages in the output topic batch `batch_id` wrote.
    fn messages_of_batch(&self, batch_id: u64) -> usize {
        consume_all(&self.output_bootstrap, &self.output)
            .iter()
            .filter(|m| batch_of(m) == Some(batch_id))
            .count()
    }

    /// The output topic's results: `(start, symbol) -> [(n, total)]`, one
    /// entry per message.
    fn results(&self) -> BTreeMap<(i64, String), Vec<(i64, f64)>> {
        let mut out: BTreeMap<(i64, String), Vec<(i64, f64)>> = BTreeMap::new();
        for message in consume_all(&self.output_bootstrap, &self.output) {
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap()).unwrap();
            let key = (
                value["start"].as_i64().unwrap(),
                value["symbol"].as_str().unwrap().to_string(),
            );
            assert_eq!(message.key(), Some(key.1.as_bytes()));
            let headers = message.headers().expect("tidemill headers");
            assert!(headers.iter().any(|h| h.key == "tidemill.seq"));
            out.entry(key).or_default().push((
                value["n"].as_i64().unwrap(),
                value["total"].as_f64().unwrap(),
            ));
        }
        out
    }
}

/// The `tidemill.batch` header of an output message.
fn batch_of(message: &OwnedMessage) -> Option<u64> {
    message.headers()?.iter().find_map(|h| {
        (h.key == HEADER_BATCH)
            .then(|| std::str::from_utf8(h.value?).ok()?.parse().ok())
            .flatten()
    })
}

/// What the closed windows of trades `0..n` are (see `produce_trades`):
/// those whose end is at most the final watermark, max event time - 5 s.
fn expected_results(n: i64) -> BTreeMap<(i64, String), Vec<(i64, f64)>> {
    expected_results_with_delay(n, WATERMARK_DELAY_S)
}

/// [`expected_results`] for a watermark `delay_s` seconds behind.
fn expected_results_with_delay(n: i64, delay_s: i64) -> BTreeMap<(i64, String), Vec<(i64, f64)>> {
    let mut all: BTreeMap<(i64, String), (i64, f64)> = BTreeMap::new();
    let mut max_ts = 0;
    for i in 0..n {
        let ts = if i % 7 == 0 && i >= 3 { i - 3 } else { i };
        max_ts = max_ts.max(ts);
        let entry = all
            .entry((ts / 10 * 10, ["A", "B", "C"][(i % 3) as usize].to_string()))
            .or_default();
        entry.0 += 1;
        entry.1 += i as f64;
    }
    let watermark = max_ts - delay_s;
    all.into_iter()
        .filter(|((start, _), _)| start + 10 <= watermark)
        .map(|(k, v)| (k, vec![v]))
        .collect()
}

/// SIGKILLs of a query at trigger 0 while records keep arriving, where
/// batches end after the records the source's consumer already fetched
/// (not after the ends the broker reports): every result once, through
/// the restarts and a final `AvailableNow` run. The watermark trails by
/// 60 s, so a partition read a little behind the others loses nothing.
#[tokio::test]
async fn sigkills_at_trigger_0_while_records_flow_give_every_result_once() {
    const DELAY_S: &str = "60";
    let (seed, mut rng) = child::seeded_rng();
    let broker = Broker::start();
    let pipeline = Pipeline::new(&broker).await;
    const N: i64 = 800;
    let producer = {
        let (b, topic) = (pipeline.bootstrap.clone(), pipeline.input.clone());
        std::thread::spawn(move || {
            produce_paced(
                &b,
                &topic,
                &trade_messages(3, 0..N),
                Duration::from_millis(5),
            );
        })
    };
    let mut kills = 0;
    while !producer.is_finished() || kills < 3 {
        let mut command = pipeline.command(None);
        command
            .env("KAFKA_CHILD_TRIGGER", "0")
            .env("KAFKA_CHILD_DELAY_S", DELAY_S);
        let mut child = Child::spawn(&mut command);
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
        child.kill();
        kills += 1;
    }
    producer.join().unwrap();
    // The killed runs did part of the work.
    let before = pipeline.results().len();
    assert!(
        before > 0,
        "no run at trigger 0 wrote anything before it was killed"
    );
    let mut last = pipeline.command(None);
    last.env("KAFKA_CHILD_DELAY_S", DELAY_S);
    Child::run_to_completion(&mut last);
    let expected = expected_results_with_delay(N, DELAY_S.parse().unwrap());
    assert!(expected.len() > 100);
    assert_eq!(pipeline.results(), expected, "seed {seed}, {kills} kills");
}

/// A re-run batch whose output partitions are now shorter than the
/// offsets it logged (the topic was deleted and created again) reads them
/// from their beginning: what the killed attempt wrote and is still there
/// is found below the logged offsets and not written again.
///
/// The output topic has a broker of its own: after a DeleteTopics, Tansu
/// 0.6 (SQLite) returned no records of the other topics on the same
/// broker.
#[tokio::test]
async fn a_re_run_reads_a_recreated_output_partition_from_its_beginning() {
    let (broker, output_broker) = (Broker::start(), Broker::start());
    let pipeline = Pipeline::with_output_on(&broker, &output_broker).await;
    produce_trades(&pipeline.bootstrap, &pipeline.input, 3, 0..200);
    let b = &pipeline.output_bootstrap;
    // Batches 0 and 1 written; killed halfway through batch 2's results.
    let mut child = pipeline.spawn(Some("during_sink@2"));
    assert_eq!(child.wait_for_event(), Event::Failpoint);
    child.kill();
    let before = consume_all(b, &pipeline.output);
    let (earlier, partial): (Vec<&OwnedMessage>, Vec<&OwnedMessage>) = before
        .iter()
        .filter(|m| batch_of(m).is_some_and(|id| id <= 2))
        .partition(|m| batch_of(m) != Some(2));
    assert!(!partial.is_empty(), "batch 2 wrote nothing before the kill");

    // The topic is deleted and created again, holding only batch 2's half
    // (as if the attempt had written it after the recreation).
    delete_topic(b, &pipeline.output).await;
    create_topic(b, &pipeline.output, 2, &[]).await;
    let copies: Vec<Out> = partial
        .iter()
        .map(|m| Out {
            partition: Some(m.partition()),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            timestamp: None,
        })
        .collect();
    produce(b, &pipeline.output, &copies);
    // Every partition batch 2 wrote to is now shorter than where batch 2
    // logged it would start (after batches 0 and 1's messages there).
    for partition in partial.iter().map(|m| m.partition()) {
        let logged_start = earlier
            .iter()
            .filter(|m| m.partition() == partition)
            .count();
        let now = partial
            .iter()
            .filter(|m| m.partition() == partition)
            .count();
        assert!(
            now < logged_start,
            "partition {partition}: {now} messages now, batch 2 logged {logged_start}"
        );
    }

    pipeline.run_to_completion();
    // Batch 2's half was found, the other half written, every later batch
    // once; batches 0 and 1's results went with the old topic.
    let gone: std::collections::BTreeSet<(i64, String)> = earlier
        .iter()
        .map(|m| {
            let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            (
                value["start"].as_i64().unwrap(),
                value["symbol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected = expected_results(200);
    expected.retain(|key, _| !gone.contains(key));
    assert!(expected.len() > 20);
    assert_eq!(pipeline.results(), expected);
    assert!(pipeline.messages_of_batch(2) > partial.len());
}

#[tokio::test]
async fn sigkill_inside_the_kafka_sink_duplicates_nothing() {
    let broker = Broker::start();
    let pipeline = Pipeline::new(&broker).await;
    produce_trades(&pipeline.bootstrap, &pipeline.input, 3, 0..200);
    // Killed halfway through writing batch 2's results, then after the
    // sink wrote batch 3 but before the engine committed it.
    let mut child = pipeline.spawn(Some("during_sink@2"));
    assert_eq!(child.wait_for_event(), Event::Failpoint);
    child.kill();
    // Half of batch 2's results are in the topic.
    let partial = pipeline.messages_of_batch(2);
    assert!(partial > 0);
    let mut child = pipeline.spawn(Some("before_commit_log@3"));
    assert_eq!(child.wait_for_event(), Event::Failpoint);
    child.kill();
    pipeline.run_to_completion();
    // The re-run wrote only the other half, and batch 3 (written before
    // the kill, re-run after it) was not written again.
    assert!(pipeline.messages_of_batch(2) > partial);
    let expected = expected_results(200);
    assert!(expected.len() > 40);
    assert_eq!(pipeline.results(), expected);
}

#[tokio::test]
async fn randomized_sigkills_give_every_result_exactly_once() {
    let (seed, mut rng) = child::seeded_rng();
    let broker = Broker::start();
    let pipeline = Pipeline::new(&broker).await;
    let points = [
        "after_offset_log",
        "before_sink",
        "during_sink",
        "after_sink",
        "after_state_commit",
        "before_commit_log",
        "after_commit_log",
    ];
    let mut produced = 0;
    for _ in 0..12 {
        if rng.random_bool(0.5) {
            let more = rng.random_range(20..80);
            produce_trades(
                &pipeline.bootstrap,
                &pipeline.input,
                3,
                produced..produced + more,
            );
            produced += more;
        }
        let mut child = if rng.random_bool(0.5) {
            let point = points[rng.random_range(0..points.len())];
            let batch = rng.random_range(0..12);
            let mut child = pipeline.spawn(Some(&format!("{point}@{batch}")));
            // Reaches the point, or finishes first.
            let _ = child.wait_for_event();
            child
        } else {
            let child = pipeline.spawn(None);
            std::thread::sleep(Duration::from_millis(rng.random_range(200..2500)));
            child
        };
        child.kill();
    }
    produce_trades(
        &pipeline.bootstrap,
        &pipeline.input,
        3,
        produced..produced + 30,
    );
    produced += 30;
    pipeline.run_to_completion();
    assert_eq!(
        pipeline.results(),
        expected_results(produced),
        "seed {seed}"
    );
}

// ---------------------------------------------------------------------
// The broker stops mid-stream

fn fast_retries(max_elapsed: Duration) -> QueryOptions {
    QueryOptions {
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            max_elapsed,
        },
        ..Default::default()
    }
}

async fn start_through_query(
    p: &Pipeline,
    options: QueryOptions,
    watermark_delay_s: i64,
) -> StreamingQuery {
    let source = KafkaSource::new(&p.bootstrap)
        .topic(&p.input)
        .starting_offsets(StartingOffsets::Earliest)
        .json_values(trade_schema())
        .metadata_columns(false)
        .timeout(Duration::from_secs(2));
    let sink = KafkaSink::new(&p.bootstrap)
        .topic(&p.output)
        .json_values()
        .key_column("symbol")
        .exactly_once(p.dir.path().join("sink-log").to_str().unwrap())
        .timeout(Duration::from_secs(2));
    let ctx = SessionContext::new();
    windowed_with_delay(ctx.read_stream(source).await.unwrap(), watermark_delay_s)
        .unwrap()
        .write_stream()
        .sink(sink)
        .checkpoint(p.dir.path().join("checkpoint").to_str().unwrap())
        .trigger(Trigger::ProcessingTime(Duration::from_millis(200)))
        .options(options)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_broker_restart_mid_stream_is_retried_without_loss_or_duplicates() {
    let mut broker = Broker::start();
    let pipeline = Pipeline::new(&broker).await;
    produce_trades(&pipeline.bootstrap, &pipeline.input, 3, 0..60);
    // The query runs while the second wave is produced: a batch may see
    // one partition's new records before another's. The wave is produced
    // in steps of one record per partition, so the partitions' ends stay
    // within a few seconds of event time of each other, and the watermark
    // trails by more than that: no record of a lagging partition is late.
    const DELAY_S: i64 = 10;
    let query =
        start_through_query(&pipeline, fast_retries(Duration::from_secs(60)), DELAY_S).await;
    query.process_all_available().await.unwrap();
    assert_eq!(pipeline.results(), expected_results_with_delay(60, DELAY_S));

    // Down for a few seconds: triggers fail (transiently) and are retried.
    broker.stop();
    let mut retried = false;
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_secs(5) {
        retried |= query
            .status()
            .message
            .starts_with("Retrying after a transient error");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(retried, "no trigger failed while the broker was down");
    assert!(query.is_active(), "{:?}", query.error());
    broker.restart();
    for first in (60..120).step_by(3) {
        produce_trades(&pipeline.bootstrap, &pipeline.input, 3, first..first + 3);
    }
    let expected = expected_results_with_delay(120, DELAY_S);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while pipeline.results() != expected && std::time::Instant::now() < deadline {
        assert!(query.is_active(), "{:?}", query.error());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    query.stop().await.unwrap();
    assert_eq!(pipeline.results(), expected);
}

#[tokio::test]
async fn a_broker_down_too_long_fails_the_query_and_a_restart_resumes_exactly_once() {
    let mut broker = Broker::start();
    let pipeline = Pipeline::new(&broker).await;
    produce_trades(&pipeline.bootstrap, &pipeline.input, 3, 0..60);
    let query = start_through_query(
        &pipeline,
        fast_retries(Duration::from_secs(3)),
        WATERMARK_DELAY_S,
    )
    .await;
    query.process_all_available().await.unwrap();
    broker.stop();
    let err = tokio::time::timeout(Duration::from_secs(60), query.await_termination())
        .await
        .expect("the query gives up within its retry policy")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("KafkaSource") || err.contains("KafkaSink"),
        "{err}"
    );
    assert!(err.contains("transient"), "{err}");

    broker.restart();
    produce_trades(&pipeline.bootstrap, &pipeline.input, 3, 60..120);
    let query = start_through_query(
        &pipeline,
        fast_retries(Duration::from_secs(60)),
        WATERMARK_DELAY_S,
    )
    .await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(pipeline.results(), expected_results(120));
}
