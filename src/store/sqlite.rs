//! The SQLite event store: the embedded default. One file, WAL journal, `synchronous=FULL`
//! (a commit is on disk before it is acknowledged), created with its schema on first start.
//!
//! Appends run on a single writer connection under `BEGIN IMMEDIATE`, which takes SQLite's
//! write lock at the start of the transaction: versions are checked and positions assigned with
//! no other writer in between, and commits happen in position order. Readers use their own
//! connections and, under WAL, never block the writer nor see a half-committed append.
//!
//! Must not touch: actors, projections, typed events.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use futures_util::future::maybe_done;
use futures_util::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Executor, QueryBuilder, Row, Sqlite, SqlitePool};
use tracing::instrument;
use uuid::Uuid;

use super::group_commit::{AppendNow, GroupCommit};
use super::lanes::{Lanes, on_lane, settle_sqlite};
use super::plan::{FastBatch, StoredId, batch_event_ids, batch_streams, plan, stored_now};
use super::types::{from_micros, is_outage, to_i64, to_u64};
use super::{
    AppendRequest, AppendResult, Appended, EncodedEvent, EventStore, LoadStart, Metadata,
    PAGE_SIZE, Pages, RECENT_PAGE, RecordedEvent, Snapshot, StoreError, StreamId, command_ids_of,
    recent_backwards, sqlite_migrator,
};

/// SQLite allows 32,766 bound parameters per statement; keep well inside it.
const MAX_PARAMS: usize = 30_000;

/// SQLite allows 500 terms in one compound SELECT; the version read uses one per stream.
const MAX_COMPOUND_STREAMS: usize = 400;

const EVENT_COLUMNS: &str = "global_position, aggregate_type, aggregate_id, sequence, event_id, \
     event_type, payload_revision, payload_format, recorded_at, metadata, payload";

/// An event store in one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqliteWriter,
    /// Hosts' reads (`reader_pool`), and the store's rare ones.
    reader: SqlitePool,
    /// The store's reads: connections of the reader pool's, kept (`lanes.rs` says why).
    reads: Arc<Lanes<Sqlite>>,
    /// Concurrent appends share transactions (SQLite has one writer anyway).
    group: Arc<GroupCommit>,
}

/// The one connection that writes to a store's file, shared by everything that writes there:
/// the event store, the SQLite read store, and hosts with tables of their own in the same file
/// (one writer, so none of them meets `SQLITE_BUSY`, and their transactions take turns).
///
/// For a file the store opens that connection itself and keeps it, outside any sqlx pool:
/// handing a connection back to a pool pings it first, a round trip to the driver's worker
/// thread that every append would wait for (about a fifth of a small group commit). An
/// in-memory database lives in its one connection, which its readers share, so there the
/// connection stays in a pool of one and is acquired for each use.
///
/// Whoever takes the writer gets it outside any transaction: a transaction that an earlier
/// user failed or was cut off inside (its future dropped) is rolled back first.
#[derive(Clone, Debug)]
pub struct SqliteWriter {
    connection: WriterConnection,
    /// Set while a statement list that opens and commits its own transaction runs, and left
    /// set when it failed or was cut off: the next user then rolls back what it left open.
    unsettled: Arc<AtomicBool>,
}

#[derive(Clone, Debug)]
enum WriterConnection {
    /// A file's writer: one connection, kept, and how to open another should it break.
    Held {
        connection: Arc<tokio::sync::Mutex<sqlx::SqliteConnection>>,
        options: Arc<SqliteConnectOptions>,
    },
    /// An in-memory database's one connection, in a pool its readers share.
    Pooled(SqlitePool),
}

/// The writer connection, taken (see [`SqliteWriter::lock`]); use it as a
/// `&mut SqliteConnection`.
pub struct WriterGuard<'a> {
    conn: Taken<'a>,
}

enum Taken<'a> {
    Held(tokio::sync::MutexGuard<'a, sqlx::SqliteConnection>),
    Pooled(PoolConnection<Sqlite>),
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = sqlx::SqliteConnection;

    fn deref(&self) -> &Self::Target {
        match &self.conn {
            Taken::Held(conn) => conn,
            Taken::Pooled(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.conn {
            Taken::Held(conn) => conn,
            Taken::Pooled(conn) => conn,
        }
    }
}

impl SqliteWriter {
    /// Takes the writer connection, waiting for its current user, outside any transaction.
    ///
    /// One user at a time: a task that holds the guard must drop it before it appends, saves
    /// a snapshot or commits through the SQLite read store, or it waits for itself forever.
    /// A file's connection found broken while settling (its driver thread gone) is replaced.
    pub async fn lock(&self) -> Result<WriterGuard<'_>, StoreError> {
        let conn = match &self.connection {
            // A pooled connection was settled by the pool's release hook on its way back.
            WriterConnection::Pooled(pool) => Taken::Pooled(pool.acquire().await?),
            WriterConnection::Held {
                connection,
                options,
            } => {
                let mut conn = connection.lock().await;
                if !settle(&mut conn, &self.unsettled).await {
                    tracing::warn!("the SQLite writer connection broke; opening a new one");
                    *conn = sqlx::ConnectOptions::connect(options.as_ref()).await?;
                }
                Taken::Held(conn)
            }
        };
        Ok(WriterGuard { conn })
    }

    /// Runs `work`, a statement list that opens and commits its own transaction (one round
    /// trip to the driver's worker instead of one per statement), flagged: unless it succeeds,
    /// the flag stays set and the writer's next user rolls back whatever it left open (a
    /// constraint's `OR ROLLBACK` ends the transaction itself; other errors and a cut-off
    /// caller may not).
    async fn flagged<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.unsettled.store(true, Ordering::SeqCst);
        let outcome = work.await;
        if outcome.is_ok() {
            self.unsettled.store(false, Ordering::SeqCst);
        }
        outcome
    }
}

