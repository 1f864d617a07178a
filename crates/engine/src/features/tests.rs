//! Property tests of windowed state against recomputation from scratch.
//!
//! The driver feeds events one by one with a watermark of
//! `max event time so far - out_of_orderness - 1` (what a shard does per
//! record), then the end-of-input watermark. The oracles recompute each
//! window from the raw events with Flink's lateness rule: a window whose
//! `end - 1 <= watermark` does not take an event that meets that watermark.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::emit::Outputs;
use super::keys::{hash_bytes, push_part};
use super::spec::{Entity, FeatureSpec, Format};
use super::state::FeatureState;
use super::view::FeatureView;
use crate::aggregate::AggFn;
use crate::event::FieldPath;
use crate::record::{Record, RecordBatch, RecordValue};
use crate::time::WATERMARK_MAX;
use crate::window::{WindowSpec, align};

fn spec(window: WindowSpec, agg: AggFn, lateness: i64) -> FeatureSpec {
    FeatureSpec {
        name: "f".into(),
        flow: 0,
        key: vec![FieldPath::parse("k").unwrap()],
        entity: Entity::User,
        filter: None,
        window,
        agg,
        field: None,
        sink: Some((0, Format::Csv)),
        late_sink: Some(1),
        updates_sink: None,
        allowed_lateness: lateness,
        serve: true,
        ttl: None,
    }
}

/// One input event: key, event time, value.
type Ev = (u8, i64, f64);

/// Runs events through one feature; returns sorted CSV rows and late rows.
fn run(state: &mut FeatureState, events: &[Ev], ooo: i64) -> (Vec<String>, usize) {
    let mut out = Outputs::new(2, 1);
    feed(state, events, ooo, &mut (i64::MIN, i64::MIN), &mut out, false);
    state.on_watermark(WATERMARK_MAX, &mut out);
    let mut rows = rows(&mut out);
    rows.sort();
    (rows, out.late[0] as usize)
}

/// Aligned windows recomputed from scratch; values as the engine prints them.
fn oracle_aligned(events: &[Ev], size: i64, slide: i64, agg: AggFn, ooo: i64) -> (Vec<String>, usize) {
    let mut windows: BTreeMap<(i64, u8), Vec<f64>> = BTreeMap::new();
    let mut max = i64::MIN;
    let mut late = 0;
    for &(k, ts, v) in events {
        let wm = if max == i64::MIN { i64::MIN } else { max - ooo - 1 };
        let mut taken = false;
        let mut start = align(ts, slide);
        while start > ts - size {
            if start + size - 1 > wm {
                windows.entry((start, k)).or_default().push(v);
                taken = true;
            }
            start -= slide;
        }
        late += usize::from(!taken);
        max = max.max(ts);
    }
    let mut rows: Vec<String> = windows
        .into_iter()
        .map(|((start, k), vs)| {
            let value = match agg {
                AggFn::Count => vs.len().to_string(),
                AggFn::Sum => vs.iter().sum::<f64>().to_string(),
                AggFn::Min => vs.iter().cloned().fold(f64::INFINITY, f64::min).to_string(),
                AggFn::Max => vs.iter().cloned().fold(f64::NEG_INFINITY, f64::max).to_string(),
                _ => unreachable!("not used"),
            };
            format!("{start},{},k{k},{value}", start + size)
        })
        .collect();
    rows.sort();
    (rows, late)
}

/// Events with bounded disorder: each ts is above (max so far - disorder).
fn events(disorder: i64) -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec((0u8..4, 0i64..40_000, 0i64..=disorder.max(0), -50i64..50), 1..120).prop_map(|raw| {
        let mut base = 0;
        raw.into_iter()
            .map(|(k, step, jitter, v)| {
                base += step / 100;
                (k, base - jitter, v as f64)
            })
            .collect()
    })
}

