//! The journal actor: turns the appends of all aggregate actors into one store transaction per
//! batch (group commit), then hands the committed events to the broker in position order.
//!
//! Batching is natural: while one batch is being committed, new appends queue up; when the
//! commit returns, everything queued (up to `max_batch_events`) goes in the next transaction.
//! An optional `max_wait` lingers before a batch to let it grow. One batch is in flight at a
//! time, so batches commit, and are published, in order.
//!
//! Must not touch: aggregates or their types. The journal moves encoded rows only.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{error, instrument};

use super::broker::{Broker, Published};
use crate::store::{AppendRequest, AppendResult, EventStore, RecordedEvent, StoreError};

/// Settings of the journal.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// The most events one transaction carries (a group is never split, so one large group may
    /// exceed it alone).
    pub max_batch_events: usize,
    /// How long a batch may wait to grow before it is committed (zero: commit as soon as the
    /// previous commit returns).
    pub max_wait: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 4_096,
            max_wait: Duration::ZERO,
        }
    }
}

/// Appends a group of requests (one aggregate actor's commands) in one transaction, in order.
/// Each request succeeds or fails on its own; the outer error means the transaction failed.
#[derive(Message)]
#[rtype(result = "Result<Vec<AppendResult>, Arc<StoreError>>")]
pub struct Append(pub Vec<AppendRequest>);

type Reply = oneshot::Sender<Result<Vec<AppendResult>, Arc<StoreError>>>;

/// The journal actor.
pub struct Journal {
    store: Arc<dyn EventStore>,
    broker: Option<Addr<Broker>>,
    config: JournalConfig,
    queue: Vec<(Vec<AppendRequest>, Reply)>,
    in_flight: bool,
    lingering: bool,
}

impl Journal {
    /// A journal over `store` that publishes committed events to `broker`.
    pub fn new(
        store: Arc<dyn EventStore>,
        broker: Option<Addr<Broker>>,
        config: JournalConfig,
    ) -> Self {
        Self {
            store,
            broker,
            config,
            queue: Vec::new(),
            in_flight: false,
            lingering: false,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_now(ctx, false);
    }

    /// Commits the next batch; `lingered` when the batch already waited `max_wait` to grow.
    fn flush_now(&mut self, ctx: &mut Context<Self>, lingered: bool) {
        if self.in_flight || self.queue.is_empty() {
            return;
        }
        let queued_events: usize = self.queue.iter().map(|(g, _)| events_in(g)).sum();
        let linger =
            !self.config.max_wait.is_zero() && queued_events < self.config.max_batch_events;
        if linger && !lingered {
            if !self.lingering {
                self.lingering = true;
                ctx.run_later(self.config.max_wait, |journal, ctx| {
                    journal.lingering = false;
                    journal.flush_now(ctx, true);
                });
            }
            return;
        }
        let mut take = 0;
        let mut events = 0;
        for (group, _) in &self.queue {
            if take > 0 && events + events_in(group) > self.config.max_batch_events {
                break;
            }
            events += events_in(group);
            take += 1;
        }
        let groups: Vec<_> = self.queue.drain(..take).collect();
        self.in_flight = true;
        let store = Arc::clone(&self.store);
        let broker = self.broker.clone();
        let commit = async move { commit(store, broker, groups).await };
        ctx.spawn(commit.into_actor(self).map(|(), journal, ctx| {
            journal.in_flight = false;
            journal.flush(ctx);
        }));
    }
}

fn events_in(group: &[AppendRequest]) -> usize {
    group.iter().map(|r| r.events.len()).sum()
}

#[instrument(skip_all, fields(groups = groups.len()))]
async fn commit(
    store: Arc<dyn EventStore>,
    broker: Option<Addr<Broker>>,
    groups: Vec<(Vec<AppendRequest>, Reply)>,
) {
    let (requests, replies): (Vec<Vec<AppendRequest>>, Vec<Reply>) = groups.into_iter().unzip();
    let sizes: Vec<usize> = requests.iter().map(Vec::len).collect();
    let batch: Vec<AppendRequest> = requests.into_iter().flatten().collect();
    metrics::histogram!("nursery_journal_batch_events").record(events_in(&batch) as f64);
    metrics::histogram!("nursery_journal_batch_requests").record(batch.len() as f64);
    match store.append_batch(&batch).await {
        Ok(results) => {
            let published = committed_events(batch, &results);
            metrics::counter!("nursery_events_appended_total").increment(published.len() as u64);
            // Publish before replying: a caller that reads its own write through a subscriber
            // never finds the broker behind its answer.
            if let Some(broker) = broker.filter(|_| !published.is_empty()) {
                if let Err(error) = broker.send(Published(published)).await {
                    error!(%error, "the broker is gone; subscribers will catch up from the store");
                }
            }
            let mut results = results.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(results.by_ref().take(size).collect()));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for reply in replies {
                let _ = reply.send(Err(Arc::clone(&error)));
            }
        }
    }
}

/// The events a batch committed, as readers will see them, in position order. Takes the batch:
/// its payloads move into the published events instead of being copied.
fn committed_events(
    batch: Vec<AppendRequest>,
    results: &[AppendResult],
) -> Vec<Arc<RecordedEvent>> {
    let mut events = Vec::new();
    for (request, result) in batch.into_iter().zip(results) {
        let Ok(appended) = result else { continue };
        let Some(first_position) = appended.first_position else {
            continue;
        };
        // An exact retry answers the first append's positions; the broker drops positions it
        // has already published, so they are not delivered twice.
        let first_sequence = appended.version + 1 - request.events.len() as u64;
        for (offset, event) in (0u64..).zip(request.events) {
            events.push(Arc::new(RecordedEvent {
                stream: request.stream.clone(),
                sequence: first_sequence + offset,
                position: first_position + offset,
                event_id: event.event_id,
                event_type: event.event_type,
                revision: event.revision,
                format: event.format,
                payload: event.payload,
                metadata: event.metadata,
                recorded_at: appended.recorded_at,
            }));
        }
    }
    events.sort_by_key(|e| e.position);
    events
}

impl Actor for Journal {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(16_384);
    }
}

impl Handler<Append> for Journal {
    type Result = ResponseFuture<Result<Vec<AppendResult>, Arc<StoreError>>>;

    fn handle(&mut self, Append(group): Append, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.queue.push((group, reply));
        // Flush after the mailbox is drained: everything waiting now joins this batch.
        ctx.notify(Flush);
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(Arc::new(StoreError::Internal("the journal stopped".into())))
            })
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for Journal {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}
