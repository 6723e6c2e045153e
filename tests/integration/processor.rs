//! Arbitrary stateful processing (`transform_with_state`), with Spark 4's
//! semantics: per-key value, list and map state kept across batches and
//! restarts, time to live in processing time, event-time and
//! processing-time timers that fire once, in order, never after being
//! deleted, and in a batch without data; initial state; late rows dropped
//! and counted; the declared output schema enforced; what cannot run
//! refused at start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt64Type};
use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::processor::{
    ExpiredTimer, GroupKey, KeyRows, ListState, MapState, ProcessorContext, ProcessorResult,
    StateDeclarations, StatefulProcessor, TimeMode, ValueState,
};
use tidemill::{QueryOptions, StreamingQuery, TidemillError};

use crate::common::{timed_rows as events, timed_schema as schema};

/// Per symbol: the row count (a value), every price (a list) and a count
/// per whole price (a map); emits, per batch and symbol, the running
/// figures.
#[derive(Clone)]
struct Tally {
    count: ValueState<i64>,
    prices: ListState<f64>,
    by_price: MapState<i64, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            count: ValueState::new("count"),
            prices: ListState::new("prices"),
            by_price: MapState::new("by_price"),
        }
    }
}

fn tally_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("sum", DataType::Float64, false),
        Field::new("distinct_prices", DataType::UInt64, false),
        Field::new("top_price_count", DataType::UInt64, false),
    ]))
}

impl StatefulProcessor for Tally {
    fn output_schema(&self) -> SchemaRef {
        tally_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.count)?;
        states.declare(&self.prices)?;
        states.declare(&self.by_price)
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let prices = rows.column(1).as_primitive::<Float64Type>();
        let count = self.count.get(ctx)?.unwrap_or(0) + rows.num_rows() as i64;
        self.count.set(ctx, &count)?;
        for price in prices.values() {
            self.prices.append(ctx, price)?;
            let whole = *price as i64;
            let seen = self.by_price.get(ctx, &whole)?.unwrap_or(0);
            self.by_price.insert(ctx, &whole, &(seen + 1))?;
        }
        let all = self.prices.get(ctx)?;
        let entries = self.by_price.entries(ctx)?;
        // Map keys come back in order: the last is the highest price.
        let top = entries.last().map(|(_, n)| *n).unwrap_or(0);
        let symbol: String = key.decode()?;
        Ok(vec![RecordBatch::try_new(
            tally_schema(),
            vec![
                Arc::new(StringArray::from(vec![symbol])),
                Arc::new(Int64Array::from(vec![count])),
                Arc::new(Float64Array::from(vec![all.iter().sum::<f64>()])),
                Arc::new(UInt64Array::from(vec![entries.len() as u64])),
                Arc::new(UInt64Array::from(vec![top])),
            ],
        )?])
    }
}

/// `(symbol, count, sum, distinct prices, top price count)` rows, sorted.
fn tally_rows(batches: &[RecordBatch]) -> Vec<(String, i64, f64, u64, u64)> {
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            rows.push((
                b.column(0).as_string::<i32>().value(i).to_string(),
                b.column(1).as_primitive::<Int64Type>().value(i),
                b.column(2).as_primitive::<Float64Type>().value(i),
                b.column(3).as_primitive::<UInt64Type>().value(i),
                b.column(4).as_primitive::<UInt64Type>().value(i),
            ));
        }
    }
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rows
}

fn ctx_with(partitions: usize) -> SessionContext {
    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions))
}

/// A context on `partitions` partitions, a stream of [`schema`] rows, a
/// memory sink and a temporary checkpoint.
fn setup(partitions: usize) -> (SessionContext, MemoryStream, MemorySink, tempfile::TempDir) {
    (
        ctx_with(partitions),
        MemoryStream::new(schema()),
        MemorySink::new(),
        tempfile::tempdir().unwrap(),
    )
}

async fn start_with(
    df: DataFrame,
    sink: &MemorySink,
    checkpoint: &std::path::Path,
    mode: OutputMode,
    trigger: Option<Trigger>,
) -> tidemill::Result<StreamingQuery> {
    let mut writer = df
        .write_stream()
        .sink(sink.clone())
        .output_mode(mode)
        .checkpoint(checkpoint.to_str().unwrap())
        .options(QueryOptions::default());
    if let Some(trigger) = trigger {
        writer = writer.trigger(trigger);
    }
    writer.start().await
}

/// The three state types, per key, within one batch (rows of a key spread
/// over every partition) and across batches, for 1 to 8 partitions and
/// several runs each: the figures are the same whatever the split.
#[tokio::test]
async fn value_list_and_map_state_per_key_across_batches_and_partitions() {
    for partitions in [1, 2, 3, 8] {
        for _run in 0..3 {
            let (ctx, stream, sink, checkpoint) = setup(partitions);
            let df = ctx
                .read_stream(stream.clone())
                .await
                .unwrap()
                .transform_with_state(
                    &["symbol"],
                    Tally::new(),
                    TimeMode::None,
                    OutputMode::Update,
                )
                .unwrap();
            let query = start_with(df, &sink, checkpoint.path(), OutputMode::Update, None)
                .await
                .unwrap();
            for round in 0..4 {
                stream
                    .push(events(&[
                        (Some("a"), 1.5 + round as f64, 1),
                        (Some("b"), 2.0, 2),
                        (Some("a"), 1.25, 3),
                    ]))
                    .unwrap();
            }
            query.process_all_available().await.unwrap();
            // a: 1.5, 2.5, 3.5, 4.5 and 1.25 four times; b: 2.0 four times.
            assert_eq!(
                tally_rows(&sink.batches()),
                [
                    ("a".into(), 8, 12.0 + 5.0, 4, 1),
                    ("b".into(), 4, 8.0, 1, 4)
                ],
                "{partitions} partitions"
            );
            stream.push(events(&[(Some("b"), 9.0, 4)])).unwrap();
            query.process_all_available().await.unwrap();
            let rows = tally_rows(&sink.batches());
            assert_eq!(rows.len(), 3, "one row per key per batch: {rows:?}");
            assert!(rows.contains(&("b".into(), 5, 17.0, 2, 1)), "{rows:?}");
            query.stop().await.unwrap();
        }
    }
}

