use super::kernels::window_type;
use super::kernels::{floor_start, timestamp_array};
use super::*;
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const UNITS: [TimeUnit; 4] = [
    TimeUnit::Second,
    TimeUnit::Millisecond,
    TimeUnit::Microsecond,
    TimeUnit::Nanosecond,
];

fn per_second(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

fn context() -> SessionContext {
    let ctx = SessionContext::new();
    register_window_functions(&ctx);
    ctx
}

/// Registers table `t(ts, s)`: `ts` of `ts_type` holding `values`, `s`
/// a string column ('1 minute' on every row).
fn register(ctx: &SessionContext, ts_type: &DataType, values: &[Option<i64>]) {
    let ts = timestamp_array(
        ts_type,
        values.iter().map(|v| v.unwrap_or(0)).collect(),
        Some(NullBuffer::from_iter(values.iter().map(Option::is_some))),
    )
    .unwrap();
    let s: ArrayRef = Arc::new(StringArray::from(vec!["1 minute"; values.len()]));
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", ts_type.clone(), true),
        Field::new("s", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![ts, s]).unwrap();
    let _ = ctx.deregister_table("t");
    ctx.register_table(
        "t",
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
    )
    .unwrap();
}

async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    ctx.sql(sql).await?.collect().await
}

async fn plan_error(ctx: &SessionContext, sql: &str) -> String {
    match ctx.sql(sql).await {
        Err(e) => e.to_string(),
        Ok(df) => match df.collect().await {
            Err(e) => {
                panic!("expected a planning error for {sql}, got an execution error: {e}")
            }
            Ok(_) => panic!("expected an error for {sql}"),
        },
    }
}

/// `(start, end)` per row of a window struct column, raw values.
fn windows(array: &dyn Array) -> Vec<Option<(i64, i64)>> {
    let windows = array.as_struct();
    let start = arrow::compute::cast(windows.column(0), &DataType::Int64).unwrap();
    let end = arrow::compute::cast(windows.column(1), &DataType::Int64).unwrap();
    let (start, end) = (
        start.as_primitive::<arrow::datatypes::Int64Type>(),
        end.as_primitive::<arrow::datatypes::Int64Type>(),
    );
    (0..windows.len())
        .map(|i| {
            if windows.is_null(i) {
                assert!(
                    start.is_null(i) && end.is_null(i),
                    "fields of a null window are null"
                );
                None
            } else {
                Some((start.value(i), end.value(i)))
            }
        })
        .collect()
}

/// The model: the window of `size` aligned to `offset` holding `t`.
fn model_tumble(t: i64, size: i64, offset: i64) -> (i64, i64) {
    let start = (t as i128 - (t as i128 - offset as i128).rem_euclid(size as i128)) as i64;
    (start, start + size)
}

/// The brute-force model of hop: every start `offset + k * slide` in
/// a range surely covering `t`, kept when `start <= t < start + size`.
fn model_hop(t: i64, size: i64, slide: i64, offset: i64) -> Vec<(i64, i64)> {
    let mut start = (t - size - 2 * slide).div_euclid(slide) * slide + offset.rem_euclid(slide);
    let mut out = Vec::new();
    while start <= t + slide {
        if start <= t && t < start + size {
            out.push((start, start + size));
        }
        start += slide;
    }
    out
}

#[tokio::test]
async fn tumble_boundaries_for_every_unit_size_and_offset() {
    let ctx = context();
    for unit in UNITS {
        let ts_type = DataType::Timestamp(unit, Some("+02:00".into()));
        let ps = per_second(unit);
        // Boundaries, one unit either side, before and after 1970, nulls.
        let mut values = vec![None];
        for seconds in [
            -3_601i64,
            -61,
            -60,
            -59,
            -1,
            0,
            1,
            59,
            60,
            61,
            3_599,
            1_700_000_000,
        ] {
            for delta in [-1, 0, 1] {
                values.push(Some(seconds * ps + delta));
            }
        }
        values.push(None);
        register(&ctx, &ts_type, &values);
        for (size_sql, size) in [
            ("'1 minute'", 60),
            ("'10 s'", 10),
            ("INTERVAL '1 hour'", 3_600),
        ] {
            for (offset_sql, offset) in [
                (None, 0),
                (Some("'15 seconds'"), 15),
                (Some("INTERVAL '-5 seconds'"), -5),
            ] {
                let call = match offset_sql {
                    None => format!("tumble(ts, {size_sql})"),
                    Some(o) => format!("tumble(ts, {size_sql}, {o})"),
                };
                let batches = run(&ctx, &format!("SELECT {call} AS w FROM t"))
                    .await
                    .unwrap();
                let column = batches[0].column(0);
                assert_eq!(column.data_type(), &window_type(&ts_type), "{call}");
                let expected: Vec<_> = values
                    .iter()
                    .map(|v| v.map(|t| model_tumble(t, size * ps, offset * ps)))
                    .collect();
                assert_eq!(windows(column.as_ref()), expected, "{call} on {unit:?}");
            }
        }
    }
}

