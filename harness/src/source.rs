//! The study's source: rows that become available at a fixed rate, each
//! stamped with the instant it became available.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use tidemill_engine::{
    Offset, ReadLimit, Result, Source, SourceContext, SourceStream, TidemillError,
};

/// The column the study's source appends to every row: the wall-clock
/// instant (UTC, microseconds) the row became available to the source.
pub const AVAILABLE_AT: &str = "available_at";

/// Largest record batch the source produces (larger reads are split, so
/// DataFusion can spread a micro-batch over its partitions).
const CHUNK_ROWS: u64 = 8192;

/// Produces the rows of a study's source.
///
/// Row `i` must depend only on `i` and on its availability stamp, so that a
/// replayed range yields the same rows and the harness can re-create the
/// whole input to check the stream against a batch job. The harness appends
/// the [`AVAILABLE_AT`] column after the generated ones.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{ArrayRef, Int64Array};
/// use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
/// use arrow::error::ArrowError;
/// use tidemill_harness::RowGenerator;
///
/// /// One column: the row number.
/// #[derive(Debug)]
/// struct Counter;
///
/// impl RowGenerator for Counter {
///     fn schema(&self) -> SchemaRef {
///         Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
///     }
///     fn generate(&self, first: u64, available_at: &[i64]) -> Result<Vec<ArrayRef>, ArrowError> {
///         let n = (first..first + available_at.len() as u64).map(|i| i as i64);
///         Ok(vec![Arc::new(Int64Array::from_iter_values(n))])
///     }
/// }
/// ```
pub trait RowGenerator: Send + Sync + Debug + 'static {
    /// The generated columns (without [`AVAILABLE_AT`]).
    fn schema(&self) -> SchemaRef;

    /// The columns of rows `first .. first + available_at.len()`, in the
    /// order of [`RowGenerator::schema`]; `available_at[k]` is the instant
    /// row `first + k` became available (microseconds since the Unix
    /// epoch, UTC), e.g. to derive an event time from.
    fn generate(&self, first: u64, available_at: &[i64]) -> Result<Vec<ArrayRef>, ArrowError>;
}

/// When rows become available: row `i` (from 0) at `start + (i + 1) / rate`,
/// up to `total` rows. The clock starts the first time the query asks the
/// source for its latest offset, so query start-up is not counted as
/// latency.
#[derive(Debug)]
pub(crate) struct Clock {
    rate: f64,
    total: u64,
    start: OnceLock<(Instant, i64)>,
}

impl Clock {
    pub(crate) fn new(rate: f64, total: u64) -> Self {
        Self {
            rate,
            total,
            start: OnceLock::new(),
        }
    }

    /// The instant row 0's clock started (and its wall-clock time in
    /// microseconds), starting it now if it has not started.
    pub(crate) fn start(&self) -> (Instant, i64) {
        *self.start.get_or_init(|| (Instant::now(), now_micros()))
    }

    /// The start, if the clock has started.
    pub(crate) fn started(&self) -> Option<(Instant, i64)> {
        self.start.get().copied()
    }

    /// The rows per second.
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    /// Rows available `elapsed` after the start.
    pub(crate) fn available_after(&self, elapsed: Duration) -> u64 {
        ((elapsed.as_secs_f64() * self.rate).floor() as u64).min(self.total)
    }

    /// Row `i`'s availability stamp in microseconds since the epoch.
    pub(crate) fn stamp_micros(&self, wall_start: i64, i: u64) -> i64 {
        wall_start + ((i + 1) as f64 * 1e6 / self.rate).round() as i64
    }
}

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One stream of a run: its rows, and how far the query has read it.
#[derive(Debug)]
pub(crate) struct StreamShared {
    pub(crate) generator: Arc<dyn RowGenerator>,
    /// The generator's columns, plus [`AVAILABLE_AT`] when `stamped`.
    pub(crate) schema: SchemaRef,
    stamped: bool,
    /// The end (exclusive row number) of the latest range the query read.
    read_end: AtomicU64,
    /// Whether the query opened this stream (a pipeline may declare
    /// streams a query does not read).
    opened: AtomicBool,
}

/// What the sources and the timing sink of one run share: one clock for
/// every stream (row `i` of each stream becomes available at the same
/// instant).
#[derive(Debug)]
pub(crate) struct RunShared {
    pub(crate) clock: Clock,
    pub(crate) streams: Vec<StreamShared>,
}

