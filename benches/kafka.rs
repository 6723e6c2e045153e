//! Kafka pipelines against Tansu brokers: **part 1**, throughput of
//! Kafka → parse → windowed aggregation → Kafka against a plain rdkafka
//! consume of the same topic (the ratio is the figure that travels between
//! machines and brokers); **part 2**, latency of a stateless Kafka → Kafka
//! query from a row available in its input topic to the row in a
//! consumer's hands on the output topic (issue 23).
//!
//! ```sh
//! cargo bench --bench kafka                          # full mode: both parts
//! TIDEMILL_BENCH_ROWS=200000 cargo bench --bench kafka
//! TIDEMILL_BENCH_ONLY=latency cargo bench --bench kafka   # or =throughput
//! cargo test --bench kafka                           # short mode
//! ```
//!
//! The benchmark starts Tansu brokers (0.6.0, on 127.0.0.1; see
//! `tidemill_harness::kafka_broker`), always one for a pipeline's input
//! and another for its output. **Which storage engine:** part 1 always
//! runs on Tansu's SQLite engine (the one the tests use; its ratio is
//! against a plain consume from the same broker, and stays comparable
//! with earlier runs). Part 2, in full mode, writes its output to a
//! broker on Tansu's in-memory object-store engine
//! (`Broker::start_in_memory`, a second build of Tansu with its
//! `dynostore` feature, installed by the first full run): on SQLite the
//! output broker spends about 80 µs of CPU per record it stores (one SQL
//! row per record and per header, and the sink's messages carry three
//! headers), which at 10 000 rows/s is most of a core and most of every
//! batch's time, so the latency measured would be Tansu's inserts, not
//! the engine. Its input stays on SQLite: Tansu 0.6.0's object-store
//! engine answers ListOffsets (latest) with the base offset + 1 of the
//! batch stored last, not the partition's end, so a `KafkaSource` on it
//! never reads the rest of the last record batch it was sent (seen: 18
//! rows of a run never read); fetches, which the output's consumer uses,
//! carry the right high watermark. (For the same reason the sink's
//! exactly-once re-run would scan too little of that broker's partitions:
//! fine for this bench, which never re-runs a batch, not for tests.)
//! `TIDEMILL_BENCH_LATENCY_STORAGE=sqlite` puts part 2's output on SQLite
//! too, for comparison. The short mode (`cargo test`) runs part 2 on
//! SQLite only, so that tests build Tansu only once. On SQLite, Tansu keeps every topic's
//! record headers in one unindexed table and scans it for each record it
//! fetches, so the sink's output (which carries headers) on the input's
//! broker would slow every later fetch of the input, a cost a Kafka broker
//! does not have. Tansu also holds every fetch for the consumer's whole
//! `fetch.wait.max.ms`, even when it has records to return (a Kafka broker
//! answers as soon as it has `fetch.min.bytes`): on this broker, a
//! consumer's fetch wait is part of every record's latency.
//!
//! **Part 1, throughput.** The trades are produced as JSON values to a
//! 2-partition topic, then three runs are timed, each from nothing to
//! every record in hand:
//!
//! - **plain consume**, before and after the pipeline (the faster run
//!   counts): one rdkafka `BaseConsumer` with the source's client settings
//!   (those of `connectors/src/kafka/reader.rs`: `fetch.wait.max.ms`
//!   100, `enable.partition.eof`, no auto commit, no offset reset) is
//!   created, asks for the topic's metadata and each partition's earliest
//!   and end offsets, is assigned the partitions at their earliest offsets
//!   and polled (100 ms timeout) until every partition's end; the records'
//!   values are touched, not decoded. Timed from before the consumer is
//!   created to the last record;
//! - **pipeline**: `KafkaSource` (JSON values decoded into typed columns)
//!   → 10-second watermark → per-second, per-symbol count, volume and VWAP
//!   (append mode) → exactly-once `KafkaSink` (JSON), run with
//!   `Trigger::AvailableNow`, once with `max_offsets_per_trigger` of a
//!   tenth of the trades (ten micro-batches) and once without a limit
//!   (one data batch), timed from before the query starts to its termination:
//!   planning, the same consumer work, decoding, aggregation, checkpoint
//!   and offset logs, producing the output and waiting for its
//!   acknowledgements, and the sink log.
//!
//! Tansu answers a fetch with everything from the fetch offset up to 5 MiB
//! (it ignores per-partition limits) and spends its CPU per record, so both
//! sides wait about equally for the broker's first fetch response, which
//! holds (up to 5 MiB) the whole topic. The pipeline pays, on top, a fixed
//! cost per micro-batch, mostly the sink's produce round trip to the
//! broker; the phases of both are printed.
//!
//! **Part 2, latency.** Four runs, each on a fresh pair of brokers
//! (the output's in memory in full mode; on SQLite, the output's with its
//! header table indexed, see `Broker::start_with_header_index`: the
//! output's consumer fetches records with headers): 10 000 rows/s at trigger interval 0 with the
//! source's default settings; the same with the source's
//! `fetch.wait.max.ms` 2; 10 000 rows/s at 10 ms, and 1 000 rows/s at 0,
//! with `fetch.wait.max.ms` 2. In each, a producer thread produces the
//! rate (a chunk every millisecond, round robin over 2 partitions) for
//! 11 s; each value is JSON with the row's id and `sent_us`, the clock
//! (µs since the epoch) just before the record is handed to the producer
//! (librdkafka's defaults: `linger.ms` 5; `acks` all). The query:
//! `KafkaSource` (JSON values) → a filter every row passes and a
//! projection keeping the id and `sent_us` → exactly-once `KafkaSink`
//! (JSON values, key `symbol`, configured as in part 1),
//! `Trigger::ProcessingTime(interval)`. A consumer assigned the output
//! topic's partitions (default isolation level: the sink's exactly-once
//! mode uses no broker transactions; `fetch.wait.max.ms` 1) stamps each
//! row when it is in hand. **Row available** is the instant the input's
//! broker acknowledged the row (the producer's delivery report, served by
//! rdkafka's `ThreadedProducer` polling thread): before it, no consumer
//! can read the row. The latency of a row is received − acknowledged;
//! rows sent in the first second (warm-up) are left out. Also reported:
//! received − sent (adds the producer's linger and produce round trip),
//! and sink committed − acknowledged (when the sink's `add_batch`
//! returned: every output message acknowledged by the output's broker and
//! the sink's log committed; the output fetch is not in it), with rows/s
//! and batches/s of the batches committed after the warm-up and the mean
//! of each phase of those batches. Target (issue 23): p99 received −
//! acknowledged ≤ 20 ms at interval 0 and 10 000 rows/s.
//!
//! Knobs for exploring (full mode only): `TIDEMILL_BENCH_LATENCY_RATE`
//! (the 10 000), `TIDEMILL_BENCH_SOURCE_OPTIONS` and
//! `TIDEMILL_BENCH_SINK_OPTIONS` (librdkafka settings for every run,
//! `key=value,...`), `TIDEMILL_BENCH_OUTPUT_FETCH_WAIT_MS` (the output
//! consumer's wait), `TIDEMILL_BENCH_LATENCY_STORAGE` (`memory`, the
//! default, or `sqlite`: the output broker's storage engine).
//!
//! `TIDEMILL_BENCH_ONLY` (full mode only): `throughput` or `latency` (or
//! both, comma-separated) to run one part; a run of one part writes its
//! result to `target/bench-results/partial/kafka.json`, not over the
//! complete result.
//!
//! `cargo bench` passes `--bench`: that runs the full mode
//! (`TIDEMILL_BENCH_ROWS`, default 50 000 trades). Without it (as
//! `cargo test` runs this file) a short mode runs 2 000 trades, checks the
//! pipeline's output against the same aggregation run as a batch job over
//! the topic, runs the latency part's four runs for 1.5 s each at 500 and
//! 200 rows/s, and never asserts on time. Both modes check that every row
//! of the latency part reached the output's consumer exactly once.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use tidemill::connectors::kafka::rdkafka;
use tidemill::connectors::kafka::{KafkaSink, KafkaSource, StartingOffsets};
use tidemill::engine::window::tumble;
use tidemill::prelude::*;
use tidemill_harness::kafka_broker::{
    self, Broker, KAFKA_TIMEOUT, Out, Storage, create_topic, end_offsets, produce,
};
use tidemill_harness::results::{BenchResult, PHASES, Table, Target, phase_cells, trim};
use tidemill_harness::trades::{EXCHANGES, trade_schema};
use tidemill_harness::{LatencyHistogram, LatencySummary, format_interval_ms};

