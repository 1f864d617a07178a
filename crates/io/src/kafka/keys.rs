//! Record keys of result rows: the row without its value, so a result
//! replayed after a crash (or recomputed by another process) carries the same
//! key as the first time, and a compacted topic or a consumer that keys by it
//! sees each result once.
//!
//! A feature's CSV row is `start,end,key parts…,value` and its NDJSON row
//! `{"feature":…,"window_start":…,"window_end":…,"key":{…},"value":…}`: the
//! key is everything but the value (the CSV row up to its last field, the
//! NDJSON row with its `value` member cut). Any other row (a dead letter, a
//! late event) is its own key: deterministic too, as it is identical on replay.
//! Hand-written because it runs per produced row and only needs to find one
//! boundary, never to parse the row.

/// Which format a sink's rows have, for finding their key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// CSV rows: the key is the row without its last field.
    Csv,
    /// NDJSON rows: the key is the object without its `value` member.
    Ndjson,
}

/// How a sink keys its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRule {
    /// The row without its value (see the module doc).
    Result(RowFormat),
    /// An updates row (`{"feature","entity","value"}`): keyed by feature
    /// and entity; a null value is a tombstone (the key with no value).
    Updates,
    /// The whole row.
    Row,
    /// No key (the producer's partitioner spreads records).
    None,
}

/// Writes the key of `row` (one line, no newline) by `rule` into `out`;
/// false when the record has no key.
pub fn key_of(rule: KeyRule, row: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    match rule {
        KeyRule::None => return false,
        KeyRule::Row => out.extend_from_slice(row),
        KeyRule::Result(RowFormat::Csv) => match last_csv_field(row) {
            Some(at) => out.extend_from_slice(&row[..at]),
            None => out.extend_from_slice(row),
        },
        KeyRule::Result(RowFormat::Ndjson) | KeyRule::Updates => match memchr::memmem::find(row, b",\"value\":") {
            // Outside strings a `"` is never escaped, so these bytes can only be
            // the member itself; it is the last member of a result row.
            Some(at) if row.ends_with(b"}") => {
                out.extend_from_slice(&row[..at]);
                out.push(b'}');
            }
            _ => out.extend_from_slice(row),
        },
    }
    true
}

/// Whether `row` is an updates row whose value is null (a tombstone).
pub fn is_tombstone(rule: KeyRule, row: &[u8]) -> bool {
    rule == KeyRule::Updates && row.ends_with(b",\"value\":null}")
}

/// The byte index of the comma before the last field of a CSV row (RFC 4180
/// quoting), or `None` for a row of one field.
fn last_csv_field(row: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut last = None;
    for (i, &b) in row.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => last = Some(i),
            _ => {}
        }
    }
    last
}

/// How a topic's producers chose a keyed record's partition, so that the
/// partition of a key can be known without reading the topic (a group's
/// read of a user's features goes to the process owning that partition).
/// The names are librdkafka's `partitioner` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// Java clients' default (and Freshet's producers'): murmur2 of the key,
    /// positive, modulo the partition count.
    #[default]
    Murmur2Random,
    /// librdkafka's default: CRC-32 of the key modulo the partition count.
    ConsistentRandom,
}

impl Partitioner {
    /// Every name, as configs spell them.
    pub const NAMES: [&str; 2] = ["murmur2_random", "consistent_random"];

    /// The partitioner named `name` (librdkafka's spelling).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "murmur2_random" | "murmur2" => Some(Self::Murmur2Random),
            "consistent_random" | "consistent" => Some(Self::ConsistentRandom),
            _ => None,
        }
    }

    /// The partition of a record keyed `key` in a topic of `partitions`.
    pub fn partition(self, key: &[u8], partitions: usize) -> u32 {
        let n = partitions.max(1) as u32;
        match self {
            Self::Murmur2Random => (murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff) % n,
            Self::ConsistentRandom => crc32fast::hash(key) % n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rule: KeyRule, row: &str) -> Option<String> {
        let mut out = Vec::new();
        key_of(rule, row.as_bytes(), &mut out).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn partitions_agree_with_the_java_client_and_librdkafka() {
        // Java's Utils.murmur2 of these keys (Apache Kafka's UtilsTest).
        for (key, java) in [("21", -973_932_308i32), ("foobar", -790_332_482), ("abc", 479_470_107)] {
            let positive = (java & 0x7fff_ffff) as u32;
            assert_eq!(Partitioner::Murmur2Random.partition(key.as_bytes(), 12), positive % 12, "{key}");
        }
        assert_eq!(Partitioner::ConsistentRandom.partition(b"abc", 7), crc32fast::hash(b"abc") % 7);
        assert_eq!(Partitioner::named("consistent_random"), Some(Partitioner::ConsistentRandom));
        assert_eq!(Partitioner::named("random"), None);
    }

    #[test]
    fn csv_result_key_is_the_row_without_its_value() {
        let csv = KeyRule::Result(RowFormat::Csv);
        assert_eq!(key(csv, "1000,2000,u1,view,3").as_deref(), Some("1000,2000,u1,view"));
        // A quoted key part with a comma, and a quoted list value with commas and quotes.
        assert_eq!(key(csv, "1,2,\"a,b\",\"x|\"\"y,z\"").as_deref(), Some("1,2,\"a,b\""));
        assert_eq!(key(csv, "single").as_deref(), Some("single"));
    }

    #[test]
    fn ndjson_result_key_drops_the_value_member() {
        let nd = KeyRule::Result(RowFormat::Ndjson);
        let row = r#"{"feature":"f","window_start":1,"window_end":2,"key":{"user_id":"u,\"value\":1"},"value":[",\"value\":"]}"#;
        assert_eq!(
            key(nd, row).as_deref(),
            Some(r#"{"feature":"f","window_start":1,"window_end":2,"key":{"user_id":"u,\"value\":1"}}"#)
        );
        // A dead letter has no value member: it is its own key.
        let dlq = r#"{"reason":"invalid_json","partition":3,"offset":17,"raw":"{"}"#;
        assert_eq!(key(nd, dlq).as_deref(), Some(dlq));
        assert_eq!(key(KeyRule::None, dlq), None);
        assert_eq!(key(KeyRule::Row, "a,b").as_deref(), Some("a,b"));
        let gone = r#"{"feature":"f","entity":"u1","value":null}"#;
        assert_eq!(key(KeyRule::Updates, gone).as_deref(), Some(r#"{"feature":"f","entity":"u1"}"#));
        assert!(is_tombstone(KeyRule::Updates, gone.as_bytes()));
        assert!(!is_tombstone(KeyRule::Result(RowFormat::Ndjson), gone.as_bytes()));
        assert!(!is_tombstone(KeyRule::Updates, br#"{"feature":"f","entity":"u1","value":[]}"#));
    }
}
