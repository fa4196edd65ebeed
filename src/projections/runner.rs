//! The projection runner: one task per projection that takes events from the broker from its
//! checkpoint, applies each batch with its new checkpoint in one transaction, parks poison
//! events as dead letters, and rebuilds a new generation from position 0 while the old one
//! keeps serving.
//!
//! # Guarantees
//! - At least once, in global order, none skipped: the broker delivers every position in order
//!   (gap-safe store underneath), and the runner never moves its checkpoint past a position it
//!   has not handled.
//! - Exactly once in the read model: a batch's documents and its checkpoint commit together; a
//!   redelivered event at or below the checkpoint is dropped.
//! - A poison event is retried `retries` times with doubling backoff, then parked with its
//!   error; later events of the same aggregate park behind it (waiting) so that aggregate's
//!   order holds, while other aggregates carry on. Parked events can be listed, retried and
//!   skipped.
//! - Rebuild writes generation g+1 from position 0 (the handler is told it is replaying) while
//!   generation g keeps serving and keeps following live events; when the rebuild reaches the
//!   live position it is promoted in one transaction.
//!
//! Must not touch: HTTP, concrete read models, aggregates.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::Addr;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::read_store::{Commit, DeadLetter, NewDeadLetter, ReadStore};
use crate::actors::{Broker, EventBatch, Subscribe};
use crate::store::{EventStore, RecordedEvent, StoreError, StreamId};

/// What a handler is told besides the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyContext {
    /// True while rebuilding from position 0: side effects (notifications, provider calls) must
    /// not be repeated.
    pub replaying: bool,
}

/// A read model kept as JSON documents by key.
pub trait Projection: Send + Sync + 'static {
    /// The projection's name: its documents, checkpoint and dead letters are kept under it.
    fn name(&self) -> &str;

    /// The keys of the documents `event` reads or writes (they are loaded before `apply`).
    fn keys(&self, event: &RecordedEvent) -> Vec<String>;

    /// Applies one event to the loaded documents. An error (or a panic) makes the event a
    /// candidate dead letter; nothing of its batch is written.
    fn apply(
        &self,
        event: &RecordedEvent,
        documents: &mut Documents,
        context: ApplyContext,
    ) -> Result<(), String>;
}

/// The documents of one batch: loaded, then changed by handlers, then written.
#[derive(Debug, Default)]
pub struct Documents {
    docs: HashMap<String, Option<Value>>,
    dirty: BTreeSet<String>,
}

impl Documents {
    /// The document at `key`, as loaded or last written in this batch.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.docs.get(key).and_then(Option::as_ref)
    }

    /// The document at `key`, decoded.
    pub fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        self.get(key)
            .map(|value| {
                serde_json::from_value(value.clone())
                    .map_err(|e| format!("document {key} does not decode: {e}"))
            })
            .transpose()
    }

    /// Writes the document at `key`.
    pub fn put(&mut self, key: impl Into<String>, document: &impl Serialize) -> Result<(), String> {
        let key = key.into();
        let value = serde_json::to_value(document)
            .map_err(|e| format!("document {key} does not encode: {e}"))?;
        self.dirty.insert(key.clone());
        self.docs.insert(key, Some(value));
        Ok(())
    }

    /// Deletes the document at `key`.
    pub fn remove(&mut self, key: &str) {
        self.dirty.insert(key.to_owned());
        self.docs.insert(key.to_owned(), None);
    }

    /// Documents loaded for a batch.
    pub fn loaded(docs: HashMap<String, Value>) -> Self {
        Self {
            docs: docs.into_iter().map(|(k, v)| (k, Some(v))).collect(),
            dirty: BTreeSet::new(),
        }
    }

    /// Of `keys`, those neither loaded nor written yet.
    pub(crate) fn missing(&self, keys: Vec<String>) -> Vec<String> {
        keys.into_iter()
            .filter(|k| !self.docs.contains_key(k))
            .collect()
    }

    /// Records what a load of `keys` found (a key not found is known absent).
    pub(crate) fn absorb(&mut self, keys: Vec<String>, mut loaded: HashMap<String, Value>) {
        for key in keys {
            let value = loaded.remove(&key);
            self.docs.insert(key, value);
        }
    }

    /// The documents changed, to write: `None` deletes.
    pub fn into_writes(self) -> Vec<(String, Option<Value>)> {
        self.writes()
    }

    fn writes(self) -> Vec<(String, Option<Value>)> {
        let mut docs = self.docs;
        self.dirty
            .into_iter()
            .map(|key| {
                let body = docs.remove(&key).flatten();
                (key, body)
            })
            .collect()
    }
}