const INPUT: &str = "bench-trades";
/// The output topics' prefix: one topic per run of the pipeline.
const OUTPUT: &str = "bench-out";
const PARTITIONS: i32 = 2;
/// Event time advances 10 ms per trade: 100 trades per second.
const MS_PER_TRADE: i64 = 10;
const START_MS: i64 = 1_772_461_800_000;
const SYMBOLS: [&str; 8] = [
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AMD",
];

/// The plan measured: per 1-second window and symbol, trades, volume and
/// VWAP.
fn per_second(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    df.aggregate(
        vec![
            tumble(col("event_time"), "1 second").alias("w"),
            col("symbol"),
        ],
        vec![
            count(lit(1)).alias("trades"),
            sum(col("quantity")).alias("volume"),
            sum(col("price") * cast(col("quantity"), DataType::Float64)).alias("notional"),
        ],
    )?
    .select(vec![
        get_field(col("w"), "start").alias("second"),
        col("symbol"),
        col("trades"),
        col("volume"),
        (col("notional") / cast(col("volume"), DataType::Float64)).alias("vwap"),
    ])
}

fn produce_trades(bootstrap: &str, topic: &str, rows: usize) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut bytes = 0;
    let mut chunk = Vec::with_capacity(10_000);
    for i in 0..rows {
        let symbol = SYMBOLS[rng.random_range(0..SYMBOLS.len())];
        let exchange = EXCHANGES[i % EXCHANGES.len()];
        let value = format!(
            r#"{{"symbol":"{symbol}","exchange":"{exchange}","price":{:.2},"quantity":{},"event_time":{}}}"#,
            rng.random_range(10.0..500.0),
            rng.random_range(1..100) * 10,
            START_MS + i as i64 * MS_PER_TRADE
        );
        bytes += value.len();
        chunk.push(Out::to((i % PARTITIONS as usize) as i32, value));
        if chunk.len() == 10_000 {
            produce(bootstrap, topic, &chunk);
            chunk.clear();
        }
    }
    produce(bootstrap, topic, &chunk);
    bytes
}

/// The source's consumer settings (`Reader::new` in
/// `connectors/src/kafka/reader.rs`), besides `bootstrap.servers`.
const SOURCE_CONSUMER_SETTINGS: [(&str, &str); 8] = [
    ("client.id", "tidemill"),
    ("group.id", "tidemill-assign-only"),
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "error"),
    ("enable.partition.eof", "true"),
    ("fetch.wait.max.ms", "100"),
    ("socket.timeout.ms", "30000"),
];

/// Where the time of a plain consume went, from before the consumer is
/// created.
struct PlainConsume {
    records: usize,
    /// Consumer created, metadata and offsets known, partitions assigned.
    setup: Duration,
    /// The first record in hand.
    first: Duration,
    /// The last record in hand.
    total: Duration,
}

/// Reads every record of `topic` with one assigned consumer, set up as the
/// source sets up its own.
fn plain_consume(bootstrap: &str, topic: &str) -> PlainConsume {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let started = Instant::now();
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in SOURCE_CONSUMER_SETTINGS {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut next = Vec::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
            .expect("offsets");
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(low))
            .expect("partition");
        next.push(low);
        ends.push(high);
    }
    consumer.assign(&tpl).expect("assign");
    let setup = started.elapsed();
    let mut first = None;
    let mut records = 0;
    let mut touched = 0usize;
    let mut last = Instant::now();
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        // Errors are `enable.partition.eof` notices (or connection
        // trouble, which librdkafka retries by itself).
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            touched = touched.wrapping_add(m.payload().map_or(0, <[u8]>::len));
            next[m.partition() as usize] = m.offset() + 1;
            records += 1;
            last = Instant::now();
            first.get_or_insert_with(|| started.elapsed());
        }
        assert!(
            last.elapsed() < KAFKA_TIMEOUT,
            "plain consume stalled at {next:?} of {ends:?}"
        );
    }
    std::hint::black_box(touched);
    let total = started.elapsed();
    PlainConsume {
        records,
        setup,
        first: first.unwrap_or(total),
        total,
    }
}

/// CPU seconds (user and system) a process has used so far, from
/// `/proc/<pid>/stat` (Linux; 0 elsewhere). Clock ticks are taken to be
/// 1/100 s, as on every Linux port but Alpha.
fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The fields after the command name, which is in parentheses.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// The two brokers.
struct Brokers {
    input: Broker,
    output: Broker,
}

/// CPU seconds used by this process and by each broker.
#[derive(Clone, Copy)]
struct Cpu {
    bench: f64,
    input: f64,
    output: f64,
}

impl Cpu {
    fn now(brokers: &Brokers) -> Self {
        let of = |b: &Broker| b.pid().map_or(0.0, |p| cpu_seconds(&p.to_string()));
        Self {
            bench: cpu_seconds("self"),
            input: of(&brokers.input),
            output: of(&brokers.output),
        }
    }

