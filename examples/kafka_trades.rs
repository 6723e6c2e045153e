//! Per-minute trading metrics from a Kafka topic, end to end: streamed
//! exactly once to another topic and archived to a Delta Lake table, then
//! the whole topic reprocessed from its earliest offset as a batch job.
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
//!    symbol and exchange; the main example's, in `examples/common/mod.rs`)
//!    is written once per minute, when complete, to
//!    the topic `minute-bars` by the exactly-once `KafkaSink`. A second
//!    query archives `minute-bars` to a Delta table with the exactly-once
//!    `DeltaSink` (one table version per micro-batch). Both run with
//!    `Trigger::AvailableNow` twice, with the second wave of trades in
//!    between, resuming from their checkpoints. The example prints the
//!    bars read back from the table by deltalake's own DataFusion table
//!    provider.
//! 3. **Reprocess**: `KafkaSource::read_batch` reads `trades` from the
//!    earliest offset as a batch DataFrame and runs the same
//!    [`minute_metrics`]: the final, complete report, late trades included.
//!
//! The table is `target/lake/kafka_minute_bars` in the workspace, or the
//! path in `TIDEMILL_KAFKA_TRADES_TABLE`; each run writes it afresh (it
//! removes the Delta table a previous run left). Any Delta reader can query
//! it after the run (the README shows how).
//!
//! The example checks that every bar in `minute-bars` appears exactly once,
//! that the Delta table holds the same bars, each exactly once (one table
//! version per micro-batch of the archive, as many rows as they wrote), and
//! that each equals the batch report's row unless late trades fell into its
//! minute.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::ensure;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use tidemill::QueryProgress;
use tidemill::connectors::kafka::{KafkaSink, KafkaSource, StartingOffsets};
use tidemill::prelude::*;
use tidemill_harness::kafka_broker::{self, Broker, Out, consume_all, create_topic, produce};

use common::{
    MINUTE_MS, START_MS, Trade, check_exactly_once, clear_table, metrics_by_key, minute_metrics,
    read_delta, table_location, trade_schema,
};

/// The environment variable naming the Delta table's path.
const TABLE_ENV: &str = "TIDEMILL_KAFKA_TRADES_TABLE";

/// Minutes of trading in each wave, and trades per second.
const FIRST_WAVE_MINUTES: i64 = 5;
const SECOND_WAVE_MINUTES: i64 = 3;
const TRADES_PER_SECOND: i64 = 4;
/// The watermark delay exceeds the largest disorder of on-time trades.
const MAX_DISORDER_MS: i64 = 8_000;
const LATE_TRADES: usize = 12;

/// The schema of the bars in `minute-bars` (the JSON the sink writes).
fn bar_schema() -> SchemaRef {
    let time = || DataType::Timestamp(TimeUnit::Millisecond, None);
    Arc::new(Schema::new(vec![
        Field::new("window_start", time(), false),
        Field::new("window_end", time(), false),
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
            out.push((message(&Trade::random(rng, event_ms)), event_ms));
        }
    }
    out
}

/// `trade` as a message: its JSON, keyed by symbol.
fn message(trade: &Trade) -> Out {
    let Trade {
        symbol,
        exchange,
        price,
        quantity,
        event_time_ms,
    } = *trade;
    let time = chrono::DateTime::from_timestamp_millis(event_time_ms)
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
    let table: PathBuf = table_location(TABLE_ENV, "kafka_minute_bars");
    clear_table(&table)?;
    let table_path = table.to_string_lossy().into_owned();
    println!("Delta table of the bars: {table_path}");

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
        let message = message(&Trade::random(&mut rng, event_ms));
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
            table_path.clone(),
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
            // The archive: minute-bars -> the Delta table, exactly once.
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
                .sink(DeltaSink::new(&archive))
                .trigger(Trigger::AvailableNow)
                .checkpoint(&archive_chk)
                .start()
                .await?;
            archive_query.await_termination().await?;
            anyhow::Ok((query.recent_progress(), archive_query.recent_progress()))
        }
    };

    println!(
        "\n1. First wave: {} trades; the stream runs (AvailableNow)",
        first.len()
    );
    send(&first);
    let (run1, archive1) = stream_once("run 1").await?;
    println!(
        "\n2. Second wave: {} trades, {LATE_TRADES} of them minutes late; the stream resumes",
        second.len()
    );
    send(&second);
    let (run2, archive2) = stream_once("run 2").await?;
    let dropped: u64 = run1
        .iter()
        .chain(&run2)
        .filter_map(|p| p.state_operators.first())
        .map(|s| s.num_rows_dropped_by_watermark)
        .sum();

    // Every bar in the topic once; the Delta table holds the same bars,
    // each once, one version per archive batch.
    let messages = consume_all(&bootstrap, "minute-bars");
    let values = arrow::array::StringArray::from(kafka_broker::values(&messages));
    let decoded = tidemill::connectors::kafka::decode_json_values(&values, &bar_schema())?;
    ensure!(
        decoded.errors.is_empty(),
        "bars that do not decode: {:?}",
        decoded.errors
    );
    let streamed = metrics_by_key(ctx.read_batch(decoded.batch)?).await?;
    let (archive_df, delta_table) = read_delta(&ctx, &table).await?;
    let archive_batches = archive_df
        .sort(vec![
            col("window_start").sort(true, false),
            col("symbol").sort(true, false),
            col("exchange").sort(true, false),
        ])?
        .collect()
        .await?;
    println!(
        "\nThe bars in the Delta table {table_path} (read back by deltalake's table provider):\n{}",
        arrow::util::pretty::pretty_format_batches(&archive_batches)?
    );
    let archived = metrics_by_key(ctx.read_batches(archive_batches)?).await?;
    let archive_progress: Vec<QueryProgress> = archive1.into_iter().chain(archive2).collect();
    check_exactly_once(&delta_table, &archive_progress, archived.len()).await?;
    ensure!(
        streamed == archived,
        "the Delta table's bars differ from the topic's"
    );

    println!("\n3. Reprocessing the whole topic from the earliest offset as a batch job");
    let all_trades = KafkaSource::new(&bootstrap)
        .topic("trades")
        .starting_offsets(StartingOffsets::Earliest)
        .json_values(trade_schema())
        .read_batch(&ctx)
        .await?;
    let report = minute_metrics(all_trades)?.sort(vec![
        col("window_start").sort(true, false),
        col("symbol").sort(true, false),
        col("exchange").sort(true, false),
    ])?;
    let report_batches = report.clone().collect().await?;
    let final_report = metrics_by_key(ctx.read_batches(report_batches.clone())?).await?;
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
        if bar.same_as(full) {
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
        "\n{} bars streamed to minute-bars and archived to the Delta table {table_path} (each exactly once); {equal} equal the batch \
         report, {touched_by_late} differ only by the {dropped} late trades the stream dropped; the report has {} \
         bars (the last minute is still open in the stream).",
        streamed.len(),
        final_report.len()
    );
    println!("Done in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}
