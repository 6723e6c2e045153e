//! Per-minute trading metrics from a Kafka topic, end to end: streamed
//! exactly once to another topic and archived to parquet, then the whole
//! topic reprocessed from its earliest offset as a batch job.
//!
//! The example starts its own Kafka-protocol broker (Tansu 0.6.0 on a free
//! port of 127.0.0.1, in a temporary directory; installed into
//! `target/tools` on first use, which takes about 12 minutes on 2 cores)
//! and stops it at the end. Run it with
//! `cargo run --example kafka_trades`.
//!
//! 1. A producer writes trades (`symbol`, `exchange`, `price`,
//!    `quantity`, `event_time`) as JSON to the 3-partition topic `trades`:
//!    out of order by up to 8 seconds, and, in the second wave, a few that
//!    a reconnecting venue delivers minutes late.
//! 2. **Stream**: `KafkaSource` decodes the JSON values, a 10-second
//!    watermark on `event_time` says when a minute is complete, and
//!    [`minute_metrics`] (trades, volume, VWAP, high, low per minute,
//!    symbol and exchange) is written once per minute, when complete, to
//!    the topic `minute-bars` by the exactly-once `KafkaSink`. A second
//!    query archives `minute-bars` to parquet. Both run with
//!    `Trigger::AvailableNow` twice, with the second wave of trades in
//!    between, resuming from their checkpoints.
//! 3. **Reprocess**: `KafkaSource::read_batch` reads `trades` from the
//!    earliest offset as a batch DataFrame and runs the same
//!    [`minute_metrics`]: the final, complete report, late trades included.
//!
//! The example checks that every bar in `minute-bars` appears exactly once,
//! that the parquet archive holds the same bars, and that each equals the
//! batch report's row unless late trades fell into its minute.

#[path = "../tests/integration/kafka_broker.rs"]
mod kafka_broker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::ensure;
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::error::Result;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use tidemill::QueryProgress;
use tidemill::connectors::kafka::{KafkaSink, KafkaSource, StartingOffsets};
use tidemill::engine::window::tumble;
use tidemill::prelude::*;

use kafka_broker::{Broker, Out, consume_all, create_topic, produce};

/// 2026-03-02 14:30:00 UTC, the first trade's minute.
const START_MS: i64 = 1_772_461_800_000;
const MINUTE_MS: i64 = 60_000;
/// Minutes of trading in each wave, and trades per second.
const FIRST_WAVE_MINUTES: i64 = 5;
const SECOND_WAVE_MINUTES: i64 = 3;
const TRADES_PER_SECOND: i64 = 4;
/// The watermark delay exceeds the largest disorder of on-time trades.
const MAX_DISORDER_MS: i64 = 8_000;
const LATE_TRADES: usize = 12;
const SYMBOLS: [(&str, f64); 3] = [("AAPL", 231.40), ("MSFT", 412.80), ("NVDA", 118.25)];
const EXCHANGES: [&str; 2] = ["XNAS", "XNYS"];

/// The metrics, used by the stream and the batch job alike: per one-minute
/// window, symbol and exchange, the number of trades, the volume, the VWAP,
/// and the high and low price.
fn minute_metrics(df: DataFrame) -> Result<DataFrame> {
    df.aggregate(
        vec![
            tumble(col("event_time"), "1 minute").alias("window"),
            col("symbol"),
            col("exchange"),
        ],
        vec![
            count(lit(1)).alias("trades"),
            sum(col("quantity")).alias("volume"),
            sum(col("price") * cast(col("quantity"), DataType::Float64)).alias("notional"),
            max(col("price")).alias("high"),
            min(col("price")).alias("low"),
        ],
    )?
    .select(vec![
        get_field(col("window"), "start").alias("minute"),
        col("symbol"),
        col("exchange"),
        col("trades"),
        col("volume"),
        (col("notional") / cast(col("volume"), DataType::Float64)).alias("vwap"),
        col("high"),
        col("low"),
    ])
}

fn trade_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("exchange", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// The schema of the bars in `minute-bars` (the JSON the sink writes).
fn bar_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "minute",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("exchange", DataType::Utf8, false),
        Field::new("trades", DataType::Int64, false),
        Field::new("volume", DataType::Int64, false),
        Field::new("vwap", DataType::Float64, false),
        Field::new("high", DataType::Float64, false),
        Field::new("low", DataType::Float64, false),
    ]))
}

/// Trades of minutes `[from, to)`, out of order by up to 8 s, as messages
/// keyed by symbol; returns them with the event time of each.
fn trades(rng: &mut rand::rngs::StdRng, from: i64, to: i64) -> Vec<(Out, i64)> {
    let mut out = Vec::new();
    for second in from * 60..to * 60 {
        for _ in 0..TRADES_PER_SECOND {
            let true_ms = START_MS + second * 1000 + rng.random_range(0..1000);
            // Disorder: the trade is sent as if it happened up to 8 s
            // earlier than its neighbours.
            let event_ms =
                (true_ms - rng.random_range(0..MAX_DISORDER_MS)).max(START_MS + from * MINUTE_MS);
            out.push((trade_message(rng, event_ms), event_ms));
        }
    }
    out
}