    fn since(self, brokers: &Brokers) -> Self {
        let now = Self::now(brokers);
        Self {
            bench: now.bench - self.bench,
            input: now.input - self.input,
            output: now.output - self.output,
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU (s): bench process {:.2}, input broker {:.2}, output broker {:.2}",
            self.bench, self.input, self.output
        )
    }
}

/// The pipeline's result.
struct PipelineRun {
    rows_in: u64,
    rows_out: u64,
    elapsed: Duration,
    batches: usize,
    /// The phases, per micro-batch.
    progress: Vec<tidemill::QueryProgress>,
}

async fn pipeline(
    input_bootstrap: &str,
    output_bootstrap: &str,
    output_topic: &str,
    per_trigger: Option<u64>,
    dir: &std::path::Path,
) -> anyhow::Result<PipelineRun> {
    let ctx = SessionContext::new();
    let started = Instant::now();
    let source = KafkaSource::new(input_bootstrap)
        .topic(INPUT)
        .starting_offsets(StartingOffsets::Earliest)
        .json_values(trade_schema())
        .metadata_columns(false);
    let source = match per_trigger {
        Some(n) => source.max_offsets_per_trigger(n),
        None => source,
    };
    let sink = KafkaSink::new(output_bootstrap)
        .topic(output_topic)
        .option("linger.ms", "5")
        .json_values()
        .key_column("symbol")
        .exactly_once(dir.join("sink-log").to_str().unwrap());
    let query = per_second(
        ctx.read_stream(source)
            .await?
            .with_watermark("event_time", "10 seconds")?,
    )?
    .write_stream()
    .sink(sink)
    .trigger(Trigger::AvailableNow)
    .checkpoint(dir.join("checkpoint").to_str().unwrap())
    .start()
    .await?;
    query.await_termination().await?;
    let elapsed = started.elapsed();
    let progress = query.recent_progress();
    Ok(PipelineRun {
        rows_in: progress.iter().map(|p| p.num_input_rows).sum(),
        rows_out: progress.iter().map(|p| p.num_output_rows).sum(),
        elapsed,
        batches: progress.len(),
        progress,
    })
}

/// The pipeline's phases: all batches, then the first (which waits for the
/// broker's first fetch) apart from the others.
fn print_pipeline_phases(round: usize, run: &PipelineRun, cpu: Cpu) {
    let total = |batches: &[tidemill::QueryProgress], f: fn(&tidemill::PhaseDurations) -> f64| {
        batches.iter().map(|p| f(&p.duration_ms)).sum::<f64>()
    };
    let all = &run.progress[..];
    println!(
        "round {round}, pipeline phases (ms, all {} batches): latest offset {:.0}, offset log {:.0}, read {:.0}, planning {:.0}, \
         execution {:.0}, sink {:.0}, state commit {:.0}, commit log {:.0}; triggers {:.0} of {:.0} wall; {cpu}",
        all.len(),
        total(all, |d| d.latest_offset),
        total(all, |d| d.wal_commit),
        total(all, |d| d.get_batch),
        total(all, |d| d.query_planning),
        total(all, |d| d.execution),
        total(all, |d| d.add_batch),
        total(all, |d| d.state_commit),
        total(all, |d| d.commit_offsets),
        total(all, |d| d.trigger_execution),
        run.elapsed.as_secs_f64() * 1000.0,
    );
    if let [first, rest @ ..] = all
        && !rest.is_empty()
    {
        println!(
            "round {round}, pipeline micro-batches (ms): the first {:.0} (read {:.0}); the other {}: {:.0} each on average \
             (read {:.1}, execution {:.1}, sink {:.1})",
            first.duration_ms.trigger_execution,
            first.duration_ms.get_batch,
            rest.len(),
            total(rest, |d| d.trigger_execution) / rest.len() as f64,
            total(rest, |d| d.get_batch) / rest.len() as f64,
            total(rest, |d| d.execution) / rest.len() as f64,
            total(rest, |d| d.add_batch) / rest.len() as f64,
        );
    }
}

fn print_plain(round: usize, run: &PlainConsume, cpu: Cpu) {
    println!(
        "round {round}, plain consume (ms): set up {:.0}, first record {:.0}, last record {:.0}; {cpu}",
        run.setup.as_secs_f64() * 1000.0,
        run.first.as_secs_f64() * 1000.0,
        run.total.as_secs_f64() * 1000.0,
    );
}

async fn timed_plain_consume(brokers: &Brokers) -> anyhow::Result<(PlainConsume, Cpu)> {
    let cpu = Cpu::now(brokers);
    let bootstrap = brokers.input.bootstrap();
    let run = tokio::task::spawn_blocking(move || plain_consume(&bootstrap, INPUT)).await?;
    Ok((run, cpu.since(brokers)))
}

