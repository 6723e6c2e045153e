//! Stream–stream joins with Spark's semantics: inner, left, right and full
//! outer, and left semi; a new row on either side matches the other
//! side's earlier rows and the same batch's rows exactly once; late rows
//! are dropped and counted; outer rows come out once, after the watermark
//! proves no match can come; null keys never match; a stream joins with
//! itself; and the result equals the same join run as a batch job.

use arrow::datatypes::DataType;
use datafusion::common::{JoinType, ScalarValue};
use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::{QueryOptions, StreamingQuery, TidemillError};

use crate::common::{sorted_rows, timed_rows as rows, timed_schema as schema};

/// An interval of `ms` milliseconds.
fn millis(ms: i64) -> Expr {
    lit(ScalarValue::new_interval_mdn(0, 0, ms * 1_000_000))
}

/// How the two sides are joined in a test.
#[derive(Debug, Clone, Copy)]
struct Join {
    join_type: JoinType,
    /// `l.event_time BETWEEN r.event_time - bound AND r.event_time + bound`.
    bound_ms: Option<i64>,
    /// Both sides' watermark delay.
    delay: Option<&'static str>,
}

impl Join {
    fn new(join_type: JoinType) -> Self {
        Self {
            join_type,
            bound_ms: Some(5_000),
            delay: Some("10 seconds"),
        }
    }

    /// `left` joined with `right` on the symbol and the time bound, the
    /// columns of both sides (the left's for a semi join).
    fn plan(&self, left: DataFrame, right: DataFrame) -> DataFrame {
        let watermark = |df: DataFrame| match self.delay {
            Some(delay) => df.with_watermark("event_time", delay).unwrap(),
            None => df,
        };
        let left = watermark(left).alias("l").unwrap();
        let right = watermark(right).alias("r").unwrap();
        let mut on = vec![col("l.symbol").eq(col("r.symbol"))];
        if let Some(bound) = self.bound_ms {
            on.push(col("l.event_time").between(
                col("r.event_time") - millis(bound),
                col("r.event_time") + millis(bound),
            ));
        }
        let joined = left.join_on(right, self.join_type, on).unwrap();
        let mut columns = vec![col("l.symbol"), col("l.price"), col("l.event_time")];
        if self.join_type != JoinType::LeftSemi {
            columns.extend([col("r.symbol"), col("r.price"), col("r.event_time")]);
        }
        joined.select(columns).unwrap()
    }
}

/// A join of two memory streams running into a memory sink.
struct Running {
    left: MemoryStream,
    right: MemoryStream,
    sink: MemorySink,
    query: StreamingQuery,
    _checkpoint: tempfile::TempDir,
}

impl Running {
    async fn start(ctx: &SessionContext, join: Join) -> Self {
        let checkpoint = tempfile::tempdir().unwrap();
        let (left, right) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
        let sink = MemorySink::new();
        let query = start(ctx, join, &left, &right, &sink, checkpoint.path())
            .await
            .unwrap();
        Self {
            left,
            right,
            sink,
            query,
            _checkpoint: checkpoint,
        }
    }

    /// Pushes `left` and `right` (either may be empty) as one micro-batch
    /// and runs what they make.
    async fn push(&self, left: &[(Option<&str>, f64, i64)], right: &[(Option<&str>, f64, i64)]) {
        if !left.is_empty() {
            self.left.push(rows(left)).unwrap();
        }
        if !right.is_empty() {
            self.right.push(rows(right)).unwrap();
        }
        self.query.process_all_available().await.unwrap();
    }

    fn output(&self) -> Vec<String> {
        sorted_rows(&self.sink.batches())
    }

    fn state(&self) -> tidemill::StateOperatorProgress {
        self.query.last_progress().unwrap().state_operators[0].clone()
    }
}

async fn start(
    ctx: &SessionContext,
    join: Join,
    left: &MemoryStream,
    right: &MemoryStream,
    sink: &MemorySink,
    checkpoint: &std::path::Path,
) -> tidemill::Result<StreamingQuery> {
    let df = join.plan(
        ctx.read_stream(left.clone()).await.unwrap(),
        ctx.read_stream(right.clone()).await.unwrap(),
    );
    df.write_stream()
        .sink(sink.clone())
        .output_mode(OutputMode::Append)
        .checkpoint(checkpoint.to_str().unwrap())
        .options(QueryOptions::default())
        .start()
        .await
}

