//! Transient failures: the same batch is retried with backoff, exactly
//! once in the output; the query fails once failures outlast the policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::{QueryOptions, RetryPolicy, Sink, TidemillError};

use crate::common::{events, events_schema, sorted_rows};

/// A sink that writes to a memory sink, then fails transiently while
/// `failures` lasts: as a store that accepted the write but lost the reply.
#[derive(Debug)]
struct FlakySink {
    inner: MemorySink,
    failures: AtomicUsize,
    transient: bool,
}

#[async_trait]
impl Sink for FlakySink {
    fn description(&self) -> String {
        "FlakySink".into()
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> tidemill::Result<()> {
        self.inner.add_batch(batch_id, schema, batches).await?;
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            let error = TidemillError::sink(
                "FlakySink",
                format!("connection reset writing batch {batch_id}"),
            );
            return Err(if self.transient {
                TidemillError::transient(error)
            } else {
                error
            });
        }
        Ok(())
    }
}

fn fast_retries(max_elapsed: Duration) -> QueryOptions {
    QueryOptions {
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_elapsed,
        },
        ..Default::default()
    }
}

async fn start(
    ctx: &SessionContext,
    stream: &MemoryStream,
    sink: FlakySink,
    options: QueryOptions,
    dir: &std::path::Path,
) -> (Arc<FlakySink>, StreamingQuery) {
    let sink = Arc::new(sink);
    let query = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .write_stream()
        .sink_arc(sink.clone())
        .checkpoint(dir.to_str().unwrap())
        .options(options)
        .start()
        .await
        .unwrap();
    (sink, query)
}

#[tokio::test]
async fn transient_failures_are_retried_and_the_output_stays_exactly_once() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(events_schema());
    let flaky = FlakySink {
        inner: MemorySink::new(),
        failures: AtomicUsize::new(3),
        transient: true,
    };
    let (sink, query) = start(
        &ctx,
        &stream,
        flaky,
        fast_retries(Duration::from_secs(60)),
        dir.path(),
    )
    .await;
    stream.push(events(0..4)).unwrap();
    query.process_all_available().await.unwrap();
    stream.push(events(4..6)).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sink.failures.load(Ordering::SeqCst),
        0,
        "the failures happened"
    );
    assert_eq!(sink.inner.batch_ids(), vec![0, 1]);
    assert_eq!(
        sorted_rows(&sink.inner.batches()),
        sorted_rows(&[events(0..6)])
    );
    let progress = query.recent_progress();
    let ids: Vec<(u64, bool)> = progress.iter().map(|p| (p.batch_id, p.recovered)).collect();
    assert_eq!(
        ids,
        vec![(0, true), (1, false)],
        "batch 0 succeeded on a retry"
    );
    // Its progress counts the three failed attempts (the monitor's
    // tidemill_batch_retries_total sums them).
    let retries: Vec<u64> = progress.iter().map(|p| p.num_retries).collect();
    assert_eq!(retries, vec![3, 0]);
    // The checkpoint holds each batch once.
    assert!(dir.path().join("commits/0").exists() && dir.path().join("commits/1").exists());
}

#[tokio::test]
async fn failures_outlasting_the_policy_stop_the_query() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(events_schema());
    let flaky = FlakySink {
        inner: MemorySink::new(),
        failures: AtomicUsize::new(usize::MAX),
        transient: true,
    };
    let (_sink, query) = start(
        &ctx,
        &stream,
        flaky,
        fast_retries(Duration::from_millis(200)),
        dir.path(),
    )
    .await;
    stream.push(events(0..2)).unwrap();
    let err = query.await_termination().await.unwrap_err().to_string();
    assert!(
        err.contains("connection reset writing batch 0") && err.contains("transient"),
        "{err}"
    );
    // Restarted against a healthy sink, the batch commits exactly once.
    let healthy = FlakySink {
        inner: MemorySink::new(),
        failures: AtomicUsize::new(0),
        transient: true,
    };
    let (sink, query) = start(&ctx, &stream, healthy, Default::default(), dir.path()).await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(sink.inner.batch_ids(), vec![0]);
    assert_eq!(sink.inner.num_rows(), 2);
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(events_schema());
    let broken = FlakySink {
        inner: MemorySink::new(),
        failures: AtomicUsize::new(1),
        transient: false,
    };
    let (sink, query) = start(
        &ctx,
        &stream,
        broken,
        fast_retries(Duration::from_secs(60)),
        dir.path(),
    )
    .await;
    stream.push(events(0..2)).unwrap();
    let err = query.await_termination().await.unwrap_err().to_string();
    assert!(
        err.contains("connection reset") && !err.contains("transient"),
        "{err}"
    );
    assert_eq!(
        sink.failures.load(Ordering::SeqCst),
        0,
        "tried exactly once"
    );
}

/// Run by [`transient_retries_are_said_on_standard_error`] as a child
/// process, whose standard error it reads: a query whose sink fails
/// transiently twice, then succeeds.
#[tokio::test]
#[ignore = "run as a child process by transient_retries_are_said_on_standard_error"]
async fn child_query_with_two_transient_failures() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(events_schema());
    let flaky = FlakySink {
        inner: MemorySink::new(),
        failures: AtomicUsize::new(2),
        transient: true,
    };
    let options = QueryOptions {
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
        },
        ..Default::default()
    };
    let (sink, query) = start(&ctx, &stream, flaky, options, dir.path()).await;
    stream.push(events(0..2)).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(sink.inner.batch_ids(), vec![0]);
}

#[test]
fn transient_retries_are_said_on_standard_error() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "retry::child_query_with_two_transient_failures",
            "--ignored",
            "--nocapture",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child ran: {stdout}");
    let notices: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(notices.len(), 2, "{stderr}");
    for (i, (attempt, wait)) in [(1, "5ms"), (2, "10ms")].into_iter().enumerate() {
        let notice = notices[i];
        assert!(
            notice.contains(&format!(
                "batch 0 failed (attempt {attempt}) with a transient error"
            )) && notice.contains("sink FlakySink: connection reset writing batch 0")
                && notice.contains(&format!(
                    "next try in {wait} (giving up once failures have lasted 60s)"
                )),
            "{notice}"
        );
    }
}
