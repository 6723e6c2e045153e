//! `tidemill state CHECKPOINT`: the state of a query's stateful operators,
//! read from its checkpoint with [`tidemill::engine::state_reader`]: the
//! list of state stores, or one store's entries as a table, JSON lines or
//! a parquet file. Reads only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{Field, Fields, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use tidemill::engine::Location;
use tidemill::{StateStoreInfo, read_state, state_stores};

/// How `tidemill state` prints what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A text table (arrow's pretty print).
    Table,
    /// One JSON object per line.
    Json,
    /// A parquet file at `--out` (entries only).
    Parquet,
}

/// What `tidemill state` was asked.
#[derive(Debug)]
pub struct StateArgs {
    pub checkpoint: String,
    pub query: Option<String>,
    pub operator: Option<usize>,
    pub store: Option<String>,
    pub batch: Option<u64>,
    pub format: Format,
    pub out: Option<PathBuf>,
}

/// Runs `tidemill state`.
pub async fn run(ctx: &SessionContext, args: StateArgs) -> anyhow::Result<()> {
    if args.format == Format::Parquet && args.out.is_none() {
        bail!("--format parquet writes a file: give its path with --out PATH");
    }
    let location = resolve(ctx, &args.checkpoint, args.query.as_deref())?;
    match args.operator {
        None => {
            if args.format == Format::Parquet {
                bail!("--format parquet writes a store's entries: choose one with --operator N");
            }
            let stores = state_stores(&location, args.batch).await?;
            let text = match args.format {
                Format::Json => stores.iter().map(|s| store_json(s) + "\n").collect(),
                _ => {
                    let table =
                        arrow::util::pretty::pretty_format_batches(&[stores_batch(&stores)?])?;
                    format!("{table}\n")
                }
            };
            emit(args.out.as_deref(), text.as_bytes())
        }
        Some(operator) => {
            let df =
                read_state(ctx, &location, operator, args.store.as_deref(), args.batch).await?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            match args.format {
                Format::Table => {
                    let table = arrow::util::pretty::pretty_format_batches(&batches)?;
                    emit(args.out.as_deref(), format!("{table}\n").as_bytes())
                }
                Format::Json => {
                    let mut bytes = Vec::new();
                    let mut writer = arrow::json::WriterBuilder::new()
                        .with_explicit_nulls(true)
                        .build::<_, arrow::json::writer::LineDelimited>(&mut bytes);
                    for batch in &batches {
                        writer.write(batch)?;
                    }
                    writer.finish()?;
                    drop(writer);
                    emit(args.out.as_deref(), &bytes)
                }
                Format::Parquet => {
                    let path = args.out.as_deref().expect("checked above");
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut writer = ArrowWriter::try_new(file, schema, None)?;
                    for batch in &batches {
                        writer.write(batch)?;
                    }
                    writer
                        .close()
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    Ok(())
                }
            }
        }
    }
}

/// The checkpoint to read: `checkpoint` itself when it is a query's (or
/// not a local directory); with `query`, the query of that name under a
/// pipeline's checkpoint root (`tidemill run` keeps one directory per
/// query, named after its sink); without, a root's only query.
fn resolve(
    ctx: &SessionContext,
    checkpoint: &str,
    query: Option<&str>,
) -> anyhow::Result<Location> {
    // Messages name the checkpoint as given.
    let given = checkpoint;
    let location = Location::resolve(checkpoint, &ctx.runtime_env())?;
    let Some(dir) = location.local_path() else {
        // On an object store: a query's checkpoint, or the query's under
        // it.
        return Ok(match query {
            Some(name) => Location::resolve(
                &format!("{}/{name}", location.url().as_str().trim_end_matches('/')),
                &ctx.runtime_env(),
            )?,
            None => location,
        });
    };
    let is_query = |dir: &Path| dir.join("metadata").is_file();
    let queries = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| is_query(&entry.path()))
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let chosen = match query {
        Some(name) => {
            let candidate = dir.join(name);
            if !is_query(&candidate) {
                if is_query(&dir) {
                    bail!(
                        "{} is the checkpoint of one query; --query {name} chooses a query under a \
                         pipeline's checkpoint root",
                        given
                    );
                }
                let names = queries();
                match names.is_empty() {
                    true => bail!("{} holds no checkpoint of a query named {name}", given),
                    false => bail!(
                        "{} holds no checkpoint of a query named {name}; its queries: {}",
                        given,
                        names.join(", ")
                    ),
                }
            }
            candidate
        }
        None if is_query(&dir) => return Ok(location),
        None => match queries().as_slice() {
            [only] => dir.join(only),
            [] => return Ok(location),
            several => bail!(
                "{} holds the checkpoints of several queries ({}): choose one with --query NAME",
                given,
                several.join(", ")
            ),
        },
    };
    let chosen = chosen
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", chosen.display()))?;
    Ok(Location::resolve(chosen, &ctx.runtime_env())?)
}

/// Writes `bytes` to `out`, or to standard output.
fn emit(out: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
        }
        None => std::io::stdout()
            .lock()
            .write_all(bytes)
            .context("cannot write to standard output"),
    }
}

/// `symbol Utf8, count Int64`.
fn columns_text(fields: &Fields) -> String {
    fields
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stores as a table: one row each.
fn stores_batch(stores: &[StateStoreInfo]) -> anyhow::Result<RecordBatch> {
    let text = |values: Vec<String>| Arc::new(StringArray::from(values)) as ArrayRef;
    let number = |values: Vec<u64>| Arc::new(UInt64Array::from(values)) as ArrayRef;
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "operator",
            number(stores.iter().map(|s| s.operator as u64).collect()),
        ),
        (
            "store",
            text(stores.iter().map(|s| s.store.clone()).collect()),
        ),
        ("batch", number(stores.iter().map(|s| s.batch).collect())),
        ("rows", number(stores.iter().map(|s| s.rows).collect())),
        (
            "key_columns",
            text(
                stores
                    .iter()
                    .map(|s| columns_text(&s.key_columns))
                    .collect(),
            ),
        ),
        (
            "value_columns",
            text(
                stores
                    .iter()
                    .map(|s| columns_text(&s.value_columns))
                    .collect(),
            ),
        ),
        (
            "description",
            text(
                stores
                    .iter()
                    .map(|s| s.description.clone().unwrap_or_default())
                    .collect(),
            ),
        ),
    ];
    let schema = Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), false))
            .collect::<Vec<_>>(),
    );
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        columns.into_iter().map(|(_, array)| array).collect(),
    )?)
}

/// One store as a JSON object on one line.
fn store_json(store: &StateStoreInfo) -> String {
    let columns = |fields: &Fields| -> Vec<serde_json::Value> {
        fields
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "type": f.data_type().to_string(),
                    "nullable": f.is_nullable(),
                })
            })
            .collect()
    };
    serde_json::json!({
        "operator": store.operator,
        "description": store.description,
        "store": store.store,
        "batch": store.batch,
        "version": store.version,
        "rows": store.rows,
        "partitions": store.partitions,
        "key_columns": columns(&store.key_columns),
        "value_columns": columns(&store.value_columns),
    })
    .to_string()
}