/// Settings of a runner.
#[derive(Clone, Debug)]
pub struct ProcessorConfig {
    /// The most events one transaction applies (`None`: what the read store prefers, see
    /// [`ReadStore::preferred_batch`]).
    pub batch_max: Option<usize>,
    /// Tries after the first failure before an event is parked.
    pub retries: u32,
    /// The wait before the first retry (doubled each time).
    pub retry_backoff: Duration,
    /// Batches the broker may queue for this runner before it falls back to reading the store.
    pub channel_capacity: usize,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            batch_max: None,
            retries: 3,
            retry_backoff: Duration::from_millis(50),
            channel_capacity: 64,
        }
    }
}

/// What a processor is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessorState {
    /// Following live events.
    Running,
    /// Following live events and rebuilding a new generation.
    Rebuilding,
    /// Retrying an event that fails.
    Failing,
    /// Stopped (the broker or the store is gone).
    Stopped,
}

/// A processor's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessorStatus {
    /// Its name.
    pub name: String,
    /// The last position it applied.
    pub position: u64,
    /// The generation serving.
    pub generation: u32,
    /// What it is doing.
    pub state: ProcessorState,
    /// How far a rebuild has come.
    pub rebuild_position: Option<u64>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// The last committed position of the store, as the broker knows it (filled by
    /// `report`; 0 in `status`).
    pub head: u64,
    /// How many events it is behind the head (filled by `report`).
    pub lag: u64,
}

/// Fills `head` and `lag` of a status from the broker's head.
pub(crate) async fn with_head(
    mut status: ProcessorStatus,
    broker: &actix::Addr<Broker>,
) -> ProcessorStatus {
    if let Ok(broker) = broker.send(crate::actors::Status).await {
        status.head = broker.head.max(status.position);
        status.lag = status.head - status.position;
    }
    status
}

enum Control {
    Rebuild(oneshot::Sender<Result<(), String>>),
    Retry(StreamId, oneshot::Sender<Result<usize, String>>),
    Skip(i64, oneshot::Sender<Result<(), String>>),
}

/// Why a wait for a position gave up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("projection {name} is at {position}, not yet at {wanted}")]
pub struct Lagging {
    /// The projection.
    pub name: String,
    /// Where it is.
    pub position: u64,
    /// Where the caller wanted it.
    pub wanted: u64,
}

/// A running projection: its status, read-your-writes waits, rebuild and dead letters.
#[derive(Clone)]
pub struct ProjectionHandle {
    name: String,
    broker: Addr<Broker>,
    status: watch::Receiver<ProcessorStatus>,
    control: mpsc::Sender<Control>,
    read: Arc<dyn ReadStore>,
    crash_points: Arc<AtomicUsize>,
}

