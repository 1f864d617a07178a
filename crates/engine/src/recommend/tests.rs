//! The recommender's unit tests: each generator's effect, filters and
//! placement rules, cold start, new items, forget, snapshots, and the
//! published view ranking exactly like the live model.

use proptest::prelude::*;

use super::*;

const MINUTE: i64 = 60_000;

fn names(model: &impl ModelRead, out: &Ranking, name: impl Fn(u32) -> String) -> Vec<String> {
    let _ = model;
    out.items.iter().map(|s| name(s.item)).collect()
}

fn recommend(model: &Recommender, user: &str, k: usize) -> Vec<String> {
    let mut out = Ranking::default();
    rank(model, &Query::for_user(user, k), &mut out);
    names(model, &out, |i| model.item_name(i).unwrap_or("?").to_owned())
}

/// Twenty users view A then B; five view A then C; they and ten more view P (the most popular).
fn covisited() -> Recommender {
    let mut m = Recommender::new(RecommenderSpec::default());
    let mut t = 0;
    for u in 0..20 {
        for item in ["P", "A", "B"] {
            t += MINUTE;
            m.interaction(&format!("u{u}"), item, Some("view"), t);
        }
    }
    for u in 20..25 {
        for item in ["P", "A", "C"] {
            t += MINUTE;
            m.interaction(&format!("u{u}"), item, Some("view"), t);
        }
    }
    for u in 25..35 {
        t += MINUTE;
        m.interaction(&format!("u{u}"), "P", Some("view"), t);
    }
    m
}

#[test]
fn co_visited_items_come_first_with_their_reason() {
    let mut m = covisited();
    m.interaction("new", "A", Some("view"), 100 * MINUTE);
    let mut out = Ranking::default();
    rank(&m, &Query::for_user("new", 3), &mut out);
    let first = out.items[0];
    assert_eq!(m.item_name(first.item), Some("B"));
    assert!(first.reasons().any(|(g, s)| g == Generator::Cooccurrence && s > 0.0));
    let all = recommend(&m, "new", 10);
    assert!(!all.contains(&"A".to_owned()), "a seen item was recommended: {all:?}");
    assert!(all.iter().position(|i| i == "B") < all.iter().position(|i| i == "C"));
}

#[test]
fn excluded_and_seen_items_never_appear() {
    let mut m = covisited();
    m.interaction("new", "A", Some("view"), 100 * MINUTE);
    let b = m.item_index("B").unwrap();
    let mut out = Ranking::default();
    let exclude = [b];
    rank(&m, &Query { exclude: &exclude, ..Query::for_user("new", 10) }, &mut out);
    assert!(out.items.iter().all(|s| s.item != b && m.item_name(s.item) != Some("A")));
    assert!(!out.items.is_empty());
}

#[test]
fn a_transition_proposes_what_followed() {
    let mut m = Recommender::new(RecommenderSpec::default().only(Generator::Sequence));
    for u in 0..5 {
        m.interaction(&format!("u{u}"), "X", None, u * 10 * MINUTE);
        m.interaction(&format!("u{u}"), "Y", None, u * 10 * MINUTE + MINUTE);
    }
    m.interaction("new", "X", None, 100 * MINUTE);
    assert_eq!(recommend(&m, "new", 1), vec!["Y"]);
    // Beyond the session gap, no transition is learnt.
    let mut m = Recommender::new(RecommenderSpec::default().only(Generator::Sequence));
    m.interaction("u", "X", None, 0);
    m.interaction("u", "Z", None, 31 * MINUTE);
    assert_eq!(m.item_state(m.item_index("X").unwrap()).successors.len(), 0);
}

