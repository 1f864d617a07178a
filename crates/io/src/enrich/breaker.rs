//! The circuit breaker of an enrichment stage: a count-based sliding window
//! with Resilience4j's semantics, behind one mutex, with time passed in so the
//! state machine is tested without sleeping. It decides and records; it does
//! not call, sleep, log or count (its transition hook does that).
//!
//! Hand-written rather than a crate: `failsafe` has no count-based window with
//! a minimum number of calls and no hook on transitions, which is what the
//! metrics and logs need; the whole machine is a hundred lines.
//!
//! - **Closed**: every attempt is admitted and its outcome recorded in a ring
//!   of the last `window` outcomes. Once the ring holds at least `min_calls`,
//!   a failure rate at or above `failure_rate` opens the breaker.
//! - **Open**: every attempt is rejected until `open_for` has passed; the
//!   next attempt after that half-opens it (lazily: [`Breaker::state`] says
//!   Open until someone asks to call).
//! - **HalfOpen**: `half_open_probes` attempts are admitted, others rejected.
//!   All succeed: Closed, with an empty window. One fails: Open again.
//!
//! An admitted attempt holds a [`Permit`]. Outcomes of permits admitted
//! before the last transition are ignored (a slow call started while Closed
//! must not count as a half-open probe), and a permit dropped unrecorded (the
//! caller was cancelled) frees its probe slot.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::BreakerConfig;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls fail fast without reaching the service.
    Open,
    /// A few trial calls decide between closing and reopening.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`: the value of metric and log labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The state gauge's value: 0 closed, 1 open, 2 half-open.
    pub(crate) fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// A change of state, as reported to the breaker's hook.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    /// The failure rate that opened the breaker (transitions to Open only).
    pub failure_rate: Option<f64>,
}

/// Called after every transition, outside the lock.
pub(crate) type Hook = Box<dyn Fn(&Transition) + Send + Sync>;

/// A circuit breaker; see the module doc.
pub(crate) struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    hook: Hook,
}

struct Inner {
    phase: Phase,
    /// Bumped on every transition; a permit records only into its own.
    generation: u64,
    window: Window,
}

enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: usize, succeeded: usize },
}

/// The outcomes of the last `capacity` attempts (true: failed).
struct Window {
    outcomes: VecDeque<bool>,
    failures: usize,
    capacity: usize,
}

impl Window {
    fn push(&mut self, failed: bool) {
        if self.outcomes.len() == self.capacity && self.outcomes.pop_front() == Some(true) {
            self.failures -= 1;
        }
        self.outcomes.push_back(failed);
        self.failures += usize::from(failed);
    }

    fn failure_rate(&self) -> f64 {
        self.failures as f64 / self.outcomes.len().max(1) as f64
    }

    fn clear(&mut self) {
        self.outcomes.clear();
        self.failures = 0;
    }
}

impl Breaker {
    /// A closed breaker. `config` must have passed [`HttpEnrichConfig::check`].
    ///
    /// [`HttpEnrichConfig::check`]: super::HttpEnrichConfig::check
    pub fn new(config: BreakerConfig, hook: Hook) -> Self {
        let window = Window { outcomes: VecDeque::with_capacity(config.window), failures: 0, capacity: config.window };
        Breaker { config, inner: Mutex::new(Inner { phase: Phase::Closed, generation: 0, window }), hook }
    }

    /// The current state (Open until a call after `open_for` half-opens it).
    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether an attempt at `now` would be rejected; changes nothing. Lets a
    /// caller fail fast before it queues for an in-flight slot.
    pub fn rejects(&self, now: Instant) -> bool {
        match self.lock().phase {
            Phase::Closed => false,
            Phase::Open { until } => now < until,
            Phase::HalfOpen { admitted, .. } => admitted >= self.config.half_open_probes,
        }
    }