/// Part 1: the throughput of the windowed aggregation against a plain
/// consume.
async fn throughput(full: bool, result: &mut BenchResult) -> anyhow::Result<()> {
    let rows: usize = if full {
        std::env::var("TIDEMILL_BENCH_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50_000)
    } else {
        2_000
    };
    let rounds = if full { 3 } else { 1 };
    let per_trigger = (rows as u64 / 10).clamp(500, 10_000);
    let brokers = Brokers {
        input: Broker::start(),
        output: Broker::start(),
    };
    let input = brokers.input.bootstrap();
    let output = brokers.output.bootstrap();
    create_topic(&input, INPUT, PARTITIONS, &[]).await;
    let t = Instant::now();
    let bytes = produce_trades(&input, INPUT, rows);
    let produce_time = t.elapsed();

    println!("\n## Part 1: throughput\n");
    result.workload = format!(
        "Brokers: Tansu {} (SQLite storage) on 127.0.0.1, one for the input topic, one for the \
         output; {PARTITIONS} partitions each. Input: {rows} trades as JSON ({:.0} bytes each); \
         8 symbols, 100 trades per event-time second. Pipeline: KafkaSource (JSON values decoded \
         to typed columns) → watermark 10 s → 1-second tumbling windows per symbol: count, \
         volume, VWAP (append mode) → exactly-once KafkaSink (JSON); AvailableNow, \
         max_offsets_per_trigger {per_trigger} (a tenth of the input), and again without a \
         limit; timed from before the query starts to its \
         termination. Baseline: one rdkafka BaseConsumer with the source's client settings, \
         assigned every partition at its earliest offset and polled until each partition's end \
         (values touched, not decoded), timed from its creation to the last record.",
        kafka_broker::TANSU_VERSION,
        bytes as f64 / rows as f64,
    );
    println!("workload: {}", result.workload);
    println!("produced the input in {:.1} s", produce_time.as_secs_f64());

    // Alternate the plain consume and the pipelines, so that none has the
    // broker warmer or the machine quieter; the best run of each counts.
    let dir = tempfile::tempdir()?;
    let mut plains = Vec::new();
    // Per setting of max_offsets_per_trigger: (output topic, run) of each round.
    let settings = [Some(per_trigger), None];
    let mut runs: Vec<Vec<(String, PipelineRun)>> = settings.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        let (plain, cpu) = timed_plain_consume(&brokers).await?;
        print_plain(round, &plain, cpu);
        anyhow::ensure!(
            plain.records == rows,
            "the plain consume read {} records of {rows}",
            plain.records
        );
        plains.push(plain.total);
        for (i, limit) in settings.iter().enumerate() {
            let output_topic = format!("{OUTPUT}-{round}-{i}");
            create_topic(&output, &output_topic, PARTITIONS, &[]).await;
            let cpu = Cpu::now(&brokers);
            let run = pipeline(
                &input,
                &output,
                &output_topic,
                *limit,
                &dir.path().join(format!("{round}-{i}")),
            )
            .await?;
            print_pipeline_phases(round, &run, cpu.since(&brokers));
            anyhow::ensure!(
                run.rows_in as usize == rows,
                "the pipeline read {} records of {rows}",
                run.rows_in
            );
            runs[i].push((output_topic, run));
        }
    }
    let plain = *plains.iter().min().expect("a round");
    let plain_rate = rows as f64 / plain.as_secs_f64();
    let list = |times: &mut dyn Iterator<Item = Duration>| {
        times
            .map(|t| format!("{:.2} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut table = vec![vec![
        format!(
            "plain rdkafka consume ({})",
            list(&mut plains.iter().copied())
        ),
        "–".into(),
        format!("{:.2}", plain.as_secs_f64()),
        format!("{plain_rate:.0}"),
        "1.00".into(),
    ]];
    let mut data = Vec::new();
    for (limit, runs) in settings.iter().zip(&runs) {
        let best = runs
            .iter()
            .map(|(_, run)| run)
            .min_by_key(|run| run.elapsed)
            .expect("a round");
        let rate = rows as f64 / best.elapsed.as_secs_f64();
        let ratio = rate / plain_rate;
        let label = limit.map_or_else(|| "none".to_string(), |n| n.to_string());
        table.push(vec![
            format!(
                "Kafka → parse → windowed aggregation → Kafka, max_offsets_per_trigger {label} \
                 ({} micro-batches, {} rows out; {})",
                best.batches,
                best.rows_out,
                list(&mut runs.iter().map(|(_, run)| run.elapsed))
            ),
            best.batches.to_string(),
            format!("{:.2}", best.elapsed.as_secs_f64()),
            format!("{rate:.0}"),
            format!("{ratio:.2}"),
        ]);
        result.targets.push(Target::at_least(
            &format!("Kafka pipeline / plain consume, max_offsets_per_trigger {label}"),
            ratio,
            0.7,
            "",
        ));
        data.push(serde_json::json!({
            "max_offsets_per_trigger": limit, "batches": best.batches,
            "seconds": best.elapsed.as_secs_f64(), "rows_per_s": rate, "ratio": ratio,
        }));
    }
    let table = Table::new(
        &format!(
            "Best of {rounds} rounds (plain consume and pipelines alternate; every round's time \
             in brackets):"
        ),
        [
            "run",
            "micro-batches",
            "seconds",
            "rows/s",
            "pipeline / plain",
        ],
        table,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    for (key, value) in [
        ("rows", serde_json::json!(rows)),
        ("plain_seconds", serde_json::json!(plain.as_secs_f64())),
        ("pipelines", serde_json::json!(data)),
    ] {
        result.data[key] = value;
    }

    // The output equals the same aggregation as a batch job over the
    // topic, less the windows the final watermark has not closed.
    let ctx = SessionContext::new();
    let all = KafkaSource::new(&input)
        .topic(INPUT)
        .starting_offsets(StartingOffsets::Earliest)
        .json_values(trade_schema())
        .metadata_columns(false)
        .read_batch(&ctx)
        .await?;
    let watermark_ms = START_MS + (rows as i64 - 1) * MS_PER_TRADE - 10_000;
    let closed = per_second(all)?
        .filter((cast(col("second"), DataType::Int64) + lit(1000)).lt_eq(lit(watermark_ms)))?
        .count()
        .await?;
    for (topic, run) in runs.iter().flatten() {
        let written: i64 = end_offsets(&output, topic).iter().sum();
        anyhow::ensure!(
            written as usize == closed && run.rows_out as usize == closed,
            "the pipeline wrote {written} rows to {topic} ({} reported), the batch job has {closed} closed windows",
            run.rows_out
        );
    }
    println!(
        "checked: each run wrote {closed} windows once each, equal in number to the batch job's closed windows"
    );
    result.notes.push(format!(
        "Checked: each run wrote {closed} windows to its output topic, once each, as many as \
         the same aggregation run as a batch job over the topic has closed windows."
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 2: latency
// ---------------------------------------------------------------------------

/// The latency part's input and output topics (each on its own broker).
const LATENCY_INPUT: &str = "latency-in";
const LATENCY_OUTPUT: &str = "latency-out";
/// How long the producer sleeps between chunks of rows.
const PRODUCE_TICK: Duration = Duration::from_millis(1);
/// `fetch.wait.max.ms` of the consumer reading the output (default). Tansu
/// holds every fetch for this long, with or without records (see the
/// module docs), so it is part of every latency the consumer measures; a
/// lower value makes the broker spin on empty fetches.
const OUTPUT_FETCH_WAIT_MS: u64 = 1;
/// How long the run may take to drain once the producer has stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `fetch.wait.max.ms` the source is given in the tuned runs: Tansu
/// holds every fetch that long (see the module docs), so the source's
/// default (100 ms) is added to every batch's read.
const TUNED_SOURCE_FETCH_WAIT_MS: &str = "2";

/// One run of the latency part.
struct LatencyCase {
    /// Rows per second produced.
    rate: u64,
    interval: Duration,
    /// The source's `fetch.wait.max.ms`, if not its default.
    source_fetch_wait_ms: Option<&'static str>,
}

impl LatencyCase {
    fn source(&self) -> String {
        match self.source_fetch_wait_ms {
            Some(ms) => format!("fetch.wait.max.ms {ms}"),
            None => "defaults".into(),
        }
    }
}

/// The latency part's settings.
struct LatencyConfig {
    cases: Vec<LatencyCase>,
    /// How long the producer produces, warm-up included.
    run_for: Duration,
    warmup: Duration,
    /// librdkafka settings given to the source and the sink on top of the
    /// pipeline's own in every run (`TIDEMILL_BENCH_SOURCE_OPTIONS`,
    /// `TIDEMILL_BENCH_SINK_OPTIONS`: `key=value,...`; full mode only).
    source_options: Vec<(String, String)>,
    sink_options: Vec<(String, String)>,
    /// `fetch.wait.max.ms` of the output's consumer.
    output_fetch_wait_ms: u64,
    /// The output broker's storage engine (see the module docs; the
    /// input's is always SQLite).
    storage: Storage,
}

/// The latency part's output storage engine: in-memory in full mode unless
/// `TIDEMILL_BENCH_LATENCY_STORAGE` says `sqlite`; SQLite in short mode
/// (`cargo test` builds only the SQLite Tansu).
fn latency_storage(full: bool) -> anyhow::Result<Storage> {
    if !full {
        return Ok(Storage::Sqlite);
    }
    match std::env::var("TIDEMILL_BENCH_LATENCY_STORAGE").as_deref() {
        Err(_) | Ok("memory") => Ok(Storage::Memory),
        Ok("sqlite") => Ok(Storage::Sqlite),
        Ok(other) => {
            anyhow::bail!("TIDEMILL_BENCH_LATENCY_STORAGE: {other:?} is not memory or sqlite")
        }
    }
}

/// How a storage engine is named in the bench's output.
fn storage_name(storage: Storage) -> &'static str {
    match storage {
        Storage::Sqlite => "SQLite",
        Storage::Memory => "in-memory (dynostore)",
    }
}

/// A number from the environment variable `name`, or `default`.
fn number_from_env<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}: {v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// `key=value,...` from the environment variable `name`.
fn options_from_env(name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let Ok(text) = std::env::var(name) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{name}: {kv:?} is not key=value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

impl LatencyConfig {
    fn new(full: bool) -> anyhow::Result<Self> {
        let (rate, low_rate) = if full {
            (
                number_from_env("TIDEMILL_BENCH_LATENCY_RATE", 10_000)?,
                1_000,
            )
        } else {
            (500, 200)
        };
        let tuned = Some(TUNED_SOURCE_FETCH_WAIT_MS);
        let case = |rate, interval_ms, source_fetch_wait_ms| LatencyCase {
            rate,
            interval: Duration::from_millis(interval_ms),
            source_fetch_wait_ms,
        };
        let cases = vec![
            case(rate, 0, None),
            case(rate, 0, tuned),
            case(rate, 10, tuned),
            case(low_rate, 0, tuned),
        ];
        Ok(if full {
            Self {
                cases,
                run_for: Duration::from_secs(11),
                warmup: Duration::from_secs(1),
                source_options: options_from_env("TIDEMILL_BENCH_SOURCE_OPTIONS")?,
                sink_options: options_from_env("TIDEMILL_BENCH_SINK_OPTIONS")?,
                output_fetch_wait_ms: number_from_env(
                    "TIDEMILL_BENCH_OUTPUT_FETCH_WAIT_MS",
                    OUTPUT_FETCH_WAIT_MS,
                )?,
                storage: latency_storage(full)?,
            }
        } else {
            Self {
                cases,
                run_for: Duration::from_millis(1500),
                warmup: Duration::from_millis(500),
                source_options: Vec::new(),
                sink_options: Vec::new(),
                output_fetch_wait_ms: OUTPUT_FETCH_WAIT_MS,
                storage: latency_storage(full)?,
            }
        })
    }
}

/// The input rows' schema: an id, the producer's clock when the row was
/// handed to it, and a trade.
fn latency_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("sent_us", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
    ]))
}

/// The stateless plan measured: a filter every row passes (prices are
/// positive) and a projection that keeps the id and `sent_us`.
fn stateless(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    df.filter(col("price").gt(lit(0.0)))?.select(vec![
        col("id"),
        col("sent_us"),
        col("symbol"),
        (col("price") * lit(100.0)).alias("price_cents"),
    ])
}

/// Microseconds since the Unix epoch.
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Per row id, a time in µs since the epoch (0: not yet).
type Stamps = Arc<Vec<AtomicI64>>;

fn stamps(n: usize) -> Stamps {
    Arc::new((0..n).map(|_| AtomicI64::new(0)).collect())
}

/// The input producer's delivery reports: when the broker acknowledged
/// each row.
struct Acks {
    at: Stamps,
    failed: AtomicU64,
}

impl rdkafka::ClientContext for Acks {}

impl rdkafka::producer::ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, id: usize) {
        match result {
            Ok(_) => self.at[id].store(now_us(), Ordering::Relaxed),
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What the producer did.
struct Produced {
    rows: usize,
    /// When it started, µs since the epoch.
    started_us: i64,
    /// When each row was handed to the producer, by id.
    sent_us: Vec<i64>,
}

/// Produces `rate` rows per second for `run_for` into `topic`, spread over
/// its partitions round robin, a chunk every [`PRODUCE_TICK`]; each value
/// carries its id and `sent_us`, the clock just before the record is
/// handed to the producer. Acknowledgements land in `acked`. Blocking.
fn produce_at_rate(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    run_for: Duration,
    acked: Stamps,
) -> anyhow::Result<Produced> {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let capacity = acked.len();
    let acks = Acks {
        at: acked,
        failed: AtomicU64::new(0),
    };
    // librdkafka's defaults (linger.ms 5), acknowledged by the leader.
    let producer: ThreadedProducer<Acks> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", KAFKA_TIMEOUT.as_millis().to_string())
        .create_with_context(acks)?;
    // Connect and learn the topic before the clock starts.
    producer
        .client()
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut sent_us = Vec::with_capacity(capacity);
    let started = Instant::now();
    let started_us = now_us();
    let mut tick = 0u32;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= run_for {
            break;
        }
        let due = ((elapsed.as_secs_f64() * rate as f64) as usize).min(capacity);
        while sent_us.len() < due {
            let id = sent_us.len();
            let symbol = SYMBOLS[rng.random_range(0..SYMBOLS.len())];
            let price = rng.random_range(10.0..500.0);
            let sent = now_us();
            let value =
                format!(r#"{{"id":{id},"sent_us":{sent},"symbol":"{symbol}","price":{price:.2}}}"#);
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(topic, id)
                    .partition((id % PARTITIONS as usize) as i32)
                    .payload(value.as_bytes());
            let deadline = Instant::now() + KAFKA_TIMEOUT;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        anyhow::ensure!(Instant::now() < deadline, "producing to {topic}: {e}");
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            sent_us.push(sent);
        }
        tick += 1;
        let next = started + PRODUCE_TICK * tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    producer
        .flush(KAFKA_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("flushing the producer: {e}"))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} rows were not delivered to {topic}");
    Ok(Produced {
        rows: sent_us.len(),
        started_us,
        sent_us,
    })
}

/// What the output's consumer received.
struct Received {
    /// When each row id arrived, µs since the epoch (0: never).
    at_us: Vec<i64>,
    /// Rows that arrived more than once.
    duplicates: u64,
    /// Records whose value was not an output row of this run.
    foreign: u64,
}

#[derive(serde::Deserialize)]
struct OutputRow {
    id: usize,
}

/// Reads the output topic from its beginning as a downstream consumer
/// would (assigned partitions, default isolation: the sink writes no
/// transactions), stamping each row when it is in hand, until every row
/// the producer sent (`produced`, known once it has stopped) has arrived
/// or `stop` is set. Blocking.
fn consume_output(
    bootstrap: &str,
    topic: &str,
    capacity: usize,
    fetch_wait_ms: u64,
    produced: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Received> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tidemill-latency-bench")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut received = Received {
        at_us: vec![0; capacity],
        duplicates: 0,
        foreign: 0,
    };
    let mut seen = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let total = produced.load(Ordering::Acquire);
        if total != u64::MAX && seen >= total {
            break;
        }
        let Some(message) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let at = now_us();
        // Errors are connection trouble librdkafka retries by itself.
        let Ok(message) = message else { continue };
        match message
            .payload()
            .and_then(|v| serde_json::from_slice::<OutputRow>(v).ok())
        {
            Some(OutputRow { id }) if id < capacity => {
                if received.at_us[id] == 0 {
                    received.at_us[id] = at;
                    seen += 1;
                } else {
                    received.duplicates += 1;
                }
            }
            _ => received.foreign += 1,
        }
    }
    Ok(received)
}

/// How many records `topic` holds, counted by reading every partition
/// from its beginning to the end the broker's fetch responses give (not
/// ListOffsets, which Tansu's object-store engine gets wrong; see the
/// module docs). Blocking.
fn records_in(bootstrap: &str, topic: &str) -> anyhow::Result<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tidemill-latency-bench-count")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = [false; PARTITIONS as usize];
    let mut records = 0;
    let mut last_progress = Instant::now();
    while !at_end.iter().all(|&e| e) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                records += 1;
                last_progress = Instant::now();
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end[p as usize] = true;
            }
            // Connection trouble librdkafka retries by itself.
            Some(Err(_)) | None => {}
        }
        anyhow::ensure!(
            last_progress.elapsed() < KAFKA_TIMEOUT,
            "counting the records of {topic} stalled at {records}"
        );
    }
    Ok(records)
}

