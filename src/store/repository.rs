//! Loading and saving one aggregate on top of an [`EventStore`]: latest snapshot plus the
//! events after it on load, typed events encoded and appended with an expected version on save,
//! and a snapshot every N events.
//!
//! Must not touch: actors (the aggregate actor drives a repository), projections, HTTP.

use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use chrono::Utc;
use tracing::{instrument, warn};
use uuid::Uuid;

use super::{
    AppendRequest, Appended, Codec, EncodedEvent, EventStore, EventStoreExt, ExpectedVersion,
    Metadata, NewestFirst, Snapshot, StoreError, StreamId,
};
use crate::domain::Aggregate;

/// When to snapshot and how many snapshots to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot each time the version crosses a multiple of this (0: never).
    pub every: u64,
    /// How many snapshots of a stream to keep (at least 1 is kept).
    pub keep: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            every: 100,
            keep: 2,
        }
    }
}

impl SnapshotPolicy {
    /// Never snapshot.
    pub const NEVER: Self = Self { every: 0, keep: 1 };

    /// Whether moving a stream from `before` to `after` crosses a snapshot point.
    pub fn due(&self, before: u64, after: u64) -> bool {
        self.every > 0 && after / self.every > before / self.every
    }
}

/// An aggregate as loaded: its state and the version it is at.
#[derive(Clone, Debug)]
pub struct Loaded<A> {
    /// The state after every stored event.
    pub state: A,
    /// The last sequence number folded into the state (0: no events).
    pub version: u64,
    /// How many events were folded on top of the snapshot (or from scratch).
    pub replayed: u64,
    /// The command ids of the stream's latest events (up to 16, oldest first, from its last 256
    /// events when loaded; a catch-up adds those of the events it missed), so a repeated
    /// command is recognised after a restart, also one that a snapshot already covers.
    pub recent_commands: Vec<Uuid>,
}

/// How many recent command ids [`Loaded`] keeps.
const RECENT_COMMANDS: usize = 16;

/// How many of the latest events a load looks at for their command ids: a stream whose events
/// mostly carry none is not read backwards in full.
const RECENT_WINDOW: u64 = 256;

/// Adds the command ids of events just folded (`newest`, newest first) to those `loaded`
/// remembers (oldest first): an id seen again moves to its newer place, and only the latest
/// [`RECENT_COMMANDS`] stay.
fn remember<A>(loaded: &mut Loaded<A>, newest: Vec<Uuid>) {
    let recent = &mut loaded.recent_commands;
    recent.retain(|id| !newest.contains(id));
    recent.extend(newest.into_iter().rev());
    let excess = recent.len().saturating_sub(RECENT_COMMANDS);
    recent.drain(..excess);
}

/// Loads and saves aggregates of type `A`.
pub struct Repository<A> {
    store: Arc<dyn EventStore>,
    codec: Codec,
    policy: SnapshotPolicy,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            codec: self.codec.clone(),
            policy: self.policy,
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository over `store`, encoding with `codec`, snapshotting by `policy`.
    pub fn new(store: Arc<dyn EventStore>, codec: Codec, policy: SnapshotPolicy) -> Self {
        Self {
            store,
            codec,
            policy,
            aggregate: PhantomData,
        }
    }

    /// The stream of aggregate `id`.
    pub fn stream(id: &str) -> StreamId {
        StreamId::new(A::TYPE, id)
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The snapshot policy.
    pub fn policy(&self) -> SnapshotPolicy {
        self.policy
    }

    /// Loads aggregate `id`: the latest usable snapshot, then the events after it, streamed a
    /// page at a time, and the command ids of its latest events (those before the snapshot
    /// too). A snapshot of another revision, or one that does not decode, is ignored (with a
    /// warning) and the state is rebuilt from the events.
    ///
    /// The snapshot comes with the stream's version ([`EventStore::load_start`]), so when
    /// nothing follows it no events are read: an aggregate seen for the first time costs one
    /// read of the store.
    #[instrument(skip(self), fields(aggregate = A::TYPE), err)]
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let stream = Self::stream(id);
        let start = self.store.load_start(&stream).await?;
        let (state, version) = start
            .snapshot
            .and_then(|snapshot| self.usable(snapshot))
            .unwrap_or_default();
        let loaded = Loaded {
            state,
            version,
            replayed: 0,
            recent_commands: Vec::new(),
        };
        if start.version == Some(version) {
            // Nothing stored after the snapshot (for an aggregate seen for the first time,
            // nothing at all): no events to read, only the command ids of the latest ones.
            return self.remember_recent(&stream, loaded, 1).await;
        }
        self.fold(&stream, loaded, 1).await
    }