#[tokio::test]
async fn tumble_before_1970_and_on_boundaries() {
    let ctx = context();
    let ts_type = DataType::Timestamp(TimeUnit::Second, None);
    register(
        &ctx,
        &ts_type,
        &[
            Some(-1),
            Some(-60),
            Some(-61),
            Some(0),
            Some(59),
            Some(60),
            None,
        ],
    );
    let batches = run(&ctx, "SELECT tumble(ts, '1 minute') FROM t")
        .await
        .unwrap();
    assert_eq!(
        windows(batches[0].column(0).as_ref()),
        vec![
            Some((-60, 0)),
            Some((-60, 0)),
            Some((-120, -60)),
            Some((0, 60)),
            Some((0, 60)),
            Some((60, 120)),
            None,
        ]
    );
    // Field access on a null window gives nulls.
    let batches = run(
        &ctx,
        "SELECT w.start AS s FROM (SELECT tumble(ts, '1 minute') AS w FROM t)",
    )
    .await
    .unwrap();
    assert!(batches[0].column(0).is_null(6));
}

#[tokio::test]
async fn tumble_of_a_constant_and_of_interval_literals() {
    let ctx = context();
    let batches = run(
        &ctx,
        "SELECT tumble(TIMESTAMP '2024-03-05 10:07:30', INTERVAL '90 seconds') AS a,
                    tumble(TIMESTAMP '2024-03-05 10:07:30', INTERVAL '1' DAY) AS b,
                    tumble(TIMESTAMP '2024-03-05 10:07:30', '1 hour', INTERVAL '15 minutes') AS c,
                    window(TIMESTAMP '2024-03-05 10:07:30', '1 hour', '1 hour', '15 minutes') AS d",
    )
    .await
    .unwrap();
    let table = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    for expected in [
        "{start: 2024-03-05T00:00:00, end: 2024-03-06T00:00:00}",
        "{start: 2024-03-05T09:15:00, end: 2024-03-05T10:15:00}",
    ] {
        assert!(table.contains(expected), "{expected} not in\n{table}");
    }
    // 10:07:30 is a multiple of 90 s since the epoch: it starts a window.
    assert!(
        table.contains("{start: 2024-03-05T10:07:30, end: 2024-03-05T10:09:00}"),
        "{table}"
    );
    assert_eq!(
        table
            .matches("{start: 2024-03-05T09:15:00, end: 2024-03-05T10:15:00}")
            .count(),
        2
    );
}

#[tokio::test]
async fn boundaries_are_utc_and_the_offset_aligns_them_to_local_time() {
    let ctx = context();
    let ts = "arrow_cast(TIMESTAMP '2024-01-01 10:00:00', 'Timestamp(Second, Some(\"+05:30\"))')";
    let batches = run(
        &ctx,
        &format!(
            "SELECT tumble({ts}, '1 day') AS utc,
                        tumble({ts}, '1 day', '18.5 hours') AS a,
                        tumble({ts}, '1 day', INTERVAL '-5 hours -30 minutes') AS b,
                        tumble({ts}, '1 day')['start'] AS s"
        ),
    )
    .await
    .unwrap();
    let table = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        table.contains("{start: 2024-01-01T05:30:00+05:30, end: 2024-01-02T05:30:00+05:30}"),
        "{table}"
    );
    assert_eq!(
        table
            .matches("{start: 2024-01-01T00:00:00+05:30, end: 2024-01-02T00:00:00+05:30}")
            .count(),
        2,
        "{table}"
    );
    assert!(table.contains("| 2024-01-01T05:30:00+05:30 |"), "{table}");
}

