//! Query listeners, as Spark's `StreamingQueryListener`: every query of the
//! session reports its start, each batch's progress, its idle spells and
//! its end, in order; a failed query ends with exactly one terminated
//! event carrying its error; a slow listener loses nothing and does not
//! hold the query back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::prelude::*;
use tidemill::connectors::ForeachBatchError;
use tidemill::prelude::*;
use tidemill::{
    ForeachBatchSink, QueryIdle, QueryListener, QueryProgress, QueryStarted, QueryTerminated, Sink,
    StreamingQuery,
};

use crate::common::{timed_rows as rows, timed_schema as schema};

/// What a listener saw, as short strings, in order.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    delay: Duration,
}

impl Recorder {
    fn slow(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    fn record(&self, event: String) {
        std::thread::sleep(self.delay);
        self.events.lock().unwrap().push(event);
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until the listener has seen `n` events.
    async fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..400 {
            if self.events().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.events()
    }

    /// Waits (up to 20 s) until the listener has seen the query end.
    async fn wait_for_end(&self) -> Vec<String> {
        let ended = |events: &[String]| {
            events
                .iter()
                .any(|e| e.starts_with("terminated") || e.starts_with("failed"))
        };
        for _ in 0..400 {
            if ended(&self.events()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.events()
    }
}

impl QueryListener for Recorder {
    fn on_query_started(&self, event: &QueryStarted) {
        self.record(format!("started {}", event.name.as_deref().unwrap_or("-")));
    }

    fn on_query_progress(&self, progress: &QueryProgress) {
        self.record(format!(
            "progress {} {}",
            progress.batch_id, progress.num_input_rows
        ));
    }

    fn on_query_idle(&self, _event: &QueryIdle) {
        self.record("idle".into());
    }

    fn on_query_terminated(&self, event: &QueryTerminated) {
        self.record(match &event.error {
            None => "terminated".into(),
            Some(error) => format!("failed: {error}"),
        });
    }
}

async fn start(
    ctx: &SessionContext,
    stream: &MemoryStream,
    sink: impl Sink + 'static,
) -> StreamingQuery {
    ctx.read_stream(stream.clone())
        .await
        .unwrap()
        .write_stream()
        .query_name("orders")
        .sink(sink)
        .start()
        .await
        .unwrap()
}

/// Start, each batch's progress in order, one idle event per idle spell,
/// and the end; listeners added after the stream was read hear it too.
#[tokio::test]
async fn events_come_in_order() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    let df = ctx.read_stream(stream.clone()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    ctx.add_query_listener(recorder.clone());
    let query = df
        .write_stream()
        .query_name("orders")
        .sink(MemorySink::new())
        .start()
        .await
        .unwrap();
    for n in 1..=3 {
        let batch: Vec<_> = (0..n).map(|i| (Some("a"), 1.0, i)).collect();
        stream.push(rows(&batch)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    let events = recorder.wait_for(8).await;
    let expected_progress = ["progress 0 1", "progress 1 2", "progress 2 3"];
    assert_eq!(events.first().map(String::as_str), Some("started orders"));
    assert_eq!(events.last().map(String::as_str), Some("terminated"));
    let progress: Vec<&str> = events
        .iter()
        .map(String::as_str)
        .filter(|e| e.starts_with("progress"))
        .collect();
    assert_eq!(progress, expected_progress, "{events:?}");
    // Idle events come between batches, never twice in a row.
    assert!(events.iter().any(|e| e == "idle"), "{events:?}");
    for pair in events.windows(2) {
        assert!(!(pair[0] == "idle" && pair[1] == "idle"), "{events:?}");
    }
    assert_eq!(events.iter().filter(|e| *e == "terminated").count(), 1);
}

/// A failed query ends with exactly one terminated event, with the error.
#[tokio::test]
async fn a_failed_query_ends_with_one_terminated_event_and_its_error() {
    let ctx = SessionContext::new();
    let recorder = Arc::new(Recorder::default());
    ctx.add_query_listener(recorder.clone());
    let stream = MemoryStream::new(schema());
    let sink = ForeachBatchSink::new(|_df, _batch_id| async {
        Err::<(), ForeachBatchError>("the warehouse is read-only".into())
    });
    let query = start(&ctx, &stream, sink).await;
    stream.push(rows(&[(Some("a"), 1.0, 1)])).unwrap();
    assert!(query.await_termination().await.is_err());
    recorder.wait_for(2).await;
    // Give a duplicate the time to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = recorder.events();
    let ends: Vec<&String> = events
        .iter()
        .filter(|e| e.starts_with("terminated") || e.starts_with("failed"))
        .collect();
    assert_eq!(ends.len(), 1, "{events:?}");
    assert!(ends[0].contains("the warehouse is read-only"), "{events:?}");
    assert_eq!(events[0], "started orders", "{events:?}");
}

/// A slow listener receives every event, in order, after the query has
/// long moved on; a fast one beside it is not held back.
#[tokio::test]
async fn a_slow_listener_loses_nothing() {
    let ctx = SessionContext::new();
    let slow = Arc::new(Recorder::slow(Duration::from_millis(30)));
    let fast = Arc::new(Recorder::default());
    ctx.add_query_listener(slow.clone());
    ctx.add_query_listener(fast.clone());
    let stream = MemoryStream::new(schema());
    let query = start(&ctx, &stream, MemorySink::new()).await;
    for i in 0..40 {
        stream.push(rows(&[(Some("a"), 1.0, i)])).unwrap();
        query.process_all_available().await.unwrap();
    }
    let batches = query.last_progress().unwrap().batch_id + 1;
    query.stop().await.unwrap();
    // The fast listener has everything long before the slow one; both end
    // with the query's end.
    let fast_events = fast.wait_for_end().await;
    let progress = |events: &[String]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.starts_with("progress"))
            .cloned()
            .collect()
    };
    assert_eq!(fast_events.last().map(String::as_str), Some("terminated"));
    let slow_events = slow.wait_for_end().await;
    assert_eq!(slow_events, fast_events);
    let seen = progress(&slow_events);
    assert_eq!(seen.len() as u64, batches, "{slow_events:?}");
    for (i, event) in seen.iter().enumerate() {
        assert!(event.starts_with(&format!("progress {i} ")), "{seen:?}");
    }
}
