//! Property tests of whole shards fed by the decoder: dedup against
//! recomputation over the deduplicated input, and snapshot, restore and
//! continue against an uninterrupted run with dedup, TTL and forgetting in
//! the mix.
//!
//! Events are JSON lines (so the decoder's dedup markers are exercised), cut
//! into chunks at random points; one partition, so an event meets the
//! watermark `max earlier time - out_of_orderness - 1`.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::aggregate::AggFn;
use crate::decode::{Chunk, Decoder};
use crate::event::FieldPath;
use crate::features::{Entity, FeatureSpec, FeatureView, Format};
use crate::flow::{Dedup, Flow, Stage};
use crate::pipeline::{EventTime, Limits, Pipeline, RecommenderPlan, SinkSpec, Unmatched};
use crate::predicate::Predicate;
use crate::record::Forget;
use crate::window::WindowSpec;

const OOO: i64 = 300;

/// The input a shard gets for one decoded chunk of partition (0, 0).
fn input(batch: RecordBatch, max_ts: Option<i64>, end_of_partition: bool, forget: Option<Forget>) -> ShardInput {
    ShardInput {
        seq: 0,
        partition: Some((0, 0)),
        max_ts,
        end_of_partition,
        idle: false,
        ingest_ms: 0,
        ingest_us: 0,
        batch,
        barrier: None,
        forwarded: None,
        forget,
    }
}

fn path(s: &str) -> FieldPath {
    FieldPath::parse(s).unwrap()
}

/// Four features over every event: tumbling, session (with lateness),
/// hopping per item, and global, all with `ttl`; a dedup stage on
/// `event_id` remembering `dedup_ttl` ms, when given.
fn pipeline(dedup_ttl: Option<i64>, ttl: Option<i64>, shards: usize) -> Pipeline {
    let feature = |name: &str, key: &[&str], entity, window, agg, field: Option<&str>, lateness| FeatureSpec {
        name: name.into(),
        flow: 0,
        key: key.iter().map(|k| path(k)).collect(),
        entity,
        filter: None,
        window,
        agg,
        field: field.map(path),
        sink: Some((0, Format::Csv)),
        late_sink: None,
        updates_sink: None,
        allowed_lateness: lateness,
        serve: true,
        ttl,
    };
    let stages = dedup_ttl.map(|ttl| Stage::Dedup(Dedup { id: 0, key: vec![path("event_id")], ttl })).into_iter();
    Pipeline {
        flows: vec![Flow {
            name: "all".into(),
            when: Predicate::True,
            rules: vec![],
            schema: None,
            time_field: path("ts"),
            stages: stages.collect(),
            features: vec![0, 1, 2, 3],
        }],
        features: vec![
            feature("clicks", &["user_id"], Entity::User, WindowSpec::Tumbling { size: 1000 }, AggFn::Count, None, 0),
            feature(
                "sessions",
                &["user_id", "kind"],
                Entity::User,
                WindowSpec::Session { gap: 700 },
                AggFn::Sum,
                Some("v"),
                300,
            ),
            feature(
                "items",
                &["item_id"],
                Entity::Item,
                WindowSpec::Hopping { size: 3000, slide: 1000 },
                AggFn::Count,
                None,
                0,
            ),
            feature("total", &["user_id"], Entity::User, WindowSpec::Global, AggFn::Sum, Some("v"), 0),
        ],
        sinks: vec![SinkSpec { name: "out".into(), format: Format::Csv }],
        dead_letter: None,
        unmatched: Unmatched::Drop,
        sources: vec!["events".into()],
        limits: Limits::default(),
        event_time: EventTime { max_out_of_orderness: OOO, idle_timeout: i64::MAX / 4, bounded_sources: vec![] },
        shards,
        recommender: None,
        tables: vec![],
    }
}

/// One generated line: (user, item, kind, ts, v, has an event id, repeats an earlier line).
type Raw = (u8, u8, u8, i64, i64, bool, Option<usize>);

fn raws() -> impl Strategy<Value = Vec<Raw>> {
    let one =
        (0u8..5, 0u8..4, 0u8..2, 0i64..600, 0i64..400, -9i64..10, prop::bool::weighted(0.95), 0u32..10, 0usize..40);
    prop::collection::vec(one, 1..150).prop_map(|raw| {
        let mut base = 0;
        raw.into_iter()
            .map(|(u, i, k, step, jitter, v, id, dup, back)| {
                base += step;
                (u, i, k, base - jitter, v, id, (dup < 3).then_some(back))
            })
            .collect()
    })
}

