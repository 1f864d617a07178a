//! Attribution: which served list an interaction came from.
//!
//! Every answer of `/v1/recommend` and `/similar` gets a recommendation id,
//! and the answer's items are kept here, in a ring of the last
//! `attributed_answers` answers (one slot per answer, its item buffer
//! reused: no allocation per answer once the ring has gone round). An
//! interaction event that carries a recommendation id (the recommender's
//! `attribution_field`) is then attributed by the shard that learns it: to
//! its answer's placement, to the item's position in the list, and to the
//! generators that proposed the item. What is counted is what a recommender
//! service's user reads to compare placements and generators online:
//! answers served, and interactions (clicks, carts, purchases, by type) that
//! followed them.
//!
//! An id is `r-<tag>-<n>`: `tag` is this process's start (hex ms, so ids
//! stay unique across restarts) and `n` counts answers. An interaction with
//! an id of another process (a group's member, or this process before a
//! restart) or of an answer the ring has dropped is counted as not served
//! here, and one whose item was not in the answer's list as not in the list.
//!
//! A mutex per slot (taken by one answer and by the rare attributed
//! interaction, so uncontended) and one for the counts: hand-written because
//! no crate keeps a fixed ring of recent answers by sequence number.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::GENERATORS;
use super::rank::Scored;

/// What a served list was asked for: its placement's index (0: none), or similar items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Asked {
    /// `/v1/recommend`, with the placement's index in the configured order plus one (0: no placement).
    Recommend(u32),
    /// `/v1/items/{id}/similar`.
    Similar,
}

/// One served list.
#[derive(Debug, Default)]
struct Served {
    /// The answer's number (0: the slot is empty).
    answer: u64,
    asked: Option<Asked>,
    /// The items, best first, each with the generators that proposed it (bit `g`).
    items: Vec<(u32, u8)>,
}

/// What interactions with served items added up to (see [`Attribution::counts`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Answers served, by what was asked.
    pub served: BTreeMap<Asked, u64>,
    /// Attributed interactions, by what was asked and event type ("" when the event has none).
    pub interactions: BTreeMap<(Asked, String), u64>,
    /// Attributed interactions by the item's position in its list (index 0: position 1).
    pub positions: Vec<u64>,
    /// Attributed interactions by generator that proposed the item (indexed by `Generator::index`).
    pub generators: [u64; GENERATORS],
    /// Interactions with an id of another process, or of an answer no longer kept.
    pub not_served_here: u64,
    /// Interactions with an id of a kept answer whose list did not hold the item.
    pub not_in_list: u64,
}

/// An interaction's attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attributed {
    /// To an answer: what was asked, the item's position (1-based), its generators (bit `g`).
    To {
        /// What the answer was asked for.
        asked: Asked,
        /// The item's position in the list, 1-based.
        position: usize,
        /// The generators that proposed the item, one bit each.
        generators: u8,
    },
    /// The id is not of an answer this process still keeps.
    NotServedHere,
    /// The answer's list did not hold the item.
    NotInList,
}

/// The ring of recent answers and the counts of what followed them.
#[derive(Debug)]
pub struct Attribution {
    tag: String,
    next: AtomicU64,
    slots: Box<[Mutex<Served>]>,
    counts: Mutex<Counts>,
}

impl Attribution {
    /// Keeps the last `answers` answers (0: ids are still given, nothing is
    /// attributed); `started_ms` (wall clock, passed in by the runtime) tags the ids.
    pub fn new(answers: usize, started_ms: i64) -> Self {
        Self {
            tag: format!("{started_ms:x}"),
            next: AtomicU64::new(1),
            slots: (0..answers).map(|_| Mutex::default()).collect(),
            counts: Mutex::default(),
        }
    }

    /// Keeps a served list and returns its recommendation id.
    pub fn serve(&self, asked: Asked, items: &[Scored]) -> String {
        let answer = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.slot(answer) {
            let mut served = lock(slot);
            served.answer = answer;
            served.asked = Some(asked);
            served.items.clear();
            served.items.extend(items.iter().map(|s| (s.item, generator_bits(s))));
        }
        *lock(&self.counts).served.entry(asked).or_default() += 1;
        format!("r-{}-{answer}", self.tag)
    }