/// A printed output row: left symbol, price and second, then the right's
/// (blank for nulls).
fn row(l: Option<(&str, f64, i64)>, r: Option<(&str, f64, i64)>) -> String {
    let cells = |side: Option<(&str, f64, i64)>| match side {
        Some((symbol, price, second)) => [
            symbol.to_string(),
            format!("{price:.1}"),
            chrono::DateTime::from_timestamp(second, 0)
                .unwrap()
                .naive_utc()
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string(),
        ],
        None => [String::new(), String::new(), String::new()],
    };
    let mut all = cells(l).to_vec();
    all.extend(cells(r));
    all.join("|")
}

/// The output rows as `row` prints them, sorted.
fn cells(output: &[String]) -> Vec<String> {
    let mut out: Vec<String> = output
        .iter()
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

/// Matches across batches in both directions and within a batch, each
/// pair once; rows exactly on the time bound's edges match, a millisecond
/// beyond does not; across partition counts and runs.
#[tokio::test]
async fn inner_join_matches_each_pair_once_across_batches_and_partitions() {
    for partitions in [1, 2, 4] {
        for _run in 0..3 {
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            let run = Running::start(&ctx, Join::new(JoinType::Inner)).await;
            // Left first, right in a later batch.
            run.push(&[(Some("a"), 1.0, 100)], &[]).await;
            run.push(&[], &[(Some("a"), 2.0, 103)]).await;
            // Right first, left later; and a pair within one batch.
            run.push(&[], &[(Some("b"), 3.0, 100)]).await;
            run.push(
                &[(Some("b"), 4.0, 101), (Some("c"), 5.0, 100)],
                &[(Some("c"), 6.0, 100)],
            )
            .await;
            // Edges: 5 s either way matches.
            run.push(
                &[(Some("d"), 7.0, 100)],
                &[(Some("d"), 8.0, 105), (Some("d"), 9.0, 95)],
            )
            .await;
            assert_eq!(
                cells(&run.output()),
                sorted(vec![
                    row(Some(("a", 1.0, 100)), Some(("a", 2.0, 103))),
                    row(Some(("b", 4.0, 101)), Some(("b", 3.0, 100))),
                    row(Some(("c", 5.0, 100)), Some(("c", 6.0, 100))),
                    row(Some(("d", 7.0, 100)), Some(("d", 8.0, 105))),
                    row(Some(("d", 7.0, 100)), Some(("d", 9.0, 95))),
                ]),
                "{partitions} partitions"
            );
            run.query.stop().await.unwrap();
        }
    }
}

/// A millisecond beyond the bound does not match.
#[tokio::test]
async fn rows_just_beyond_the_time_bound_do_not_match() {
    let run = Running::start(&SessionContext::new(), Join::new(JoinType::Inner)).await;
    let at = |ms: i64| {
        let batch = rows(&[(Some("a"), 1.0, 0)]);
        let times = arrow::array::TimestampMillisecondArray::from(vec![ms]);
        arrow::record_batch::RecordBatch::try_new(
            batch.schema(),
            vec![
                batch.column(0).clone(),
                batch.column(1).clone(),
                std::sync::Arc::new(times),
            ],
        )
        .unwrap()
    };
    run.left.push(at(100_000)).unwrap();
    run.right.push(at(105_001)).unwrap();
    run.right.push(at(94_999)).unwrap();
    run.query.process_all_available().await.unwrap();
    assert!(run.output().is_empty(), "{:?}", run.output());
    run.right.push(at(105_000)).unwrap();
    run.query.process_all_available().await.unwrap();
    assert_eq!(run.output().len(), 1);
    run.query.stop().await.unwrap();
}

/// Rows at or below the watermark are late on either side: dropped,
/// counted, never joined; the state is evicted as the watermark passes.
#[tokio::test]
async fn late_rows_on_either_side_are_dropped_and_counted() {
    let run = Running::start(&SessionContext::new(), Join::new(JoinType::Inner)).await;
    run.push(&[(Some("a"), 1.0, 100)], &[(Some("x"), 1.0, 100)])
        .await;
    // The watermark becomes 200 - 10 = 190 s (the minimum over the two
    // inputs' watermarks, Spark's default policy, so both move).
    run.push(&[(Some("z"), 1.0, 200)], &[(Some("y"), 1.0, 200)])
        .await;
    run.push(
        &[(Some("b"), 1.0, 150)],
        &[(Some("a"), 2.0, 101), (Some("b"), 2.0, 150)],
    )
    .await;
    assert!(run.output().is_empty(), "{:?}", run.output());
    let state = run.state();
    assert_eq!(state.operator_name, "symmetricHashJoin");
    assert_eq!(state.num_rows_dropped_by_watermark, 3);
    // Rows at 100 are gone (they expire at 105 s); those at 200 stay.
    assert_eq!(state.num_rows_total, 2);
    run.query.stop().await.unwrap();
}

/// A row the next batch's watermark already passes is not stored by a
/// side whose unmatched rows never come out, as no later row can match it;
/// a side an outer join preserves keeps it until then, to come out with
/// nulls. Output and late-row counts are as if it had been stored.
#[tokio::test]
async fn rows_the_next_watermark_passes_are_stored_only_to_come_out_with_nulls() {
    for join_type in [JoinType::Inner, JoinType::Left, JoinType::Right] {
        let run = Running::start(&SessionContext::new(), Join::new(join_type)).await;
        // The batch moves the watermark to 200 - 10 = 190 s: the rows at
        // 100 s (which expire at 105 s) can match nothing later.
        run.push(
            &[(Some("a"), 1.0, 100), (Some("b"), 2.0, 200)],
            &[(Some("c"), 3.0, 100), (Some("d"), 4.0, 200)],
        )
        .await;
        let progress = run.query.recent_progress();
        let stored: Vec<u64> = progress
            .iter()
            .map(|p| p.state_operators[0].num_rows_total)
            .collect();
        // Batch 0 stores the rows at 200 s, and a preserved side's row at
        // 100 s; that one comes out with nulls in the batch the new
        // watermark runs (no data), which leaves the rows at 200 s.
        let (expected_stored, mut expected) = match join_type {
            JoinType::Inner => (vec![2], vec![]),
            JoinType::Left => (vec![3, 2], vec![row(Some(("a", 1.0, 100)), None)]),
            _ => (vec![3, 2], vec![row(None, Some(("c", 3.0, 100)))]),
        };
        assert_eq!(stored, expected_stored, "{join_type}");
        assert_eq!(cells(&run.output()), expected, "{join_type}");
        // Rows for them now are late; a row for b at 199 s matches.
        run.push(
            &[(Some("c"), 5.0, 101)],
            &[(Some("a"), 6.0, 101), (Some("b"), 7.0, 199)],
        )
        .await;
        assert_eq!(run.state().num_rows_dropped_by_watermark, 2, "{join_type}");
        expected.push(row(Some(("b", 2.0, 200)), Some(("b", 7.0, 199))));
        assert_eq!(cells(&run.output()), sorted(expected), "{join_type}");
        run.query.stop().await.unwrap();
    }
}

/// Outer rows come out once, with nulls, only after the watermark passes
/// the row's bound; matched rows never come out with nulls.
#[tokio::test]
async fn outer_rows_come_out_once_after_the_watermark_passes() {
    for join_type in [JoinType::Left, JoinType::Right, JoinType::Full] {
        let run = Running::start(&SessionContext::new(), Join::new(join_type)).await;
        run.push(
            &[(Some("a"), 1.0, 100), (Some("m"), 2.0, 100)],
            &[(Some("b"), 3.0, 100), (Some("m"), 4.0, 102)],
        )
        .await;
        let matched = row(Some(("m", 2.0, 100)), Some(("m", 4.0, 102)));
        assert_eq!(cells(&run.output()), [matched.clone()], "{join_type}");
        // The watermark (the minimum of both inputs') reaches 112 - 10 =
        // 102 s: nothing passed 105 s.
        run.push(&[(Some("z"), 9.0, 112)], &[(Some("x"), 9.0, 130)])
            .await;
        assert_eq!(cells(&run.output()), [matched.clone()], "{join_type}");
        // 120 s: the rows at 100 s and 112 s can no longer match.
        run.push(&[(Some("y"), 9.0, 130)], &[]).await;
        let mut expected = vec![matched.clone()];
        if join_type != JoinType::Right {
            expected.push(row(Some(("a", 1.0, 100)), None));
            expected.push(row(Some(("z", 9.0, 112)), None));
        }
        if join_type != JoinType::Left {
            expected.push(row(None, Some(("b", 3.0, 100))));
        }
        assert_eq!(
            cells(&run.output()),
            sorted(expected.clone()),
            "{join_type}"
        );
        // Nothing comes out twice later.
        run.push(&[(Some("w"), 9.0, 300)], &[(Some("v"), 9.0, 300)])
            .await;
        let output = cells(&run.output());
        for line in &expected {
            assert_eq!(
                output.iter().filter(|l| *l == line).count(),
                1,
                "{join_type}: {line} in {output:?}"
            );
        }
        run.query.stop().await.unwrap();
    }
}

/// A left semi join emits each left row once, at its first match, and
/// nothing of the right.
#[tokio::test]
async fn left_semi_emits_each_left_row_once() {
    let run = Running::start(&SessionContext::new(), Join::new(JoinType::LeftSemi)).await;
    run.push(&[(Some("a"), 1.0, 100), (Some("b"), 2.0, 100)], &[])
        .await;
    run.push(&[], &[(Some("a"), 3.0, 101), (Some("a"), 4.0, 102)])
        .await;
    run.push(&[(Some("a"), 5.0, 103)], &[(Some("a"), 6.0, 103)])
        .await;
    let output: Vec<String> = cells(&run.output());
    assert_eq!(
        output,
        ["a|1.0|1970-01-01T00:01:40", "a|5.0|1970-01-01T00:01:43"],
        "{output:?}"
    );
    run.query.stop().await.unwrap();
}

/// Null keys never match, and in an outer join their rows come out with
/// nulls.
#[tokio::test]
async fn null_keys_never_match() {
    for join_type in [JoinType::Inner, JoinType::Left] {
        let run = Running::start(&SessionContext::new(), Join::new(join_type)).await;
        run.push(&[(None, 1.0, 100)], &[(None, 2.0, 100)]).await;
        run.push(&[(None, 3.0, 200)], &[(None, 4.0, 200)]).await;
        let output = cells(&run.output());
        match join_type {
            JoinType::Inner => assert!(output.is_empty(), "{output:?}"),
            _ => assert_eq!(output.len(), 2, "{output:?}"),
        }
        assert!(output.iter().all(|l| l.ends_with("||")), "{output:?}");
        run.query.stop().await.unwrap();
    }
}

/// A stream joined with itself (two scans of one source in SQL).
#[tokio::test]
async fn a_stream_joins_with_itself() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "10 seconds")
        .unwrap();
    ctx.register_table("trades", df.into_view()).unwrap();
    let sink = MemorySink::new();
    let dir = tempfile::tempdir().unwrap();
    let query = ctx
        .sql(
            "SELECT a.symbol, a.price AS first, b.price AS second FROM trades a JOIN trades b \
             ON a.symbol = b.symbol AND a.event_time < b.event_time \
             AND b.event_time <= a.event_time + INTERVAL '5' SECOND",
        )
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap();
    stream.push(rows(&[(Some("a"), 1.0, 100)])).unwrap();
    query.process_all_available().await.unwrap();
    stream
        .push(rows(&[(Some("a"), 2.0, 103), (Some("a"), 3.0, 110)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        ["| a      | 1.0   | 2.0    |"],
        "{:?}",
        sorted_rows(&sink.batches())
    );
    query.stop().await.unwrap();
}

/// Outer and semi joins need a watermark and a time bound to know when a
/// row is final, as in Spark; an inner join runs without them, and
/// `explain` says its state is unbounded.
#[tokio::test]
async fn unbounded_outer_joins_are_refused_and_inner_ones_explained() {
    let ctx = SessionContext::new();
    let sink = MemorySink::new();
    let dir = tempfile::tempdir().unwrap();
    let (left, right) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
    for join_type in [
        JoinType::Left,
        JoinType::Right,
        JoinType::Full,
        JoinType::LeftSemi,
    ] {
        for join in [
            Join {
                bound_ms: None,
                ..Join::new(join_type)
            },
            Join {
                delay: None,
                ..Join::new(join_type)
            },
        ] {
            let err = start(&ctx, join, &left, &right, &sink, dir.path())
                .await
                .unwrap_err();
            assert!(matches!(err, TidemillError::Unsupported { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains("with_watermark"), "{text}");
            assert!(text.contains("time bound"), "{text}");
        }
    }
    let join = Join {
        bound_ms: None,
        delay: None,
        ..Join::new(JoinType::Inner)
    };
    let text = join
        .plan(
            ctx.read_stream(left.clone()).await.unwrap(),
            ctx.read_stream(right.clone()).await.unwrap(),
        )
        .write_stream()
        .output_mode(OutputMode::Append)
        .explain()
        .unwrap();
    assert!(text.contains("StreamJoin Inner"), "{text}");
    assert!(
        text.contains("left rows are kept forever (unbounded state"),
        "{text}"
    );
    let text = Join::new(JoinType::Inner)
        .plan(
            ctx.read_stream(left.clone()).await.unwrap(),
            ctx.read_stream(right.clone()).await.unwrap(),
        )
        .write_stream()
        .output_mode(OutputMode::Append)
        .explain()
        .unwrap();
    assert!(
        text.contains("left rows are kept until they can no longer match: evicted when the watermark reaches l.event_time +5000 ms"),
        "{text}"
    );
    // Update mode is refused: a joined row is final when emitted.
    let err = Join::new(JoinType::Inner)
        .plan(
            ctx.read_stream(left.clone()).await.unwrap(),
            ctx.read_stream(right).await.unwrap(),
        )
        .write_stream()
        .output_mode(OutputMode::Update)
        .explain()
        .unwrap_err();
    assert!(err.to_string().contains("append mode only"), "{err}");
}

/// The stored rows and their matched flags survive a restart: a row
/// stored before it matches after, and an outer row that matched before
/// the restart never comes out with nulls.
#[tokio::test]
async fn stored_rows_survive_a_restart() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let (left, right) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
    let sink = MemorySink::new();
    let join = Join::new(JoinType::Left);
    let query = start(&ctx, join, &left, &right, &sink, dir.path())
        .await
        .unwrap();
    left.push(rows(&[(Some("a"), 1.0, 100), (Some("b"), 2.0, 100)]))
        .unwrap();
    right.push(rows(&[(Some("b"), 3.0, 101)])).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();

    let query = start(&ctx, join, &left, &right, &sink, dir.path())
        .await
        .unwrap();
    right.push(rows(&[(Some("a"), 4.0, 102)])).unwrap();
    query.process_all_available().await.unwrap();
    left.push(rows(&[(Some("z"), 5.0, 200)])).unwrap();
    right.push(rows(&[(Some("z"), 5.0, 200)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        cells(&sorted_rows(&sink.batches())),
        sorted(vec![
            row(Some(("a", 1.0, 100)), Some(("a", 4.0, 102))),
            row(Some(("b", 2.0, 100)), Some(("b", 3.0, 101))),
            row(Some(("z", 5.0, 200)), Some(("z", 5.0, 200))),
        ])
    );
    query.stop().await.unwrap();

    // A changed join is refused before any batch runs, saying what changed.
    let changed = Join::new(JoinType::Inner);
    let err = start(&ctx, changed, &left, &right, &sink, dir.path())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("operator 0 changed from StreamJoin Left"),
        "{text}"
    );
    assert!(text.contains("to StreamJoin Inner"), "{text}");
}

/// Batch equals stream: random rows with bounded disorder, pushed in
/// random micro-batches on both sides over 1 or 3 partitions, give every
/// join type the same rows as the same join run as a batch job.
#[tokio::test]
async fn each_join_type_gives_the_batch_jobs_rows() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let symbols = ["a", "b", "c", "d"];
    for seed in 0..6_u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        // (arrival ms, side, row): rows arrive up to 9 s after their
        // event time, under the 10 s watermark delay, so none is late.
        let mut arriving: Vec<(i64, usize, (Option<&str>, f64, i64))> = (0..rng
            .random_range(1..120))
            .map(|n| {
                let symbol = match rng.random_range(0..10) {
                    0 => None,
                    k => Some(symbols[k % symbols.len()]),
                };
                let time = rng.random_range(0..120);
                let arrival = time * 1000 + rng.random_range(0..9_000);
                (arrival, rng.random_range(0..2), (symbol, n as f64, time))
            })
            .collect();
        arriving.sort_by_key(|(arrival, _, _)| *arrival);
        let side_rows = |side: usize| -> Vec<(Option<&str>, f64, i64)> {
            arriving
                .iter()
                .filter(|(_, s, _)| *s == side)
                .map(|(_, _, r)| *r)
                .collect()
        };
        let (all_left, all_right) = (side_rows(0), side_rows(1));
        for join_type in [
            JoinType::Inner,
            JoinType::Left,
            JoinType::Right,
            JoinType::Full,
            JoinType::LeftSemi,
        ] {
            let join = Join::new(join_type);
            let ctx = SessionContext::new();
            let expected = cells(&sorted_rows(
                &join
                    .plan(
                        ctx.read_batch(rows(&all_left)).unwrap(),
                        ctx.read_batch(rows(&all_right)).unwrap(),
                    )
                    .collect()
                    .await
                    .unwrap(),
            ));
            for partitions in [1, 3] {
                let ctx = SessionContext::new_with_config(
                    SessionConfig::new().with_target_partitions(partitions),
                );
                let run = Running::start(&ctx, join).await;
                let mut start = 0;
                while start < arriving.len() {
                    let end = (start + rng.random_range(1..20)).min(arriving.len());
                    let part = &arriving[start..end];
                    let pick = |side: usize| -> Vec<(Option<&str>, f64, i64)> {
                        part.iter()
                            .filter(|(_, s, _)| *s == side)
                            .map(|(_, _, r)| *r)
                            .collect()
                    };
                    run.push(&pick(0), &pick(1)).await;
                    start = end;
                }
                // Far-future rows on both sides move the watermark past
                // everything; their own output is left out.
                run.push(&[(Some("~"), 0.0, 100_000)], &[(Some("~"), 0.0, 100_000)])
                    .await;
                let got: Vec<String> = cells(&run.output())
                    .into_iter()
                    .filter(|l| !l.contains('~'))
                    .collect();
                assert_eq!(
                    got, expected,
                    "seed {seed}, {join_type}, {partitions} partitions"
                );
                run.query.stop().await.unwrap();
            }
        }
    }
}

/// Batches large enough for the join to work on its state partitions on
/// several threads give the batch job's rows, run after run: many symbols
/// (spread over every partition), thousands of rows per batch, each join
/// type, one and three input partitions.
#[tokio::test]
async fn large_batches_joined_partition_by_partition_give_the_batch_jobs_rows() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    type Arriving<'a> = (i64, usize, (Option<&'a str>, f64, i64));
    fn pick<'a>(part: &[Arriving<'a>], side: usize) -> Vec<(Option<&'a str>, f64, i64)> {
        part.iter()
            .filter(|(_, s, _)| *s == side)
            .map(|(_, _, r)| *r)
            .collect()
    }
    let symbols: Vec<String> = (0..300).map(|k| format!("s{k}")).collect();
    for seed in 0..3_u64 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        // Rows arrive up to 9 s after their event time (under the 10 s
        // watermark delay): none is late.
        let mut arriving: Vec<Arriving> = (0..15_000)
            .map(|n| {
                let symbol = match rng.random_range(0..200) {
                    0 => None,
                    k => Some(symbols[k % symbols.len()].as_str()),
                };
                let time = rng.random_range(0..300);
                let arrival = time * 1000 + rng.random_range(0..9_000);
                (arrival, rng.random_range(0..2), (symbol, n as f64, time))
            })
            .collect();
        arriving.sort_by_key(|(arrival, _, _)| *arrival);
        for join_type in [JoinType::Inner, JoinType::Full, JoinType::LeftSemi] {
            let join = Join::new(join_type);
            let ctx = SessionContext::new();
            let expected = cells(&sorted_rows(
                &join
                    .plan(
                        ctx.read_batch(rows(&pick(&arriving, 0))).unwrap(),
                        ctx.read_batch(rows(&pick(&arriving, 1))).unwrap(),
                    )
                    .collect()
                    .await
                    .unwrap(),
            ));
            assert!(expected.len() > 1_000, "{join_type}: {}", expected.len());
            for partitions in [1, 3] {
                let ctx = SessionContext::new_with_config(
                    SessionConfig::new().with_target_partitions(partitions),
                );
                let run = Running::start(&ctx, join).await;
                // Three batches of about 5 000 rows.
                for part in arriving.chunks(5_000) {
                    run.push(&pick(part, 0), &pick(part, 1)).await;
                }
                run.push(&[(Some("~"), 0.0, 100_000)], &[(Some("~"), 0.0, 100_000)])
                    .await;
                let got: Vec<String> = cells(&run.output())
                    .into_iter()
                    .filter(|l| !l.contains('~'))
                    .collect();
                assert_eq!(
                    got.len(),
                    expected.len(),
                    "seed {seed}, {join_type}, {partitions} partitions"
                );
                assert!(
                    got == expected,
                    "seed {seed}, {join_type}, {partitions} partitions: rows differ"
                );
                run.query.stop().await.unwrap();
            }
        }
    }
}