/// The lines: a repeat copies an earlier line verbatim.
fn lines(raws: &[Raw]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for (n, &(u, i, k, ts, v, has_id, repeat)) in raws.iter().enumerate() {
        let line = match repeat {
            Some(back) if n > 0 => lines[n - 1 - back % n].clone(),
            _ => {
                let id = if has_id { format!("\"event_id\":\"e{n}\",") } else { String::new() };
                format!(r#"{{{id}"user_id":"u{u}","item_id":"i{i}","kind":"k{k}","ts":{ts},"v":{v}}}"#)
            }
        };
        lines.push(line);
    }
    lines
}

/// A run of one pipeline over chunks, one shard per index.
struct Run<'p> {
    pipeline: &'p Pipeline,
    decoder: Decoder<'p>,
    shards: Vec<Shard>,
    views: Vec<Views>,
    /// Rows per shard, in the order written.
    rows: Vec<Vec<String>>,
    dropped: u64,
    forgotten: u64,
    offset: u64,
}

impl<'p> Run<'p> {
    fn new(pipeline: &'p Pipeline) -> Self {
        let views: Vec<Views> =
            (0..pipeline.shards).map(|_| Arc::new(pipeline.features.iter().map(FeatureView::new).collect())).collect();
        let shards = views
            .iter()
            .map(|v| {
                let mut s = Shard::new(pipeline, Some(v.clone()));
                s.register((0, 0), 0);
                s
            })
            .collect();
        Self {
            pipeline,
            decoder: Decoder::new(pipeline),
            shards,
            views,
            rows: vec![Vec::new(); pipeline.shards],
            dropped: 0,
            forgotten: 0,
            offset: 0,
        }
    }

    /// Decodes `lines` as one chunk and has every shard process it; then forgets `forget`.
    fn chunk(&mut self, lines: &[String], last: bool, forget: Option<&Forget>) {
        let mut data = Vec::new();
        for l in lines {
            data.extend_from_slice(l.as_bytes());
            data.push(b'\n');
        }
        let chunk = Chunk { data, first_offset: self.offset, end_of_partition: last, ..Chunk::default() };
        self.offset += lines.len() as u64;
        let mut out = self.decoder.output();
        self.decoder.decode(&chunk, &mut out);
        for (i, batch) in out.shards.into_iter().enumerate() {
            let stats = self.shards[i].process(&input(batch, out.max_ts, last, forget.cloned()));
            self.dropped += stats.dedup_dropped;
            self.forgotten += stats.forgotten;
            self.collect(i);
        }
    }

    fn collect(&mut self, i: usize) {
        let out = self.shards[i].take_outputs(Vec::new);
        let text = String::from_utf8(out.sinks[0].data.clone()).unwrap();
        self.rows[i].extend(text.lines().map(str::to_owned));
    }

    /// Snapshots every shard and restores it into a fresh one (fresh views too).
    fn restart(&mut self) {
        for i in 0..self.shards.len() {
            let bytes = self.shards[i].snapshot();
            assert_eq!(Shard::snapshot_watermark(&bytes), Some(self.shards[i].watermark()), "read from the head");
            let view: Views = Arc::new(self.pipeline.features.iter().map(FeatureView::new).collect());
            let mut fresh = Shard::new(self.pipeline, Some(view.clone()));
            fresh.restore(&bytes, 0).unwrap();
            fresh.register((0, 0), 0);
            self.shards[i] = fresh;
            self.views[i] = view;
        }
        self.decoder = Decoder::new(self.pipeline);
    }

    fn sorted_rows(&self) -> Vec<String> {
        let mut all: Vec<String> = self.rows.concat();
        all.sort();
        all
    }
}

/// Runs `lines` cut at `cuts` (fractions of the length), forgetting
/// `forgets[c]` after chunk `c`, restarting from snapshots after chunk `restart`.
fn run<'p>(
    p: &'p Pipeline,
    lines: &[String],
    cuts: &[usize],
    forgets: &[Option<Forget>],
    restart: Option<usize>,
) -> Run<'p> {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (lines.len() + 1)).collect();
    bounds.push(0);
    bounds.push(lines.len());
    bounds.sort();
    let mut r = Run::new(p);
    let n = bounds.len() - 1;
    for c in 0..n {
        let forget = forgets.get(c).and_then(Option::as_ref);
        r.chunk(&lines[bounds[c]..bounds[c + 1]], c + 1 == n, forget);
        if restart == Some(c) {
            r.restart();
        }
    }
    r
}

