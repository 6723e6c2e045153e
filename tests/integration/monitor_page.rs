//! The monitor's web page in a real headless browser (Chromium, installed
//! by the harness when missing): a windowed aggregation runs over a
//! backlog of JSON files, one file per batch, while the page is opened
//! again and again; every time its charts have points, the numbers it
//! shows (batch, input, output and late rows, watermark, the query table)
//! and every chart's points are checked against the query's own progress
//! of the same batches. At the end a screenshot is saved as
//! `<target>/tmp/monitor-page/monitor.png` (and as the README's
//! `docs/images/monitor.png` when `TIDEMILL_UPDATE_SCREENSHOT` is set).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use regex::Regex;
use tidemill::engine::window::tumble;
use tidemill::monitor::Monitor;
use tidemill::prelude::*;
use tidemill::{QueryProgress, StreamingQuery};
use tidemill_harness::browser::Chromium;

use crate::common::timed_schema;

/// The query's name: the page shows it as text (`&` escaped in the DOM).
const NAME: &str = "trades per 10 s & symbol";
/// Rows per file, one file per batch; file 5 also holds 3 late rows.
const ROWS: [usize; 8] = [40, 55, 30, 70, 45, 60, 35, 50];
const LATE: usize = 3;
/// The charts the page draws for a query with one stateful operator.
const CHARTS: [&str; 9] = [
    "Input rate vs processing rate",
    "Input rows",
    "Batch duration",
    "Batch phases",
    "Event-time gap",
    "Watermark",
    "State rows",
    "State memory",
    "Late rows dropped",
];
/// Page time Chromium lets pass before dumping (the page polls each second).
const PAGE_WAIT: Duration = Duration::from_millis(1500);
/// The screenshot's window, CSS pixels.
const WINDOW: (u32, u32) = (1280, 920);

/// The backlog: file `k` holds `ROWS[k]` trades in seconds `[10k, 10k+10)`
/// after 09:30:00, over three symbols.
fn write_backlog(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let symbols = ["ACME", "GLOBEX", "INITECH"];
    for (k, rows) in ROWS.iter().enumerate() {
        let mut text = String::new();
        let mut line = |symbol: &str, price: f64, millis: usize| {
            let (s, ms) = (millis / 1000, millis % 1000);
            text.push_str(&format!(
                "{{\"symbol\":\"{symbol}\",\"price\":{price:.2},\
                 \"event_time\":\"2025-06-02T09:{:02}:{:02}.{ms:03}\"}}\n",
                30 + s / 60,
                s % 60
            ));
        };
        for i in 0..*rows {
            let millis = k * 10_000 + i * 10_000 / rows;
            line(symbols[i % 3], 100.0 + (k * 7 + i) as f64 % 13.0, millis);
        }
        if k == 5 {
            // Long after the watermark passed the end of their window.
            for i in 0..LATE {
                line(symbols[i], 99.0, 2_000 + i);
            }
        }
        let name = format!("trades-{k}.json");
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, dir.join(name)).unwrap();
    }
}

/// Per symbol and 10-second window: trades and volume, one file per
/// batch, a new batch every 250 ms.
async fn start(ctx: &SessionContext, input: &Path, checkpoint: &Path) -> StreamingQuery {
    let source = FileSource::json(input.to_str().unwrap())
        .schema(timed_schema())
        .max_files_per_trigger(1);
    ctx.read_stream(source)
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap()
        .aggregate(
            vec![
                tumble(col("event_time"), "10 seconds").alias("window"),
                col("symbol"),
            ],
            vec![
                count(lit(1)).alias("trades"),
                sum(col("price")).alias("volume"),
            ],
        )
        .unwrap()
        .write_stream()
        .query_name(NAME)
        .sink(MemorySink::new())
        .output_mode(OutputMode::Append)
        .checkpoint(checkpoint.to_str().unwrap())
        .trigger(Trigger::ProcessingTime(Duration::from_millis(250)))
        .start()
        .await
        .unwrap()
}

/// One chart as the page drew it.
#[derive(Debug)]
struct Chart {
    /// `data-points`.
    points: usize,
    /// Per series (`data-series`): its vertices `(x, y)` left to right
    /// over all its lines (a line is broken where a value is unknown); for
    /// a stacked area, its upper edge.
    series: BTreeMap<String, Vec<(f64, f64)>>,
}