impl ProjectionHandle {
    /// A watch of the projection's status: it changes each time the position moves (for live
    /// views that follow the read model).
    pub fn watch(&self) -> watch::Receiver<ProcessorStatus> {
        self.status.clone()
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its status now.
    pub fn status(&self) -> ProcessorStatus {
        self.status.borrow().clone()
    }

    /// Its status with the head and the lag behind it.
    pub async fn report(&self) -> ProcessorStatus {
        with_head(self.status(), &self.broker).await
    }

    /// Waits until it has applied `position`, up to `timeout` (read-your-writes). Watches the
    /// runner's position; no polling.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, Lagging> {
        let mut status = self.status.clone();
        let reached =
            tokio::time::timeout(timeout, status.wait_for(|s| s.position >= position)).await;
        match reached {
            Ok(Ok(status)) => Ok(status.position),
            _ => Err(Lagging {
                name: self.name.clone(),
                position: self.status().position,
                wanted: position,
            }),
        }
    }

    /// Rebuilds from position 0 into a new generation while the current one serves; returns
    /// once the new generation serves.
    pub async fn rebuild(&self) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Rebuild(reply))
            .await
            .map_err(|_| "the projection stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the projection stopped".to_owned())?
    }

    /// The dead letters of this projection, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.read.dead_letters(&self.name).await
    }

    /// Applies again, in order, the dead letters of `stream`; answers how many were applied.
    /// If the parked one fails again, nothing changes.
    pub async fn retry(&self, stream: StreamId) -> Result<usize, String> {
        ask(
            &self.control,
            |reply| Control::Retry(stream, reply),
            "the projection stopped",
        )
        .await
    }

    /// Skips the dead letter `id`: it is never applied (here, or by a later rebuild) but stays
    /// listed, marked skipped; the events of its aggregate waiting behind it are then applied.
    pub async fn skip(&self, id: i64) -> Result<(), String> {
        ask(
            &self.control,
            |reply| Control::Skip(id, reply),
            "the projection stopped",
        )
        .await
    }

    /// Test hook (a crash point): the next `n` commits write everything, then fail instead of
    /// committing.
    pub fn crash_next_commits(&self, n: usize) {
        self.crash_points.store(n, Ordering::SeqCst);
    }
}

struct Runner {
    projection: Arc<dyn Projection>,
    store: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    config: ProcessorConfig,
    status: watch::Sender<ProcessorStatus>,
    crash_points: Arc<AtomicUsize>,
    generation: u32,
    position: u64,
    /// Streams with a parked event: their later events wait behind it.
    blocked: HashSet<StreamId>,
}

/// Starts `projection`: resumes from its checkpoint, catches up through the broker, follows
/// live events.
pub async fn start_projection(
    projection: Arc<dyn Projection>,
    store: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    broker: Addr<Broker>,
    config: ProcessorConfig,
) -> Result<ProjectionHandle, StoreError> {
    let name = projection.name().to_owned();
    let generation = read.active_generation(&name).await?;
    let position = read.checkpoint(&name, generation).await?;
    let blocked = blocked_streams(&*read, &name).await?;
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
    let (control, controls) = mpsc::channel(16);
    let (sink, events) = mpsc::channel::<EventBatch>(config.channel_capacity.max(1));
    broker
        .send(Subscribe {
            name: name.clone(),
            from: position + 1,
            sink,
        })
        .await
        .map_err(|e| StoreError::Internal(format!("the broker is gone: {e}")))?;
    let crash_points = Arc::new(AtomicUsize::new(0));
    let runner = Runner {
        projection,
        store,
        read: Arc::clone(&read),
        config,
        status,
        crash_points: Arc::clone(&crash_points),
        generation,
        position,
        blocked,
    };
    actix_rt::spawn(runner.run(events, controls));
    Ok(ProjectionHandle {
        broker: broker.clone(),
        name,
        status: watcher,
        control,
        read,
        crash_points,
    })
}

struct Rebuild {
    generation: u32,
    position: u64,
    reply: oneshot::Sender<Result<(), String>>,
}

impl Runner {
    fn name(&self) -> &str {
        self.projection.name()
    }