impl SqliteStore {
    /// Opens (and creates, if missing) the database at `url` (`sqlite://path` or
    /// `sqlite::memory:`) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let unsettled = Arc::new(AtomicBool::new(false));
        let (connection, reader, reads) = if in_memory {
            // An in-memory database lives in its one connection: readers share it, so it
            // stays in a pool of one.
            let flag = Arc::clone(&unsettled);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false)
                // Each use hands the connection back; it goes back outside any transaction,
                // whoever failed or cut one off. (A connection whose release never runs is
                // closed, not reused.)
                .after_release(move |conn, _| {
                    let flag = Arc::clone(&flag);
                    Box::pin(async move {
                        // Kept even if it broke: a new connection would be a new, empty
                        // database.
                        let _works = settle(conn, &flag).await;
                        Ok(true)
                    })
                })
                .connect_with(options)
                .await?;
            sqlite_migrator().run(&pool).await?;
            (
                WriterConnection::Pooled(pool.clone()),
                pool.clone(),
                Lanes::pooled(pool),
            )
        } else {
            // A connection of its own, outside any pool (dropping it needs no runtime).
            let mut conn = sqlx::ConnectOptions::connect(&options).await?;
            sqlite_migrator().run(&mut conn).await?;
            let reader = SqlitePoolOptions::new()
                .max_connections(4)
                // A connection to a local file does not go stale: no ping before each use.
                .test_before_acquire(false)
                .connect_with(options.clone().read_only(true))
                .await?;
            let held = WriterConnection::Held {
                connection: Arc::new(tokio::sync::Mutex::new(conn)),
                options: Arc::new(options),
            };
            let reads = Lanes::new(reader.clone(), READ_LANES, settle_sqlite, None);
            (held, reader, reads)
        };
        Ok(Self {
            writer: SqliteWriter {
                connection,
                unsettled,
            },
            reader,
            reads: Arc::new(reads),
            group: Arc::default(),
        })
    }

    /// The writer connection, for hosts that keep their own tables in the same file and want
    /// them in one transaction order with the store.
    pub fn writer(&self) -> &SqliteWriter {
        &self.writer
    }

    /// The pool that reads.
    pub fn reader_pool(&self) -> &SqlitePool {
        &self.reader
    }

    /// The connections the store keeps for reads, for the read store beside it.
    pub(crate) fn read_lanes(&self) -> &Arc<Lanes<Sqlite>> {
        &self.reads
    }

    /// Reads up to `max` full events of `reading` from `from` on (a sequence or a position), a
    /// page of up to 1,000 as one JSON row at a time (see `FULL_PAGE`): sqlx's SQLite driver
    /// costs more per row than SQLite takes to write the page. Each page is read in its own
    /// transaction: a large `max` is gap-free and in order, not one snapshot.
    async fn read_full(
        &self,
        reading: Reading<'_>,
        from: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let to = match reading {
            Reading::Stream(_, to) => to,
            Reading::All => u64::MAX,
        };
        let (mut events, mut pages) = (Vec::new(), Pages::new(from, to, max, PAGE_SIZE));
        while let Some((next, limit)) = pages.next_page() {
            let page = on_lane!(self.reads, |conn| {
                match reading {
                    Reading::Stream(stream, to) => {
                        sqlx::query_scalar::<_, String>(&FULL_PAGE_STREAM)
                            .bind(stream.aggregate_type.as_str())
                            .bind(stream.aggregate_id.as_str())
                            .bind(clamp(next))
                            .bind(clamp(to))
                    }
                    Reading::All => {
                        sqlx::query_scalar::<_, String>(&FULL_PAGE_ALL).bind(clamp(next))
                    }
                }
                .bind(clamp(limit as u64))
                .bind(REPLAY_INLINE_BYTES)
                .fetch_one(conn)
            })?;
            let mut rows: Vec<FullRow<'_>> = serde_json::from_str(&page).map_err(|e| {
                StoreError::Internal(format!("a page of events from {next} did not parse: {e}"))
            })?;
            if !rows.is_sorted_by_key(|row| reading.key(row)) {
                rows.sort_unstable_by_key(|row| reading.key(row));
            }
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                break;
            };
            let (first, last) = (reading.key(first), reading.key(last));
            events.reserve(rows.len());
            let mut large = None;
            for row in &rows {
                let key = reading.key(row);
                // A large payload or metadata: both come from one ordered query for the page.
                let (large_payload, large_metadata) =
                    if row.payload.is_none() || row.metadata.is_none() {
                        let rows =
                            large.get_or_insert_with(|| self.large_columns(reading, first, last));
                        take_large(rows, key).await?
                    } else {
                        Default::default()
                    };
                let stream = StreamId::new(row.aggregate_type.as_ref(), row.aggregate_id.as_ref());
                let payload = match row.payload {
                    Some(hex) => {
                        let mut payload = Vec::new();
                        if !unhex(hex, &mut payload) {
                            return Err(StoreError::Internal(format!(
                                "a page of events has bad hex at {key}"
                            )));
                        }
                        payload
                    }
                    None => large_payload,
                };
                let metadata = row.metadata.as_deref().unwrap_or(&large_metadata);
                let (sequence, revision, format) = {
                    let checked = EncodedEvent::from_columns(
                        &stream,
                        row.sequence,
                        &row.event_type,
                        row.revision,
                        row.format,
                        &payload,
                    )?;
                    (checked.sequence, checked.revision, checked.format)
                };
                let Ok(event_id) = Uuid::try_parse(row.event_id) else {
                    return Err(StoreError::Corrupt {
                        stream,
                        sequence,
                        reason: format!("the event id {:?} is not 16 bytes", row.event_id),
                    });
                };
                events.push(RecordedEvent {
                    metadata: Metadata::from_json(metadata, &stream, sequence)?,
                    position: to_u64(row.position, "global_position")?,
                    event_id,
                    event_type: row.event_type.clone().into_owned(),
                    revision,
                    format,
                    payload,
                    recorded_at: from_micros(row.recorded_at),
                    sequence,
                    stream,
                });
            }
            pages.took(rows.len(), u64::try_from(last).ok());
        }
        Ok(events)
    }

    /// The payloads and metadata that a page of `reading` with keys `first..=last` left out
    /// (those over the inline limit), in key order.
    fn large_columns<'a>(
        &'a self,
        reading: Reading<'a>,
        first: i64,
        last: i64,
    ) -> LargeColumns<'a> {
        match reading {
            Reading::Stream(stream, _) => sqlx::query_as(&LARGE_COLUMNS_STREAM)
                .bind(stream.aggregate_type.as_str())
                .bind(stream.aggregate_id.as_str()),
            Reading::All => sqlx::query_as(&LARGE_COLUMNS_ALL),
        }
        .bind(first)
        .bind(last)
        .bind(REPLAY_INLINE_BYTES)
        .fetch(&self.reader)
    }
}

