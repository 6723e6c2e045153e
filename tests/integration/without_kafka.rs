//! A build without the `kafka` feature (`--no-default-features`): the
//! command refuses Kafka streams and sinks, saying how to get them, and
//! still runs everything else.

use crate::cli::{text, tidemill};

/// `connector = 'kafka'` in a stream or a sink is an error at the option,
/// naming the missing feature.
#[test]
fn kafka_pipelines_are_refused_naming_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "CREATE STREAM t WITH (connector = 'kafka', bootstrap_servers = 'b:9092', topic = 't');\n\
             CREATE SINK s WITH (connector = 'console');\n\
             INSERT INTO s SELECT * FROM t;",
            ":1:23: ",
        ),
        (
            "CREATE STREAM t WITH (connector = 'rate', rows_per_second = 1);\n\
             CREATE SINK s WITH (connector = 'kafka', bootstrap_servers = 'b:9092', topic = 'o');\n\
             INSERT INTO s SELECT * FROM t;",
            ":2:21: ",
        ),
    ];
    for (sql, at) in cases {
        let file = dir.path().join("kafka.sql");
        std::fs::write(&file, sql).unwrap();
        let out = tidemill(&["explain", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "kafka.sql{at}the kafka connector is not built in: build tidemill with the `kafka` feature"
            )),
            "{stderr}"
        );
    }
}