/// What followed an item only one time in ten earns a transition half the
/// generator's weight (at the default `full_weight_at` of 0.2); what always
/// followed it, the whole weight; with `full_weight_at = 0`, any best one does.
#[test]
fn thin_transitions_earn_less_than_the_full_weight() {
    let learn = |spec: RecommenderSpec| {
        let mut m = Recommender::new(spec.only(Generator::Sequence));
        for u in 0..10 {
            m.interaction(&format!("u{u}"), "X", None, u * 10 * MINUTE);
            m.interaction(&format!("u{u}"), &format!("Y{u}"), None, u * 10 * MINUTE + MINUTE);
            m.interaction(&format!("w{u}"), "W", None, u * 10 * MINUTE);
            m.interaction(&format!("w{u}"), "V", None, u * 10 * MINUTE + MINUTE);
        }
        m.interaction("thin", "X", None, 200 * MINUTE);
        m.interaction("sharp", "W", None, 200 * MINUTE);
        m
    };
    let best_part = |m: &Recommender, user: &str| {
        let mut out = Ranking::default();
        rank(m, &Query::for_user(user, 1), &mut out);
        out.items[0].parts[Generator::Sequence.index()]
    };
    let spec = RecommenderSpec::default();
    let weight = spec.sequence.weight;
    assert_eq!(spec.sequence.full_weight_at, 0.2);
    let m = learn(spec.clone());
    assert!((best_part(&m, "thin") - weight * 0.1 / 0.2).abs() < 1e-6, "{}", best_part(&m, "thin"));
    assert!((best_part(&m, "sharp") - weight).abs() < 1e-6);
    let mut always_full = spec;
    always_full.sequence.full_weight_at = 0.0;
    let m = learn(always_full);
    assert!((best_part(&m, "thin") - weight).abs() < 1e-6);
}

#[test]
fn an_unknown_user_gets_trending_and_context_helps() {
    let m = covisited();
    let mut out = Ranking::default();
    rank(&m, &Query { user: Some("nobody"), ..Query::for_user("nobody", 3) }, &mut out);
    assert_eq!(m.item_name(out.items[0].item), Some("P"), "the most popular item leads a cold start");
    let a = [m.item_index("A").unwrap()];
    rank(&m, &Query { user: None, context: &a, ..Query::for_user("", 3) }, &mut out);
    assert_eq!(m.item_name(out.items[0].item), Some("B"));
    assert!(out.items.iter().all(|s| s.item != a[0]), "a context item is not recommended back");
}

#[test]
fn a_new_item_is_recommendable_through_its_category_at_once() {
    let mut m = Recommender::new(RecommenderSpec::default());
    for (i, c) in [("s1", "shoes"), ("s2", "shoes"), ("h1", "hats")] {
        m.upsert_item(i, Some(c), &[], 0);
    }
    m.interaction("fan", "s1", Some("view"), MINUTE);
    m.interaction("fan", "s2", Some("view"), 2 * MINUTE);
    m.interaction("other", "h1", Some("view"), 2 * MINUTE);
    m.upsert_item("s-new", Some("shoes"), &["red"], 3 * MINUTE);
    let recs = recommend(&m, "fan", 2);
    assert_eq!(recs[0], "s-new", "{recs:?}");
    let mut out = Ranking::default();
    similar(&m, m.item_index("s1").unwrap(), 5, &mut out);
    let similar_items: Vec<&str> = out.items.iter().filter_map(|s| m.item_name(s.item)).collect();
    assert!(similar_items.contains(&"s-new"), "{similar_items:?}");
    assert!(!similar_items.contains(&"h1"), "similar items are not merely popular: {similar_items:?}");
}

/// A category's two most popular items are out of stock: its next two take
/// the content generator's places (two per attribute here).
#[test]
fn unavailable_items_leave_their_places_in_a_category_to_the_next() {
    let mut spec = RecommenderSpec::default().only(Generator::Content);
    spec.content.per_attribute = 2;
    let mut m = Recommender::new(spec);
    for i in ["x1", "x2", "x3", "x4", "x5"] {
        m.upsert_item(i, Some("c9"), &[], 0);
    }
    for (item, viewers) in [("x1", 5), ("x2", 4), ("x3", 3), ("x4", 2)] {
        for u in 0..viewers {
            m.interaction(&format!("{item}-fan{u}"), item, None, MINUTE);
        }
    }
    m.interaction("fan", "x5", None, 2 * MINUTE);
    assert_eq!(recommend(&m, "fan", 5), ["x1", "x2"]);
    m.set_available("x1", false);
    m.set_available("x2", false);
    assert_eq!(recommend(&m, "fan", 5), ["x3", "x4"]);
}