/// The lines a dedup stage keeps, decided one by one as the shard would.
fn dedup_oracle(lines: &[String], ttl: i64) -> (Vec<String>, u64) {
    let mut seen: HashMap<String, i64> = HashMap::new();
    let (mut max, mut kept, mut dropped) = (i64::MIN, Vec::new(), 0);
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ts = v["ts"].as_i64().unwrap();
        let wm = if max == i64::MIN { i64::MIN } else { max - OOO - 1 };
        max = max.max(ts);
        if let Some(id) = v["event_id"].as_str() {
            if seen.get(id).is_some_and(|first| first + ttl > wm) {
                dropped += 1;
                continue;
            }
            if ts + ttl > wm {
                seen.insert(id.to_owned(), ts);
            } else {
                seen.remove(id);
            }
        }
        kept.push(line.clone());
    }
    (kept, dropped)
}

proptest! {
    /// A dedup stage gives the results of the same pipeline without it over
    /// the input with the duplicates taken out, on one shard or two.
    #[test]
    fn dedup_equals_recomputation_over_deduplicated_input(
        raws in raws(), cuts in prop::collection::vec(any::<usize>(), 0..6), ttl in 1i64..3000, shards in 1usize..3,
    ) {
        let lines = lines(&raws);
        let with = pipeline(Some(ttl), None, shards);
        let got = run(&with, &lines, &cuts, &[], None);
        let (kept, dropped) = dedup_oracle(&lines, ttl);
        let without = pipeline(None, None, shards);
        let expected = run(&without, &kept, &cuts, &[], None);
        prop_assert_eq!(got.sorted_rows(), expected.sorted_rows());
        // An event is dropped once per shard that holds its records.
        if shards == 1 {
            prop_assert_eq!(got.dropped, dropped);
        }
        prop_assert_eq!(got.dropped == 0, dropped == 0);
    }

    /// Snapshot after any chunk, restore into fresh shards, continue: the
    /// same rows in the same order, the same keys and dedup entries, as an
    /// uninterrupted run, with dedup, TTL and forgetting in the mix.
    #[test]
    fn snapshot_restore_continue_equals_uninterrupted_with_dedup_ttl_and_forget(
        raws in raws(), cuts in prop::collection::vec(any::<usize>(), 1..8), restart in 0usize..8,
        forgets in prop::collection::vec(prop::option::weighted(0.4, (0u8..5, any::<bool>())), 8),
        ttl in 1i64..4000, dedup_ttl in 1i64..3000, shards in 1usize..3,
    ) {
        let lines = lines(&raws);
        let p = pipeline(Some(dedup_ttl), Some(ttl), shards);
        let forgets: Vec<Option<Forget>> = forgets
            .iter()
            .map(|f| f.map(|(n, user)| {
                let (entity, id) = if user { (Entity::User, format!("u{n}")) } else { (Entity::Item, format!("i{n}")) };
                Forget { entity, id: id.into_bytes() }
            }))
            .collect();
        let whole = run(&p, &lines, &cuts, &forgets, None);
        let restored = run(&p, &lines, &cuts, &forgets, Some(restart));
        prop_assert_eq!(&restored.rows, &whole.rows);
        prop_assert_eq!(restored.dropped, whole.dropped);
        prop_assert_eq!(restored.forgotten, whole.forgotten);
        for (a, b) in restored.shards.iter().zip(&whole.shards) {
            prop_assert_eq!(a.key_counts(), b.key_counts());
            prop_assert_eq!(a.dedup_counts(), b.dedup_counts());
            prop_assert_eq!(a.watermark(), b.watermark());
        }
    }
}

#[test]
fn a_duplicate_reaches_no_feature_and_an_event_without_the_key_passes() {
    let p = pipeline(Some(10_000), None, 2);
    let lines: Vec<String> = [
        r#"{"event_id":"a","user_id":"u1","item_id":"i1","kind":"k0","ts":1000,"v":1}"#,
        r#"{"event_id":"a","user_id":"u1","item_id":"i1","kind":"k0","ts":1000,"v":1}"#,
        r#"{"user_id":"u1","item_id":"i1","kind":"k0","ts":1001,"v":1}"#,
        r#"{"user_id":"u1","item_id":"i1","kind":"k0","ts":1001,"v":1}"#,
    ]
    .map(String::from)
    .to_vec();
    let mut r = Run::new(&p);
    let mut out = r.decoder.output();
    let mut data = lines.join("\n").into_bytes();
    data.push(b'\n');
    r.decoder.decode(&Chunk { data, ..Chunk::default() }, &mut out);
    assert_eq!(out.stats.dedup_unkeyed, 2);
    let markers: usize = out.shards.iter().map(|b| b.markers.len()).sum();
    assert!(markers >= 2, "one marker per shard holding records of each keyed event");
    r.chunk(&lines, true, None);
    let rows = r.sorted_rows();
    assert!(rows.contains(&"1000,2000,u1,3".to_string()), "{rows:?}");
    assert!(rows.contains(&"1000,1002,u1,3".to_string()), "global sum of v over three events: {rows:?}");
    assert!(r.dropped >= 1);
}

