//! Restarting queries from their checkpoint, in one process: resuming,
//! re-running an uncommitted batch, retention, corrupt checkpoints, and the
//! checkpoint lock.

use std::path::Path;

use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::{QueryOptions, TidemillError};

use crate::common::{events, events_schema, sorted_rows};

async fn start(
    ctx: &SessionContext,
    stream: &MemoryStream,
    sink: &MemorySink,
    checkpoint: &Path,
    options: QueryOptions,
) -> tidemill::Result<StreamingQuery> {
    ctx.read_stream(stream.clone())
        .await?
        .write_stream()
        .sink(sink.clone())
        .checkpoint(checkpoint.to_str().unwrap())
        .options(options)
        .start()
        .await
}

#[tokio::test]
async fn restart_resumes_after_the_last_committed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    let sink = MemorySink::new();
    let query = start(&ctx, &stream, &sink, dir.path(), Default::default())
        .await
        .unwrap();
    let id = query.id().to_string();
    stream.push(events(0..3)).unwrap();
    query.process_all_available().await.unwrap();
    stream.push(events(3..5)).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(sink.batch_ids(), vec![0, 1]);

    stream.push(events(5..9)).unwrap();
    let query = start(&ctx, &stream, &sink, dir.path(), Default::default())
        .await
        .unwrap();
    assert_eq!(query.id(), id, "the query id is kept in the checkpoint");
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(sink.batch_ids(), vec![0, 1, 2]);
    let progress = query.last_progress().unwrap();
    assert_eq!(progress.batch_id, 2);
    assert_eq!(progress.num_input_rows, 4, "only the new rows are read");
    assert_eq!(
        sorted_rows(&sink.batches()),
        sorted_rows(&[events(0..9)]),
        "every row exactly once"
    );
}

/// The commit log is written in the background while the next batch runs:
/// a process can die with `commits/N` never written but `offsets/N+1`
/// written, and then `commits/N+1` missing too. `offsets/N+1` proves batch
/// N committed (it is written only after N's sink and state commits), so a
/// restart re-runs only N+1, from its recorded range, and loses nothing.
#[tokio::test]
async fn a_missing_commit_before_the_latest_batch_is_not_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    let sink = MemorySink::new();
    let query = start(&ctx, &stream, &sink, dir.path(), Default::default())
        .await
        .unwrap();
    for range in [0..3, 3..5, 5..8] {
        stream.push(events(range)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    assert_eq!(sink.batch_ids(), vec![0, 1, 2]);
    // Every commit is written once the query has stopped.
    for n in 0..3 {
        assert!(
            dir.path().join("commits").join(n.to_string()).exists(),
            "commits/{n}"
        );
    }
    std::fs::remove_file(dir.path().join("commits/1")).unwrap();
    std::fs::remove_file(dir.path().join("commits/2")).unwrap();

    stream.push(events(8..10)).unwrap();
    let query = start(&ctx, &stream, &sink, dir.path(), Default::default())
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let progress = query.recent_progress();
    let runs: Vec<(u64, bool, u64)> = progress
        .iter()
        .map(|p| (p.batch_id, p.recovered, p.num_input_rows))
        .collect();
    assert_eq!(
        runs,
        [(2, true, 3), (3, false, 2)],
        "batch 2 re-run with its range, then only the new rows"
    );
    assert_eq!(sink.batch_ids(), vec![0, 1, 2, 3]);
    assert_eq!(sorted_rows(&sink.batches()), sorted_rows(&[events(0..10)]));
}

/// Runs batches 0 (events 0..3) and 1 (events 3..6) into `sink`, stops,
/// and deletes `commits/1`: as if the process died after the sink wrote
/// batch 1 but before the commit log did.
async fn two_batches_then_lose_the_last_commit(
    ctx: &SessionContext,
    stream: &MemoryStream,
    sink: &MemorySink,
    checkpoint: &Path,
) {
    let query = start(ctx, stream, sink, checkpoint, Default::default())
        .await
        .unwrap();
    stream.push(events(0..3)).unwrap();
    query.process_all_available().await.unwrap();
    stream.push(events(3..6)).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    std::fs::remove_file(checkpoint.join("commits/1")).unwrap();
}

#[tokio::test]
async fn an_uncommitted_batch_is_rerun_with_its_recorded_range() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    two_batches_then_lose_the_last_commit(&ctx, &stream, &MemorySink::new(), dir.path()).await;

    // More data arrives meanwhile; the re-run must not take it.
    stream.push(events(6..10)).unwrap();
    let second_sink = MemorySink::new();
    let query = start(&ctx, &stream, &second_sink, dir.path(), Default::default())
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let progress = query.recent_progress();
    assert_eq!(progress[0].batch_id, 1);
    assert!(progress[0].recovered);
    assert_eq!(progress[0].num_input_rows, 3, "exactly the recorded range");
    assert_eq!(
        sorted_rows(&second_sink.batches()[..1]),
        sorted_rows(&[events(3..6)])
    );
    assert_eq!(progress[1].batch_id, 2);
    assert!(!progress[1].recovered);
    assert_eq!(progress[1].num_input_rows, 4);

    // With the same sink the re-run is a no-op there: no duplicates.
    std::fs::remove_file(dir.path().join("commits/2")).unwrap();
    let query = start(&ctx, &stream, &second_sink, dir.path(), Default::default())
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(second_sink.batch_ids(), vec![1, 2]);
    assert_eq!(
        sorted_rows(&second_sink.batches()),
        sorted_rows(&[events(3..10)])
    );
}

