//! The process's state maintenance thread: CPU work that is not on any
//! batch's critical path (merging a partition's files into a snapshot)
//! runs here, one job at a time, on CPU time the threads running batches
//! leave idle.
//!
//! On Linux the thread runs under the `SCHED_IDLE` policy: it gets a core
//! only when no other thread wants it, and a waking batch thread takes the
//! core from it at once. (A nice value alone still lets it keep a core for
//! a time slice; measured on two cores, the per-batch time of a 10 M-key
//! aggregation then varies by several milliseconds with the snapshots in
//! flight.) Elsewhere, or if the policy is refused, it runs at a lower
//! nice value. Work that must not wait for idle time (a snapshot that is
//! overdue) runs elsewhere: see `StateStore::start_snapshots`.

use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The queue of the maintenance thread, started on first use.
static QUEUE: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// Nice value of the maintenance thread where `SCHED_IDLE` is not to be
/// had (0 is the default, 19 the lowest priority).
const NICENESS: i32 = 10;

/// Runs `work` on the maintenance thread; the receiver gets its result
/// (or is closed if the work panicked).
pub(crate) fn run<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> oneshot::Receiver<R> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(work());
    });
    let mut queue = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
    let job = match queue.as_ref() {
        Some(q) => match q.send(job) {
            Ok(()) => return rx,
            Err(returned) => returned.0,
        },
        None => job,
    };
    // No thread yet (or it died with a panicking job): start one.
    let (sender, jobs) = channel::<Job>();
    std::thread::Builder::new()
        .name("tidemill-state-maintenance".into())
        .spawn(move || {
            lower_priority();
            for job in jobs {
                // A panicking job closes its result channel; the thread
                // goes on with the next.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })
        .expect("spawning the state maintenance thread");
    sender
        .send(job)
        .expect("the new maintenance thread is listening");
    *queue = Some(sender);
    rx
}

/// Lowers the calling thread's scheduling priority: a nice value, then the
/// `SCHED_IDLE` policy (Linux: both are per thread). Best effort:
/// elsewhere, or if refused, nothing (or only the nice value) changes.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid, setpriority and sched_setscheduler have no
    // memory-safety preconditions (`param` outlives the call); they only
    // change the calling thread's scheduling.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICENESS);
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_in_order_and_survives_a_panic() {
        let a = run(|| 1);
        let boom = run(|| -> i32 { panic!("job failed") });
        let b = run(|| 2);
        assert_eq!(a.await.unwrap(), 1);
        assert!(boom.await.is_err());
        assert_eq!(b.await.unwrap(), 2);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_on_idle_time_only() {
        // SAFETY: plain queries of the calling thread's scheduling.
        let (policy, nice) = run(|| unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, tid),
            )
        })
        .await
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert!(nice >= NICENESS);
    }
}
