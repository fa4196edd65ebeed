//! The broker actor: fans committed events out to named subscribers, in global order, with no
//! gap and no duplicate, and lets a new, late, restarted or slow subscriber catch up from the
//! store.
//!
//! Each subscriber is either live (the broker pushes each committed batch into its bounded
//! channel) or catching up (a task reads pages from the store into its channel, waiting for
//! room, then reports where it stopped). Switching is decided inside the broker, one message at
//! a time, so no event falls between the two modes: a live push only carries positions at or
//! after the subscriber's next one, and any hole (a full channel, a write by another process,
//! a batch the broker missed) sends the subscriber back to the store. So a slow subscriber never
//! makes the broker buffer without bound.
//!
//! Must not touch: aggregates, projections' state. The broker moves stored events only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::store::{EventStore, PAGE_SIZE, RecordedEvent};

/// A batch of committed events, in position order.
pub type EventBatch = Arc<[Arc<RecordedEvent>]>;

/// Settings of the broker.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// How often the broker looks at the store's head for events it was not told of (written by
    /// another process). Zero: never (one process owns the store).
    pub poll_interval: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Committed events, from the journal, in position order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Published(pub Vec<Arc<RecordedEvent>>);

/// Subscribes `name` from position `from` (the first position it wants). Subscribing a name
/// again replaces the earlier subscription.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// The subscriber's name (a projection's or a saga's).
    pub name: String,
    /// The first position it wants.
    pub from: u64,
    /// Where its events go. The channel's capacity bounds what the broker buffers for it.
    pub sink: mpsc::Sender<EventBatch>,
}

/// Ends a subscription.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub String);

/// How far each subscriber has been served, and the head the broker knows.
#[derive(Message)]
#[rtype(result = "BrokerStatus")]
pub struct Status;