/// What [`SqliteStore::large_columns`] reads: key, payload and metadata.
type LargeColumns<'a> = BoxStream<'a, Result<(i64, Vec<u8>, String), sqlx::Error>>;

/// Takes the left-out payload and metadata of the event at `key` from `large` (in key order;
/// rows before `key` belong to events whose page did not need them).
async fn take_large(
    large: &mut LargeColumns<'_>,
    key: i64,
) -> Result<(Vec<u8>, String), StoreError> {
    while let Some((at, payload, metadata)) = large.try_next().await? {
        if at == key {
            return Ok((payload, metadata));
        }
        if at > key {
            break;
        }
    }
    Err(StoreError::Internal(format!(
        "the large columns of the event at {key} were not read"
    )))
}

/// How many connections the store keeps for its reads (`lanes.rs` says why they are not the
/// reader pool's, which has as many again for hosts).
const READ_LANES: usize = 4;

/// A stream's newest snapshot (its columns NULL when it has none) and the stream's version
/// (read as `stream_version` reads it, `stream_version_of!`), in one statement, so both are read
/// in one transaction.
const LOAD_START: &str = concat!(
    "SELECT ",
    stream_version_of!("?1", "?2"),
    " AS version, \
       s.sequence, s.payload_revision, s.payload_format, s.recorded_at, s.payload \
FROM (SELECT 1) \
LEFT JOIN (SELECT sequence, payload_revision, payload_format, recorded_at, payload FROM snapshots \
           WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
           ORDER BY sequence DESC LIMIT 1) s ON 1"
);

/// One page of a replay as one row: the page's events (up to `?5`, from sequence `?3`) as a
/// JSON array of `[sequence, type, revision, format, hex(payload)]`. A payload larger than `?6`
/// bytes is left out (`null`; `LARGE_COLUMNS` reads those), so a page's JSON stays small
/// whatever the events hold. The size is tested inside the subquery, where SQLite reads it from
/// the record's header without loading the payload.
const REPLAY_PAGE: &str = "\
    SELECT COALESCE(json_group_array(json_array(sequence, event_type, payload_revision, \
             payload_format, inline)), '[]') \
    FROM (SELECT sequence, event_type, payload_revision, payload_format, \
                 CASE WHEN octet_length(payload) <= ?6 THEN hex(payload) END AS inline \
          FROM events WHERE aggregate_type = ?1 AND aggregate_id = ?2 \
          AND sequence >= ?3 AND sequence <= ?4 ORDER BY sequence LIMIT ?5)";

/// One page of full events as one row, as `REPLAY_PAGE` does for a replay: a JSON array of
/// `[position, type, id, sequence, hex(event id), event type, revision, format, recorded at,
/// metadata, hex(payload)]`, with a payload or metadata larger than the inline limit left out
/// (`null`; `LARGE_COLUMNS` reads those). `{WHERE}` picks the events, orders and limits them;
/// `?INLINE` is the inline limit's parameter (see `full_page`).
const FULL_PAGE: &str = "\
    SELECT COALESCE(json_group_array(json_array(global_position, aggregate_type, aggregate_id, \
             sequence, hex(event_id), event_type, payload_revision, payload_format, recorded_at, \
             meta, inline)), '[]') \
    FROM (SELECT global_position, aggregate_type, aggregate_id, sequence, event_id, event_type, \
                 payload_revision, payload_format, recorded_at, \
                 CASE WHEN octet_length(metadata) <= ?INLINE THEN metadata END AS meta, \
                 CASE WHEN octet_length(payload) <= ?INLINE THEN hex(payload) END AS inline \
          FROM events WHERE {WHERE})";

/// The payloads and metadata a page of full events left out, in order, with their key: `{WHERE}`
/// picks the page's range; `?INLINE` is the inline limit.
const LARGE_COLUMNS: &str = "\
    SELECT {KEY}, payload, metadata FROM events WHERE {WHERE} \
    AND (octet_length(payload) > ?INLINE OR octet_length(metadata) > ?INLINE) ORDER BY {KEY}";

/// One event of a `FULL_PAGE` (read from its JSON array by position).
#[derive(serde::Deserialize)]
struct FullRow<'a> {
    position: i64,
    #[serde(borrow)]
    aggregate_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    aggregate_id: std::borrow::Cow<'a, str>,
    sequence: i64,
    event_id: &'a str,
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    revision: i64,
    format: i64,
    recorded_at: i64,
    #[serde(borrow)]
    metadata: Option<std::borrow::Cow<'a, str>>,
    payload: Option<&'a str>,
}

/// Which events a full read takes.
#[derive(Clone, Copy)]
enum Reading<'a> {
    /// One stream's up to a sequence, by sequence.
    Stream(&'a StreamId, u64),
    /// The global order's, by position.
    All,
}

impl Reading<'_> {
    /// The key a page is ordered and continued by.
    fn key(self, row: &FullRow<'_>) -> i64 {
        match self {
            Reading::Stream(..) => row.sequence,
            Reading::All => row.position,
        }
    }
}

/// The largest payload (and, in a full read, metadata) a page carries inline: a replay page's
/// JSON is at most about twice this per event (8 MiB for 1,000 events); a full page adds the
/// event's names and ids, which nothing bounds but their use.
const REPLAY_INLINE_BYTES: i64 = 4_096;

/// One event of a replay page, as `REPLAY_PAGE` writes it (no payload: a large one).
#[derive(serde::Deserialize)]
struct ReplayRow<'a>(
    i64,
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    i64,
    i64,
    Option<&'a str>,
);

/// `FULL_PAGE` for one stream: `?1` and `?2` name it, from sequence `?3` through `?4`, `?5`
/// events at most, `?6` the inline limit.
static FULL_PAGE_STREAM: LazyLock<String> = LazyLock::new(|| {
    full_page(
        FULL_PAGE,
        "aggregate_type = ?1 AND aggregate_id = ?2 AND sequence >= ?3 AND sequence <= ?4 \
         ORDER BY sequence LIMIT ?5",
        "",
        6,
    )
});

/// `FULL_PAGE` for the global order: from position `?1`, `?2` events at most, `?3` the inline
/// limit.
static FULL_PAGE_ALL: LazyLock<String> = LazyLock::new(|| {
    full_page(
        FULL_PAGE,
        "global_position >= ?1 ORDER BY global_position LIMIT ?2",
        "",
        3,
    )
});

