//! Where projections keep their state: JSON documents by key, a checkpoint per generation, the
//! generation that serves, and dead letters, behind one trait with SQLite, PostgreSQL and
//! in-memory implementations. A batch's documents, its checkpoint and its dead letters are
//! written in one transaction ([`ReadStore::commit`]), so a crash anywhere neither loses nor
//! doubles an update.
//!
//! Must not touch: the actors, HTTP, any concrete read model.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::store::{StoreError, StreamId};

/// One event that a processor could not handle (or that waits behind one of its aggregate).
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Its id, to retry or skip it.
    pub id: i64,
    /// The processor that failed.
    pub processor: String,
    /// The event's global position.
    pub position: u64,
    /// The event's stream.
    pub stream: StreamId,
    /// The event's sequence in its stream.
    pub sequence: u64,
    /// The event's type.
    pub event_type: String,
    /// Why it failed (for one waiting behind: which position it waits for).
    pub error: String,
    /// How many times handling it was tried.
    pub attempts: u32,
    /// True when it failed itself; false when it only waits behind a failed event of its
    /// aggregate.
    pub parked: bool,
    /// True when an operator skipped it: it blocks nothing any more, and rebuilds leave it out
    /// as the live generation did.
    pub skipped: bool,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// A dead letter to add.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDeadLetter {
    /// The event's global position.
    pub position: u64,
    /// The event's stream.
    pub stream: StreamId,
    /// The event's sequence.
    pub sequence: u64,
    /// The event's type.
    pub event_type: String,
    /// Why.
    pub error: String,
    /// How many tries.
    pub attempts: u32,
    /// Failed itself (true) or waits behind (false).
    pub parked: bool,
}

/// What one batch writes, atomically.
#[derive(Debug, Default)]
pub struct Commit<'a> {
    /// The processor.
    pub name: &'a str,
    /// The generation written.
    pub generation: u32,
    /// Documents to put (`Some`) or delete (`None`).
    pub writes: Vec<(String, Option<Value>)>,
    /// The new checkpoint: the last position handled.
    pub position: u64,
    /// Dead letters to add.
    pub park: Vec<NewDeadLetter>,
    /// Dead letters resolved (applied on a retry): removed.
    pub resolve: Vec<i64>,
    /// Dead letters skipped: kept, marked skipped.
    pub skip: Vec<i64>,
    /// Test hook (a crash point): write everything, then fail instead of committing.
    pub fail_before_commit: bool,
}

/// A response given to a request that carried an idempotency key: the same key with the same
/// request answers it again, whatever happened since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    /// What identifies the request (method, path and body hashed): the same key with another
    /// request is a client error, not a repeat.
    pub fingerprint: String,
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: String,
    /// When it was first given.
    pub created_at: DateTime<Utc>,
}

/// The state of projections (and the responses remembered under idempotency keys: the read
/// side's other durable memory).
#[async_trait]
pub trait ReadStore: Send + Sync + 'static {
    /// The generation of `name` that serves, registering `name` at generation 1 if new.
    async fn active_generation(&self, name: &str) -> Result<u32, StoreError>;

    /// The generation of `name` that serves, without registering it (`None`: not registered
    /// yet). For processes that follow a processor another process runs, and must not write.
    async fn serving_generation(&self, name: &str) -> Result<Option<u32>, StoreError>;

    /// The last position generation `generation` of `name` applied (0: none).
    async fn checkpoint(&self, name: &str, generation: u32) -> Result<u64, StoreError>;

    /// The serving generation of `name` and its checkpoint, without registering `name`
    /// (`None`: not registered yet): how a process follows a processor another one runs.
    async fn serving_checkpoint(&self, name: &str) -> Result<Option<(u32, u64)>, StoreError> {
        match self.serving_generation(name).await? {
            Some(generation) => Ok(Some((generation, self.checkpoint(name, generation).await?))),
            None => Ok(None),
        }
    }

    /// The documents of `keys` in a generation (missing keys are absent from the answer).
    async fn load(
        &self,
        name: &str,
        generation: u32,
        keys: &[String],
    ) -> Result<HashMap<String, Value>, StoreError>;

    /// Writes a batch in one transaction.
    async fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError>;

    /// How many events a runner should apply per transaction when its configuration leaves it
    /// open. SQLite has one writer for the events and the read models alike, so its read-side
    /// transactions stay short (a long one would hold up appends); PostgreSQL takes larger ones.
    fn preferred_batch(&self) -> usize {
        1_000
    }

    /// One document of the serving generation.
    async fn get(&self, name: &str, key: &str) -> Result<Option<Value>, StoreError>;

    /// The documents of `keys` in the serving generation (missing keys are absent from the
    /// answer): [`Self::load`] on the generation [`Self::serving_generation`] names.
    async fn get_many(
        &self,
        name: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Value>, StoreError> {
        match self.serving_generation(name).await? {
            Some(generation) => self.load(name, generation, keys).await,
            None => Ok(HashMap::new()),
        }
    }

    /// The documents of the serving generation whose key starts with `prefix`, in key order.
    async fn scan(
        &self,
        name: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError>;

    /// Makes `generation` serve, and drops every other generation's documents and checkpoints,
    /// in one transaction.
    async fn promote(&self, name: &str, generation: u32) -> Result<(), StoreError>;

    /// Drops a generation that will not serve (an abandoned rebuild).
    async fn discard(&self, name: &str, generation: u32) -> Result<(), StoreError>;

    /// The dead letters of `processor`, oldest first.
    async fn dead_letters(&self, processor: &str) -> Result<Vec<DeadLetter>, StoreError>;

    /// The response remembered under `key` in `scope`, if any.
    async fn recall_response(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<StoredResponse>, StoreError>;

    /// Remembers `response` under `key` in `scope` unless a response given at or after
    /// `replace_before` is there; answers the response that stays (the first one wins).
    async fn remember_response(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
        replace_before: DateTime<Utc>,
    ) -> Result<StoredResponse, StoreError>;

    /// Forgets the responses given before `before`; answers how many.
    async fn forget_responses(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Escapes `prefix` for a `LIKE 'prefix%'` with `\` as the escape character.
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push('%');
    escaped
}