/// A restart from the checkpoint continues every variable where the last
/// committed batch left it, and the state is the processor's, not the
/// input's: keys never seen again keep theirs.
#[tokio::test]
async fn state_survives_a_restart() {
    let (ctx, stream, sink, checkpoint) = setup(2);
    let start = |sink: MemorySink| {
        let (ctx, stream, path) = (ctx.clone(), stream.clone(), checkpoint.path().to_owned());
        async move {
            let df = ctx
                .read_stream(stream)
                .await
                .unwrap()
                .transform_with_state(
                    &["symbol"],
                    Tally::new(),
                    TimeMode::None,
                    OutputMode::Update,
                )
                .unwrap();
            start_with(df, &sink, &path, OutputMode::Update, None)
                .await
                .unwrap()
        }
    };
    let query = start(sink.clone()).await;
    stream
        .push(events(&[(Some("a"), 1.0, 1), (Some("b"), 2.0, 1)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();

    let after = MemorySink::new();
    let query = start(after.clone()).await;
    stream.push(events(&[(Some("a"), 3.0, 2)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(tally_rows(&after.batches()), [("a".into(), 2, 4.0, 2, 1)]);
    query.stop().await.unwrap();
}

/// Event-time timers: one registered per key at its latest row + 10 s
/// (moved on each batch: the old one deleted), and one that is deleted
/// before it is due. Each due timer fires once, in time order across keys,
/// in the batch whose watermark reaches it (a batch without data, if
/// needed); a deleted timer never fires.
#[derive(Clone)]
struct Sessions;

const SESSION_GAP_MS: i64 = 10_000;

fn fired_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("fired_at", DataType::Int64, false),
        Field::new("watermark", DataType::Int64, true),
    ]))
}

fn fired(key: &GroupKey, timer: ExpiredTimer) -> ProcessorResult<Vec<RecordBatch>> {
    let symbol: String = key.decode()?;
    Ok(vec![RecordBatch::try_new(
        fired_schema(),
        vec![
            Arc::new(StringArray::from(vec![symbol])),
            Arc::new(Int64Array::from(vec![timer.time_ms])),
            Arc::new(Int64Array::from(vec![timer.watermark_ms])),
        ],
    )?])
}

impl StatefulProcessor for Sessions {
    fn output_schema(&self) -> SchemaRef {
        fired_schema()
    }

    fn init(&mut self, _states: &mut StateDeclarations) -> ProcessorResult<()> {
        Ok(())
    }

    fn handle_input_rows(
        &mut self,
        _key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let times = rows
            .column(2)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let latest = times.values().iter().copied().max().unwrap();
        for old in ctx.list_timers()? {
            assert!(ctx.delete_timer(old)?);
        }
        ctx.register_timer(latest + SESSION_GAP_MS)?;
        // A price of -1 asks for a timer that is deleted at once.
        let prices = rows.column(1).as_primitive::<Float64Type>();
        if prices.values().contains(&-1.0) {
            ctx.register_timer(latest + 1)?;
            assert!(ctx.delete_timer(latest + 1)?);
            assert!(!ctx.delete_timer(latest + 1)?);
        }
        Ok(Vec::new())
    }

    fn handle_expired_timer(
        &mut self,
        key: &GroupKey,
        timer: ExpiredTimer,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        // Already deleted when its handler runs.
        assert!(!ctx.list_timers()?.contains(&timer.time_ms));
        fired(key, timer)
    }
}

fn fired_rows(batches: &[RecordBatch]) -> Vec<(String, i64)> {
    batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |i| {
                (
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1).as_primitive::<Int64Type>().value(i),
                )
            })
        })
        .collect()
}

#[tokio::test]
async fn event_time_timers_fire_once_in_order_and_deleted_ones_never() {
    for partitions in [1, 3] {
        let (ctx, stream, sink, checkpoint) = setup(partitions);
        let df = ctx
            .read_stream(stream.clone())
            .await
            .unwrap()
            .with_watermark("event_time", "0 seconds")
            .unwrap()
            .transform_with_state(
                &["symbol"],
                Sessions,
                TimeMode::EventTime,
                OutputMode::Append,
            )
            .unwrap();
        let query = start_with(df, &sink, checkpoint.path(), OutputMode::Append, None)
            .await
            .unwrap();
        // b's timer at 12 s, a's at 15 s (its first one at 11 s is moved).
        stream
            .push(events(&[(Some("a"), 1.0, 1), (Some("b"), -1.0, 2)]))
            .unwrap();
        query.process_all_available().await.unwrap();
        stream.push(events(&[(Some("a"), 1.0, 5)])).unwrap();
        query.process_all_available().await.unwrap();
        assert!(fired_rows(&sink.batches()).is_empty());
        // The watermark reaches 12 s: b fires (in the batch without data
        // that follows), a does not; then 30 s: a fires.
        stream.push(events(&[(Some("c"), 1.0, 12)])).unwrap();
        query.process_all_available().await.unwrap();
        assert_eq!(fired_rows(&sink.batches()), [("b".into(), 12_000)]);
        stream.push(events(&[(Some("d"), 1.0, 30)])).unwrap();
        query.process_all_available().await.unwrap();
        assert_eq!(
            fired_rows(&sink.batches()),
            [
                ("b".into(), 12_000),
                ("a".into(), 15_000),
                ("c".into(), 22_000)
            ],
            "{partitions} partitions: each once, in time order"
        );
        // The watermark each fired with was at or past the timer.
        for b in sink.batches() {
            for i in 0..b.num_rows() {
                let at = b.column(1).as_primitive::<Int64Type>().value(i);
                let watermark = b.column(2).as_primitive::<Int64Type>().value(i);
                assert!(watermark >= at, "fired at {at} with watermark {watermark}");
            }
        }
        // The timer figures, summed over the batches: a (1 s, then moved
        // to 5 s), b (2 s, and one deleted at once), c, d; three fired.
        let progress = query.recent_progress();
        let metric = |name: &str| -> u64 {
            progress
                .iter()
                .flat_map(|p| p.state_operators.iter())
                .map(|s| s.custom_metrics.get(name).copied().unwrap_or(0))
                .sum()
        };
        assert_eq!(metric("timers_registered"), 6);
        assert_eq!(metric("timers_deleted"), 2);
        assert_eq!(metric("timers_fired"), 3);
        let last = &progress.last().unwrap().state_operators[0];
        assert_eq!(last.custom_metrics["timers_total"], 1, "d's");
        query.stop().await.unwrap();
    }
}