    fn publish(&self, change: impl FnOnce(&mut ProcessorStatus)) {
        self.status.send_modify(change);
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<EventBatch>,
        mut controls: mpsc::Receiver<Control>,
    ) {
        let mut rebuild: Option<Rebuild> = None;
        loop {
            // Not biased: under steady load a rebuild and control messages still get their turn.
            tokio::select! {
                batch = events.recv() => match batch {
                    Some(batch) => {
                        // Coalesce what else is already waiting: one transaction for all of it.
                        let mut waiting: Vec<Arc<RecordedEvent>> = batch.to_vec();
                        while waiting.len() < self.batch_max() {
                            match events.try_recv() {
                                Ok(more) => waiting.extend(more.iter().cloned()),
                                Err(_) => break,
                            }
                        }
                        self.live(&waiting).await
                    }
                    None => break,
                },
                control = controls.recv() => match control {
                    Some(Control::Rebuild(reply)) => rebuild = self.begin_rebuild(reply, rebuild).await,
                    // A rebuild leaves parked positions out: retrying or skipping one now would
                    // reach only the generation about to be replaced.
                    Some(Control::Retry(_, reply)) if rebuild.is_some() => {
                        let _ = reply.send(Err("a rebuild is running; retry when it is done".into()));
                    }
                    Some(Control::Skip(_, reply)) if rebuild.is_some() => {
                        let _ = reply.send(Err("a rebuild is running; skip when it is done".into()));
                    }
                    Some(Control::Retry(stream, reply)) => {
                        let _ = reply.send(self.retry(&stream).await);
                    }
                    Some(Control::Skip(id, reply)) => {
                        let _ = reply.send(self.skip(id).await);
                    }
                    None => break,
                },
                () = async {}, if rebuild.is_some() => {
                    if let Some(current) = rebuild.take() {
                        rebuild = self.rebuild_step(current).await;
                    }
                }
            }
        }
        self.publish(|s| s.state = ProcessorState::Stopped);
    }

    /// Applies live events beyond the checkpoint, a transaction per `batch_max` events.
    async fn live(&mut self, batch: &[Arc<RecordedEvent>]) {
        let fresh: Vec<&RecordedEvent> = batch
            .iter()
            .map(Arc::as_ref)
            .filter(|e| e.position > self.position)
            .collect();
        for chunk in fresh.chunks(self.batch_max()) {
            self.handle_chunk(chunk).await;
        }
    }

    /// Applies a chunk in one transaction; on failure, event by event, retrying and parking.
    async fn handle_chunk(&mut self, chunk: &[&RecordedEvent]) {
        let Some(last) = chunk.last().map(|e| e.position) else {
            return;
        };
        match self.apply(chunk, self.generation, false, last).await {
            Ok(()) => return self.advanced(last),
            Err(error) if chunk.len() == 1 => {
                warn!(projection = self.name(), %error, "event failed")
            }
            Err(error) => {
                warn!(projection = self.name(), %error, "batch failed; applying its events one by one")
            }
        }
        for event in chunk {
            self.handle_one(event).await;
        }
    }