/// A long run with an advancing watermark keeps the join's state rows
/// flat: rows are evicted as fast as they come.
#[tokio::test]
async fn state_stays_flat_as_the_watermark_advances() {
    let run = Running::start(&SessionContext::new(), Join::new(JoinType::Full)).await;
    let mut totals = Vec::new();
    for second in 0..120_i64 {
        // One symbol per second: each left row matches one right row.
        let symbol = format!("s{second}");
        run.push(
            &[(Some(&symbol), 1.0, second)],
            &[(Some(&symbol), 2.0, second)],
        )
        .await;
        totals.push(run.state().num_rows_total);
    }
    // 10 s of delay plus 5 s of bound: about 15 s of rows per side.
    let max = *totals[60..].iter().max().unwrap();
    assert!(max <= 34, "state grew: {totals:?}");
    assert!(totals[60..].iter().all(|&t| t >= 20), "{totals:?}");
    assert_eq!(run.output().len(), 120);
    run.query.stop().await.unwrap();
}

/// Outer rows of a null-free stream carry the column types of both sides.
#[tokio::test]
async fn a_full_join_keeps_both_sides_columns_nullable() {
    let ctx = SessionContext::new();
    let (left, right) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
    let df = Join::new(JoinType::Full).plan(
        ctx.read_stream(left).await.unwrap(),
        ctx.read_stream(right).await.unwrap(),
    );
    let schema = df.schema().as_arrow().clone();
    assert_eq!(schema.fields().len(), 6);
    assert!(schema.fields().iter().all(|f| f.is_nullable()));
    assert_eq!(
        schema.field(5).data_type(),
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None)
    );
}