/// Rows at or below the watermark are dropped before the processor sees
/// them, and counted in the operator's progress.
#[tokio::test]
async fn late_rows_are_dropped_and_counted() {
    let (ctx, stream, sink, checkpoint) = setup(2);
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap()
        .transform_with_state(
            &["symbol"],
            Tally::new(),
            TimeMode::EventTime,
            OutputMode::Append,
        )
        .unwrap();
    let query = start_with(df, &sink, checkpoint.path(), OutputMode::Append, None)
        .await
        .unwrap();
    stream.push(events(&[(Some("a"), 1.0, 100)])).unwrap();
    query.process_all_available().await.unwrap();
    // Watermark 95 s: 95 and 90 are late, 96 is not.
    stream
        .push(events(&[
            (Some("a"), 2.0, 95),
            (Some("a"), 4.0, 96),
            (Some("b"), 8.0, 90),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    let rows = tally_rows(&sink.batches());
    assert_eq!(
        rows,
        [("a".into(), 1, 1.0, 1, 1), ("a".into(), 2, 5.0, 2, 1)],
        "b's only row was late"
    );
    let dropped: u64 = query
        .recent_progress()
        .iter()
        .flat_map(|p| p.state_operators.iter())
        .map(|s| s.num_rows_dropped_by_watermark)
        .sum();
    assert_eq!(dropped, 2);
    query.stop().await.unwrap();
}

/// A processing-time timer fires once the batch clock passes it, in a
/// batch without new data.
#[derive(Clone)]
struct Reminder;

impl StatefulProcessor for Reminder {
    fn output_schema(&self) -> SchemaRef {
        fired_schema()
    }

    fn init(&mut self, _states: &mut StateDeclarations) -> ProcessorResult<()> {
        Ok(())
    }

    fn handle_input_rows(
        &mut self,
        _key: &GroupKey,
        _rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        ctx.register_timer(ctx.processing_time_ms() + 300)?;
        Ok(Vec::new())
    }

    fn handle_expired_timer(
        &mut self,
        key: &GroupKey,
        timer: ExpiredTimer,
        _ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        assert!(timer.processing_time_ms >= timer.time_ms);
        fired(key, timer)
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn processing_time_timers_fire_in_a_batch_without_data() {
    let (ctx, stream, sink, checkpoint) = setup(2);
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .transform_with_state(
            &["symbol"],
            Reminder,
            TimeMode::ProcessingTime,
            OutputMode::Append,
        )
        .unwrap();
    let query = start_with(
        df,
        &sink,
        checkpoint.path(),
        OutputMode::Append,
        Some(Trigger::ProcessingTime(Duration::from_millis(50))),
    )
    .await
    .unwrap();
    stream
        .push(events(&[(Some("a"), 1.0, 1), (Some("b"), 1.0, 1)]))
        .unwrap();
    wait_for("the timers", || fired_rows(&sink.batches()).len() == 2).await;
    let progress = query.recent_progress();
    let last = progress.last().unwrap();
    assert_eq!(
        last.num_input_rows, 0,
        "the timers fired in a batch without data"
    );
    // Once: later triggers emit nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fired_rows(&sink.batches()).len(), 2);
    query.stop().await.unwrap();
}

/// A value with a time to live is gone once that much processing time has
/// passed since it was written; a list's elements and a map's entries
/// expire one by one.
#[derive(Clone)]
struct Remember {
    last: ValueState<f64>,
    recent: ListState<f64>,
    seen: MapState<String, i64>,
}

fn remember_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("previous", DataType::Float64, true),
        Field::new("recent", DataType::Int64, false),
        Field::new("seen", DataType::Int64, false),
    ]))
}

impl StatefulProcessor for Remember {
    fn output_schema(&self) -> SchemaRef {
        remember_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.last)?;
        states.declare(&self.recent)?;
        states.declare(&self.seen)
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let previous = self.last.get(ctx)?;
        let price = rows.column(1).as_primitive::<Float64Type>().value(0);
        self.last.set(ctx, &price)?;
        self.recent.append(ctx, &price)?;
        let recent = self.recent.get(ctx)?.len() as i64;
        self.seen.insert(ctx, &price.to_string(), &1)?;
        let seen = self.seen.keys(ctx)?.len() as i64;
        let symbol: String = key.decode()?;
        Ok(vec![RecordBatch::try_new(
            remember_schema(),
            vec![
                Arc::new(StringArray::from(vec![symbol])),
                Arc::new(Float64Array::from(vec![previous])),
                Arc::new(Int64Array::from(vec![recent])),
                Arc::new(Int64Array::from(vec![seen])),
            ],
        )?])
    }
}

#[tokio::test]
async fn values_with_a_time_to_live_expire_in_processing_time() {
    let (ctx, stream, sink, checkpoint) = setup(2);
    let ttl = Duration::from_millis(1_500);
    let processor = Remember {
        last: ValueState::new("last").with_ttl(ttl),
        recent: ListState::new("recent").with_ttl(ttl),
        seen: MapState::new("seen").with_ttl(ttl),
    };
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .transform_with_state(&["symbol"], processor, TimeMode::None, OutputMode::Update)
        .unwrap();
    let query = start_with(df, &sink, checkpoint.path(), OutputMode::Update, None)
        .await
        .unwrap();
    let last_row = |sink: &MemorySink| {
        let batches = sink.batches();
        let b = batches.last().unwrap();
        let previous = b.column(1).as_primitive::<Float64Type>();
        (
            previous.is_valid(0).then(|| previous.value(0)),
            b.column(2).as_primitive::<Int64Type>().value(0),
            b.column(3).as_primitive::<Int64Type>().value(0),
        )
    };
    let started = Instant::now();
    stream.push(events(&[(Some("a"), 1.0, 1)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(last_row(&sink), (None, 1, 1));
    stream.push(events(&[(Some("a"), 2.0, 2)])).unwrap();
    query.process_all_available().await.unwrap();
    if started.elapsed() < ttl {
        assert_eq!(
            last_row(&sink),
            (Some(1.0), 2, 2),
            "within the time to live"
        );
    }
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    stream.push(events(&[(Some("a"), 3.0, 3)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        last_row(&sink),
        (None, 1, 1),
        "the value, the list's elements and the map's entries expired"
    );
    let state = query.last_progress().unwrap().state_operators[0].clone();
    assert_eq!(
        state.custom_metrics["values_removed_by_ttl"], 5,
        "a value, two elements and two entries: {state:?}"
    );
    assert_eq!(state.custom_metrics["rows.recent"], 1);
    assert_eq!(
        state.num_rows_total, 3,
        "the new value, element and entry: {state:?}"
    );
    query.stop().await.unwrap();
}

/// The initial state seeds each key's state in the first batch, before its
/// rows; a restart does not apply it again.
#[derive(Clone)]
struct Seeded(Tally);

impl StatefulProcessor for Seeded {
    fn output_schema(&self) -> SchemaRef {
        self.0.output_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        self.0.init(states)
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        self.0.handle_input_rows(key, rows, ctx)
    }

    fn handle_initial_state(
        &mut self,
        _key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<()> {
        let seed = rows.column_by_name("count").unwrap();
        let seed = seed
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .sum::<i64>();
        self.0.count.set(ctx, &seed)
    }
}

#[tokio::test]
async fn initial_state_seeds_the_first_batch_only() {
    let ctx = ctx_with(2);
    let stream = MemoryStream::new(schema());
    let checkpoint = tempfile::tempdir().unwrap();
    let initial = ctx
        .read_batch(
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("symbol", DataType::Utf8, false),
                    Field::new("count", DataType::Int64, false),
                ])),
                vec![
                    Arc::new(StringArray::from(vec!["a", "z"])),
                    Arc::new(Int64Array::from(vec![100, 7])),
                ],
            )
            .unwrap(),
        )
        .unwrap();
    let start = |sink: MemorySink| {
        let (ctx, stream, path, initial) = (
            ctx.clone(),
            stream.clone(),
            checkpoint.path().to_owned(),
            initial.clone(),
        );
        async move {
            let df = ctx
                .read_stream(stream)
                .await
                .unwrap()
                .transform_with_state_and_initial_state(
                    &["symbol"],
                    Seeded(Tally::new()),
                    TimeMode::None,
                    OutputMode::Update,
                    initial,
                )
                .unwrap();
            start_with(df, &sink, &path, OutputMode::Update, None)
                .await
                .unwrap()
        }
    };
    let sink = MemorySink::new();
    let query = start(sink.clone()).await;
    stream
        .push(events(&[(Some("a"), 1.0, 1), (Some("b"), 1.0, 1)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        tally_rows(&sink.batches()),
        [("a".into(), 101, 1.0, 1, 1), ("b".into(), 1, 1.0, 1, 1)]
    );
    query.stop().await.unwrap();
    let sink = MemorySink::new();
    let query = start(sink.clone()).await;
    stream
        .push(events(&[(Some("a"), 1.0, 2), (Some("z"), 1.0, 2)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        tally_rows(&sink.batches()),
        [("a".into(), 102, 2.0, 1, 2), ("z".into(), 8, 1.0, 1, 1)],
        "z was seeded in the first batch; nothing was applied twice"
    );
    query.stop().await.unwrap();
}

/// Rows that do not fit the declared output schema stop the query with an
/// error naming the processor's callback, the key and the column.
#[derive(Clone)]
struct WrongType;

impl StatefulProcessor for WrongType {
    fn output_schema(&self) -> SchemaRef {
        fired_schema()
    }

    fn init(&mut self, _states: &mut StateDeclarations) -> ProcessorResult<()> {
        Ok(())
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        _rows: &KeyRows<'_>,
        _ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let symbol: String = key.decode()?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("fired_at", DataType::Float64, false),
            Field::new("watermark", DataType::Int64, true),
        ]));
        Ok(vec![RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![symbol])),
                Arc::new(Float64Array::from(vec![1.0])),
                Arc::new(Int64Array::from(vec![None])),
            ],
        )?])
    }
}