    async fn handle_one(&mut self, event: &RecordedEvent) {
        let mut backoff = self.config.retry_backoff;
        let mut attempts = 0;
        loop {
            let error = match self
                .apply(&[event], self.generation, false, event.position)
                .await
            {
                Ok(()) => return self.advanced(event.position),
                Err(error) => error,
            };
            self.publish(|s| {
                s.state = ProcessorState::Failing;
                s.last_error = Some(error.to_string());
            });
            match error {
                // The database, not the event: wait and try again, however long it takes; a
                // healthy event is never parked for an outage.
                ApplyError::Store(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2).min(Duration::from_secs(5));
                }
                ApplyError::Handler(error) => {
                    attempts += 1;
                    if attempts > self.config.retries {
                        return self.park(event, error, attempts).await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
            }
        }
    }

    /// Parks `event` (and advances the checkpoint past it) in one transaction. If even that
    /// fails (the database is down), waits and tries again: the checkpoint never passes an
    /// event that is neither applied nor parked.
    async fn park(&mut self, event: &RecordedEvent, error: String, attempts: u32) {
        warn!(projection = self.name(), position = event.position, stream = %event.stream, %error, "parking a dead letter");
        loop {
            let commit = Commit {
                name: self.projection.name(),
                generation: self.generation,
                position: event.position,
                park: vec![letter(event, error.clone(), attempts, true)],
                fail_before_commit: take(&self.crash_points),
                ..Commit::default()
            };
            match self.read.commit(commit).await {
                Ok(()) => break,
                Err(store_error) => {
                    warn!(projection = self.name(), error = %store_error, "cannot park; retrying");
                    tokio::time::sleep(self.config.retry_backoff).await;
                }
            }
        }
        self.blocked.insert(event.stream.clone());
        self.advanced(event.position);
        self.publish(|s| s.state = ProcessorState::Running);
    }

    /// The most events one transaction applies.
    fn batch_max(&self) -> usize {
        self.config
            .batch_max
            .unwrap_or_else(|| self.read.preferred_batch())
            .max(1)
    }

    fn advanced(&mut self, position: u64) {
        self.position = position;
        metrics::gauge!("nursery_projection_position", "projection" => self.projection.name().to_owned()).set(position as f64);
        self.publish(|s| {
            s.position = position;
            if s.state == ProcessorState::Failing {
                s.state = ProcessorState::Running;
            }
        });
    }

    /// Applies `events` to `generation` and commits them with checkpoint `position`. Events of
    /// blocked streams are parked as waiting instead (live only).
    async fn apply(
        &self,
        events: &[&RecordedEvent],
        generation: u32,
        replaying: bool,
        position: u64,
    ) -> Result<(), ApplyError> {
        let projection = &self.projection;
        let (waiting, applied): (Vec<&RecordedEvent>, Vec<&RecordedEvent>) = events
            .iter()
            .partition(|e| !replaying && self.blocked.contains(&e.stream));
        let mut keys: Vec<String> = applied.iter().flat_map(|e| projection.keys(e)).collect();
        keys.sort();
        keys.dedup();
        let loaded = self
            .read
            .load(projection.name(), generation, &keys)
            .await
            .map_err(ApplyError::Store)?;
        let mut documents = Documents::loaded(loaded);
        for event in &applied {
            let context = ApplyContext { replaying };
            match catch_unwind(AssertUnwindSafe(|| {
                projection.apply(event, &mut documents, context)
            })) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return Err(ApplyError::Handler(format!(
                        "position {}: {error}",
                        event.position
                    )));
                }
                Err(_) => {
                    return Err(ApplyError::Handler(format!(
                        "position {}: the handler panicked",
                        event.position
                    )));
                }
            }
        }
        let park = waiting
            .iter()
            .map(|e| {
                letter(
                    e,
                    format!("waits behind a parked event of {}", e.stream),
                    0,
                    false,
                )
            })
            .collect();
        self.read
            .commit(Commit {
                name: projection.name(),
                generation,
                writes: documents.writes(),
                position,
                park,
                resolve: Vec::new(),
                skip: Vec::new(),
                fail_before_commit: take(&self.crash_points),
            })
            .await
            .map_err(ApplyError::Store)
    }

    async fn begin_rebuild(
        &mut self,
        reply: oneshot::Sender<Result<(), String>>,
        current: Option<Rebuild>,
    ) -> Option<Rebuild> {
        if let Some(current) = current {
            let _ = reply.send(Err("a rebuild is already running".into()));
            return Some(current);
        }
        let generation = self.generation + 1;
        if let Err(error) = self.read.discard(self.name(), generation).await {
            let _ = reply.send(Err(error.to_string()));
            return None;
        }
        info!(
            projection = self.name(),
            generation, "rebuilding from position 0"
        );
        self.publish(|s| {
            s.state = ProcessorState::Rebuilding;
            s.rebuild_position = Some(0);
        });
        Some(Rebuild {
            generation,
            position: 0,
            reply,
        })
    }

    /// One page of the rebuild; promotes the new generation once it reaches the live position.
    async fn rebuild_step(&mut self, mut rebuild: Rebuild) -> Option<Rebuild> {
        if rebuild.position >= self.position {
            return self.promote(rebuild).await;
        }
        let page = match self
            .store
            .read_all(rebuild.position + 1, self.batch_max())
            .await
        {
            Ok(page) => page,
            Err(error) => return self.abandon(rebuild, error.to_string()).await,
        };
        let page: Vec<&RecordedEvent> = page
            .iter()
            .filter(|e| e.position <= self.position)
            .collect();
        let Some(last) = page.last().map(|e| e.position) else {
            return self.promote(rebuild).await;
        };
        let parked: HashSet<u64> = match self.read.dead_letters(self.name()).await {
            Ok(letters) => letters.into_iter().map(|d| d.position).collect(),
            Err(error) => return self.abandon(rebuild, error.to_string()).await,
        };
        // What the live generation parked, the rebuilt one leaves out too, so both agree.
        let page: Vec<&RecordedEvent> = page
            .into_iter()
            .filter(|e| !parked.contains(&e.position))
            .collect();
        if let Err(error) = self.apply(&page, rebuild.generation, true, last).await {
            return self.abandon(rebuild, error.to_string()).await;
        }
        rebuild.position = last;
        self.publish(|s| s.rebuild_position = Some(last));
        Some(rebuild)
    }

    async fn promote(&mut self, rebuild: Rebuild) -> Option<Rebuild> {
        if let Err(error) = self.read.promote(self.name(), rebuild.generation).await {
            return self.abandon(rebuild, error.to_string()).await;
        }
        info!(
            projection = self.name(),
            generation = rebuild.generation,
            "rebuilt generation serves"
        );
        self.generation = rebuild.generation;
        self.position = self.position.max(rebuild.position);
        let position = self.position;
        self.publish(|s| {
            s.generation = rebuild.generation;
            s.position = position;
            s.state = ProcessorState::Running;
            s.rebuild_position = None;
        });
        let _ = rebuild.reply.send(Ok(()));
        None
    }

    async fn abandon(&mut self, rebuild: Rebuild, error: String) -> Option<Rebuild> {
        warn!(projection = self.name(), %error, "rebuild abandoned; the current generation keeps serving");
        let _ = self.read.discard(self.name(), rebuild.generation).await;
        self.publish(|s| {
            s.state = ProcessorState::Running;
            s.rebuild_position = None;
            s.last_error = Some(error.clone());
        });
        let _ = rebuild.reply.send(Err(error));
        None
    }

    /// Applies a stream's dead letters in order, in one transaction, resolving them.
    async fn retry(&mut self, stream: &StreamId) -> Result<usize, String> {
        let (letters, events) =
            parked_events(&*self.read, &*self.store, self.name(), stream).await?;
        if letters.is_empty() {
            self.blocked.remove(stream);
            return Ok(0);
        }
        let keys: Vec<String> = events
            .iter()
            .flat_map(|e| self.projection.keys(e))
            .collect();
        let loaded = self
            .read
            .load(self.name(), self.generation, &keys)
            .await
            .map_err(|e| e.to_string())?;
        let mut documents = Documents::loaded(loaded);
        for event in &events {
            let context = ApplyContext { replaying: false };
            match catch_unwind(AssertUnwindSafe(|| {
                self.projection.apply(event, &mut documents, context)
            })) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return Err(format!("position {} fails again: {error}", event.position));
                }
                Err(_) => return Err(format!("position {} panics again", event.position)),
            }
        }
        self.read
            .commit(Commit {
                name: self.projection.name(),
                generation: self.generation,
                writes: documents.writes(),
                position: self.position,
                resolve: letters.iter().map(|d| d.id).collect(),
                ..Commit::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        self.blocked.remove(stream);
        Ok(letters.len())
    }

    /// Marks one dead letter skipped; if its stream then has only waiting letters, applies them.
    async fn skip(&mut self, id: i64) -> Result<(), String> {
        let name = self.projection.name().to_owned();
        if let Some(stream) =
            skip_letter(&*self.read, &name, self.generation, self.position, id).await?
        {
            self.retry(&stream).await?;
        }
        Ok(())
    }
}