    /// Admits an attempt at `now`, or rejects it (`None`).
    pub fn try_acquire(&self, now: Instant) -> Option<Permit<'_>> {
        let probes = self.config.half_open_probes;
        let mut transition = None;
        let admitted = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            match &mut inner.phase {
                Phase::Closed => true,
                Phase::Open { until } if now < *until => false,
                Phase::Open { .. } => {
                    inner.phase = Phase::HalfOpen { admitted: 1, succeeded: 0 };
                    inner.generation += 1;
                    transition =
                        Some(Transition { from: BreakerState::Open, to: BreakerState::HalfOpen, failure_rate: None });
                    true
                }
                Phase::HalfOpen { admitted, .. } if *admitted < probes => {
                    *admitted += 1;
                    true
                }
                Phase::HalfOpen { .. } => false,
            }
            .then_some(inner.generation)
        };
        self.report(transition);
        admitted.map(|generation| Permit { breaker: self, generation, settled: false })
    }

    /// Records an admitted attempt's outcome.
    fn record(&self, generation: u64, success: bool, now: Instant) {
        let mut transition = None;
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if inner.generation != generation {
                return;
            }
            let open = |from, failure_rate| {
                let t = Transition { from, to: BreakerState::Open, failure_rate: Some(failure_rate) };
                (Phase::Open { until: now + self.config.open_for }, t)
            };
            let next = match &mut inner.phase {
                Phase::Closed => {
                    inner.window.push(!success);
                    let rate = inner.window.failure_rate();
                    let enough = inner.window.outcomes.len() >= self.config.min_calls;
                    (enough && rate >= self.config.failure_rate).then(|| open(BreakerState::Closed, rate))
                }
                Phase::HalfOpen { succeeded, .. } if success => {
                    *succeeded += 1;
                    (*succeeded >= self.config.half_open_probes).then(|| {
                        let t =
                            Transition { from: BreakerState::HalfOpen, to: BreakerState::Closed, failure_rate: None };
                        (Phase::Closed, t)
                    })
                }
                Phase::HalfOpen { succeeded, .. } => {
                    Some(open(BreakerState::HalfOpen, 1.0 / (*succeeded as f64 + 1.0)))
                }
                // No permit is issued while Open, and opening bumps the generation.
                Phase::Open { .. } => None,
            };
            if let Some((phase, t)) = next {
                inner.phase = phase;
                inner.generation += 1;
                inner.window.clear();
                transition = Some(t);
            }
        }
        self.report(transition);
    }

    /// Frees a half-open probe slot whose attempt ended without an outcome.
    fn release(&self, generation: u64) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.generation == generation
            && let Phase::HalfOpen { admitted, .. } = &mut inner.phase
        {
            *admitted -= 1;
        }
    }

    fn report(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            (self.hook)(&t);
        }
    }

    /// The state is consistent between statements (nothing panics while the
    /// lock is held and the hook runs outside it), so a poisoned lock is usable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Leave to make one attempt. Record its outcome with [`Permit::record`];
/// dropping the permit unrecorded (the attempt was cancelled, or failed in a
/// way that says nothing about the service) records nothing.
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    generation: u64,
    settled: bool,
}

