//! Connectors of one's own in a pipeline file: a sink connector registered
//! beside the built-in ones is looked up by name, reads its own options
//! (a mistake said at its line and column), and receives the query's rows,
//! as a stream and as a batch job; a name nobody registered lists the ones
//! that are.

use std::sync::Arc;

use datafusion::prelude::SessionContext;
use tidemill::connectors::{
    ConnectorRegistry, DeclaredSink, OptionError, SinkConnector, SinkDeclaration,
};
use tidemill::sql::{Pipeline, RunOptions};
use tidemill::{MemorySink, Sink, Trigger};

use crate::common::sorted_rows;

/// `connector = 'shared_memory'`: every query writes to the one
/// [`MemorySink`] the test holds; option `label` is required.
struct SharedMemory(Arc<MemorySink>);

#[derive(Debug)]
struct Declared(Arc<MemorySink>);

impl SinkConnector for SharedMemory {
    fn declare(&self, sink: &SinkDeclaration) -> Result<Box<dyn DeclaredSink>, OptionError> {
        sink.options
            .check_known("a shared_memory sink", &["label"], None)?;
        sink.options.require("label")?;
        Ok(Box::new(Declared(Arc::clone(&self.0))))
    }
}

impl DeclaredSink for Declared {
    fn sink(&self, _checkpoint: Option<&str>) -> Arc<dyn Sink> {
        Arc::clone(&self.0) as Arc<dyn Sink>
    }
}

fn pipeline(input: &str, sink_options: &str, sink: &Arc<MemorySink>) -> Pipeline {
    let text = format!(
        "CREATE STREAM t (id BIGINT, symbol VARCHAR) \
         WITH (connector = 'files', path = '{input}', format = 'json');\n\
         CREATE SINK out WITH (connector = 'shared_memory'{sink_options});\n\
         INSERT INTO out SELECT id, upper(symbol) AS symbol FROM t WHERE id > 1;"
    );
    let mut registry = ConnectorRegistry::builtin();
    registry.register_sink("shared_memory", Arc::new(SharedMemory(Arc::clone(sink))));
    Pipeline::parse(&text).unwrap().with_connectors(registry)
}

#[tokio::test]
async fn a_registered_sink_connector_runs_as_a_stream_and_as_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("a.json"),
        "{\"id\": 1, \"symbol\": \"a\"}\n{\"id\": 2, \"symbol\": \"b\"}\n{\"id\": 3, \"symbol\": \"c\"}\n",
    )
    .unwrap();
    let input = input.to_str().unwrap();
    let expected = ["| 2  | B      |", "| 3  | C      |"];

    let streamed = Arc::new(MemorySink::new());
    let options = RunOptions {
        trigger: Trigger::AvailableNow,
        checkpoint: dir.path().join("cp").to_str().unwrap().to_string(),
        checkpoint_durability: Default::default(),
        read_ahead: false,
    };
    let queries = pipeline(input, ", label = 'x'", &streamed)
        .start(&SessionContext::new(), &options)
        .await
        .unwrap();
    for query in queries {
        query.query.await_termination().await.unwrap();
    }
    assert_eq!(sorted_rows(&streamed.batches()), expected);

    let batched = Arc::new(MemorySink::new());
    pipeline(input, ", label = 'x'", &batched)
        .run_batch(&SessionContext::new())
        .await
        .unwrap();
    assert_eq!(sorted_rows(&batched.batches()), expected);
}

#[tokio::test]
async fn a_registered_connector_says_its_option_mistakes_where_they_are() {
    let sink = Arc::new(MemorySink::new());
    let err = pipeline("/nowhere", ", lable = 'x'", &sink)
        .explain(&SessionContext::new())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "2:52: unknown option 'lable' for a shared_memory sink (sink out); valid options: \
         connector, output_mode, label"
    );
    let err = pipeline("/nowhere", "", &sink)
        .explain(&SessionContext::new())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "2:1: sink out needs the option 'label'");
}

#[tokio::test]
async fn an_unregistered_connector_is_refused_naming_the_registered_ones() {
    let text = "CREATE SINK out WITH (connector = 'shared_memory');";
    let err = Pipeline::parse(text)
        .unwrap()
        .explain(&SessionContext::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("1:23: unknown connector 'shared_memory' for sink out; valid connectors: 'files', 'console'"),
        "{err}"
    );
}
