"""Spark's side of the comparison (run by benches/spark/run.sh): the
trading-metrics workload with Spark Structured Streaming.

Per 1-minute tumbling window, symbol and exchange: count, sum(quantity),
vwap, max and min price; watermark 10 s; append mode to parquet files;
trigger availableNow; maxFilesPerTrigger as given. A warm-up query on a
small input runs first; the timed query runs from start() to termination.
Writes one JSON object with the timing to --json.
"""

import argparse
import json
import shutil
import time

START = time.time()

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.types import (  # noqa: E402
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
)

# The generated files' schema: event_time is a parquet timestamp without
# time zone (arrow Timestamp(ms, None)), i.e. Spark's TIMESTAMP_NTZ.
SCHEMA = StructType(
    [
        StructField("symbol", StringType(), False),
        StructField("exchange", StringType(), False),
        StructField("price", DoubleType(), False),
        StructField("quantity", LongType(), False),
        StructField("event_time", TimestampNTZType(), False),
    ]
)


def run(spark, input_dir, output, checkpoint, max_files):
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(checkpoint, ignore_errors=True)
    trades = (
        spark.readStream.schema(SCHEMA)
        .option("maxFilesPerTrigger", max_files)
        .parquet(input_dir)
        # The session time zone is UTC: the instant is unchanged.
        .withColumn("event_time", F.col("event_time").cast("timestamp"))
        .withWatermark("event_time", "10 seconds")
    )
    per_minute = (
        trades.groupBy(F.window("event_time", "1 minute"), "symbol", "exchange")
        .agg(
            F.count("price").alias("trades"),
            F.sum("quantity").alias("volume"),
            F.sum(F.col("price") * F.col("quantity").cast("double")).alias("notional"),
            F.max("price").alias("high"),
            F.min("price").alias("low"),
        )
        .select(
            F.col("window.start").alias("window_start"),
            "symbol",
            "exchange",
            "trades",
            "volume",
            (F.col("notional") / F.col("volume").cast("double")).alias("vwap"),
            "high",
            "low",
        )
    )
    t = time.time()
    query = (
        per_minute.writeStream.format("parquet")
        .option("path", output)
        .option("checkpointLocation", checkpoint)
        .outputMode("append")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    seconds = time.time() - t
    batches = len(query.recentProgress)
    return seconds, batches


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--warmup-input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--max-files", type=int, required=True)
    p.add_argument("--json", required=True)
    a = p.parse_args()
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("tidemill-spark-compare")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.streaming.numRecentProgressUpdates", "100000")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    run(spark, a.warmup_input, a.output + ".warmup", a.checkpoint + ".warmup", a.max_files)
    seconds, batches = run(spark, a.input, a.output, a.checkpoint, a.max_files)
    result = {
        "engine": "Spark",
        "version": spark.version,
        "seconds": seconds,
        "batches": batches,
        "total_seconds": time.time() - START,
        "settings": {
            "master": "local[2]",
            "spark.sql.shuffle.partitions": "2",
            "maxFilesPerTrigger": str(a.max_files),
            "state store": "default (HDFS-backed)",
        },
    }
    with open(a.json, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))
    spark.stop()


if __name__ == "__main__":
    main()