#[tokio::test]
async fn rows_of_another_schema_are_an_error_naming_the_column() {
    let (ctx, stream, sink, checkpoint) = setup(2);
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .transform_with_state(&["symbol"], WrongType, TimeMode::None, OutputMode::Append)
        .unwrap();
    let query = start_with(df, &sink, checkpoint.path(), OutputMode::Append, None)
        .await
        .unwrap();
    stream.push(events(&[(Some("a"), 1.0, 1)])).unwrap();
    let err = query.process_all_available().await.unwrap_err().to_string();
    for needed in [
        "handle_input_rows",
        "symbol=a",
        "'fired_at'",
        "Float64",
        "Int64",
    ] {
        assert!(err.contains(needed), "{needed} missing from: {err}");
    }
    assert!(sink.batches().is_empty());
}

/// What cannot run is refused when the query starts, saying why and what
/// to do.
#[tokio::test]
async fn refusals_at_start() {
    let ctx = ctx_with(2);
    let stream = MemoryStream::new(schema());
    let checkpoint = tempfile::tempdir().unwrap();
    let read = || async { ctx.read_stream(stream.clone()).await.unwrap() };
    let refused = |result: tidemill::Result<StreamingQuery>| match result {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected a refusal"),
    };
    let sink = MemorySink::new();

    let df = read()
        .await
        .transform_with_state(
            &["symbol"],
            Tally::new(),
            TimeMode::None,
            OutputMode::Update,
        )
        .unwrap();
    let err = refused(start_with(df, &sink, checkpoint.path(), OutputMode::Append, None).await);
    assert!(
        err.contains("output mode update") && err.contains("append"),
        "{err}"
    );

    let df = read()
        .await
        .transform_with_state(
            &["symbol"],
            Tally::new(),
            TimeMode::None,
            OutputMode::Complete,
        )
        .unwrap();
    let err = refused(start_with(df, &sink, checkpoint.path(), OutputMode::Complete, None).await);
    assert!(err.contains("complete"), "{err}");

    let df = read()
        .await
        .transform_with_state(
            &["symbol"],
            Sessions,
            TimeMode::EventTime,
            OutputMode::Append,
        )
        .unwrap();
    let err = refused(start_with(df, &sink, checkpoint.path(), OutputMode::Append, None).await);
    assert!(
        err.contains("watermark") && err.contains("with_watermark"),
        "{err}"
    );

    let df = read()
        .await
        .transform_with_state(
            &["symbol"],
            Tally::new(),
            TimeMode::None,
            OutputMode::Append,
        )
        .unwrap()
        .aggregate(
            vec![col("symbol")],
            vec![datafusion::functions_aggregate::expr_fn::count(lit(1))],
        )
        .unwrap();
    let err = refused(start_with(df, &sink, checkpoint.path(), OutputMode::Append, None).await);
    assert!(err.contains("after transform_with_state"), "{err}");

    let err = read()
        .await
        .transform_with_state(&["nope"], Tally::new(), TimeMode::None, OutputMode::Append)
        .unwrap_err()
        .to_string();
    assert!(err.contains("'nope'"), "{err}");

    let batch = ctx.read_batch(events(&[(Some("a"), 1.0, 1)])).unwrap();
    let err = batch
        .transform_with_state(
            &["symbol"],
            Tally::new(),
            TimeMode::None,
            OutputMode::Append,
        )
        .unwrap_err();
    assert!(matches!(err, TidemillError::Config(_)), "{err}");
}

/// A variable used with another type than it was declared with is an
/// error naming it, not a misread.
#[derive(Clone)]
struct Confused {
    declared: ValueState<i64>,
    used: ValueState<String>,
}

impl StatefulProcessor for Confused {
    fn output_schema(&self) -> SchemaRef {
        fired_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.declared)
    }

    fn handle_input_rows(
        &mut self,
        _key: &GroupKey,
        _rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        self.declared.set(ctx, &1)?;
        self.used.get(ctx)?;
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn a_variable_used_with_another_type_is_an_error() {
    let (ctx, stream, sink, checkpoint) = setup(1);
    let processor = Confused {
        declared: ValueState::new("n"),
        used: ValueState::new("n"),
    };
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .transform_with_state(&["symbol"], processor, TimeMode::None, OutputMode::Append)
        .unwrap();
    let query = start_with(df, &sink, checkpoint.path(), OutputMode::Append, None)
        .await
        .unwrap();
    stream.push(events(&[(Some("a"), 1.0, 1)])).unwrap();
    let err = query.process_all_available().await.unwrap_err().to_string();
    assert!(
        err.contains("'n'") && err.contains("ValueState<i64>"),
        "{err}"
    );
}

/// A processor whose one value variable, `acc`, has the type `T`, optionally
/// with a list variable and a map variable beside it: the form of the
/// processor changes between restarts.
struct Versioned<T> {
    acc: ValueState<T>,
    list: Option<ListState<i64>>,
    map: Option<MapState<String, i64>>,
    step: fn(Option<T>, i64) -> T,
    show: fn(&T) -> (i64, Option<String>),
}

// Not derived: a derive would ask `T: Clone`, and the values need not be.
impl<T> Clone for Versioned<T> {
    fn clone(&self) -> Self {
        Self {
            acc: self.acc.clone(),
            list: self.list.clone(),
            map: self.map.clone(),
            step: self.step,
            show: self.show,
        }
    }
}

fn versioned_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Utf8, true),
    ]))
}