/// `LARGE_COLUMNS` for one stream's page: `?1` and `?2` name it, sequences `?3` through `?4`,
/// `?5` the inline limit.
static LARGE_COLUMNS_STREAM: LazyLock<String> = LazyLock::new(|| {
    full_page(
        LARGE_COLUMNS,
        "aggregate_type = ?1 AND aggregate_id = ?2 AND sequence >= ?3 AND sequence <= ?4",
        "sequence",
        5,
    )
});

/// `LARGE_COLUMNS` for a page of the global order: positions `?1` through `?2`, `?3` the inline
/// limit.
static LARGE_COLUMNS_ALL: LazyLock<String> = LazyLock::new(|| {
    full_page(
        LARGE_COLUMNS,
        "global_position >= ?1 AND global_position <= ?2",
        "global_position",
        3,
    )
});

/// `template` with its `{WHERE}` and `{KEY}` filled in and `?INLINE` numbered `inline`.
fn full_page(template: &str, selection: &str, key: &str, inline: usize) -> String {
    template
        .replace("{WHERE}", selection)
        .replace("{KEY}", key)
        .replace("?INLINE", &format!("?{inline}"))
}

/// Decodes SQLite's `hex()` into `into` (reused from event to event); false if `hex` is not
/// hex digits, two a byte.
fn unhex(hex: &str, into: &mut Vec<u8>) -> bool {
    into.clear();
    into.resize(hex.len() / 2, 0);
    hex::decode_to_slice(hex, into).is_ok()
}

#[async_trait]
impl AppendNow for SqliteStore {
    /// One batch in one transaction (the group commit's unit of work).
    async fn append_now(&self, batch: &[AppendRequest]) -> Result<Vec<AppendResult>, StoreError> {
        let mut conn = self.writer.lock().await?;
        // The common case in one round trip to SQLite; anything unusual (a conflict, a stored
        // id, an expectation of any version, an empty or invalid request) is planned in full, in
        // a transaction of its own.
        if let Some(fast) = FastBatch::prepare(batch).filter(|f| fits_one_statement(f)) {
            if let Some(results) = self
                .writer
                .flagged(append_fast(&mut conn, &fast, batch))
                .await?
            {
                return Ok(results);
            }
        }
        // Flagged like a statement list: a caller that gives up between `BEGIN` and the end
        // (sqlx's `begin` is not cancel-safe) leaves the writer's next user to roll back.
        self.writer.flagged(append_planned(&mut conn, batch)).await
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    #[instrument(skip_all, fields(requests = batch.len()), err)]
    async fn append_batch(&self, batch: &[AppendRequest]) -> Result<Vec<AppendResult>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.group.append(self, batch).await
    }