    /// Attributes an interaction with `item` (the model's index) that
    /// carried recommendation id `id`, of event type `event_type`.
    pub fn interaction(&self, id: &str, item: u32, event_type: Option<&str>) -> Attributed {
        let found = self.answer_number(id).and_then(|answer| {
            let served = lock(self.slot(answer)?);
            let asked = served.asked.filter(|_| served.answer == answer)?;
            Some(match served.items.iter().position(|&(i, _)| i == item) {
                Some(at) => Attributed::To { asked, position: at + 1, generators: served.items[at].1 },
                None => Attributed::NotInList,
            })
        });
        let outcome = found.unwrap_or(Attributed::NotServedHere);
        let mut counts = lock(&self.counts);
        match outcome {
            Attributed::To { asked, position, generators } => {
                *counts.interactions.entry((asked, event_type.unwrap_or("").to_owned())).or_default() += 1;
                if counts.positions.len() < position {
                    counts.positions.resize(position, 0);
                }
                counts.positions[position - 1] += 1;
                for (g, n) in counts.generators.iter_mut().enumerate() {
                    *n += u64::from(generators >> g & 1);
                }
            }
            Attributed::NotServedHere => counts.not_served_here += 1,
            Attributed::NotInList => counts.not_in_list += 1,
        }
        outcome
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        lock(&self.counts).clone()
    }

    /// The answer number of an id of this process.
    fn answer_number(&self, id: &str) -> Option<u64> {
        let rest = id.strip_prefix("r-")?.strip_prefix(self.tag.as_str())?.strip_prefix('-')?;
        rest.parse().ok()
    }

    fn slot(&self, answer: u64) -> Option<&Mutex<Served>> {
        let len = self.slots.len() as u64;
        (len > 0).then(|| &self.slots[(answer % len) as usize])
    }
}

/// The generators behind a ranked item, one bit each.
fn generator_bits(scored: &Scored) -> u8 {
    scored.parts.iter().enumerate().fold(0, |bits, (g, &part)| bits | (u8::from(part > 0.0) << g))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::Generator;

    fn scored(item: u32, generators: &[Generator]) -> Scored {
        let mut parts = [0.0; GENERATORS];
        for g in generators {
            parts[g.index()] = 0.5;
        }
        Scored { item, score: parts.iter().sum(), parts }
    }

    #[test]
    fn interactions_are_attributed_to_the_answer_position_and_generators() {
        let a = Attribution::new(4, 0x19b7c2a4e10);
        let list = [scored(7, &[Generator::Cooccurrence]), scored(3, &[Generator::Cooccurrence, Generator::Sequence])];
        let home = a.serve(Asked::Recommend(1), &list);
        let similar = a.serve(Asked::Similar, &list[..1]);
        assert_ne!(home, similar);
        let to = |asked, position, generators: &[Generator]| Attributed::To {
            asked,
            position,
            generators: generators.iter().fold(0, |b, g| b | 1 << g.index()),
        };
        assert_eq!(
            a.interaction(&home, 3, Some("click")),
            to(Asked::Recommend(1), 2, &[Generator::Cooccurrence, Generator::Sequence])
        );
        assert_eq!(
            a.interaction(&home, 3, Some("purchase")),
            to(Asked::Recommend(1), 2, &[Generator::Cooccurrence, Generator::Sequence])
        );
        assert_eq!(a.interaction(&similar, 7, None), to(Asked::Similar, 1, &[Generator::Cooccurrence]));
        assert_eq!(a.interaction(&similar, 3, Some("click")), Attributed::NotInList);
        // Another process's id (or this one's before a restart), and no id at all.
        assert_eq!(a.interaction("r-1-1", 7, None), Attributed::NotServedHere);
        assert_eq!(a.interaction("nonsense", 7, None), Attributed::NotServedHere);
        let counts = a.counts();
        assert_eq!(counts.served, BTreeMap::from([(Asked::Recommend(1), 1), (Asked::Similar, 1)]));
        assert_eq!(
            counts.interactions,
            BTreeMap::from([
                ((Asked::Recommend(1), "click".to_owned()), 1),
                ((Asked::Recommend(1), "purchase".to_owned()), 1),
                ((Asked::Similar, String::new()), 1),
            ])
        );
        assert_eq!(counts.positions, vec![1, 2]);
        assert_eq!(counts.generators[Generator::Cooccurrence.index()], 3);
        assert_eq!(counts.generators[Generator::Sequence.index()], 2);
        assert_eq!((counts.not_served_here, counts.not_in_list), (2, 1));
    }

    #[test]
    fn the_ring_keeps_the_last_answers_only() {
        let a = Attribution::new(2, 0x19b7c2a4e10);
        let ids: Vec<String> =
            (0..3).map(|i| a.serve(Asked::Recommend(0), &[scored(i, &[Generator::Trending])])).collect();
        // The third answer took the first one's slot.
        assert_eq!(a.interaction(&ids[0], 0, None), Attributed::NotServedHere);
        assert!(matches!(a.interaction(&ids[1], 1, None), Attributed::To { position: 1, .. }));
        assert!(matches!(a.interaction(&ids[2], 2, None), Attributed::To { position: 1, .. }));
        // With no ring, ids are still given and nothing is attributed.
        let none = Attribution::new(0, 0x19b7c2a4e10);
        let id = none.serve(Asked::Similar, &[scored(1, &[])]);
        assert_eq!(none.interaction(&id, 1, None), Attributed::NotServedHere);
        assert_eq!(none.counts().served[&Asked::Similar], 1);
    }
}
