//! Kafka → parse → windowed aggregation → Kafka throughput, against a
//! plain rdkafka consume of the same topic (the ratio is the figure that
//! travels between machines and brokers).
//!
//! ```sh
//! cargo bench --bench kafka                          # full mode: 50 000 trades
//! TIDEMILL_BENCH_ROWS=200000 cargo bench --bench kafka
//! cargo test --bench kafka                           # short mode, 2 000 trades
//! ```
//!
//! The benchmark starts two brokers (Tansu 0.6.0 with SQLite storage, on
//! 127.0.0.1; see `tidemill_harness::kafka_broker`): one holds the
//! input topic, the other the pipeline's output. Tansu keeps every topic's
//! record headers in one unindexed table and scans it for each record it
//! fetches, so the sink's output (which carries headers) on the input's
//! broker would slow every later fetch of the input, a cost a Kafka broker
//! does not have. The trades are produced as JSON values to a 2-partition
//! topic, then three runs are timed, each from nothing to every record in
//! hand:
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
//! `cargo bench` passes `--bench`: that runs the full mode
//! (`TIDEMILL_BENCH_ROWS`, default 50 000 trades). Without it (as
//! `cargo test` runs this file) a short mode runs 2 000 trades, checks the
//! pipeline's output against the same aggregation run as a batch job over
//! the topic, and never asserts on time.

use std::time::{Duration, Instant};

use arrow::datatypes::DataType;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use tidemill::connectors::kafka::rdkafka;
use tidemill::connectors::kafka::{KafkaSink, KafkaSource, StartingOffsets};
use tidemill::engine::window::tumble;
use tidemill::prelude::*;
use tidemill_harness::kafka_broker::{
    self, Broker, KAFKA_TIMEOUT, Out, create_topic, end_offsets, produce,
};
use tidemill_harness::results::{BenchResult, Table, Target};
use tidemill_harness::trades::{EXCHANGES, trade_schema};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let full = std::env::args().any(|a| a == "--bench");
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
        "Kafka: parse, windowed aggregation and produce vs a plain consume",
        "cargo bench --bench kafka",
        full,
    );
    println!("machine:  {}", result.machine.summary());
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
    result.data = serde_json::json!({
        "rows": rows, "plain_seconds": plain.as_secs_f64(), "pipelines": data,
    });

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
    let path = result.write()?;
    println!("\nresults: {}", path.display());
    Ok(())
}