fn trade_message(rng: &mut rand::rngs::StdRng, event_ms: i64) -> Out {
    let (symbol, base) = SYMBOLS[rng.random_range(0..SYMBOLS.len())];
    let exchange = EXCHANGES[rng.random_range(0..EXCHANGES.len())];
    let price = (base * (1.0 + rng.random_range(-0.002..0.002)) * 100.0).round() / 100.0;
    let quantity = rng.random_range(1..50) * 10;
    let time = chrono::DateTime::from_timestamp_millis(event_ms)
        .expect("time")
        .format("%Y-%m-%dT%H:%M:%S%.3f");
    Out {
        key: Some(symbol.as_bytes().to_vec()),
        value: Some(
            format!(
                r#"{{"symbol":"{symbol}","exchange":"{exchange}","price":{price},"quantity":{quantity},"event_time":"{time}"}}"#
            )
            .into_bytes(),
        ),
        ..Default::default()
    }
}

fn print_progress(label: &str, progress: &[QueryProgress]) {
    for p in progress {
        println!(
            "  {label} batch {:>2}: {:>4} trades in, {:>3} rows out, watermark {}, {} late rows dropped",
            p.batch_id,
            p.num_input_rows,
            p.num_output_rows,
            p.event_time.watermark.as_deref().unwrap_or("-"),
            p.state_operators
                .first()
                .map_or(0, |s| s.num_rows_dropped_by_watermark)
        );
    }
}

/// Bars keyed by (minute ms, symbol, exchange), with their metrics.
type Bars = BTreeMap<(i64, String, String), (i64, i64, f64, f64, f64)>;

fn bars(batches: &[RecordBatch]) -> Bars {
    let mut out = Bars::new();
    for b in batches {
        let minute = b
            .column_by_name("minute")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>();
        let symbol = b.column_by_name("symbol").unwrap().as_string::<i32>();
        let exchange = b.column_by_name("exchange").unwrap().as_string::<i32>();
        let trades = b
            .column_by_name("trades")
            .unwrap()
            .as_primitive::<Int64Type>();
        let volume = b
            .column_by_name("volume")
            .unwrap()
            .as_primitive::<Int64Type>();
        let vwap = b
            .column_by_name("vwap")
            .unwrap()
            .as_primitive::<Float64Type>();
        let high = b
            .column_by_name("high")
            .unwrap()
            .as_primitive::<Float64Type>();
        let low = b
            .column_by_name("low")
            .unwrap()
            .as_primitive::<Float64Type>();
        for r in 0..b.num_rows() {
            let key = (
                minute.value(r),
                symbol.value(r).to_string(),
                exchange.value(r).to_string(),
            );
            let value = (
                trades.value(r),
                volume.value(r),
                vwap.value(r),
                high.value(r),
                low.value(r),
            );
            assert!(
                out.insert(key.clone(), value).is_none(),
                "bar {key:?} twice"
            );
        }
    }
    out
}