    /// The latest snapshot of `stream` as a state and its version, if there is one of the
    /// current revision that decodes (others are ignored with a warning).
    async fn usable_snapshot(&self, stream: &StreamId) -> Result<Option<(A, u64)>, StoreError> {
        Ok(self
            .store
            .latest_snapshot(stream)
            .await?
            .and_then(|snapshot| self.usable(snapshot)))
    }

    /// `snapshot` as a state and its version, if it is of the current revision and decodes
    /// (if not, it is ignored with a warning).
    fn usable(&self, snapshot: Snapshot) -> Option<(A, u64)> {
        if snapshot.revision != A::SNAPSHOT_REVISION {
            warn!(
                revision = snapshot.revision,
                current = A::SNAPSHOT_REVISION,
                "ignoring a snapshot of another revision"
            );
            return None;
        }
        match self.codec.decode_state::<A>(
            &snapshot.stream,
            snapshot.sequence,
            snapshot.format,
            &snapshot.payload,
        ) {
            Ok(state) => Some((state, snapshot.sequence)),
            Err(error) => {
                warn!(%error, "ignoring a snapshot that does not decode");
                None
            }
        }
    }

    /// Brings `loaded` up to date: folds the events of aggregate `id` stored after
    /// `loaded.version` (another process wrote them, or a part of a group that failed). This
    /// is what an actor does after a concurrency conflict: it reads only what it missed, in one
    /// query of at most a snapshot interval. When it missed a whole interval or more and a
    /// newer snapshot exists, it starts from that snapshot instead.
    #[instrument(skip(self, loaded), fields(aggregate = A::TYPE, from = loaded.version + 1), err)]
    pub async fn catch_up(&self, id: &str, loaded: Loaded<A>) -> Result<Loaded<A>, StoreError> {
        let stream = Self::stream(id);
        let mut loaded = loaded;
        let missed_from = loaded.version.saturating_add(1);
        if self.policy.every == 0 {
            return self.fold(&stream, loaded, missed_from).await;
        }
        let interval = usize::try_from(self.policy.every).unwrap_or(usize::MAX);
        let missed = self
            .store
            .read_stream(&stream, missed_from, u64::MAX, interval)
            .await?;
        if missed.len() == interval {
            // A whole interval missed: a snapshot at least that far on saves folding it.
            if let Some((state, version)) = self.usable_snapshot(&stream).await? {
                if version >= loaded.version + missed.len() as u64 {
                    loaded.state = state;
                    loaded.version = version;
                    // The ids of the events the snapshot skips come from the store.
                    return self.fold(&stream, loaded, missed_from).await;
                }
            }
        }
        // The page read is folded, not read again; what lies beyond it is folded after.
        for record in &missed {
            self.fold_event(&stream, &mut loaded, record.encoded())?;
        }
        let newest = NewestFirst::collect(
            missed.iter().rev().map(|record| record.metadata.command_id),
            RECENT_COMMANDS,
        );
        remember(&mut loaded, newest);
        if missed.len() < interval {
            return Ok(loaded);
        }
        let rest = loaded.version.saturating_add(1);
        self.fold(&stream, loaded, rest).await
    }

    /// Folds the events after `loaded.version`, each decoded straight from the row the store
    /// read (a page or a stream of rows at a time); then adds the command ids of the latest
    /// events from `ids_from` on (at most the last [`RECENT_WINDOW`]), read apart, so folding
    /// never touches the events' metadata.
    async fn fold(
        &self,
        stream: &StreamId,
        loaded: Loaded<A>,
        ids_from: u64,
    ) -> Result<Loaded<A>, StoreError> {
        let mut loaded = loaded;
        let next = loaded.version.saturating_add(1);
        self.store
            .replay_stream(stream, next, u64::MAX, usize::MAX, &mut |event| {
                self.fold_event(stream, &mut loaded, event)
            })
            .await?;
        self.remember_recent(stream, loaded, ids_from).await
    }

    /// Adds to `loaded` the command ids of its latest events from `ids_from` on (at most the
    /// last [`RECENT_WINDOW`]).
    async fn remember_recent(
        &self,
        stream: &StreamId,
        mut loaded: Loaded<A>,
        ids_from: u64,
    ) -> Result<Loaded<A>, StoreError> {
        let window = ids_from
            .max(loaded.version.saturating_sub(RECENT_WINDOW - 1))
            .max(1);
        if loaded.version >= window {
            let newest = self
                .store
                .recent_command_ids(stream, window, loaded.version, RECENT_COMMANDS)
                .await?;
            remember(&mut loaded, newest);
        }
        Ok(loaded)
    }