proptest! {
    /// Tumbling and hopping windows equal recomputation, late events included.
    #[test]
    fn aligned_windows_equal_recompute(evs in events(3000), ooo in 0i64..2000, size_slots in 1i64..8, slide_slots in 1i64..8, agg_i in 0usize..4) {
        let slide = slide_slots * 500;
        let size = slide * size_slots;
        let agg = [AggFn::Count, AggFn::Sum, AggFn::Min, AggFn::Max][agg_i];
        let window = if size == slide { WindowSpec::Tumbling { size } } else { WindowSpec::Hopping { size, slide } };
        let mut state = FeatureState::new(0, spec(window, agg, 0));
        let (rows, late) = run(&mut state, &evs, ooo);
        let (expected, expected_late) = oracle_aligned(&evs, size, slide, agg, ooo);
        prop_assert_eq!(rows, expected);
        prop_assert_eq!(late, expected_late);
    }

    /// Reordering events within the out-of-orderness changes no closed window.
    #[test]
    fn shuffling_within_the_bound_changes_nothing(evs in events(0), seed in any::<u64>()) {
        let ooo = 1000;
        let mut shuffled = evs.clone();
        // Swap neighbours whose times are within the bound: each stays above max - ooo.
        let mut s = seed;
        for i in 1..shuffled.len() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if s >> 63 == 1 && (shuffled[i].1 - shuffled[i - 1].1).abs() < ooo {
                shuffled.swap(i - 1, i);
            }
        }
        let w = WindowSpec::Hopping { size: 3000, slide: 1000 };
        let a = run(&mut FeatureState::new(0, spec(w, AggFn::Sum, 0)), &evs, ooo);
        let b = run(&mut FeatureState::new(0, spec(w, AggFn::Sum, 0)), &shuffled, ooo);
        prop_assert_eq!(a.1, 0);
        prop_assert_eq!(a, b);
    }

    /// Sessions of in-order events equal grouping by gaps, a session
    /// closing once the watermark (here the latest time so far, less 1)
    /// reaches its last millisecond: an event at exactly a session's end
    /// joins it, unless another key's event at that time closed it first.
    #[test]
    fn sessions_equal_gap_grouping(evs in events(0), gap in 1i64..3000) {
        let mut state = FeatureState::new(0, spec(WindowSpec::Session { gap }, AggFn::Count, 0));
        let (rows, late) = run(&mut state, &evs, 0);
        prop_assert_eq!(late, 0);
        let mut open: BTreeMap<u8, (i64, i64, usize)> = BTreeMap::new();
        let mut expected = Vec::new();
        let row = |k: u8, (start, end, n): (i64, i64, usize)| format!("{start},{end},k{k},{n}");
        let mut max = i64::MIN;
        for &(k, ts, _) in &evs {
            let wm = if max == i64::MIN { i64::MIN } else { max - 1 };
            open.retain(|&key, session| {
                let closed = session.1 - 1 <= wm;
                if closed {
                    expected.push(row(key, *session));
                }
                !closed
            });
            match open.get_mut(&k) {
                Some((_, end, n)) if ts <= *end => {
                    *end = (*end).max(ts + gap);
                    *n += 1;
                }
                _ => {
                    if let Some(ended) = open.insert(k, (ts, ts + gap, 1)) {
                        expected.push(row(k, ended));
                    }
                }
            }
            max = max.max(ts);
        }
        expected.extend(open.into_iter().map(|(k, session)| row(k, session)));
        expected.sort();
        prop_assert_eq!(rows, expected);
    }
}

#[test]
fn allowed_lateness_re_emits_updated_windows_then_drops() {
    let mut state = FeatureState::new(0, spec(WindowSpec::Tumbling { size: 1000 }, AggFn::Count, 2000));
    // 2500 closes [0,1000); 500 is late but within lateness: window re-emitted with 2.
    // 5000 moves the watermark past 1000 - 1 + 2000: 600 is then dropped.
    let evs = [(1, 100, 0.0), (1, 2500, 0.0), (1, 500, 0.0), (1, 5000, 0.0), (1, 600, 0.0)];
    let (rows, late) = run(&mut state, &evs, 0);
    assert_eq!(rows, ["0,1000,k1,1", "0,1000,k1,2", "2000,3000,k1,1", "5000,6000,k1,1"]);
    assert_eq!(late, 1);
}

#[test]
fn late_events_go_to_the_late_sink_with_their_position() {
    let mut state = FeatureState::new(0, spec(WindowSpec::Tumbling { size: 1000 }, AggFn::Count, 0));
    let mut out = Outputs::new(2, 1);
    let mut batch = RecordBatch::default();
    push_part(&mut batch.bytes, b"u1");
    let key = (0, batch.bytes.len() as u32);
    let hash = hash_bytes(&batch.bytes);
    batch.records.push(Record {
        feature: 0,
        ts: 10,
        hash,
        key,
        value: RecordValue::None,
        offset: 7,
        prior_max_ts: 5000,
    });
    state.apply(&batch, &batch.records[0], 3999, &mut out);
    let late = String::from_utf8(out.sinks[1].data.clone()).unwrap();
    assert_eq!(
        late,
        "{\"reason\":\"late\",\"feature\":\"f\",\"key\":[\"u1\"],\"ts\":10,\"offset\":7,\"watermark\":3999}\n"
    );
    assert_eq!(out.late[0], 1);
}