#[test]
fn tags_propose_their_items_too() {
    let mut m = Recommender::new(RecommenderSpec::default().only(Generator::Content));
    for i in ["x1", "x2", "x3", "y1"] {
        m.upsert_item(i, Some(if i.starts_with('x') { "c9" } else { "c1" }), &["red"], 0);
    }
    m.upsert_item("z1", Some("c5"), &["red"], 0);
    for i in ["x1", "x2", "x3"] {
        m.interaction("fan", i, None, MINUTE);
    }
    let tag = m.attribute("red").unwrap();
    assert!(m.user("fan").unwrap().affinity().iter().any(|&(a, _)| a == tag));
    let mut listed = Vec::new();
    m.trending(Some(tag), &mut |item, _| listed.push(item));
    assert!(listed.contains(&m.item_index("z1").unwrap()), "a tag has its trending list");
    let recs = recommend(&m, "fan", 5);
    assert!(recs.contains(&"z1".to_owned()), "an item sharing only a tag is proposed: {recs:?}");
}

#[test]
fn placement_rules_boost_exclude_pin_and_cap() {
    let mut m = Recommender::new(RecommenderSpec::default());
    let items = [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("b2", "b")];
    for (i, c) in items {
        m.upsert_item(i, Some(c), &[], 0);
    }
    for (n, (i, _)) in items.iter().enumerate() {
        // a* more popular than b*.
        for u in 0..(10 - n) {
            m.interaction(&format!("u{u}"), i, None, MINUTE);
        }
    }
    let run = |placement: &Placement| {
        let mut out = Ranking::default();
        rank(&m, &Query { placement: Some(placement), ..Query::for_user("nobody", 5) }, &mut out);
        out.items.iter().map(|s| m.item_name(s.item).unwrap().to_owned()).collect::<Vec<_>>()
    };
    let boost = Placement {
        name: "b".into(),
        rules: vec![PlacementRule::Boost { category: "b".into(), factor: 100.0 }],
        max_per_category: 0,
    };
    assert!(run(&boost)[0].starts_with('b'));
    let exclude = Placement {
        name: "x".into(),
        rules: vec![PlacementRule::Exclude { category: "a".into() }],
        max_per_category: 0,
    };
    assert!(run(&exclude).iter().all(|i| i.starts_with('b')));
    let pin = Placement {
        name: "p".into(),
        rules: vec![PlacementRule::Pin { item: "b2".into(), position: 1 }],
        max_per_category: 0,
    };
    assert_eq!(run(&pin)[0], "b2");
    let cap = Placement { name: "c".into(), rules: vec![], max_per_category: 1 };
    let capped = run(&cap);
    assert_eq!(capped.len(), 2, "one per category: {capped:?}");
}

#[test]
fn zero_weight_event_types_are_ignored() {
    let spec = RecommenderSpec { event_weights: vec![("impression".into(), 0.0)], ..RecommenderSpec::default() };
    let mut m = Recommender::new(spec);
    m.interaction("u", "A", Some("impression"), 0);
    assert_eq!(m.item_count(), 0);
    m.interaction("u", "A", Some("view"), 0);
    assert_eq!(m.item_count(), 1);
}

#[test]
fn forgetting_a_user_makes_them_a_cold_start_in_the_model_and_the_view() {
    let mut m = covisited();
    let view = RecommenderView::new(m.spec().clone(), 0);
    view.publish(&mut m, true);
    assert!(view.user("u1").is_some());
    assert!(m.forget_user("u1"));
    view.publish(&mut m, true);
    assert!(m.user("u1").is_none());
    assert!(view.user("u1").is_none());
    assert!(!m.forget_user("u1"));
}

/// [`covisited`] with its items catalogued, a user who viewed A, and the
/// published view; with A's and B's indexes.
fn catalogued_covisits() -> (Recommender, RecommenderView, u32, u32) {
    let mut m = covisited();
    for item in ["A", "B", "C", "P"] {
        m.upsert_item(item, Some("c1"), &["t"], 0);
    }
    m.interaction("new", "A", Some("view"), 100 * MINUTE);
    let view = RecommenderView::new(m.spec().clone(), 0);
    view.publish(&mut m, true);
    let (a, b) = (m.item_index("A").unwrap(), m.item_index("B").unwrap());
    (m, view, a, b)
}