#[tokio::test]
async fn old_log_entries_are_purged_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    let sink = MemorySink::new();
    let options = QueryOptions {
        min_batches_to_retain: 3,
        ..Default::default()
    };
    let query = start(&ctx, &stream, &sink, dir.path(), options.clone())
        .await
        .unwrap();
    for i in 0..8 {
        stream.push(events(i..i + 1)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    let names = |sub: &str| {
        let mut ids: Vec<u64> = std::fs::read_dir(dir.path().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(names("offsets"), vec![5, 6, 7]);
    assert_eq!(names("commits"), vec![5, 6, 7]);
    // And the query still resumes correctly.
    stream.push(events(8..9)).unwrap();
    let query = start(&ctx, &stream, &sink, dir.path(), options)
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(query.last_progress().unwrap().batch_id, 8);
    assert_eq!(sink.num_rows(), 9);
}

#[tokio::test]
async fn corrupt_or_truncated_checkpoint_files_are_reported_by_name() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    let sink = MemorySink::new();
    let dir = tempfile::tempdir().unwrap();
    let query = start(&ctx, &stream, &sink, dir.path(), Default::default())
        .await
        .unwrap();
    stream.push(events(0..3)).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let committed = sink.num_rows();

    // Truncated offset log entry.
    let offsets = dir.path().join("offsets/0");
    let original = std::fs::read(&offsets).unwrap();
    std::fs::write(&offsets, &original[..original.len() / 2]).unwrap();
    let err = start(&ctx, &stream, &sink, dir.path(), Default::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("offsets/0") && msg.contains("corrupt"),
        "{msg}"
    );

    // A flipped byte in the body is caught by the checksum.
    let mut flipped = original.clone();
    let pos = flipped.iter().position(|&b| b == b'{').unwrap() + 2;
    flipped[pos] ^= 0x01;
    std::fs::write(&offsets, &flipped).unwrap();
    let msg = start(&ctx, &stream, &sink, dir.path(), Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("offsets/0") && msg.contains("checksum"),
        "{msg}"
    );
    std::fs::write(&offsets, &original).unwrap();

    // Garbage metadata.
    std::fs::write(dir.path().join("metadata"), b"{\"not\": \"ours\"}").unwrap();
    let msg = start(&ctx, &stream, &sink, dir.path(), Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("metadata"), "{msg}");

    // Nothing already committed was lost or changed.
    assert_eq!(sink.num_rows(), committed);
}

#[tokio::test]
async fn a_checkpoint_written_for_other_sources_is_refused() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(events_schema());
    let sink = MemorySink::new();
    let query = start(&ctx, &stream, &sink, dir.path(), Default::default())
        .await
        .unwrap();
    query.stop().await.unwrap();
    // Now a query with two sources on the same checkpoint.
    let other = MemoryStream::new(events_schema());
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .union(ctx.read_stream(other).await.unwrap())
        .unwrap();
    let err = df
        .write_stream()
        .sink(MemorySink::new())
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, TidemillError::CheckpointMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("1 source(s)"), "{err}");
}

#[tokio::test]
async fn a_second_query_on_a_checkpoint_in_use_is_refused() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(events_schema());
    let running = start(
        &ctx,
        &stream,
        &MemorySink::new(),
        dir.path(),
        Default::default(),
    )
    .await
    .unwrap();
    let err = start(
        &ctx,
        &stream,
        &MemorySink::new(),
        dir.path(),
        Default::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TidemillError::CheckpointInUse { .. }),
        "{err}"
    );
    // The same for a memory:// checkpoint.
    let mem = |sink: MemorySink| {
        let (ctx, stream) = (ctx.clone(), stream.clone());
        async move {
            ctx.read_stream(stream)
                .await?
                .write_stream()
                .sink(sink)
                .checkpoint("memory:///chk/in-use")
                .start()
                .await
        }
    };
    let first = mem(MemorySink::new()).await.unwrap();
    assert!(matches!(
        mem(MemorySink::new()).await,
        Err(TidemillError::CheckpointInUse { .. })
    ));
    first.stop().await.unwrap();
    // Once stopped, the checkpoint is free again.
    running.stop().await.unwrap();
    let again = start(
        &ctx,
        &stream,
        &MemorySink::new(),
        dir.path(),
        Default::default(),
    )
    .await
    .unwrap();
    again.stop().await.unwrap();
    mem(MemorySink::new()).await.unwrap().stop().await.unwrap();
}

#[tokio::test]
async fn once_and_available_now_finish_a_recovered_batch_then_new_data() {
    for trigger in [Trigger::Once, Trigger::AvailableNow] {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        let stream = MemoryStream::new(events_schema()).max_rows_per_trigger(3);
        let sink = MemorySink::new();
        two_batches_then_lose_the_last_commit(&ctx, &stream, &sink, dir.path()).await;
        stream.push(events(6..9)).unwrap();
        stream.push(events(9..12)).unwrap();

        let query = ctx
            .read_stream(stream.clone())
            .await
            .unwrap()
            .write_stream()
            .sink(sink.clone())
            .checkpoint(dir.path().to_str().unwrap())
            .trigger(trigger)
            .start()
            .await
            .unwrap();
        query.await_termination().await.unwrap();
        let progress = query.recent_progress();
        let ids: Vec<(u64, bool, u64)> = progress
            .iter()
            .map(|p| (p.batch_id, p.recovered, p.num_input_rows))
            .collect();
        let expected = match trigger {
            // The recovered batch, then everything new in one batch.
            Trigger::Once => vec![(1, true, 3), (2, false, 6)],
            // The recovered batch, then new data within the read limit.
            _ => vec![(1, true, 3), (2, false, 3), (3, false, 3)],
        };
        assert_eq!(ids, expected, "{trigger:?}");
        assert_eq!(
            sorted_rows(&sink.batches()),
            sorted_rows(&[events(0..12)]),
            "{trigger:?}"
        );
    }
}