#[test]
fn views_show_running_and_last_closed_values() {
    let mut state = FeatureState::new(0, spec(WindowSpec::Tumbling { size: 1000 }, AggFn::Count, 0));
    let view = FeatureView::new(state.spec());
    run(&mut state, &[(1, 100, 0.0), (1, 200, 0.0)], 0);
    state.publish(Some(&view), None);
    let v = view.get("k1").unwrap();
    assert_eq!(v[0].last_closed.as_ref().map(|w| (w.start, w.end)), Some((0, 1000)));
    assert_eq!(v[0].event_time, 200);
    // Everything closed at end of input: no open window remains.
    assert_eq!(v[0].current, None);
}

/// Found by fuzzing (decode target): publishing an entity shows every key
/// of it, and a key whose only event was late (interned, never updated, so
/// its newest event time is `i64::MIN`) overflowed computing its open window.
#[test]
fn publishing_an_entity_with_a_key_that_only_had_late_events() {
    let mut s = spec(WindowSpec::Tumbling { size: 1000 }, AggFn::Count, 0);
    s.key = vec![FieldPath::parse("user").unwrap(), FieldPath::parse("type").unwrap()];
    let mut state = FeatureState::new(0, s);
    let view = FeatureView::new(state.spec());
    let mut out = Outputs::new(2, 1);
    for (kind, ts, wm) in [(&b"view"[..], 5000, i64::MIN), (b"click", 100, 3999)] {
        state.on_watermark(wm, &mut out);
        let mut batch = RecordBatch::default();
        push_part(&mut batch.bytes, b"u1");
        push_part(&mut batch.bytes, kind);
        let key = (0, batch.bytes.len() as u32);
        let hash = hash_bytes(&batch.bytes);
        let value = RecordValue::None;
        batch.records.push(Record { feature: 0, ts, hash, key, value, offset: 0, prior_max_ts: i64::MIN });
        state.apply(&batch, &batch.records[0], wm, &mut out);
    }
    assert_eq!(out.late[0], 1);
    state.publish(Some(&view), None);
    let groups = view.get("u1").unwrap();
    let current: Vec<_> = groups.iter().map(|g| (g.group.join(","), g.current.as_ref().map(|w| w.start))).collect();
    // The key made only by a late event has nothing to show, and is left out.
    assert_eq!(current, [("view".to_string(), Some(5000))]);
}

/// An updates sink gets the entity's values on each publish after a change
/// (not between changes), and a null value when the entity is forgotten; an
/// unserved feature with an updates sink tracks its entities all the same.
#[test]
fn updates_rows_follow_changes_and_forget() {
    let mut s = spec(WindowSpec::Tumbling { size: 1000 }, AggFn::Count, 0);
    s.serve = false;
    s.updates_sink = Some(2);
    let mut state = FeatureState::new(0, s);
    let mut out = Outputs::new(3, 1);
    let mut clock = (i64::MIN, i64::MIN);
    feed(&mut state, &[(1, 100, 0.0), (1, 200, 0.0), (2, 300, 0.0)], 5000, &mut clock, &mut out, false);
    let take = |out: &mut Outputs| -> Vec<serde_json::Value> {
        let text = String::from_utf8(std::mem::take(&mut out.sinks[2].data)).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert_eq!(state.publish(None, Some(&mut out.sinks[2])), 2);
    let mut rows = take(&mut out);
    rows.sort_by_key(|r| r["entity"].as_str().unwrap().to_owned());
    assert_eq!(rows[0]["entity"], "k1");
    assert_eq!(rows[0]["value"][0]["current"], serde_json::json!({"start": 0, "end": 1000, "value": 2}));
    assert_eq!(rows[0]["value"][0]["event_time"], 200);
    assert_eq!(rows[1]["entity"], "k2");
    // Nothing changed: nothing to write.
    assert_eq!(state.publish(None, Some(&mut out.sinks[2])), 0);
    assert!(take(&mut out).is_empty());
    feed(&mut state, &[(1, 400, 0.0)], 5000, &mut clock, &mut out, false);
    state.publish(None, Some(&mut out.sinks[2]));
    let rows = take(&mut out);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["value"][0]["current"]["value"], 3);
    assert_eq!(state.forget(b"k2"), 1);
    // The shard writes the forget row (it knows the entity went); here, by hand.
    super::write_update(&mut out.sinks[2], state.spec(), b"k2", None);
    assert_eq!(take(&mut out), [serde_json::json!({"feature": "f", "entity": "k2", "value": null})]);
}