    #[instrument(skip_all, fields(stream = %stream, from = from, to = to, max = max), err)]
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_full(Reading::Stream(stream, to), from, max).await
    }

    // No `err`: the visitor's errors (an event that does not decode) are the caller's to report.
    #[instrument(skip_all, fields(stream = %stream, from = from, to = to, max = max))]
    async fn replay_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
        visit: &mut (dyn for<'e> FnMut(EncodedEvent<'e>) -> Result<(), StoreError> + Send),
    ) -> Result<usize, StoreError> {
        // Pages of up to 1,000 events, each read as one row (see `REPLAY_PAGE`): sqlx's
        // SQLite driver costs more per row (a copy of each value, a hand-over from its worker
        // thread) than SQLite takes to write the page as JSON.
        let fetch = |from: u64, limit: usize| async move {
            on_lane!(self.reads, |conn| {
                sqlx::query_scalar::<_, String>(REPLAY_PAGE)
                    .bind(stream.aggregate_type.as_str())
                    .bind(stream.aggregate_id.as_str())
                    .bind(clamp(from))
                    .bind(clamp(to))
                    .bind(clamp(limit as u64))
                    .bind(REPLAY_INLINE_BYTES)
                    .fetch_one(conn)
            })
            .map_err(StoreError::from)
        };
        let mut pages = Pages::new(from, to, max, PAGE_SIZE);
        let Some((first, limit)) = pages.next_page() else {
            return Ok(0);
        };
        let (mut page, mut payload) = (fetch(first, limit).await?, Vec::new());
        loop {
            let mut rows: Vec<ReplayRow<'_>> = serde_json::from_str(&page).map_err(|e| {
                StoreError::Internal(format!("a replay page of {stream} did not parse: {e}"))
            })?;
            // SQLite aggregates the rows in the order its subquery gives them; should that
            // ever differ, the page is put in order here rather than folded out of order.
            if !rows.is_sorted_by_key(|row| row.0) {
                rows.sort_unstable_by_key(|row| row.0);
            }
            pages.took(
                rows.len(),
                rows.last().and_then(|row| u64::try_from(row.0).ok()),
            );
            // The next page is asked for before this one is folded: SQLite's worker thread
            // writes it meanwhile.
            let mut next_page = None;
            if let Some((after, limit)) = pages.next_page() {
                let mut prefetch = Box::pin(maybe_done(fetch(after, limit)));
                poll_fn(|cx| {
                    let _started = prefetch.as_mut().poll(cx);
                    Poll::Ready(())
                })
                .await;
                next_page = Some(prefetch);
            }
            // The large payloads of the page, read in one query as the page reaches them.
            let mut large = None;
            for ReplayRow(sequence, event_type, revision, format, hex) in &rows {
                match hex {
                    Some(hex) if unhex(hex, &mut payload) => {}
                    Some(_) => {
                        return Err(StoreError::Internal(format!(
                            "a replay page of {stream} has bad hex at {sequence}"
                        )));
                    }
                    None => {
                        let (first, last) = (rows[0].0, rows[rows.len() - 1].0);
                        let large = large.get_or_insert_with(|| {
                            self.large_columns(Reading::Stream(stream, to), first, last)
                        });
                        payload = take_large(large, *sequence).await?.0;
                    }
                }
                visit(EncodedEvent::from_columns(
                    stream, *sequence, event_type, *revision, *format, &payload,
                )?)?;
            }
            drop(large);
            drop(rows);
            let Some(mut prefetch) = next_page else {
                return Ok(pages.taken());
            };
            prefetch.as_mut().await;
            page = prefetch.as_mut().take_output().ok_or_else(|| {
                StoreError::Internal("a replay page was read but not kept".into())
            })??;
        }
    }

    #[instrument(skip_all, fields(stream = %stream, from = from, to = to, max = max), err)]
    async fn recent_command_ids(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        recent_backwards(from, to, max, |upper| async move {
            let rows = on_lane!(self.reads, |conn| {
                sqlx::query_as(
                    "SELECT sequence, metadata FROM events \
                     WHERE aggregate_type = ? AND aggregate_id = ? \
                     AND sequence >= ? AND sequence <= ? \
                     ORDER BY sequence DESC LIMIT ?",
                )
                .bind(stream.aggregate_type.as_str())
                .bind(stream.aggregate_id.as_str())
                .bind(clamp(from))
                .bind(clamp(upper))
                .bind(clamp(RECENT_PAGE as u64))
                .fetch_all(conn)
            })?;
            command_ids_of(stream, rows)
        })
        .await
    }

    #[instrument(skip_all, fields(from = from, max = max), err)]
    async fn read_all(&self, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_full(Reading::All, from, max).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let head: i64 = on_lane!(self.reads, |conn| {
            sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
                .fetch_one(conn)
        })?;
        to_u64(head, "global_position")
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let version: i64 = on_lane!(self.reads, |conn| {
            sqlx::query_scalar(concat!("SELECT ", stream_version_of!("?", "?")))
                .bind(stream.aggregate_type.as_str())
                .bind(stream.aggregate_id.as_str())
                .fetch_one(conn)
        })?;
        to_u64(version, "sequence")
    }

    #[instrument(skip_all, fields(stream = %snapshot.stream, sequence = snapshot.sequence), err)]
    async fn save_snapshot(&self, snapshot: &Snapshot, keep: usize) -> Result<(), StoreError> {
        let sequence = to_i64(snapshot.sequence, "sequence")?;
        let mut conn = self.writer.lock().await?;
        // Saved and pruned in one transaction, sent in one round trip: the writer is the
        // appends' too, so a snapshot should hold it as briefly as it can.
        let save = sqlx::query(
            "BEGIN IMMEDIATE; \
             INSERT OR REPLACE INTO snapshots (aggregate_type, aggregate_id, sequence, \
             payload_revision, payload_format, recorded_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?); \
             DELETE FROM snapshots WHERE aggregate_type = ? AND aggregate_id = ? AND sequence NOT IN \
             (SELECT sequence FROM snapshots WHERE aggregate_type = ? AND aggregate_id = ? \
              ORDER BY sequence DESC LIMIT ?); \
             COMMIT",
        )
        .bind(snapshot.stream.aggregate_type.as_str())
        .bind(snapshot.stream.aggregate_id.as_str())
        .bind(sequence)
        .bind(i64::from(snapshot.revision))
        .bind(i64::from(snapshot.format.code()))
        .bind(snapshot.recorded_at.timestamp_micros())
        .bind(snapshot.payload.as_slice())
        .bind(snapshot.stream.aggregate_type.as_str())
        .bind(snapshot.stream.aggregate_id.as_str())
        .bind(snapshot.stream.aggregate_type.as_str())
        .bind(snapshot.stream.aggregate_id.as_str())
        .bind(clamp(keep.max(1) as u64))
        .execute(&mut *conn);
        self.writer.flagged(async { Ok(save.await?) }).await?;
        Ok(())
    }

    async fn latest_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.load_start(stream).await?.snapshot)
    }

    async fn load_start(&self, stream: &StreamId) -> Result<LoadStart, StoreError> {
        let row = on_lane!(self.reads, |conn| {
            sqlx::query_as(LOAD_START)
                .bind(stream.aggregate_type.as_str())
                .bind(stream.aggregate_id.as_str())
                .fetch_one(conn)
        })?;
        LoadStart::from_row(stream, row)
    }

    async fn snapshot_count(&self, stream: &StreamId) -> Result<usize, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM snapshots WHERE aggregate_type = ? AND aggregate_id = ?",
        )
        .bind(stream.aggregate_type.as_str())
        .bind(stream.aggregate_id.as_str())
        .fetch_one(&self.reader)
        .await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}

/// A batch planned in full (`plan.rs`) under `BEGIN IMMEDIATE`: for what the one-statement path
/// does not take (a conflict, a stored id, an expectation of any version, an invalid request).
async fn append_planned(
    conn: &mut sqlx::SqliteConnection,
    batch: &[AppendRequest],
) -> Result<Vec<AppendResult>, StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;

    let streams = batch_streams(batch);
    let ids = batch_event_ids(batch);
    let (versions, stored, head) = read_current(&mut tx, &streams, &ids).await?;
    let recorded_at = stored_now();
    let planned = plan(batch, versions, stored, head, recorded_at);
    if planned.rows.is_empty() {
        tx.rollback().await?;
        return Ok(planned.results);
    }

    let now = recorded_at.timestamp_micros();
    let mut metadata = Vec::with_capacity(planned.rows.len());
    for row in &planned.rows {
        metadata.push(row.event.metadata.to_json()?);
    }
    for (rows, metadata) in planned
        .rows
        .chunks(MAX_PARAMS / 11)
        .zip(metadata.chunks(MAX_PARAMS / 11))
    {
        let mut query = QueryBuilder::new(format!("INSERT INTO events ({EVENT_COLUMNS}) "));
        let mut failed = None;
        query.push_values(rows.iter().zip(metadata), |mut values, (row, metadata)| {
            let (position, sequence) = match (
                to_i64(row.position, "position"),
                to_i64(row.sequence, "sequence"),
            ) {
                (Ok(p), Ok(s)) => (p, s),
                (Err(e), _) | (_, Err(e)) => {
                    failed = Some(e);
                    (0, 0)
                }
            };
            values
                .push_bind(position)
                .push_bind(row.stream.aggregate_type.as_str())
                .push_bind(row.stream.aggregate_id.as_str())
                .push_bind(sequence)
                .push_bind(row.event.event_id)
                .push_bind(row.event.event_type.as_str())
                .push_bind(i64::from(row.event.revision))
                .push_bind(i64::from(row.event.format.code()))
                .push_bind(now)
                .push_bind(metadata.as_str())
                .push_bind(row.event.payload.as_slice());
        });
        if let Some(error) = failed {
            return Err(error);
        }
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(planned.results)
}

