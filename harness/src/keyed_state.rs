//! The state-scaling run the aggregation and processor benches share: a
//! keyed state built to a size, then timed batches of half existing, half
//! new keys, each checked to emit one row per key it updated.

use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemill_connectors::MemoryStream;
use tidemill_engine::{QueryProgress, StreamingQuery};

use crate::machine::{flush_file_writes, proc_status_mib};

/// What [`keyed_state_run`] measured.
#[derive(Debug)]
pub struct KeyedStateRun {
    /// How long building the state took.
    pub build: Duration,
    /// The process's resident memory once built, in MiB.
    pub rss_built: Option<f64>,
    /// The timed batches' progress, in order.
    pub timed: Vec<QueryProgress>,
    /// The batch id of the first timed batch.
    pub first_timed: u64,
    /// How long stopping the query took.
    pub stop: Duration,
}

/// Builds `keys` keys of state through `query`, which reads `stream` and
/// keeps one state row per key of an Int64 key column: keys `0..keys` in
/// batches of up to `build_rows`; flushes the file system's writes; then
/// pushes `batches` timed batches of `batch_rows` rows, half random
/// existing keys and half new ones (seed 7), each made into a record batch
/// by `batch`. Stops the query. Fails if the state does not hold the keys
/// expected after the build and after the timed batches, or a timed batch
/// does not emit exactly one row per key it updated.
pub async fn keyed_state_run(
    query: StreamingQuery,
    stream: &MemoryStream,
    keys: usize,
    build_rows: usize,
    batches: usize,
    batch_rows: usize,
    batch: impl Fn(Vec<i64>) -> anyhow::Result<RecordBatch>,
) -> anyhow::Result<KeyedStateRun> {
    let t = Instant::now();
    let mut next = 0usize;
    while next < keys {
        let end = (next + build_rows).min(keys);
        stream.push(batch((next as i64..end as i64).collect())?)?;
        query.process_all_available().await?;
        next = end;
    }
    let build = t.elapsed();
    // The build wrote up to gigabytes of deltas; flushed now, their
    // writeback does not fall into the timed batches.
    flush_file_writes();
    let rss_built = proc_status_mib("VmRSS");
    let built = query.last_progress().expect("built");
    anyhow::ensure!(
        built.state_operators[0].num_rows_total == keys as u64,
        "state holds {} keys, expected {keys}",
        built.state_operators[0].num_rows_total
    );
    let first_timed = built.batch_id + 1;

    // Timed: half random existing keys, half new ones.
    let mut rng = StdRng::seed_from_u64(7);
    let mut new_key = keys as i64;
    let mut expected_total = keys as u64;
    for _ in 0..batches {
        let mut rows = Vec::with_capacity(batch_rows);
        for j in 0..batch_rows {
            if j % 2 == 0 {
                rows.push(rng.random_range(0..keys as i64));
            } else {
                rows.push(new_key);
                new_key += 1;
            }
        }
        expected_total += (batch_rows / 2) as u64;
        stream.push(batch(rows)?)?;
        query.process_all_available().await?;
    }
    let timed: Vec<QueryProgress> = query
        .recent_progress()
        .into_iter()
        .filter(|p| p.batch_id >= first_timed && p.num_input_rows > 0)
        .collect();
    let t = Instant::now();
    query.stop().await?;
    drop(query);
    let stop = t.elapsed();
    anyhow::ensure!(
        timed.len() == batches,
        "expected {batches} timed batches, got {}",
        timed.len()
    );
    let last = &timed.last().expect("timed batches").state_operators[0];
    anyhow::ensure!(
        last.num_rows_total == expected_total,
        "state holds {} keys, expected {expected_total}",
        last.num_rows_total
    );
    for p in &timed {
        // Each changed key once: its value written once, one row out.
        let distinct = p.state_operators[0].num_rows_updated;
        anyhow::ensure!(
            p.num_output_rows == distinct,
            "batch {}: {} rows out, {distinct} keys updated",
            p.batch_id,
            p.num_output_rows
        );
    }
    Ok(KeyedStateRun {
        build,
        rss_built,
        timed,
        first_timed,
        stop,
    })
}
