//! Reads of a group's features: a read of an entity (a user, an item) is
//! answered here when this process runs the task that owns the entity's
//! partition, and otherwise by the process that does, which the group's
//! members topic names ([`freshet_io::kafka::members`]); the HTTP layer
//! forwards it there (`crate::http::group`). Recommendations are answered
//! by every process from its own replica of the recommender
//! ([`super::replica`]).
//!
//! An entity's served features all live in one half of its task: the input
//! half when they are keyed by the source's `partition_key` (the entity's
//! partition is then the producers': the source's `partitioner` of the
//! key), the repartitioned half otherwise (CRC-32, as the repartition topic
//! is written).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use freshet_engine::features::{Entity, Views};
use freshet_io::kafka::keys::Partitioner;
use freshet_io::kafka::members::{Members, UNSERVED_PREFIX};
use freshet_io::kafka::tombstones::Tombstones;

use super::Half;
use crate::config::plan::Plan;
use crate::topology::Recommending;

/// Where a read is answered.
pub enum Located {
    /// Here, from these views (empty when no feature of the entity is served).
    Here(Views),
    /// By the process at this address.
    At(String),
    /// Nowhere right now (a task is starting, or the group is rebalancing); the message says why.
    Unavailable(String),
}

/// What answers recommendations here.
pub enum Recommender {
    /// Nothing: the job has no recommender.
    Absent,
    /// Its replica is starting (restoring its checkpoint, or not started yet).
    Starting,
    /// The replica's published model.
    Ready(Recommending),
}

/// What a group process needs to answer or forward a read.
pub struct Reads {
    /// Per entity: the half serving it and how its ids map to partitions.
    routes: Vec<(Entity, Half, Partitioner)>,
    /// This process's address as other members reach it.
    advertised: String,
    partitions: OnceLock<usize>,
    members: OnceLock<Arc<Members>>,
    /// Where a forgotten entity's tombstone goes (when the source forgets on tombstones).
    tombstones: OnceLock<Arc<Tombstones>>,
    local: Mutex<Local>,
    /// Whether the job has a recommender.
    has_recommender: bool,
    /// What its source's tombstones forget (`forget_on_tombstone`).
    forgets: Option<Entity>,
    /// Its replica's model, once the replica runs here.
    replica: RwLock<Option<Recommending>>,
}

/// The tasks of this process, and the views of its running halves.
#[derive(Default)]
struct Local {
    owned: Vec<u32>,
    views: BTreeMap<(u32, Half), Views>,
}

impl Reads {
    /// The reads of `plan`'s group as answered by the process reachable at `advertised`.
    pub fn new(plan: &Plan, advertised: String) -> Arc<Self> {
        let source = super::grouped_source(plan).map(|(_, k)| k);
        let key = source.and_then(|k| k.partition_key.as_deref()).unwrap_or_default();
        let partitioner = source.map(|k| k.partitioner).unwrap_or_default();
        let mut routes: Vec<(Entity, Half, Partitioner)> = Vec::new();
        for f in plan.pipeline.features.iter().filter(|f| f.serve && f.entity != Entity::None) {
            let half = Half::of(&f.key, key);
            let by = if half == Half::Input { partitioner } else { Partitioner::ConsistentRandom };
            let route = (f.entity, half, by);
            match routes.iter().find(|r| r.0 == f.entity) {
                None => routes.push(route),
                Some(r) if *r != route => tracing::warn!(
                    feature = f.name.as_str(),
                    "Served features of one entity are computed by both halves of a task; reads answer from the first's."
                ),
                Some(_) => {}
            }
        }
        Arc::new(Self {
            routes,
            advertised,
            partitions: OnceLock::new(),
            members: OnceLock::new(),
            tombstones: OnceLock::new(),
            local: Mutex::new(Local::default()),
            has_recommender: plan.pipeline.recommender.is_some(),
            forgets: source.and_then(|k| k.forget_on_tombstone),
            replica: RwLock::new(None),
        })
    }

    /// This process's address as other members reach it.
    pub fn advertised(&self) -> &str {
        &self.advertised
    }

    /// Where a read of entity `id` is answered.
    pub fn locate(&self, entity: Entity, id: &str) -> Located {
        let Some(&(_, half, partitioner)) = self.routes.iter().find(|r| r.0 == entity) else {
            return Located::Here(Views::default());
        };
        let Some(&partitions) = self.partitions.get() else {
            return Located::Unavailable("this process has not joined its group yet".into());
        };
        let partition = partitioner.partition(id.as_bytes(), partitions);
        {
            let local = self.lock();
            if local.owned.contains(&partition) {
                return match local.views.get(&(partition, half)) {
                    Some(views) => Located::Here(views.clone()),
                    None => Located::Unavailable(format!("task {partition} is starting here (restoring its state)")),
                };
            }
        }
        match self.members.get().and_then(|m| m.owner(partition)) {
            Some(owner) if owner.starts_with(UNSERVED_PREFIX) => Located::Unavailable(format!(
                "task {partition} runs on a process of the group that serves no HTTP API (started without --listen)"
            )),
            Some(owner) if owner != self.advertised => Located::At(owner),
            _ => Located::Unavailable(format!(
                "no process has announced task {partition} yet (the group is rebalancing)"
            )),
        }
    }

    /// What answers a recommendation here.
    pub fn recommender(&self) -> Recommender {
        if !self.has_recommender {
            return Recommender::Absent;
        }
        match &*self.replica.read().unwrap_or_else(|e| e.into_inner()) {
            Some(r) => Recommender::Ready(r.clone()),
            None => Recommender::Starting,
        }
    }

    /// The recommender's replica started here: its model answers recommendations.
    pub(super) fn replica_started(&self, recommending: Recommending) {
        *self.replica.write().unwrap_or_else(|e| e.into_inner()) = Some(recommending);
    }

    /// The group was joined: the topic has `partitions`, `members` says
    /// who owns which, and `tombstones` (if the source forgets on
    /// tombstones) forget an entity through the topic.
    pub(super) fn joined(&self, partitions: usize, members: Arc<Members>, tombstones: Option<Tombstones>) {
        let _ = self.partitions.set(partitions);
        let _ = self.members.set(members);
        if let Some(t) = tombstones {
            let _ = self.tombstones.set(Arc::new(t));
        }
    }

    /// What forgets an entity: a tombstone in the source topic, read in
    /// order by the task of its partition (which passes an item on to its
    /// repartitioned task) and by every replica of the recommender. `None`
    /// when the source does not forget on tombstones, or before the group
    /// was joined.
    pub fn tombstones(&self) -> Option<Arc<Tombstones>> {
        self.tombstones.get().cloned()
    }

    /// What the source's tombstones forget, if it forgets on tombstones.
    pub fn forgets(&self) -> Option<Entity> {
        self.forgets
    }

    /// The group assigned `owned` to this process (the group loop tells the others).
    pub(super) fn assigned(&self, owned: &[u32]) {
        self.lock().owned = owned.to_vec();
    }

    /// A half started here: its views answer reads.
    pub(super) fn started(&self, key: (u32, Half), views: Views) {
        self.lock().views.insert(key, views);
    }

    /// A half stopped here.
    pub(super) fn stopped(&self, key: (u32, Half)) {
        self.lock().views.remove(&key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}