/// Ends a transaction a cut-off caller left open on the writer connection. Two kinds: a
/// `begin` cut off after its `BEGIN` (sqlx counts the transaction but nobody will end it), and
/// a statement list cut off between its `BEGIN` and `COMMIT` (flagged by `unsettled`; sqlx does
/// not count it). sqlx's own rollback goes first: once SQLite has no transaction, it would fail
/// and leave sqlx's count up, and every later `begin` would fail. The flag is cleared only
/// after its `ROLLBACK` ran, so a settle that is itself cut off is done again by the next user.
///
/// Answers whether the connection still works: a rollback that fails for any reason but
/// SQLite's own answer (the driver's worker gone, say) means it does not.
async fn settle(conn: &mut sqlx::SqliteConnection, unsettled: &AtomicBool) -> bool {
    let alive = |outcome: Result<(), sqlx::Error>| still_works(&outcome);
    let mut works = true;
    if conn.is_in_transaction() {
        works &= alive(
            <<Sqlite as sqlx::Database>::TransactionManager as sqlx::TransactionManager>::rollback(
                conn,
            )
            .await,
        );
    }
    if unsettled.load(Ordering::SeqCst) {
        // Fails harmlessly ("no transaction is active") when the list had finished.
        works &= alive(conn.execute("ROLLBACK").await.map(|_| ()));
        unsettled.store(false, Ordering::SeqCst);
    }
    works
}

/// Whether a connection that answered `outcome` still works: SQLite's own answer (even an
/// error, such as "no transaction is active") says it does; an outage of the driver says not.
fn still_works(outcome: &Result<(), sqlx::Error>) -> bool {
    outcome.as_ref().err().is_none_or(|error| !is_outage(error))
}

type Current = (HashMap<StreamId, u64>, HashMap<Uuid, StoredId>, u64);

/// Whether the fast path can take the batch: every stream expects an exact version (a stream
/// expecting any version needs its current one read first), and the statement stays within
/// SQLite's bound on parameters.
fn fits_one_statement(fast: &FastBatch<'_>) -> bool {
    fast.every_version_exact() && fast.r_stream.len() * 11 + fast.streams.len() * 3 <= MAX_PARAMS
}

/// The one-round-trip path: `BEGIN IMMEDIATE`, one `INSERT ... SELECT` and `COMMIT`, sent to
/// SQLite together (see [`push_fast_insert`]). A last `SELECT` answers how many rows went in and
/// the new head.
///
/// `None` when it wrote nothing: a stream had moved (the empty transaction commits), or an
/// event id was already stored (`OR ROLLBACK`: the constraint ends the transaction, and the
/// caller plans the batch in full in a new one). Any other error may leave the transaction
/// open; the caller rolls it back.
async fn append_fast(
    conn: &mut sqlx::SqliteConnection,
    fast: &FastBatch<'_>,
    batch: &[AppendRequest],
) -> Result<Option<Vec<AppendResult>>, StoreError> {
    let recorded_at = stored_now();
    let mut query = QueryBuilder::new("BEGIN IMMEDIATE; ");
    let n = push_fast_insert(&mut query, fast, batch, recorded_at.timestamp_micros())?;
    query.push(
        "; SELECT changes(), (SELECT COALESCE(MAX(global_position), 0) FROM events); \
         COMMIT",
    );
    // `fetch_all`, not `fetch_one`: the driver stops a statement list at the first row when
    // asked for one, and `COMMIT` comes after it.
    let rows = match query.build().fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(error))
            if error.kind() == sqlx::error::ErrorKind::UniqueViolation =>
        {
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    let [row] = rows.as_slice() else {
        return Err(StoreError::Internal(format!(
            "the fast append answered {} rows, not one",
            rows.len()
        )));
    };
    let inserted: i64 = row.try_get(0)?;
    if inserted == 0 {
        return Ok(None);
    }
    let head = to_u64(row.try_get(1)?, "global_position")?;
    if inserted != n {
        return Err(StoreError::Internal(format!(
            "the fast append stored {inserted} of {n} rows"
        )));
    }
    // Row k of the batch went to position head - n + 1 + k.
    let first_of_batch = head + 1 - n as u64;
    let mut results = Vec::with_capacity(batch.len());
    let mut position = first_of_batch;
    for (request, &(stream, offset, len)) in batch.iter().zip(&fast.requests) {
        let count = request.events.len() as u64;
        let base = u64::try_from(fast.bases[stream]).unwrap_or_default();
        results.push(Ok(Appended {
            version: base + offset + len as u64,
            first_position: (count > 0).then_some(position),
            last_position: (count > 0).then(|| position + count - 1),
            recorded_at,
        }));
        position += count;
    }
    Ok(Some(results))
}