#[tokio::test]
async fn window_is_spark_tumble() {
    let ctx = context();
    let ts_type = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    register(
        &ctx,
        &ts_type,
        &[Some(-1), Some(59_999), Some(60_000), None],
    );
    let a = run(&ctx, "SELECT window(ts, '1 minute') FROM t")
        .await
        .unwrap();
    let b = run(&ctx, "SELECT tumble(ts, '1 minute') FROM t")
        .await
        .unwrap();
    assert_eq!(
        windows(a[0].column(0).as_ref()),
        windows(b[0].column(0).as_ref())
    );
    // A sliding window is a GROUP BY key only.
    let err = run(&ctx, "SELECT window(ts, '1 minute', '30 seconds') FROM t")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("window: a slide_duration different") && err.contains("GROUP BY"),
        "{err}"
    );
}

#[tokio::test]
async fn group_by_a_sliding_window_counts_each_row_in_every_window() {
    let ctx = context();
    let ts_type = DataType::Timestamp(TimeUnit::Second, None);
    register(
        &ctx,
        &ts_type,
        &[Some(0), Some(29), Some(30), Some(75), None],
    );
    let spark = run(
        &ctx,
        "SELECT window(ts, '1 minute', '30 seconds')['start'] AS start, count(*) AS n
         FROM t GROUP BY window(ts, '1 minute', '30 seconds') ORDER BY start",
    )
    .await
    .unwrap();
    let unnested = run(
        &ctx,
        "SELECT w.start AS start, count(*) AS n
         FROM (SELECT unnest(hop(ts, '1 minute', '30 seconds')) AS w FROM t)
         GROUP BY w ORDER BY start",
    )
    .await
    .unwrap();
    let table = |b: &[RecordBatch]| {
        arrow::util::pretty::pretty_format_batches(b)
            .unwrap()
            .to_string()
    };
    assert_eq!(table(&spark), table(&unnested));
    assert_eq!(
        table(&spark),
        [
            "+---------------------+---+",
            "| start               | n |",
            "+---------------------+---+",
            "| 1969-12-31T23:59:30 | 2 |",
            "| 1970-01-01T00:00:00 | 3 |",
            "| 1970-01-01T00:00:30 | 2 |",
            "| 1970-01-01T00:01:00 | 1 |",
            "+---------------------+---+",
        ]
        .join("\n")
    );
}

#[tokio::test]
async fn group_by_window_fields_in_batch() {
    let ctx = context();
    let ts_type = DataType::Timestamp(TimeUnit::Microsecond, None);
    let minute = 60_000_000;
    register(
        &ctx,
        &ts_type,
        &[
            Some(0),
            Some(minute - 1),
            Some(minute),
            Some(-1),
            Some(3 * minute + 5),
            Some(minute + 7),
            None,
        ],
    );
    let batches = run(
        &ctx,
        "SELECT w.start AS start, w.end AS \"end\", count(*) AS n FROM (SELECT tumble(ts, '1 minute') AS w FROM t)
             GROUP BY w.start, w.end ORDER BY w.start NULLS LAST",
    )
    .await
    .unwrap();
    let table = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let expected = [
        "+---------------------+---------------------+---+",
        "| start               | end                 | n |",
        "+---------------------+---------------------+---+",
        "| 1969-12-31T23:59:00 | 1970-01-01T00:00:00 | 1 |",
        "| 1970-01-01T00:00:00 | 1970-01-01T00:01:00 | 2 |",
        "| 1970-01-01T00:01:00 | 1970-01-01T00:02:00 | 2 |",
        "| 1970-01-01T00:03:00 | 1970-01-01T00:04:00 | 1 |",
        "|                     |                     | 1 |",
        "+---------------------+---------------------+---+",
    ];
    assert_eq!(table, expected.join("\n"));
    // Grouping by the struct itself works too.
    let batches = run(
        &ctx,
        "SELECT tumble(ts, '1 minute') AS w, count(*) FROM t GROUP BY w",
    )
    .await
    .unwrap();
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
}

fn hop_rows(array: &dyn Array) -> Vec<Option<Vec<(i64, i64)>>> {
    let list = array.as_list::<i32>();
    (0..list.len())
        .map(|i| {
            (!list.is_null(i)).then(|| {
                windows(list.value(i).as_ref())
                    .into_iter()
                    .map(Option::unwrap)
                    .collect()
            })
        })
        .collect()
}

