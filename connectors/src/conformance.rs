//! The shared conformance suite every source and sink runs.
//!
//! Like object_store's shared integration tests: a connector's test module
//! implements [`SourceHarness`] or [`SinkHarness`] for its connector and
//! calls [`check_source`] or [`check_sink`]. The checks panic with a message
//! naming the connector and the broken promise, as assertions do.
//!
//! What a source must do (DESIGN §3):
//! - replay any committed offset range identically, in the same instance
//!   and in a new instance opened on the same checkpoint (a restart);
//! - hand out offsets that survive a JSON round trip through the offset log;
//! - return no rows for an empty range;
//! - give the engine, through [`SourceStream::read_input`] (the path a batch
//!   really runs), the same rows as [`SourceStream::read`] for the same range,
//!   whatever the number of partitions asked for (1, 2, 3 and 8 are tried):
//!   rows in memory, or partition streams that together yield those rows
//!   (in any order), have the declared schema, and yield the same rows
//!   when executed again;
//! - produce batches with exactly the schema it declared;
//! - report no new offset when nothing new arrived.
//!
//! What a sink must do: `add_batch` with an already-committed batch id
//! changes nothing a reader can observe; new ids add their rows.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use tidemill_engine::{
    BatchInput, Offset, OutputMode, ReadLimit, Result, Sink, SinkContext, Source, SourceContext,
    SourceStream,
};
use tidemill_state::CheckpointDir;

/// Drives one source implementation through the conformance checks.
#[async_trait]
pub trait SourceHarness: Send {
    /// The source under test.
    fn provider(&self) -> Arc<dyn Source>;

    /// The session the source reads through (its object stores).
    fn session(&self) -> SessionContext;

    /// Makes new rows available in the source; `round` counts from 0.
    async fn add_data(&mut self, round: usize) -> Result<()>;

    /// Whether the source stays unchanged between calls to
    /// [`SourceHarness::add_data`] (false for sources that grow by
    /// themselves, such as a rate source).
    fn is_quiescent(&self) -> bool {
        true
    }
}

/// Drives one sink implementation through the conformance checks.
#[async_trait]
pub trait SinkHarness: Send {
    /// The sink under test.
    fn sink(&self) -> Arc<dyn Sink>;

    /// The session the sink writes through.
    fn session(&self) -> SessionContext;

    /// What a reader of the sink observes now.
    async fn observe(&self) -> Result<Observed>;
}

/// What a reader sees in a sink.
#[derive(Debug, Clone)]
pub enum Observed {
    /// Rows, for sinks that can be read back.
    Rows(Vec<RecordBatch>),
    /// Text, for sinks whose output is only printed.
    Text(String),
}

