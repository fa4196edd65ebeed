//! The saga manager: runs one saga type over the event stream. It routes each event to the
//! saga's instances by association value, keeps instances, associations, deadlines and the
//! commands still to send (an outbox) as documents of the read store, written with the
//! checkpoint in one transaction, and then sends the commands through the gateway.
//!
//! A batch of events from the broker is handled in one transaction: its documents are loaded
//! up front in two queries (associations, then the instances they name; an instance or an
//! association a step creates is looked up when it comes), each event sees what the
//! events before it changed, and one commit writes all of it with the batch's last position.
//! Events that are not for the saga cost nothing but the checkpoint. If any event of a batch
//! fails, nothing of the batch is written, and it is handled again one event at a time (each
//! with its retries and, for a poisoned one, its dead letter).
//!
//! # Guarantees
//! - Each event reaches the saga once in effect: the instances' new state and the checkpoint
//!   commit together; a redelivered event at or below the checkpoint is dropped.
//! - A command is sent at least once and applied at most once: it waits in the outbox until the
//!   gateway answered, and its id derives from (saga, event or deadline, index), so a resend
//!   after a crash is recognised by the aggregate as already applied. Commands of one instance
//!   go in the order it decided them; one that cannot be sent yet (a provider down) holds back
//!   only the later commands of its own instance.
//! - A deadline fires at most once: firing it, its step and its removal commit together. It
//!   fires late, not never: due deadlines are found by scanning on each tick, after downtime too.
//!   One manager per saga type runs at a time: in one process, or in the events process that
//!   holds the lead (`leader.rs`), whose commits are fenced.
//! - Compensation: each command may carry the command that undoes it; a step that compensates
//!   sends the recorded ones, newest first.
//! - An event the saga cannot handle (a document that does not decode) is retried with
//!   backoff, then parked as a dead letter; later events of its stream are parked behind it,
//!   waiting, so they are never handled out of order. `SagaHandle::retry` handles them again
//!   in order; `SagaHandle::skip` gives one up and releases those behind it.
//!
//! Must not touch: HTTP; concrete sagas live in the domain.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;
use uuid::Uuid;

use super::read_store::{Commit, DeadLetter, NewDeadLetter, ReadStore};
use super::runner::{Documents, ProcessorState, ProcessorStatus};
use crate::actors::{Broker, EventBatch, Subscribe};
use crate::clock::Clock;
use crate::domain::{Association, Routing, Saga, Step};
use crate::store::{EventStore, Metadata, RecordedEvent, StoreError, StreamId, ids};

/// Turns a stored event into the saga's event type (`None`: not one it listens to).
pub type SagaDecoder<S> = Arc<dyn Fn(&RecordedEvent) -> Option<<S as Saga>::Event> + Send + Sync>;

/// Why a command could not be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DispatchError {
    /// Try again later (the store or the runtime is unavailable).
    Transient(String),
    /// Do not retry (the aggregate refused it; the saga hears of it through events, if any).
    Permanent(String),
}

/// Sends a saga's command with its metadata (the command id is set).
pub type SagaDispatcher<S> = Arc<
    dyn Fn(<S as Saga>::Command, Metadata) -> BoxFuture<'static, Result<(), DispatchError>>
        + Send
        + Sync,
>;

/// Settings of a saga manager.
#[derive(Clone, Debug)]
pub struct SagaConfig {
    /// How often due deadlines and unsent commands are looked for.
    pub tick: Duration,
    /// Batches the broker may queue for the manager.
    pub channel_capacity: usize,
    /// Tries after the first failure before an event the saga cannot handle is parked.
    pub retries: u32,
    /// The wait before the first retry (doubled each time).
    pub retry_backoff: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            channel_capacity: 64,
            retries: 3,
            retry_backoff: Duration::from_millis(50),
        }
    }
}

/// What a handle asks of its manager.
enum Control {
    /// Look for due deadlines and unsent commands now.
    Tick,
    /// Handle again the parked events of a stream, and those waiting behind them.
    Retry(StreamId, oneshot::Sender<Result<usize, String>>),
    /// Never handle a parked event; handle those waiting behind it.
    Skip(i64, oneshot::Sender<Result<(), String>>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "")]
