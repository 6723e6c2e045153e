//! Running CPU-bound work (encoding and decoding partitions' files, an
//! operator's work on its partitions) on several threads.

use std::sync::{Mutex, OnceLock};
use std::thread;

/// The machine's cores, asked once: `available_parallelism` reads the
/// cgroup quota files on every call (about ten system calls), and this is
/// asked several times per batch.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Applies `f` to every item, on up to as many threads as the machine has
/// cores (the calling thread and scoped ones), and returns the results in
/// the items' order. Runs on the calling thread alone when `parallel` is
/// false or there is one item.
///
/// A panic in `f` is propagated once every thread has finished.
///
/// ```
/// let doubled = tidemill_state::map_parallel(vec![1, 2, 3], true, |n: u32| n * 2);
/// assert_eq!(doubled, [2, 4, 6]);
/// ```
pub fn map_parallel<T: Send, R: Send>(
    items: Vec<T>,
    parallel: bool,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    if !parallel || items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    let threads = cores().min(items.len());
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let len = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let results = Mutex::new((0..len).map(|_| None).collect::<Vec<Option<R>>>());
    let work = || {
        loop {
            let next = queue.lock().expect("queue lock").next();
            let Some((index, item)) = next else { break };
            let result = f(item);
            results.lock().expect("results lock")[index] = Some(result);
        }
    };
    // The calling thread works too, beside `threads - 1` others.
    thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    results
        .into_inner()
        .expect("results lock")
        .into_iter()
        .map(|r| r.expect("every item was processed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_either_way() {
        for parallel in [false, true] {
            let out = map_parallel((0..100).collect(), parallel, |i: u32| i * 2);
            assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        }
        assert!(map_parallel(Vec::<u32>::new(), true, |i| i).is_empty());
    }
}