impl<T> StatefulProcessor for Versioned<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + 'static,
{
    fn output_schema(&self) -> SchemaRef {
        versioned_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.acc)?;
        if let Some(list) = &self.list {
            states.declare(list)?;
        }
        if let Some(map) = &self.map {
            states.declare(map)?;
        }
        Ok(())
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let acc = (self.step)(self.acc.get(ctx)?, rows.num_rows() as i64);
        self.acc.set(ctx, &acc)?;
        if let Some(list) = &self.list {
            list.append(ctx, &1)?;
        }
        if let Some(map) = &self.map {
            map.insert(ctx, &"seen".to_string(), &1)?;
        }
        let (a, b) = (self.show)(&acc);
        let symbol: String = key.decode()?;
        Ok(vec![RecordBatch::try_new(
            versioned_schema(),
            vec![
                Arc::new(StringArray::from(vec![symbol])),
                Arc::new(Int64Array::from(vec![a])),
                Arc::new(StringArray::from(vec![b])),
            ],
        )?])
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct AccV1 {
    a: i64,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct AccV2 {
    a: i64,
    b: Option<String>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct AccRetyped {
    a: f64,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct AccRenamed {
    total: i64,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct AccRequired {
    a: i64,
    c: i64,
}

/// A processor behind a box that can still be cloned (the engine runs a
/// clone per core).
trait CloneProcessor: StatefulProcessor {
    fn clone_box(&self) -> Box<dyn CloneProcessor>;
}

impl<P: StatefulProcessor + Clone> CloneProcessor for P {
    fn clone_box(&self) -> Box<dyn CloneProcessor> {
        Box::new(self.clone())
    }
}

/// State schema evolution: a restart whose processor adds a variable,
/// removes one, or adds a nullable field to a value type keeps the saved
/// state (the added field reads as null); a type changed, a field renamed
/// or a new field that is not nullable is refused at start, naming the
/// variable and the field, and leaves the checkpoint usable by the form
/// that wrote it.
#[tokio::test]
async fn state_schema_evolution_keeps_readable_state_and_refuses_the_rest() {
    let ctx = ctx_with(2);
    let stream = MemoryStream::new(schema());
    let checkpoint = tempfile::tempdir().unwrap();
    let run = |processor: Box<dyn FnOnce(DataFrame) -> tidemill::Result<DataFrame>>| {
        let (ctx, stream, path) = (ctx.clone(), stream.clone(), checkpoint.path().to_owned());
        async move {
            let sink = MemorySink::new();
            let df = processor(ctx.read_stream(stream).await.unwrap())?;
            let query = start_with(df, &sink, &path, OutputMode::Update, None).await?;
            query.process_all_available().await?;
            query.stop().await?;
            Ok::<_, TidemillError>(sink)
        }
    };
    let apply = |df: DataFrame, p: Box<dyn CloneProcessor>| {
        struct Boxed(Box<dyn CloneProcessor>);
        impl Clone for Boxed {
            fn clone(&self) -> Self {
                Boxed(self.0.clone_box())
            }
        }
        impl StatefulProcessor for Boxed {
            fn output_schema(&self) -> SchemaRef {
                self.0.output_schema()
            }
            fn init(&mut self, s: &mut StateDeclarations) -> ProcessorResult<()> {
                self.0.init(s)
            }
            fn handle_input_rows(
                &mut self,
                k: &GroupKey,
                r: &KeyRows<'_>,
                c: &mut ProcessorContext<'_>,
            ) -> ProcessorResult<Vec<RecordBatch>> {
                self.0.handle_input_rows(k, r, c)
            }
        }
        df.transform_with_state(&["symbol"], Boxed(p), TimeMode::None, OutputMode::Update)
    };
    let v1 = || -> Box<dyn CloneProcessor> {
        Box::new(Versioned::<AccV1> {
            acc: ValueState::new("acc"),
            list: Some(ListState::new("list")),
            map: None,
            step: |acc, n| AccV1 {
                a: acc.map_or(0, |x| x.a) + n,
            },
            show: |acc| (acc.a, None),
        })
    };
    let v2 = || -> Box<dyn CloneProcessor> {
        Box::new(Versioned::<AccV2> {
            acc: ValueState::new("acc"),
            list: None,
            map: Some(MapState::new("map")),
            step: |acc, n| match acc {
                Some(acc) => AccV2 {
                    a: acc.a + n,
                    b: Some(format!("was {}", acc.b.as_deref().unwrap_or("null"))),
                },
                None => AccV2 { a: n, b: None },
            },
            show: |acc| (acc.a, acc.b.clone()),
        })
    };

    stream
        .push(events(&[(Some("x"), 1.0, 1), (Some("x"), 1.0, 1)]))
        .unwrap();
    let out = run(Box::new(move |df| apply(df, v1()))).await.unwrap();
    assert_eq!(
        out.batches()[0]
            .column(1)
            .as_primitive::<Int64Type>()
            .value(0),
        2
    );

    // Each refused change names the variable and the field, and changes
    // nothing.
    let refusals: Vec<(Box<dyn CloneProcessor>, &str)> = vec![
        (
            Box::new(Versioned::<AccRetyped> {
                acc: ValueState::new("acc"),
                list: None,
                map: None,
                step: |_, n| AccRetyped { a: n as f64 },
                show: |acc| (acc.a as i64, None),
            }),
            "field 'a' changed type from Int64 to Float64",
        ),
        (
            Box::new(Versioned::<AccRenamed> {
                acc: ValueState::new("acc"),
                list: None,
                map: None,
                step: |_, n| AccRenamed { total: n },
                show: |acc| (acc.total, None),
            }),
            "field 'a' (Int64) of the saved values is not in the new type",
        ),
        (
            Box::new(Versioned::<AccRequired> {
                acc: ValueState::new("acc"),
                list: None,
                map: None,
                step: |_, n| AccRequired { a: n, c: n },
                show: |acc| (acc.a, None),
            }),
            "new field 'c' (Int64) is not nullable",
        ),
    ];
    stream.push(events(&[(Some("x"), 1.0, 2)])).unwrap();
    for (processor, expected) in refusals {
        let err = run(Box::new(move |df| apply(df, processor)))
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("state variable 'acc'") && err.contains(expected),
            "{expected} missing from: {err}"
        );
    }

    // The added nullable field reads as null; the removed list and the
    // added map are no obstacle.
    let out = run(Box::new(move |df| apply(df, v2()))).await.unwrap();
    let batch = &out.batches()[0];
    assert_eq!(batch.column(1).as_primitive::<Int64Type>().value(0), 3);
    assert_eq!(batch.column(2).as_string::<i32>().value(0), "was null");

    // And the new form keeps its state across its own restarts.
    stream.push(events(&[(Some("x"), 1.0, 3)])).unwrap();
    let out = run(Box::new(move |df| apply(df, v2()))).await.unwrap();
    let batch = &out.batches()[0];
    assert_eq!(batch.column(1).as_primitive::<Int64Type>().value(0), 4);
    assert_eq!(batch.column(2).as_string::<i32>().value(0), "was was null");
}

/// A running count and sum per key, as a processor emitting typed rows: the
/// same rows, batch by batch, as the SQL aggregation in update mode.
#[derive(Clone)]
struct RunningTotals {
    totals: ValueState<(i64, f64)>,
}

fn running_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
        Field::new("total", DataType::Float64, true),
    ]))
}

impl StatefulProcessor for RunningTotals {
    fn output_schema(&self) -> SchemaRef {
        running_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.totals)
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let prices = rows.column(1).as_primitive::<Float64Type>();
        let (n, total) = self.totals.get(ctx)?.unwrap_or((0, 0.0));
        let totals = (
            n + rows.num_rows() as i64,
            total + prices.values().iter().sum::<f64>(),
        );
        self.totals.set(ctx, &totals)?;
        // Emitted as a typed row: the fields are the output columns.
        #[derive(serde::Serialize)]
        struct Row {
            symbol: Option<String>,
            n: i64,
            total: f64,
        }
        ctx.emit(&Row {
            symbol: key.decode()?,
            n: totals.0,
            total: totals.1,
        })?;
        Ok(Vec::new())
    }
}

