//! librdkafka clients: configuration, blocking calls off the async
//! runtime, and which Kafka errors are worth retrying.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tidemill_engine::{Result, TidemillError};

/// How long one Kafka operation (a metadata or offsets request, a produce,
/// a read making no progress) may take by default before it fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What every client of one connector is configured with.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// librdkafka settings passed through unchanged (security, SASL, TLS,
    /// tuning); they override the connector's own defaults.
    pub options: BTreeMap<String, String>,
    /// The bound on every Kafka operation.
    pub timeout: Duration,
}

impl ClientOptions {
    pub(crate) fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            options: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client configuration: the bootstrap servers, then `defaults`,
    /// then the user's pass-through options (which win).
    pub(crate) fn config(&self, defaults: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config.set("client.id", "tidemill");
        for (key, value) in defaults {
            config.set(*key, value);
        }
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// The timeout in milliseconds, as librdkafka settings want it.
    pub(crate) fn timeout_ms(&self) -> String {
        self.timeout.as_millis().max(1).to_string()
    }
}

/// Whether a Kafka error may pass by itself: the broker is unreachable,
/// restarting or slow, a partition has no leader for a moment.
pub fn is_transient(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(code) => matches!(
            code,
            C::BrokerTransportFailure
                | C::Resolve
                | C::MessageTimedOut
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::QueueFull
                | C::WaitingForCoordinator
                | C::TimedOutQueue
                | C::Retry
                | C::PurgeQueue
                | C::PurgeInflight
                | C::NodeUpdate
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::RequestTimedOut
                | C::BrokerNotAvailable
                | C::ReplicaNotAvailable
                | C::NetworkException
                | C::CoordinatorLoadInProgress
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::KafkaStorageError
                | C::FetchSessionIdNotFound
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
                | C::PreferredLeaderNotAvailable
                | C::ThrottlingQuotaExceeded
                | C::UnknownTopicOrPartition
        ),
        None => false,
    }
}

/// Runs a blocking librdkafka call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TidemillError::Internal(format!("a Kafka client call panicked: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_outages_are_transient_and_bad_input_is_not() {
        assert!(is_transient(&KafkaError::MetadataFetch(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(is_transient(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!is_transient(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(!is_transient(&KafkaError::ClientCreation("bad".into())));
    }

    #[test]
    fn pass_through_options_override_defaults() {
        let mut options = ClientOptions::new("127.0.0.1:1");
        options
            .options
            .insert("fetch.wait.max.ms".into(), "7".into());
        let config = options.config(&[("fetch.wait.max.ms", "100".into())]);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:1"));
    }
}