    /// Folds one stored event into `loaded`: its state, version and count.
    fn fold_event(
        &self,
        stream: &StreamId,
        loaded: &mut Loaded<A>,
        event: EncodedEvent<'_>,
    ) -> Result<(), StoreError> {
        let decoded = self.codec.decode_encoded::<A::Event>(stream, event)?;
        // A panic in `apply` while loading becomes an error, so the actor's supervisor
        // restarts it with backoff instead of the task vanishing.
        if catch_unwind(AssertUnwindSafe(|| loaded.state.apply(&decoded))).is_err() {
            return Err(StoreError::Corrupt {
                stream: stream.clone(),
                sequence: event.sequence,
                reason: "applying the event panicked".into(),
            });
        }
        loaded.version = event.sequence;
        loaded.replayed += 1;
        Ok(())
    }

    /// Encodes `events` as one append to aggregate `id` at `expected` version. With a command
    /// id in `metadata`, event ids derive from it (`ids::derived(command id, index)`), so the same
    /// command applied twice is refused by the store as a duplicate.
    pub fn append_request(
        &self,
        id: &str,
        expected: u64,
        events: &[A::Event],
        metadata: &Metadata,
    ) -> Result<AppendRequest, StoreError> {
        let events = (0u32..)
            .zip(events)
            .map(|(index, event)| match metadata.command_id {
                Some(command) => {
                    let id = super::ids::derived(&command, &index.to_be_bytes());
                    self.codec.encode_event_with_id(event, metadata.clone(), id)
                }
                None => self.codec.encode_event(event, metadata.clone()),
            })
            .collect::<Result<_, _>>()?;
        Ok(AppendRequest {
            stream: Self::stream(id),
            expected: ExpectedVersion::Exact(expected),
            events,
        })
    }

    /// Appends `events` to aggregate `id`, expecting it at version `expected`.
    #[instrument(skip(self, events, metadata), fields(aggregate = A::TYPE, events = events.len()), err)]
    pub async fn save(
        &self,
        id: &str,
        expected: u64,
        events: &[A::Event],
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        let request = self.append_request(id, expected, events, metadata)?;
        self.store.append(request).await
    }

    /// Snapshots `state` at `version` if moving from `before` to `version` crossed a snapshot
    /// point of the policy. A failed snapshot is only a warning: snapshots are an optimisation.
    pub async fn snapshot_if_due(&self, id: &str, state: &A, before: u64, version: u64) {
        if !self.policy.due(before, version) {
            return;
        }
        if let Err(error) = self.snapshot(id, state, version).await {
            warn!(%error, aggregate = A::TYPE, id, "snapshot failed");
        }
    }

    /// Snapshots `state` at `version` and prunes all but the newest `keep`.
    pub async fn snapshot(&self, id: &str, state: &A, version: u64) -> Result<(), StoreError> {
        let snapshot = Snapshot {
            stream: Self::stream(id),
            sequence: version,
            revision: A::SNAPSHOT_REVISION,
            format: self.codec.format(),
            payload: self.codec.encode_state(state)?,
            recorded_at: Utc::now(),
        };
        self.store.save_snapshot(&snapshot, self.policy.keep).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Uuid {
        Uuid::from_u64_pair(0, n)
    }

    fn remembering(ids: impl IntoIterator<Item = u64>) -> Loaded<()> {
        Loaded {
            state: (),
            version: 0,
            replayed: 0,
            recent_commands: ids.into_iter().map(id).collect(),
        }
    }

    #[test]
    fn ids_read_later_go_after_those_remembered_and_an_id_seen_again_moves_up() {
        let mut loaded = remembering([1, 2, 3]);
        // Newest first, as the store answers: 5 is the newest, 2 was seen again.
        remember(&mut loaded, vec![id(5), id(2), id(4)]);
        assert_eq!(
            loaded.recent_commands,
            [1, 3, 4, 2, 5].map(id),
            "oldest first"
        );
    }

    #[test]
    fn only_the_latest_sixteen_stay() {
        let mut loaded = remembering(0..10);
        remember(&mut loaded, (10..20).rev().map(id).collect());
        assert_eq!(loaded.recent_commands, (4..20).map(id).collect::<Vec<_>>());
        remember(&mut loaded, Vec::new());
        assert_eq!(loaded.recent_commands.len(), RECENT_COMMANDS);
    }
}
