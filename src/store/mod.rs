//! The event store: one async trait, [`EventStore`], and three implementations: SQLite (the
//! embedded default), PostgreSQL and in-memory (tests and the test kit).
//!
//! Must not touch: actors, projections, HTTP. The store knows rows, not aggregates; typed events
//! come and go through [`codec`], and [`repository`] loads and saves one aggregate on top of it.
//!
//! # Guarantees every implementation keeps (the conformance suite in `tests/it/store` checks each)
//! - Per stream, sequence numbers start at 1 and have no gaps; an append states the version it
//!   expects and a wrong one fails with [`StoreError::ConcurrencyConflict`], writing nothing.
//! - All events of one append land atomically, or none do.
//! - Global positions start at 1, rise by one per event and have no gaps: appends are serialized
//!   (SQLite's `BEGIN IMMEDIATE`; PostgreSQL's lock on the position counter row), and the counter
//!   rolls back with its transaction. So positions become visible to readers strictly in order,
//!   and a reader of the global order never passes a position that a still-open transaction
//!   will commit later. See `postgres.rs` for why this holds on PostgreSQL.
//! - Event ids are unique. Retrying an append whose events are all already stored, as that same
//!   append (same stream, same ids, at the sequences right after the expected version), answers
//!   the first append's result and stores nothing. Any other reuse of a stored id (a partial
//!   overlap, another stream, other sequences) fails with [`StoreError::DuplicateEvent`] and
//!   stores nothing.

/// A stream's version as a scalar SQL subquery, given the placeholders of its aggregate type
/// and id: the stream's last entry in the streams index, one step backwards (0 without one).
/// Not `MAX(sequence)`: for a stream written since PostgreSQL last gathered statistics, its
/// planner estimated one row and aggregated every entry of the stream instead (1.6 ms at 10,000
/// events on this project's machine, against 0.03 ms). Every statement of the SQL stores that
/// reads a version takes this one text.
macro_rules! stream_version_of {
    ($aggregate_type:literal, $aggregate_id:literal) => {
        concat!(
            "COALESCE((SELECT e.sequence FROM events e WHERE e.aggregate_type = ",
            $aggregate_type,
            " AND e.aggregate_id = ",
            $aggregate_id,
            " ORDER BY e.sequence DESC LIMIT 1), 0)"
        )
    };
}

pub mod codec;
mod group_commit;
pub mod ids;
pub(crate) mod lanes;
mod memory;
mod migrate;
mod plan;
mod postgres;
mod recent;
pub mod repository;
mod sqlite;
pub(crate) mod types;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};
use uuid::Uuid;

pub use codec::{Codec, PayloadFormat, Upcasters};
pub use memory::MemoryStore;
pub use migrate::{postgres_migrator, sqlite_migrator};
pub use postgres::{
    APPEND_SETTINGS as POSTGRES_APPEND_SETTINGS, FAST_APPEND_SQL as POSTGRES_FAST_APPEND_SQL,
    LOAD_START_SQL as POSTGRES_LOAD_START_SQL, LOCK_HEAD_SQL as POSTGRES_APPEND_LOCK_SQL,
    PostgresStore, STREAM_VERSION_SQL as POSTGRES_STREAM_VERSION_SQL,
};
pub(crate) use recent::{NewestFirst, RECENT_PAGE, command_ids_of, recent_backwards};
pub use repository::{Loaded, Repository, SnapshotPolicy};
pub use sqlite::{SqliteStore, SqliteWriter, WriterGuard};
pub use types::{
    AppendRequest, Appended, EncodedEvent, ExpectedVersion, LoadStart, Metadata, NewEvent,
    RecordedEvent, Snapshot, StoreError, StreamId,
};

/// How many rows one page of a streaming read fetches.
pub const PAGE_SIZE: usize = 1_000;

/// The outcome of one request of an [`EventStore::append_batch`].
pub type AppendResult = Result<Appended, StoreError>;