/// Why applying failed: the handler (counts toward parking) or the database (retried).
#[derive(Debug)]
enum ApplyError {
    Handler(String),
    Store(StoreError),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handler(error) => f.write_str(error),
            Self::Store(error) => write!(f, "{error}"),
        }
    }
}

fn letter(event: &RecordedEvent, error: String, attempts: u32, parked: bool) -> NewDeadLetter {
    NewDeadLetter {
        position: event.position,
        stream: event.stream.clone(),
        sequence: event.sequence,
        event_type: event.event_type.clone(),
        error,
        attempts,
        parked,
    }
}

fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// The streams with a dead letter of `name` that is not skipped: their later events wait
/// behind it.
pub(crate) async fn blocked_streams(
    read: &dyn ReadStore,
    name: &str,
) -> Result<HashSet<StreamId>, StoreError> {
    Ok(read
        .dead_letters(name)
        .await?
        .into_iter()
        .filter(|d| !d.skipped)
        .map(|d| d.stream)
        .collect())
}

/// The dead letters of `name` for `stream` that are not skipped, by position, with their events
/// read again from `store`: what a retry handles, in order.
pub(crate) async fn parked_events(
    read: &dyn ReadStore,
    store: &dyn EventStore,
    name: &str,
    stream: &StreamId,
) -> Result<(Vec<DeadLetter>, Vec<RecordedEvent>), String> {
    let mut letters: Vec<DeadLetter> = read
        .dead_letters(name)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|d| &d.stream == stream && !d.skipped)
        .collect();
    letters.sort_by_key(|d| d.position);
    let mut events = Vec::with_capacity(letters.len());
    for letter in &letters {
        let event = store
            .read_all(letter.position, 1)
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .filter(|e| e.position == letter.position)
            .ok_or_else(|| format!("event {} is not in the store", letter.position))?;
        events.push(event);
    }
    Ok((letters, events))
}