#[test]
fn windows_passed_before_a_pane_exists_do_not_take_its_events() {
    // Found by `aligned_windows_equal_recompute`: at watermark -2 the event at
    // -1501 is late for windows ending at -1500, -1000 and -500, which were
    // empty (so never fired) when the watermark passed them.
    let w = WindowSpec::Hopping { size: 2000, slide: 500 };
    let evs = [(0, 45, 0.0), (0, -1501, 0.0)];
    let (rows, late) = run(&mut FeatureState::new(0, spec(w, AggFn::Count, 0)), &evs, 46);
    assert_eq!(late, 0);
    assert_eq!(rows, oracle_aligned(&evs, 2000, 500, AggFn::Count, 46).0);
    assert_eq!(rows.len(), 5, "{rows:?}");
}

/// Feeds events with the per-record watermark, carrying (max, wm) across calls.
fn feed(state: &mut FeatureState, events: &[Ev], ooo: i64, clock: &mut (i64, i64), out: &mut Outputs, text: bool) {
    for (offset, &(k, ts, v)) in events.iter().enumerate() {
        let (max, wm) = clock;
        let w = if *max == i64::MIN { i64::MIN } else { *max - ooo - 1 };
        if w > *wm {
            *wm = w;
            state.on_watermark(*wm, out);
        }
        let mut batch = RecordBatch::default();
        push_part(&mut batch.bytes, format!("k{k}").as_bytes());
        let key = (0, batch.bytes.len() as u32);
        let value = if text {
            let start = batch.bytes.len() as u32;
            batch.bytes.extend_from_slice(format!("v{}", v as i64).as_bytes());
            RecordValue::Text(start, batch.bytes.len() as u32)
        } else {
            RecordValue::Num(v)
        };
        let hash = hash_bytes(&batch.bytes[..key.1 as usize]);
        batch.records.push(Record { feature: 0, ts, hash, key, value, offset: offset as u64, prior_max_ts: *max });
        state.apply(&batch, &batch.records[0], *wm, out);
        *max = (*max).max(ts);
    }
}

fn rows(out: &mut Outputs) -> Vec<String> {
    let text = String::from_utf8(std::mem::take(&mut out.sinks[0].data)).unwrap();
    text.lines().map(str::to_owned).collect()
}

