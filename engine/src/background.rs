//! Checkpoint writes that may overlap a batch: finished on the spot when
//! they can be, otherwise left running as a task.

use std::future::Future;
use std::task::Poll;

use tokio::task::{JoinError, JoinHandle};

/// A write started by [`Background::start`] (done at once, or running as a
/// tokio task) or by [`Background::spawn`] (a task).
///
/// On a local disk a checkpoint log entry is written on the calling thread
/// (see `tidemill_state::durable::LocalFs`), so its future completes on its
/// first poll: spawning it would only hand it to another worker thread,
/// which on an idle machine has to be woken first, and then wake the batch
/// back (tenths of a millisecond a hand-off, for tens of microseconds of
/// work). A write that has to wait (an object store request) keeps
/// overlapping the batch as a task.
pub(crate) enum Background<T> {
    /// The write completed when it was started.
    Done(T),
    /// The write is still running.
    Running(JoinHandle<T>),
}

impl<T: Send + 'static> Background<T> {
    /// Polls `work` once on the calling task and, if it is not done yet,
    /// spawns the rest of it.
    pub(crate) async fn start(work: impl Future<Output = T> + Send + 'static) -> Self {
        let mut work = Box::pin(work);
        match futures::poll!(work.as_mut()) {
            Poll::Ready(out) => Self::Done(out),
            Poll::Pending => Self::Running(tokio::spawn(work)),
        }
    }

    /// Runs `work` as a task from the start: for work that nothing waits
    /// for soon, which another worker thread can do meanwhile.
    pub(crate) fn spawn(work: impl Future<Output = T> + Send + 'static) -> Self {
        Self::Running(tokio::spawn(work))
    }

    /// Waits for the write's outcome; an error if its task panicked or was
    /// cancelled.
    pub(crate) async fn finish(self) -> Result<T, JoinError> {
        match self {
            Self::Done(out) => Ok(out),
            Self::Running(task) => task.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_work_is_done_on_the_spot_and_waiting_work_runs_as_a_task() {
        let done = Background::start(async { 7 }).await;
        assert!(matches!(done, Background::Done(7)));
        assert_eq!(done.finish().await.unwrap(), 7);

        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let waiting = Background::start(async move { rx.await.unwrap() + 1 }).await;
        assert!(matches!(waiting, Background::Running(_)));
        tx.send(41).unwrap();
        assert_eq!(waiting.finish().await.unwrap(), 42);
    }
}