impl Permit<'_> {
    /// Records the attempt: `success` unless it failed in a retryable way.
    pub fn record(mut self, success: bool, now: Instant) {
        self.settled = true;
        self.breaker.record(self.generation, success, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.release(self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use BreakerState::{Closed, HalfOpen, Open};

    const OPEN_FOR: Duration = Duration::from_secs(10);

    /// The transitions a breaker reported, as (from, to).
    type Seen = Arc<Mutex<Vec<(BreakerState, BreakerState)>>>;

    /// A breaker (window 4, min 4 calls, opens at 50 %, 2 probes) and the
    /// transitions it reports.
    fn breaker() -> (Breaker, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let config =
            BreakerConfig { window: 4, min_calls: 4, failure_rate: 0.5, open_for: OPEN_FOR, half_open_probes: 2 };
        let hook = Box::new(move |t: &Transition| sink.lock().unwrap().push((t.from, t.to)));
        (Breaker::new(config, hook), seen)
    }

    /// Admits and records one attempt; false if it was rejected.
    fn call(b: &Breaker, now: Instant, success: bool) -> bool {
        match b.try_acquire(now) {
            Some(p) => {
                p.record(success, now);
                true
            }
            None => false,
        }
    }

    /// Opens `b` at `t0` with four failures.
    fn open(b: &Breaker, t0: Instant) {
        for _ in 0..4 {
            assert!(call(b, t0, false));
        }
        assert_eq!(b.state(), Open);
    }

    #[test]
    fn stays_closed_until_min_calls_are_recorded() {
        let (b, seen) = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(call(&b, t0, false));
        }
        assert_eq!(b.state(), Closed, "3 failures < min_calls 4");
        assert!(call(&b, t0, false));
        assert_eq!(b.state(), Open);
        assert_eq!(*seen.lock().unwrap(), [(Closed, Open)]);
    }

    #[test]
    fn opens_at_the_failure_rate_over_the_last_window_calls() {
        let (b, _) = breaker();
        let t0 = Instant::now();
        // S S S F: 25 % over the last 4.
        for ok in [true, true, true, false] {
            assert!(call(&b, t0, ok));
        }
        assert_eq!(b.state(), Closed);
        // F: the oldest success slides out; S S F F is 50 %.
        assert!(call(&b, t0, false));
        assert_eq!(b.state(), Open);
    }

    #[test]
    fn successes_in_the_window_keep_it_closed() {
        let (b, _) = breaker();
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(call(&b, t0, i % 4 != 0), "call {i} rejected"); // 25 % over any 4
        }
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn open_rejects_until_open_for_has_passed_then_half_opens() {
        let (b, seen) = breaker();
        let t0 = Instant::now();
        open(&b, t0);
        assert!(b.rejects(t0 + OPEN_FOR - Duration::from_millis(1)));
        assert!(b.try_acquire(t0 + OPEN_FOR - Duration::from_millis(1)).is_none());
        assert_eq!(b.state(), Open);
        assert!(!b.rejects(t0 + OPEN_FOR));
        assert_eq!(b.state(), Open, "rejects() changes nothing");
        let probe = b.try_acquire(t0 + OPEN_FOR);
        assert!(probe.is_some());
        assert_eq!(b.state(), HalfOpen);
        assert_eq!(*seen.lock().unwrap(), [(Closed, Open), (Open, HalfOpen)]);
    }

    #[test]
    fn half_open_admits_only_the_probes_and_closes_when_all_succeed() {
        let (b, seen) = breaker();
        let t0 = Instant::now();
        open(&b, t0);
        let t1 = t0 + OPEN_FOR;
        let p1 = b.try_acquire(t1).unwrap();
        let p2 = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_none(), "a third call while 2 probes are out");
        assert!(b.rejects(t1));
        p1.record(true, t1);
        assert_eq!(b.state(), HalfOpen, "one of two probes");
        p2.record(true, t1);
        assert_eq!(b.state(), Closed);
        assert_eq!(*seen.lock().unwrap(), [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]);
        // The window was reset: three failures do not reopen it.
        for _ in 0..3 {
            call(&b, t1, false);
        }
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_another_open_for() {
        let (b, seen) = breaker();
        let t0 = Instant::now();
        open(&b, t0);
        let t1 = t0 + OPEN_FOR;
        assert!(call(&b, t1, true));
        assert!(call(&b, t1, false));
        assert_eq!(b.state(), Open);
        assert!(b.try_acquire(t1 + OPEN_FOR - Duration::from_millis(1)).is_none());
        assert!(b.try_acquire(t1 + OPEN_FOR).is_some());
        let seen = seen.lock().unwrap();
        assert_eq!(seen[2], (HalfOpen, Open));
    }

    #[test]
    fn outcomes_of_permits_from_before_a_transition_are_ignored() {
        let (b, _) = breaker();
        let t0 = Instant::now();
        let slow = b.try_acquire(t0).unwrap(); // admitted while Closed
        open(&b, t0);
        let t1 = t0 + OPEN_FOR;
        let probe = b.try_acquire(t1).unwrap();
        slow.record(false, t1); // must not count as a failed probe
        assert_eq!(b.state(), HalfOpen);
        probe.record(true, t1);
        assert!(call(&b, t1, true));
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn a_dropped_probe_frees_its_slot() {
        let (b, _) = breaker();
        let t0 = Instant::now();
        open(&b, t0);
        let t1 = t0 + OPEN_FOR;
        let p1 = b.try_acquire(t1).unwrap();
        let p2 = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_none());
        drop(p2);
        let p3 = b.try_acquire(t1).expect("the dropped probe's slot is free again");
        p1.record(true, t1);
        p3.record(true, t1);
        assert_eq!(b.state(), Closed);
    }
}
