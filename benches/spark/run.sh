#!/usr/bin/env bash
# Tidemill and Spark Structured Streaming side by side on the trading-metrics
# workload (not part of CI). One command, from anywhere:
#
#   benches/spark/run.sh
#
# Installs PySpark into a virtual environment under target/spark/venv (once;
# needs python3 with venv, Java 17, and the Python package registry),
# generates the seeded trade files with Tidemill's generator (the same rows
# as the aggregation bench), runs the per-minute trading metrics on them with
# Tidemill and with Spark (local[2], availableNow, same watermark, windows,
# aggregates and maxFilesPerTrigger, append mode to parquet), checks that both
# produce the same rows, prints Tidemill's throughput over Spark's and writes
# target/bench-results/spark.json (read by bench-report).
#
# Environment: TIDEMILL_SPARK_ROWS (default 10000000), TIDEMILL_SPARK_MAX_FILES
# (default 5), TIDEMILL_SPARK_PYSPARK (pip requirement, default "pyspark").
set -euo pipefail
cd "$(dirname "$0")/../.."

ROWS=${TIDEMILL_SPARK_ROWS:-10000000}
MAX_FILES=${TIDEMILL_SPARK_MAX_FILES:-5}
TARGET=${CARGO_TARGET_DIR:-target}
WORK=$TARGET/spark
VENV=$WORK/venv
RUN=$WORK/run

command -v java >/dev/null || { echo "run.sh: Java 17 is needed (java not found)" >&2; exit 1; }
if ! "$VENV/bin/python" -c "import pyspark" 2>/dev/null; then
  echo "== installing PySpark into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "${TIDEMILL_SPARK_PYSPARK:-pyspark}"
fi

echo "== building Tidemill's side"
cargo build --release --quiet -p tidemill-harness --bin spark-compare
BIN=$TARGET/release/spark-compare

rm -rf "$RUN"
mkdir -p "$RUN"
echo "== generating $ROWS trades"
"$BIN" generate "$RUN/input" "$ROWS"
"$BIN" generate "$RUN/warmup-input" 100000

echo "== Tidemill (maxFilesPerTrigger $MAX_FILES)"
"$BIN" tidemill "$RUN/input" "$RUN/warmup-input" "$RUN/tidemill-out" "$RUN/tidemill-chk" "$MAX_FILES" \
  | tee "$RUN/tidemill.json"

echo "== Spark (local[2], maxFilesPerTrigger $MAX_FILES)"
"$VENV/bin/python" benches/spark/trading_metrics.py \
  --input "$RUN/input" --warmup-input "$RUN/warmup-input" \
  --output "$RUN/spark-out" --checkpoint "$RUN/spark-chk" \
  --max-files "$MAX_FILES" --json "$RUN/spark.json" 2> "$RUN/spark.log" \
  || { tail -50 "$RUN/spark.log" >&2; exit 1; }

echo "== comparing"
"$BIN" compare "$ROWS" "$MAX_FILES" "$RUN/tidemill.json" "$RUN/spark.json" \
  "$RUN/tidemill-out" "$RUN/spark-out"