/// Wraps the pipeline's sink: when the wrapped sink's `add_batch` returns
/// (every message acknowledged by the broker, the sink's log committed),
/// notes the time against the batch and each of its rows' ids.
#[derive(Debug)]
struct CommitClock {
    inner: Arc<dyn tidemill::Sink>,
    /// (batch id, rows, µs since the epoch), per batch.
    batches: Mutex<Vec<(u64, u64, i64)>>,
    /// (row id, µs since the epoch), per row.
    rows: Mutex<Vec<(usize, i64)>>,
}

#[async_trait::async_trait]
impl tidemill::Sink for CommitClock {
    fn description(&self) -> String {
        format!("CommitClock[{}]", self.inner.description())
    }

    async fn open(&self, ctx: &tidemill::engine::SinkContext) -> tidemill::Result<()> {
        self.inner.open(ctx).await
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> tidemill::Result<()> {
        let mut ids = Vec::new();
        for b in &batches {
            if let Some(id) = b.column_by_name("id") {
                ids.extend(
                    id.as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .map(|&v| v as usize),
                );
            }
        }
        self.inner.add_batch(batch_id, schema, batches).await?;
        let at = now_us();
        self.batches
            .lock()
            .expect("lock")
            .push((batch_id, ids.len() as u64, at));
        self.rows
            .lock()
            .expect("lock")
            .extend(ids.into_iter().map(|id| (id, at)));
        Ok(())
    }
}

/// One latency run's figures.
struct LatencyRun {
    rows: usize,
    /// Received by the output's consumer − acknowledged to the producer.
    received: LatencySummary,
    /// Received by the output's consumer − handed to the producer.
    received_from_send: LatencySummary,
    /// The sink's `add_batch` returned − acknowledged to the producer.
    committed: LatencySummary,
    rows_per_s: f64,
    batches_per_s: f64,
    /// The share of those batches whose ends came from records the
    /// source's consumer had already fetched (progress metric
    /// `ends_from`), not from asking the broker.
    ended_by_fetched: f64,
    phases: Vec<String>,
    cpu: Cpu,
}

/// One run of the latency part at trigger `interval`, on a fresh pair of
/// brokers.
async fn latency_run(
    config: &LatencyConfig,
    case: &LatencyCase,
    dir: &std::path::Path,
) -> anyhow::Result<LatencyRun> {
    let interval = case.interval;
    let brokers = match config.storage {
        // The output's consumer fetches records with headers (the sink's):
        // without the index, each costs a scan of every header stored.
        Storage::Sqlite => Brokers {
            input: Broker::start(),
            output: Broker::start_with_header_index(),
        },
        // The input stays on SQLite: the source needs the partitions' end
        // offsets, which Tansu's object-store engine gets wrong (see the
        // module docs).
        Storage::Memory => Brokers {
            input: Broker::start(),
            output: Broker::start_in_memory(),
        },
    };
    let input = brokers.input.bootstrap();
    let output = brokers.output.bootstrap();
    create_topic(&input, LATENCY_INPUT, PARTITIONS, &[]).await;
    create_topic(&output, LATENCY_OUTPUT, PARTITIONS, &[]).await;
    let capacity = (case.rate as f64 * config.run_for.as_secs_f64() * 1.1) as usize + 1_000;

    let ctx = SessionContext::new();
    let source = KafkaSource::new(&input)
        .topic(LATENCY_INPUT)
        .starting_offsets(StartingOffsets::Earliest)
        .json_values(latency_schema())
        .metadata_columns(false);
    let source = match case.source_fetch_wait_ms {
        Some(ms) => source.option("fetch.wait.max.ms", ms),
        None => source,
    };
    let source = config
        .source_options
        .iter()
        .fold(source, |source, (k, v)| source.option(k, v));
    let sink = KafkaSink::new(&output)
        .topic(LATENCY_OUTPUT)
        .option("linger.ms", "5")
        .json_values()
        .key_column("symbol")
        .exactly_once(dir.join("sink-log").to_str().expect("UTF-8 path"));
    let sink = config
        .sink_options
        .iter()
        .fold(sink, |sink, (k, v)| sink.option(k, v));
    let clock = Arc::new(CommitClock {
        inner: Arc::new(sink),
        batches: Mutex::default(),
        rows: Mutex::default(),
    });
    let options = tidemill::QueryOptions {
        // Every batch's progress, for the phases.
        progress_history: 1_000_000,
        ..Default::default()
    };
    let query = stateless(ctx.read_stream(source).await?)?
        .write_stream()
        .sink_arc(Arc::clone(&clock) as Arc<dyn tidemill::Sink>)
        .trigger(Trigger::ProcessingTime(interval))
        .checkpoint(dir.join("checkpoint").to_str().expect("UTF-8 path"))
        .options(options)
        .start()
        .await?;

    let produced = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (output, produced, stop) = (output.clone(), Arc::clone(&produced), Arc::clone(&stop));
        let fetch_wait = config.output_fetch_wait_ms;
        std::thread::spawn(move || {
            consume_output(
                &output,
                LATENCY_OUTPUT,
                capacity,
                fetch_wait,
                produced,
                stop,
            )
        })
    };
    let acked = stamps(capacity);
    let cpu = Cpu::now(&brokers);
    let producer = {
        let (input, acked) = (input.clone(), Arc::clone(&acked));
        let (rate, run_for) = (case.rate, config.run_for);
        tokio::task::spawn_blocking(move || {
            produce_at_rate(&input, LATENCY_INPUT, rate, run_for, acked)
        })
    };
    let sent = match producer.await? {
        Ok(sent) => sent,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    };
    let produced_at_end = now_us();
    produced.store(sent.rows as u64, Ordering::Release);
    // Wait for the consumer to see every row (or the drain timeout).
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !consumer.is_finished() && Instant::now() < deadline && query.is_active() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let received = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the output's consumer panicked"))??;
    let cpu = cpu.since(&brokers);
    let active = query.is_active();
    query.stop().await?;
    anyhow::ensure!(active, "the query stopped before the end of the run");

