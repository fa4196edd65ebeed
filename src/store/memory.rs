//! The in-memory event store: the same contract as the durable ones, held in a mutex, for tests
//! and the test kit. Nothing survives the process.
//!
//! Must not touch: any database or the clock of the runtime beyond stamping `recorded_at`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use uuid::Uuid;

use super::plan::{StoredId, plan, stored_now};
use super::{
    AppendRequest, AppendResult, EventStore, LoadStart, NewestFirst, RecordedEvent, Snapshot,
    StoreError, StreamId,
};

/// An event store in memory.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Every event; the event at position p is at index p - 1.
    events: Vec<RecordedEvent>,
    /// Per stream, the indexes of its events in sequence order.
    streams: HashMap<StreamId, Vec<usize>>,
    ids: HashMap<Uuid, usize>,
    snapshots: HashMap<StreamId, BTreeMap<u64, Snapshot>>,
}

impl Inner {
    fn version(&self, stream: &StreamId) -> u64 {
        self.streams.get(stream).map_or(0, |s| s.len() as u64)
    }

    fn newest_snapshot(&self, stream: &StreamId) -> Option<Snapshot> {
        self.snapshots
            .get(stream)
            .and_then(|kept| kept.last_key_value())
            .map(|(_, s)| s.clone())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied append: appends mutate only
        // after planning, with infallible pushes. So a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append_batch(&self, batch: &[AppendRequest]) -> Result<Vec<AppendResult>, StoreError> {
        let mut inner = self.lock();
        let versions = batch
            .iter()
            .map(|r| (r.stream.clone(), inner.version(&r.stream)))
            .collect();
        let stored = batch
            .iter()
            .flat_map(|r| &r.events)
            .filter_map(|e| {
                let index = *inner.ids.get(&e.event_id)?;
                let recorded = &inner.events[index];
                Some((
                    e.event_id,
                    StoredId {
                        stream: recorded.stream.clone(),
                        sequence: recorded.sequence,
                        position: recorded.position,
                        recorded_at: recorded.recorded_at,
                    },
                ))
            })
            .collect();
        let head = inner.events.len() as u64;
        let now = stored_now();
        let planned = plan(batch, versions, stored, head, now);
        for row in planned.rows {
            let index = inner.events.len();
            inner.events.push(RecordedEvent {
                stream: row.stream.clone(),
                sequence: row.sequence,
                position: row.position,
                event_id: row.event.event_id,
                event_type: row.event.event_type.clone(),
                revision: row.event.revision,
                format: row.event.format,
                payload: row.event.payload.clone(),
                metadata: row.event.metadata.clone(),
                recorded_at: now,
            });
            inner
                .streams
                .entry(row.stream.clone())
                .or_default()
                .push(index);
            inner.ids.insert(row.event.event_id, index);
        }
        Ok(planned.results)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        let Some(indexes) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
        Ok(indexes
            .iter()
            .skip(start)
            .map(|&i| &inner.events[i])
            .take_while(|e| e.sequence <= to)
            .take(max)
            .cloned()
            .collect())
    }

    async fn recent_command_ids(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let inner = self.lock();
        let Some(indexes) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let newest_first = indexes
            .iter()
            .rev()
            .map(|&i| &inner.events[i])
            .skip_while(|event| event.sequence > to)
            .take_while(|event| event.sequence >= from)
            .map(|event| event.metadata.command_id);
        Ok(NewestFirst::collect(newest_first, max))
    }

    async fn read_all(&self, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        let start = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
        Ok(inner.events.iter().skip(start).take(max).cloned().collect())
    }

    async fn head(&self) -> Result<u64, StoreError> {
        Ok(self.lock().events.len() as u64)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        Ok(self.lock().version(stream))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot, keep: usize) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let kept = inner.snapshots.entry(snapshot.stream.clone()).or_default();
        kept.insert(snapshot.sequence, snapshot.clone());
        while kept.len() > keep.max(1) {
            kept.pop_first();
        }
        Ok(())
    }

    async fn latest_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.lock().newest_snapshot(stream))
    }

    async fn load_start(&self, stream: &StreamId) -> Result<LoadStart, StoreError> {
        let inner = self.lock();
        Ok(LoadStart {
            snapshot: inner.newest_snapshot(stream),
            version: Some(inner.version(stream)),
        })
    }

    async fn snapshot_count(&self, stream: &StreamId) -> Result<usize, StoreError> {
        Ok(self.lock().snapshots.get(stream).map_or(0, BTreeMap::len))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
