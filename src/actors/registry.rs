//! The registry of live aggregate actors of one type: finds the actor of an id or starts it
//! (under its supervisor), passivates actors idle for longer than the timeout, and evicts the
//! least recently used ones beyond a bound, so memory stays flat however many aggregates exist.
//!
//! Passivation is dropping the registry's address: an actix actor stops by itself once no
//! address of it is left and its mailbox is drained, and a supervisor does not restart an actor
//! nobody can reach. A caller that still holds the address finishes its command first.
//!
//! Must not touch: the store (actors rehydrate themselves). Never hold a map guard across an
//! `.await`: addresses are cloned out, guards dropped, then awaited.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use tokio::sync::Semaphore;

use super::aggregate_actor::{ActorSettings, AggregateActor};
use crate::domain::Aggregate;

/// When actors are passivated.
#[derive(Clone, Debug)]
pub struct PassivationConfig {
    /// An actor idle for this long is stopped (its state is reloaded on its next command).
    pub idle_timeout: Duration,
    /// The most live actors of one aggregate type; beyond it the least recently used go.
    pub max_live: usize,
}

impl Default for PassivationConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_live: 100_000,
        }
    }
}

/// Counters of one aggregate type's actors.
#[derive(Debug, Default)]
pub struct ActorCounters {
    /// Actors currently running.
    pub live: AtomicUsize,
    /// Actors started (first starts and restarts).
    pub started: AtomicU64,
    /// Restarts after a failure.
    pub restarts: AtomicU64,
    /// Actors passivated (idle or evicted).
    pub passivated: AtomicU64,
    /// Concurrency conflicts resolved by catching up on the events another writer stored.
    pub caught_up: AtomicU64,
}

struct Entry<A: Aggregate> {
    addr: Addr<AggregateActor<A>>,
    last_used: AtomicU64,
    /// One permit per command the actor may hold (its mailbox bound): the gateway takes one
    /// before sending and gives it back with the answer. actix's own bound is per sender, and
    /// every caller holds its own sender, so it bounds nothing here.
    slots: Arc<Semaphore>,
}

impl<A: Aggregate> Entry<A> {
    fn busy(&self, capacity: usize) -> bool {
        self.slots.available_permits() < capacity
    }
}

/// A live actor's address and its command slots.
pub struct Live<A: Aggregate> {
    /// The actor.
    pub addr: Addr<AggregateActor<A>>,
    /// Take one before sending a command; keep it until the answer.
    pub slots: Arc<Semaphore>,
}

/// The live actors of aggregate type `A`.
pub struct Registry<A: Aggregate> {
    actors: DashMap<Arc<str>, Entry<A>>,
    settings: Arc<ActorSettings<A>>,
    arbiter: ArbiterHandle,
    config: PassivationConfig,
    epoch: tokio::time::Instant,
}

