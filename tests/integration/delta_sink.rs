//! The Delta sink through streaming queries, each table read back by an
//! independent reader — deltalake's own DataFusion table provider — and by
//! its transaction log: append (partitioned), complete and update (MERGE)
//! output modes, one table version per batch carrying the query's
//! transaction, a batch re-run after a crash between the sink's commit and
//! the engine's writing nothing, a table that does not fit and a path that
//! holds no Delta table refused when the query starts, and
//! `connector = 'delta'` in a pipeline file.

use std::path::{Path, PathBuf};

use arrow::datatypes::DataType;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::sql::{Pipeline, RunOptions};

use crate::common::{events_schema, sorted_rows};
use crate::crash::write_input;

/// The Delta table at `dir`, opened by deltalake.
pub(crate) async fn open_table(dir: &Path) -> deltalake::DeltaTable {
    let url = url::Url::from_directory_path(dir).unwrap();
    deltalake::open_table(url).await.unwrap()
}

/// A session with the table at `dir` registered as `t` through deltalake's
/// table provider.
pub(crate) async fn table_session(dir: &Path) -> SessionContext {
    let table = open_table(dir).await;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    ctx
}

/// The rows of `sql` over the table at `dir` (registered as `t`), as
/// sorted pretty-printed lines.
pub(crate) async fn query_table(dir: &Path, sql: &str) -> Vec<String> {
    let ctx = table_session(dir).await;
    sorted_rows(&ctx.sql(sql).await.unwrap().collect().await.unwrap())
}

/// The table's versions in `_delta_log` (its JSON commits), each with the
/// `(appId, version)` of its `txn` actions, by version.
pub(crate) fn log_versions(dir: &Path) -> Vec<(u64, Vec<(String, i64)>)> {
    let log = dir.join("_delta_log");
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&log).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(Ok(version)) = name.strip_suffix(".json").map(str::parse::<u64>) else {
            continue;
        };
        let text = std::fs::read_to_string(log.join(&name)).unwrap();
        let txns = text
            .lines()
            .filter_map(|line| {
                let action: serde_json::Value = serde_json::from_str(line).unwrap();
                let txn = action.get("txn")?;
                Some((
                    txn["appId"].as_str().unwrap().to_string(),
                    txn["version"].as_i64().unwrap(),
                ))
            })
            .collect();
        versions.push((version, txns));
    }
    versions.sort();
    versions
}

/// Versions 0..n, version i carrying batch i of the query `query_id`.
pub(crate) fn one_version_per_batch(query_id: &str, n: u64) -> Vec<(u64, Vec<(String, i64)>)> {
    (0..n)
        .map(|v| (v, vec![(query_id.to_string(), v as i64)]))
        .collect()
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

    /// Runs `df` into `sink` in `mode` to the end of the input; the
    /// query's id.
    async fn run(&self, df: DataFrame, sink: DeltaSink, mode: OutputMode) -> String {
        let query = df
            .write_stream()
            .sink(sink)
            .output_mode(mode)
            .checkpoint(self.checkpoint.to_str().unwrap())
            .trigger(Trigger::AvailableNow)
            .start()
            .await
            .unwrap();
        query.await_termination().await.unwrap();
        query.id().to_string()
    }

    fn sink(&self) -> DeltaSink {
        DeltaSink::new(self.table.to_str().unwrap())
    }
}