/// Pushes the fast path's one statement: the batch's rows, inserted only if every stream is at
/// its expected version. Answers the number of rows.
///
/// Its rows' positions are explicit: the head before the statement (the `SELECT` sees the table
/// as it was, as SQL requires of `INSERT ... SELECT`) plus one plus the row's index in the
/// batch, so they follow the batch's order with no gap by construction.
///
/// The shape matters for speed, and a test holds it: the head and the version guard form one
/// constant row `h` (no row when a stream has moved), joined with the rows `v`. The head is a
/// scalar subquery of its own, which SQLite answers from the end of the table; written as
/// `SELECT MAX(global_position) FROM events` in the `FROM` clause, with the guard in the outer
/// `WHERE`, SQLite 3.46 pushed the guard down into it and scanned a whole index for the
/// maximum, so every append cost time in proportion to the store's size (7 ms at 200k events),
/// and evaluated the guard three times.
fn push_fast_insert<'q>(
    query: &mut QueryBuilder<'q, Sqlite>,
    fast: &FastBatch<'q>,
    batch: &'q [AppendRequest],
    now: i64,
) -> Result<i64, StoreError> {
    query.push(
        "INSERT OR ROLLBACK INTO events (global_position, aggregate_type, aggregate_id, sequence, \
         event_id, event_type, payload_revision, payload_format, recorded_at, metadata, payload) \
         SELECT h.head + v.column1 + 1, v.column2, v.column3, v.column4, v.column5, v.column6, \
         v.column7, v.column8, v.column9, v.column10, v.column11 \
         FROM (SELECT COALESCE((SELECT MAX(global_position) FROM events), 0) AS head \
         WHERE NOT EXISTS (SELECT 1 FROM (VALUES ",
    );
    for (i, (stream, &base)) in fast.streams.iter().zip(&fast.bases).enumerate() {
        if i > 0 {
            query.push(", ");
        }
        query
            .push("(")
            .push_bind(stream.aggregate_type.as_str())
            .push(", ")
            .push_bind(stream.aggregate_id.as_str())
            .push(", ")
            .push_bind(base)
            .push(")");
    }
    query.push(
        ") AS s WHERE COALESCE((SELECT MAX(e.sequence) FROM events e \
         WHERE e.aggregate_type = s.column1 AND e.aggregate_id = s.column2), 0) <> s.column3)) \
         AS h, (VALUES ",
    );
    let mut n: i64 = 0;
    for (request, &(stream, offset, _)) in batch.iter().zip(&fast.requests) {
        let base = u64::try_from(fast.bases[stream])
            .map_err(|_| StoreError::Internal("the fast path took an any-version stream".into()))?;
        for (k, event) in request.events.iter().enumerate() {
            if n > 0 {
                query.push(", ");
            }
            query
                .push("(")
                .push_bind(n)
                .push(", ")
                .push_bind(request.stream.aggregate_type.as_str())
                .push(", ")
                .push_bind(request.stream.aggregate_id.as_str())
                .push(", ")
                .push_bind(to_i64(base + offset + k as u64 + 1, "sequence")?)
                .push(", ")
                .push_bind(event.event_id)
                .push(", ")
                .push_bind(event.event_type.as_str())
                .push(", ")
                .push_bind(i64::from(event.revision))
                .push(", ")
                .push_bind(i64::from(event.format.code()))
                .push(", ")
                .push_bind(now)
                .push(", ")
                .push_bind(event.metadata.to_json()?)
                .push(", ")
                .push_bind(event.payload.as_slice())
                .push(")");
            n += 1;
        }
    }
    query.push(") AS v");
    Ok(n)
}

/// Reads what planning a batch needs, in one statement per chunk of parameters: the current
/// version of each stream (an index search each), where any of `ids` is already stored, and the
/// head.
async fn read_current(
    conn: &mut sqlx::SqliteConnection,
    streams: &[&StreamId],
    ids: &[Uuid],
) -> Result<Current, StoreError> {
    let mut versions = HashMap::with_capacity(streams.len());
    let mut stored = HashMap::new();
    let mut head = 0;
    // One UNION ALL term per stream: stay under SQLite's 500 terms per compound SELECT.
    let stream_chunks: Vec<&[&StreamId]> = streams.chunks(MAX_COMPOUND_STREAMS).collect();
    let id_chunks: Vec<&[Uuid]> = ids.chunks(MAX_PARAMS / 2).collect();
    for chunk in 0..stream_chunks.len().max(id_chunks.len()).max(1) {
        let streams = stream_chunks.get(chunk).copied().unwrap_or_default();
        let ids = id_chunks.get(chunk).copied().unwrap_or_default();
        let mut query = QueryBuilder::new(
            "SELECT 2 AS kind, '' AS aggregate_type, '' AS aggregate_id, 0 AS sequence, \
             NULL AS event_id, COALESCE(MAX(global_position), 0) AS global_position, \
             0 AS recorded_at FROM events",
        );
        for stream in streams {
            query
                .push(" UNION ALL SELECT 0, ")
                .push_bind(stream.aggregate_type.as_str())
                .push(", ")
                .push_bind(stream.aggregate_id.as_str())
                .push(", COALESCE((SELECT MAX(sequence) FROM events WHERE aggregate_type = ")
                .push_bind(stream.aggregate_type.as_str())
                .push(" AND aggregate_id = ")
                .push_bind(stream.aggregate_id.as_str())
                .push("), 0), NULL, 0, 0");
        }
        if !ids.is_empty() {
            query.push(
                " UNION ALL SELECT 1, aggregate_type, aggregate_id, sequence, event_id, global_position, recorded_at \
                 FROM events WHERE event_id IN (",
            );
            let mut values = query.separated(", ");
            for id in ids {
                values.push_bind(*id);
            }
            query.push(")");
        }
        for row in query.build().fetch_all(&mut *conn).await? {
            let kind: i64 = row.try_get("kind")?;
            let position = to_u64(row.try_get("global_position")?, "global_position")?;
            if kind == 2 {
                head = position;
                continue;
            }
            let stream = StreamId::new(
                row.try_get::<String, _>("aggregate_type")?,
                row.try_get::<String, _>("aggregate_id")?,
            );
            let sequence = to_u64(row.try_get("sequence")?, "sequence")?;
            if kind == 0 {
                versions.insert(stream, sequence);
            } else {
                let recorded_at = from_micros(row.try_get("recorded_at")?);
                stored.insert(
                    row.try_get::<Uuid, _>("event_id")?,
                    StoredId {
                        stream,
                        sequence,
                        position,
                        recorded_at,
                    },
                );
            }
        }
    }
    Ok((versions, stored, head))
}

/// SQLite integers are signed: a bound past `i64::MAX` means "no bound".
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on what it did not expect"
)]
mod tests {
    use super::*;
    use crate::store::{ExpectedVersion, NewEvent, PayloadFormat};

    /// The steps of an `EXPLAIN QUERY PLAN`, as SQLite words them.
    fn plan_steps(rows: &[sqlx::sqlite::SqliteRow]) -> Vec<String> {
        rows.iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect()
    }

