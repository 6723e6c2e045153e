//! The Iceberg sink through streaming queries, each table read back by
//! independent readers — the Python `pyiceberg` package (installed on first
//! use, see `pyiceberg.rs`) and the `iceberg` crate's scan planning with
//! the data files read by the parquet reader — and by its snapshot history:
//! append (partitioned and not), one snapshot per batch naming the query
//! and the batch, a batch re-run after a crash between the sink's commit
//! and the engine's writing nothing, a table that does not fit, a path
//! that holds something else and the output modes the sink cannot write
//! refused when the query starts with nothing committed, and
//! `connector = 'iceberg'` in a pipeline file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use datafusion::prelude::*;
use futures::TryStreamExt;
use tidemill::prelude::*;
use tidemill::sql::{Pipeline, RunOptions};

use crate::common::{events_schema, sorted_rows};
use crate::crash::write_input;
use crate::pyiceberg;

/// The latest `metadata/v<N>.metadata.json` of the table in `dir`, parsed;
/// `None` if there is none.
pub(crate) fn latest_metadata(dir: &Path) -> Option<(u64, serde_json::Value)> {
    let metadata = dir.join("metadata");
    let latest = std::fs::read_dir(&metadata)
        .ok()?
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix('v')?
                .strip_suffix(".metadata.json")?
                .parse::<u64>()
                .ok()
        })
        .max()?;
    let text = std::fs::read_to_string(metadata.join(format!("v{latest}.metadata.json"))).unwrap();
    Some((latest, serde_json::from_str(&text).unwrap()))
}

