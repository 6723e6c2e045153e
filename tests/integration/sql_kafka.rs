//! SQL pipelines on Kafka, through the `tidemill` binary and a real broker
//! (Tansu on 127.0.0.1, see `tidemill_harness::kafka_broker`): JSON trades from a topic,
//! aggregated per minute with a watermark, written as JSON messages to
//! another topic exactly once across runs; the same file as a batch job.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use tidemill::connectors::kafka::rdkafka::message::{Headers, Message};

use crate::cli::{text, tidemill};
use tidemill_harness::kafka_broker::{
    Broker, Out, consume_all, create_topic, produce, unique_topic,
};

/// Six trades in minute `minute` (10:0m:00 … 10:0m:50, ten seconds apart),
/// alternating AAPL (partition 0) and MSFT (partition 1), quantity 1..=6:
/// per minute AAPL has 3 trades of volume 9 and MSFT 3 of volume 12.
fn minute_of_trades(minute: u32) -> Vec<Out> {
    (0..6)
        .map(|i| trade(i % 2, minute, i * 10, i + 1))
        .collect()
}

fn trade(symbol: u32, minute: u32, second: u32, quantity: u32) -> Out {
    let name = ["AAPL", "MSFT"][symbol as usize];
    Out {
        partition: Some(symbol as i32),
        key: Some(name.as_bytes().to_vec()),
        value: Some(
            format!(
                "{{\"symbol\": \"{name}\", \"price\": 100.5, \"quantity\": {quantity}, \
                 \"event_time\": \"2024-01-01T10:{minute:02}:{second:02}\"}}"
            )
            .into_bytes(),
        ),
        ..Default::default()
    }
}

fn pipeline(dir: &Path, bootstrap: &str, input: &str, output: &str) -> std::path::PathBuf {
    let file = dir.join(format!("{output}.sql"));
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM trades (
  symbol VARCHAR, price DOUBLE, quantity BIGINT, event_time TIMESTAMP,
  WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
) WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}', topic = '{input}',
        starting_offsets = 'earliest', max_offsets_per_trigger = 5, format = 'json',
        metadata_columns = 'false', kafka.client.id = 'tidemill-sql-test');

CREATE SINK per_minute WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}',
                             topic = '{output}', format = 'json', key_column = 'symbol',
                             output_mode = 'append');

INSERT INTO per_minute
SELECT window.start AS window_start, window.end AS window_end, symbol,
       count(*) AS trades, sum(quantity) AS volume
FROM trades
GROUP BY window(event_time, '1 minute'), symbol;
"
        ),
    )
    .unwrap();
    file
}

/// Output messages as sorted `(key, row)` pairs.
type Rows = Vec<(String, String)>;