/// An inner join without watermarks or a time bound runs, as Spark's:
/// rows match however far apart in time, and every row stays in the state.
#[tokio::test]
async fn an_unbounded_inner_join_matches_rows_far_apart_and_keeps_them() {
    let join = Join {
        bound_ms: None,
        delay: None,
        ..Join::new(JoinType::Inner)
    };
    let run = Running::start(&SessionContext::new(), join).await;
    run.push(&[(Some("a"), 1.0, 100)], &[]).await;
    run.push(&[], &[(Some("a"), 2.0, 100_000)]).await;
    run.push(&[(Some("a"), 3.0, 5)], &[(Some("b"), 4.0, 7)])
        .await;
    assert_eq!(
        cells(&run.output()),
        sorted(vec![
            row(Some(("a", 1.0, 100)), Some(("a", 2.0, 100_000))),
            row(Some(("a", 3.0, 5)), Some(("a", 2.0, 100_000))),
        ])
    );
    let state = run.state();
    assert_eq!(state.num_rows_total, 4);
    assert_eq!(state.num_rows_dropped_by_watermark, 0);
    run.query.stop().await.unwrap();
}

/// A condition without any equality (a time bound and an inequality only)
/// joins every pair that passes it.
#[tokio::test]
async fn a_join_without_an_equality_key_pairs_what_the_condition_allows() {
    let ctx = SessionContext::new();
    let (left, right) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
    let watermarked = |df: DataFrame, name: &str| {
        df.with_watermark("event_time", "10 seconds")
            .unwrap()
            .alias(name)
            .unwrap()
    };
    let l = watermarked(ctx.read_stream(left.clone()).await.unwrap(), "l");
    let r = watermarked(ctx.read_stream(right.clone()).await.unwrap(), "r");
    let df = l
        .join_on(
            r,
            JoinType::Inner,
            [
                col("l.symbol").not_eq(col("r.symbol")),
                col("l.event_time").between(
                    col("r.event_time") - millis(5_000),
                    col("r.event_time") + millis(5_000),
                ),
            ],
        )
        .unwrap()
        .select(vec![col("l.symbol"), col("r.symbol")])
        .unwrap();
    let sink = MemorySink::new();
    let query = df
        .write_stream()
        .sink(sink.clone())
        .output_mode(OutputMode::Append)
        .start()
        .await
        .unwrap();
    left.push(rows(&[(Some("a"), 1.0, 100), (Some("b"), 1.0, 100)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    right
        .push(rows(&[(Some("a"), 1.0, 103), (Some("c"), 1.0, 120)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        ["| b      | a      |"],
        "{:?}",
        sorted_rows(&sink.batches())
    );
    query.stop().await.unwrap();
}
