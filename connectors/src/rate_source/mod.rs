//! A source generating rows at a fixed rate, for demos and benchmarks.
//!
//! [`RateSource`] produces rows `(timestamp, value)`: row `i` has value `i`
//! and timestamp `start + i / rows_per_second` seconds, where `start` is the
//! moment the query first opened the source. The start time is persisted
//! in the source's checkpoint directory, so a restarted query continues the
//! same sequence and a replayed range yields exactly the same rows.

mod connector;

pub(crate) use connector::RateConnector;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::prelude::{DataFrame, SessionContext};
use serde::{Deserialize, Serialize};
use tidemill_engine::{
    Offset, ReadLimit, Result, Source, SourceContext, SourceStream, TidemillError,
};
use tidemill_state::StateError;

/// Largest number of rows in one generated record batch.
const CHUNK_ROWS: u64 = 8192;
/// Name, kind and format version of the start-time file.
const START_FILE: &str = "start";
const START_KIND: &str = "rate-source-start";
const START_VERSION: u32 = 1;

/// A streaming source generating `rows_per_second` rows per second.
///
/// Its schema is `timestamp: Timestamp(Microsecond, None)` (non-null) and
/// `value: Int64` (non-null). Row `i` (counting from 0 since the query
/// first started) has `value = i` and
/// `timestamp = start + i * 1_000_000 / rows_per_second` microseconds; its
/// offsets are row counts. As Spark's `rate` source, it is meant for demos,
/// tests and benchmarks.
///
/// ```
/// # use tidemill_connectors::RateSource;
/// let source = RateSource::new(1_000).max_rows_per_trigger(500);
/// ```
#[derive(Debug, Clone)]
pub struct RateSource {
    rows_per_second: u64,
    max_rows_per_trigger: Option<u64>,
}

impl RateSource {
    /// A source producing `rows_per_second` rows each second (must be at
    /// least 1).
    pub fn new(rows_per_second: u64) -> Self {
        Self {
            rows_per_second,
            max_rows_per_trigger: None,
        }
    }

    /// Admits at most `n` rows into one micro-batch (the source's default
    /// read limit becomes [`ReadLimit::MaxRows`]).
    pub fn max_rows_per_trigger(mut self, n: u64) -> Self {
        self.max_rows_per_trigger = Some(n);
        self
    }

    /// The schema of the generated rows.
    pub fn output_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
            Field::new("value", DataType::Int64, false),
        ]))
    }

    fn check(&self) -> Result<()> {
        if self.rows_per_second == 0 {
            return Err(TidemillError::Config(format!(
                "{}: rows_per_second must be at least 1",
                self.description()
            )));
        }
        if self.max_rows_per_trigger == Some(0) {
            return Err(TidemillError::Config(format!(
                "{}: max_rows_per_trigger must be at least 1",
                self.description()
            )));
        }
        Ok(())
    }
}

/// The start-time file in the source's checkpoint directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StartRecord {
    /// Microseconds since the Unix epoch (UTC) of row 0.
    start_micros: i64,
    /// The rate the rows were generated at.
    rows_per_second: u64,
}

#[async_trait]
impl Source for RateSource {
    fn description(&self) -> String {
        format!("RateSource[rows_per_second={}]", self.rows_per_second)
    }

    async fn schema(&self, _session: &SessionContext) -> Result<SchemaRef> {
        self.check()?;
        Ok(Self::output_schema())
    }