/// What a dumped page shows of one query.
#[derive(Debug)]
struct Shown {
    /// `data-figure` name → text after `name: `.
    figures: BTreeMap<String, String>,
    /// The query table's cells of the query's row.
    row: Vec<String>,
    /// The heading of the query's section.
    heading: String,
    charts: BTreeMap<String, Chart>,
}

fn capture<'a>(re: &Regex, text: &'a str) -> Vec<Vec<&'a str>> {
    re.captures_iter(text)
        .map(|c| {
            c.iter()
                .skip(1)
                .map(|m| m.map_or("", |m| m.as_str()))
                .collect()
        })
        .collect()
}

/// Reads the section and table row of query `id` from the dumped DOM;
/// `None` while the page shows no section for it.
fn read_page(dom: &str, id: &str) -> Option<Shown> {
    let start = dom.find(&format!("<section class=\"query\" data-query=\"{id}\">"))?;
    let section = &dom[start..];
    let section = &section[..section.find("</section>")?];
    let heading = capture(&Regex::new(r"<h2>([^<]*)</h2>").unwrap(), section)
        .first()?
        .first()?
        .to_string();
    let figures = capture(
        &Regex::new(r#"<span data-figure="([^"]+)">([^<]*)</span>"#).unwrap(),
        section,
    )
    .into_iter()
    .map(|c| {
        let prefix = format!("{}: ", c[0]);
        let value = c[1].strip_prefix(&prefix).unwrap_or_else(|| {
            panic!("figure {:?} reads {:?}", c[0], c[1]);
        });
        (c[0].to_string(), value.to_string())
    })
    .collect();
    let figure_re = Regex::new(r#"<figure data-chart="([^"]+)" data-points="(\d+)">"#).unwrap();
    let shape_re =
        Regex::new(r#"<(polyline|polygon) points="([^"]*)"[^>]*data-series="([^"]*)""#).unwrap();
    let mut charts = BTreeMap::new();
    let starts: Vec<(usize, Vec<&str>)> = figure_re
        .captures_iter(section)
        .map(|c| {
            let whole = c.get(0).unwrap();
            (
                whole.start(),
                vec![c.get(1).unwrap().as_str(), c.get(2).unwrap().as_str()],
            )
        })
        .collect();
    for (i, (at, c)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(section.len(), |s| s.0);
        let body = &section[*at..end];
        let mut series = BTreeMap::new();
        for shape in capture(&shape_re, body) {
            let mut xys: Vec<(f64, f64)> = shape[1]
                .split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            if shape[0] == "polygon" {
                // The upper edge, then the lower one backwards.
                xys.truncate(xys.len() / 2);
            }
            // A lone point is drawn as a line of two equal vertices.
            xys.dedup();
            let all: &mut Vec<(f64, f64)> =
                series.entry(shape[2].replace("&amp;", "&")).or_default();
            all.extend(xys);
            assert!(all.is_sorted_by(|a, b| a.0 < b.0), "{}: {all:?}", c[0]);
        }
        charts.insert(
            c[0].replace("&amp;", "&"),
            Chart {
                points: c[1].parse().unwrap(),
                series,
            },
        );
    }
    let row_start = dom.find(&format!("<tr data-query=\"{id}\">"))?;
    let row = &dom[row_start..];
    let row = &row[..row.find("</tr>")?];
    let row = capture(&Regex::new(r"<td[^>]*>([^<]*)</td>").unwrap(), row)
        .into_iter()
        .map(|c| c[0].to_string())
        .collect();
    Some(Shown {
        figures,
        row,
        heading,
        charts,
    })
}

/// The x of batch `i` of `n` (the page draws them from 40 to 354 in a
/// 360-pixel-wide chart).
fn x_of(i: usize, n: usize) -> f64 {
    if n <= 1 {
        40.0
    } else {
        40.0 + i as f64 * 314.0 / (n - 1) as f64
    }
}

/// Checks that `values` (one per batch, `None` where unknown) were drawn
/// as the line `xys` whose top is their largest value: a vertex at each
/// known value's batch, at its height (the page draws `v` at
/// `y = 134 − v / top × 124` in a 150-pixel-high chart), none elsewhere.
fn assert_drawn(chart: &str, xys: &[(f64, f64)], values: &[Option<f64>]) {
    let n = values.len();
    let top = values.iter().flatten().cloned().fold(0.0, f64::max);
    let expected: Vec<(f64, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (x_of(i, n), if top > 0.0 { v / top } else { 0.0 })))
        .collect();
    let drawn: Vec<(f64, f64)> = xys.iter().map(|(x, y)| (*x, (134.0 - y) / 124.0)).collect();
    assert_eq!(
        drawn.len(),
        expected.len(),
        "{chart}: {drawn:?} vs {expected:?}"
    );
    for (i, (d, e)) in drawn.iter().zip(&expected).enumerate() {
        // Drawn to 0.1 pixel.
        assert!(
            (d.0 - e.0).abs() < 0.06 && (d.1 - e.1).abs() < 0.001,
            "{chart}, vertex {i}: drawn at {d:?} (x, fraction of the top), the batches say {e:?}"
        );
    }
}

/// Checks what the page shows against the progress of the same batches
/// (`progress`: the query's, up to the batch the page shows).
fn check(shown: &Shown, progress: &[QueryProgress]) {
    let last = progress.last().unwrap();
    let total = |f: fn(&QueryProgress) -> u64| progress.iter().map(f).sum::<u64>().to_string();
    let late = |p: &QueryProgress| {
        p.state_operators
            .iter()
            .map(|s| s.num_rows_dropped_by_watermark)
            .sum::<u64>()
    };
    let figure = |name: &str| {
        shown
            .figures
            .get(name)
            .unwrap_or_else(|| panic!("no figure {name:?}: {:?}", shown.figures))
            .as_str()
    };
    assert_eq!(figure("batch"), last.batch_id.to_string());
    assert_eq!(figure("input rows"), total(|p| p.num_input_rows));
    assert_eq!(figure("output rows"), total(|p| p.num_output_rows));
    assert_eq!(figure("late rows dropped"), total(late));
    assert_eq!(
        figure("watermark"),
        last.event_time.watermark.as_deref().unwrap()
    );
    assert_eq!(shown.figures.len(), 5, "{:?}", shown.figures);

    // The table: name, id, status, batch, rows in, no error.
    assert_eq!(
        shown.row[0], "trades per 10 s &amp; symbol",
        "{:?}",
        shown.row
    );
    assert_eq!(shown.row[1], last.id);
    assert!(
        ["active", "idle"].contains(&shown.row[2].as_str()),
        "{:?}",
        shown.row
    );
    assert_eq!(shown.row[3], last.batch_id.to_string());
    assert_eq!(shown.row[4], total(|p| p.num_input_rows));
    assert_eq!(shown.row[5], "");
    assert!(
        shown.heading.starts_with("trades per 10 s &amp; symbol — "),
        "{}",
        shown.heading
    );

    // Every chart, one point per batch in every series.
    assert_eq!(
        shown.charts.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut names = CHARTS.to_vec();
            names.sort();
            names
        }
    );
    for (name, chart) in &shown.charts {
        assert_eq!(chart.points, progress.len(), "{name}: one point per batch");
        assert!(!chart.series.is_empty(), "{name}: no series");
        for (series, xys) in &chart.series {
            // Only the event-time gap and the watermark are unknown in
            // some batches.
            if !name.starts_with("Event-time gap") && !name.starts_with("Watermark") {
                assert_eq!(xys.len(), progress.len(), "{name}, {series}");
            }
        }
    }
    let values =
        |f: &dyn Fn(&QueryProgress) -> f64| progress.iter().map(|p| Some(f(p))).collect::<Vec<_>>();
    let series = |chart: &str, series: &str| shown.charts[chart].series[series].clone();
    assert_drawn(
        "Input rows",
        &series("Input rows", "rows"),
        &values(&|p| p.num_input_rows as f64),
    );
    assert_drawn(
        "Late rows dropped",
        &series("Late rows dropped", "late"),
        &values(&|p| late(p) as f64),
    );
    assert_drawn(
        "State rows",
        &series("State rows", "0 aggregate"),
        &values(&|p| p.state_operators[0].num_rows_total as f64),
    );
    assert_drawn(
        "Batch duration",
        &series("Batch duration", "batch"),
        &values(&|p| p.duration_ms.trigger_execution),
    );
    let time = |t: &Option<String>| {
        t.as_deref().map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap_or_else(|e| panic!("{t}: {e}"))
                .timestamp_millis()
        })
    };
    let gaps: Vec<Option<f64>> = progress
        .iter()
        .map(|p| {
            let (max, watermark) = (time(&p.event_time.max), time(&p.event_time.watermark));
            Some((max? - watermark?) as f64 / 1000.0)
        })
        .collect();
    assert_drawn(
        "Event-time gap",
        &series("Event-time gap", "max event time − watermark"),
        &gaps,
    );
}