struct Instance<S: Saga> {
    id: String,
    state: S,
    associations: Vec<Association>,
    compensations: Vec<S::Command>,
    deadlines: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DeadlineDoc {
    saga: String,
    name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "")]
struct Outgoing<S: Saga> {
    command: S::Command,
    metadata: Metadata,
    /// The instance that sent it: its later commands wait behind it, other instances' do not.
    #[serde(default)]
    instance: Option<String>,
}

/// A running saga manager.
#[derive(Clone)]
pub struct SagaHandle {
    name: String,
    read: Arc<dyn ReadStore>,
    broker: actix::Addr<Broker>,
    status: watch::Receiver<ProcessorStatus>,
    control: mpsc::Sender<Control>,
}

impl SagaHandle {
    /// The manager's processor name (`saga:<NAME>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its status now.
    pub fn status(&self) -> ProcessorStatus {
        self.status.borrow().clone()
    }

    /// Its status with the head and the lag behind it.
    pub async fn report(&self) -> ProcessorStatus {
        super::runner::with_head(self.status(), &self.broker).await
    }

    /// Waits until it has handled `position`, up to `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, super::Lagging> {
        let mut status = self.status.clone();
        match tokio::time::timeout(timeout, status.wait_for(|s| s.position >= position)).await {
            Ok(Ok(status)) => Ok(status.position),
            _ => Err(super::Lagging {
                name: self.name.clone(),
                position: self.status().position,
                wanted: position,
            }),
        }
    }

    /// Looks for due deadlines and unsent commands now, rather than at the next tick (tests
    /// that move a manual clock call this).
    pub async fn tick(&self) {
        let _ = self.control.send(Control::Tick).await;
    }

    /// The events this saga parked (and those waiting behind them), oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.read.dead_letters(&self.name).await
    }

    /// Handles again the parked events of `stream` and the events waiting behind them, in
    /// order; answers how many were handled. If one fails again, nothing is handled and they
    /// stay parked.
    pub async fn retry(&self, stream: StreamId) -> Result<usize, String> {
        super::runner::ask(
            &self.control,
            |reply| Control::Retry(stream, reply),
            "the saga manager stopped",
        )
        .await
    }

    /// Skips the dead letter `id`: it is never handled, stays listed (marked skipped), and the
    /// events of its stream waiting behind it are handled.
    pub async fn skip(&self, id: i64) -> Result<(), String> {
        super::runner::ask(
            &self.control,
            |reply| Control::Skip(id, reply),
            "the saga manager stopped",
        )
        .await
    }
}

struct Manager<S: Saga> {
    name: String,
    read: Arc<dyn ReadStore>,
    decode: SagaDecoder<S>,
    dispatch: SagaDispatcher<S>,
    clock: Arc<dyn Clock>,
    broker: actix::Addr<Broker>,
    generation: u32,
    position: u64,
    status: watch::Sender<ProcessorStatus>,
    /// When the outbox was last read (a backlog of events must not keep it waiting).
    outbox_scanned: tokio::time::Instant,
    /// Where parked events are read again for a retry.
    store: Arc<dyn EventStore>,
    /// Streams with a parked event: their later events wait behind it.
    blocked: HashSet<StreamId>,
    retries: u32,
    retry_backoff: Duration,
}

/// The processor name of saga `S` (its checkpoint, documents and dead letters go under it),
/// whichever process runs it.
pub fn saga_processor_name<S: Saga>() -> String {
    format!("saga:{}", S::NAME)
}

