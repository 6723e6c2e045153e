//! The handle of a running streaming query.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::listener::{ListenerBus, QueryEvent, QueryIdle, QueryStarted, QueryTerminated};
use crate::{QueryProgress, QueryStatus, Result, TidemillError};

/// What the trigger loop has done so far, watched by the handle.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LoopEvents {
    /// Triggers started so far; the n-th trigger has sequence number n.
    pub triggers_started: u64,
    /// Sequence number of the latest trigger that found no new data.
    pub last_idle_trigger: u64,
    /// Whether the loop has ended.
    pub terminated: bool,
}

/// What an [`Trigger::AvailableNow`](crate::Trigger::AvailableNow) run of
/// one source has to read: from where the run started to the target the
/// source pinned when it started (see [`StreamingQuery::backlog`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceBacklog {
    /// The source's description.
    pub description: String,
    /// The committed offset the run started from (`None`: the beginning).
    pub start: Option<crate::Offset>,
    /// The offset the run ends at, if the source can say.
    pub target: Option<crate::Offset>,
}

/// State shared between the trigger loop and the [`StreamingQuery`] handle.
#[derive(Debug)]
pub(crate) struct QueryShared {
    pub id: String,
    pub run_id: String,
    pub name: Option<String>,
    stop: AtomicBool,
    wake: Notify,
    history: usize,
    progress: Mutex<VecDeque<QueryProgress>>,
    status: Mutex<QueryStatus>,
    error: Mutex<Option<Arc<TidemillError>>>,
    events: watch::Sender<LoopEvents>,
    /// The session's query listeners.
    listeners: Option<Arc<ListenerBus>>,
    /// An available-now run's backlog per source.
    backlog: Mutex<Vec<SourceBacklog>>,
    /// Whether the last trigger found no new data (an idle spell).
    idle: AtomicBool,
}

impl QueryShared {
    pub fn new(
        id: String,
        name: Option<String>,
        history: usize,
        listeners: Option<Arc<ListenerBus>>,
    ) -> Self {
        Self {
            listeners,
            backlog: Mutex::new(Vec::new()),
            idle: AtomicBool::new(false),
            id,
            run_id: uuid::Uuid::new_v4().to_string(),
            name,
            stop: AtomicBool::new(false),
            wake: Notify::new(),
            history: history.max(1),
            progress: Mutex::new(VecDeque::new()),
            status: Mutex::new(QueryStatus {
                message: "Initializing sources".into(),
                is_data_available: false,
                is_trigger_active: false,
                is_terminated: false,
            }),
            error: Mutex::new(None),
            events: watch::Sender::new(LoopEvents::default()),
        }
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps for `duration` or until a stop is requested.
    pub async fn sleep(&self, duration: Duration) {
        if duration.is_zero() || self.stop_requested() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.wake.notified() => {}
        }
    }

    /// Records the start of a trigger; returns its sequence number.
    pub fn trigger_started(&self) -> u64 {
        let mut seq = 0;
        self.events.send_modify(|e| {
            e.triggers_started += 1;
            seq = e.triggers_started;
        });
        self.set_status(|s| s.is_trigger_active = true);
        seq
    }

    /// Records that trigger `seq` found no new data; the first of an idle
    /// spell is an idle event for the listeners.
    pub fn trigger_idle(&self, seq: u64) {
        self.events.send_modify(|e| e.last_idle_trigger = seq);
        if !self.idle.swap(true, Ordering::AcqRel) {
            self.post(|| {
                QueryEvent::Idle(QueryIdle {
                    id: self.id.clone(),
                    run_id: self.run_id.clone(),
                    name: self.name.clone(),
                    timestamp: chrono::Utc::now().to_rfc3339(),
                })
            });
        }
    }

    /// Records an available-now run's backlog.
    pub fn set_backlog(&self, backlog: Vec<SourceBacklog>) {
        *self.backlog.lock().expect("backlog lock poisoned") = backlog;
    }

    /// Tells the listeners the query started.
    pub fn started(&self) {
        self.post(|| {
            QueryEvent::Started(QueryStarted {
                id: self.id.clone(),
                run_id: self.run_id.clone(),
                name: self.name.clone(),
                timestamp: chrono::Utc::now().to_rfc3339(),
            })
        });
    }

    /// Posts the event `make` builds to the listeners, if any.
    fn post(&self, make: impl FnOnce() -> QueryEvent) {
        if let Some(bus) = &self.listeners
            && !bus.is_empty()
        {
            bus.post(make());
        }
    }

    pub fn set_status(&self, update: impl FnOnce(&mut QueryStatus)) {
        update(&mut self.status.lock().expect("status lock poisoned"));
    }

    pub fn record_progress(&self, progress: QueryProgress) {
        self.idle.store(false, Ordering::Release);
        self.post(|| QueryEvent::Progress(Box::new(progress.clone())));
        let mut all = self.progress.lock().expect("progress lock poisoned");
        if all.len() == self.history {
            all.pop_front();
        }
        all.push_back(progress);
    }

