/// Errors of the Kafka intake and source. Carries text only: no `rdkafka` type leaks out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    /// The topic exists with a partition count other than the configured one. Kairos' partition
    /// count is fixed for the life of a cluster: fix the configuration, or use a new topic.
    #[error(
        "topic `{topic}` has {actual} partitions but Kairos is configured with `partitions = {expected}`; \
         the partition count is fixed for the life of the cluster: set `partitions = {actual}` or use another topic"
    )]
    PartitionMismatch {
        topic: String,
        expected: u32,
        actual: u32,
    },
    #[error("topic `{0}` does not exist (and `create_topic` is off)")]
    NoTopic(String),
    /// The brokers could not be reached, or did not answer in time.
    #[error("Kafka unavailable: {0}")]
    Unavailable(String),
    #[error("Kafka error: {0}")]
    Other(String),
}

impl KafkaError {
    pub(crate) fn from_rd(context: &str, e: rdkafka::error::KafkaError) -> Self {
        use rdkafka::error::{KafkaError as K, RDKafkaErrorCode as C};
        let text = format!("{context}: {e}");
        match e.rdkafka_error_code() {
            Some(
                C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::MessageTimedOut
                | C::NetworkException,
            ) => Self::Unavailable(text),
            _ if matches!(e, K::ClientCreation(_) | K::ClientConfig(..)) => Self::Config(text),
            _ => Self::Other(text),
        }
    }
}