#[test]
fn forgetting_removes_the_entity_from_state_and_views_and_drops_its_open_windows() {
    let p = pipeline(None, None, 1);
    let mut r = Run::new(&p);
    let lines: Vec<String> = [
        r#"{"event_id":"a","user_id":"u1","item_id":"i1","kind":"k0","ts":1000,"v":1}"#,
        r#"{"event_id":"b","user_id":"u2","item_id":"i1","kind":"k1","ts":1100,"v":2}"#,
    ]
    .map(String::from)
    .to_vec();
    r.chunk(&lines, false, None);
    r.shards[0].publish();
    assert!(r.views[0][0].get("u1").is_some() && r.views[0][0].get("u2").is_some());
    let before = r.shards[0].key_counts();
    let forgotten = r.shards[0].forget(Entity::User, b"u1");
    assert_eq!(forgotten, 3, "clicks, sessions and total each held one u1 key");
    let after = r.shards[0].key_counts();
    assert_eq!(after, vec![before[0] - 1, before[1] - 1, before[2], before[3] - 1]);
    assert!(r.views[0][0].get("u1").is_none() && r.views[0][3].get("u1").is_none());
    assert!(r.views[0][0].get("u2").is_some());
    assert_eq!(r.shards[0].forget(Entity::User, b"u1"), 0);
    assert_eq!(r.shards[0].forget(Entity::Item, b"u2"), 0, "no item is called u2");
    r.chunk(&[], true, None);
    r.shards[0].publish();
    let rows = r.sorted_rows();
    assert!(rows.iter().all(|row| !row.contains(",u1,")), "u1's open windows were dropped: {rows:?}");
    assert!(rows.contains(&"1000,2000,u2,1".to_string()), "{rows:?}");
    assert!(r.views[0][0].get("u1").is_none(), "nothing republished u1");
}