/// Starts the manager of saga `S`.
pub async fn start_saga<S: Saga>(
    store: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    broker: actix::Addr<Broker>,
    decode: SagaDecoder<S>,
    dispatch: SagaDispatcher<S>,
    clock: Arc<dyn Clock>,
    config: SagaConfig,
) -> Result<SagaHandle, StoreError> {
    let name = saga_processor_name::<S>();
    let generation = read.active_generation(&name).await?;
    let position = read.checkpoint(&name, generation).await?;
    let (status, watcher) = watch::channel(ProcessorStatus {
        name: name.clone(),
        position,
        generation,
        state: ProcessorState::Running,
        rebuild_position: None,
        last_error: None,
        head: 0,
        lag: 0,
    });
    let (sink, events) = mpsc::channel::<EventBatch>(config.channel_capacity.max(1));
    broker
        .send(Subscribe {
            name: name.clone(),
            from: position + 1,
            sink,
        })
        .await
        .map_err(|e| StoreError::Internal(format!("the broker is gone: {e}")))?;
    let blocked = super::runner::blocked_streams(&*read, &name).await?;
    let (control, controls) = mpsc::channel(4);
    let manager = Manager::<S> {
        broker: broker.clone(),
        name: name.clone(),
        store,
        read: Arc::clone(&read),
        decode,
        dispatch,
        clock,
        generation,
        position,
        status,
        outbox_scanned: tokio::time::Instant::now(),
        blocked,
        retries: config.retries,
        retry_backoff: config.retry_backoff,
    };
    actix_rt::spawn(manager.run(events, controls, config.tick));
    Ok(SagaHandle {
        name,
        read,
        broker,
        status: watcher,
        control,
    })
}

fn instance_key(id: &str) -> String {
    format!("i:{id}")
}

fn association_key(association: &Association) -> String {
    format!("a:{}={}", association.key, association.value)
}

/// How many outbox entries one scan reads.
const OUTBOX_PAGE: usize = 1_000;

fn deadline_key(due_micros: i64, saga: &str, name: &str) -> String {
    format!("d:{:020}:{saga}:{name}", due_micros.max(0))
}

/// Outbox keys sort in the order the commands were decided: by the position (for a deadline's
/// step, the position the manager was at, after that event's own commands, and deadlines by
/// due time), then by index in the step.
fn outbox_key(order: &str, index: u32, command_id: Uuid) -> String {
    format!("o:{order}:{index:06}:{command_id}")
}

/// Where an event's commands go in the outbox order.
fn event_order(position: u64) -> String {
    format!("{position:020}:0")
}

/// Where a deadline's commands go: after the commands of the event the manager was at.
fn deadline_order(position: u64, due_micros: i64) -> String {
    format!("{position:020}:1:{:020}", due_micros.max(0))
}