/// Property: over random rows (nulls among the keys) in random micro-batch
/// splits, on 1 and 3 partitions, a processor recomputing a running
/// aggregate per key emits exactly what the streaming aggregation emits in
/// update mode, batch by batch, so their final state agrees too.
#[tokio::test]
async fn a_running_aggregate_processor_matches_the_sql_aggregation_over_random_splits() {
    use rand::{Rng, SeedableRng};
    for seed in 0..4u64 {
        for partitions in [1, 3] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let symbols = ["a", "b", "c", "d", "e", "f", "g"];
            let mut batches = Vec::new();
            for _ in 0..rng.random_range(3..8) {
                let rows: Vec<(Option<&str>, f64, i64)> = (0..rng.random_range(0..40))
                    .map(|i| {
                        let symbol = rng
                            .random_bool(0.9)
                            .then(|| symbols[rng.random_range(0..symbols.len())]);
                        (symbol, rng.random_range(0..400) as f64 * 0.25, i)
                    })
                    .collect();
                batches.push(rows);
            }
            let run = |processor: bool| {
                let batches = batches.clone();
                async move {
                    let (ctx, stream, sink, checkpoint) = setup(partitions);
                    let df = ctx.read_stream(stream.clone()).await.unwrap();
                    let df = if processor {
                        df.transform_with_state(
                            &["symbol"],
                            RunningTotals {
                                totals: ValueState::new("totals"),
                            },
                            TimeMode::None,
                            OutputMode::Update,
                        )
                        .unwrap()
                    } else {
                        use datafusion::functions_aggregate::expr_fn::{count, sum};
                        df.aggregate(
                            vec![col("symbol")],
                            vec![count(lit(1)).alias("n"), sum(col("price")).alias("total")],
                        )
                        .unwrap()
                    };
                    let query = start_with(df, &sink, checkpoint.path(), OutputMode::Update, None)
                        .await
                        .unwrap();
                    let mut per_batch = Vec::new();
                    for rows in &batches {
                        stream.push(events(rows)).unwrap();
                        query.process_all_available().await.unwrap();
                        per_batch.push(crate::common::sorted_rows(&sink.batches()));
                    }
                    query.stop().await.unwrap();
                    per_batch
                }
            };
            let (by_processor, by_sql) = (run(true).await, run(false).await);
            assert_eq!(
                by_processor, by_sql,
                "seed {seed}, {partitions} partitions: the processor and the aggregation differ"
            );
        }
    }
}

/// Counts rows per key up to three, then clears the count: `exists`,
/// `get`, `set` and `clear` of a value within one batch's callbacks and
/// across batches (each key's rows of a batch in one call).
#[derive(Clone)]
struct CountToThree {
    count: ValueState<i64>,
}

impl StatefulProcessor for CountToThree {
    fn output_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("count", DataType::Int64, true),
        ]))
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.count)
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let before = if self.count.exists(ctx)? {
            self.count.get(ctx)?.expect("it exists")
        } else {
            0
        };
        let count = before + rows.num_rows() as i64;
        if count >= 3 {
            self.count.clear(ctx)?;
            assert!(!self.count.exists(ctx)?);
        } else {
            self.count.set(ctx, &count)?;
            assert_eq!(self.count.get(ctx)?, Some(count));
        }
        #[derive(serde::Serialize)]
        struct Row {
            symbol: String,
            count: Option<i64>,
        }
        let count = self.count.get(ctx)?;
        ctx.emit(&Row {
            symbol: key.decode()?,
            count,
        })?;
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn a_value_is_read_set_and_cleared_within_and_across_batches() {
    let (ctx, stream, sink, checkpoint) = setup(3);
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .transform_with_state(
            &["symbol"],
            CountToThree {
                count: ValueState::new("count"),
            },
            TimeMode::None,
            OutputMode::Update,
        )
        .unwrap();
    let query = start_with(df, &sink, checkpoint.path(), OutputMode::Update, None)
        .await
        .unwrap();
    let push = |rows: &[(Option<&str>, f64, i64)]| {
        stream.push(events(rows)).unwrap();
    };
    push(&[
        (Some("a"), 1.0, 1),
        (Some("b"), 1.0, 1),
        (Some("b"), 1.0, 1),
    ]);
    query.process_all_available().await.unwrap();
    push(&[(Some("a"), 1.0, 2), (Some("b"), 1.0, 2)]);
    query.process_all_available().await.unwrap();
    push(&[(Some("a"), 1.0, 3), (Some("b"), 1.0, 3)]);
    query.process_all_available().await.unwrap();
    let rows = crate::common::sorted_rows(&sink.batches());
    let expected = [
        "| a      | 1     |",
        "| a      | 2     |",
        "| a      |       |",
        "| b      | 2     |",
        "| b      |       |",
        "| b      | 1     |",
    ];
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(rows, expected);
    let state = query.last_progress().unwrap().state_operators[0].clone();
    assert_eq!(state.custom_metrics["rows.count"], 1, "b's 1; a cleared");
    query.stop().await.unwrap();
}

/// Passes each row on with the running count of its key, keeping the
/// row's event time (or, as `stale`, a fixed old one) in `event_time`.
#[derive(Clone)]
struct Numbered {
    count: ValueState<i64>,
    stale: bool,
}

fn numbered_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, true),
        Field::new(
            "event_time",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("nth", DataType::Int64, false),
    ]))
}

impl StatefulProcessor for Numbered {
    fn output_schema(&self) -> SchemaRef {
        numbered_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.count)
    }

    fn handle_input_rows(
        &mut self,
        _key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let before = self.count.get(ctx)?.unwrap_or(0);
        let n = rows.num_rows() as i64;
        self.count.set(ctx, &(before + n))?;
        let times = if self.stale {
            Arc::new(arrow::array::TimestampMillisecondArray::from(
                vec![0; n as usize],
            ))
        } else {
            Arc::clone(rows.column(2))
        };
        Ok(vec![RecordBatch::try_new(
            numbered_schema(),
            vec![
                Arc::clone(rows.column(0)),
                times,
                Arc::new(Int64Array::from_iter_values(before + 1..=before + n)),
            ],
        )?])
    }
}