    // Every row exactly once, in the sink's record and in the topic.
    let missing = received.at_us[..sent.rows]
        .iter()
        .filter(|&&at| at == 0)
        .count();
    let written = tokio::task::spawn_blocking({
        let output = output.clone();
        move || records_in(&output, LATENCY_OUTPUT)
    })
    .await??;
    let committed_rows = clock.rows.lock().expect("lock").len();
    anyhow::ensure!(
        missing == 0
            && received.duplicates == 0
            && received.foreign == 0
            && written == sent.rows
            && committed_rows == sent.rows,
        "interval {interval:?}: produced {} rows; the output's consumer missed {missing}, saw {} \
         twice and {} unknown; the topic holds {written}; the sink committed {committed_rows}",
        sent.rows,
        received.duplicates,
        received.foreign,
    );

    // Latencies of the rows sent after the warm-up.
    let measured_from = sent.started_us + config.warmup.as_micros() as i64;
    let mut received_hist = LatencyHistogram::default();
    let mut from_send = LatencyHistogram::default();
    let mut committed_hist = LatencyHistogram::default();
    let micros = |later: i64, earlier: i64| (later - earlier).max(0) as u64;
    for id in 0..sent.rows {
        let sent_at = sent.sent_us[id];
        if sent_at < measured_from {
            continue;
        }
        let acked_at = acked[id].load(Ordering::Relaxed);
        anyhow::ensure!(acked_at > 0, "row {id} was not acknowledged");
        received_hist.record_micros(micros(received.at_us[id], acked_at));
        from_send.record_micros(micros(received.at_us[id], sent_at));
    }
    for &(id, at) in clock.rows.lock().expect("lock").iter() {
        if sent.sent_us[id] >= measured_from {
            committed_hist.record_micros(micros(at, acked[id].load(Ordering::Relaxed)));
        }
    }
    // Batches committed between the end of the warm-up and the end of the
    // producer's run.
    let window_s = (produced_at_end - measured_from) as f64 / 1e6;
    let batches = clock.batches.lock().expect("lock").clone();
    let in_window: Vec<&(u64, u64, i64)> = batches
        .iter()
        .filter(|(_, _, at)| (measured_from..=produced_at_end).contains(at))
        .collect();
    let window_rows: u64 = in_window.iter().map(|(_, rows, _)| rows).sum();
    let first_batch = in_window.first().map_or(u64::MAX, |(id, _, _)| *id);
    let last_batch = in_window.last().map_or(0, |(id, _, _)| *id);
    let progress: Vec<tidemill::QueryProgress> = query
        .recent_progress()
        .into_iter()
        .filter(|p| (first_batch..=last_batch).contains(&p.batch_id))
        .collect();
    let summary = |h: &LatencyHistogram| h.summary().expect("rows after the warm-up");
    Ok(LatencyRun {
        rows: sent.rows,
        received: summary(&received_hist),
        received_from_send: summary(&from_send),
        committed: summary(&committed_hist),
        rows_per_s: window_rows as f64 / window_s,
        batches_per_s: in_window.len() as f64 / window_s,
        ended_by_fetched: progress
            .iter()
            .filter(|p| {
                p.sources[0].metrics.get("ends_from").map(String::as_str) == Some("fetched")
            })
            .count() as f64
            / progress.len().max(1) as f64,
        phases: phase_cells(&progress, mean),
        cpu,
    })
}