impl<A: Aggregate> Registry<A> {
    /// A registry starting actors on `arbiter` with `settings`.
    pub fn new(
        settings: Arc<ActorSettings<A>>,
        arbiter: ArbiterHandle,
        config: PassivationConfig,
    ) -> Arc<Self> {
        let registry = Arc::new(Self {
            actors: DashMap::new(),
            settings,
            arbiter,
            config,
            epoch: tokio::time::Instant::now(),
        });
        let weak = Arc::downgrade(&registry);
        let sweep_every = (registry.config.idle_timeout / 4).max(Duration::from_millis(10));
        registry.arbiter.spawn(async move {
            let mut ticks = tokio::time::interval(sweep_every);
            loop {
                ticks.tick().await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                registry.passivate_idle();
            }
        });
        registry
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The actor of `id` and its command slots, started if it is not live.
    pub fn get(&self, id: &str) -> Live<A> {
        let now = self.now();
        if let Some(entry) = self.actors.get(id) {
            if entry.addr.connected() {
                entry.last_used.store(now, Ordering::Relaxed);
                return Live {
                    addr: entry.addr.clone(),
                    slots: Arc::clone(&entry.slots),
                };
            }
        }
        let live = match self.actors.entry(Arc::from(id)) {
            MapEntry::Occupied(entry) if entry.get().addr.connected() => Live {
                addr: entry.get().addr.clone(),
                slots: Arc::clone(&entry.get().slots),
            },
            MapEntry::Occupied(mut entry) => {
                let fresh = self.entry(entry.key(), now);
                let live = Live {
                    addr: fresh.addr.clone(),
                    slots: Arc::clone(&fresh.slots),
                };
                entry.insert(fresh);
                live
            }
            MapEntry::Vacant(entry) => {
                let fresh = self.entry(entry.key(), now);
                let live = Live {
                    addr: fresh.addr.clone(),
                    slots: Arc::clone(&fresh.slots),
                };
                entry.insert(fresh);
                live
            }
        };
        if self.actors.len() > self.config.max_live {
            self.evict_least_recently_used();
        }
        live
    }

    fn entry(&self, id: &Arc<str>, now: u64) -> Entry<A> {
        Entry {
            addr: self.start(id),
            last_used: AtomicU64::new(now),
            slots: Arc::new(Semaphore::new(self.capacity())),
        }
    }

    fn capacity(&self) -> usize {
        self.settings.mailbox_capacity.max(1)
    }

    /// Forgets `addr` as the actor of `id` (it was found closed).
    pub fn forget(&self, id: &str, addr: &Addr<AggregateActor<A>>) {
        self.actors.remove_if(id, |_, entry| entry.addr == *addr);
    }

    fn start(&self, id: &Arc<str>) -> Addr<AggregateActor<A>> {
        let (id, settings) = (Arc::clone(id), Arc::clone(&self.settings));
        Supervisor::start_in_arbiter(&self.arbiter, move |_| AggregateActor::new(id, settings))
    }

    /// How many actors the registry holds.
    pub fn live(&self) -> usize {
        self.actors.len()
    }

    /// Passivates every actor idle for longer than the timeout.
    pub fn passivate_idle(&self) {
        let idle_ms = u64::try_from(self.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let Some(cutoff) = self.now().checked_sub(idle_ms) else {
            return; // nothing can have been idle that long yet
        };
        let capacity = self.capacity();
        let before = self.actors.len();
        self.actors.retain(|_, entry| {
            entry.last_used.load(Ordering::Relaxed) > cutoff || entry.busy(capacity)
        });
        self.count_passivated(before);
    }

    /// Drops the least recently used actors beyond the bound, and a tenth more so the scan is
    /// amortised over many inserts. Exactly that many, oldest first, never one with commands in
    /// flight.
    fn evict_least_recently_used(&self) {
        let capacity = self.capacity();
        let excess = self.actors.len().saturating_sub(self.config.max_live);
        let evict = excess + self.config.max_live / 10;
        if evict == 0 {
            return;
        }
        let mut idle: Vec<(u64, Arc<str>)> = self
            .actors
            .iter()
            .filter(|e| !e.busy(capacity))
            .map(|e| (e.last_used.load(Ordering::Relaxed), Arc::clone(e.key())))
            .collect();
        let evict = evict.min(idle.len());
        if evict == 0 {
            return;
        }
        idle.select_nth_unstable(evict - 1);
        let before = self.actors.len();
        for (_, id) in idle.into_iter().take(evict) {
            self.actors.remove_if(&id, |_, entry| !entry.busy(capacity));
        }
        self.count_passivated(before);
    }

    fn count_passivated(&self, before: usize) {
        let gone = before.saturating_sub(self.actors.len()) as u64;
        if gone > 0 {
            self.settings
                .counters
                .passivated
                .fetch_add(gone, Ordering::Relaxed);
            metrics::counter!("nursery_passivations_total", "aggregate" => A::TYPE).increment(gone);
        }
    }

    /// The counters of this type's actors.
    pub fn counters(&self) -> &ActorCounters {
        &self.settings.counters
    }
}