/// Opens `provider` for a query whose source checkpoint is `dir`, with
/// the schema the provider declares; panics on failure (a test helper).
pub async fn open_source(
    provider: &dyn Source,
    session: &SessionContext,
    dir: &CheckpointDir,
) -> Box<dyn SourceStream> {
    let schema = provider
        .schema(session)
        .await
        .unwrap_or_else(|e| panic!("{}: schema failed: {e}", provider.description()));
    provider
        .open(SourceContext {
            session: session.clone(),
            schema,
            checkpoint: dir.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("{}: open failed: {e}", provider.description()))
}

async fn read(
    source: &mut dyn SourceStream,
    start: Option<&Offset>,
    end: &Offset,
) -> Vec<RecordBatch> {
    source.read(start, end).await.unwrap_or_else(|e| {
        panic!(
            "{}: read({start:?}, {end}) failed: {e}",
            source.description()
        )
    })
}

/// The partition counts [`check_read_input`] asks `read_input` for.
const PARTITION_COUNTS: [usize; 4] = [1, 2, 3, 8];

/// Checks that [`SourceStream::read_input`] for `(start, end]` gives the rows
/// `expected` (what [`SourceStream::read`] returned for that range) in each of
/// [`PARTITION_COUNTS`] partitions, executing partition streams as the
/// engine does, in `session`'s task context.
async fn check_read_input(
    source: &mut dyn SourceStream,
    session: &SessionContext,
    schema: &SchemaRef,
    (start, end): (Option<&Offset>, &Offset),
    expected: &[RecordBatch],
) {
    let name = source.description();
    for partitions in PARTITION_COUNTS {
        let input = source
            .read_input(start, end, partitions)
            .await
            .unwrap_or_else(|e| {
                panic!("{name}: read_input({start:?}, {end}, {partitions}) failed: {e}")
            });
        let batches = match input {
            BatchInput::Rows(batches) => batches,
            BatchInput::Partitions(streams) => {
                assert!(
                    streams.len() <= partitions,
                    "{name}: read_input asked for {partitions} partitions returned {}",
                    streams.len()
                );
                let mut all = Vec::new();
                for stream in &streams {
                    assert_eq!(
                        stream.schema().fields(),
                        schema.fields(),
                        "{name}: a partition's schema differs from the declared schema"
                    );
                    let once = execute(&name, stream.as_ref(), session).await;
                    assert_eq!(
                        sorted_rows(&execute(&name, stream.as_ref(), session).await),
                        sorted_rows(&once),
                        "{name}: a partition of read_input({start:?}, {end}) executed again \
                         yields other rows"
                    );
                    all.extend(once);
                }
                all
            }
        };
        check_schema(&name, schema, &batches);
        assert_eq!(
            sorted_rows(&batches),
            sorted_rows(expected),
            "{name}: read_input({start:?}, {end}) in {partitions} partitions gives other rows \
             than read"
        );
    }
}

/// Every batch `partition` yields, executed in `session`'s task context.
async fn execute(
    name: &str,
    partition: &dyn PartitionStream,
    session: &SessionContext,
) -> Vec<RecordBatch> {
    partition
        .execute(session.task_ctx())
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{name}: executing a partition of read_input failed: {e}"))
}

fn rows(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .expect("format")
        .to_string()
}

fn round_trip(offset: &Offset) -> Offset {
    let json = serde_json::to_string(offset).expect("serialize offset");
    serde_json::from_str(&json).expect("deserialize offset")
}

fn check_schema(name: &str, schema: &SchemaRef, batches: &[RecordBatch]) {
    for batch in batches {
        assert_eq!(
            batch.schema().fields(),
            schema.fields(),
            "{name}: a batch's schema differs from the declared schema"
        );
    }
}

/// Runs the source conformance checks.
pub async fn check_source(harness: &mut dyn SourceHarness) {
    let provider = harness.provider();
    let session = harness.session();
    let name = provider.description();
    let schema = provider.schema(&session).await.expect("schema");
    let dir = CheckpointDir::new(Arc::new(InMemory::new()), Path::from("conformance/source"));
    let mut source = open_source(provider.as_ref(), &session, &dir).await;

    harness.add_data(0).await.expect("add data");
    let end1 = source
        .latest_offset(None, ReadLimit::All)
        .await
        .expect("latest offset")
        .unwrap_or_else(|| panic!("{name}: no offset after data was added"));
    assert_eq!(
        round_trip(&end1),
        end1,
        "{name}: offset does not survive a JSON round trip"
    );
    let first = read(source.as_mut(), None, &end1).await;
    assert!(
        first.iter().map(RecordBatch::num_rows).sum::<usize>() > 0,
        "{name}: first range read no rows"
    );
    check_schema(&name, &schema, &first);
    check_read_input(source.as_mut(), &session, &schema, (None, &end1), &first).await;

    if harness.is_quiescent() {
        let again = source
            .latest_offset(Some(&end1), ReadLimit::All)
            .await
            .expect("latest");
        assert_eq!(
            again.as_ref(),
            Some(&end1),
            "{name}: offset moved without new data"
        );
    }

    harness.add_data(1).await.expect("add data");
    let end2 = source
        .latest_offset(Some(&end1), ReadLimit::All)
        .await
        .expect("latest offset")
        .expect("offset");
    assert_ne!(end2, end1, "{name}: new data did not move the offset");
    let second = read(source.as_mut(), Some(&end1), &end2).await;
    check_schema(&name, &schema, &second);
    check_read_input(
        source.as_mut(),
        &session,
        &schema,
        (Some(&end1), &end2),
        &second,
    )
    .await;

    // Replay in the same instance.
    assert_eq!(
        rows(&read(source.as_mut(), None, &end1).await),
        rows(&first),
        "{name}: replay differs"
    );
    assert_eq!(
        rows(&read(source.as_mut(), Some(&end1), &end2).await),
        rows(&second),
        "{name}: replay differs"
    );
    // An empty range.
    let empty = read(source.as_mut(), Some(&end2), &end2).await;
    assert_eq!(
        empty.iter().map(RecordBatch::num_rows).sum::<usize>(),
        0,
        "{name}: empty range has rows"
    );
    check_read_input(
        source.as_mut(),
        &session,
        &schema,
        (Some(&end2), &end2),
        &[],
    )
    .await;
    source.commit(&end2).await.expect("commit");

    // A restart: a new instance on the same checkpoint replays the logged
    // ranges from offsets that went through the offset log.
    drop(source);
    let mut reopened = open_source(provider.as_ref(), &session, &dir).await;
    let (end1, end2) = (round_trip(&end1), round_trip(&end2));
    assert_eq!(
        rows(&read(reopened.as_mut(), Some(&end1), &end2).await),
        rows(&second),
        "{name}: replay after restart differs"
    );
    check_read_input(
        reopened.as_mut(),
        &session,
        &schema,
        (Some(&end1), &end2),
        &second,
    )
    .await;
    if harness.is_quiescent() {
        let latest = reopened
            .latest_offset(Some(&end2), ReadLimit::All)
            .await
            .expect("latest");
        assert_eq!(
            latest.as_ref(),
            Some(&end2),
            "{name}: offset moved after restart without new data"
        );
    }
}

fn batch_of(schema: &SchemaRef, source: &[RecordBatch]) -> Vec<RecordBatch> {
    source
        .iter()
        .map(|b| RecordBatch::try_new(Arc::clone(schema), b.columns().to_vec()).expect("batch"))
        .collect()
}

/// Runs the sink conformance checks with three distinct, non-empty sets of
/// rows `a`, `b`, `c` of one schema.
pub async fn check_sink(
    harness: &dyn SinkHarness,
    a: Vec<RecordBatch>,
    b: Vec<RecordBatch>,
    c: Vec<RecordBatch>,
) {
    let sink = harness.sink();
    let name = sink.description();
    let schema = a[0].schema();
    sink.open(&SinkContext {
        session: harness.session(),
        query_name: Some("conformance".into()),
        query_id: uuid::Uuid::new_v4().to_string(),
        schema: Arc::clone(&schema),
        output_mode: OutputMode::Append,
        durability: Default::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: open failed: {e}"));
    let add = |id: u64, batches: Vec<RecordBatch>| {
        let sink = Arc::clone(&sink);
        let schema = Arc::clone(&schema);
        let name = name.clone();
        async move {
            sink.add_batch(id, schema, batches)
                .await
                .unwrap_or_else(|e| panic!("{name}: add_batch({id}) failed: {e}"))
        }
    };
    add(0, batch_of(&schema, &a)).await;
    add(1, batch_of(&schema, &b)).await;
    let after_two = harness.observe().await.expect("observe");
    if let Observed::Rows(seen) = &after_two {
        let mut expected: Vec<RecordBatch> = a.clone();
        expected.extend(b.iter().cloned());
        assert_eq!(
            sorted_rows(seen),
            sorted_rows(&expected),
            "{name}: committed rows differ"
        );
    }
    // Re-adding committed ids (a recovered batch) changes nothing.
    add(1, batch_of(&schema, &c)).await;
    add(0, batch_of(&schema, &c)).await;
    add(1, batch_of(&schema, &b)).await;
    assert_eq!(
        observed_text(&harness.observe().await.expect("observe")),
        observed_text(&after_two),
        "{name}: add_batch with a committed batch id changed the output"
    );
    // A new id adds its rows; an empty batch adds nothing.
    add(2, Vec::new()).await;
    add(3, batch_of(&schema, &c)).await;
    if let Observed::Rows(seen) = harness.observe().await.expect("observe") {
        let mut expected: Vec<RecordBatch> = a.clone();
        expected.extend(b.iter().cloned());
        expected.extend(c.iter().cloned());
        assert_eq!(
            sorted_rows(&seen),
            sorted_rows(&expected),
            "{name}: rows after batch 3 differ"
        );
    }
}

fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let text = rows(batches);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn observed_text(observed: &Observed) -> String {
    match observed {
        Observed::Rows(batches) => sorted_rows(batches).join("\n"),
        Observed::Text(text) => text.clone(),
    }
}
