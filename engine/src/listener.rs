//! Listening to the queries of a session, as Spark's
//! `StreamingQueryListener`: a query's start, each batch's progress, its
//! going idle and its end are delivered, in order, to every listener
//! registered on the session with
//! [`StreamingContext::add_query_listener`](crate::StreamingContext::add_query_listener).
//!
//! Delivery never slows a query down and never loses an event: each
//! listener has its own unbounded queue and its own thread, so a slow
//! listener delays only itself (its queue grows) and the others keep up.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::QueryProgress;

/// Receives the events of a session's streaming queries. Every method has
/// an empty default; implement those you need. Calls come from the
/// listener's own thread, one at a time, in the order the events happened
/// for each query.
pub trait QueryListener: Send + Sync + 'static {
    /// A query started (or restarted on its checkpoint).
    fn on_query_started(&self, _event: &QueryStarted) {}

    /// A query committed a batch.
    fn on_query_progress(&self, _progress: &QueryProgress) {}

    /// A query found no new data after running batches (once per idle
    /// spell, not once per empty trigger).
    fn on_query_idle(&self, _event: &QueryIdle) {}

    /// A query stopped; `error` says why if it failed. Exactly one per run.
    fn on_query_terminated(&self, _event: &QueryTerminated) {}
}

/// A query started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryStarted {
    /// The query's id, stable across restarts.
    pub id: String,
    /// This run's id.
    pub run_id: String,
    /// The query's name, if given.
    pub name: Option<String>,
    /// When it started (RFC 3339, UTC).
    pub timestamp: String,
}

/// A query went idle: its last trigger found no new data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryIdle {
    /// The query's id.
    pub id: String,
    /// This run's id.
    pub run_id: String,
    /// The query's name, if given.
    pub name: Option<String>,
    /// When (RFC 3339, UTC).
    pub timestamp: String,
}

/// A query stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryTerminated {
    /// The query's id.
    pub id: String,
    /// This run's id.
    pub run_id: String,
    /// The query's name, if given.
    pub name: Option<String>,
    /// The error that ended it, if it failed.
    pub error: Option<String>,
}

/// One event for a listener.
#[derive(Debug, Clone)]
pub(crate) enum QueryEvent {
    Started(QueryStarted),
    Progress(Box<QueryProgress>),
    Idle(QueryIdle),
    Terminated(QueryTerminated),
}

/// The listeners of one session: a queue and a thread per listener.
#[derive(Debug, Default)]
pub(crate) struct ListenerBus {
    queues: Mutex<Vec<Sender<Arc<QueryEvent>>>>,
}

impl ListenerBus {
    /// Adds `listener`, which receives the events posted from now on.
    pub fn add(&self, listener: Arc<dyn QueryListener>) {
        let (sender, receiver) = channel::<Arc<QueryEvent>>();
        std::thread::Builder::new()
            .name("tidemill-listener".into())
            .spawn(move || {
                // Ends when the session (and with it the bus) is dropped.
                for event in receiver {
                    let delivered =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &*event {
                            QueryEvent::Started(e) => listener.on_query_started(e),
                            QueryEvent::Progress(p) => listener.on_query_progress(p),
                            QueryEvent::Idle(e) => listener.on_query_idle(e),
                            QueryEvent::Terminated(e) => listener.on_query_terminated(e),
                        }));
                    if delivered.is_err() {
                        tracing::error!("a query listener panicked; it keeps receiving events");
                    }
                }
            })
            .expect("spawning a listener thread");
        self.queues
            .lock()
            .expect("listener lock poisoned")
            .push(sender);
    }

    /// Queues `event` for every listener.
    pub fn post(&self, event: QueryEvent) {
        let event = Arc::new(event);
        let queues = self.queues.lock().expect("listener lock poisoned");
        for queue in queues.iter() {
            // A listener whose thread ended has nothing left to receive.
            let _ = queue.send(Arc::clone(&event));
        }
    }

    /// Whether any listener is registered.
    pub fn is_empty(&self) -> bool {
        self.queues
            .lock()
            .expect("listener lock poisoned")
            .is_empty()
    }
}

impl std::fmt::Debug for dyn QueryListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueryListener")
    }
}
