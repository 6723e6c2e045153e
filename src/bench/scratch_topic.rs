//! `tidemill bench --sink real` on a Kafka sink: each point writes to a
//! scratch topic of its own, created when the sink opens and deleted when
//! the bench ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use tidemill_connectors::ConnectorOptions;
use tidemill_connectors::kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, TopicReplication,
};
use tidemill_connectors::kafka::rdkafka::client::DefaultClientContext;
use tidemill_connectors::kafka::rdkafka::config::ClientConfig;
use tidemill_connectors::kafka::rdkafka::types::RDKafkaErrorCode;
use tidemill_engine::{Result, Sink, SinkContext, TidemillError};

/// How long an administrative request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach the sink's brokers: its `bootstrap_servers` and its
/// `kafka.*` client settings (security, say), as the sink itself uses.
#[derive(Debug, Clone)]
pub(crate) struct Brokers {
    config: Vec<(String, String)>,
}

impl Brokers {
    /// The brokers of a Kafka sink declared with `options`.
    pub(crate) fn of(options: &ConnectorOptions) -> Option<Self> {
        let bootstrap = options.get("bootstrap_servers")?;
        let mut config = vec![("bootstrap.servers".to_string(), bootstrap.to_string())];
        config.extend(
            options
                .prefixed("kafka.")
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Some(Self { config })
    }

    fn admin(&self) -> std::result::Result<AdminClient<DefaultClientContext>, String> {
        let mut config = ClientConfig::new();
        for (key, value) in &self.config {
            config.set(key, value);
        }
        config
            .create()
            .map_err(|e| format!("cannot connect to the sink's brokers: {e}"))
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(TIMEOUT))
            .operation_timeout(Some(TIMEOUT))
    }

    /// Creates `topic` with one partition.
    async fn create(&self, topic: &str) -> std::result::Result<(), String> {
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
        let results = self
            .admin()?
            .create_topics([&new], &Self::options())
            .await
            .map_err(|e| format!("creating scratch topic {topic}: {e}"))?;
        for result in results {
            result.map_err(|(t, e)| format!("creating scratch topic {t}: {e}"))?;
        }
        Ok(())
    }

    /// Deletes `topics`.
    pub(crate) async fn delete(&self, topics: &[String]) -> std::result::Result<(), String> {
        if topics.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let results = self
            .admin()?
            .delete_topics(&names, &Self::options())
            .await
            .map_err(|e| format!("deleting the scratch topics: {e}"))?;
        for result in results {
            match result {
                // Already gone is what deleting is for.
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) | Ok(_) => {}
                Err((t, e)) => return Err(format!("deleting scratch topic {t}: {e}")),
            }
        }
        Ok(())
    }
}

/// A Kafka sink writing to a scratch topic, which it creates on opening and
/// records for deletion.
#[derive(Debug)]
pub(crate) struct ScratchTopicSink {
    pub(crate) inner: Arc<dyn Sink>,
    pub(crate) brokers: Brokers,
    pub(crate) topic: String,
    /// The scratch topics created so far, deleted when the bench ends.
    pub(crate) created: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Sink for ScratchTopicSink {
    fn description(&self) -> String {
        format!("Scratch[{}]", self.inner.description())
    }

    async fn open(&self, ctx: &SinkContext) -> Result<()> {
        self.brokers
            .create(&self.topic)
            .await
            .map_err(|e| TidemillError::sink(self.description(), e))?;
        self.created
            .lock()
            .expect("scratch topics lock poisoned")
            .push(self.topic.clone());
        self.inner.open(ctx).await
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        self.inner.add_batch(batch_id, schema, batches).await
    }
}