/// The width and height of a PNG, from its header.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_browser_shows_the_progress_of_the_same_batches() {
    let chromium = tokio::task::spawn_blocking(Chromium::get)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("no headless browser for the page test: {e}"));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("monitor-page");
    std::fs::create_dir_all(&out).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    write_backlog(&tmp.path().join("in"));
    let ctx = SessionContext::new();
    let (_monitor, server) = Monitor::start(&ctx, "127.0.0.1:0").await.unwrap();
    assert!(server.local_addr().ip().is_loopback());
    let url = format!("http://{}/", server.local_addr());
    let began = Instant::now();
    let query = start(&ctx, &tmp.path().join("in"), &tmp.path().join("chk")).await;
    let all_rows = (ROWS.iter().sum::<usize>() + LATE).to_string();

    // Open the page until it shows the whole backlog, checking every
    // view that has points against the batches it shows.
    let mut views = Vec::new();
    loop {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the page never showed the whole backlog; views: {views:?}"
        );
        let dom = {
            let (chromium, url) = (chromium.clone(), url.clone());
            tokio::task::spawn_blocking(move || chromium.dump_dom(&url, PAGE_WAIT))
                .await
                .unwrap()
                .unwrap()
        };
        std::fs::write(out.join("monitor.html"), &dom).unwrap();
        assert!(
            dom.contains("data-refreshed="),
            "the page's script did not refresh it: {dom}"
        );
        let Some(shown) = read_page(&dom, query.id()) else {
            continue;
        };
        if shown.charts.values().all(|c| c.points == 0) {
            continue;
        }
        let batch: u64 = shown.figures["batch"].parse().unwrap();
        let progress: Vec<QueryProgress> = query
            .recent_progress()
            .into_iter()
            .filter(|p| p.batch_id <= batch)
            .collect();
        assert_eq!(
            progress.iter().map(|p| p.batch_id).collect::<Vec<_>>(),
            (0..=batch).collect::<Vec<_>>(),
            "the page shows batch {batch}; the query has these"
        );
        check(&shown, &progress);
        views.push(batch);
        if shown.figures["input rows"] == all_rows
            && query.recent_progress().last().unwrap().batch_id == batch
        {
            break;
        }
    }
    let progress = query.recent_progress();
    assert!(
        progress.len() >= ROWS.len(),
        "one batch per file: {}",
        progress.len()
    );
    let late: u64 = progress
        .iter()
        .map(|p| p.state_operators[0].num_rows_dropped_by_watermark)
        .sum();
    assert_eq!(late, LATE as u64, "the late rows are dropped");
    assert!(progress.iter().map(|p| p.num_output_rows).sum::<u64>() > 0);

    let png_path = out.join("monitor.png");
    {
        let (chromium, url, png_path) = (chromium.clone(), url.clone(), png_path.clone());
        tokio::task::spawn_blocking(move || {
            chromium.screenshot(&url, &png_path, WINDOW, PAGE_WAIT)
        })
        .await
        .unwrap()
        .unwrap();
    }
    let png = std::fs::read(&png_path).unwrap();
    assert_eq!(png_size(&png), WINDOW);
    assert!(
        png.len() > 20_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
    if std::env::var_os("TIDEMILL_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images/monitor.png");
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::copy(&png_path, docs).unwrap();
    }
    eprintln!(
        "page views (batch shown): {views:?}; {} batches; screenshot {} in {:?}",
        progress.len(),
        png_path.display(),
        began.elapsed()
    );
    query.stop().await.unwrap();
}