/// A partition's event time near `i64::MIN` overflowed the watermark
/// (`max_ts - out_of_orderness - 1`) after restore; such times are refused.
#[test]
fn restore_refuses_progress_times_out_of_range() {
    let p = Pipeline {
        flows: vec![],
        features: vec![],
        sinks: vec![],
        dead_letter: None,
        unmatched: Unmatched::Drop,
        sources: vec![],
        limits: Limits::default(),
        event_time: EventTime { max_out_of_orderness: 1000, idle_timeout: 1000, bounded_sources: vec![] },
        shards: 1,
        recommender: None,
        tables: vec![],
    };
    let snap = |max_ts: i64, watermark: i64| {
        let head =
            ShardSnapshotHead { progress: vec![((0, 0), max_ts, false)], watermark, features: vec![], dedup: vec![] };
        ShardCopy { head: postcard::to_stdvec(&head).unwrap(), recommender: None }.encode()
    };
    assert!(Shard::new(&p, None).restore(&snap(i64::MIN, WATERMARK_MIN), 0).is_ok());
    assert!(Shard::new(&p, None).restore(&snap(5000, WATERMARK_MAX), 0).is_ok());
    for bad in [snap(i64::MIN + 1, WATERMARK_MIN), snap(5000, i64::MAX - 1)] {
        let err = Shard::new(&p, None).restore(&bad, 0).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}

/// The recommender's plan over the `pipeline` above: every event is an
/// interaction (`kind` as the event type), owned by the last shard.
fn recommender_plan(shards: usize) -> RecommenderPlan {
    RecommenderPlan {
        spec: crate::recommend::RecommenderSpec::default(),
        interactions: vec![0],
        user: path("user_id"),
        item: path("item_id"),
        event_type: Some(path("kind")),
        attribution: Some(path("recommendation_id")),
        catalog: None,
        category: None,
        tags: None,
        availability: None,
        embedding: None,
        shard: shards - 1,
        item_publish_ms: 1000,
        placements: vec![],
    }
}

#[test]
fn the_owning_shard_learns_snapshots_restores_and_forgets_the_recommender() {
    use crate::recommend::{Query, Ranking, rank};
    let mut p = pipeline(None, None, 2);
    p.recommender = Some(recommender_plan(2));
    let plan = p.recommender.clone().unwrap();
    let raw: Vec<Raw> =
        (0..60).map(|n| ((n % 6) as u8, ((n * 7) % 8) as u8, 0, n as i64 * 10, 1, true, None)).collect();
    let lines = lines(&raw);
    let mut decoder = Decoder::new(&p);
    let mut shards: Vec<Shard> = (0..2).map(|_| Shard::new(&p, None)).collect();
    shards[1] = Shard::new(&p, None).with_recommender(&plan, None);
    let mut data = Vec::new();
    for l in &lines {
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
    }
    let chunk = Chunk { data, first_offset: 0, ..Chunk::default() };
    let mut out = decoder.output();
    decoder.decode(&chunk, &mut out);
    assert!(out.shards[0].model.is_empty(), "model inputs go to the owning shard only");
    assert_eq!(out.shards[1].model.len(), lines.len());
    for (shard, batch) in shards.iter_mut().zip(out.shards) {
        shard.process(&input(batch, out.max_ts, false, None));
    }
    let model = shards[1].recommender().unwrap();
    assert_eq!(model.user_count(), 6);
    let ranking = |shard: &Shard, user: &str| {
        let mut r = Ranking::default();
        rank(shard.recommender().unwrap(), &Query::for_user(user, 5), &mut r);
        r.items
    };
    let before: Vec<_> = (0..6).map(|u| ranking(&shards[1], &format!("u{u}"))).collect();
    assert!(before.iter().all(|r| !r.is_empty()));
    let bytes = shards[1].snapshot();
    // The model's bytes sit in the shard's as a block, as postcard writes the model (no embeddings here).
    let read: ShardSnapshot = postcard::from_bytes(&bytes).unwrap();
    let model = shards[1].recommender().unwrap();
    assert_eq!(read.recommender, Some(&postcard::to_stdvec(model).unwrap()[..]));
    let mut restored = Shard::new(&p, None).with_recommender(&plan, None);
    restored.restore(&bytes, 0).unwrap();
    let after: Vec<_> = (0..6).map(|u| ranking(&restored, &format!("u{u}"))).collect();
    assert_eq!(before, after);
    assert!(restored.forget(Entity::User, b"u1") >= 1);
    assert!(crate::recommend::ModelRead::user(restored.recommender().unwrap(), "u1").is_none());
}

/// Found in CI: every shard gets a forget, but only the one holding the
/// entity's keys may touch the shared view. A shard without them that
/// processes the forget late (after the owner's next events were published)
/// must not delete the fresh value.
#[test]
fn a_late_forget_on_a_shard_without_the_entity_keeps_its_fresh_value_served() {
    let p = pipeline(None, None, 2);
    let views: crate::features::Views = Arc::new(p.features.iter().map(FeatureView::new).collect());
    let mut shards: Vec<Shard> = (0..2).map(|_| Shard::new(&p, Some(views.clone()))).collect();
    let mut decoder = Decoder::new(&p);
    let feed = |decoder: &mut Decoder, shards: &mut [Shard], which: &[usize], line: &str, forget: Option<Forget>| {
        let chunk = Chunk { data: format!("{line}\n").into_bytes(), ..Chunk::default() };
        let mut out = decoder.output();
        decoder.decode(&chunk, &mut out);
        for (i, batch) in out.shards.into_iter().enumerate().filter(|(i, _)| which.contains(i)) {
            shards[i].process(&input(batch, out.max_ts, false, forget.clone()));
            shards[i].publish();
        }
    };
    let line = r#"{"user_id":"alice","item_id":"i","kind":"a","ts":1000,"v":1}"#;
    let total = p.features.iter().position(|f| f.name == "total").unwrap();
    let owner = (0..2).find(|&i| {
        let chunk = Chunk { data: format!("{line}\n").into_bytes(), ..Chunk::default() };
        let mut out = decoder.output();
        decoder.decode(&chunk, &mut out);
        out.shards[i].records.iter().any(|r| r.feature as usize == total)
    });
    let owner = owner.expect("some shard owns alice");
    let other = 1 - owner;
    let forget = Forget { entity: Entity::User, id: b"alice".to_vec() };
    feed(&mut decoder, &mut shards, &[0, 1], line, None);
    // The owner runs ahead: forget, then a fresh event, published.
    feed(&mut decoder, &mut shards, &[owner], line, Some(forget.clone()));
    let fresh = line.replace("\"ts\":1000", "\"ts\":2000");
    feed(&mut decoder, &mut shards, &[owner], &fresh, None);
    assert!(views[total].get("alice").is_some(), "the owner published alice's fresh value");
    // The other shard catches up with the forget later.
    feed(&mut decoder, &mut shards, &[other], line, Some(forget));
    assert!(views[total].get("alice").is_some(), "a late forget elsewhere must not remove it");
}