#[tokio::test]
async fn hop_matches_brute_force_model() {
    let ctx = context();
    let mut rng = StdRng::seed_from_u64(0x7142);
    // (size, slide, offset) in seconds, including sizes that are not
    // multiples of the slide and slides longer than the size (gaps).
    let cases = [
        (60, 60, 0),
        (600, 300, 0),
        (600, 60, 0),
        (10, 3, 0),
        (10, 3, 2),
        (5, 7, 0),
        (5, 7, 3),
        (7, 5, 4),
        (3_600, 900, 600),
    ];
    for unit in [
        TimeUnit::Second,
        TimeUnit::Millisecond,
        TimeUnit::Nanosecond,
    ] {
        let ts_type = DataType::Timestamp(unit, Some("-05:00".into()));
        let ps = per_second(unit);
        let mut values: Vec<Option<i64>> = (0..500)
            .map(|_| Some(rng.random_range(-20_000 * ps..20_000 * ps)))
            .collect();
        values.extend([None, Some(0), Some(-ps), Some(-1), Some(ps * 60)]);
        register(&ctx, &ts_type, &values);
        for (size, slide, offset) in cases {
            let sql = if offset == 0 {
                format!("SELECT hop(ts, '{size} s', INTERVAL '{slide} seconds') FROM t")
            } else {
                format!("SELECT hop(ts, '{size} s', '{slide} s', '{offset} s') FROM t")
            };
            let batches = run(&ctx, &sql).await.unwrap();
            let column = batches[0].column(0);
            assert_eq!(
                column.data_type(),
                &DataType::new_list(window_type(&ts_type), true)
            );
            let expected: Vec<_> = values
                .iter()
                .map(|v| v.map(|t| model_hop(t, size * ps, slide * ps, offset * ps)))
                .collect();
            let actual = hop_rows(column.as_ref());
            assert_eq!(actual, expected, "{sql} on {unit:?}");
            if size % slide == 0 {
                let per_row = (size / slide) as usize;
                assert!(actual.iter().flatten().all(|w| w.len() == per_row), "{sql}");
            }
        }
    }
}

#[tokio::test]
async fn unnest_hop_gives_one_row_per_window() {
    let ctx = context();
    let ts_type = DataType::Timestamp(TimeUnit::Millisecond, None);
    let minute = 60_000;
    register(
        &ctx,
        &ts_type,
        &[Some(0), Some(7 * minute), Some(12 * minute), None],
    );
    let batches = run(
        &ctx,
        "SELECT w.start AS start, w.end AS \"end\", count(*) AS n
             FROM (SELECT unnest(hop(ts, '10 minutes', '5 minutes')) AS w FROM t)
             GROUP BY w.start, w.end ORDER BY w.start NULLS LAST",
    )
    .await
    .unwrap();
    let table = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let expected = [
        "+---------------------+---------------------+---+",
        "| start               | end                 | n |",
        "+---------------------+---------------------+---+",
        "| 1969-12-31T23:55:00 | 1970-01-01T00:05:00 | 1 |",
        "| 1970-01-01T00:00:00 | 1970-01-01T00:10:00 | 2 |",
        "| 1970-01-01T00:05:00 | 1970-01-01T00:15:00 | 2 |",
        "| 1970-01-01T00:10:00 | 1970-01-01T00:20:00 | 1 |",
        "+---------------------+---------------------+---+",
    ];
    assert_eq!(table, expected.join("\n"));
}