fn same(a: &(i64, i64, f64, f64, f64), b: &(i64, i64, f64, f64, f64)) -> bool {
    a.0 == b.0 && a.1 == b.1 && (a.2 - b.2).abs() < 1e-9 && a.3 == b.3 && a.4 == b.4
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let work = tempfile::tempdir()?;
    println!(
        "Kafka-protocol broker (Tansu) on {bootstrap}; working directory {}",
        work.path().display()
    );
    create_topic(&bootstrap, "trades", 3, &[]).await;
    create_topic(&bootstrap, "minute-bars", 2, &[]).await;
    let path = |name: &str| work.path().join(name).to_string_lossy().into_owned();

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let first = trades(&mut rng, 0, FIRST_WAVE_MINUTES);
    let mut second = trades(
        &mut rng,
        FIRST_WAVE_MINUTES,
        FIRST_WAVE_MINUTES + SECOND_WAVE_MINUTES,
    );
    // A reconnecting venue delivers trades of the first minutes late.
    let mut late_minutes = BTreeSet::new();
    for i in 0..LATE_TRADES {
        let event_ms = START_MS + (i as i64 % 3) * MINUTE_MS + rng.random_range(0..MINUTE_MS);
        late_minutes.insert(event_ms / MINUTE_MS * MINUTE_MS);
        let message = trade_message(&mut rng, event_ms);
        second.insert(second.len() / 2 + i, (message, event_ms));
    }
    let send = |wave: &[(Out, i64)]| {
        let messages: Vec<Out> = wave.iter().map(|(m, _)| m.clone()).collect();
        produce(&bootstrap, "trades", &messages);
    };

    let ctx = SessionContext::new();
    let stream_once = |label: &'static str| {
        let ctx = ctx.clone();
        let bootstrap = bootstrap.clone();
        let (chk, sink_log, archive, archive_chk) = (
            path("chk/bars"),
            path("chk/bars-sink"),
            path("archive"),
            path("chk/archive"),
        );
        async move {
            let trades = ctx
                .read_stream(
                    KafkaSource::new(&bootstrap)
                        .topic("trades")
                        .starting_offsets(StartingOffsets::Earliest)
                        .max_offsets_per_trigger(400)
                        .json_values(trade_schema()),
                )
                .await?
                .with_watermark("event_time", "10 seconds")?;
            let query = minute_metrics(trades)?
                .write_stream()
                .sink(
                    KafkaSink::new(&bootstrap)
                        .topic("minute-bars")
                        .json_values()
                        .key_column("symbol")
                        .exactly_once(&sink_log),
                )
                .output_mode(OutputMode::Append)
                .trigger(Trigger::AvailableNow)
                .checkpoint(&chk)
                .query_name("minute_bars")
                .start()
                .await?;
            query.await_termination().await?;
            print_progress(label, &query.recent_progress());
            // The archive: minute-bars -> parquet, exactly once.
            let bars = ctx
                .read_stream(
                    KafkaSource::new(&bootstrap)
                        .topic("minute-bars")
                        .starting_offsets(StartingOffsets::Earliest)
                        .json_values(bar_schema()),
                )
                .await?;
            let archive_query = bars
                .select(
                    bar_schema()
                        .fields()
                        .iter()
                        .map(|f| col(f.name()))
                        .collect::<Vec<_>>(),
                )?
                .write_stream()
                .sink(ParquetSink::new(&archive))
                .trigger(Trigger::AvailableNow)
                .checkpoint(&archive_chk)
                .start()
                .await?;
            archive_query.await_termination().await?;
            anyhow::Ok(query.recent_progress())
        }
    };

    println!(
        "\n1. First wave: {} trades; the stream runs (AvailableNow)",
        first.len()
    );
    send(&first);
    let run1 = stream_once("run 1").await?;
    println!(
        "\n2. Second wave: {} trades, {LATE_TRADES} of them minutes late; the stream resumes",
        second.len()
    );
    send(&second);
    let run2 = stream_once("run 2").await?;
    let dropped: u64 = run1
        .iter()
        .chain(&run2)
        .filter_map(|p| p.state_operators.first())
        .map(|s| s.num_rows_dropped_by_watermark)
        .sum();

    // Every bar in the topic once; the archive holds the same bars.
    let messages = consume_all(&bootstrap, "minute-bars");
    let values = arrow::array::StringArray::from(kafka_broker::values(&messages));
    let decoded = tidemill::connectors::kafka::decode_json_values(&values, &bar_schema())?;
    ensure!(
        decoded.errors.is_empty(),
        "bars that do not decode: {:?}",
        decoded.errors
    );
    let streamed = bars(&[decoded.batch]);
    let archived = bars(
        &ParquetSink::read_committed(&ctx, &path("archive"))
            .await?
            .collect()
            .await?,
    );
    ensure!(
        streamed == archived,
        "the parquet archive differs from the topic"
    );

    println!("\n3. Reprocessing the whole topic from the earliest offset as a batch job");
    let all_trades = KafkaSource::new(&bootstrap)
        .topic("trades")
        .starting_offsets(StartingOffsets::Earliest)
        .json_values(trade_schema())
        .read_batch(&ctx)
        .await?;
    let report = minute_metrics(all_trades)?.sort(vec![
        col("minute").sort(true, false),
        col("symbol").sort(true, false),
        col("exchange").sort(true, false),
    ])?;
    let report_batches = report.clone().collect().await?;
    let final_report = bars(&report_batches);
    println!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&report_batches)?
    );

    // Stream versus batch.
    let mut equal = 0;
    let mut touched_by_late = 0;
    for (key, bar) in &streamed {
        let full = final_report
            .get(key)
            .ok_or_else(|| anyhow::anyhow!("streamed bar {key:?} not in the report"))?;
        if same(bar, full) {
            equal += 1;
        } else {
            ensure!(
                late_minutes.contains(&key.0),
                "bar {key:?} differs without late trades: {bar:?} vs {full:?}"
            );
            touched_by_late += 1;
        }
    }
    // A bar the stream did not emit is still open: its minute ends after
    // the final watermark (the last event time less 10 s).
    let watermark = second
        .iter()
        .chain(&first)
        .map(|(_, t)| *t)
        .max()
        .unwrap_or(0)
        - 10_000;
    for key in final_report.keys() {
        if !streamed.contains_key(key) {
            ensure!(
                key.0 + MINUTE_MS > watermark || late_minutes.contains(&key.0),
                "bar {key:?} is closed but was never streamed"
            );
        }
    }
    ensure!(
        dropped as usize == LATE_TRADES,
        "the stream dropped {dropped} late trades, not {LATE_TRADES}"
    );
    println!(
        "\n{} bars streamed to minute-bars (each exactly once) and archived to parquet; {equal} equal the batch \
         report, {touched_by_late} differ only by the {dropped} late trades the stream dropped; the report has {} \
         bars (the last minute is still open in the stream).",
        streamed.len(),
        final_report.len()
    );
    println!("Done in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}