/// An event store: append-only streams of events per aggregate, one global order over all of
/// them, and snapshots beside.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends the requests of a batch in one transaction (group commit). Each request succeeds
    /// or fails on its own (a conflict or a duplicate fails only its request); the outer error
    /// means the transaction itself failed and nothing of the batch is stored.
    ///
    /// The SQL stores also group concurrent calls: batches that arrive while one commits share
    /// the next transaction (never two batches on a common stream), and each caller gets the
    /// results of its own requests, as if it had appended alone.
    async fn append_batch(&self, batch: &[AppendRequest]) -> Result<Vec<AppendResult>, StoreError>;

    /// Reads up to `max` events of one stream with `from <= sequence <= to`, in order.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Replays up to `max` events of one stream with `from <= sequence <= to`, in order: hands
    /// each to `visit`, borrowed from the row it was read from, and answers how many it handed
    /// over. Reads only what decoding needs (no ids, times or metadata), which is what makes
    /// loading an aggregate fast; an error from `visit` stops the replay and is answered.
    /// However many events there are, they are never all held at once: a store reads them a
    /// page at a time, or as one stream of rows.
    ///
    /// The default reads pages with [`EventStore::read_stream`]; the SQL stores read less.
    async fn replay_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
        visit: &mut (dyn for<'e> FnMut(EncodedEvent<'e>) -> Result<(), StoreError> + Send),
    ) -> Result<usize, StoreError> {
        in_pages(
            from,
            to,
            max,
            |next, limit| self.read_stream(stream, next, to, limit),
            |event: &RecordedEvent| {
                visit(event.encoded())?;
                Ok(event.sequence)
            },
        )
        .await
    }

    /// The ids of the commands behind the events of one stream with `from <= sequence <= to`:
    /// each id once, the newest first (by the last event it caused), at most `max`. Events
    /// without a command id are skipped. This is what an aggregate needs to recognise a repeated
    /// command after it was loaded, without reading every event's metadata.
    ///
    /// The default pages through the range with [`EventStore::read_stream`]; the stores here
    /// read backwards from `to`, a page at a time, and stop as soon as they have `max` ids.
    /// Metadata that does not decode is an error only where it is read: loading an aggregate
    /// no longer reads every event's, so one such event fails a load only if it is among the
    /// latest; projections still meet it.
    async fn recent_command_ids(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut newest_last = Vec::new();
        in_pages(
            from,
            to,
            usize::MAX,
            |next, limit| self.read_stream(stream, next, to, limit),
            |event: &RecordedEvent| {
                newest_last.push(event.metadata.command_id);
                Ok(event.sequence)
            },
        )
        .await?;
        Ok(NewestFirst::collect(newest_last.into_iter().rev(), max))
    }

    /// Reads up to `max` events in global order with `position >= from`. A store may read a
    /// large `max` in pages, each in a transaction of its own: the events are in order and
    /// without gaps, but not all from one snapshot.
    async fn read_all(&self, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The position of the last committed event, 0 for an empty store.
    async fn head(&self) -> Result<u64, StoreError>;

    /// The current version (last sequence number) of a stream, 0 if it does not exist.
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError>;

    /// Stores a snapshot and deletes all but the newest `keep` snapshots of its stream.
    async fn save_snapshot(&self, snapshot: &Snapshot, keep: usize) -> Result<(), StoreError>;

    /// The newest snapshot of a stream, if any.
    async fn latest_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError>;

    /// Where a load of `stream` starts: its newest snapshot and, where the store reads it in the
    /// same round trip, the stream's version. With the version, a load reads no events when
    /// there are none after the snapshot, so an aggregate seen for the first time costs one
    /// read, not two.
    ///
    /// The default reads the snapshot only (`version: None`); the stores here read both in one
    /// statement.
    async fn load_start(&self, stream: &StreamId) -> Result<LoadStart, StoreError> {
        Ok(LoadStart {
            snapshot: self.latest_snapshot(stream).await?,
            version: None,
        })
    }

    /// How many snapshots a stream has kept.
    async fn snapshot_count(&self, stream: &StreamId) -> Result<usize, StoreError>;

    /// Answers whether the store is reachable (for readiness probes).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Conveniences on top of [`EventStore`], available on every store and on `dyn EventStore`.
#[async_trait]
pub trait EventStoreExt: EventStore {
    /// Appends one request in its own transaction.
    async fn append(&self, request: AppendRequest) -> Result<Appended, StoreError> {
        let mut results = self.append_batch(std::slice::from_ref(&request)).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Internal("append answered no result".into())))
    }
}