/// B, forgotten: nothing proposes it, in the model, its view or a restore
/// (not co-occurrence through A, not trending, not its category, not
/// similar items) until it is interacted with again.
#[test]
fn a_forgotten_item_is_recommended_by_nothing_until_it_comes_back() {
    let (mut m, view, a, b) = catalogued_covisits();
    assert_eq!(recommend(&m, "new", 1), vec!["B"]);
    assert!(lists(&m, a).iter().all(|items| items.contains(&b)), "B is proposed before it is forgotten");

    assert!(m.forget_item("B"));
    assert!(!m.forget_item("never-seen"));
    view.publish(&mut m, true);
    let restored = Recommender::restore(&m.snapshot(), m.spec().clone()).unwrap();
    for (model, lists) in [("model", lists(&m, a)), ("view", lists(&view, a)), ("restored", lists(&restored, a))] {
        for items in lists {
            assert!(!items.is_empty() && !items.contains(&b), "{model} proposed B: {items:?}");
        }
    }

    // A user who had B (u19 saw P, A, B, B a minute before) views another
    // item: it pairs with their other items, not with B, and does not follow B.
    m.interaction("u19", "Z", Some("view"), 61 * MINUTE);
    let z = m.item_index("Z").unwrap();
    assert!(m.item_state(z).neighbours.get(a) > 0.0, "Z pairs with A");
    assert_eq!(m.item_state(z).neighbours.get(b), 0.0, "Z paired with the forgotten B");
    assert_eq!((m.item_state(b).neighbours.len(), m.item_state(b).successors.len()), (0, 0));
    assert!(!recommend(&m, "u19", 10).contains(&"B".to_owned()), "B was u19's: never proposed to them");

    // Three users view A then B again: B is back, learnt from them alone.
    for u in 0..3 {
        m.interaction(&format!("again{u}"), "A", Some("view"), (200 + u) * MINUTE);
        m.interaction(&format!("again{u}"), "B", Some("view"), (200 + u) * MINUTE + 1);
    }
    assert!(recommend(&m, "new", 3).contains(&"B".to_owned()), "{:?}", recommend(&m, "new", 3));
    let weight = m.item_state(a).neighbours.get(b);
    assert!(weight > 0.0 && weight == m.item_state(b).neighbours.get(a), "A and B: {weight}");
    assert!(weight < 5.0, "counted from before the forget: {weight}");
}

/// B, out of stock: in no list of the model, its view (published at a
/// tick without items), a restore, or a pin, while it keeps learning and
/// seeding; back in every list once available again.
#[test]
fn an_unavailable_item_is_in_no_list_until_it_is_available_again() {
    let (mut m, view, a, b) = catalogued_covisits();
    assert!(lists(&m, a).iter().all(|items| items.contains(&b)), "B is proposed while available");

    assert!(m.set_available("B", false));
    assert!(!m.set_available("never-seen", false));
    assert!(!m.is_available(b) && m.is_available(a));
    view.publish(&mut m, false);
    let restored = Recommender::restore(&m.snapshot(), m.spec().clone()).unwrap();
    let pinned = Placement {
        name: "p".into(),
        rules: vec![PlacementRule::Pin { item: "B".into(), position: 1 }],
        max_per_category: 0,
    };
    let answers = [("model", lists(&m, a)), ("view", lists(&view, a)), ("restored", lists(&restored, a))];
    for (model, lists) in answers {
        for items in lists {
            assert!(!items.is_empty() && !items.contains(&b), "{model} proposed B: {items:?}");
        }
    }
    let mut out = Ranking::default();
    rank(&view, &Query { placement: Some(&pinned), ..Query::for_user("nobody", 3) }, &mut out);
    assert!(!out.items.iter().any(|s| s.item == b), "B was pinned while unavailable");

    // It still learns, and still seeds: a user who views it gets its neighbours.
    let before = m.item_state(b).neighbours.get(a);
    m.interaction("later", "A", Some("view"), 150 * MINUTE);
    m.interaction("later", "B", Some("view"), 150 * MINUTE + 1);
    assert!(m.item_state(b).neighbours.get(a) > before, "B learns while unavailable");
    m.interaction("seeker", "B", Some("view"), 151 * MINUTE);
    assert_eq!(recommend(&m, "seeker", 1), vec!["A"]);

    // Available again: back in every list, in the view at the next tick.
    assert!(m.set_available("B", true));
    view.publish(&mut m, false);
    for lists in [lists(&m, a), lists(&view, a)] {
        assert!(lists.iter().all(|items| items.contains(&b)), "B is not back: {lists:?}");
    }
    rank(&view, &Query { placement: Some(&pinned), ..Query::for_user("nobody", 3) }, &mut out);
    assert_eq!(out.items[0].item, b);
}