/// Per-symbol count and total price.
fn per_symbol(df: DataFrame) -> DataFrame {
    df.aggregate(
        vec![col("symbol")],
        vec![
            count(lit(1)).alias("trades"),
            sum(col("price")).alias("total"),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn append_writes_one_partitioned_version_per_batch_read_back_by_deltalake() {
    let dirs = Dirs::new(3);
    let ctx = SessionContext::new();
    let query_id = dirs
        .run(
            dirs.events(&ctx).await,
            dirs.sink().partition_by(["symbol"]),
            OutputMode::Append,
        )
        .await;

    assert_eq!(
        log_versions(&dirs.table),
        one_version_per_batch(&query_id, 3)
    );
    // Through deltalake's table provider: the schema (the partition column
    // included), every row, the partition values.
    let ctx = table_session(&dirs.table).await;
    let schema = ctx.table("t").await.unwrap().schema().as_arrow().clone();
    let columns: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(
        columns.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["id", "symbol", "price"],
        "{columns:?}"
    );
    assert_eq!(columns[0].1, DataType::Int64);
    assert_eq!(columns[2].1, DataType::Float64);
    assert_eq!(
        query_table(
            &dirs.table,
            "SELECT symbol, count(*) AS n, min(id) AS lo, max(id) AS hi FROM t GROUP BY symbol"
        )
        .await,
        [
            "| A      | 20 | 0  | 57 |",
            "| B      | 20 | 1  | 58 |",
            "| C      | 20 | 2  | 59 |",
        ]
    );
    let table = open_table(&dirs.table).await;
    assert_eq!(
        table.snapshot().unwrap().metadata().partition_columns(),
        &vec!["symbol".to_string()]
    );
    let mut dirs_on_disk: Vec<String> = std::fs::read_dir(&dirs.table)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("symbol="))
        .collect();
    dirs_on_disk.sort();
    assert_eq!(dirs_on_disk, ["symbol=A", "symbol=B", "symbol=C"]);
    // The table's own history: one write per batch (and no other commit).
    let history: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(table.history(None))
        .await
        .unwrap();
    assert_eq!(history.len(), 3);
    assert!(
        history
            .iter()
            .all(|c| c.operation.as_deref() == Some("WRITE")),
        "{history:?}"
    );
}

#[tokio::test]
async fn complete_mode_overwrites_and_update_mode_merges() {
    let ctx = SessionContext::new();
    let expected = [
        "| A      | 20     | 855.0 |",
        "| B      | 20     | 885.0 |",
        "| C      | 20     | 915.0 |",
    ];

    let complete = Dirs::new(3);
    let query_id = complete
        .run(
            per_symbol(complete.events(&ctx).await),
            complete.sink(),
            OutputMode::Complete,
        )
        .await;
    assert_eq!(
        query_table(&complete.table, "SELECT symbol, trades, total FROM t").await,
        expected
    );
    assert_eq!(
        log_versions(&complete.table),
        one_version_per_batch(&query_id, 3)
    );
    // Each overwrite removed the previous batch's files in its commit.
    let last = std::fs::read_to_string(complete.table.join("_delta_log/00000000000000000002.json"))
        .unwrap();
    assert!(last.contains("\"remove\""), "{last}");

    let update = Dirs::new(3);
    let query_id = update
        .run(
            per_symbol(update.events(&ctx).await),
            update.sink().merge_on(["symbol"]),
            OutputMode::Update,
        )
        .await;
    assert_eq!(
        query_table(&update.table, "SELECT symbol, trades, total FROM t").await,
        expected
    );
    assert_eq!(
        log_versions(&update.table),
        one_version_per_batch(&query_id, 3)
    );
    let table = open_table(&update.table).await;
    let history: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(table.history(None))
        .await
        .unwrap();
    let mut operations: Vec<String> = history.iter().filter_map(|c| c.operation.clone()).collect();
    operations.sort();
    assert_eq!(operations, ["MERGE", "MERGE", "WRITE"], "{history:?}");

    // Update mode without keys is refused when the query starts.
    let refused = Dirs::new(1);
    let err = per_symbol(refused.events(&ctx).await)
        .write_stream()
        .sink(refused.sink())
        .output_mode(OutputMode::Update)
        .checkpoint(refused.checkpoint.to_str().unwrap())
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("without merge keys") && err.contains(".merge_on"),
        "{err}"
    );
}

#[tokio::test]
async fn a_batch_rerun_after_the_sink_committed_writes_nothing() {
    let dirs = Dirs::new(3);
    let ctx = SessionContext::new();
    let query_id = dirs
        .run(dirs.events(&ctx).await, dirs.sink(), OutputMode::Append)
        .await;
    // As if the process died after the sink's commit of batch 2 and before
    // the engine's: the restarted query runs batch 2 again.
    std::fs::remove_file(dirs.checkpoint.join("commits/2")).unwrap();
    let again = dirs
        .run(dirs.events(&ctx).await, dirs.sink(), OutputMode::Append)
        .await;
    assert_eq!(again, query_id, "the checkpoint keeps the query's id");
    assert_eq!(
        log_versions(&dirs.table),
        one_version_per_batch(&query_id, 3)
    );
    assert_eq!(
        query_table(
            &dirs.table,
            "SELECT count(*) AS n, count(DISTINCT id) AS d FROM t"
        )
        .await,
        ["| 60 | 60 |"]
    );

    // New input continues at batch 3, in version 3.
    write_input(&dirs.input, 3);
    dirs.run(dirs.events(&ctx).await, dirs.sink(), OutputMode::Append)
        .await;
    assert_eq!(
        log_versions(&dirs.table),
        one_version_per_batch(&query_id, 4)
    );
}

#[tokio::test]
async fn a_table_that_does_not_fit_and_a_path_without_a_table_are_refused_at_start() {
    let dirs = Dirs::new(1);
    let ctx = SessionContext::new();
    dirs.run(dirs.events(&ctx).await, dirs.sink(), OutputMode::Append)
        .await;
    let url = url::Url::from_directory_path(std::fs::canonicalize(&dirs.table).unwrap()).unwrap();
    let table_url = url.as_str().trim_end_matches('/');

    let start = |df: DataFrame, sink: DeltaSink, checkpoint: PathBuf| async move {
        df.write_stream()
            .sink(sink)
            .checkpoint(checkpoint.to_str().unwrap())
            .start()
            .await
            .unwrap_err()
            .to_string()
    };
    // Another query whose `price` is text.
    let df = dirs
        .events(&ctx)
        .await
        .select(vec![
            col("id"),
            col("symbol"),
            cast(col("price"), DataType::Utf8).alias("price"),
        ])
        .unwrap();
    let err = start(df, dirs.sink(), dirs._tmp.path().join("cp2")).await;
    assert!(
        err.contains(&format!(
            "column 'price' of the Delta table '{table_url}' has type double, but the query's \
             output has type Utf8"
        )),
        "{err}"
    );
    // One with a column more.
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
    let err = start(df, dirs.sink(), dirs._tmp.path().join("cp3")).await;
    assert!(
        err.contains(&format!(
            "the output column 'extra' is not a column of the Delta table '{table_url}'"
        )),
        "{err}"
    );

    // A directory of parquet files written by the files sink.
    let files = dirs._tmp.path().join("files");
    let query = dirs
        .events(&ctx)
        .await
        .write_stream()
        .sink(FileSink::parquet(files.to_str().unwrap()))
        .checkpoint(dirs._tmp.path().join("cp4").to_str().unwrap())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    let err = start(
        dirs.events(&ctx).await,
        DeltaSink::new(files.to_str().unwrap()),
        dirs._tmp.path().join("cp5"),
    )
    .await;
    assert!(
        err.contains("is not a Delta table: it holds '") && err.contains("no _delta_log"),
        "{err}"
    );
    assert!(
        !files.join("_delta_log").exists(),
        "nothing written to the refused path"
    );
}

#[tokio::test]
async fn a_pipeline_file_writes_a_delta_table() {
    let dirs = Dirs::new(3);
    let text = format!(
        "CREATE STREAM trades (id BIGINT, symbol VARCHAR, price DOUBLE)\n\
         WITH (connector = 'files', path = '{}', format = 'json', max_files_per_trigger = 1);\n\
         CREATE SINK totals WITH (connector = 'delta', path = '{}', output_mode = 'update',\n\
                                  merge_keys = 'symbol', checkpoint_interval = 2);\n\
         INSERT INTO totals SELECT symbol, count(*) AS trades FROM trades GROUP BY symbol;",
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
    assert_eq!(
        query_table(&dirs.table, "SELECT symbol, trades FROM t").await,
        [
            "| A      | 20     |",
            "| B      | 20     |",
            "| C      | 20     |"
        ]
    );
    assert_eq!(log_versions(&dirs.table).len(), 3);
    // checkpoint_interval = 2: a checkpoint after version 1.
    assert!(
        dirs.table
            .join("_delta_log/00000000000000000001.checkpoint.parquet")
            .exists()
    );

    // Update mode without merge keys: refused, naming the fix.
    let text = text.replace("merge_keys = 'symbol', ", "");
    let explained = Pipeline::parse(&text)
        .unwrap()
        .explain(&SessionContext::new())
        .await
        .unwrap();
    let err = explained[0].plan.as_ref().unwrap_err().to_string();
    assert!(
        err.contains("without merge keys") && err.contains("merge_keys = 'key'"),
        "{err}"
    );
}