/// The table's snapshots in commit order, as `(query id, batch id)` from
/// their summaries, each checked to be an append.
pub(crate) fn snapshot_batches(dir: &Path) -> Vec<(String, u64)> {
    let Some((_, metadata)) = latest_metadata(dir) else {
        return Vec::new();
    };
    let mut snapshots: Vec<&serde_json::Value> = metadata["snapshots"]
        .as_array()
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    snapshots.sort_by_key(|s| s["sequence-number"].as_i64().unwrap());
    snapshots
        .iter()
        .map(|s| {
            let summary = &s["summary"];
            assert_eq!(summary["operation"], "append", "{s}");
            (
                summary["tidemill.query-id"].as_str().unwrap().to_string(),
                summary["tidemill.batch-id"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect()
}

/// Snapshots of batches 0..n of the query `query_id`, in order.
pub(crate) fn one_snapshot_per_batch(query_id: &str, n: u64) -> Vec<(String, u64)> {
    (0..n).map(|b| (query_id.to_string(), b)).collect()
}

/// The rows of the table's current snapshot: the data files the `iceberg`
/// crate plans a scan over, each read with the parquet reader, registered
/// as `t` in a session.
pub(crate) async fn table_session(dir: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    let mut batches: Vec<RecordBatch> = Vec::new();
    if let Some((version, _)) = latest_metadata(dir) {
        let location = format!("{}/metadata/v{version}.metadata.json", dir.display());
        let table = iceberg::table::StaticTable::from_metadata_file(
            &location,
            iceberg::TableIdent::from_strs(["t", "t"]).unwrap(),
            iceberg::io::FileIO::new_with_fs(),
        )
        .await
        .unwrap();
        let tasks: Vec<_> = table
            .scan()
            .build()
            .unwrap()
            .plan_files()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for task in tasks {
            let path = task.data_file_path.strip_prefix("file://").unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                std::fs::File::open(path).unwrap(),
                1024,
            )
            .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let schema = Arc::new(arrow::datatypes::Schema::new(
                    batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone().with_metadata(Default::default()))
                        .collect::<Vec<_>>(),
                ));
                batches.push(RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap());
            }
        }
    }
    if batches.is_empty() {
        ctx.register_batch("t", RecordBatch::new_empty(events_schema()))
            .unwrap();
    } else {
        let schema = batches[0].schema();
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
    }
    ctx
}

/// The rows of `sql` over the table at `dir` (as `t`), as sorted
/// pretty-printed lines.
pub(crate) async fn query_table(dir: &Path, sql: &str) -> Vec<String> {
    let ctx = table_session(dir).await;
    sorted_rows(&ctx.sql(sql).await.unwrap().collect().await.unwrap())
}

struct Dirs {
    _tmp: tempfile::TempDir,
    input: PathBuf,
    table: PathBuf,
    checkpoint: PathBuf,
}

impl Dirs {
    /// Input of `files` JSON files of 20 events each (ids 20n..20n+20).
    fn new(files: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        std::fs::create_dir_all(&input).unwrap();
        for n in 0..files {
            write_input(&input, n);
        }
        Self {
            input,
            table: tmp.path().join("table"),
            checkpoint: tmp.path().join("checkpoint"),
            _tmp: tmp,
        }
    }

    /// The events, one file per batch.
    async fn events(&self, ctx: &SessionContext) -> DataFrame {
        ctx.read_stream(
            FileSource::json(self.input.to_str().unwrap())
                .schema(events_schema())
                .max_files_per_trigger(1),
        )
        .await
        .unwrap()
    }

    /// Runs `df` into `sink` to the end of the input; the query's id.
    async fn run(&self, df: DataFrame, sink: IcebergSink) -> String {
        let query = df
            .write_stream()
            .sink(sink)
            .checkpoint(self.checkpoint.to_str().unwrap())
            .trigger(Trigger::AvailableNow)
            .start()
            .await
            .unwrap();
        query.await_termination().await.unwrap();
        query.id().to_string()
    }

    fn sink(&self) -> IcebergSink {
        IcebergSink::new(self.table.to_str().unwrap())
    }
}

#[tokio::test]
async fn append_writes_one_partitioned_snapshot_per_batch_read_back_by_pyiceberg() {
    let dirs = Dirs::new(3);
    let ctx = SessionContext::new();
    let query_id = dirs
        .run(
            dirs.events(&ctx).await,
            dirs.sink().partition_by(["symbol"]),
        )
        .await;
    assert_eq!(
        snapshot_batches(&dirs.table),
        one_snapshot_per_batch(&query_id, 3)
    );
    // Read back by pyiceberg, through the version hint.
    let read = pyiceberg::read(&dirs.table);
    assert_eq!(
        read["columns"],
        serde_json::json!([
            ["id", "long", true],
            ["symbol", "string", true],
            ["price", "double", true]
        ]),
        "{read}"
    );
    assert_eq!(
        read["partition"],
        serde_json::json!([["symbol", "identity"]])
    );
    assert_eq!(read["rows"], 60);
    assert_eq!(read["distinct_ids"], 60);
    let snapshots: Vec<(String, String, String, String)> =
        serde_json::from_value(read["snapshots"].clone()).unwrap();
    assert_eq!(
        snapshots,
        (0..3)
            .map(|b| (
                "append".into(),
                query_id.clone(),
                b.to_string(),
                "20".into()
            ))
            .collect::<Vec<_>>()
    );
    // And by the iceberg crate's planning with the parquet reader.
    assert_eq!(
        query_table(
            &dirs.table,
            "SELECT symbol, count(*) AS n, sum(price) AS s FROM t GROUP BY symbol"
        )
        .await,
        [
            "| A      | 20 | 855.0 |",
            "| B      | 20 | 885.0 |",
            "| C      | 20 | 915.0 |"
        ]
    );
    // Files in a directory per symbol.
    for symbol in ["A", "B", "C"] {
        assert!(dirs.table.join(format!("data/symbol={symbol}")).is_dir());
    }
}

#[tokio::test]
async fn a_batch_rerun_after_the_sink_committed_writes_nothing() {
    let dirs = Dirs::new(3);
    let ctx = SessionContext::new();
    let query_id = dirs.run(dirs.events(&ctx).await, dirs.sink()).await;
    // As if the process died after the sink's commit of batch 2 and before
    // the engine's: the restarted query runs batch 2 again.
    std::fs::remove_file(dirs.checkpoint.join("commits/2")).unwrap();
    let again = dirs.run(dirs.events(&ctx).await, dirs.sink()).await;
    assert_eq!(again, query_id, "the checkpoint keeps the query's id");
    assert_eq!(
        snapshot_batches(&dirs.table),
        one_snapshot_per_batch(&query_id, 3)
    );
    assert_eq!(
        query_table(
            &dirs.table,
            "SELECT count(*) AS n, count(DISTINCT id) AS d FROM t"
        )
        .await,
        ["| 60 | 60 |"]
    );
    // New input continues at batch 3.
    write_input(&dirs.input, 3);
    dirs.run(dirs.events(&ctx).await, dirs.sink()).await;
    assert_eq!(
        snapshot_batches(&dirs.table),
        one_snapshot_per_batch(&query_id, 4)
    );
    let read = pyiceberg::read(&dirs.table);
    assert_eq!(
        (read["rows"].clone(), read["distinct_ids"].clone()),
        (80.into(), 80.into())
    );
    assert_eq!(read["partition"], serde_json::json!([]));
}

#[tokio::test]
async fn a_table_that_does_not_fit_a_foreign_path_and_other_modes_are_refused_at_start() {
    let dirs = Dirs::new(1);
    let ctx = SessionContext::new();
    dirs.run(dirs.events(&ctx).await, dirs.sink()).await;
    let table_url = url::Url::from_file_path(&dirs.table).unwrap();
    let table_url = table_url.as_str().trim_end_matches('/');
    let committed = latest_metadata(&dirs.table).unwrap().0;

    let start = |df: DataFrame, sink: IcebergSink, mode: OutputMode, checkpoint: PathBuf| async move {
        df.write_stream()
            .sink(sink)
            .output_mode(mode)
            .checkpoint(checkpoint.to_str().unwrap())
            .start()
            .await
            .unwrap_err()
            .to_string()
    };
    // A schema change: `price` as text.
    let df = dirs
        .events(&ctx)
        .await
        .select(vec![
            col("id"),
            col("symbol"),
            cast(col("price"), DataType::Utf8).alias("price"),
        ])
        .unwrap();
    let err = start(
        df,
        dirs.sink(),
        OutputMode::Append,
        dirs._tmp.path().join("cp2"),
    )
    .await;
    assert!(
        err.contains(&format!(
            "column 'price' of the Iceberg table '{table_url}' has type double, but the query's \
             output has type Utf8"
        )),
        "{err}"
    );
    // A column more.
    let df = dirs
        .events(&ctx)
        .await
        .select(vec![
            col("id"),
            col("symbol"),
            col("price"),
            lit(1).alias("extra"),
        ])
        .unwrap();
    let err = start(
        df,
        dirs.sink(),
        OutputMode::Append,
        dirs._tmp.path().join("cp3"),
    )
    .await;
    assert!(
        err.contains(&format!(
            "the output column 'extra' is not a column of the Iceberg table '{table_url}'"
        )),
        "{err}"
    );
    // Complete mode (an aggregation).
    let totals = dirs
        .events(&ctx)
        .await
        .aggregate(
            vec![col("symbol")],
            vec![datafusion::functions_aggregate::expr_fn::count(col("id")).alias("n")],
        )
        .unwrap();
    let err = start(
        totals,
        IcebergSink::new(dirs._tmp.path().join("totals").to_str().unwrap()),
        OutputMode::Complete,
        dirs._tmp.path().join("cp4"),
    )
    .await;
    assert!(
        err.contains("cannot write the complete output mode") && err.contains("no overwrite"),
        "{err}"
    );
    assert_eq!(
        latest_metadata(&dirs.table).unwrap().0,
        committed,
        "nothing committed"
    );

    // A directory of parquet files written by the files sink.
    let files = dirs._tmp.path().join("files");
    let query = dirs
        .events(&ctx)
        .await
        .write_stream()
        .sink(FileSink::parquet(files.to_str().unwrap()))
        .checkpoint(dirs._tmp.path().join("cp5").to_str().unwrap())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    let err = start(
        dirs.events(&ctx).await,
        IcebergSink::new(files.to_str().unwrap()),
        OutputMode::Append,
        dirs._tmp.path().join("cp6"),
    )
    .await;
    assert!(
        err.contains("is not an Iceberg table: it holds '")
            && err.contains(&format!("IcebergSink[file://{}]", files.display())),
        "{err}"
    );
    assert!(
        !files.join("metadata").exists(),
        "nothing written to the refused path"
    );
}

#[tokio::test]
async fn a_pipeline_file_writes_an_iceberg_table() {
    let dirs = Dirs::new(3);
    let text = format!(
        "CREATE STREAM trades (id BIGINT, symbol VARCHAR, price DOUBLE)\n\
         WITH (connector = 'files', path = '{}', format = 'json', max_files_per_trigger = 1);\n\
         CREATE SINK priced WITH (connector = 'iceberg', path = '{}', partition_by = 'symbol');\n\
         INSERT INTO priced SELECT id, symbol, price * 2 AS doubled FROM trades WHERE id % 2 = 0;",
        dirs.input.display(),
        dirs.table.display()
    );
    let options = RunOptions {
        trigger: Trigger::AvailableNow,
        checkpoint: dirs.checkpoint.to_str().unwrap().to_string(),
        checkpoint_durability: Default::default(),
        read_ahead: false,
    };
    let queries = Pipeline::parse(&text)
        .unwrap()
        .start(&SessionContext::new(), &options)
        .await
        .unwrap();
    for query in queries {
        query.query.await_termination().await.unwrap();
    }
    let read = pyiceberg::read(&dirs.table);
    assert_eq!(read["rows"], 30, "{read}");
    assert_eq!(
        read["partition"],
        serde_json::json!([["symbol", "identity"]])
    );
    assert_eq!(read["snapshots"].as_array().unwrap().len(), 3);
    // The declared columns are nullable: optional Iceberg columns.
    assert_eq!(
        read["columns"],
        serde_json::json!([
            ["id", "long", false],
            ["symbol", "string", false],
            ["doubled", "double", false]
        ])
    );

    // Update mode is refused when the pipeline is planned.
    let text = text.replace("partition_by = 'symbol'", "output_mode = 'update'");
    let err = match Pipeline::parse(&text) {
        Err(e) => e.to_string(),
        Ok(pipeline) => match pipeline.explain(&SessionContext::new()).await {
            Err(e) => e.to_string(),
            Ok(explained) => explained[0].plan.as_ref().unwrap_err().to_string(),
        },
    };
    assert!(err.contains("append output mode only"), "{err}");
}