impl<S: EventStore + ?Sized> EventStoreExt for S {}

/// Streams one stream's events with `sequence >= from`, a page at a time, so a 10k-event stream
/// is never held in memory at once.
pub fn stream_events<'a>(
    store: &'a dyn EventStore,
    stream_id: &'a StreamId,
    from: u64,
) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
    paged(
        move |next| store.read_stream(stream_id, next, u64::MAX, PAGE_SIZE),
        from,
        |e| e.sequence,
    )
}

/// Streams the whole store in global order from `from`, a page at a time (catching up on a
/// million events holds one page in memory). The stream ends at the head as it was when the
/// last page was read.
pub fn stream_all(
    store: &dyn EventStore,
    from: u64,
) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
    paged(
        move |next| store.read_all(next, PAGE_SIZE),
        from,
        |e| e.position,
    )
}

/// Reads up to `max` rows of one stream with `from <= sequence <= to` a page at a time:
/// `fetch(next, limit)` reads the next page (at most `limit` rows, from sequence `next`), and
/// `each` takes a row and answers its sequence. Answers how many rows were taken.
pub(crate) async fn in_pages<R, F, Fut>(
    from: u64,
    to: u64,
    max: usize,
    mut fetch: F,
    mut each: impl FnMut(&R) -> Result<u64, StoreError>,
) -> Result<usize, StoreError>
where
    F: FnMut(u64, usize) -> Fut,
    Fut: Future<Output = Result<Vec<R>, StoreError>>,
{
    let mut pages = Pages::new(from, to, max, PAGE_SIZE);
    while let Some((next, limit)) = pages.next_page() {
        let rows = fetch(next, limit).await?;
        let mut last = None;
        for row in &rows {
            last = Some(each(row)?);
        }
        pages.took(rows.len(), last);
    }
    Ok(pages.taken())
}

/// The bookkeeping of every paged read: up to `max` rows with keys (sequences or positions)
/// `from..=to`, at most `page_size` a page, each page from the key after the last one's; a
/// short page is the last.
pub(crate) struct Pages {
    next: u64,
    to: u64,
    max: usize,
    page_size: usize,
    limit: usize,
    taken: usize,
    done: bool,
}

impl Pages {
    pub(crate) fn new(from: u64, to: u64, max: usize, page_size: usize) -> Self {
        Self {
            next: from,
            to,
            max,
            page_size,
            limit: 0,
            taken: 0,
            done: false,
        }
    }

    /// The page to read next: from which key, at most how many rows; `None` once the read is
    /// over.
    pub(crate) fn next_page(&mut self) -> Option<(u64, usize)> {
        if self.done || self.taken >= self.max || self.next > self.to {
            return None;
        }
        self.limit = self.page_size.min(self.max - self.taken);
        Some((self.next, self.limit))
    }

    /// Records the page just read: how many rows it took and the last one's key.
    pub(crate) fn took(&mut self, read: usize, last: Option<u64>) {
        self.taken += read;
        match last.and_then(|last| last.checked_add(1)) {
            Some(after) if read == self.limit => self.next = after,
            _ => self.done = true,
        }
    }

    /// How many rows the read took in all.
    pub(crate) fn taken(&self) -> usize {
        self.taken
    }
}

fn paged<'a, F, Fut>(
    fetch: F,
    from: u64,
    key: fn(&RecordedEvent) -> u64,
) -> BoxStream<'a, Result<RecordedEvent, StoreError>>
where
    F: Fn(u64) -> Fut + Send + Sync + 'a,
    Fut: std::future::Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send + 'a,
{
    let fetch = Arc::new(fetch);
    stream::unfold(Some(from), move |next| {
        let fetch = Arc::clone(&fetch);
        async move {
            let next = next?;
            match fetch(next).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let after = page
                        .last()
                        .map(|e| key(e).saturating_add(1))
                        .filter(|_| page.len() == PAGE_SIZE);
                    Some((stream::iter(page.into_iter().map(Ok)).boxed(), after))
                }
                Err(error) => Some((stream::once(async { Err(error) }).boxed(), None)),
            }
        }
    })
    .flatten()
    .boxed()
}

