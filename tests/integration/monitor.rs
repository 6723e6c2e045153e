//! The monitor (`tidemill::monitor`, `tidemill run --ui`): `/metrics` read
//! by a Prometheus text-format parser and checked against the progress of
//! the same batches, the JSON API against the query's own progress, the
//! page served from the binary, strings never served as markup, and
//! nothing but `GET`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::*;
use tidemill::engine::window::tumble;
use tidemill::monitor::Monitor;
use tidemill::prelude::*;
use tidemill::{QueryProgress, StreamingQuery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{timed_rows as rows, timed_schema as schema};

/// Sends `request` to `address` and returns the status line and body.
async fn http(address: SocketAddr, request: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

async fn get(address: SocketAddr, path: &str) -> String {
    let (status, body) = http(address, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {body}");
    body
}

/// The samples of `/metrics`, by name and `query` label, and for the
/// labelled families by their other labels too.
fn parse(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap().samples
}

fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&prometheus_parse::Sample> = samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match &found[0].value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

/// A windowed count of `stream` named `name`, watched by a monitor.
async fn start(ctx: &SessionContext, stream: &MemoryStream, name: &str) -> StreamingQuery {
    ctx.read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap()
        .aggregate(
            vec![
                tumble(col("event_time"), "10 seconds").alias("w"),
                col("symbol"),
            ],
            vec![count(lit(1)).alias("n")],
        )
        .unwrap()
        .write_stream()
        .query_name(name)
        .sink(MemorySink::new())
        .output_mode(OutputMode::Append)
        .start()
        .await
        .unwrap()
}

/// Waits until the monitor has seen `batches` batches of query `id`.
async fn seen(monitor: &Monitor, id: &str, batches: usize) {
    for _ in 0..200 {
        if monitor.recent(id).is_some_and(|r| r.len() >= batches) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the monitor saw {:?} batches",
        monitor.recent(id).map(|r| r.len())
    );
}

#[tokio::test]
async fn metrics_and_api_match_the_progress_of_the_same_batches() {
    let ctx = SessionContext::new();
    let (monitor, server) = Monitor::start(&ctx, "127.0.0.1:0").await.unwrap();
    let address = server.local_addr();
    assert!(address.ip().is_loopback());
    let stream = MemoryStream::new(schema());
    let query = start(&ctx, &stream, "bars").await;
    for (second, symbol) in [(1, "a"), (2, "b"), (12, "a"), (30, "b"), (3, "a")] {
        stream.push(rows(&[(Some(symbol), 1.0, second)])).unwrap();
        query.process_all_available().await.unwrap();
    }
    let progress: Vec<QueryProgress> = query.recent_progress();
    seen(&monitor, query.id(), progress.len()).await;

    // The monitor counts the time of its own work: taking in the events,
    // and each request it answers.
    let after_events = monitor.busy_time();
    assert!(after_events > Duration::ZERO);
    let text = get(address, "/metrics").await;
    let mut after_request = monitor.busy_time();
    for _ in 0..100 {
        if after_request > after_events {
            break;
        }
        // The busy time is added once the answer is written.
        tokio::time::sleep(Duration::from_millis(5)).await;
        after_request = monitor.busy_time();
    }
    assert!(
        after_request > after_events,
        "a request adds to the busy time"
    );
    let samples = parse(&text);
    let q = [("query", "bars")];
    let sum = |f: fn(&QueryProgress) -> u64| progress.iter().map(f).sum::<u64>() as f64;
    assert_eq!(
        value(&samples, "tidemill_batches_total", &q),
        progress.len() as f64
    );
    assert_eq!(
        value(&samples, "tidemill_input_rows_total", &q),
        sum(|p| p.num_input_rows)
    );
    assert_eq!(
        value(&samples, "tidemill_output_rows_total", &q),
        sum(|p| p.num_output_rows)
    );
    assert_eq!(value(&samples, "tidemill_query_up", &q), 1.0);
    let late = sum(|p| p.state_operators[0].num_rows_dropped_by_watermark);
    assert_eq!(late, 1.0, "the row at 3 s is late");
    assert_eq!(
        value(&samples, "tidemill_late_rows_dropped_total", &q),
        late
    );
    let last = progress.last().unwrap();
    let state = [("query", "bars"), ("operator", "0"), ("kind", "aggregate")];
    assert_eq!(
        value(&samples, "tidemill_state_rows", &state),
        last.state_operators[0].num_rows_total as f64
    );
    let watermark =
        chrono::DateTime::parse_from_rfc3339(last.event_time.watermark.as_deref().unwrap())
            .unwrap()
            .timestamp_millis() as f64
            / 1000.0;
    assert_eq!(value(&samples, "tidemill_watermark_seconds", &q), watermark);
    // The histogram counts every batch, and its sum is their durations'.
    let histogram = samples
        .iter()
        .find(|s| s.metric == "tidemill_batch_duration_seconds")
        .expect("the duration histogram");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        panic!("{histogram:?}");
    };
    assert_eq!(buckets.last().unwrap().count, progress.len() as f64);
    let durations: f64 = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution / 1000.0)
        .sum();
    let sum_sample = value(&samples, "tidemill_batch_duration_seconds_sum", &q);
    assert!(
        (sum_sample - durations).abs() < 1e-9,
        "{sum_sample} vs {durations}"
    );
    let phases: HashMap<String, f64> = samples
        .iter()
        .filter(|s| s.metric == "tidemill_batch_phase_seconds_total")
        .map(|s| {
            let prometheus_parse::Value::Counter(v) = s.value else {
                panic!("{s:?}")
            };
            (s.labels.get("phase").unwrap().to_string(), v)
        })
        .collect();
    let executed: f64 = progress
        .iter()
        .map(|p| p.duration_ms.execution / 1000.0)
        .sum();
    assert!((phases["execute"] - executed).abs() < 1e-9, "{phases:?}");

    // The API: the query, and its recent progress as the query has it.
    let queries: serde_json::Value =
        serde_json::from_str(&get(address, "/api/queries").await).unwrap();
    assert_eq!(queries[0]["name"], "bars");
    assert_eq!(queries[0]["batch_id"], last.batch_id);
    let recent: Vec<QueryProgress> =
        serde_json::from_str(&get(address, &format!("/api/queries/{}/progress", query.id())).await)
            .unwrap();
    let key = |p: &QueryProgress| {
        (
            p.batch_id,
            p.num_input_rows,
            p.num_output_rows,
            p.timestamp.clone(),
        )
    };
    assert!(
        recent.iter().map(key).eq(progress.iter().map(key)),
        "the API's batches differ from the query's"
    );

    query.stop().await.unwrap();
    for _ in 0..100 {
        let samples = parse(&get(address, "/metrics").await);
        if value(&samples, "tidemill_query_up", &q) == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the stopped query still shows as up");
}

/// Read-only and escaped: only GET, a query name with markup and quotes
/// comes out escaped in the metrics and as JSON text, and the page carries
/// no data of its own (it shows strings with textContent).
#[tokio::test]
async fn the_server_is_read_only_and_escapes_what_it_shows() {
    let ctx = SessionContext::new();
    let (monitor, server) = Monitor::start(&ctx, "127.0.0.1:0").await.unwrap();
    let address = server.local_addr();
    let stream = MemoryStream::new(schema());
    let name = "<script>alert(\"x\")</script>";
    let query = start(&ctx, &stream, name).await;
    stream.push(rows(&[(Some("a"), 1.0, 1)])).unwrap();
    query.process_all_available().await.unwrap();
    seen(&monitor, query.id(), 1).await;

    let (status, _) = http(
        address,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = http(address, "GET /nothing HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let text = get(address, "/metrics").await;
    assert!(
        text.contains(r#"query="<script>alert(\"x\")</script>""#),
        "{text}"
    );
    // The parser keeps the escapes in the label value it reads.
    let batches: Vec<prometheus_parse::Sample> = parse(&text)
        .into_iter()
        .filter(|s| s.metric == "tidemill_batches_total")
        .collect();
    assert_eq!(batches.len(), 1);
    assert!(
        batches[0]
            .labels
            .get("query")
            .unwrap()
            .contains("<script>alert(")
    );
    let queries: serde_json::Value =
        serde_json::from_str(&get(address, "/api/queries").await).unwrap();
    assert_eq!(queries[0]["name"], name);
    let page = get(address, "/").await;
    assert!(!page.contains("alert"), "the page is static");
    assert!(!page.contains("innerHTML"), "strings are shown as text");
    // Nothing is loaded from elsewhere: no external script, style sheet
    // or font, and the API is fetched from the page's own server.
    for external in ["<script src", "<link", "@import", "url(", "fetch(\"http"] {
        assert!(!page.contains(external), "{external}");
    }
    query.stop().await.unwrap();
}