/// The output topic's messages as `(key, "start symbol trades volume")`,
/// with the exactly-once headers' `(batch, seq)` pairs.
fn output(bootstrap: &str, topic: &str) -> (Rows, Vec<(String, String)>) {
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for message in consume_all(bootstrap, topic) {
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let start = value["window_start"].as_str().unwrap();
        let end = value["window_end"].as_str().unwrap();
        rows.push((
            key,
            format!(
                "{} {} {} {} {}",
                &start[..19],
                &end[11..19],
                value["symbol"].as_str().unwrap(),
                value["trades"],
                value["volume"]
            ),
        ));
        let mut header = BTreeMap::new();
        if let Some(headers) = message.headers() {
            for h in headers.iter() {
                header.insert(
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        ids.push((
            header.get("tidemill.batch").cloned().unwrap_or_default(),
            header.get("tidemill.seq").cloned().unwrap_or_default(),
        ));
    }
    rows.sort();
    (rows, ids)
}

/// The output rows for `(minute, AAPL trades, AAPL volume)`; MSFT has 3
/// trades of volume 12 in every minute.
fn expected(minutes: &[(u32, u32, u32)]) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for &(minute, aapl_trades, aapl_volume) in minutes {
        for (symbol, trades, volume) in [("AAPL", aapl_trades, aapl_volume), ("MSFT", 3, 12)] {
            rows.push((
                symbol.to_string(),
                format!(
                    "2024-01-01T10:{minute:02}:00 10:{:02}:00 {symbol} {trades} {volume}",
                    minute + 1
                ),
            ));
        }
    }
    rows.sort();
    rows
}

#[tokio::test]
async fn kafka_to_window_aggregation_to_kafka_exactly_once_across_runs() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let input = unique_topic("sql-trades");
    let streamed = unique_topic("sql-per-minute");
    let batched = unique_topic("sql-per-minute-batch");
    create_topic(&bootstrap, &input, 2, &[]).await;
    create_topic(&bootstrap, &streamed, 2, &[]).await;
    create_topic(&bootstrap, &batched, 1, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), &bootstrap, &input, &streamed);
    let file = file.to_str().unwrap();

    // Run 1: minutes 0, 1 and 2 (18 records, at most 5 per batch). The
    // last watermark is 10:02:50 - 10 s = 10:02:40: minutes 0 and 1 are
    // closed and emitted; minute 2 waits.
    for minute in 0..3 {
        produce(&bootstrap, &input, &minute_of_trades(minute));
    }
    let run = tidemill(&["run", file, "--trigger", "available-now"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(stdout.contains("per_minute: batch 3 "), "{stdout}");
    let (rows, _) = output(&bootstrap, &streamed);
    assert_eq!(rows, expected(&[(0, 3, 9), (1, 3, 9)]), "{stdout}");

    // Run 2, resuming from the checkpoint: minutes 3 and 4, and an AAPL
    // trade for minute 0, late (its window closed at 10:01:00, before the
    // watermark 10:02:40): dropped. The watermark reaches 10:04:40:
    // minutes 2 and 3 are emitted; nothing of run 1 is written again.
    let mut late = vec![trade(0, 0, 30, 100)];
    late.extend(minute_of_trades(3));
    late.extend(minute_of_trades(4));
    produce(&bootstrap, &input, &late);
    let run = tidemill(&["run", file, "--trigger", "available-now"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(stdout.contains("1 late rows dropped"), "{stdout}");
    let (rows, ids) = output(&bootstrap, &streamed);
    assert_eq!(
        rows,
        expected(&[(0, 3, 9), (1, 3, 9), (2, 3, 9), (3, 3, 9)]),
        "{stdout}"
    );
    // Every message carries the exactly-once headers, each (batch, seq)
    // once: the sink kept its log in the checkpoint.
    let distinct: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    assert!(ids.iter().all(|(b, s)| !b.is_empty() && !s.is_empty()));
    // Keys are the symbols: each symbol's rows are in one partition.
    let messages = consume_all(&bootstrap, &streamed);
    let mut partition_of: BTreeMap<Vec<u8>, HashSet<i32>> = BTreeMap::new();
    for m in &messages {
        partition_of
            .entry(m.key().unwrap().to_vec())
            .or_default()
            .insert(m.partition());
    }
    assert!(
        partition_of.values().all(|p| p.len() == 1),
        "{partition_of:?}"
    );

    // The same statements as a batch job (every window final, the late
    // trade counted in minute 0), into another topic.
    let batch = pipeline(dir.path(), &bootstrap, &input, &batched);
    let run = tidemill(&["batch", batch.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(text(&run.stdout), "per_minute: 10 rows\n");
    let (rows, _) = output(&bootstrap, &batched);
    assert_eq!(
        rows,
        expected(&[(0, 4, 109), (1, 3, 9), (2, 3, 9), (3, 3, 9), (4, 3, 9)])
    );
}

#[test]
fn kafka_options_are_checked_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "CREATE STREAM t WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1',\n  topc = 'x');",
            "2:3: unknown option 'topc' for a kafka stream (stream t); valid options: connector, bootstrap_servers, topic, topic_pattern",
        ),
        (
            "CREATE STREAM t WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1');",
            "stream t needs the option 'topic' (a name or a comma-separated list) or 'topic_pattern'",
        ),
        (
            "CREATE STREAM t WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', topic = 'x', format = 'json');",
            "format 'json' decodes each value into the declared columns; declare them",
        ),
        (
            "CREATE STREAM t (a INT) WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', topic = 'x');",
            "add format = 'json' to decode each value into the declared columns",
        ),
        (
            "CREATE STREAM t WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', topic = 'x',\n  starting_offsets = 'soonest');",
            "2:3: option 'starting_offsets' must be earliest, latest or offsets JSON",
        ),
        (
            "CREATE SINK s WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', exactly_once = 'maybe');",
            "option 'exactly_once' must be true or false, got 'maybe'",
        ),
    ];
    for (i, (sql, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.sql"));
        std::fs::write(&file, sql).unwrap();
        let out = tidemill(&["explain", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected}\nnot in: {stderr}");
    }
}

/// The topics the broker at `bootstrap` has.
fn topics(bootstrap: &str) -> Vec<String> {
    use tidemill::connectors::kafka::rdkafka::config::ClientConfig;
    use tidemill::connectors::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, std::time::Duration::from_secs(30))
        .unwrap();
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}

/// `tidemill bench --sink real` on a Kafka sink: each point writes to a
/// scratch topic of its own, created and deleted by the command; the
/// sink's real topic receives nothing.
#[tokio::test]
async fn bench_with_a_real_kafka_sink_writes_to_scratch_topics_it_removes() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let output = unique_topic("bench-out");
    create_topic(&bootstrap, &output, 1, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let trades = dir.path().join("trades.json");
    let lines: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"symbol":"S{}","price":{i},"event_time":"2026-01-01T00:00:{:02}"}}"#,
                i % 3,
                i % 60
            )
        })
        .collect();
    std::fs::write(&trades, lines.join("\n") + "\n").unwrap();
    let file = dir.path().join("bench.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM trades (symbol VARCHAR, price DOUBLE, event_time TIMESTAMP)
WITH (connector = 'files', path = '{}', format = 'json');
CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}',
                      topic = '{output}', format = 'json');
INSERT INTO out SELECT symbol, price FROM trades WHERE price >= 50;
",
            dir.path().display()
        ),
    )
    .unwrap();
    let json = dir.path().join("results.json");
    let run = tidemill(&[
        "bench",
        file.to_str().unwrap(),
        "--sample",
        trades.to_str().unwrap(),
        "--triggers",
        "0s,100ms",
        "--rates",
        "500",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--sink",
        "real",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report: tidemill_harness::StudyReport =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.runs.len(), 2);
    for r in &report.runs {
        assert_eq!(r.rows_committed, r.rows_generated, "{}", r.summary());
        // Sample rows 50..100 pass the filter: half of every loop.
        assert_eq!(r.rows_output, r.rows_generated / 2, "{}", r.summary());
    }
    assert!(
        consume_all(&bootstrap, &output).is_empty(),
        "the real topic is untouched"
    );
    let left: Vec<String> = topics(&bootstrap)
        .into_iter()
        .filter(|t| t.contains(".tidemill-bench."))
        .collect();
    assert!(left.is_empty(), "scratch topics left behind: {left:?}");
}