    fn batch() -> Vec<AppendRequest> {
        ["a", "b"]
            .into_iter()
            .map(|id| AppendRequest {
                stream: StreamId::new("pot", id),
                expected: ExpectedVersion::Exact(3),
                events: (0..2)
                    .map(|_| NewEvent {
                        event_id: super::super::ids::fresh(),
                        event_type: "Watered".into(),
                        revision: 1,
                        format: PayloadFormat::MessagePack,
                        payload: vec![0x80],
                        metadata: Metadata::default(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// A host may drop the store after its runtime is gone (a test harness, a shutdown): the
    /// kept writer connection must close without one (a pooled connection would panic, as
    /// sqlx hands it back to its pool in a task).
    #[test]
    fn a_store_dropped_outside_any_runtime_closes_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = runtime.block_on(async {
            let store = SqliteStore::connect(&url).await.unwrap();
            let batch = batch();
            let fresh: Vec<AppendRequest> = batch
                .into_iter()
                .map(|mut request| {
                    request.expected = ExpectedVersion::Exact(0);
                    request
                })
                .collect();
            for result in store.append_batch(&fresh).await.unwrap() {
                result.unwrap();
            }
            store
        });
        drop(runtime);
        drop(store);
    }

    /// A rollback SQLite refused leaves a working connection; a driver whose worker is gone
    /// or whose I/O failed does not, and the writer opens a new one.
    #[tokio::test]
    async fn only_the_drivers_failures_mark_the_writer_broken() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let mut conn = store.writer().lock().await.unwrap();
        let refused = conn.execute("ROLLBACK").await.map(|_| ());
        assert!(matches!(refused, Err(sqlx::Error::Database(_))));
        assert!(still_works(&refused));
        assert!(still_works(&Ok(())));
        assert!(!still_works(&Err(sqlx::Error::WorkerCrashed)));
        assert!(!still_works(&Err(sqlx::Error::Io(std::io::Error::other(
            "gone"
        )))));
    }

    /// The fast append must find the head and each stream's version by searching an index,
    /// never by scanning one: a scan makes every append cost time in proportion to the store.
    /// (SQLite 3.46 planned the statement's earlier shape with a scan of a whole index.)
    #[tokio::test]
    async fn the_fast_append_searches_and_never_scans_the_events() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let batch = batch();
        let fast = FastBatch::prepare(&batch).unwrap();
        let mut query = QueryBuilder::new("EXPLAIN QUERY PLAN ");
        let rows = push_fast_insert(&mut query, &fast, &batch, 0).unwrap();
        assert_eq!(rows, 4);
        let plan: Vec<String> = query
            .build()
            .fetch_all(&mut *store.writer().lock().await.unwrap())
            .await
            .map(|rows| plan_steps(&rows))
            .unwrap();
        let reads: Vec<&String> = plan
            .iter()
            .filter(|step| step.contains("events") || step.starts_with("SEARCH e "))
            .collect();
        assert!(
            reads.iter().all(|step| step.starts_with("SEARCH")),
            "the plan reads the events table by scanning: {plan:#?}"
        );
        assert_eq!(
            reads.len(),
            2,
            "one search for the head, one per stream guard (evaluated once): {plan:#?}"
        );
    }

    #[tokio::test]
    async fn full_pages_search_by_stream_or_by_position() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let mut conn = store.writer().lock().await.unwrap();
        // Each statement with parameters that make SQLite plan it as the store runs it, and
        // how it must read the events: by the streams index, or by a range of positions.
        let by_stream = "SEARCH events USING INDEX";
        let by_position = "SEARCH events USING INTEGER PRIMARY KEY";
        let stream_binds: &[i64] = &[1, i64::MAX, 1_000, REPLAY_INLINE_BYTES];
        let statements: [(&str, &[i64], bool, &str); 5] = [
            (&FULL_PAGE_STREAM, stream_binds, true, by_stream),
            (
                &FULL_PAGE_ALL,
                &[1, 1_000, REPLAY_INLINE_BYTES],
                false,
                by_position,
            ),
            (
                &LARGE_COLUMNS_STREAM,
                &[1, 1_000, REPLAY_INLINE_BYTES],
                true,
                by_stream,
            ),
            (
                &LARGE_COLUMNS_ALL,
                &[1, 1_000, REPLAY_INLINE_BYTES],
                false,
                by_position,
            ),
            (REPLAY_PAGE, stream_binds, true, by_stream),
        ];
        for (sql, binds, named, expected) in statements {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query(&explain);
            if named {
                query = query.bind("Pot").bind("p");
            }
            for bind in binds {
                query = query.bind(*bind);
            }
            let plan: Vec<String> = query
                .fetch_all(&mut *conn)
                .await
                .map(|rows| plan_steps(&rows))
                .unwrap();
            let reads: Vec<&String> = plan.iter().filter(|s| s.contains("events")).collect();
            assert!(
                !reads.is_empty() && reads.iter().all(|s| s.starts_with(expected)),
                "{sql}: {plan:#?}"
            );
            assert!(
                !plan.iter().any(|s| s.contains("TEMP B-TREE")),
                "{sql} sorts: {plan:#?}"
            );
        }
    }

    /// The load start reads the stream's version from the streams index and the snapshot by its
    /// key, newest first: nothing scanned, nothing sorted.
    #[tokio::test]
    async fn the_load_start_searches_and_never_sorts() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let mut conn = store.writer().lock().await.unwrap();
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {LOAD_START}"))
            .bind("Pot")
            .bind("p")
            .fetch_all(&mut *conn)
            .await
            .map(|rows| plan_steps(&rows))
            .unwrap();
        let searches = |table: &str| {
            plan.iter()
                .filter(|step| step.starts_with(&format!("SEARCH {table} USING ")))
                .count()
        };
        assert_eq!(searches("e"), 1, "{plan:#?}");
        assert_eq!(searches("snapshots"), 1, "{plan:#?}");
        // What it scans is the one constant row and the one-row snapshot subquery.
        let tables = ["SCAN e", "SCAN events", "SCAN snapshots"];
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")
                || tables.iter().any(|table| step.starts_with(table))),
            "{plan:#?}"
        );
    }

    /// A full page carries the event id as SQLite's `hex()`, which `Uuid::try_parse` reads.
    #[test]
    fn an_event_id_comes_back_from_hex_only_whole() {
        let id = Uuid::try_parse("000102030405060708090A0B0C0D0E0F").unwrap();
        assert_eq!(
            *id.as_bytes(),
            core::array::from_fn::<u8, 16, _>(|i| i as u8)
        );
        assert!(Uuid::try_parse("0001").is_err(), "too short");
        assert!(Uuid::try_parse(&"00".repeat(17)).is_err(), "too long");
    }

    #[test]
    fn hex_comes_back_as_the_bytes_and_anything_else_is_refused() {
        let mut bytes = vec![7];
        assert!(unhex("00FFa07f", &mut bytes));
        assert_eq!(bytes, [0x00, 0xFF, 0xA0, 0x7F]);
        assert!(unhex("", &mut bytes));
        assert!(bytes.is_empty());
        assert!(!unhex("ABC", &mut bytes), "odd length");
        assert!(!unhex("0G", &mut bytes), "not a digit");
        assert!(!unhex("é1", &mut bytes), "not ASCII");
    }
}