/// What `model` answers: recommendations for a user who saw A, for one
/// who saw P only, for an unknown user (trending), for an
/// unknown user on `a`'s page, and items similar to `a`.
fn lists(model: &impl ModelRead, a: u32) -> Vec<Vec<u32>> {
    let mut out = Ranking::default();
    let mut items = Vec::new();
    for (user, context) in [("new", &[][..]), ("u30", &[]), ("nobody", &[]), ("nobody", &[a])] {
        rank(model, &Query { context, ..Query::for_user(user, 10) }, &mut out);
        items.push(out.items.iter().map(|s| s.item).collect());
    }
    similar(model, a, 10, &mut out);
    items.push(out.items.iter().map(|s| s.item).collect());
    items
}

fn same_ranking(a: &impl ModelRead, b: &impl ModelRead, users: &[&str]) {
    for user in users {
        let (mut x, mut y) = (Ranking::default(), Ranking::default());
        rank(a, &Query::for_user(user, 10), &mut x);
        rank(b, &Query::for_user(user, 10), &mut y);
        assert_eq!(x.items, y.items, "user {user}");
    }
}

#[test]
fn the_published_view_ranks_exactly_like_the_live_model() {
    let mut m = covisited();
    m.upsert_item("A", Some("c1"), &["t"], 0);
    m.interaction("new", "A", Some("view"), 100 * MINUTE);
    let view = RecommenderView::new(m.spec().clone(), 0);
    view.publish(&mut m, true);
    same_ranking(&m, &view, &["new", "u1", "u22", "nobody"]);
    // Users publish at every tick; items wait for the item tick.
    m.interaction("new", "B", Some("view"), 101 * MINUTE);
    view.publish(&mut m, false);
    assert!(view.user("new").unwrap().has_seen(m.item_index("B").unwrap()));
    view.publish(&mut m, true);
    same_ranking(&m, &view, &["new", "u1"]);
}