/// Chaining: a processor whose output carries the event time (Spark's
/// `eventTimeColumnName`) feeds a 10-second window aggregation in append
/// mode; over random bounded disorder and splits, on 1 and 3 partitions,
/// the windows emitted equal the batch job's over the same rows, the
/// processor's rows never dropped as late by the aggregation.
#[tokio::test]
async fn a_window_aggregation_after_a_processor_with_an_event_time_column() {
    use datafusion::functions_aggregate::expr_fn::{count, max};
    use rand::{Rng, SeedableRng};
    use tidemill::engine::window::tumble;
    let windows = |df: DataFrame| {
        df.aggregate(
            vec![
                tumble(col("event_time"), "10 seconds").alias("w"),
                col("symbol"),
            ],
            vec![count(lit(1)).alias("rows"), max(col("nth")).alias("last")],
        )
        .unwrap()
        .select(vec![
            get_field(col("w"), "start").alias("start"),
            col("symbol"),
            col("rows"),
            col("last"),
        ])
        .unwrap()
    };
    for seed in 0..3u64 {
        for partitions in [1, 3] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut batches = Vec::new();
            let mut clock = 0i64;
            for _ in 0..6 {
                let rows: Vec<(Option<&str>, f64, i64)> = (0..rng.random_range(1..20))
                    .map(|_| {
                        clock += rng.random_range(0..3);
                        // Up to 3 s out of order: under the 5 s delay.
                        let at = (clock - rng.random_range(0..4)).max(0);
                        (Some(["a", "b"][rng.random_range(0..2)]), 1.0, at)
                    })
                    .collect();
                batches.push(rows);
            }
            let (ctx, stream, sink, checkpoint) = setup(partitions);
            let numbered = ctx
                .read_stream(stream.clone())
                .await
                .unwrap()
                .with_watermark("event_time", "5 seconds")
                .unwrap()
                .transform_with_state_with_event_time(
                    &["symbol"],
                    Numbered {
                        count: ValueState::new("count"),
                        stale: false,
                    },
                    "event_time",
                    OutputMode::Append,
                )
                .unwrap();
            let query = start_with(
                windows(numbered),
                &sink,
                checkpoint.path(),
                OutputMode::Append,
                None,
            )
            .await
            .unwrap();
            for rows in &batches {
                stream.push(events(rows)).unwrap();
                query.process_all_available().await.unwrap();
            }
            let progress = query.recent_progress();
            let late: u64 = progress
                .iter()
                .flat_map(|p| p.state_operators.iter())
                .map(|s| s.num_rows_dropped_by_watermark)
                .sum();
            assert_eq!(late, 0, "nothing late: the disorder is under the delay");
            // The batch job: the same rows numbered per key in event-time
            // order would differ in `last` only by ties, so compare the
            // windows the final watermark closed by rows and by `last`
            // computed from the processor's own numbering (rows of a key
            // are numbered in arrival order).
            let watermark_s = batches.iter().flatten().map(|r| r.2).max().unwrap() - 5;
            let all: Vec<_> = batches.iter().flatten().cloned().collect();
            let mut expected = Vec::new();
            for symbol in ["a", "b"] {
                let mut nth = 0;
                let mut per_window = std::collections::BTreeMap::new();
                for batch in &batches {
                    for row in batch.iter().filter(|r| r.0 == Some(symbol)) {
                        nth += 1;
                        let start = row.2 - row.2.rem_euclid(10);
                        let entry = per_window.entry(start).or_insert((0, 0));
                        entry.0 += 1;
                        entry.1 = std::cmp::max(entry.1, nth);
                    }
                }
                for (start, (rows, last)) in per_window {
                    if start + 10 <= watermark_s {
                        expected.push((start * 1000, symbol.to_string(), rows, last));
                    }
                }
            }
            expected.sort();
            let mut got = Vec::new();
            for b in sink.batches() {
                for i in 0..b.num_rows() {
                    got.push((
                        b.column(0)
                            .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                            .value(i),
                        b.column(1).as_string::<i32>().value(i).to_string(),
                        b.column(2).as_primitive::<Int64Type>().value(i),
                        b.column(3).as_primitive::<Int64Type>().value(i),
                    ));
                }
            }
            got.sort();
            assert!(!expected.is_empty());
            assert_eq!(
                got, expected,
                "seed {seed}, {partitions} partitions ({all:?})"
            );
            query.stop().await.unwrap();
        }
    }
}

/// A processor emitting rows older than the previous batch's watermark
/// would have them dropped by the operators after it: refused, naming the
/// row and the watermark. Without an event-time column, a stateful
/// operator after a processor is refused at start.
#[tokio::test]
async fn rows_older_than_the_watermark_are_refused_after_a_processor() {
    use datafusion::functions_aggregate::expr_fn::count;
    use tidemill::engine::window::tumble;
    let (ctx, stream, sink, checkpoint) = setup(2);
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap()
        .transform_with_state_with_event_time(
            &["symbol"],
            Numbered {
                count: ValueState::new("count"),
                stale: true,
            },
            "event_time",
            OutputMode::Append,
        )
        .unwrap()
        .aggregate(
            vec![tumble(col("event_time"), "10 seconds").alias("w")],
            vec![count(lit(1))],
        )
        .unwrap();
    let query = start_with(df, &sink, checkpoint.path(), OutputMode::Append, None)
        .await
        .unwrap();
    // No watermark yet in the first batch (its rows pass); the watermark
    // moves to 95 s (a batch without data closes the stale rows' window),
    // and the next batch's rows at 0 s are refused.
    stream.push(events(&[(Some("a"), 1.0, 100)])).unwrap();
    query.process_all_available().await.unwrap();
    stream.push(events(&[(Some("a"), 1.0, 101)])).unwrap();
    let err = query.process_all_available().await.unwrap_err().to_string();
    assert!(
        err.contains("at or below the previous batch's watermark")
            && err.contains("symbol=a")
            && err.contains("95000 ms"),
        "{err}"
    );

    let err = tidemill::StreamingDataFrame::transform_with_state_with_event_time(
        ctx.read_stream(stream.clone()).await.unwrap(),
        &["symbol"],
        Numbered {
            count: ValueState::new("count"),
            stale: false,
        },
        "nth",
        OutputMode::Append,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("'nth' is Int64, not a timestamp"), "{err}");
}

/// Every kind of state, timers, and both ways of output, for a processor
/// whose batches have thousands of keys: those are shared among its
/// instances (one per partition, each a clone with its own `init`), and
/// each instance records that it ran.
#[derive(Clone)]
struct Spread {
    count: ValueState<i64>,
    seen: ListState<i64>,
    buckets: MapState<i64, i64>,
    /// This instance's number, given by `init`.
    id: usize,
    /// How many instances `init` numbered, and which handled input rows.
    inits: Arc<std::sync::atomic::AtomicUsize>,
    ran: Arc<std::sync::Mutex<std::collections::BTreeSet<usize>>>,
}

#[derive(serde::Serialize)]
struct SpreadRow {
    symbol: String,
    kind: &'static str,
    count: i64,
    seen: i64,
    buckets: i64,
}

fn spread_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("seen", DataType::Int64, false),
        Field::new("buckets", DataType::Int64, false),
    ]))
}

fn spread_batch(row: &SpreadRow) -> ProcessorResult<RecordBatch> {
    Ok(RecordBatch::try_new(
        spread_schema(),
        vec![
            Arc::new(StringArray::from(vec![row.symbol.clone()])),
            Arc::new(StringArray::from(vec![row.kind])),
            Arc::new(Int64Array::from(vec![row.count])),
            Arc::new(Int64Array::from(vec![row.seen])),
            Arc::new(Int64Array::from(vec![row.buckets])),
        ],
    )?)
}

impl StatefulProcessor for Spread {
    fn output_schema(&self) -> SchemaRef {
        spread_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        self.id = self.inits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        states.declare(&self.count)?;
        states.declare(&self.seen)?;
        states.declare(&self.buckets)
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        self.ran.lock().unwrap().insert(self.id);
        let prices = rows.primitive::<Float64Type>("price")?;
        let times = rows.primitive::<arrow::datatypes::TimestampMillisecondType>("event_time")?;
        let count = self.count.get(ctx)?.unwrap_or(0) + rows.num_rows() as i64;
        self.count.set(ctx, &count)?;
        for price in prices.values() {
            let value = *price as i64;
            self.seen.append(ctx, &value)?;
            let bucket = value % 3;
            let n = self.buckets.get(ctx, &bucket)?.unwrap_or(0);
            self.buckets.insert(ctx, &bucket, &(n + 1))?;
        }
        for old in ctx.list_timers()? {
            ctx.delete_timer(old)?;
        }
        ctx.register_timer(times.values().iter().max().unwrap() + 10_000)?;
        let row = SpreadRow {
            symbol: key.string("symbol")?.unwrap_or_default().to_string(),
            kind: "input",
            count,
            seen: self.seen.get(ctx)?.len() as i64,
            buckets: self.buckets.keys(ctx)?.len() as i64,
        };
        // Odd counts are emitted, even ones returned.
        if count % 2 == 1 {
            ctx.emit(&row)?;
            return Ok(Vec::new());
        }
        Ok(vec![spread_batch(&row)?])
    }