#[tokio::test]
async fn dataframe_helpers() {
    let ctx = SessionContext::new(); // no registration needed
    let ts_type = DataType::Timestamp(TimeUnit::Second, None);
    register(&ctx, &ts_type, &[Some(-1), Some(125)]);
    let df = ctx.table("t").await.unwrap();
    let batches = df
        .select(vec![
            tumble(datafusion::prelude::col("ts"), "1 minute"),
            tumble_with_offset(datafusion::prelude::col("ts"), "1 minute", "30 s"),
            hop(datafusion::prelude::col("ts"), "2 minutes", "1 minute"),
            hop_with_offset(
                datafusion::prelude::col("ts"),
                "2 minutes",
                "1 minute",
                "30 s",
            ),
        ])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let batch = &batches[0];
    assert_eq!(
        windows(batch.column(0).as_ref()),
        vec![Some((-60, 0)), Some((120, 180))]
    );
    assert_eq!(
        windows(batch.column(1).as_ref()),
        vec![Some((-30, 30)), Some((90, 150))]
    );
    assert_eq!(
        hop_rows(batch.column(2).as_ref()),
        vec![
            Some(vec![(-120, 0), (-60, 60)]),
            Some(vec![(60, 180), (120, 240)])
        ]
    );
    assert_eq!(
        hop_rows(batch.column(3).as_ref()),
        vec![
            Some(vec![(-90, 30), (-30, 90)]),
            Some(vec![(30, 150), (90, 210)])
        ]
    );
}

#[tokio::test]
async fn hop_of_null_is_null() {
    let ctx = context();
    register(
        &ctx,
        &DataType::Timestamp(TimeUnit::Second, None),
        &[None, Some(5)],
    );
    let batches = run(&ctx, "SELECT hop(ts, '10 s', '5 s') FROM t")
        .await
        .unwrap();
    assert_eq!(
        hop_rows(batches[0].column(0).as_ref()),
        vec![None, Some(vec![(0, 10), (5, 15)])]
    );
}

#[tokio::test]
async fn bad_arguments_are_planning_errors() {
    let ctx = context();
    register(
        &ctx,
        &DataType::Timestamp(TimeUnit::Second, None),
        &[Some(0)],
    );
    let cases = [
        (
            "SELECT tumble(ts, '0 seconds') FROM t",
            "tumble: size must be greater than zero",
        ),
        (
            "SELECT tumble(ts, INTERVAL '-1 minute') FROM t",
            "tumble: size must be greater than zero",
        ),
        (
            "SELECT tumble(ts, s) FROM t",
            "tumble: size must be a constant",
        ),
        (
            "SELECT tumble(ts, INTERVAL '1 month') FROM t",
            "tumble: size must not contain months",
        ),
        (
            "SELECT hop(ts, INTERVAL '1 year', '1 day') FROM t",
            "hop: size must not contain months",
        ),
        (
            "SELECT tumble(ts, 'ten minutes') FROM t",
            "tumble: invalid size 'ten minutes'",
        ),
        (
            "SELECT tumble(ts, '1 minute', 'soon') FROM t",
            "tumble: invalid offset 'soon'",
        ),
        (
            "SELECT tumble(ts, '1500 ms') FROM t",
            "not a whole number of seconds",
        ),
        (
            "SELECT tumble(ts, NULL) FROM t",
            "tumble: size must not be NULL",
        ),
        (
            "SELECT tumble(ts, 10) FROM t",
            "tumble: size must be a duration",
        ),
        (
            "SELECT tumble(s, '1 minute') FROM t",
            "tumble: ts must be a timestamp",
        ),
        (
            "SELECT tumble(ts) FROM t",
            "expected tumble(ts, size [, offset])",
        ),
        (
            "SELECT hop(ts, '1 minute') FROM t",
            "expected hop(ts, size, slide [, offset])",
        ),
        (
            "SELECT hop(ts, '1 minute', '0 s') FROM t",
            "hop: slide must be greater than zero",
        ),
        (
            "SELECT hop(ts, '1 minute', s) FROM t",
            "hop: slide must be a constant",
        ),
        (
            "SELECT hop(ts, '1 day', '1 ms') FROM t",
            "not a whole number of seconds",
        ),
        (
            "SELECT hop(ts, '100 days', '1 s') FROM t",
            "windows per row",
        ),
    ];
    for (sql, expected) in cases {
        let err = plan_error(&ctx, sql).await;
        assert!(
            err.contains(expected),
            "{sql}: expected '{expected}' in: {err}"
        );
    }
}

#[test]
fn floor_start_near_the_limits() {
    assert_eq!(floor_start(i64::MIN + 5, 10, 0), None);
    assert_eq!(floor_start(i64::MIN + 5, 10, 7), Some(i64::MIN + 5));
    assert_eq!(floor_start(i64::MAX, 10, 0), Some(i64::MAX - i64::MAX % 10));
    assert_eq!(floor_start(-1, 10, 3), Some(-7));
    let _ = Int64Array::from(vec![1]); // keep the import honest
}