impl RunShared {
    /// A run whose streams are `generators`; `stamped` appends
    /// [`AVAILABLE_AT`] to every stream's rows.
    pub(crate) fn new(generators: Vec<Arc<dyn RowGenerator>>, stamped: bool, clock: Clock) -> Self {
        let streams = generators
            .into_iter()
            .map(|generator| StreamShared {
                schema: if stamped {
                    with_available_at(&generator.schema())
                } else {
                    generator.schema()
                },
                generator,
                stamped,
                read_end: AtomicU64::new(0),
                opened: AtomicBool::new(false),
            })
            .collect();
        Self { clock, streams }
    }

    /// The input rows every stream the query reads has read: rows before
    /// this number are in a batch of every stream read.
    pub(crate) fn read_end(&self) -> u64 {
        self.streams
            .iter()
            .filter(|s| s.opened.load(Ordering::Acquire))
            .map(|s| s.read_end.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Rows `from..to` of stream `stream` as record batches of its schema.
    pub(crate) fn rows(
        &self,
        stream: usize,
        from: u64,
        to: u64,
    ) -> std::result::Result<Vec<RecordBatch>, ArrowError> {
        let s = &self.streams[stream];
        let (_, wall) = self.clock.start();
        let mut out = Vec::new();
        let mut first = from;
        while first < to {
            let end = (first + CHUNK_ROWS).min(to);
            let stamps: Vec<i64> = (first..end)
                .map(|i| self.clock.stamp_micros(wall, i))
                .collect();
            let mut columns = s.generator.generate(first, &stamps)?;
            if s.stamped {
                columns.push(Arc::new(TimestampMicrosecondArray::from(stamps)) as ArrayRef);
            }
            out.push(RecordBatch::try_new(Arc::clone(&s.schema), columns)?);
            first = end;
        }
        Ok(out)
    }
}

/// `schema` with the [`AVAILABLE_AT`] column appended.
pub(crate) fn with_available_at(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        AVAILABLE_AT,
        DataType::Timestamp(TimeUnit::Microsecond, None),
        false,
    ));
    Arc::new(Schema::new(fields))
}

/// One stream of a study run (a rate source variant whose rows may carry
/// their availability stamp).
#[derive(Debug, Clone)]
pub(crate) struct StudySource {
    pub(crate) shared: Arc<RunShared>,
    /// Which of the run's streams.
    pub(crate) stream: usize,
    pub(crate) max_rows_per_trigger: Option<u64>,
}

impl StudySource {
    fn describe(&self) -> String {
        format!(
            "StudySource[stream={}, rows_per_second={}]",
            self.stream,
            self.shared.clock.rate()
        )
    }

    fn index(&self, offset: Option<&Offset>) -> Result<u64> {
        match offset {
            None => Ok(0),
            Some(o) => o.as_u64().ok_or_else(|| {
                TidemillError::source(self.describe(), format!("offset {o} is not a row count"))
            }),
        }
    }
}

#[async_trait]
impl Source for StudySource {
    fn description(&self) -> String {
        self.describe()
    }

    async fn schema(&self, _session: &SessionContext) -> Result<SchemaRef> {
        Ok(Arc::clone(&self.shared.streams[self.stream].schema))
    }

    async fn open(&self, _ctx: SourceContext) -> Result<Box<dyn SourceStream>> {
        self.shared.streams[self.stream]
            .opened
            .store(true, Ordering::Release);
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl SourceStream for StudySource {
    fn description(&self) -> String {
        self.describe()
    }

    fn default_read_limit(&self) -> ReadLimit {
        self.max_rows_per_trigger
            .map_or(ReadLimit::All, ReadLimit::MaxRows)
    }

    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let from = self.index(start)?;
        let (t0, _) = self.shared.clock.start();
        let mut end = self.shared.clock.available_after(t0.elapsed()).max(from);
        if let ReadLimit::MaxRows(max) = limit {
            end = end.min(from + max.max(1));
        }
        Ok((end > 0).then(|| Offset::from_u64(end)))
    }

    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let (from, to) = (self.index(start)?, self.index(Some(end))?);
        let batches = self
            .shared
            .rows(self.stream, from, to)
            .map_err(|e| TidemillError::source(self.describe(), e.to_string()))?;
        self.shared.streams[self.stream]
            .read_end
            .store(to, Ordering::Release);
        Ok(batches)
    }
}
