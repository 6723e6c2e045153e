//! Kafka offsets: per topic-partition positions, where a read starts and
//! ends, and how a read limit is spread across partitions.

use std::collections::BTreeMap;

use serde_json::Value;
use tidemill_engine::Offset;

/// Offsets by topic and partition, as the Kafka source records them in the
/// offset log: `{"trades": {"0": 42, "1": 17}}` (Spark's format). Each
/// offset is the *next* record to read, so a range `[start, end)` of a
/// partition holds the records with `start <= offset < end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl PartitionOffsets {
    /// No offsets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the offset of `topic`'s partition `partition`.
    pub fn insert(&mut self, topic: impl Into<String>, partition: i32, offset: i64) {
        self.offsets
            .entry(topic.into())
            .or_default()
            .insert(partition, offset);
    }

    /// With the offset of one more partition (builder style).
    pub fn with(mut self, topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        self.insert(topic, partition, offset);
        self
    }

    /// The offset of `topic`'s partition `partition`, if present.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.offsets.get(topic)?.get(&partition).copied()
    }

    /// Every `(topic, partition, offset)`, ordered by topic then partition.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> + '_ {
        self.offsets
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (t.as_str(), *p, *o)))
    }

    /// The number of partitions.
    pub fn len(&self) -> usize {
        self.offsets.values().map(BTreeMap::len).sum()
    }

    /// Whether there are no partitions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The topics, in order.
    pub fn topics(&self) -> impl Iterator<Item = &str> + '_ {
        self.offsets.keys().map(String::as_str)
    }

    /// The sum of the offsets (for reports).
    pub fn total(&self) -> i64 {
        self.iter().map(|(_, _, o)| o).sum()
    }

    /// As a JSON value (`{"topic": {"partition": offset}}`).
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.offsets
                .iter()
                .map(|(t, ps)| {
                    let inner = ps
                        .iter()
                        .map(|(p, o)| (p.to_string(), Value::from(*o)))
                        .collect();
                    (t.clone(), Value::Object(inner))
                })
                .collect(),
        )
    }

    /// Parses `{"topic": {"partition": offset}}`.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let Value::Object(topics) = value else {
            return Err(format!(
                "expected an object of topics, like {{\"trades\": {{\"0\": 42}}}}, got {value}"
            ));
        };
        let mut out = Self::new();
        for (topic, partitions) in topics {
            let Value::Object(partitions) = partitions else {
                return Err(format!(
                    "topic '{topic}': expected an object of partitions, like {{\"0\": 42}}, got {partitions}"
                ));
            };
            for (partition, offset) in partitions {
                let p: i32 = partition.parse().map_err(|_| {
                    format!("topic '{topic}': partition '{partition}' is not a number")
                })?;
                let o = offset.as_i64().ok_or_else(|| {
                    format!("topic '{topic}' partition {p}: offset {offset} is not an integer")
                })?;
                out.insert(topic.clone(), p, o);
            }
        }
        Ok(out)
    }

    /// Parses the JSON text `{"topic": {"partition": offset}}`.
    pub fn parse(json: &str) -> Result<Self, String> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| format!("invalid offsets JSON: {e}"))?;
        Self::from_json(&value)
    }

    /// As an engine [`Offset`].
    pub fn to_offset(&self) -> Offset {
        Offset(self.to_json())
    }

    /// From an engine [`Offset`] made by [`PartitionOffsets::to_offset`].
    pub fn from_offset(offset: &Offset) -> Result<Self, String> {
        Self::from_json(&offset.0)
    }
}

impl std::fmt::Display for PartitionOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// The special offset meaning "the earliest available" in offsets JSON.
pub const EARLIEST: i64 = -2;
/// The special offset meaning "the latest" (the end) in offsets JSON.
pub const LATEST: i64 = -1;

/// Where a Kafka source starts reading partitions it has no offset for yet
/// (Spark's `startingOffsets`). Applies to the partitions that exist when a
/// query first runs; it is resolved to numbers once and kept in the
/// query's checkpoint, so a restart never re-resolves it. Partitions and
/// topics discovered later are read from their beginning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The earliest offset still available in each partition.
    Earliest,
    /// The end of each partition: only records produced after the query
    /// starts are read.
    Latest,
    /// Given offsets per partition; [`EARLIEST`] (-2) and [`LATEST`] (-1)
    /// may stand for a partition's beginning or end. Partitions not listed
    /// start at their earliest offset.
    Offsets(PartitionOffsets),
    /// The first record whose timestamp is at or after this instant
    /// (milliseconds since the epoch), in every partition; a partition
    /// with no such record starts at its end.
    Timestamp(i64),
    /// A timestamp per partition (milliseconds since the epoch, in place
    /// of offsets); partitions not listed start at their earliest offset.
    Timestamps(PartitionOffsets),
}

impl StartingOffsets {
    /// Parses Spark's option values: `earliest`, `latest`, or offsets JSON
    /// such as `{"trades": {"0": 23, "1": -2}}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            json => PartitionOffsets::parse(json).map(Self::Offsets),
        }
    }
}

/// Where a bounded read of a Kafka source ends (Spark's `endingOffsets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndingOffsets {
    /// The end of each partition when the read starts.
    Latest,
    /// Given offsets per partition (exclusive); [`LATEST`] (-1) stands for
    /// a partition's end. Partitions not listed end at their end.
    Offsets(PartitionOffsets),
}

