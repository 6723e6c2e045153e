//! The Kafka columns (Spark's Kafka source schema) and building them from
//! consumed messages.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use rdkafka::message::{Headers, Message, Timestamp};

/// The schema of the messages of one batch, as the Kafka sink
/// produces and logs them.
pub(crate) fn messages_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("headers", headers_type(), true),
    ]))
}

/// The columns of every record a Kafka source reads, in order.
pub const KAFKA_COLUMNS: [&str; 8] = [
    "key",
    "value",
    "topic",
    "partition",
    "offset",
    "timestamp",
    "timestamp_type",
    "headers",
];

/// `timestamp_type` of a record whose timestamp the producer set.
pub const TIMESTAMP_CREATE_TIME: i32 = 0;
/// `timestamp_type` of a record whose timestamp the broker set on append.
pub const TIMESTAMP_LOG_APPEND_TIME: i32 = 1;
/// `timestamp_type` of a record without a timestamp.
pub const TIMESTAMP_NOT_AVAILABLE: i32 = -1;

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// The type of the `headers` column: a list of `{key, value}` structs.
pub fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        true,
    )))
}

/// The type of the `timestamp` column: milliseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The fields of the Kafka columns, as Spark's Kafka source has them:
///
/// | column | type |
/// |---|---|
/// | `key` | binary, nullable |
/// | `value` | binary, nullable |
/// | `topic` | string |
/// | `partition` | int32 |
/// | `offset` | int64 |
/// | `timestamp` | timestamp (ms, UTC), nullable |
/// | `timestamp_type` | int32: 0 create time, 1 log-append time, -1 none |
/// | `headers` | list of `{key: string, value: binary}`, null if none |
pub fn kafka_fields() -> Vec<Field> {
    vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("timestamp", timestamp_type(), true),
        Field::new("timestamp_type", DataType::Int32, false),
        Field::new("headers", headers_type(), true),
    ]
}

/// The schema of the Kafka columns (see [`kafka_fields`]).
pub fn kafka_schema() -> SchemaRef {
    Arc::new(Schema::new(kafka_fields()))
}

/// Builds batches of the Kafka columns from messages.
pub(crate) struct RecordsBuilder {
    key: BinaryBuilder,
    value: BinaryBuilder,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    timestamp_type: Int32Builder,
    headers: ListBuilder<StructBuilder>,
    rows: usize,
}

impl RecordsBuilder {
    pub(crate) fn new() -> Self {
        let header_struct = StructBuilder::new(
            header_fields(),
            vec![
                Box::new(StringBuilder::new()),
                Box::new(BinaryBuilder::new()),
            ],
        );
        Self {
            key: BinaryBuilder::new(),
            value: BinaryBuilder::new(),
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            timestamp_type: Int32Builder::new(),
            headers: ListBuilder::new(header_struct).with_field(Arc::new(Field::new(
                "item",
                DataType::Struct(header_fields()),
                true,
            ))),
            rows: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows
    }

    pub(crate) fn append<M: Message>(&mut self, message: &M) {
        self.key.append_option(message.key());
        self.value.append_option(message.payload());
        self.topic.append_value(message.topic());
        self.partition.append_value(message.partition());
        self.offset.append_value(message.offset());
        let (ts, kind) = match message.timestamp() {
            Timestamp::NotAvailable => (None, TIMESTAMP_NOT_AVAILABLE),
            Timestamp::CreateTime(t) => (Some(t), TIMESTAMP_CREATE_TIME),
            Timestamp::LogAppendTime(t) => (Some(t), TIMESTAMP_LOG_APPEND_TIME),
        };
        self.timestamp.append_option(ts);
        self.timestamp_type.append_value(kind);
        match message.headers() {
            Some(headers) if headers.count() > 0 => {
                let entries = self.headers.values();
                for header in headers.iter() {
                    entries
                        .field_builder::<StringBuilder>(0)
                        .expect("key builder")
                        .append_value(header.key);
                    entries
                        .field_builder::<BinaryBuilder>(1)
                        .expect("value builder")
                        .append_option(header.value);
                    entries.append(true);
                }
                self.headers.append(true);
            }
            _ => self.headers.append(false),
        }
        self.rows += 1;
    }

    /// The rows appended so far as one batch; the builder starts afresh.
    pub(crate) fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.timestamp_type.finish()),
            Arc::new(self.headers.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(kafka_schema(), columns).expect("the Kafka columns match their schema")
    }
}
