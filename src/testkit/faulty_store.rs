//! An event store that misbehaves on request, for supervision and recovery tests.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::{
    AppendRequest, AppendResult, EncodedEvent, EventStore, EventStoreExt, ExpectedVersion,
    LoadStart, NewEvent, RecordedEvent, Snapshot, StoreError, StreamId,
};

/// Wraps a store; the next N appends can fail (the database is down), be rejected (each request
/// refused), or meet interference (another writer appends to each stream first: a real
/// concurrency conflict); or every append can fail once an event of a given type is stored (the
/// process died right after that commit).
pub struct FaultyStore {
    inner: Arc<dyn EventStore>,
    fail: AtomicUsize,
    reject: AtomicUsize,
    interfere: AtomicUsize,
    interference: Mutex<Option<Interference>>,
    appends: AtomicU64,
    dies_after: Mutex<Option<String>>,
    dead: AtomicBool,
}

type Interference = Arc<dyn Fn() -> NewEvent + Send + Sync>;

impl FaultyStore {
    /// Wraps `inner`, behaving until told otherwise.
    pub fn new(inner: Arc<dyn EventStore>) -> Self {
        Self {
            inner,
            fail: AtomicUsize::new(0),
            reject: AtomicUsize::new(0),
            interfere: AtomicUsize::new(0),
            interference: Mutex::new(None),
            appends: AtomicU64::new(0),
            dies_after: Mutex::new(None),
            dead: AtomicBool::new(false),
        }
    }

    /// The next `n` append transactions fail as if the database were unreachable.
    pub fn fail_next_appends(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }

    /// Every request of the next `n` append transactions is rejected (nothing stored).
    pub fn reject_next_appends(&self, n: usize) {
        self.reject.store(n, Ordering::SeqCst);
    }

    /// Before each of the next `n` append transactions, another writer appends the event
    /// `make` returns to every stream in it: a real concurrency conflict.
    pub fn interfere_next_appends(
        &self,
        n: usize,
        make: impl Fn() -> NewEvent + Send + Sync + 'static,
    ) {
        *self.interference.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(make));
        self.interfere.store(n, Ordering::SeqCst);
    }

    /// Once an append carrying an event of type `event_type` is stored, every later append
    /// fails: the process died right after that commit.
    pub fn die_after(&self, event_type: &str) {
        *self.dies_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(event_type.to_owned());
    }

    /// Whether the event [`FaultyStore::die_after`] waits for was stored.
    pub fn died(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// How many append transactions reached this store.
    pub fn append_calls(&self) -> u64 {
        self.appends.load(Ordering::SeqCst)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn EventStore> {
        &self.inner
    }
}

fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl EventStore for FaultyStore {
    async fn append_batch(&self, batch: &[AppendRequest]) -> Result<Vec<AppendResult>, StoreError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        if self.died() || take(&self.fail) {
            return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        }
        if take(&self.reject) {
            return Ok(batch
                .iter()
                .map(|_| Err(StoreError::InvalidInput("rejected by the test kit".into())))
                .collect());
        }
        let interference = self
            .interference
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(make) = interference.filter(|_| take(&self.interfere)) {
            let mut streams: Vec<&StreamId> = batch.iter().map(|r| &r.stream).collect();
            streams.dedup();
            for stream in streams {
                self.inner
                    .append(AppendRequest {
                        stream: stream.clone(),
                        expected: ExpectedVersion::Any,
                        events: vec![make()],
                    })
                    .await?;
            }
        }
        let results = self.inner.append_batch(batch).await?;
        let trigger = self
            .dies_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(trigger) = trigger {
            if batch
                .iter()
                .flat_map(|r| &r.events)
                .any(|e| e.event_type == trigger)
            {
                self.dead.store(true, Ordering::SeqCst);
            }
        }
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, from, to, max).await
    }

    async fn replay_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
        visit: &mut (dyn for<'e> FnMut(EncodedEvent<'e>) -> Result<(), StoreError> + Send),
    ) -> Result<usize, StoreError> {
        self.inner.replay_stream(stream, from, to, max, visit).await
    }

    async fn recent_command_ids(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.inner.recent_command_ids(stream, from, to, max).await
    }

    async fn read_all(&self, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(from, max).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot, keep: usize) -> Result<(), StoreError> {
        self.inner.save_snapshot(snapshot, keep).await
    }

    async fn latest_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.latest_snapshot(stream).await
    }

    async fn load_start(&self, stream: &StreamId) -> Result<LoadStart, StoreError> {
        self.inner.load_start(stream).await
    }

    async fn snapshot_count(&self, stream: &StreamId) -> Result<usize, StoreError> {
        self.inner.snapshot_count(stream).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