    fn handle_expired_timer(
        &mut self,
        key: &GroupKey,
        _timer: ExpiredTimer,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let count = self.count.get(ctx)?.unwrap_or(0);
        self.count.clear(ctx)?;
        Ok(vec![spread_batch(&SpreadRow {
            symbol: key.string("symbol")?.unwrap_or_default().to_string(),
            kind: "timer",
            count,
            seen: self.seen.get(ctx)?.len() as i64,
            buckets: self.buckets.keys(ctx)?.len() as i64,
        })?])
    }
}

/// `(symbol, kind, count, seen, buckets)` rows in the order written.
fn spread_rows(batches: &[RecordBatch]) -> Vec<(String, String, i64, i64, i64)> {
    batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |i| {
                (
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1).as_string::<i32>().value(i).to_string(),
                    b.column(2).as_primitive::<Int64Type>().value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                    b.column(4).as_primitive::<Int64Type>().value(i),
                )
            })
        })
        .collect()
}

/// Batches of thousands of keys are shared among the processor's instances
/// (one per partition) on several threads: for 1 to 4 partitions and
/// several runs, the output is the same rows in the same order as with one
/// instance, every instance took a share, each key's list holds every row
/// it was given, and every key's last timer fires once.
#[tokio::test]
async fn a_batch_of_many_keys_is_shared_among_the_processors_instances() {
    const SYMBOLS: u64 = 2_500;
    const ROWS: usize = 4_000;
    const BATCHES: i64 = 4;
    for seed in [7_u64, 11] {
        // The same input for every partition count.
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let names: Vec<String> = (0..SYMBOLS).map(|i| format!("s{i:04}")).collect();
        let batches: Vec<Vec<(String, f64, i64)>> = (0..BATCHES)
            .map(|b| {
                (0..ROWS)
                    .map(|_| {
                        let symbol = names[(next() % SYMBOLS) as usize].clone();
                        let price = (next() % 100) as f64;
                        (symbol, price, b * 20 + (next() % 6) as i64)
                    })
                    .collect()
            })
            .collect();
        let mut reference = None;
        for partitions in [1, 2, 3, 4] {
            for run in 0..2 {
                let (ctx, stream, sink, checkpoint) = setup(partitions);
                let inits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let ran = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
                let processor = Spread {
                    count: ValueState::new("count"),
                    seen: ListState::new("seen"),
                    buckets: MapState::new("buckets"),
                    id: 0,
                    inits: Arc::clone(&inits),
                    ran: Arc::clone(&ran),
                };
                let df = ctx
                    .read_stream(stream.clone())
                    .await
                    .unwrap()
                    .with_watermark("event_time", "0 seconds")
                    .unwrap()
                    .transform_with_state(
                        &["symbol"],
                        processor,
                        TimeMode::EventTime,
                        OutputMode::Update,
                    )
                    .unwrap();
                let query = start_with(df, &sink, checkpoint.path(), OutputMode::Update, None)
                    .await
                    .unwrap();
                for batch in &batches {
                    let rows: Vec<_> = batch
                        .iter()
                        .map(|(s, p, t)| (Some(s.as_str()), *p, *t))
                        .collect();
                    stream.push(events(&rows)).unwrap();
                    query.process_all_available().await.unwrap();
                }
                // A row far ahead moves the watermark past every timer.
                stream.push(events(&[(Some("zzz"), 1.0, 10_000)])).unwrap();
                query.process_all_available().await.unwrap();
                stream.push(events(&[(Some("zzz"), 1.0, 20_000)])).unwrap();
                query.process_all_available().await.unwrap();
                query.stop().await.unwrap();

                let what = format!("seed {seed}, {partitions} partitions, run {run}");
                assert_eq!(
                    inits.load(std::sync::atomic::Ordering::SeqCst),
                    partitions,
                    "{what}: one init per instance"
                );
                assert_eq!(
                    *ran.lock().unwrap(),
                    (0..partitions).collect(),
                    "{what}: every instance took a share of the keys"
                );
                let rows = spread_rows(&sink.batches());
                // Each key's list holds all its rows; the last timer of
                // every key fired exactly once, after its last input.
                let mut given = std::collections::BTreeMap::new();
                for (symbol, _, _) in batches.iter().flatten() {
                    *given.entry(symbol.clone()).or_insert(0_i64) += 1;
                }
                let mut last_seen = std::collections::BTreeMap::new();
                let mut fired = std::collections::BTreeMap::new();
                for (symbol, kind, _, seen, _) in &rows {
                    if symbol == "zzz" {
                        continue;
                    }
                    match kind.as_str() {
                        "input" => {
                            last_seen.insert(symbol.clone(), *seen);
                        }
                        _ => *fired.entry(symbol.clone()).or_insert(0) += 1,
                    }
                }
                assert_eq!(last_seen, given, "{what}");
                assert!(
                    fired.len() == given.len() && fired.values().all(|&n| n >= 1),
                    "{what}: every key's last timer fired"
                );
                match &reference {
                    None => reference = Some(rows),
                    Some(expected) => assert!(
                        &rows == expected,
                        "{what}: not the rows, in order, of one instance"
                    ),
                }
            }
        }
    }
}

/// A processor whose clones declare other variables than the first
/// instance: the query cannot share keys among them, and says so at start.
#[derive(Clone)]
struct Fickle {
    inits: Arc<std::sync::atomic::AtomicUsize>,
}

impl StatefulProcessor for Fickle {
    fn output_schema(&self) -> SchemaRef {
        fired_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        let n = self.inits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        states.declare(&ValueState::<i64>::new(if n == 0 {
            "first"
        } else {
            "other"
        }))
    }

    fn handle_input_rows(
        &mut self,
        _key: &GroupKey,
        _rows: &KeyRows<'_>,
        _ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn clones_declaring_other_variables_are_refused_at_start() {
    let (ctx, stream, sink, checkpoint) = setup(2);
    let processor = Fickle {
        inits: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .transform_with_state(&["symbol"], processor, TimeMode::None, OutputMode::Update)
        .unwrap();
    let err = start_with(df, &sink, checkpoint.path(), OutputMode::Update, None)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("init") && err.contains("first") && err.contains("other"),
        "{err}"
    );
    // With one partition there is one instance, and nothing to compare.
    let (ctx, stream, sink, checkpoint) = setup(1);
    let processor = Fickle {
        inits: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .transform_with_state(&["symbol"], processor, TimeMode::None, OutputMode::Update)
        .unwrap();
    let query = start_with(df, &sink, checkpoint.path(), OutputMode::Update, None)
        .await
        .unwrap();
    query.stop().await.unwrap();
}