/// Opens the store a URL names: `sqlite://path` (created with its schema if missing),
/// `sqlite::memory:`, `postgres://...` or `memory://`. Migrations run first, idempotently.
pub async fn open(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url == "memory://" || url == "memory:" {
        Ok(Arc::new(MemoryStore::new()))
    } else {
        Err(StoreError::InvalidInput(format!(
            "unsupported database URL scheme in {url:?}: use sqlite://, postgres:// or memory://"
        )))
    }
}

/// Runs a transaction in a task of its own, so that it reaches its commit or rollback even when
/// its caller gives up. sqlx's `begin` is not cancel-safe: dropped between sending `BEGIN` and
/// returning, it leaves the pooled connection inside a transaction it does not know about, and
/// the next autocommit append on that connection would then hold the append lock without ever
/// committing (the cut-off conformance case caught exactly that). PostgreSQL's one-statement append
/// runs in autocommit and needs no task.
pub(crate) async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::spawn(work).await.map_err(|error| {
        StoreError::Internal(format!("a store transaction's task failed: {error}"))
    })?
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a failed unwrap is a failed test, with its message"
)]
mod tests {
    use super::*;

    /// Pages over a stream of `len` events (sequences `first..first + len`) through
    /// `in_pages`, answering the sequences taken and the limits asked for.
    async fn page_through(
        first: u64,
        len: u64,
        from: u64,
        to: u64,
        max: usize,
    ) -> (Vec<u64>, Vec<usize>) {
        let (mut taken, mut limits) = (Vec::new(), Vec::new());
        let count = in_pages(
            from,
            to,
            max,
            |next, limit| {
                limits.push(limit);
                let last = to.min(first.saturating_add(len - 1));
                let rows: Vec<u64> = (next.max(first)..=last).take(limit).collect();
                async move { Ok(rows) }
            },
            |&sequence: &u64| {
                taken.push(sequence);
                Ok(sequence)
            },
        )
        .await
        .unwrap();
        assert_eq!(count, taken.len());
        (taken, limits)
    }

    #[tokio::test]
    async fn pages_follow_one_another_until_a_short_one() {
        let (taken, limits) = page_through(1, 2_500, 1, u64::MAX, usize::MAX).await;
        assert_eq!(taken, (1..=2_500).collect::<Vec<_>>());
        assert_eq!(limits, [PAGE_SIZE, PAGE_SIZE, PAGE_SIZE]);
        // Exactly two pages: a third, empty one tells the end.
        let (taken, limits) = page_through(1, 2_000, 1, u64::MAX, usize::MAX).await;
        assert_eq!((taken.len(), limits.len()), (2_000, 3));
    }

    #[tokio::test]
    async fn the_last_page_asks_only_for_what_is_left_of_max() {
        let (taken, limits) = page_through(1, 2_500, 1, u64::MAX, 1_500).await;
        assert_eq!(taken, (1..=1_500).collect::<Vec<_>>());
        assert_eq!(limits, [PAGE_SIZE, 500]);
        let (taken, limits) = page_through(1, 2_500, 5, 4, 10).await;
        assert_eq!((taken, limits), (Vec::new(), Vec::new()));
        let (taken, limits) = page_through(1, 2_500, 1, u64::MAX, 0).await;
        assert_eq!((taken, limits), (Vec::new(), Vec::new()));
    }

    #[tokio::test]
    async fn a_page_ending_at_the_last_sequence_ends_the_reading() {
        let first = u64::MAX - 999;
        let (taken, limits) = page_through(first, 1_000, first, u64::MAX, usize::MAX).await;
        assert_eq!((taken.len(), limits.len()), (1_000, 1));
    }

    #[tokio::test]
    async fn an_error_taking_a_row_stops_the_reading() {
        let mut pages = 0;
        let stopped = in_pages(
            1,
            u64::MAX,
            usize::MAX,
            |next, limit| {
                pages += 1;
                async move { Ok((next..next + limit as u64).collect::<Vec<u64>>()) }
            },
            |&sequence: &u64| {
                if sequence == 1_500 {
                    return Err(StoreError::InvalidInput("stop".into()));
                }
                Ok(sequence)
            },
        )
        .await;
        assert!(matches!(stopped, Err(StoreError::InvalidInput(_))));
        assert_eq!(pages, 2);
    }
}
