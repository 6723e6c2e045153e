//! Crash tests of the files sink in JSON and CSV and with partitioned
//! output: a pipeline copying events into the sink runs in a child process
//! (this test binary again, with the ignored `file_sink_crash::crash_child`
//! as its entry point), is killed with SIGKILL before, inside and after the
//! sink's work on a batch (`before_sink`, `during_sink`: the data files
//! written, no manifest entry yet; `after_sink`), and restarted. Every row
//! must then be in the output exactly once, for Tidemill's reader and for
//! DataFusion's plain reading of the directory (no file of the killed
//! attempt is left behind).

use std::path::PathBuf;
use std::process::Command;

use arrow::datatypes::DataType;
use datafusion::prelude::*;
use tidemill::FileFormat;
use tidemill::prelude::*;

use crate::child::{self, Child, Event};
use crate::common::{df_rows, events_schema};
use crate::crash::write_input;

/// The sink's failpoints, in the order a batch passes them.
const SINK_POINTS: [&str; 3] = ["before_sink", "during_sink", "after_sink"];

/// The sink configurations under test: format and partition columns.
const CONFIGS: [(FileFormat, &[&str]); 5] = [
    (FileFormat::Json, &[]),
    (FileFormat::Csv, &[]),
    (FileFormat::Json, &["symbol"]),
    (FileFormat::Csv, &["symbol"]),
    (FileFormat::Parquet, &["symbol"]),
];

/// The child process: copies the JSON events of `FS_CRASH_INPUT` (one
/// file per batch) into a files sink at `FS_CRASH_OUTPUT` of format
/// `FS_CRASH_FORMAT`, partitioned by the comma-separated
/// `FS_CRASH_PARTITION_BY`, with `AvailableNow`.
#[tokio::test]
#[ignore = "entry point of the files sink crash tests' child process, not a test by itself"]
async fn crash_child() -> anyhow::Result<()> {
    let (Ok(input), Ok(output), Ok(checkpoint), Ok(format), Ok(partition_by)) = (
        std::env::var("FS_CRASH_INPUT"),
        std::env::var("FS_CRASH_OUTPUT"),
        std::env::var("FS_CRASH_CHECKPOINT"),
        std::env::var("FS_CRASH_FORMAT"),
        std::env::var("FS_CRASH_PARTITION_BY"),
    ) else {
        anyhow::bail!("run by the files sink crash tests only");
    };
    let format = match format.as_str() {
        "json" => FileFormat::Json,
        "csv" => FileFormat::Csv,
        _ => FileFormat::Parquet,
    };
    let ctx = SessionContext::new();
    let source = FileSource::json(&input)
        .schema(events_schema())
        .max_files_per_trigger(1);
    let sink = FileSink::new(&output)
        .with_format(format)
        .partition_by(partition_by.split(',').filter(|c| !c.is_empty()));
    let query = ctx
        .read_stream(source)
        .await?
        .write_stream()
        .sink(sink)
        .checkpoint(&checkpoint)
        .trigger(Trigger::AvailableNow)
        .start()
        .await;
    child::report(query).await
}

struct Dirs {
    _tmp: tempfile::TempDir,
    format: FileFormat,
    partition_by: &'static [&'static str],
    input: PathBuf,
    output: PathBuf,
    checkpoint: PathBuf,
}

impl Dirs {
    fn new(format: FileFormat, partition_by: &'static [&'static str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        std::fs::create_dir_all(&input).unwrap();
        Self {
            format,
            partition_by,
            input,
            output: tmp.path().join("output"),
            checkpoint: tmp.path().join("checkpoint"),
            _tmp: tmp,
        }
    }

    fn command(&self, failpoint: Option<&str>) -> Command {
        let mut cmd = child::command("file_sink_crash::crash_child", failpoint);
        cmd.env("FS_CRASH_INPUT", &self.input)
            .env("FS_CRASH_OUTPUT", &self.output)
            .env("FS_CRASH_CHECKPOINT", &self.checkpoint)
            .env("FS_CRASH_FORMAT", self.format.name())
            .env("FS_CRASH_PARTITION_BY", self.partition_by.join(","));
        cmd
    }
}

/// Every input row, read by DataFusion: the expected output.
async fn input_rows(dirs: &Dirs) -> Vec<String> {
    let ctx = SessionContext::new();
    let schema = events_schema();
    let options = JsonReadOptions::default()
        .schema(&schema)
        .file_extension(".json");
    let df = ctx
        .read_json(dirs.input.to_str().unwrap(), options)
        .await
        .unwrap();
    df_rows(df).await
}

/// The committed rows, by Tidemill's reader.
async fn committed_rows(dirs: &Dirs) -> Vec<String> {
    let ctx = SessionContext::new();
    let df = FileSink::read_committed(&ctx, dirs.output.to_str().unwrap())
        .await
        .unwrap();
    df_rows(df).await
}

/// Every row in the output directory, by DataFusion's reader of the whole
/// directory (any file left there counts), partition columns from the
/// directory names, in the input's column order.
async fn directory_rows(dirs: &Dirs) -> Vec<String> {
    let ctx = SessionContext::new();
    let schema = events_schema();
    let partition_cols: Vec<(String, DataType)> = dirs
        .partition_by
        .iter()
        .map(|c| (c.to_string(), DataType::Utf8))
        .collect();
    let file_schema = arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !dirs.partition_by.contains(&f.name().as_str()))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let path = dirs.output.to_str().unwrap();
    let df = match dirs.format {
        FileFormat::Json => ctx
            .read_json(
                path,
                JsonReadOptions::default()
                    .schema(&file_schema)
                    .file_extension(".json")
                    .table_partition_cols(partition_cols),
            )
            .await
            .unwrap(),
        FileFormat::Csv => ctx
            .read_csv(
                path,
                CsvReadOptions::new()
                    .schema(&file_schema)
                    .file_extension(".csv")
                    .table_partition_cols(partition_cols),
            )
            .await
            .unwrap(),
        FileFormat::Parquet => ctx
            .read_parquet(
                path,
                ParquetReadOptions::default()
                    .schema(&file_schema)
                    .table_partition_cols(partition_cols),
            )
            .await
            .unwrap(),
    };
    let columns: Vec<Expr> = schema.fields().iter().map(|f| ident(f.name())).collect();
    df_rows(df.select(columns).unwrap()).await
}

#[tokio::test]
async fn sigkill_at_each_sink_step_of_json_csv_and_partitioned_output_loses_and_duplicates_nothing()
{
    for (format, partition_by) in CONFIGS {
        for point in SINK_POINTS {
            let at = format!("{format} partitioned by {partition_by:?}, killed at {point}");
            let dirs = Dirs::new(format, partition_by);
            for n in 0..4 {
                write_input(&dirs.input, n);
            }
            // Killed in batch 1 (of 4: one file per trigger).
            let mut child = Child::spawn(&mut dirs.command(Some(&format!("{point}@1"))));
            assert_eq!(child.wait_for_event(), Event::Failpoint, "{at}");
            child.kill();
            let partial = committed_rows(&dirs).await;
            assert!(
                partial.len() == 20 || partial.len() == 40,
                "{at}: batch 0 (and 1 after its sink) committed: {}",
                partial.len()
            );
            write_input(&dirs.input, 4);
            Child::run_to_completion(&mut dirs.command(None));
            let expected = input_rows(&dirs).await;
            assert_eq!(expected.len(), 100);
            assert_eq!(committed_rows(&dirs).await, expected, "{at}");
            assert_eq!(directory_rows(&dirs).await, expected, "{at}");
        }
    }
}