    async fn read_batch(&self, _session: &SessionContext) -> Result<DataFrame> {
        Err(TidemillError::Config(
            "a rate stream generates rows as time passes and has no batch form; \
             run this pipeline with `tidemill run`"
                .into(),
        ))
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn SourceStream>> {
        self.check()?;
        let description = self.description();
        let fresh = StartRecord {
            start_micros: now_micros(),
            rows_per_second: self.rows_per_second,
        };
        let record = match ctx
            .checkpoint
            .read::<StartRecord>(START_FILE, START_KIND, START_VERSION)
            .await?
        {
            Some(record) => record,
            None => match ctx
                .checkpoint
                .create(START_FILE, START_KIND, START_VERSION, &fresh)
                .await
            {
                Ok(()) => fresh,
                // Created concurrently: the file on disk wins.
                Err(StateError::AlreadyExists { .. }) => ctx
                    .checkpoint
                    .read::<StartRecord>(START_FILE, START_KIND, START_VERSION)
                    .await?
                    .ok_or_else(|| {
                        TidemillError::source(
                            &description,
                            "start-time file vanished while being read",
                        )
                    })?,
                Err(e) => return Err(e.into()),
            },
        };
        if record.rows_per_second != self.rows_per_second {
            return Err(TidemillError::CheckpointMismatch {
                location: ctx.checkpoint.root().to_string(),
                reason: format!(
                    "the rate source was started with rows_per_second={} and is now configured with {}; replaying \
                     its batches would give other timestamps. Keep the rate or use a new checkpoint",
                    record.rows_per_second, self.rows_per_second
                ),
            });
        }
        Ok(Box::new(RateStream {
            description,
            schema: ctx.schema,
            start_micros: record.start_micros,
            rows_per_second: self.rows_per_second,
            max_rows_per_trigger: self.max_rows_per_trigger,
            available_now_cap: None,
        }))
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// A [`RateSource`] opened for one query.
#[derive(Debug)]
struct RateStream {
    description: String,
    schema: SchemaRef,
    start_micros: i64,
    rows_per_second: u64,
    max_rows_per_trigger: Option<u64>,
    /// After `prepare_for_available_now`: the row count not to go past.
    available_now_cap: Option<u64>,
}

impl RateStream {
    fn err(&self, message: impl Into<String>) -> TidemillError {
        TidemillError::source(&self.description, message)
    }

    /// Rows generated by now: those whose timestamp is before now.
    fn rows_available_now(&self) -> u64 {
        let elapsed = (now_micros() - self.start_micros).max(0) as u128;
        let rows = elapsed * self.rows_per_second as u128 / 1_000_000;
        u64::try_from(rows).unwrap_or(u64::MAX)
    }

    fn parse_offset(&self, offset: Option<&Offset>) -> Result<u64> {
        match offset {
            None => Ok(0),
            Some(offset) => offset.as_u64().ok_or_else(|| {
                self.err(format!(
                    "invalid offset {offset}: a rate source offset is a row count"
                ))
            }),
        }
    }

    /// The timestamp of row `i`, in microseconds.
    fn timestamp_of(&self, row: u64) -> i64 {
        let delta = row as i128 * 1_000_000 / self.rows_per_second as i128;
        (self.start_micros as i128 + delta).clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

#[async_trait]
impl SourceStream for RateStream {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn default_read_limit(&self) -> ReadLimit {
        match self.max_rows_per_trigger {
            Some(n) => ReadLimit::MaxRows(n),
            None => ReadLimit::All,
        }
    }

    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let from = self.parse_offset(start)?;
        let available = match self.available_now_cap {
            Some(cap) => cap,
            None => self.rows_available_now(),
        };
        let end = match limit {
            ReadLimit::MaxRows(n) => available.min(from.saturating_add(n)),
            ReadLimit::All | ReadLimit::MaxFiles(_) => available,
        };
        if end <= from {
            return Ok(start.cloned());
        }
        Ok(Some(Offset::from_u64(end)))
    }

    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let from = self.parse_offset(start)?;
        let to = self.parse_offset(Some(end))?;
        if to < from {
            return Err(self.err(format!(
                "invalid range: end offset {to} is before start offset {from}"
            )));
        }
        if to > i64::MAX as u64 {
            return Err(self.err(format!("offset {to} is beyond the largest row number")));
        }
        let mut batches = Vec::with_capacity(((to - from).div_ceil(CHUNK_ROWS)) as usize);
        let mut chunk_start = from;
        while chunk_start < to {
            let chunk_end = to.min(chunk_start + CHUNK_ROWS);
            let timestamps = TimestampMicrosecondArray::from_iter_values(
                (chunk_start..chunk_end).map(|i| self.timestamp_of(i)),
            );
            let values = Int64Array::from_iter_values((chunk_start..chunk_end).map(|i| i as i64));
            let columns: Vec<ArrayRef> = vec![Arc::new(timestamps), Arc::new(values)];
            let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|e| {
                self.err(format!(
                    "the query's schema for this source does not match its rows (timestamp, value): {e}"
                ))
            })?;
            batches.push(batch);
            chunk_start = chunk_end;
        }
        Ok(batches)
    }

    async fn prepare_for_available_now(&mut self) -> Result<()> {
        self.available_now_cap = Some(self.rows_available_now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use std::time::Duration;
    use tidemill_engine::Location;
    use tidemill_state::CheckpointDir;

    fn checkpoint(session: &SessionContext, name: &str) -> CheckpointDir {
        Location::resolve(
            &format!("memory:///{name}/sources/0"),
            &session.runtime_env(),
        )
        .unwrap()
        .dir()
    }

    async fn open(
        source: &RateSource,
        session: &SessionContext,
        chk: CheckpointDir,
    ) -> Box<dyn SourceStream> {
        crate::conformance::open_source(source, session, &chk).await
    }

    /// (timestamp, value) pairs of some batches.
    fn rows(batches: &[RecordBatch]) -> Vec<(i64, i64)> {
        batches
            .iter()
            .flat_map(|b| {
                let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
                let vs = b.column(1).as_primitive::<Int64Type>();
                assert_eq!(ts.null_count() + vs.null_count(), 0);
                ts.values()
                    .iter()
                    .copied()
                    .zip(vs.values().iter().copied())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits until at least `n` rows are available (offsets from `All`).
    async fn wait_for_rows(s: &mut Box<dyn SourceStream>, n: u64) -> Offset {
        loop {
            if let Some(end) = s.latest_offset(None, ReadLimit::All).await.unwrap()
                && end.as_u64().unwrap() >= n
            {
                return end;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn rows_follow_the_formula_and_replay_identically() {
        let session = SessionContext::new();
        let source = RateSource::new(1_000_000);
        assert_eq!(source.description(), "RateSource[rows_per_second=1000000]");
        let chk = checkpoint(&session, "rate-replay");
        let mut s = open(&source, &session, chk.clone()).await;
        assert_eq!(s.default_read_limit(), ReadLimit::All);
        let end = wait_for_rows(&mut s, 20_000).await;
        let n = end.as_u64().unwrap();

        let batches = s.read(None, &end).await.unwrap();
        assert!(
            batches
                .iter()
                .all(|b| b.num_rows() <= 8192 && b.schema() == RateSource::output_schema())
        );
        let first = rows(&batches);
        assert_eq!(first.len() as u64, n);
        let start = first[0].0;
        for (i, &(ts, value)) in first.iter().enumerate() {
            assert_eq!(value, i as i64);
            // One row per microsecond at 1M rows/s.
            assert_eq!(ts, start + i as i64);
        }
        // The rows generated are those before now.
        assert!(start + n as i64 <= chrono::Utc::now().timestamp_micros());

        // Same range again, and a sub-range, in this process.
        assert_eq!(rows(&s.read(None, &end).await.unwrap()), first);
        let mid = Offset::from_u64(n / 2);
        assert_eq!(
            rows(&s.read(Some(&mid), &end).await.unwrap()),
            first[(n / 2) as usize..].to_vec()
        );
        assert!(s.read(Some(&end), &end).await.unwrap().is_empty());

        // And after a restart on the same checkpoint.
        drop(s);
        let mut reopened = open(&source, &session, chk).await;
        assert_eq!(rows(&reopened.read(None, &end).await.unwrap()), first);
    }

    #[tokio::test]
    async fn timestamps_step_by_the_rate() {
        let session = SessionContext::new();
        let mut s = open(
            &RateSource::new(4),
            &session,
            checkpoint(&session, "rate-step"),
        )
        .await;
        let got = rows(
            &s.read(Some(&Offset::from_u64(2)), &Offset::from_u64(6))
                .await
                .unwrap(),
        );
        let start = got[0].0 - 2 * 250_000;
        let expected: Vec<(i64, i64)> = (2..6).map(|i| (start + i * 250_000, i)).collect();
        assert_eq!(got, expected);
        // At one row a second, nothing is available right after the start.
        let mut slow = open(
            &RateSource::new(1),
            &session,
            checkpoint(&session, "rate-slow"),
        )
        .await;
        assert_eq!(
            slow.latest_offset(None, ReadLimit::All).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn offsets_are_bounded_by_the_limit() {
        let session = SessionContext::new();
        let source = RateSource::new(1_000_000).max_rows_per_trigger(100);
        let mut s = open(&source, &session, checkpoint(&session, "rate-limit")).await;
        let limit = s.default_read_limit();
        assert_eq!(limit, ReadLimit::MaxRows(100));
        wait_for_rows(&mut s, 1_000).await;

        let first = s.latest_offset(None, limit).await.unwrap().unwrap();
        assert_eq!(first, Offset::from_u64(100));
        let second = s.latest_offset(Some(&first), limit).await.unwrap().unwrap();
        assert_eq!(second, Offset::from_u64(200));
        let batch = s.read(Some(&first), &second).await.unwrap();
        assert_eq!(
            rows(&batch).iter().map(|r| r.1).collect::<Vec<_>>(),
            (100..200).collect::<Vec<_>>()
        );
        // Without a limit, everything available (more than the limit).
        let all = s
            .latest_offset(Some(&second), ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert!(all.as_u64().unwrap() >= 1_000);
    }

    #[tokio::test]
    async fn start_time_survives_reopen() {
        let session = SessionContext::new();
        let source = RateSource::new(1_000);
        let chk = checkpoint(&session, "rate-start");
        let mut s = open(&source, &session, chk.clone()).await;
        let before = rows(&s.read(None, &Offset::from_u64(3)).await.unwrap());
        drop(s);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut s = open(&source, &session, chk.clone()).await;
        assert_eq!(
            rows(&s.read(None, &Offset::from_u64(3)).await.unwrap()),
            before
        );
        // Time kept running from the recorded start: rows accumulated
        // while the source was closed are available at once.
        let end = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        assert!(end.as_u64().unwrap() >= 5, "{end}");

        // A different rate cannot reuse the checkpoint.
        let err = RateSource::new(7)
            .open(SourceContext {
                session: session.clone(),
                schema: RateSource::output_schema(),
                checkpoint: chk,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, TidemillError::CheckpointMismatch { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn available_now_caps_at_rows_available_when_prepared() {
        let session = SessionContext::new();
        let mut s = open(
            &RateSource::new(1_000_000),
            &session,
            checkpoint(&session, "rate-now"),
        )
        .await;
        wait_for_rows(&mut s, 1_000).await;
        s.prepare_for_available_now().await.unwrap();
        let cap = s
            .latest_offset(None, ReadLimit::All)
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            s.latest_offset(None, ReadLimit::All).await.unwrap(),
            Some(cap.clone())
        );
        assert_eq!(
            s.latest_offset(Some(&cap), ReadLimit::All).await.unwrap(),
            Some(cap.clone())
        );
        let part = s
            .latest_offset(None, ReadLimit::MaxRows(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(part, Offset::from_u64(10));
    }

    #[tokio::test]
    async fn zero_rate_is_refused() {
        let session = SessionContext::new();
        let err = Source::schema(&RateSource::new(0), &session)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("rows_per_second must be at least 1"),
            "{err}"
        );
    }
}