impl<S: Saga> Manager<S> {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<EventBatch>,
        mut controls: mpsc::Receiver<Control>,
        every: Duration,
    ) {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                batch = events.recv() => match batch {
                    Some(batch) => {
                        self.on_batch(&batch).await;
                        // Events keep the timer from its turn while there is a backlog: the
                        // outbox (commands held back by a provider down) still gets its scan.
                        if self.outbox_scanned.elapsed() >= every {
                            self.send_outbox().await;
                        }
                    }
                    None => break,
                },
                control = controls.recv() => match control {
                    Some(Control::Tick) => self.on_tick().await,
                    Some(Control::Retry(stream, reply)) => {
                        let _ = reply.send(self.retry(&stream).await);
                    }
                    Some(Control::Skip(id, reply)) => {
                        let _ = reply.send(self.skip(id).await);
                    }
                    None => break,
                },
                _ = timer.tick() => self.on_tick().await,
            }
        }
        self.status
            .send_modify(|s| s.state = ProcessorState::Stopped);
    }

    async fn on_tick(&mut self) {
        // Events first: a deadline due now may be one an event waiting to be handled cancels
        // (a payment that succeeded a second before its timeout).
        let head = self
            .broker
            .send(crate::actors::Status)
            .await
            .map(|s| s.head)
            .unwrap_or(u64::MAX);
        if self.position < head {
            self.send_outbox().await;
            return;
        }
        if let Err(error) = self.fire_due_deadlines().await {
            warn!(saga = %self.name, %error, "firing deadlines failed; retrying at the next tick");
        }
        self.send_outbox().await;
    }

    /// Handles a batch of events in one transaction: the documents of one event are seen by
    /// the next, and one commit writes them all with the last position (most events are not
    /// for this saga, and cost no commit of their own). Should any event fail, nothing of the
    /// batch was written, and it is handled again one event at a time, each with its retries
    /// and its dead letter.
    async fn on_batch(&mut self, batch: &EventBatch) {
        let fresh: Vec<&RecordedEvent> = batch
            .iter()
            .filter(|e| e.position > self.position)
            .map(|e| &**e)
            .collect();
        let Some(last) = fresh.last().map(|e| e.position) else {
            return;
        };
        let blocked = fresh.iter().any(|e| self.blocked.contains(&e.stream));
        if fresh.len() > 1 && !blocked {
            let mut docs = Docs::new(&self.name, self.generation);
            let mut outbox = false;
            // Each event decoded and routed once, for the prefetch and for its handling.
            let routed: Vec<Option<(S::Event, Routing)>> =
                fresh.iter().map(|event| self.route(event)).collect();
            let mut handled = self.prefetch(&routed, &mut docs).await.is_ok();
            for (event, route) in fresh.iter().zip(routed) {
                if !handled {
                    break;
                }
                match self.handle_routed(event, route, &mut docs).await {
                    Ok(sent) => outbox |= sent,
                    Err(_) => handled = false,
                }
            }
            if handled {
                let commit = Commit {
                    name: &self.name,
                    generation: self.generation,
                    position: last,
                    writes: docs.writes(),
                    ..Commit::default()
                };
                if self.read.commit(commit).await.is_ok() || self.committed(last).await {
                    self.handled(last);
                    if outbox {
                        self.send_outbox().await;
                    }
                    return;
                }
            }
        }
        for event in fresh {
            self.on_event(event).await;
        }
    }

    /// Loads, in two queries, the documents a batch will read: the association documents of
    /// its events, then the instances they name.
    async fn prefetch(
        &self,
        routed: &[Option<(S::Event, Routing)>],
        docs: &mut Docs,
    ) -> Result<(), HandleError> {
        let mut associations: Vec<String> = routed
            .iter()
            .flatten()
            .map(|(_, routing)| match routing {
                Routing::Start(a) | Routing::To(a) => association_key(a),
            })
            .collect();
        associations.sort_unstable();
        associations.dedup();
        if associations.is_empty() {
            return Ok(());
        }
        docs.extend(&*self.read, associations.clone()).await?;
        let mut instances = Vec::new();
        for key in &associations {
            let ids: Vec<String> = docs.get(key)?.unwrap_or_default();
            instances.extend(ids.iter().map(|id| instance_key(id)));
        }
        instances.sort_unstable();
        instances.dedup();
        docs.extend(&*self.read, instances).await
    }

    /// Whether the stored checkpoint is at `position` or past it: a commit that answered an
    /// error may still have committed (the connection dropped after COMMIT reached the
    /// server), and handling its events again would repeat their steps.
    async fn committed(&self, position: u64) -> bool {
        self.read
            .checkpoint(&self.name, self.generation)
            .await
            .is_ok_and(|stored| stored >= position)
    }

    /// The checkpoint is at `position`.
    fn handled(&mut self, position: u64) {
        self.position = position;
        self.status.send_modify(|s| {
            s.position = position;
            s.state = ProcessorState::Running;
        });
        metrics::gauge!("nursery_projection_position", "projection" => self.name.clone())
            .set(position as f64);
    }

    /// Handles one event; on a store failure, retries until it is handled (the checkpoint never
    /// passes an event that was not).
    async fn on_event(&mut self, event: &RecordedEvent) {
        if self.blocked.contains(&event.stream) {
            // An earlier event of its stream is parked: this one waits behind it, in order.
            let error = format!("waits behind a parked event of {}", event.stream);
            self.park(event, error, 0, false).await;
            return;
        }
        let mut backoff = self.retry_backoff;
        let mut attempts = 0;
        let mut outbox = true;
        loop {
            match self.handle_event(event).await {
                Ok(sent) => {
                    outbox = sent;
                    break;
                }
                Err(HandleError::Store(_)) if self.committed(event.position).await => break,
                Err(HandleError::Store(error)) => {
                    self.status.send_modify(|s| {
                        s.state = ProcessorState::Failing;
                        s.last_error = Some(error.to_string());
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(HandleError::Poison(error)) => {
                    attempts += 1;
                    if attempts > self.retries {
                        warn!(saga = %self.name, position = event.position, %error, attempts, "parking an event the saga cannot handle");
                        self.park(event, error, attempts, true).await;
                        self.blocked.insert(event.stream.clone());
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.handled(event.position);
        if outbox {
            self.send_outbox().await;
        }
    }

    /// Parks `event` (failed itself, or waiting behind a parked event of its stream) and moves
    /// the checkpoint past it, in one transaction; retries until the database takes it.
    async fn park(&mut self, event: &RecordedEvent, error: String, attempts: u32, parked: bool) {
        let mut backoff = self.retry_backoff;
        loop {
            let commit = Commit {
                name: &self.name,
                generation: self.generation,
                position: event.position,
                park: vec![NewDeadLetter {
                    position: event.position,
                    stream: event.stream.clone(),
                    sequence: event.sequence,
                    event_type: event.event_type.clone(),
                    error: error.clone(),
                    attempts,
                    parked,
                }],
                ..Commit::default()
            };
            if self.read.commit(commit).await.is_ok() || self.committed(event.position).await {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.handled(event.position);
    }

    /// Handles again, in order and in one transaction, the parked events of `stream` and those
    /// waiting behind them; on success they leave the dead letters and the stream flows again.
    async fn retry(&mut self, stream: &StreamId) -> Result<usize, String> {
        let (letters, events) =
            super::runner::parked_events(&*self.read, &*self.store, &self.name, stream).await?;
        if letters.is_empty() {
            self.blocked.remove(stream);
            return Ok(0);
        }
        let mut docs = Docs::new(&self.name, self.generation);
        let mut sent = false;
        for event in &events {
            match self.handle_into(event, &mut docs).await {
                Ok(queued) => sent |= queued,
                Err(HandleError::Poison(error)) => {
                    return Err(format!("position {} fails again: {error}", event.position));
                }
                Err(HandleError::Store(error)) => return Err(error.to_string()),
            }
        }
        self.read
            .commit(Commit {
                name: &self.name,
                generation: self.generation,
                position: self.position,
                writes: docs.writes(),
                resolve: letters.iter().map(|d| d.id).collect(),
                ..Commit::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        self.blocked.remove(stream);
        if sent {
            self.send_outbox().await;
        }
        Ok(letters.len())
    }

    /// Marks one dead letter skipped; if its stream then has only waiting letters, handles them.
    async fn skip(&mut self, id: i64) -> Result<(), String> {
        let released =
            super::runner::skip_letter(&*self.read, &self.name, self.generation, self.position, id)
                .await?;
        if let Some(stream) = released {
            self.retry(&stream).await?;
        }
        Ok(())
    }

    /// Handles one event in its own transaction; answers whether it queued commands.
    async fn handle_event(&mut self, event: &RecordedEvent) -> Result<bool, HandleError> {
        let mut docs = Docs::new(&self.name, self.generation);
        let sent = self.handle_into(event, &mut docs).await?;
        let commit = Commit {
            name: &self.name,
            generation: self.generation,
            position: event.position,
            writes: docs.writes(),
            ..Commit::default()
        };
        self.read.commit(commit).await?;
        Ok(sent)
    }

    /// Applies one event to `docs` (which may hold the documents of the events before it in
    /// the batch) without writing; answers whether it queued commands in the outbox.
    async fn handle_into(
        &self,
        event: &RecordedEvent,
        docs: &mut Docs,
    ) -> Result<bool, HandleError> {
        self.handle_routed(event, self.route(event), docs).await
    }

    /// The event decoded for this saga and where it goes (`None`: not for this saga).
    fn route(&self, event: &RecordedEvent) -> Option<(S::Event, Routing)> {
        let decoded = (self.decode)(event)?;
        let routing = S::routing(&decoded)?;
        Some((decoded, routing))
    }

    /// [`Self::handle_into`] for an event already decoded and routed.
    async fn handle_routed(
        &self,
        event: &RecordedEvent,
        route: Option<(S::Event, Routing)>,
        docs: &mut Docs,
    ) -> Result<bool, HandleError> {
        let Some((decoded, routing)) = route else {
            // Not for this saga: only the checkpoint moves.
            return Ok(false);
        };
        let association = match &routing {
            Routing::Start(a) | Routing::To(a) => a.clone(),
        };
        docs.extend(&*self.read, vec![association_key(&association)])
            .await?;
        let mut ids: Vec<String> = docs
            .get(&association_key(&association))?
            .unwrap_or_default();
        let mut created = None;
        if ids.is_empty() {
            if let Routing::Start(start) = &routing {
                let id = ids::derived(&event.event_id, S::NAME.as_bytes()).to_string();
                created = Some(Instance::<S> {
                    id: id.clone(),
                    state: S::default(),
                    associations: vec![start.clone()],
                    compensations: Vec::new(),
                    deadlines: Vec::new(),
                });
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Ok(false);
        }
        docs.extend(&*self.read, ids.iter().map(|id| instance_key(id)).collect())
            .await?;
        if let Some(instance) = &created {
            docs.put(&instance_key(&instance.id), instance)?;
            docs.put(&association_key(&association), &ids)?;
        }
        let now = self.clock.now();
        let mut sent = false;
        for id in &ids {
            let Some(mut instance) = docs.get::<Instance<S>>(&instance_key(id))? else {
                continue;
            };
            let step = instance.state.handle(&decoded, now.timestamp());
            let seed = ids::derived(&event.event_id, id.as_bytes());
            let metadata = Metadata {
                correlation_id: event.metadata.correlation_id,
                causation_id: Some(event.event_id),
                customer_id: event.metadata.customer_id.clone(),
                ..Metadata::default()
            };
            sent |= self
                .apply_step(
                    docs,
                    &mut instance,
                    step,
                    &Cause {
                        seed,
                        order: event_order(event.position),
                        metadata,
                        now_micros: now.timestamp_micros(),
                    },
                )
                .await?;
        }
        Ok(sent)
    }

    /// Applies a step to an instance: outbox, deadlines, associations, compensations, end.
    /// Answers whether it queued commands.
    async fn apply_step(
        &self,
        docs: &mut Docs,
        instance: &mut Instance<S>,
        step: Step<S::Command>,
        cause: &Cause,
    ) -> Result<bool, HandleError> {
        let Cause {
            seed,
            order,
            metadata,
            now_micros,
        } = cause;
        let (seed, order, now_micros) = (*seed, order.as_str(), *now_micros);
        let mut outgoing: Vec<S::Command> = Vec::new();
        instance.compensations.extend(step.undo);
        for send in step.send {
            outgoing.push(send.command);
            if let Some(compensation) = send.compensation {
                instance.compensations.push(compensation);
            }
        }
        if step.compensate {
            outgoing.extend(instance.compensations.drain(..).rev());
        }
        let sent = !outgoing.is_empty();
        for (index, command) in (0u32..).zip(outgoing) {
            let command_id = ids::derived(&seed, &index.to_be_bytes());
            let metadata = Metadata {
                command_id: Some(command_id),
                ..metadata.clone()
            };
            docs.put(
                &outbox_key(order, index, command_id),
                &Outgoing::<S> {
                    command,
                    metadata,
                    instance: Some(instance.id.clone()),
                },
            )?;
        }
        for name in &step.cancel_deadlines {
            instance.deadlines.retain(|key| {
                let ours = key.ends_with(&format!(":{}:{name}", instance.id));
                if ours {
                    docs.remove(key);
                }
                !ours
            });
        }
        for deadline in &step.set_deadlines {
            let due = now_micros.saturating_add(
                i64::try_from(deadline.after_seconds)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000),
            );
            let key = deadline_key(due, &instance.id, &deadline.name);
            docs.put(
                &key,
                &DeadlineDoc {
                    saga: instance.id.clone(),
                    name: deadline.name.clone(),
                },
            )?;
            instance.deadlines.push(key);
        }
        let mut changed: Vec<Association> = step.associate.clone();
        changed.extend(step.dissociate.iter().cloned());
        if step.end {
            changed.extend(instance.associations.iter().cloned());
        }
        docs.extend(&*self.read, changed.iter().map(association_key).collect())
            .await?;
        for association in step.associate {
            let key = association_key(&association);
            let mut ids: Vec<String> = docs.get(&key)?.unwrap_or_default();
            if !ids.contains(&instance.id) {
                ids.push(instance.id.clone());
            }
            docs.put(&key, &ids)?;
            if !instance.associations.contains(&association) {
                instance.associations.push(association);
            }
        }
        let mut leaving = step.dissociate;
        if step.end {
            leaving.extend(instance.associations.iter().cloned());
            for key in instance.deadlines.drain(..) {
                docs.remove(&key);
            }
        }
        for association in leaving {
            let key = association_key(&association);
            let mut ids: Vec<String> = docs.get(&key)?.unwrap_or_default();
            ids.retain(|id| id != &instance.id);
            if ids.is_empty() {
                docs.remove(&key);
            } else {
                docs.put(&key, &ids)?;
            }
            instance.associations.retain(|a| a != &association);
        }
        if step.end {
            docs.remove(&instance_key(&instance.id));
        } else {
            docs.put(&instance_key(&instance.id), instance)?;
        }
        Ok(sent)
    }

    /// Fires every due deadline: each with its step, in one transaction.
    async fn fire_due_deadlines(&mut self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let due = self.read.scan(&self.name, "d:", 100).await?;
        for (key, value) in due {
            let Some(due_micros) = key.get(2..22).and_then(|d| d.parse::<i64>().ok()) else {
                continue;
            };
            if due_micros > now.timestamp_micros() {
                break; // keys sort by due time
            }
            let Ok(deadline) = serde_json::from_value::<DeadlineDoc>(value) else {
                continue;
            };
            let mut docs = match Docs::load(
                &*self.read,
                &self.name,
                self.generation,
                vec![instance_key(&deadline.saga)],
            )
            .await
            {
                Ok(docs) => docs,
                Err(_) => continue,
            };
            docs.remove(&key);
            // Only a deadline the instance still holds fires: an earlier firing in this same
            // scan may have cancelled or re-armed it.
            let live = docs
                .get::<Instance<S>>(&instance_key(&deadline.saga))
                .ok()
                .flatten()
                .filter(|instance| instance.deadlines.contains(&key));
            if let Some(mut instance) = live {
                instance.deadlines.retain(|k| k != &key);
                let step = instance.state.on_deadline(&deadline.name, now.timestamp());
                let seed = Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes());
                let metadata = Metadata::default();
                if self
                    .apply_step(
                        &mut docs,
                        &mut instance,
                        step,
                        &Cause {
                            seed,
                            order: deadline_order(self.position, due_micros),
                            metadata,
                            now_micros: now.timestamp_micros(),
                        },
                    )
                    .await
                    .is_err()
                {
                    continue;
                }
            }
            let commit = Commit {
                name: &self.name,
                generation: self.generation,
                position: self.position,
                writes: docs.writes(),
                ..Commit::default()
            };
            self.read.commit(commit).await?;
        }
        Ok(())
    }

    /// Sends what waits in the outbox; removes each command once the gateway answered it (or
    /// refused it for good). A command that cannot be sent now holds back the later commands
    /// of its own instance (their order matters), not those of other instances.
    async fn send_outbox(&mut self) {
        self.outbox_scanned = tokio::time::Instant::now();
        loop {
            let Ok(pending) = self.read.scan(&self.name, "o:", OUTBOX_PAGE).await else {
                return;
            };
            let full = pending.len() == OUTBOX_PAGE;
            let sent = self.send_page(pending).await;
            // A full page all sent: there may be more behind it. A page with held commands
            // waits for the next tick (what is held would come first again).
            if !full || !sent {
                return;
            }
        }
    }

    /// Sends one page of the outbox; answers whether every command of it left.
    async fn send_page(&mut self, pending: Vec<(String, Value)>) -> bool {
        let mut held: Vec<Option<String>> = Vec::new();
        for (key, value) in pending {
            let Ok(outgoing) = serde_json::from_value::<Outgoing<S>>(value) else {
                warn!(saga = %self.name, %key, "dropping an outbox entry that does not decode");
                self.forget(&key).await;
                continue;
            };
            if held.contains(&outgoing.instance) {
                continue;
            }
            match (self.dispatch)(outgoing.command, outgoing.metadata).await {
                Ok(()) => self.forget(&key).await,
                Err(DispatchError::Permanent(reason)) => {
                    warn!(saga = %self.name, %key, %reason, "a saga command was refused");
                    self.forget(&key).await;
                }
                Err(DispatchError::Transient(reason)) => {
                    warn!(saga = %self.name, %key, %reason, "a saga command will be sent again");
                    held.push(outgoing.instance);
                }
            }
        }
        held.is_empty()
    }

    async fn forget(&self, key: &str) {
        let commit = Commit {
            name: &self.name,
            generation: self.generation,
            position: self.position,
            writes: vec![(key.to_owned(), None)],
            ..Commit::default()
        };
        if let Err(error) = self.read.commit(commit).await {
            warn!(saga = %self.name, %error, "cannot clear a sent command; it will be sent again (and recognised)");
        }
    }
}

/// What caused a step: the seed of its command ids, where its commands sort in the outbox,
/// the metadata they carry, and the time.
struct Cause {
    seed: Uuid,
    order: String,
    metadata: Metadata,
    now_micros: i64,
}

enum HandleError {
    Store(StoreError),
    Poison(String),
}

impl From<StoreError> for HandleError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// The documents one step touches: the projections' [`Documents`], loaded in steps (a step
/// learns which instances to load from the association documents it loaded first).
struct Docs {
    name: String,
    generation: u32,
    docs: Documents,
}

impl Docs {
    fn new(name: &str, generation: u32) -> Self {
        Self {
            name: name.to_owned(),
            generation,
            docs: Documents::default(),
        }
    }

    async fn load(
        read: &dyn ReadStore,
        name: &str,
        generation: u32,
        keys: Vec<String>,
    ) -> Result<Self, HandleError> {
        let mut docs = Self::new(name, generation);
        docs.extend(read, keys).await?;
        Ok(docs)
    }

    async fn extend(&mut self, read: &dyn ReadStore, keys: Vec<String>) -> Result<(), HandleError> {
        let missing = self.docs.missing(keys);
        if missing.is_empty() {
            return Ok(());
        }
        let loaded = read.load(&self.name, self.generation, &missing).await?;
        self.docs.absorb(missing, loaded);
        Ok(())
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, HandleError> {
        self.docs.get_as(key).map_err(HandleError::Poison)
    }

    fn put(&mut self, key: &str, value: &impl Serialize) -> Result<(), HandleError> {
        self.docs.put(key, value).map_err(HandleError::Poison)
    }

    fn remove(&mut self, key: &str) {
        self.docs.remove(key);
    }

    fn writes(self) -> Vec<(String, Option<Value>)> {
        self.docs.into_writes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keys_sort_in_decision_order() {
        let id = |n: u8| Uuid::from_bytes([n; 16]);
        // A deadline fired at position 7 decides after the event at 7, whatever the ids say;
        // deadlines fired together go by due time; everything at 7 comes after position 6.
        let mut keys = vec![
            outbox_key(&deadline_order(7, 2_000), 0, id(1)),
            outbox_key(&event_order(7), 1, id(9)),
            outbox_key(&deadline_order(7, 1_000), 0, id(2)),
            outbox_key(&event_order(7), 0, id(255)),
            outbox_key(&deadline_order(6, i64::MAX), 3, id(0)),
            outbox_key(&event_order(8), 0, id(0)),
        ];
        let expected = vec![
            outbox_key(&deadline_order(6, i64::MAX), 3, id(0)),
            outbox_key(&event_order(7), 0, id(255)),
            outbox_key(&event_order(7), 1, id(9)),
            outbox_key(&deadline_order(7, 1_000), 0, id(2)),
            outbox_key(&deadline_order(7, 2_000), 0, id(1)),
            outbox_key(&event_order(8), 0, id(0)),
        ];
        keys.sort();
        assert_eq!(keys, expected);
    }
}
