//! Watching running queries: a web page with live charts, Prometheus
//! metrics at `/metrics`, and a JSON API, served by the process that runs
//! the queries, with nothing else to run.
//!
//! A [`Monitor`] is a [`QueryListener`]: it keeps, per query of the
//! session, the recent batches' progress and running totals. Its
//! [server](Monitor::serve) answers `GET` only:
//!
//! | path | what |
//! |---|---|
//! | `/` | the page: every query, its status and charts of its recent batches |
//! | `/metrics` | Prometheus text exposition (see [`metrics`]) |
//! | `/api/queries` | the queries, as JSON |
//! | `/api/queries/<id>/progress` | a query's recent batches' progress, as JSON |
//!
//! The page is one HTML file with its script, compiled into the binary: it
//! needs no network and shows strings only as text, never as markup.
//! Nothing served can change a query.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use datafusion::prelude::SessionContext;
//! use tidemill::monitor::Monitor;
//!
//! let ctx = SessionContext::new();
//! let (_monitor, server) = Monitor::start(&ctx, "127.0.0.1:4040").await?;
//! println!("watching at http://{}", server.local_addr());
//! // … start queries from `ctx` …
//! # Ok(()) }
//! ```

pub mod metrics;
mod server;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use serde::Serialize;
use tidemill_engine::{
    QueryIdle, QueryListener, QueryProgress, QueryStarted, QueryTerminated, StreamingContext,
};

pub use server::{MonitorServer, get, scrape_every};

/// How many recent batches the page and the API keep per query.
pub const RECENT_BATCHES: usize = 300;

/// Upper bounds (seconds) of the batch duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// What a query is doing, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Running batches.
    Active,
    /// Waiting for new data.
    Idle,
    /// Stopped without an error.
    Stopped,
    /// Stopped by an error.
    Failed,
}

/// One query as the monitor knows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueryView {
    /// The query's id, stable across restarts.
    pub id: String,
    /// The current run's id.
    pub run_id: String,
    /// The query's name, if given.
    pub name: Option<String>,
    /// What it is doing.
    pub status: Status,
    /// The last committed batch, if any.
    pub batch_id: Option<u64>,
    /// The error that stopped it, if any.
    pub error: Option<String>,
    /// When it started (RFC 3339).
    pub started: String,
    /// Running totals since the monitor first saw the query.
    pub totals: Totals,
    /// The recent batches' progress, oldest first (not in `/api/queries`).
    #[serde(skip)]
    pub recent: VecDeque<QueryProgress>,
}

impl QueryView {
    /// The name the page and the metrics give the query: its name, or
    /// its id.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// The monitor's busy time once it has taken in the end of every query it
/// knows (its listener runs behind the queries), waiting at most 2 s: for
/// benches that measure what watching costs.
pub async fn busy_after_stop(monitor: &Monitor) -> Duration {
    for _ in 0..200 {
        let stopped = monitor
            .queries()
            .iter()
            .all(|q| matches!(q.status, Status::Stopped | Status::Failed));
        if stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    monitor.busy_time()
}

/// Running totals of a query.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Batches committed.
    pub batches: u64,
    /// Rows read.
    pub input_rows: u64,
    /// Rows written to the sink.
    pub output_rows: u64,
    /// Rows dropped as late, over all stateful operators.
    pub late_rows: u64,
    /// Rows left out for a null event time.
    pub rows_without_event_time: u64,
    /// Runs that ended with an error.
    pub failures: u64,
    /// Failed attempts of batches, retried.
    pub retries: u64,
    /// Batch durations: per bucket of [`DURATION_BUCKETS`], the batches
    /// that took at most its bound (cumulative, as Prometheus counts).
    pub duration_buckets: Vec<u64>,
    /// Sum of batch durations, in seconds.
    pub duration_sum_seconds: f64,
    /// Seconds spent per phase, over all batches.
    pub phase_seconds: BTreeMap<String, f64>,
}

/// Keeps what the page and the metrics show, fed as a [`QueryListener`].
#[derive(Debug, Default)]
pub struct Monitor {
    queries: Mutex<BTreeMap<String, QueryView>>,
    /// Nanoseconds spent on its own work (see [`Monitor::busy_time`]).
    busy_nanos: AtomicU64,
}

impl Monitor {
    /// A monitor that knows no query yet; register it with
    /// [`StreamingContext::add_query_listener`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A monitor listening to `ctx`'s queries, served at `address` (such
    /// as `127.0.0.1:4040`, or a bare port, which binds to 127.0.0.1; port
    /// 0 picks a free one).
    pub async fn start(
        ctx: &SessionContext,
        address: &str,
    ) -> std::io::Result<(Arc<Self>, MonitorServer)> {
        let monitor = Self::new();
        ctx.add_query_listener(monitor.clone());
        let server = monitor.serve(address).await?;
        Ok((monitor, server))
    }