    /// Records the end of the loop, with the error that ended it, if any.
    pub fn terminate(&self, error: Option<TidemillError>) {
        self.post(|| {
            QueryEvent::Terminated(QueryTerminated {
                id: self.id.clone(),
                run_id: self.run_id.clone(),
                name: self.name.clone(),
                error: error.as_ref().map(ToString::to_string),
            })
        });
        if let Some(error) = error {
            tracing::error!(
                "query {} terminated with error: {error}",
                self.display_name()
            );
            *self.error.lock().expect("error lock poisoned") = Some(Arc::new(error));
        }
        self.set_status(|s| {
            s.is_terminated = true;
            s.is_trigger_active = false;
            s.message = "Stopped".into();
        });
        self.events.send_modify(|e| e.terminated = true);
    }

    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// A running streaming query, returned by
/// [`crate::DataStreamWriter::start`].
///
/// The query runs on a background tokio task. Dropping the handle does not
/// stop it; call [`StreamingQuery::stop`].
#[derive(Debug)]
pub struct StreamingQuery {
    shared: Arc<QueryShared>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl StreamingQuery {
    pub(crate) fn new(shared: Arc<QueryShared>, task: JoinHandle<()>) -> Self {
        Self {
            shared,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// The query's id, which stays the same across restarts from the same
    /// checkpoint.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The id of this run, new at every start.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The query's name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// Whether the query is still running.
    pub fn is_active(&self) -> bool {
        !self.shared.events.borrow().terminated
    }

    /// Stops the query after the batch in progress, if any, has committed,
    /// and waits until it has stopped. Returns the error that had already
    /// stopped it, if it failed.
    pub async fn stop(&self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        self.await_termination().await
    }

    /// Waits until the query stops: for `Once` and `AvailableNow` triggers,
    /// when the input is processed; otherwise after [`StreamingQuery::stop`]
    /// or an error. Returns the error that stopped it, if any.
    pub async fn await_termination(&self) -> Result<()> {
        let mut events = self.shared.events.subscribe();
        // The sender lives in `shared`, which we hold: wait_for cannot fail.
        let _ = events.wait_for(|e| e.terminated).await;
        self.join_task().await;
        self.terminated_result()
    }

    /// As [`StreamingQuery::await_termination`], giving up after `timeout`;
    /// `Ok(false)` if the query is still running then.
    pub async fn await_termination_timeout(&self, timeout: Duration) -> Result<bool> {
        match tokio::time::timeout(timeout, self.await_termination()).await {
            Ok(result) => result.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// Waits until every row available in the sources when this is called
    /// has been processed and committed, i.e. until a trigger that started
    /// after this call finds no new data. Returns the query's error if it
    /// fails meanwhile. Meant for tests; with input that never pauses it
    /// may wait forever.
    pub async fn process_all_available(&self) -> Result<()> {
        let mut events = self.shared.events.subscribe();
        let since = events.borrow().triggers_started;
        let _ = events
            .wait_for(|e| e.terminated || e.last_idle_trigger > since)
            .await;
        if self.shared.events.borrow().terminated {
            self.join_task().await;
            return self.terminated_result();
        }
        Ok(())
    }

    /// The progress report of the latest batch.
    pub fn last_progress(&self) -> Option<QueryProgress> {
        self.shared
            .progress
            .lock()
            .expect("progress lock poisoned")
            .back()
            .cloned()
    }

    /// For a [`Trigger::AvailableNow`](crate::Trigger::AvailableNow) run,
    /// once it has started: each source's backlog, from where the run
    /// started to where it will end (where the source can say); empty
    /// otherwise.
    pub fn backlog(&self) -> Vec<SourceBacklog> {
        self.shared
            .backlog
            .lock()
            .expect("backlog lock poisoned")
            .clone()
    }

    /// The progress reports of recent batches, oldest first (as many as the
    /// writer's `progress_history` setting keeps, 100 by default).
    pub fn recent_progress(&self) -> Vec<QueryProgress> {
        self.shared
            .progress
            .lock()
            .expect("progress lock poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// What the query is doing now.
    pub fn status(&self) -> QueryStatus {
        self.shared
            .status
            .lock()
            .expect("status lock poisoned")
            .clone()
    }

    /// The error that stopped the query, if it failed.
    pub fn error(&self) -> Option<Arc<TidemillError>> {
        self.shared
            .error
            .lock()
            .expect("error lock poisoned")
            .clone()
    }

    async fn join_task(&self) {
        if let Some(task) = self.task.lock().await.take() {
            // The task catches panics itself; a JoinError means it was aborted.
            let _ = task.await;
        }
    }

    fn terminated_result(&self) -> Result<()> {
        match self.error() {
            None => Ok(()),
            Some(error) => Err(TidemillError::Terminated {
                query: self.shared.display_name().to_string(),
                source: error,
            }),
        }
    }
}
