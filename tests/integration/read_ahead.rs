//! Pipelining: when the next trigger is due as soon as a batch ends, it
//! asks the sources and reads while the batch's sink writes and its state
//! commits. What it read is dropped if that batch fails; if it fails
//! itself, the batch before still commits; `process_all_available` is
//! never answered by offsets asked before the data it waits for.
//!
//! A watched memory source logs each call the query makes, and a gated
//! sink runs a test's hook at the start of each write, so a test can make
//! a batch's write wait for (or fail after) the next trigger's read.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::*;
use futures::future::BoxFuture;
use tidemill::engine::{BatchInput, SourceContext};
use tidemill::prelude::*;
use tidemill::{
    Offset, QueryOptions, ReadLimit, RetryPolicy, Sink, Source, SourceStream, TidemillError,
};
use tokio::sync::watch;

use crate::common::{events, events_schema, sorted_rows};

/// What the query asked of the watched source and sink, in order.
#[derive(Debug, Default)]
struct Watch {
    log: Mutex<Vec<String>>,
    /// How many ranges the query has read from the source.
    reads: watch::Sender<usize>,
    /// Calls of `latest_offset` (counted from 1) that fail, and how.
    failing_asks: Mutex<Vec<(usize, bool)>>,
    asks: Mutex<usize>,
}