    /// Serves the page, the metrics and the API at `address` until the
    /// returned server is dropped.
    pub async fn serve(self: &Arc<Self>, address: &str) -> std::io::Result<MonitorServer> {
        MonitorServer::bind(Arc::clone(self), address).await
    }

    /// The time the monitor spent on its own work so far: taking in the
    /// queries' events (on the listener thread) and answering requests
    /// (rendering and writing the page, the metrics and the API). What
    /// watching costs the process, measured where it is spent.
    pub fn busy_time(&self) -> Duration {
        Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed))
    }

    /// Counts the time since `start` as the monitor's own work.
    pub(crate) fn add_busy(&self, start: Instant) {
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The queries, by id.
    pub fn queries(&self) -> Vec<QueryView> {
        self.queries
            .lock()
            .expect("monitor lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// A query's recent progress, oldest first.
    pub fn recent(&self, id: &str) -> Option<Vec<QueryProgress>> {
        self.queries
            .lock()
            .expect("monitor lock poisoned")
            .get(id)
            .map(|q| q.recent.iter().cloned().collect())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut QueryView)) {
        if let Some(view) = self
            .queries
            .lock()
            .expect("monitor lock poisoned")
            .get_mut(id)
        {
            f(view);
        }
    }
}

impl QueryListener for Monitor {
    fn on_query_started(&self, event: &QueryStarted) {
        let start = Instant::now();
        self.started(event);
        self.add_busy(start);
    }

    fn on_query_progress(&self, progress: &QueryProgress) {
        let start = Instant::now();
        self.progressed(progress);
        self.add_busy(start);
    }

    fn on_query_idle(&self, event: &QueryIdle) {
        let start = Instant::now();
        self.update(&event.id, |view| view.status = Status::Idle);
        self.add_busy(start);
    }

    fn on_query_terminated(&self, event: &QueryTerminated) {
        let start = Instant::now();
        self.terminated(event);
        self.add_busy(start);
    }
}

/// The listener's work, timed by its [`QueryListener`] methods.
impl Monitor {
    fn started(&self, event: &QueryStarted) {
        let mut queries = self.queries.lock().expect("monitor lock poisoned");
        let view = queries
            .entry(event.id.clone())
            .or_insert_with(|| QueryView {
                id: event.id.clone(),
                run_id: event.run_id.clone(),
                name: event.name.clone(),
                status: Status::Active,
                batch_id: None,
                error: None,
                started: event.timestamp.clone(),
                totals: Totals {
                    duration_buckets: vec![0; DURATION_BUCKETS.len()],
                    ..Totals::default()
                },
                recent: VecDeque::new(),
            });
        // A restart keeps the totals and the recent batches.
        view.run_id = event.run_id.clone();
        view.started = event.timestamp.clone();
        view.status = Status::Active;
        view.error = None;
    }

    fn progressed(&self, progress: &QueryProgress) {
        self.update(&progress.id, |view| {
            view.status = Status::Active;
            view.batch_id = Some(progress.batch_id);
            let totals = &mut view.totals;
            totals.batches += 1;
            totals.input_rows += progress.num_input_rows;
            totals.output_rows += progress.num_output_rows;
            totals.retries += progress.num_retries;
            for state in &progress.state_operators {
                totals.late_rows += state.num_rows_dropped_by_watermark;
                totals.rows_without_event_time += state.num_rows_without_event_time;
            }
            let seconds = progress.duration_ms.trigger_execution / 1000.0;
            totals.duration_sum_seconds += seconds;
            for (bucket, bound) in totals.duration_buckets.iter_mut().zip(DURATION_BUCKETS) {
                if seconds <= bound {
                    *bucket += 1;
                }
            }
            for (phase, ms) in metrics::phases(&progress.duration_ms) {
                *totals.phase_seconds.entry(phase.to_string()).or_default() += ms / 1000.0;
            }
            if view.recent.len() == RECENT_BATCHES {
                view.recent.pop_front();
            }
            view.recent.push_back(progress.clone());
        });
    }

    fn terminated(&self, event: &QueryTerminated) {
        self.update(&event.id, |view| {
            view.status = match event.error {
                Some(_) => Status::Failed,
                None => Status::Stopped,
            };
            if event.error.is_some() {
                view.totals.failures += 1;
            }
            view.error = event.error.clone();
        });
    }
}