/// Marks dead letter `id` of `name` skipped (the checkpoint stays at `position`); answers its
/// stream when no other parked letter of it is left, so the letters waiting behind it can go.
pub(crate) async fn skip_letter(
    read: &dyn ReadStore,
    name: &str,
    generation: u32,
    position: u64,
    id: i64,
) -> Result<Option<StreamId>, String> {
    let letters = read.dead_letters(name).await.map_err(|e| e.to_string())?;
    let letter = letters
        .iter()
        .find(|d| d.id == id)
        .ok_or_else(|| format!("no dead letter {id}"))?;
    let stream = letter.stream.clone();
    read.commit(Commit {
        name,
        generation,
        position,
        skip: vec![id],
        ..Commit::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let still_parked = letters
        .iter()
        .any(|d| d.id != id && d.stream == stream && d.parked && !d.skipped);
    Ok((!still_parked).then_some(stream))
}

/// Sends a processor the request `make` builds around a reply channel and waits for its answer
/// (`gone` when the processor has stopped).
pub(crate) async fn ask<C, T>(
    control: &mpsc::Sender<C>,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> C,
    gone: &str,
) -> Result<T, String> {
    let (reply, answer) = oneshot::channel();
    control
        .send(make(reply))
        .await
        .map_err(|_| gone.to_owned())?;
    answer.await.map_err(|_| gone.to_owned())?
}