/// The mean of `values` (for [`phase_cells`]; NaN when empty).
fn mean(values: &mut [f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Part 2: latency from a row available in the input topic to the same
/// row in a consumer's hands on the output topic.
async fn latency(full: bool, result: &mut BenchResult) -> anyhow::Result<()> {
    let config = LatencyConfig::new(full)?;
    println!("\n## Part 2: latency\n");
    let mut rates: Vec<String> = config.cases.iter().map(|c| c.rate.to_string()).collect();
    rates.dedup();
    let mut workload = format!(
        "Latency: per run, on a fresh pair of Tansu brokers ({}), a producer thread produces a fixed rate of rows ({} rows/s; a chunk every \
         {} ms, round robin over {PARTITIONS} partitions, librdkafka's defaults) for {} s, each \
         value JSON with an id and `sent_us`; KafkaSource (JSON values; its default settings, \
         or fetch.wait.max.ms {TUNED_SOURCE_FETCH_WAIT_MS}) → filter + projection keeping the \
         id and `sent_us` → exactly-once KafkaSink (JSON, key symbol, linger.ms 5), \
         Trigger::ProcessingTime 0 or 10 ms; a consumer of the output topic (fetch.wait.max.ms \
         {}) stamps each row when in hand. Latency = received − acknowledged by the input's \
         broker (the producer's delivery report); rows sent in the first {} s are left out.",
        match config.storage {
            Storage::Sqlite => "SQLite storage, the output's headers indexed",
            Storage::Memory =>
                "the input on SQLite storage, the output on in-memory object-store storage (the \
                 dynostore build)",
        },
        rates.join(" or "),
        PRODUCE_TICK.as_millis(),
        config.run_for.as_secs_f64(),
        config.output_fetch_wait_ms,
        config.warmup.as_secs_f64(),
    );
    for (whose, options) in [
        ("source", &config.source_options),
        ("sink", &config.sink_options),
    ] {
        if !options.is_empty() {
            let list: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
            workload.push_str(&format!(" The {whose} also set: {}.", list.join(", ")));
        }
    }
    println!("workload: {workload}");
    if result.workload.is_empty() {
        result.workload = workload;
    } else {
        result.workload = format!("{}\n\n{workload}", result.workload);
    }
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for (i, case) in config.cases.iter().enumerate() {
        println!("load before the run: {}", load_average());
        let run = latency_run(&config, case, &dir.path().join(i.to_string())).await?;
        println!(
            "{} rows/s, interval {}, source {}: {} rows; received − acknowledged p50 {:.1} p99 \
             {:.1} max {:.1} ms; sink committed − acknowledged p50 {:.1} p99 {:.1} ms; {:.0} \
             batches/s, {:.0} % ended by fetched records; {}",
            case.rate,
            format_interval_ms(ms(case.interval)),
            case.source(),
            run.rows,
            run.received.p50_ms,
            run.received.p99_ms,
            run.received.max_ms,
            run.committed.p50_ms,
            run.committed.p99_ms,
            run.batches_per_s,
            run.ended_by_fetched * 100.0,
            run.cpu,
        );
        runs.push(run);
    }
    let mut rows = Vec::new();
    let mut phase_rows = Vec::new();
    for (case, run) in config.cases.iter().zip(&runs) {
        let interval = format_interval_ms(ms(case.interval));
        for (what, l) in [
            ("received − acknowledged", &run.received),
            ("received − sent", &run.received_from_send),
            ("sink committed − acknowledged", &run.committed),
        ] {
            rows.push(vec![
                case.rate.to_string(),
                interval.clone(),
                case.source(),
                what.to_string(),
                trim(l.p50_ms),
                trim(l.p95_ms),
                trim(l.p99_ms),
                trim(l.p999_ms),
                trim(l.max_ms),
                trim(run.rows_per_s),
                trim(run.batches_per_s),
            ]);
        }
        let mut row = vec![format!(
            "{} rows/s, interval {interval}, source {}",
            case.rate,
            case.source()
        )];
        row.extend(run.phases.iter().cloned());
        phase_rows.push(row);
    }
    let table = Table::new(
        &format!(
            "Kafka → Kafka latency, output on a Tansu broker with {} storage, {} s after {} s of warm-up \
             per run; stateless filter + projection, exactly-once `KafkaSink`; received: by a consumer of the output topic; \
             acknowledged: the input's broker acknowledged the row to its producer; sent: \
             handed to the producer; sink committed: the sink's `add_batch` returned (output \
             acknowledged, sink log committed); rows/s and batches/s: of the batches committed \
             after the warm-up:",
            storage_name(config.storage),
            (config.run_for - config.warmup).as_secs_f64(),
            config.warmup.as_secs_f64()
        ),
        [
            "rows/s in",
            "interval",
            "source",
            "latency",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "rows/s",
            "batches/s",
        ],
        rows,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    let mut columns = vec!["run"];
    columns.extend(PHASES);
    let table = Table::new(
        "Mean ms per phase of the batches of those runs committed after the warm-up:",
        columns,
        phase_rows,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    // The target: the first rate at interval 0, default source settings
    // and tuned.
    for (case, run) in config.cases.iter().zip(&runs).take(2) {
        let tuned = match case.source_fetch_wait_ms {
            Some(ms) => format!(", source fetch.wait.max.ms {ms}"),
            None => String::new(),
        };
        result.targets.push(Target::at_most(
            &format!(
                "Kafka → Kafka p99 latency (ms), interval 0, {} rows/s{tuned}, output on Tansu {}",
                case.rate,
                storage_name(config.storage)
            ),
            run.received.p99_ms,
            20.0,
            "",
        ));
    }
    result.notes.push(format!(
        "Latency part checked: in each run, every produced row reached the output's consumer \
         exactly once, the output topic holds as many records, and the sink committed each row \
         once ({} rows in all).",
        runs.iter().map(|r| r.rows).sum::<usize>()
    ));
    result.data["latency"] = serde_json::json!(
        config
            .cases
            .iter()
            .zip(&runs)
            .map(|(c, r)| serde_json::json!({
                "rate": c.rate,
                "interval_ms": ms(c.interval),
                "source_fetch_wait_ms": c.source_fetch_wait_ms,
                "rows": r.rows,
                "received": r.received,
                "received_from_send": r.received_from_send,
                "sink_committed": r.committed,
                "rows_per_s": r.rows_per_s,
                "batches_per_s": r.batches_per_s,
                "batches_ended_by_fetched": r.ended_by_fetched,
                "broker_storage": storage_name(config.storage),
                "phases_ms": r.phases,
            }))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// The machine's load average, as `/proc/loadavg` gives it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The parts `TIDEMILL_BENCH_ONLY` names (full mode only; default both).
fn parts(full: bool) -> anyhow::Result<(bool, bool)> {
    let only = std::env::var("TIDEMILL_BENCH_ONLY").ok().filter(|_| full);
    let Some(only) = only else {
        return Ok((true, true));
    };
    let (mut throughput, mut latency) = (false, false);
    for part in only.split(',').map(str::trim) {
        match part {
            "throughput" => throughput = true,
            "latency" => latency = true,
            other => {
                anyhow::bail!("TIDEMILL_BENCH_ONLY: unknown part {other:?} (throughput, latency)")
            }
        }
    }
    Ok((throughput, latency))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let (run_throughput, run_latency) = parts(full)?;
    println!(
        "Kafka benchmark ({})",
        if full {
            "full"
        } else {
            "short (no --bench argument: tiny sizes, results checked, times not meaningful)"
        }
    );
    let mut result = BenchResult::new(
        "kafka",
        "Kafka: parse, windowed aggregation and produce vs a plain consume; Kafka → Kafka latency",
        "cargo bench --bench kafka",
        full,
    );
    println!("machine:  {}", result.machine.summary());
    if run_throughput {
        throughput(full, &mut result).await?;
    }
    if run_latency {
        latency(full, &mut result).await?;
    }
    for t in &result.targets {
        println!("target: {} {} — measured {}", t.name, t.target, t.measured);
    }
    if run_throughput && run_latency {
        let path = result.write()?;
        println!("\nresults: {}", path.display());
    } else {
        // A run of one part would replace the other's figures: written
        // apart, to be merged by hand.
        let path = tidemill_harness::results::results_dir()
            .join("partial")
            .join("kafka.json");
        std::fs::create_dir_all(path.parent().expect("a parent"))?;
        result.generated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        result.machine = tidemill_harness::machine::Machine::current();
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
        println!("\nresults of this part only: {}", path.display());
    }
    Ok(())
}
