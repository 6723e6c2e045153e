//! Every connector through the shared conformance suite
//! (`tidemill::connectors::conformance`, the `conformance` feature the
//! tests turn on), which includes the check that the path the engine runs,
//! `SourceStream::read_input`, gives the rows of `SourceStream::read` in any number of
//! partitions. Connectors whose own unit tests already run it (memory
//! source and sink, parquet and console sinks) are not repeated here; the
//! Kafka source and sink run it in `kafka.rs`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::*;
use tidemill::connectors::conformance::{
    Observed, SinkHarness, SourceHarness, check_sink, check_source,
};
use tidemill::prelude::*;
use tidemill::{Sink, Source};

use crate::common::{events, events_schema};

/// A file-source harness: each round adds 10 events in three files (so
/// that a range spans several files and `read_input` several partitions).
struct Files {
    format: &'static str,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Files {
    fn new(format: &'static str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        Self {
            format,
            dir: tmp.path().join("input"),
            _tmp: tmp,
        }
    }

    /// Writes `batch` as the file `<name>.<format>`: under a dot-name
    /// first, then renamed into place.
    fn write_file(&self, name: &str, batch: RecordBatch) {
        let name = format!("{name}.{}", self.format);
        let tmp = self.dir.join(format!(".{name}"));
        match self.format {
            "json" => {
                let mut writer =
                    arrow::json::LineDelimitedWriter::new(std::fs::File::create(&tmp).unwrap());
                writer.write(&batch).unwrap();
                writer.finish().unwrap();
            }
            "csv" => {
                let mut writer = arrow::csv::Writer::new(std::fs::File::create(&tmp).unwrap());
                writer.write(&batch).unwrap();
            }
            _ => {
                let file = std::fs::File::create(&tmp).unwrap();
                let mut writer =
                    parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
                writer.write(&batch).unwrap();
                writer.close().unwrap();
            }
        }
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }
}

#[async_trait]
impl SourceHarness for Files {
    fn provider(&self) -> Arc<dyn Source> {
        let dir = self.dir.to_str().unwrap();
        let source = match self.format {
            "json" => FileSource::json(dir),
            "csv" => FileSource::csv(dir),
            _ => FileSource::parquet(dir),
        };
        Arc::new(source.schema(events_schema()))
    }

    fn session(&self) -> SessionContext {
        SessionContext::new()
    }

    async fn add_data(&mut self, round: usize) -> tidemill::Result<()> {
        std::fs::create_dir_all(&self.dir).unwrap();
        let first = round as i64 * 10;
        for (part, ids) in [
            first..first + 4,
            first + 4..first + 7,
            first + 7..first + 10,
        ]
        .into_iter()
        .enumerate()
        {
            self.write_file(&format!("part-{round}-{part}"), events(ids));
        }
        Ok(())
    }
}

#[tokio::test]
async fn file_sources_conform() {
    for format in ["json", "csv", "parquet"] {
        check_source(&mut Files::new(format)).await;
    }
}

/// The rate source grows by itself; each round waits for new rows.
struct Rate;

#[async_trait]
impl SourceHarness for Rate {
    fn provider(&self) -> Arc<dyn Source> {
        Arc::new(RateSource::new(10_000))
    }

    fn session(&self) -> SessionContext {
        SessionContext::new()
    }

    async fn add_data(&mut self, _round: usize) -> tidemill::Result<()> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }

    fn is_quiescent(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn rate_source_conforms() {
    check_source(&mut Rate).await;
}

/// A foreach-batch sink that appends what it is given to a shared list.
struct Foreach {
    sink: Arc<ForeachBatchSink>,
    seen: Arc<Mutex<Vec<RecordBatch>>>,
    session: SessionContext,
}

#[async_trait]
impl SinkHarness for Foreach {
    fn sink(&self) -> Arc<dyn Sink> {
        self.sink.clone()
    }

    fn session(&self) -> SessionContext {
        self.session.clone()
    }

    async fn observe(&self) -> tidemill::Result<Observed> {
        Ok(Observed::Rows(self.seen.lock().unwrap().clone()))
    }
}

#[tokio::test]
async fn foreach_batch_sink_conforms() {
    let seen: Arc<Mutex<Vec<RecordBatch>>> = Arc::default();
    let into = Arc::clone(&seen);
    let sink = ForeachBatchSink::new(move |df: DataFrame, _batch_id| {
        let into = Arc::clone(&into);
        async move {
            let batches = df.collect().await?;
            into.lock().unwrap().extend(batches);
            Ok(())
        }
    });
    let harness = Foreach {
        sink: Arc::new(sink),
        seen,
        session: SessionContext::new(),
    };
    check_sink(
        &harness,
        vec![events(0..3)],
        vec![events(3..5)],
        vec![events(5..9)],
    )
    .await;
}