proptest! {
    /// Snapshot anywhere, restore into a fresh state, continue: the same rows
    /// as an uninterrupted run, for every window kind.
    #[test]
    fn snapshot_restore_continue_equals_uninterrupted(
        evs in events(2000), cut in any::<prop::sample::Index>(), kind in 0usize..4, agg_i in 0usize..5, lateness in 0i64..1500,
    ) {
        let window = [
            WindowSpec::Tumbling { size: 1000 },
            WindowSpec::Hopping { size: 3000, slide: 1000 },
            WindowSpec::Session { gap: 700 },
            WindowSpec::Global,
        ][kind];
        let agg = [AggFn::Count, AggFn::Sum, AggFn::Distinct(12), AggFn::LastN(3), AggFn::DecayedCount(1000.0)][agg_i];
        let text = matches!(agg, AggFn::Distinct(_) | AggFn::LastN(_));
        let cut = cut.index(evs.len() + 1);
        let ooo = 500;

        let mut whole = FeatureState::new(0, spec(window, agg, lateness));
        let (mut clock, mut out) = ((i64::MIN, i64::MIN), Outputs::new(2, 1));
        feed(&mut whole, &evs, ooo, &mut clock, &mut out, text);
        whole.on_watermark(WATERMARK_MAX, &mut out);
        let mut expected = rows(&mut out);

        let mut first = FeatureState::new(0, spec(window, agg, lateness));
        let (mut clock, mut out) = ((i64::MIN, i64::MIN), Outputs::new(2, 1));
        feed(&mut first, &evs[..cut], ooo, &mut clock, &mut out, text);
        let bytes = first.snapshot();
        drop(first);
        let mut second = FeatureState::new(0, spec(window, agg, lateness));
        second.restore(&bytes).unwrap();
        feed(&mut second, &evs[cut..], ooo, &mut clock, &mut out, text);
        second.on_watermark(WATERMARK_MAX, &mut out);
        let mut got = rows(&mut out);
        expected.sort();
        got.sort();
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn restore_refuses_other_definitions_versions_and_garbage() {
    let mut a = FeatureState::new(0, spec(WindowSpec::Tumbling { size: 1000 }, AggFn::Count, 0));
    run(&mut a, &[(1, 100, 0.0)], 0);
    let bytes = a.snapshot();
    let mut other = FeatureState::new(0, spec(WindowSpec::Tumbling { size: 2000 }, AggFn::Count, 0));
    let err = other.restore(&bytes).unwrap_err();
    assert!(err.to_string().contains("tumbling 1s") && err.to_string().contains("tumbling 2s"), "{err}");
    let mut fresh = FeatureState::new(0, spec(WindowSpec::Tumbling { size: 1000 }, AggFn::Count, 0));
    assert!(matches!(fresh.restore(&bytes[..bytes.len() / 2]), Err(super::RestoreError::Corrupt { .. })));
    let mut newer = bytes.clone();
    newer[0] = 9; // the version is the first varint
    assert!(matches!(fresh.restore(&newer), Err(super::RestoreError::Version { found: 9, .. })));
}

#[test]
fn restored_keys_are_served_again_without_new_events() {
    let spec = spec(WindowSpec::Global, AggFn::Count, 0);
    let mut a = FeatureState::new(0, spec.clone());
    let mut out = Outputs::new(2, 1);
    feed(&mut a, &[(1, 100, 0.0), (1, 200, 0.0), (2, 300, 0.0)], 0, &mut (i64::MIN, i64::MIN), &mut out, false);
    let before = FeatureView::new(&spec);
    a.publish(Some(&before), None);
    let bytes = a.snapshot();
    let mut b = FeatureState::new(0, spec.clone());
    b.restore(&bytes).unwrap();
    let after = FeatureView::new(&spec);
    assert_eq!(b.publish(Some(&after), None), 2, "both entities are published from the restored state");
    for entity in ["k1", "k2"] {
        let (was, is) = (before.get(entity).unwrap(), after.get(entity).unwrap());
        assert_eq!(format!("{was:?}"), format!("{is:?}"), "entity {entity}");
    }
}

/// One event of a two-part key: entity, group, event time, value.
type Ev2 = (u8, u8, i64, f64);

/// Feeds two-part-key events (`e{entity}`, `g{group}`) with the per-record
/// watermark; `before(i, state, out)` runs before event `i` (and with
/// `i == events.len()` at the end).
fn feed_parts(
    state: &mut FeatureState,
    events: &[Ev2],
    ooo: i64,
    clock: &mut (i64, i64),
    out: &mut Outputs,
    mut before: impl FnMut(usize, &mut FeatureState, &mut Outputs),
) {
    for (i, &(e, g, ts, v)) in events.iter().enumerate() {
        before(i, state, out);
        let (max, wm) = clock;
        let w = if *max == i64::MIN { i64::MIN } else { *max - ooo - 1 };
        if w > *wm {
            *wm = w;
            state.on_watermark(*wm, out);
        }
        let mut batch = RecordBatch::default();
        push_part(&mut batch.bytes, format!("e{e}").as_bytes());
        push_part(&mut batch.bytes, format!("g{g}").as_bytes());
        let key = (0, batch.bytes.len() as u32);
        let hash = hash_bytes(&batch.bytes);
        let value = RecordValue::Num(v);
        batch.records.push(Record { feature: 0, ts, hash, key, value, offset: i as u64, prior_max_ts: *max });
        state.apply(&batch, &batch.records[0], *wm, out);
        *max = (*max).max(ts);
    }
    before(events.len(), state, out);
}

fn events2(disorder: i64) -> impl Strategy<Value = Vec<Ev2>> {
    (events(disorder), prop::collection::vec(0u8..3, 120))
        .prop_map(|(evs, groups)| evs.into_iter().zip(groups).map(|((k, ts, v), g)| (k, g, ts, v)).collect())
}

/// The watermark at which a pane holding an event at `ts` is dropped.
fn pane_done(window: WindowSpec, ts: i64, lateness: i64) -> i64 {
    match window {
        WindowSpec::Session { gap } => ts + gap - 1 + lateness,
        WindowSpec::Global => i64::MIN,
        w => {
            let (size, slide) = w.size_slide().unwrap();
            align(ts, slide) + size - 1 + lateness
        }
    }
}

proptest! {
    /// TTL removes exactly the keys whose newest event is `ttl` behind the
    /// watermark and whose panes are done (from state and, at the next
    /// publish, from the view), and changes no window result; for global
    /// windows an expired key's value is dropped and a later event starts
    /// afresh. Keys expire at watermark steps (an event already past its TTL
    /// when it arrives lives until the next step).
    #[test]
    fn ttl_removes_exactly_the_expired_keys_and_windows_equal_recomputation(
        evs in events2(2000), kind in 0usize..4, ttl in 1i64..6000, lateness in 0i64..1500, every in 1usize..25,
    ) {
        let window = [
            WindowSpec::Tumbling { size: 1000 },
            WindowSpec::Hopping { size: 3000, slide: 1000 },
            WindowSpec::Session { gap: 700 },
            WindowSpec::Global,
        ][kind];
        let ooo = 500;
        let mut with_ttl = spec(window, AggFn::Count, lateness);
        with_ttl.key = vec![FieldPath::parse("k").unwrap(), FieldPath::parse("g").unwrap()];
        let mut keep = with_ttl.clone();
        with_ttl.ttl = Some(ttl);
        keep.ttl = None;

        let mut state = FeatureState::new(0, with_ttl);
        let view = FeatureView::new(state.spec());
        let (mut clock, mut out) = ((i64::MIN, i64::MIN), Outputs::new(2, 1));
        feed_parts(&mut state, &evs, ooo, &mut clock, &mut out, |i, s, _| {
            if i % every == 0 {
                s.publish(Some(&view), None);
            }
        });
        let wm_end = clock.1.saturating_add(1);
        state.on_watermark(wm_end, &mut out);
        state.publish(Some(&view), None);

        // Which keys live: an accepted event whose pane or TTL is not done at `wm_end`.
        let mut newest: BTreeMap<(u8, u8), i64> = BTreeMap::new();
        let mut max = i64::MIN;
        for &(e, g, ts, _) in &evs {
            let wm = if max == i64::MIN { i64::MIN } else { max - ooo - 1 };
            if window == WindowSpec::Global || pane_done(window, ts, lateness) > wm {
                let m = newest.entry((e, g)).or_insert(ts);
                *m = (*m).max(ts);
            }
            max = max.max(ts);
        }
        newest.retain(|_, m| *m + ttl > wm_end || pane_done(window, *m, lateness) > wm_end);
        prop_assert_eq!(state.key_count(), newest.len());
        let entities: std::collections::BTreeSet<u8> = newest.keys().map(|(e, _)| *e).collect();
        for e in 0..4u8 {
            let served = view.get(&format!("e{e}")).map(|v| v.len());
            let alive = newest.keys().filter(|(x, _)| *x == e).count();
            prop_assert_eq!(served, entities.contains(&e).then_some(alive), "entity e{}", e);
        }

        state.on_watermark(WATERMARK_MAX, &mut out);
        let mut got = rows(&mut out);
        got.sort();
        let expected = if window == WindowSpec::Global {
            // Each key's last life: events since it last expired, at a watermark step.
            let mut lives: BTreeMap<(u8, u8), (i64, i64, usize)> = BTreeMap::new();
            let (mut max, mut wm) = (i64::MIN, i64::MIN);
            for &(e, g, ts, _) in &evs {
                let w = if max == i64::MIN { i64::MIN } else { max - ooo - 1 };
                if w > wm {
                    wm = w;
                    lives.retain(|_, l| l.1 + ttl > wm);
                }
                let l = lives.entry((e, g)).or_insert((ts, ts, 0));
                *l = (l.0.min(ts), l.1.max(ts), l.2 + 1);
                max = max.max(ts);
            }
            lives.retain(|_, l| l.1 + ttl > wm_end);
            let mut rows: Vec<String> =
                lives.iter().map(|((e, g), l)| format!("{},{},e{e},g{g},{}", l.0, l.1 + 1, l.2)).collect();
            rows.sort();
            rows
        } else {
            let mut kept = FeatureState::new(0, keep);
            let (mut clock, mut out) = ((i64::MIN, i64::MIN), Outputs::new(2, 1));
            feed_parts(&mut kept, &evs, ooo, &mut clock, &mut out, |_, _, _| {});
            kept.on_watermark(WATERMARK_MAX, &mut out);
            let mut rows = rows(&mut out);
            rows.sort();
            rows
        };
        prop_assert_eq!(got, expected);
    }

    /// Forgetting an entity removes its keys at once and drops its unfired
    /// windows: afterwards it is as if its earlier events had belonged to
    /// someone else, and no other entity changes.
    #[test]
    fn forget_removes_the_entity_and_leaves_others_as_they_were(
        evs in events2(2000), kind in 0usize..4, lateness in 0i64..1500, at in any::<prop::sample::Index>(), who in 0u8..4,
    ) {
        let window = [
            WindowSpec::Tumbling { size: 1000 },
            WindowSpec::Hopping { size: 3000, slide: 1000 },
            WindowSpec::Session { gap: 700 },
            WindowSpec::Global,
        ][kind];
        let ooo = 500;
        let at = at.index(evs.len() + 1);
        let mut sp = spec(window, AggFn::Count, lateness);
        sp.key = vec![FieldPath::parse("k").unwrap(), FieldPath::parse("g").unwrap()];
        sp.serve = kind % 2 == 0; // unserved features index their entities on the first forget

        let entity = format!("e{who}");
        let mut state = FeatureState::new(0, sp.clone());
        let (mut clock, mut out) = ((i64::MIN, i64::MIN), Outputs::new(2, 1));
        let mut before_forget = Vec::new();
        feed_parts(&mut state, &evs, ooo, &mut clock, &mut out, |i, s, out| {
            if i == at {
                before_forget = rows(out);
                let had = s.keys.len();
                let n = s.forget(entity.as_bytes());
                assert_eq!(s.keys.len(), had - n);
                let live = (0..s.keys.id_bound()).filter(|&id| s.keys.is_live(id));
                assert!(live.clone().all(|id| !s.keys.key(id).starts_with(&[2, b'e', b'0' + who])));
                assert_eq!(s.forget(entity.as_bytes()), 0);
            }
        });
        state.on_watermark(WATERMARK_MAX, &mut out);
        let mine = |row: &String| row.contains(&format!(",{entity},"));
        let mut got: Vec<String> = before_forget.into_iter().filter(|r| !mine(r)).chain(rows(&mut out)).collect();
        got.sort();

        // The oracle: the entity's events before the forget belong to e9 instead.
        let renamed: Vec<Ev2> =
            evs.iter().enumerate().map(|(i, &(e, g, ts, v))| if i < at && e == who { (9, g, ts, v) } else { (e, g, ts, v) }).collect();
        let mut other = FeatureState::new(0, sp);
        let (mut clock, mut out) = ((i64::MIN, i64::MIN), Outputs::new(2, 1));
        feed_parts(&mut other, &renamed, ooo, &mut clock, &mut out, |_, _, _| {});
        other.on_watermark(WATERMARK_MAX, &mut out);
        let mut expected: Vec<String> = rows(&mut out).into_iter().filter(|r| !r.contains(",e9,")).collect();
        expected.sort();
        prop_assert_eq!(got, expected);
    }
}

/// One key's state as written: key, newest event time, panes, last closed window.
type CraftedKey = (Vec<u8>, i64, Vec<super::state::Pane>, Option<(i64, i64, crate::aggregate::AggValue)>);

/// A snapshot as written (field for field), for crafting ones the engine never writes.
#[derive(serde::Serialize)]
struct Crafted {
    version: u32,
    name: String,
    definition: String,
    keys: Vec<CraftedKey>,
    touched: Vec<(i64, Vec<u32>)>,
    fired_until: i64,
    timers: Vec<(i64, Vec<u32>)>,
}

/// Found by fuzzing (checkpoint target): a snapshot whose session timers or
/// pane lists name keys it does not hold restored fine, then panicked with
/// an index out of bounds when the watermark fired them. Restore now checks
/// what the state relies on and refuses such snapshots as corrupt.
#[test]
fn restore_refuses_snapshots_inconsistent_with_themselves() {
    use super::state::Pane;
    use crate::aggregate::Acc;
    let session = spec(WindowSpec::Session { gap: 1000 }, AggFn::Count, 0);
    let mut k = Vec::new();
    push_part(&mut k, b"u1");
    let pane = |start: i64, acc: Acc| Pane { start, end: start + 1000, acc, fired: false };
    let good = || Crafted {
        version: super::SNAPSHOT_VERSION,
        name: "f".into(),
        definition: session.definition(),
        keys: vec![(k.clone(), 100, vec![pane(100, Acc::Count(1))], None)],
        touched: vec![],
        fired_until: i64::MIN,
        timers: vec![(1100, vec![0])],
    };
    let restore = |c: &Crafted| {
        let mut state = FeatureState::new(0, session.clone());
        let restored = state.restore(&postcard::to_stdvec(c).unwrap());
        // Whatever restores must also fire.
        if restored.is_ok() {
            state.on_watermark(WATERMARK_MAX, &mut Outputs::new(2, 1));
        }
        restored.map_err(|e| e.to_string())
    };
    assert_eq!(restore(&good()), Ok(()));
    type Spoil = fn(&mut Crafted);
    let bad: [(&str, Spoil); 7] = [
        ("session timer names key 15 of 1", |c| c.timers[0].1 = vec![15]),
        ("pane list names key 1 of 1", |c| c.touched = vec![(100, vec![1])]),
        ("a key appears twice", |c| c.keys.push(c.keys[0].clone())),
        ("a key is not an encoding of 1 parts", |c| c.keys[0].0.push(9)),
        ("pane start -9223372036854775807 is out of range", |c| c.keys[0].2[0].start = i64::MIN + 1),
        ("session end 9223372036854775807 is out of range", |c| c.timers[0].0 = i64::MAX),
        ("a pane does not hold a count accumulator", |c| c.keys[0].2[0].acc = Acc::Sum(1.0)),
    ];
    for (reason, spoil) in bad {
        let mut c = good();
        spoil(&mut c);
        let err = restore(&c).unwrap_err();
        assert!(err.contains("unreadable") && err.contains(reason), "{reason}: {err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Published running values of a hopping distinct count, computed from
    /// each key's cached merge of its older panes, equal a merge of every
    /// pane from scratch, with events out of order (into older panes, which
    /// must drop the cache), panes expiring and windows sliding on.
    #[test]
    fn hopping_distinct_through_cached_prefixes_equals_merging_every_pane(
        raw in prop::collection::vec((0u8..3, 0i64..10, 0i64..=1500, 0i64..3000), 300..2000),
        ooo in 0i64..1500,
        chunk in 5usize..60,
    ) {
        let mut base = 0;
        let evs: Vec<Ev> = raw.into_iter().map(|(k, step, jitter, v)| {
            base += step;
            (k, base - jitter, v as f64)
        }).collect();
        let w = WindowSpec::Hopping { size: 4000, slide: 500 };
        let mut state = FeatureState::new(0, spec(w, AggFn::Distinct(12), 0));
        prop_assert!(state.keeps_prefixes());
        let view = FeatureView::new(state.spec());
        let mut out = Outputs::new(2, 1);
        let mut clock = (i64::MIN, i64::MIN);
        let mut cached = 0;
        for part in evs.chunks(chunk) {
            feed(&mut state, part, ooo, &mut clock, &mut out, true);
            state.publish(Some(&view), None);
            cached = cached.max(state.prefixes.len());
            for id in (0..state.keys.id_bound()).filter(|&id| state.keys.is_live(id)) {
                let entity = String::from_utf8_lossy(&state.keys.key(id)[1..]).into_owned();
                let Some(current) = view.get(&entity).and_then(|g| g[0].current.clone()) else { continue };
                prop_assert_eq!(Some(current.value), state.merged(id, current.start, current.end), "{}", entity);
            }
        }
        // Sketches were cached on the way (a pane holds more than 64 values).
        prop_assert!(cached > 0);
    }
}

/// A publication in slices of a few entities each ends with the views one
/// publication gives, and a slice publishes no more than its budget.
#[test]
fn publishing_in_slices_ends_where_publishing_at_once_does() {
    let evs: Vec<Ev> = (0..200).map(|i| ((i % 7) as u8, i * 37, i as f64)).collect();
    let w = WindowSpec::Hopping { size: 4000, slide: 1000 };
    let (mut whole, mut sliced) =
        (FeatureState::new(0, spec(w, AggFn::Sum, 0)), FeatureState::new(0, spec(w, AggFn::Sum, 0)));
    let (view_whole, view_sliced) = (FeatureView::new(whole.spec()), FeatureView::new(sliced.spec()));
    let (mut out, mut clock) = (Outputs::new(2, 1), (i64::MIN, i64::MIN));
    feed(&mut whole, &evs, 100, &mut clock, &mut out, false);
    clock = (i64::MIN, i64::MIN);
    feed(&mut sliced, &evs, 100, &mut clock, &mut out, false);
    assert_eq!(whole.publish(Some(&view_whole), None), 7);
    let mut slices = 0;
    while sliced.has_unpublished() {
        let mut budget = 2;
        let n = sliced.publish_some(Some(&view_sliced), None, &mut budget);
        assert!(n <= 2 && n + budget == 2 || !sliced.has_unpublished(), "{n} {budget}");
        slices += 1;
    }
    assert_eq!(slices, 4, "7 entities, 2 a slice");
    for k in 0..7 {
        let entity = format!("k{k}");
        assert_eq!(view_sliced.get(&entity), view_whole.get(&entity), "{entity}");
    }
}

/// A session keeps one timer however many events extend it (a timer per
/// event was kept until the watermark passed it: millions for a hot key).
#[test]
fn a_session_extended_by_many_events_keeps_one_timer() {
    for lateness in [0, 500] {
        let mut state = FeatureState::new(0, spec(WindowSpec::Session { gap: 1000 }, AggFn::Count, lateness));
        let evs: Vec<Ev> = (0..5000).map(|i| (0, i * 10, 0.0)).collect();
        let (mut out, mut clock) = (Outputs::new(2, 1), (i64::MIN, i64::MIN));
        feed(&mut state, &evs, 0, &mut clock, &mut out, false);
        let timers: usize = state.timers.values().map(Vec::len).sum();
        assert_eq!(timers, 1, "lateness {lateness}");
        state.on_watermark(WATERMARK_MAX, &mut out);
        assert_eq!(rows(&mut out), ["0,50990,k0,5000"], "lateness {lateness}");
    }
}