/// The broker's view of its subscribers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerStatus {
    /// The last committed position the broker knows of.
    pub head: u64,
    /// Per subscriber: the next position it will be sent, and whether it is live.
    pub subscribers: Vec<(String, u64, bool)>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct CaughtUp {
    name: String,
    generation: u64,
    next: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
struct HeadMoved(u64);

struct Subscriber {
    next: u64,
    sink: mpsc::Sender<EventBatch>,
    live: bool,
    generation: u64,
    /// The catch-up task, aborted when the subscription is replaced, ended or caught up anew.
    task: Option<actix_rt::task::JoinHandle<()>>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The broker actor.
pub struct Broker {
    store: Arc<dyn EventStore>,
    config: BrokerConfig,
    head: u64,
    subscribers: HashMap<String, Subscriber>,
    generations: u64,
}

impl Broker {
    /// A broker over `store` whose head is `head` (the store's head at start).
    pub fn new(store: Arc<dyn EventStore>, head: u64, config: BrokerConfig) -> Self {
        Self {
            store,
            config,
            head,
            subscribers: HashMap::new(),
            generations: 0,
        }
    }

    /// Starts a catch-up task for `name` from its next position.
    fn catch_up(&mut self, name: &str, ctx: &mut Context<Self>) {
        let Some(subscriber) = self.subscribers.get_mut(name) else {
            return;
        };
        self.generations += 1;
        subscriber.live = false;
        subscriber.generation = self.generations;
        let (store, sink, generation, from) = (
            Arc::clone(&self.store),
            subscriber.sink.clone(),
            subscriber.generation,
            subscriber.next,
        );
        let name = name.to_owned();
        let broker = ctx.address();
        if let Some(previous) = subscriber.task.take() {
            previous.abort();
        }
        subscriber.task = Some(actix::spawn(async move {
            let mut next = from;
            loop {
                let page = match store.read_all(next, PAGE_SIZE).await {
                    Ok(page) => page,
                    Err(_) if sink.is_closed() => return,
                    Err(error) => {
                        warn!(%error, subscriber = %name, "catch-up read failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let Some(last) = page.last().map(|e| e.position) else {
                    break;
                };
                let batch: EventBatch = page.into_iter().map(Arc::new).collect();
                if sink.send(batch).await.is_err() {
                    return; // the subscriber is gone
                }
                next = last + 1;
            }
            let _ = broker
                .send(CaughtUp {
                    name,
                    generation,
                    next,
                })
                .await;
        }));
    }

    fn head_moved(&mut self, head: u64, ctx: &mut Context<Self>) {
        if head <= self.head {
            return;
        }
        self.head = head;
        let behind: Vec<String> = self
            .subscribers
            .iter()
            .filter(|(_, s)| s.live && s.next <= head)
            .map(|(n, _)| n.clone())
            .collect();
        for name in behind {
            self.catch_up(&name, ctx);
        }
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4_096);
        if !self.config.poll_interval.is_zero() {
            ctx.run_interval(self.config.poll_interval, |broker, ctx| {
                let store = Arc::clone(&broker.store);
                let me = ctx.address();
                actix::spawn(async move {
                    if let Ok(head) = store.head().await {
                        let _ = me.send(HeadMoved(head)).await;
                    }
                });
            });
        }
    }
}

impl Handler<Published> for Broker {
    type Result = ();

    fn handle(&mut self, Published(events): Published, ctx: &mut Context<Self>) {
        let Some(last) = events.last().map(|e| e.position) else {
            return;
        };
        if last <= self.head {
            return; // already published (an exact retry answered old positions)
        }
        self.head = last;
        let mut behind = Vec::new();
        for (name, subscriber) in &mut self.subscribers {
            if !subscriber.live {
                continue; // its catch-up will read these from the store
            }
            let fresh: EventBatch = events
                .iter()
                .filter(|e| e.position >= subscriber.next)
                .cloned()
                .collect();
            match fresh.first() {
                None => continue,
                Some(first) if first.position != subscriber.next => behind.push(name.clone()),
                Some(_) => match subscriber.sink.try_send(fresh) {
                    Ok(()) => subscriber.next = last + 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        debug!(subscriber = %name, "slow subscriber falls back to the store");
                        behind.push(name.clone());
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => behind.push(name.clone()),
                },
            }
        }
        for name in behind {
            if self
                .subscribers
                .get(&name)
                .is_some_and(|s| s.sink.is_closed())
            {
                self.subscribers.remove(&name);
            } else {
                self.catch_up(&name, ctx);
            }
        }
    }
}

impl Handler<Subscribe> for Broker {
    type Result = ();

    fn handle(&mut self, subscribe: Subscribe, ctx: &mut Context<Self>) {
        self.subscribers.insert(
            subscribe.name.clone(),
            Subscriber {
                next: subscribe.from.max(1),
                sink: subscribe.sink,
                live: false,
                generation: 0,
                task: None,
            },
        );
        self.catch_up(&subscribe.name, ctx);
    }
}

impl Handler<Unsubscribe> for Broker {
    type Result = ();

    fn handle(&mut self, Unsubscribe(name): Unsubscribe, _: &mut Context<Self>) {
        self.subscribers.remove(&name);
    }
}

impl Handler<CaughtUp> for Broker {
    type Result = ();

    fn handle(&mut self, caught_up: CaughtUp, ctx: &mut Context<Self>) {
        let Some(subscriber) = self.subscribers.get_mut(&caught_up.name) else {
            return;
        };
        if subscriber.generation != caught_up.generation {
            return; // a stale report of a replaced subscription
        }
        subscriber.task = None;
        if subscriber.sink.is_closed() {
            self.subscribers.remove(&caught_up.name);
            return;
        }
        subscriber.next = subscriber.next.max(caught_up.next);
        if subscriber.next > self.head {
            subscriber.live = true;
        } else {
            // More was committed while it read: read on.
            self.catch_up(&caught_up.name, ctx);
        }
    }
}

impl Handler<HeadMoved> for Broker {
    type Result = ();

    fn handle(&mut self, HeadMoved(head): HeadMoved, ctx: &mut Context<Self>) {
        self.head_moved(head, ctx);
    }
}

impl Handler<Status> for Broker {
    type Result = MessageResult<Status>;

    fn handle(&mut self, _: Status, _: &mut Context<Self>) -> Self::Result {
        let mut subscribers: Vec<_> = self
            .subscribers
            .iter()
            .map(|(n, s)| (n.clone(), s.next, s.live))
            .collect();
        subscribers.sort();
        MessageResult(BrokerStatus {
            head: self.head,
            subscribers,
        })
    }
}
