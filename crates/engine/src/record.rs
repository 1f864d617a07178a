//! The unit of exchange between decoders and shards: a batch of keyed
//! records, one per (event, feature) pair, with their key and value bytes in
//! one buffer.
//!
//! Decoders run every stateless step (parse, validate, flows, key and value
//! extraction) in parallel; a shard then only touches its own keyed state.
//! Records carry the source position so a late event can be traced. An
//! event that went through a dedup stage is preceded, on every shard that
//! gets its records, by a [`DedupMarker`]: the shard decides there whether
//! the event is a duplicate, and if so skips its records.

use crate::aggregate::Input;
use crate::features::{Entity, Outputs};
use crate::time::PartitionId;

/// A record's value.
#[derive(Debug, Clone, Copy)]
pub enum RecordValue {
    /// No value (count).
    None,
    /// A number.
    Num(f64),
    /// Text at `bytes[start..end]` of the batch.
    Text(u32, u32),
}

/// One input to one feature.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Feature index.
    pub feature: u16,
    /// Event time.
    pub ts: i64,
    /// Hash of the encoded key.
    pub hash: u64,
    /// Encoded key at `bytes[key.0..key.1]`.
    pub key: (u32, u32),
    /// The aggregated value.
    pub value: RecordValue,
    /// Offset of the event in its source partition.
    pub offset: u64,
    /// Largest event time of the events before this one in its chunk
    /// (`i64::MIN` if none): with the partition's progress before the chunk,
    /// it gives the watermark this event meets, so lateness is decided per
    /// event and does not depend on where chunks are cut.
    pub prior_max_ts: i64,
}

/// A dedup stage's key for the event whose records start at `at`.
#[derive(Debug, Clone, Copy)]
pub struct DedupMarker {
    /// The dedup stage (its [`crate::flow::Dedup::id`]).
    pub dedup: u16,
    /// Index in `records` of the event's first record on this shard; the
    /// event's records are the run from there with the same `offset`.
    pub at: u32,
    /// Hash of the encoded key.
    pub hash: u64,
    /// Encoded key at `bytes[key.0..key.1]`.
    pub key: (u32, u32),
}

/// What an input to the recommender is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelInputKind {
    /// A user–item interaction: fields user, item, event type, recommendation id.
    Interaction,
    /// A catalog item: fields item, category, tags (a JSON array's text),
    /// embedding (its checked components as little-endian `f32`s).
    Item {
        /// Whether it may be recommended (the catalog's availability field; absent: yes).
        available: bool,
    },
}

/// One event for the recommender (only in the batch of the shard that owns it).
#[derive(Debug, Clone, Copy)]
pub struct ModelInput {
    /// What it is.
    pub kind: ModelInputKind,
    /// Event time.
    pub ts: i64,
    /// Offset of the event in its source partition.
    pub offset: u64,
    /// The fields' texts in `bytes` (see [`ModelInputKind`]); `None` when absent.
    pub fields: [Option<(u32, u32)>; 4],
}

/// Records bound for one shard from one chunk.
#[derive(Debug, Default)]
pub struct RecordBatch {
    /// The records, in input order.
    pub records: Vec<Record>,
    /// Key and value bytes.
    pub bytes: Vec<u8>,
    /// Dedup markers, in `at` order (empty when no flow dedups).
    pub markers: Vec<DedupMarker>,
    /// Recommender inputs, in input order.
    pub model: Vec<ModelInput>,
}

impl RecordBatch {
    /// The encoded key of `r`.
    #[inline]
    pub fn key(&self, r: &Record) -> &[u8] {
        &self.bytes[r.key.0 as usize..r.key.1 as usize]
    }

    /// The accumulator input of `r`.
    #[inline]
    pub fn input(&self, r: &Record) -> Input<'_> {
        match r.value {
            RecordValue::None => Input::None,
            RecordValue::Num(x) => Input::Num(x),
            RecordValue::Text(a, b) => Input::Text(&self.bytes[a as usize..b as usize]),
        }
    }

    /// The encoded dedup key of `m`.
    #[inline]
    pub fn marker_key(&self, m: &DedupMarker) -> &[u8] {
        &self.bytes[m.key.0 as usize..m.key.1 as usize]
    }

    /// A recommender input's field text.
    #[inline]
    pub fn model_field(&self, m: &ModelInput, field: usize) -> Option<&[u8]> {
        m.fields[field].map(|(a, b)| &self.bytes[a as usize..b as usize])
    }

    /// A catalog input's embedding (field 3), if it carries a valid one.
    pub fn model_embedding(&self, m: &ModelInput, out: &mut Vec<f32>) -> bool {
        out.clear();
        let Some(bytes) = self.model_field(m, 3) else { return false };
        out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        true
    }

    /// Removes all records, keeping capacity.
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes.clear();
        self.markers.clear();
        self.model.clear();
    }
}

/// A request to forget an entity: every key whose entity (first key part)
/// is `id`, in every feature of that entity kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forget {
    /// Which features: those serving this entity kind.
    pub entity: Entity,
    /// The entity id, as the text of the key field.
    pub id: Vec<u8>,
}

/// What a shard receives for one chunk, in chunk order.
#[derive(Debug)]
pub struct ShardInput {
    /// Sequence number of the chunk.
    pub seq: u64,
    /// The partition the chunk came from; `None` for a wall-clock tick.
    pub partition: Option<PartitionId>,
    /// Largest event time in the chunk, over all shards' records.
    pub max_ts: Option<i64>,
    /// Whether the partition ended with this chunk.
    pub end_of_partition: bool,
    /// Whether the partition's writer said it is idle (see `Chunk::idle`).
    pub idle: bool,
    /// Wall time the chunk was read (ms), for idleness.
    pub ingest_ms: i64,
    /// Monotonic instant the chunk was read (µs, runtime-defined), for latency.
    pub ingest_us: u64,
    /// This shard's records.
    pub batch: RecordBatch,
    /// A checkpoint barrier: snapshot after this input.
    pub barrier: Option<u64>,
    /// The decoder's own outputs for this chunk (dead letters, routed
    /// events), carried by one shard so that all output reaches the writer in
    /// chunk order and a barrier covers it.
    pub forwarded: Option<Outputs>,
    /// An entity to forget, after this input's records (`None` almost
    /// always). Send it to every shard (the entity's keys live on one, but
    /// which one is the shards' business) in chunk order, so replay after a
    /// crash forgets at the same point.
    pub forget: Option<Forget>,
}