impl Watch {
    fn note(&self, what: String) {
        self.log.lock().unwrap().push(what);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `what` is in the log; false after 10 s.
    async fn noted(&self, what: &str) -> bool {
        self.until(|watch| watch.log().iter().any(|l| l == what))
            .await
    }

    /// Waits until `done` holds; false after 10 s.
    async fn until(&self, done: impl Fn(&Self) -> bool) -> bool {
        for _ in 0..2000 {
            if done(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Waits until the query has read `n` ranges; false after 10 s.
    async fn reads_reach(&self, n: usize) -> bool {
        let mut reads = self.reads.subscribe();
        tokio::time::timeout(Duration::from_secs(10), reads.wait_for(|r| *r >= n))
            .await
            .is_ok()
    }
}

/// A [`MemoryStream`] whose stream notes every call in a [`Watch`].
#[derive(Debug, Clone)]
struct WatchedSource {
    inner: MemoryStream,
    watch: Arc<Watch>,
}

#[async_trait]
impl Source for WatchedSource {
    fn description(&self) -> String {
        "WatchedSource".into()
    }
    async fn schema(&self, _session: &SessionContext) -> tidemill::Result<SchemaRef> {
        Ok(events_schema())
    }
    async fn open(&self, _ctx: SourceContext) -> tidemill::Result<Box<dyn SourceStream>> {
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl SourceStream for WatchedSource {
    fn description(&self) -> String {
        "WatchedSource".into()
    }

    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> tidemill::Result<Option<Offset>> {
        let call = {
            let mut asks = self.watch.asks.lock().unwrap();
            *asks += 1;
            *asks
        };
        let failing = self.watch.failing_asks.lock().unwrap().clone();
        if let Some(&(_, transient)) = failing.iter().find(|(n, _)| *n == call) {
            self.watch.note(format!("ask {call} failed"));
            let error = TidemillError::source("WatchedSource", format!("ask {call} refused"));
            return Err(if transient {
                TidemillError::transient(error)
            } else {
                error
            });
        }
        let end = SourceStream::latest_offset(&mut self.inner, start, limit).await?;
        self.watch
            .note(format!("ask {call}: {}", range(start, end.as_ref())));
        Ok(end)
    }

    async fn read(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
    ) -> tidemill::Result<Vec<RecordBatch>> {
        SourceStream::read(&mut self.inner, start, end).await
    }

    async fn read_input(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
        partitions: usize,
    ) -> tidemill::Result<BatchInput> {
        let input = self.inner.read_input(start, end, partitions).await?;
        self.watch.note(format!("read {}", range(start, Some(end))));
        self.watch.reads.send_modify(|r| *r += 1);
        Ok(input)
    }
}

fn range(start: Option<&Offset>, end: Option<&Offset>) -> String {
    let at = |o: Option<&Offset>| o.map_or(0, |o| o.as_u64().unwrap());
    format!("{}..{}", at(start), at(end))
}

/// What a [`GatedSink`] runs before each write: given the batch id and
/// the attempt (from 1), it may wait, or fail the write.
type Hook = Box<dyn Fn(u64, usize) -> BoxFuture<'static, tidemill::Result<()>> + Send + Sync>;

/// A sink that runs a hook before each write, then keeps the batch (once
/// per batch id) and notes the write in the [`Watch`].
struct GatedSink {
    hook: Hook,
    watch: Arc<Watch>,
    attempts: Mutex<Vec<u64>>,
    written: Mutex<Vec<(u64, Vec<RecordBatch>)>>,
}

impl std::fmt::Debug for GatedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatedSink")
    }
}

impl GatedSink {
    fn new(watch: &Arc<Watch>, hook: Hook) -> Arc<Self> {
        Arc::new(Self {
            hook,
            watch: Arc::clone(watch),
            attempts: Mutex::new(Vec::new()),
            written: Mutex::new(Vec::new()),
        })
    }

    fn batch_ids(&self) -> Vec<u64> {
        self.written
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    fn batch(&self, id: u64) -> Vec<RecordBatch> {
        let written = self.written.lock().unwrap();
        written.iter().find(|(b, _)| *b == id).unwrap().1.clone()
    }

    fn all_rows(&self) -> Vec<RecordBatch> {
        let written = self.written.lock().unwrap();
        written.iter().flat_map(|(_, b)| b.clone()).collect()
    }
}

#[async_trait]
impl Sink for GatedSink {
    fn description(&self) -> String {
        "GatedSink".into()
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        _schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> tidemill::Result<()> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(batch_id);
            attempts.iter().filter(|b| **b == batch_id).count()
        };
        self.watch.note(format!("sink {batch_id} begins"));
        let hooked = (self.hook)(batch_id, attempt).await;
        self.watch.note(format!("sink {batch_id} ends"));
        hooked?;
        let mut written = self.written.lock().unwrap();
        if !written.iter().any(|(b, _)| *b == batch_id) {
            written.push((batch_id, batches));
        }
        Ok(())
    }
}

/// A hook running `f` with the source's stream and watch, the batch id
/// and the attempt.
fn hook<Fut>(
    source: &WatchedSource,
    f: impl Fn(MemoryStream, Arc<Watch>, u64, usize) -> Fut + Send + Sync + 'static,
) -> Hook
where
    Fut: std::future::Future<Output = tidemill::Result<()>> + Send + 'static,
{
    let (stream, watch) = (source.inner.clone(), Arc::clone(&source.watch));
    Box::new(move |batch, attempt| Box::pin(f(stream.clone(), Arc::clone(&watch), batch, attempt)))
}

fn no_hook() -> Hook {
    Box::new(|_, _| Box::pin(async { Ok(()) }))
}

/// Reading ahead, with quick retries.
fn fast_retries() -> QueryOptions {
    QueryOptions {
        read_ahead: true,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_elapsed: Duration::from_secs(60),
        },
        ..Default::default()
    }
}

/// A function of `id` that returns it and notes `execute <id>` in
/// `watch`: when the plan reads each row.
fn watched_ids(watch: &Arc<Watch>) -> ScalarUDF {
    let watch = Arc::clone(watch);
    create_udf(
        "watched_ids",
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let ColumnarValue::Array(ids) = &args[0] else {
                unreachable!("a column")
            };
            for id in ids.as_primitive::<Int64Type>().iter().flatten() {
                watch.note(format!("execute {id}"));
            }
            Ok(ColumnarValue::Array(Arc::clone(ids)))
        }),
    )
}

/// The query over `source` into `sink`: the events as they are, or their
/// count per symbol (complete mode) when `counted`; either way through a
/// filter that notes each row it reads ([`watched_ids`]).
async fn start(
    partitions: usize,
    source: &WatchedSource,
    sink: &Arc<GatedSink>,
    counted: bool,
    trigger: Trigger,
    dir: &std::path::Path,
) -> StreamingQuery {
    let options = fast_retries();
    start_with(partitions, source, sink, counted, trigger, dir, options).await
}

/// [`start`] with `options`.
async fn start_with(
    partitions: usize,
    source: &WatchedSource,
    sink: &Arc<GatedSink>,
    counted: bool,
    trigger: Trigger,
    dir: &std::path::Path,
    options: QueryOptions,
) -> StreamingQuery {
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    let mut df = ctx.read_stream(source.clone()).await.unwrap();
    let watched = watched_ids(&source.watch);
    df = df
        .filter(watched.call(vec![col("id")]).gt_eq(lit(0)))
        .unwrap();
    let mut mode = OutputMode::Append;
    if counted {
        df = df
            .aggregate(vec![col("symbol")], vec![count(col("id")).alias("n")])
            .unwrap();
        mode = OutputMode::Complete;
    }
    df.write_stream()
        .sink_arc(sink.clone())
        .output_mode(mode)
        .trigger(trigger)
        .checkpoint(dir.to_str().unwrap())
        .options(options)
        .start()
        .await
        .unwrap()
}

fn watched() -> (WatchedSource, Arc<Watch>) {
    let watch = Arc::new(Watch::default());
    let source = WatchedSource {
        inner: MemoryStream::new(events_schema()),
        watch: Arc::clone(&watch),
    };
    (source, watch)
}

fn position(log: &[String], what: &str) -> usize {
    log.iter()
        .position(|l| l == what)
        .unwrap_or_else(|| panic!("{what:?} is not in {log:?}"))
}

/// Per-symbol counts of events `0..n`, as the complete-mode query emits.
fn counts_of(n: i64) -> Vec<String> {
    let mut per = [0; 3];
    for i in 0..n {
        per[(i % 3) as usize] += 1;
    }
    let mut rows: Vec<String> = ["A", "B", "C"]
        .iter()
        .zip(per)
        .filter(|(_, c)| *c > 0)
        .map(|(s, c)| format!("| {s}      | {c} |"))
        .collect();
    rows.sort();
    rows
}

/// Checks `sink`'s output of events `0..n` pushed as `0..4`, `4..8`, …:
/// batch 1 is exactly the second push (or, `counted`, the counts of
/// `0..8`), and every event is written once (or the last batch holds the
/// counts of `0..n`).
fn assert_once(sink: &GatedSink, counted: bool, n: i64, case: &str) {
    if counted {
        let last = *sink.batch_ids().last().unwrap();
        assert_eq!(sorted_rows(&sink.batch(1)), counts_of(8), "{case}");
        assert_eq!(sorted_rows(&sink.batch(last)), counts_of(n), "{case}");
    } else {
        let second = sorted_rows(&[events(4..8)]);
        assert_eq!(sorted_rows(&sink.batch(1)), second, "{case}");
        let all = sorted_rows(&[events(0..n)]);
        assert_eq!(sorted_rows(&sink.all_rows()), all, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_trigger_reads_while_a_batch_writes_its_output() {
    for partitions in 1..=4 {
        for counted in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (source, watch) = watched();
            // Batch 0's write adds rows, then waits for the next trigger
            // to read them (and, without state, to execute them): it never
            // would if that trigger began only after the write.
            let hook = hook(&source, move |stream, watch, batch, _| async move {
                if batch == 0 {
                    stream.push(events(4..8)).unwrap();
                    if !watch.reads_reach(2).await {
                        return Err(TidemillError::sink(
                            "GatedSink",
                            "the next trigger did not read while batch 0 wrote",
                        ));
                    }
                    if !counted && !watch.noted("execute 7").await {
                        return Err(TidemillError::sink(
                            "GatedSink",
                            "the next batch did not execute while batch 0 wrote",
                        ));
                    }
                }
                Ok(())
            });
            let sink = GatedSink::new(&watch, hook);
            source.inner.push(events(0..4)).unwrap();
            let query = start(
                partitions,
                &source,
                &sink,
                counted,
                Trigger::default(),
                dir.path(),
            )
            .await;
            query.process_all_available().await.unwrap();
            query.stop().await.unwrap();

            let log = watch.log();
            let case = format!("{partitions} partitions, counted {counted}: {log:?}");
            assert!(
                position(&log, "read 1..2") < position(&log, "sink 0 ends"),
                "{case}"
            );
            // Without state, batch 1 also executes while batch 0 writes;
            // with it, only once batch 0's state has committed.
            let executed_ahead = position(&log, "execute 7") < position(&log, "sink 0 ends");
            assert_eq!(executed_ahead, !counted, "{case}");
            assert_eq!(sink.batch_ids(), vec![0, 1], "{case}");
            if counted {
                assert_eq!(sorted_rows(&sink.batch(0)), counts_of(4), "{case}");
            }
            assert_once(&sink, counted, 8, &case);
            // Every batch's offsets were logged once, in order.
            let progress = query.recent_progress();
            assert_eq!(progress.len(), 2, "{case}");
            assert_eq!(
                progress[1].sources[0].start_offset, progress[0].sources[0].end_offset,
                "{case}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trigger_begins_while_a_batch_writes_unless_reading_ahead_and_due() {
    let cases = [
        // Reading ahead, but the next trigger is due 2 s after batch 0
        // began.
        (Trigger::ProcessingTime(Duration::from_secs(2)), true),
        // Due at once, but the query does not read ahead (the default).
        (Trigger::default(), false),
    ];
    for (trigger, read_ahead) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (source, watch) = watched();
        // Batch 0's write adds rows and takes 100 ms.
        let hook = hook(&source, |stream, watch, batch, _| async move {
            if batch == 0 {
                stream.push(events(4..8)).unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                watch.note("sink 0 waited".into());
            }
            Ok(())
        });
        let sink = GatedSink::new(&watch, hook);
        source.inner.push(events(0..4)).unwrap();
        let options = QueryOptions {
            read_ahead,
            ..fast_retries()
        };
        let query = start_with(1, &source, &sink, false, trigger, dir.path(), options).await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while sink.batch_ids().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        query.stop().await.unwrap();
        let log = watch.log();
        let (begins, ends) = (
            position(&log, "sink 0 begins"),
            position(&log, "sink 0 ends"),
        );
        assert!(
            log[begins..ends].iter().all(|l| !l.starts_with("ask")),
            "{trigger:?}, read ahead {read_ahead}: {log:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_drops_what_the_next_trigger_read_and_retries_its_batch() {
    for round in 0..3 {
        for partitions in 1..=4 {
            for counted in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let (source, watch) = watched();
                // Batch 1's first write adds rows, waits until the next
                // trigger has read them, then fails (transient).
                let hook = hook(&source, |stream, watch, batch, attempt| async move {
                    if batch == 1 && attempt == 1 {
                        stream.push(events(8..12)).unwrap();
                        assert!(watch.reads_reach(3).await, "the next trigger read");
                        return Err(TidemillError::transient(TidemillError::sink(
                            "GatedSink",
                            "connection reset",
                        )));
                    }
                    Ok(())
                });
                let sink = GatedSink::new(&watch, hook);
                let query = start(
                    partitions,
                    &source,
                    &sink,
                    counted,
                    Trigger::default(),
                    dir.path(),
                )
                .await;
                source.inner.push(events(0..4)).unwrap();
                query.process_all_available().await.unwrap();
                source.inner.push(events(4..8)).unwrap();
                query.process_all_available().await.unwrap();
                query.stop().await.unwrap();

                let log = watch.log();
                let case =
                    format!("round {round}, {partitions} partitions, counted {counted}: {log:?}");
                assert_eq!(sink.batch_ids(), vec![0, 1, 2], "{case}");
                // Batch 1 was retried as logged: without the rows the
                // trigger read ahead, which batch 2 then read again.
                let reads: Vec<&String> = log.iter().filter(|l| l.starts_with("read")).collect();
                assert_eq!(
                    reads,
                    [
                        "read 0..1",
                        "read 1..2",
                        "read 2..3",
                        "read 1..2",
                        "read 2..3"
                    ],
                    "{case}"
                );
                assert_once(&sink, counted, 12, &case);
                let retries: Vec<(u64, u64)> = query
                    .recent_progress()
                    .iter()
                    .map(|p| (p.batch_id, p.num_retries))
                    .collect();
                assert_eq!(retries, vec![(0, 0), (1, 1), (2, 0)], "{case}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_ahead_fails_the_next_trigger_after_the_batch_commits() {
    for transient in [true, false] {
        for counted in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (source, watch) = watched();
            // The first ask is batch 0's; the second, made while batch 0
            // writes, fails.
            *watch.failing_asks.lock().unwrap() = vec![(2, transient)];
            let hook = hook(&source, |_, watch, batch, _| async move {
                if batch == 0 {
                    // Until the failing ask has happened.
                    watch.until(|w| *w.asks.lock().unwrap() >= 2).await;
                }
                Ok(())
            });
            let sink = GatedSink::new(&watch, hook);
            source.inner.push(events(0..4)).unwrap();
            let query = start(2, &source, &sink, counted, Trigger::default(), dir.path()).await;
            let case = format!("transient {transient}, counted {counted}");
            if transient {
                query.process_all_available().await.unwrap();
                source.inner.push(events(4..8)).unwrap();
                query.process_all_available().await.unwrap();
                query.stop().await.unwrap();
                assert_eq!(sink.batch_ids(), vec![0, 1], "{case}");
                let expected = if counted {
                    counts_of(8)
                } else {
                    sorted_rows(&[events(0..8)])
                };
                let got = if counted {
                    sorted_rows(&sink.batch(1))
                } else {
                    sorted_rows(&sink.all_rows())
                };
                assert_eq!(got, expected, "{case}");
            } else {
                let error = query.await_termination().await.unwrap_err();
                assert!(
                    error.to_string().contains("ask 2 refused"),
                    "{case}: {error}"
                );
                // Batch 0 committed all the same, once.
                assert_eq!(sink.batch_ids(), vec![0], "{case}");
                assert!(dir.path().join("commits/0").exists(), "{case}");
                assert!(!dir.path().join("offsets/1").exists(), "{case}");
            }
            let log = watch.log();
            assert!(
                position(&log, "ask 2 failed") < position(&log, "sink 0 ends"),
                "{case}: the failing ask was made ahead: {log:?}"
            );
            let writes = log.iter().filter(|l| *l == "sink 0 begins").count();
            assert_eq!(writes, 1, "{case}: {log:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_all_available_waits_for_rows_added_after_the_next_trigger_asked() {
    for counted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (source, watch) = watched();
        let (asked_tx, asked_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let gate = Arc::new(Mutex::new(Some((asked_tx, go_rx))));
        // Batch 0's write waits until the next trigger has asked the
        // source (finding nothing new), tells the test, and waits for it.
        let hook = hook(&source, move |_, watch, batch, _| {
            let gate = Arc::clone(&gate);
            async move {
                if batch != 0 {
                    return Ok(());
                }
                let (asked, go) = gate.lock().unwrap().take().unwrap();
                watch
                    .until(|w| w.log().iter().any(|l| l.starts_with("ask 2")))
                    .await;
                asked.send(()).unwrap();
                go.await.unwrap();
                Ok(())
            }
        });
        let sink = GatedSink::new(&watch, hook);
        source.inner.push(events(0..4)).unwrap();
        let query = start(2, &source, &sink, counted, Trigger::default(), dir.path()).await;
        asked_rx.await.unwrap();
        assert!(
            watch.log().contains(&"ask 2: 1..1".to_string()),
            "{:?}",
            watch.log()
        );
        // Rows added after that ask; the wait starts before batch 0 ends.
        source.inner.push(events(4..8)).unwrap();
        let mut waiting = Box::pin(query.process_all_available());
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        go_tx.send(()).unwrap();
        waiting.await.unwrap();
        let got = if counted {
            sink.batch_ids()
                .last()
                .map(|id| sorted_rows(&sink.batch(*id)))
                .unwrap()
        } else {
            sorted_rows(&sink.all_rows())
        };
        let expected = if counted {
            counts_of(8)
        } else {
            sorted_rows(&[events(0..8)])
        };
        assert_eq!(got, expected, "counted {counted}: {:?}", watch.log());
        query.stop().await.unwrap();
    }
}

/// A query stopped while it read ahead leaves no offset entry for what it
/// read: a restart reads those rows as the next batch, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_leaves_no_trace_of_what_was_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (source, watch) = watched();
    let hook = hook(&source, |stream, watch, batch, _| async move {
        if batch == 0 {
            stream.push(events(4..8)).unwrap();
            assert!(watch.reads_reach(2).await);
        }
        Ok(())
    });
    let sink = GatedSink::new(&watch, hook);
    source.inner.push(events(0..4)).unwrap();
    let query = start(2, &source, &sink, false, Trigger::default(), dir.path()).await;
    // Stop as soon as batch 0 is written: the trigger read ahead is
    // dropped, and a restart reads its rows as batch 1.
    tokio::time::timeout(Duration::from_secs(10), async {
        while sink.batch_ids().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    query.stop().await.unwrap();
    let logged: HashSet<String> = std::fs::read_dir(dir.path().join("offsets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let committed = sink.batch_ids();
    // Either batch 1 ran before the stop took effect, or it left nothing.
    for id in &logged {
        let id: u64 = id.parse().unwrap();
        assert!(committed.contains(&id), "offsets/{id} without its output");
    }

    let sink2 = GatedSink::new(&watch, no_hook());
    let query = start(2, &source, &sink2, false, Trigger::default(), dir.path()).await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let mut all = sink.all_rows();
    all.extend(sink2.all_rows());
    assert_eq!(sorted_rows(&all), sorted_rows(&[events(0..8)]));
}