impl EndingOffsets {
    /// Parses `latest` or offsets JSON such as `{"trades": {"0": 100}}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "latest" => Ok(Self::Latest),
            json => PartitionOffsets::parse(json).map(Self::Offsets),
        }
    }
}

/// Spreads a read limit of `limit` records over partitions in proportion
/// to their lag (Spark's `maxOffsetsPerTrigger`): `ranges` are
/// `(start, available end)` per partition; returns the end of each.
///
/// The ends never exceed what is available, their total advance never
/// exceeds `limit`, and at least one record is admitted whenever any is
/// available and `limit >= 1`. Shares are rounded down and the remainder
/// goes to the partitions with the largest fractions (then the largest
/// lag, then the first), so the result is deterministic.
pub fn spread_limit(ranges: &[(i64, i64)], limit: u64) -> Vec<i64> {
    let lags: Vec<u64> = ranges.iter().map(|(s, e)| (e - s).max(0) as u64).collect();
    let total: u128 = lags.iter().map(|l| *l as u128).sum();
    if total <= limit as u128 {
        return ranges.iter().map(|(s, e)| (*s).max(*e)).collect();
    }
    let limit128 = limit as u128;
    let mut shares: Vec<u64> = Vec::with_capacity(lags.len());
    let mut remainders: Vec<(u128, u64, usize)> = Vec::with_capacity(lags.len());
    for (i, lag) in lags.iter().enumerate() {
        let exact = limit128 * *lag as u128;
        shares.push((exact / total) as u64);
        remainders.push((exact % total, *lag, i));
    }
    let mut left = limit - shares.iter().sum::<u64>();
    // Largest remainder first; ties: larger lag, then lower index.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    for (_, lag, i) in remainders {
        if left == 0 {
            break;
        }
        if shares[i] < lag {
            shares[i] += 1;
            left -= 1;
        }
    }
    ranges
        .iter()
        .zip(shares)
        .map(|((s, _), share)| s + share as i64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_through_json_in_sparks_format() {
        let offsets = PartitionOffsets::new()
            .with("trades", 1, 17)
            .with("trades", 0, 42)
            .with("quotes", 0, 3);
        let json = offsets.to_offset();
        assert_eq!(
            json.to_string(),
            r#"{"quotes":{"0":3},"trades":{"0":42,"1":17}}"#
        );
        assert_eq!(PartitionOffsets::from_offset(&json).unwrap(), offsets);
        let text = serde_json::to_string(&json).unwrap();
        let back: Offset = serde_json::from_str(&text).unwrap();
        assert_eq!(PartitionOffsets::from_offset(&back).unwrap(), offsets);
        assert_eq!(
            offsets.iter().collect::<Vec<_>>(),
            vec![("quotes", 0, 3), ("trades", 0, 42), ("trades", 1, 17)]
        );
    }

    #[test]
    fn malformed_offsets_json_is_explained() {
        assert!(
            PartitionOffsets::parse(r#"{"t": {"x": 1}}"#)
                .unwrap_err()
                .contains("partition 'x'")
        );
        assert!(
            PartitionOffsets::parse(r#"{"t": 5}"#)
                .unwrap_err()
                .contains("topic 't'")
        );
        assert!(PartitionOffsets::parse("[").is_err());
        assert_eq!(
            StartingOffsets::parse("earliest").unwrap(),
            StartingOffsets::Earliest
        );
        assert_eq!(
            StartingOffsets::parse(r#"{"t":{"0":-2}}"#).unwrap(),
            StartingOffsets::Offsets(PartitionOffsets::new().with("t", 0, EARLIEST))
        );
        assert_eq!(
            EndingOffsets::parse("latest").unwrap(),
            EndingOffsets::Latest
        );
    }

    #[test]
    fn a_limit_is_spread_in_proportion_to_lag() {
        // Lags 300, 100, 0: a limit of 100 gives 75 and 25.
        assert_eq!(
            spread_limit(&[(0, 300), (50, 150), (7, 7)], 100),
            vec![75, 75, 7]
        );
        // Everything fits: the available ends.
        assert_eq!(spread_limit(&[(0, 3), (0, 4)], 100), vec![3, 4]);
        // Remainders go to the largest fractions; the total is exact.
        let ends = spread_limit(&[(0, 1), (0, 1), (0, 1)], 2);
        assert_eq!(ends.iter().sum::<i64>(), 2);
        assert_eq!(ends, vec![1, 1, 0]);
        // A tiny limit still admits something.
        let ends = spread_limit(&[(0, 1000), (0, 1)], 1);
        assert_eq!(ends, vec![1, 0]);
        // Never past what is available, never more than the limit.
        for limit in [1u64, 2, 5, 17, 99] {
            let ranges = [(3, 10), (0, 1), (100, 250), (5, 5)];
            let ends = spread_limit(&ranges, limit);
            let advance: i64 = ranges.iter().zip(&ends).map(|((s, _), e)| e - s).sum();
            assert_eq!(advance as u64, limit);
            for ((s, e), end) in ranges.iter().zip(&ends) {
                assert!(*s <= *end && *end <= *e);
            }
        }
    }
}