#[test]
fn a_snapshot_restores_the_same_model() {
    let mut m = covisited();
    m.upsert_item("A", Some("c1"), &["t"], 0);
    let restored = Recommender::restore(&m.snapshot(), m.spec().clone()).unwrap();
    same_ranking(&m, &restored, &["u1", "u22", "nobody"]);
    m.interaction("u1", "C", None, 200 * MINUTE);
    let mut r2 = restored;
    r2.interaction("u1", "C", None, 200 * MINUTE);
    same_ranking(&m, &r2, &["u1", "u22"]);
    assert!(Recommender::restore(b"\xff\xff", m.spec().clone()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the stream: at most k items, no duplicates, none the user
    /// has seen, every one known; and a snapshot taken anywhere restores the
    /// same rankings.
    #[test]
    fn rankings_are_well_formed(
        events in prop::collection::vec((0u8..12, 0u8..40, 0i64..10_000), 1..300),
        k in 1usize..15,
    ) {
        let mut m = Recommender::new(RecommenderSpec { max_per_category: 3, ..RecommenderSpec::default() });
        for (n, &(u, i, t)) in events.iter().enumerate() {
            if n % 17 == 0 {
                m.upsert_item(&format!("i{i}"), Some(&format!("c{}", i % 4)), &[], t * 1000);
            }
            m.interaction(&format!("u{u}"), &format!("i{i}"), None, t * 1000);
        }
        let restored = Recommender::restore(&m.snapshot(), m.spec().clone()).unwrap();
        let mut out = Ranking::default();
        for u in 0..13u8 {
            let user = format!("u{u}");
            rank(&m, &Query::for_user(&user, k), &mut out);
            prop_assert!(out.items.len() <= k);
            let mut seen = std::collections::HashSet::new();
            for s in &out.items {
                prop_assert!(seen.insert(s.item), "duplicate item");
                prop_assert!(m.is_item(s.item));
                prop_assert!(!m.user(&user).is_some_and(|p| p.has_seen(s.item)), "seen item recommended");
            }
            let mut again = Ranking::default();
            rank(&restored, &Query::for_user(&user, k), &mut again);
            prop_assert_eq!(&out.items, &again.items);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever mix of events, forgets and user-only or full publications:
    /// after a full one the view ranks every user exactly like the model
    /// (nothing changed is left out of a publication).
    #[test]
    fn after_a_full_publication_the_view_ranks_like_the_model(
        steps in prop::collection::vec((0u8..8, 0u8..30, 0u8..20), 1..200),
    ) {
        let mut m = Recommender::new(RecommenderSpec::default());
        let view = RecommenderView::new(m.spec().clone(), 0);
        for (n, &(u, i, action)) in steps.iter().enumerate() {
            let (user, item, t) = (format!("u{u}"), format!("i{i}"), n as i64 * MINUTE);
            match action {
                0 => {
                    m.forget_user(&user);
                    view.remove_user(&user);
                }
                1 => m.upsert_item(&item, Some(&format!("c{}", i % 3)), &[], t),
                2 => {
                    view.publish(&mut m, false);
                }
                3 => {
                    view.publish(&mut m, true);
                }
                _ => m.interaction(&user, &item, None, t),
            }
        }
        view.publish(&mut m, true);
        for u in 0..8u8 {
            let user = format!("u{u}");
            let (mut x, mut y) = (Ranking::default(), Ranking::default());
            rank(&m, &Query::for_user(&user, 10), &mut x);
            rank(&view, &Query::for_user(&user, 10), &mut y);
            prop_assert_eq!(&x.items, &y.items, "user {}", user);
        }
    }
}

/// Spec with 4-dimensional embeddings.
fn embedded_spec() -> RecommenderSpec {
    let mut spec = RecommenderSpec::default();
    spec.embedding.dimension = Some(4);
    spec
}

/// Ten shoes pointing along the first axis, ten bags along the third, each
/// nudged a little; `s0` and `b0` are the exact axes.
fn embedded_catalog() -> Recommender {
    let mut m = Recommender::new(embedded_spec());
    for i in 0..10 {
        let nudge = i as f32 * 0.02;
        m.upsert_item_with_embedding(&format!("s{i}"), Some("shoes"), &[], &[1.0, nudge, 0.0, 0.0], 0).unwrap();
        m.upsert_item_with_embedding(&format!("b{i}"), Some("bags"), &[], &[0.0, 0.0, 1.0, nudge], 0).unwrap();
    }
    m
}

fn similar_names(
    model: &impl ModelRead,
    item: &str,
    k: usize,
    name: impl Fn(u32) -> String,
) -> Vec<(String, Vec<Generator>)> {
    let mut out = Ranking::default();
    similar(model, model.item_index(item).unwrap(), k, &mut out);
    out.items.iter().map(|s| (name(s.item), s.reasons().map(|(g, _)| g).collect())).collect()
}

#[test]
fn a_new_item_finds_its_embedding_neighbours_at_once() {
    let mut m = embedded_catalog();
    // A new shoe close to s3 (nudge 0.06), in no category at all: only its embedding links it.
    m.upsert_item_with_embedding("new", None, &[], &[1.0, 0.061, 0.0, 0.0], 1).unwrap();
    let similar = similar_names(&m, "new", 5, |i| m.item_name(i).unwrap().to_owned());
    assert_eq!(similar.len(), 5, "{similar:?}");
    assert_eq!(similar[0].0, "s3", "{similar:?}");
    for (item, reasons) in &similar {
        assert!(item.starts_with('s'), "a bag is similar to a shoe: {similar:?}");
        assert_eq!(reasons, &[Generator::Embedding], "{similar:?}");
    }
    // And the shoes find it: a user who saw s3 gets it, through its embedding, before any bag.
    m.interaction("u", "s3", Some("view"), 2);
    let mut out = Ranking::default();
    rank(&m, &Query::for_user("u", 20), &mut out);
    let new = m.item_index("new").unwrap();
    let at = out.items.iter().position(|s| s.item == new).expect("the new item is recommended");
    assert!(out.items[at].reasons().any(|(g, _)| g == Generator::Embedding));
    // The published view shares the index and ranks the same.
    let view = RecommenderView::new(m.spec().clone(), 0);
    view.publish(&mut m, true);
    assert_eq!(similar_names(&view, "new", 5, |i| view.item_name(i).unwrap().into()), similar);
    same_ranking(&m, &view, &["u", "nobody"]);
}

#[test]
fn a_wrong_dimension_is_rejected_but_the_item_is_catalogued() {
    let mut m = embedded_catalog();
    let err = m.upsert_item_with_embedding("odd", Some("shoes"), &[], &[1.0, 0.0, 0.0], 1).unwrap_err();
    assert_eq!(err, EmbeddingRejection::Dimension { expected: 4, actual: 3 });
    assert_eq!(err.to_string(), "embedding has dimension 3, expected 4");
    let odd = m.item_index("odd").expect("catalogued");
    assert!(m.embedding(odd).is_none());
    assert_eq!(m.category(odd), m.attribute("shoes"));
    // Its category still makes it similar to the shoes (content), never by embedding.
    let similar = similar_names(&m, "odd", 5, |i| m.item_name(i).unwrap().to_owned());
    assert!(!similar.is_empty() && similar.iter().all(|(i, r)| i.starts_with('s') && r == &[Generator::Content]));
    // A rejected update keeps the previous embedding.
    let s1 = m.item_index("s1").unwrap();
    let before = m.embedding(s1).cloned();
    assert!(m.upsert_item_with_embedding("s1", Some("shoes"), &[], &[0.0; 4], 2).is_err());
    assert_eq!(m.embedding(s1).cloned(), before);
    // Off: nothing is kept, the item still is.
    let mut off = Recommender::new(RecommenderSpec::default());
    assert_eq!(off.upsert_item_with_embedding("x", None, &[], &[1.0; 4], 0), Err(EmbeddingRejection::Disabled));
    assert_eq!(off.item_count(), 1);
    assert!(off.embedding_index().is_none());
}

/// The items similar to `item` that its embedding proposed.
fn by_embedding(m: &Recommender, item: &str) -> Vec<String> {
    similar_names(m, item, 10, |i| m.item_name(i).unwrap().to_owned())
        .into_iter()
        .filter(|(_, r)| r.contains(&Generator::Embedding))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_replaced_embedding_moves_the_item_and_a_snapshot_keeps_it() {
    let mut m = embedded_catalog();
    // s9 becomes a bag by its vector.
    m.upsert_item_with_embedding("s9", Some("shoes"), &[], &[0.0, 0.0, 1.0, 0.05], 3).unwrap();
    assert!(by_embedding(&m, "b2").contains(&"s9".to_owned()), "{:?}", by_embedding(&m, "b2"));
    assert!(!by_embedding(&m, "s0").contains(&"s9".to_owned()), "{:?}", by_embedding(&m, "s0"));
    m.interaction("u", "b2", None, 4);
    let restored = Recommender::restore(&m.snapshot(), m.spec().clone()).unwrap();
    assert_eq!(restored.embedding_index().unwrap().points(), 20, "stale points are not restored");
    for item in ["b2", "s0", "s9"] {
        assert_eq!(by_embedding(&restored, item), by_embedding(&m, item), "{item}");
    }
    same_ranking(&m, &restored, &["u"]);
    // Restored without a dimension: embeddings are dropped, nothing else is.
    let off = Recommender::restore(&m.snapshot(), RecommenderSpec::default()).unwrap();
    assert!(off.embedding_index().is_none() && off.embedding(0).is_none());
    assert_eq!(off.item_count(), 20);
    // A snapshot of a model without embeddings is the model alone, as before.
    let mut plain = covisited();
    assert_eq!(plain.snapshot(), postcard::to_stdvec(&plain).unwrap());
}

#[test]
fn a_forgotten_item_leaves_the_embedding_neighbours_until_it_has_a_vector_again() {
    let mut m = embedded_catalog();
    assert!(by_embedding(&m, "s2").contains(&"s3".to_owned()));
    assert!(m.forget_item("s3"));
    assert!(m.embedding(m.item_index("s3").unwrap()).is_none());
    let restored = Recommender::restore(&m.snapshot(), m.spec().clone()).unwrap();
    assert_eq!(restored.embedding_index().unwrap().points(), 19, "a forgotten vector is not restored");
    for model in [&m, &restored] {
        let near = by_embedding(model, "s2");
        assert!(near.len() >= 5 && !near.contains(&"s3".to_owned()), "{near:?}");
    }
    // A vector again (the one it had): found again, once.
    m.upsert_item_with_embedding("s3", Some("shoes"), &[], &[1.0, 0.06, 0.0, 0.0], 5).unwrap();
    let near = by_embedding(&m, "s2");
    assert_eq!(near.iter().filter(|i| *i == "s3").count(), 1, "{near:?}");
}

/// Dunning's ratio on the tables of Mahout's tests (1 0 / 0 1 and 10 0 / 0 10), as a root.
#[test]
fn root_llr_matches_known_ratios_and_ignores_pairs_at_or_below_chance() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(root_llr(1.0, 1.0, 1.0, 2.0), 2.772588722239781f64.sqrt()));
    assert!(close(root_llr(10.0, 10.0, 10.0, 20.0), 27.72588722239781f64.sqrt()));
    assert!(close(root_llr(3.0, 10.0, 5.0, 100.0), root_llr(3.0, 5.0, 10.0, 100.0)), "symmetric");
    // Exactly as often as chance (10 of 20 with an item half the users have), less often, or not at all: 0.
    assert_eq!(root_llr(10.0, 20.0, 200.0, 400.0), 0.0);
    assert_eq!(root_llr(1.0, 20.0, 200.0, 400.0), 0.0);
    assert_eq!(root_llr(0.0, 20.0, 200.0, 400.0), 0.0);
    // A count above the smaller item's users (event weights) is clamped to it.
    assert_eq!(root_llr(50.0, 10.0, 10.0, 20.0), root_llr(10.0, 10.0, 10.0, 20.0));
}

/// Fifteen users view A then B (B's only pairs); five view A then P, which
/// 190 others view with other items: P is paired with A less often than
/// its share of all pairs predicts. The cosine proposes both; the
/// log-likelihood ratio B only, in the live model, its published view and
/// a restore alike.
#[test]
fn llr_proposes_what_co_occurs_more_than_popularity_explains() {
    let world = |normalisation| {
        let mut spec = RecommenderSpec::default();
        spec.cooccurrence.normalisation = normalisation;
        let mut m = Recommender::new(spec);
        let mut t = 0;
        let mut views = |m: &mut Recommender, user: String, items: &[&str]| {
            for item in items {
                t += MINUTE;
                m.interaction(&user, item, Some("view"), t);
            }
        };
        for u in 0..15 {
            views(&mut m, format!("ab{u}"), &["A", "B"]);
        }
        for u in 0..5 {
            views(&mut m, format!("ap{u}"), &["A", "P"]);
        }
        for u in 0..190 {
            views(&mut m, format!("p{u}"), &["P", &format!("X{}", u % 10)]);
        }
        views(&mut m, "q".into(), &["A"]);
        m
    };
    let cooccurring = |model: &dyn Fn(&mut Ranking)| {
        let mut out = Ranking::default();
        model(&mut out);
        out.items.iter().filter(|s| s.parts[Generator::Cooccurrence.index()] > 0.0).map(|s| s.item).collect::<Vec<_>>()
    };
    let query = Query::for_user("q", 10);
    let cosine = world(Normalisation::Cosine);
    let (b, p) = (cosine.item_index("B").unwrap(), cosine.item_index("P").unwrap());
    assert_eq!(cooccurring(&|out| rank(&cosine, &query, out)), [b, p]);
    let mut llr = world(Normalisation::Llr);
    assert_eq!(cooccurring(&|out| rank(&llr, &query, out)), [b]);
    let view = RecommenderView::new(llr.spec().clone(), 0);
    view.publish(&mut llr, true);
    assert_eq!(cooccurring(&|out| rank(&view, &query, out)), [b]);
    same_ranking(&llr, &view, &["q", "ab1", "ap1", "p1", "nobody"]);
    let restored = Recommender::restore(&llr.snapshot(), llr.spec().clone()).unwrap();
    same_ranking(&llr, &restored, &["q", "ab1", "ap1", "p1", "nobody"]);
}
