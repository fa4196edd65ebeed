//! The PostgreSQL event store, for deployments of several processes.
//!
//! # Gap safety: why a reader of the global order never skips an event
//! PostgreSQL sequences hand out numbers at insert time but transactions commit in any order,
//! so a reader that saw position 12 committed could later find 11 appear; a tracking reader that
//! had moved its checkpoint to 12 would skip 11 forever. Nursery avoids it by serializing
//! appends, as Commanded's event store does:
//!
//! 1. Every append transaction first locks the single row of `event_counter`: the one-statement
//!    path by updating it (`UPDATE event_counter ... RETURNING`, see [`FAST_APPEND_SQL`]), the
//!    planned path with `SELECT last_position FROM event_counter WHERE id = 1 FOR UPDATE`
//!    (inside `nursery_lock_for_append`, which then reads the streams' versions with a fresh
//!    snapshot, in the same round trip). The row lock is held until the transaction ends, so at
//!    most one append is between taking it and its commit at any time.
//! 2. Positions are `last_position + 1 ..`, written back to the counter in the same transaction.
//!    A rolled-back append rolls the counter back too: positions have no holes at all.
//! 3. PostgreSQL makes a transaction's effects visible (removes it from the proc array) before it
//!    releases its locks. So when append B gets the lock, A's rows are already visible to any
//!    new snapshot; B's rows can only be seen by a snapshot that also sees A's.
//!
//! Hence every snapshot a reader takes sees a prefix 1..=N of the positions, whatever the
//! number of writers or processes, and `WHERE global_position >= from ORDER BY global_position`
//! never moves past a position that a still-open transaction will commit later.
//! The throughput cost of serializing is paid once per batch: the journal (group commit) puts
//! many commands in one append, so the lock is taken once per commit, not once per event.
//! `tests/it/store/gap_safety.rs` proves both halves: a held-open writer makes readers and other
//! writers wait, then both appear in order; a held writer that rolls back leaves no hole.
//!
//! Must not touch: actors, projections, typed events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row};
use tracing::{instrument, warn};
use uuid::Uuid;

use super::group_commit::{AppendNow, GroupCommit};
use super::lanes::{Lanes, broke, on_lane, settle_postgres as settle};
use super::plan::{FastBatch, StoredId, batch_event_ids, batch_streams, plan, stored_now};
use super::types::{from_micros, to_i64, to_u64};
use super::{
    AppendRequest, AppendResult, Appended, EncodedEvent, EventStore, LoadStart, Metadata, Pages,
    RECENT_PAGE, RecordedEvent, Snapshot, StoreError, StreamId, command_ids_of, postgres_migrator,
    recent_backwards,
};

const EVENT_COLUMNS: &str = "global_position, aggregate_type, aggregate_id, sequence, event_id, \
     event_type, payload_revision, payload_format, recorded_at, metadata::text AS metadata, payload";

/// A stream's version (`$1` the aggregate type, `$2` the id), read as `stream_version_of!` in
/// `store/mod.rs` says. Public so tests can pin its plan.
pub const STREAM_VERSION_SQL: &str = concat!("SELECT ", stream_version_of!("$1", "$2"));

/// Where a load starts: the stream's version (read as in [`STREAM_VERSION_SQL`]) and its newest
/// snapshot, its columns NULL when it has none; one statement, so both are of one snapshot of
/// the database. Public so tests can pin its plan.
pub const LOAD_START_SQL: &str = concat!(
    "SELECT ",
    stream_version_of!("$1", "$2"),
    " AS version, \
           s.sequence, s.payload_revision::bigint, s.payload_format::bigint, s.recorded_at, \
           s.payload \
    FROM (SELECT 1) AS one \
    LEFT JOIN LATERAL (SELECT sequence, payload_revision, payload_format, recorded_at, payload \
                       FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2 \
                       ORDER BY sequence DESC LIMIT 1) s ON TRUE"
);

/// The statement a planned append's transaction starts with (inside `nursery_lock_for_append`):
/// it takes the append lock and reads the head. Public so the gap-safety test can hold a writer
/// open as an append does (the one-statement path takes the same row lock by updating the row).
pub const LOCK_HEAD_SQL: &str = "SELECT last_position FROM event_counter WHERE id = 1 FOR UPDATE";

/// Takes the append lock and reads the head, the streams' versions and the stored ids among the
/// batch's, in one round trip (see `nursery_lock_for_append` in the migration).
const LOCK_AND_READ_SQL: &str = "SELECT * FROM nursery_lock_for_append($1, $2, $3)";

const INSERT_SQL: &str = "\
    WITH counter AS (UPDATE event_counter SET last_position = $12 WHERE id = 1) \
    INSERT INTO events (global_position, aggregate_type, aggregate_id, sequence, event_id, \
                        event_type, payload_revision, payload_format, recorded_at, metadata, payload) \
    SELECT p, t, i, s, e, ty, r, f, $9, m::jsonb, pl \
      FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::uuid[], $6::text[], \
                  $7::int4[], $8::int2[], $10::text[], $11::bytea[]) \
           AS u(p, t, i, s, e, ty, r, f, m, pl)";

/// An event store in a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// The connections the one-statement append runs on (see [`append_lanes`]).
    appends: Arc<Lanes<Postgres>>,
    /// The connections the store's reads run on (see `lanes.rs`).
    reads: Arc<Lanes<Postgres>>,
    /// Concurrent appends share transactions (they would queue on the counter's lock anyway).
    group: Arc<GroupCommit>,
}

impl PostgresStore {
    /// Connects to `url` and runs the migrations (idempotent, and safe when several processes
    /// start at once: sqlx takes an advisory lock around them).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .connect(url)
            .await?;
        Self::with_pool(pool).await
    }

    /// Uses an existing pool, running the migrations first. The store's appends and reads run
    /// on up to [`READ_LANES`] + 2 connections it takes from the pool when first needed and
    /// then keeps (the pool stops counting them, and may open as many again): so they carry
    /// the pool's options and `after_connect` hooks, and the append connections also
    /// [`APPEND_SETTINGS`]. Closing the pool stops the store too.
    pub async fn with_pool(pool: PgPool) -> Result<Self, StoreError> {
        postgres_migrator().run(&pool).await?;
        Ok(Self {
            appends: Arc::new(append_lanes(&pool)),
            reads: Arc::new(Lanes::new(pool.clone(), READ_LANES, settle, None)),
            pool,
            group: Arc::default(),
        })
    }

    /// The pool, for hosts that keep their own tables in the same database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The connections the store keeps for reads, for the read store beside it.
    pub(crate) fn read_lanes(&self) -> &Arc<Lanes<Postgres>> {
        &self.reads
    }
}

/// How many connections the store keeps for its reads (`lanes.rs` says why they are not the
/// pool's). The runtime loads at most `SupervisionConfig::max_concurrent_recoveries` (32)
/// aggregates at once, most of them with one short statement; a replay holds its connection
/// while it folds a page.
pub const READ_LANES: usize = 8;

/// How many events one query of a replay reads at most.
const REPLAY_PAGE: usize = 10_000;

/// Reads a row of `EVENT_COLUMNS` by position (no column-name lookups on the hot read path).
fn record(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let stream = StreamId::new(row.try_get::<String, _>(1)?, row.try_get::<String, _>(2)?);
    // Checked as a replay checks them: a bad format or revision names the stream and sequence.
    let encoded = EncodedEvent::from_columns(
        &stream,
        row.try_get(3)?,
        row.try_get(5)?,
        i64::from(row.try_get::<i32, _>(6)?),
        i64::from(row.try_get::<i16, _>(7)?),
        row.try_get(10)?,
    )?;
    let metadata: &str = row.try_get(9)?;
    Ok(RecordedEvent {
        metadata: Metadata::from_json(metadata, &stream, encoded.sequence)?,
        position: to_u64(row.try_get(0)?, "global_position")?,
        event_id: row.try_get(4)?,
        event_type: encoded.event_type.to_owned(),
        revision: encoded.revision,
        format: encoded.format,
        payload: encoded.payload.to_vec(),
        recorded_at: from_micros(row.try_get(8)?),
        sequence: encoded.sequence,
        stream,
    })
}

#[async_trait]
impl AppendNow for PostgresStore {
    /// One batch in one transaction (the group commit's unit of work).
    async fn append_now(&self, batch: &[AppendRequest]) -> Result<Vec<AppendResult>, StoreError> {
        // The common case in one round trip; anything unusual (a conflict, a stored id, an
        // empty or invalid request, a broken chain, a stream expecting any version) is planned
        // in full.
        if let Some(fast) = FastBatch::prepare(batch).filter(FastBatch::every_version_exact) {
            if let Some(results) = self.append_fast(&fast, batch).await? {
                return Ok(results);
            }
        }
        let store = self.clone();
        let batch = batch.to_vec();
        super::to_the_end(async move { store.append_planned(&batch).await }).await
    }
}

#[async_trait]
impl EventStore for PostgresStore {
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
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence >= $3 AND sequence <= $4 \
             ORDER BY sequence LIMIT $5"
        );
        let rows = on_lane!(self.reads, |conn| {
            sqlx::query(&sql)
                .bind(stream.aggregate_type.as_str())
                .bind(stream.aggregate_id.as_str())
                .bind(clamp(from))
                .bind(clamp(to))
                .bind(clamp(max as u64))
                .fetch_all(conn)
        })?;
        rows.iter().map(record).collect()
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
        // Pages of up to 10,000 events, each one query whose rows are folded as they arrive:
        // nothing is held but the row at hand, and a fold that fails leaves at most the rest
        // of one page for the connection to drain.
        let mut pages = Pages::new(from, to, max, REPLAY_PAGE);
        while let Some((next, limit)) = pages.next_page() {
            // Not `on_lane!`: a page folded in part must not be folded again. A failure fails
            // the load (the actor's supervisor loads again); the lane, unfinished, closes its
            // connection.
            let mut lane = self.reads.lane().await?;
            let mut rows = sqlx::query(
                "SELECT sequence, event_type, payload_revision, payload_format, payload \
                 FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
                 AND sequence >= $3 AND sequence <= $4 ORDER BY sequence LIMIT $5",
            )
            .bind(stream.aggregate_type.as_str())
            .bind(stream.aggregate_id.as_str())
            .bind(clamp(next))
            .bind(clamp(to))
            .bind(clamp(limit as u64))
            .fetch(&mut *lane);
            let (mut read, mut last) = (0, None);
            while let Some(row) = rows.try_next().await? {
                let event = EncodedEvent::from_columns(
                    stream,
                    row.try_get(0)?,
                    row.try_get(1)?,
                    i64::from(row.try_get::<i32, _>(2)?),
                    i64::from(row.try_get::<i16, _>(3)?),
                    row.try_get(4)?,
                )?;
                last = Some(event.sequence);
                visit(event)?;
                read += 1;
            }
            drop(rows);
            lane.finish();
            pages.took(read, last);
        }
        Ok(pages.taken())
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
                    "SELECT sequence, metadata::text FROM events \
                         WHERE aggregate_type = $1 AND aggregate_id = $2 \
                         AND sequence >= $3 AND sequence <= $4 \
                         ORDER BY sequence DESC LIMIT $5",
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
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE global_position >= $1 \
             ORDER BY global_position LIMIT $2"
        );
        let rows = on_lane!(self.reads, |conn| {
            sqlx::query(&sql)
                .bind(clamp(from))
                .bind(clamp(max as u64))
                .fetch_all(conn)
        })?;
        rows.iter().map(record).collect()
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let head: i64 = on_lane!(self.reads, |conn| {
            sqlx::query_scalar("SELECT last_position FROM event_counter WHERE id = 1")
                .fetch_one(conn)
        })?;
        to_u64(head, "last_position")
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let version: i64 = on_lane!(self.reads, |conn| {
            sqlx::query_scalar(STREAM_VERSION_SQL)
                .bind(stream.aggregate_type.as_str())
                .bind(stream.aggregate_id.as_str())
                .fetch_one(conn)
        })?;
        to_u64(version, "sequence")
    }

    #[instrument(skip_all, fields(stream = %snapshot.stream, sequence = snapshot.sequence), err)]
    async fn save_snapshot(&self, snapshot: &Snapshot, keep: usize) -> Result<(), StoreError> {
        let store = self.clone();
        let snapshot = snapshot.clone();
        super::to_the_end(async move { store.save_snapshot_now(&snapshot, keep).await }).await
    }

    async fn latest_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.load_start(stream).await?.snapshot)
    }

    async fn load_start(&self, stream: &StreamId) -> Result<LoadStart, StoreError> {
        let row = on_lane!(self.reads, |conn| {
            sqlx::query_as(LOAD_START_SQL)
                .bind(stream.aggregate_type.as_str())
                .bind(stream.aggregate_id.as_str())
                .fetch_one(conn)
        })?;
        LoadStart::from_row(stream, row)
    }

    async fn snapshot_count(&self, stream: &StreamId) -> Result<usize, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(stream.aggregate_type.as_str())
        .bind(stream.aggregate_id.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

impl PostgresStore {
    /// Saves a snapshot and prunes the older ones, in one transaction.
    async fn save_snapshot_now(&self, snapshot: &Snapshot, keep: usize) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // A snapshot is a cache of its events: its commit need not wait for the disk (that wait
        // would compete with the appends'). A crash may lose the latest snapshot, never its
        // events; the next load folds a few more events.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, sequence, payload_revision, \
             payload_format, recorded_at, payload) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (aggregate_type, aggregate_id, sequence) DO UPDATE SET \
             payload_revision = EXCLUDED.payload_revision, payload_format = EXCLUDED.payload_format, \
             recorded_at = EXCLUDED.recorded_at, payload = EXCLUDED.payload",
        )
        .bind(snapshot.stream.aggregate_type.as_str())
        .bind(snapshot.stream.aggregate_id.as_str())
        .bind(to_i64(snapshot.sequence, "sequence")?)
        .bind(i32::try_from(snapshot.revision).unwrap_or(i32::MAX))
        .bind(snapshot.format.code())
        .bind(snapshot.recorded_at.timestamp_micros())
        .bind(snapshot.payload.as_slice())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence NOT IN \
             (SELECT sequence FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2 \
              ORDER BY sequence DESC LIMIT $3)",
        )
        .bind(snapshot.stream.aggregate_type.as_str())
        .bind(snapshot.stream.aggregate_id.as_str())
        .bind(clamp(keep.max(1) as u64))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Plans a batch in full under the append lock (src/store/plan.rs) and writes what it allows.
    async fn append_planned(
        &self,
        batch: &[AppendRequest],
    ) -> Result<Vec<AppendResult>, StoreError> {
        let mut tx = self.pool.begin().await?;

        let streams = batch_streams(batch);
        let types: Vec<&str> = streams.iter().map(|s| s.aggregate_type.as_str()).collect();
        let ids: Vec<&str> = streams.iter().map(|s| s.aggregate_id.as_str()).collect();
        let event_ids = batch_event_ids(batch);
        let rows = sqlx::query(LOCK_AND_READ_SQL)
            .bind(&types)
            .bind(&ids)
            .bind(&event_ids)
            .fetch_all(&mut *tx)
            .await?;
        let mut versions = HashMap::with_capacity(streams.len());
        let mut stored = HashMap::new();
        let mut head = None;
        for row in rows {
            let kind: i16 = row.try_get("kind")?;
            if kind == 2 {
                head = Some(to_u64(row.try_get("global_position")?, "last_position")?);
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
                let position = to_u64(row.try_get("global_position")?, "global_position")?;
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

        let head =
            head.ok_or_else(|| StoreError::Internal("the append lock answered no head".into()))?;
        let recorded_at = stored_now();
        let planned = plan(batch, versions, stored, head, recorded_at);
        if planned.rows.is_empty() {
            tx.rollback().await?;
            return Ok(planned.results);
        }

        let n = planned.rows.len();
        let mut positions = Vec::with_capacity(n);
        let mut aggregate_types = Vec::with_capacity(n);
        let mut aggregate_ids = Vec::with_capacity(n);
        let mut sequences = Vec::with_capacity(n);
        let mut event_ids = Vec::with_capacity(n);
        let mut event_types = Vec::with_capacity(n);
        let mut revisions = Vec::with_capacity(n);
        let mut formats = Vec::with_capacity(n);
        let mut metadata = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        for row in &planned.rows {
            positions.push(to_i64(row.position, "position")?);
            aggregate_types.push(row.stream.aggregate_type.as_str());
            aggregate_ids.push(row.stream.aggregate_id.as_str());
            sequences.push(to_i64(row.sequence, "sequence")?);
            event_ids.push(row.event.event_id);
            event_types.push(row.event.event_type.as_str());
            revisions.push(i32::try_from(row.event.revision).map_err(|_| {
                StoreError::InvalidInput(format!("revision out of range: {}", row.event.revision))
            })?);
            formats.push(row.event.format.code());
            metadata.push(row.event.metadata.to_json()?);
            payloads.push(row.event.payload.as_slice());
        }
        sqlx::query(INSERT_SQL)
            .bind(&positions)
            .bind(&aggregate_types)
            .bind(&aggregate_ids)
            .bind(&sequences)
            .bind(&event_ids)
            .bind(&event_types)
            .bind(&revisions)
            .bind(&formats)
            .bind(recorded_at.timestamp_micros())
            .bind(&metadata)
            .bind(&payloads)
            .bind(to_i64(planned.head, "position")?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(planned.results)
    }

    /// The one-statement path: `None` when the statement refused the batch and wrote nothing
    /// (a conflict or a stored id), or when no append connection could be had (the planned
    /// path, on the main pool, then writes the batch or reports why it cannot).
    async fn append_fast(
        &self,
        fast: &FastBatch<'_>,
        batch: &[AppendRequest],
    ) -> Result<Option<Vec<AppendResult>>, StoreError> {
        let n = fast.r_stream.len();
        let mut event_ids = Vec::with_capacity(n);
        let mut event_types = Vec::with_capacity(n);
        let mut revisions = Vec::with_capacity(n);
        let mut formats = Vec::with_capacity(n);
        let mut metadata = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        for event in batch.iter().flat_map(|r| &r.events) {
            event_ids.push(event.event_id);
            event_types.push(event.event_type.as_str());
            revisions.push(i32::try_from(event.revision).map_err(|_| {
                StoreError::InvalidInput(format!("revision out of range: {}", event.revision))
            })?);
            formats.push(event.format.code());
            metadata.push(event.metadata.to_json()?);
            payloads.push(event.payload.as_slice());
        }
        let types: Vec<&str> = fast
            .streams
            .iter()
            .map(|s| s.aggregate_type.as_str())
            .collect();
        let ids: Vec<&str> = fast
            .streams
            .iter()
            .map(|s| s.aggregate_id.as_str())
            .collect();
        let mut connection = match self.appends.lane().await {
            Ok(connection) => connection,
            // A host that closed the store's pool has stopped it: appends stop too.
            Err(sqlx::Error::PoolClosed) => return Err(sqlx::Error::PoolClosed.into()),
            Err(error) => {
                warn!(%error, "no append connection: the batch is planned in full on the pool");
                return Ok(None);
            }
        };
        let recorded_at = stored_now();
        let head = sqlx::query_scalar::<_, i64>(FAST_APPEND_SQL)
            .bind(&types)
            .bind(&ids)
            .bind(&fast.bases)
            .bind(&fast.r_stream)
            .bind(&fast.r_offset)
            .bind(&event_ids)
            .bind(&event_types)
            .bind(&revisions)
            .bind(&formats)
            .bind(recorded_at.timestamp_micros())
            .bind(&metadata)
            .bind(&payloads)
            .fetch_one(&mut *connection)
            .await;
        connection.finished_with(&head);
        let head = match head {
            Ok(head) => to_u64(head, "last_position")?,
            // A stored event id, or a stream that moved past its expected version (a unique
            // index refused the rows), or one behind it (the statement refused itself): nothing
            // was written. Planned in full, which tells a retry from a duplicate and reads the
            // stream's version for the conflict.
            Err(sqlx::Error::Database(error))
                if error.kind() == sqlx::error::ErrorKind::UniqueViolation
                    || error.code().as_deref() == Some(REFUSED) =>
            {
                return Ok(None);
            }
            // The connection broke (the server restarted, say): it goes (the lane is unfinished),
            // and the planned path takes the batch. Should the statement have committed before
            // the break, the planned path finds its event ids stored and answers the batch as
            // the retry it is.
            Err(error) if broke(&error) => {
                warn!(%error, "an append connection broke: the batch is planned in full");
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let mut next_position = head + 1;
        let mut results = Vec::with_capacity(batch.len());
        for &(stream, offset, len) in &fast.requests {
            let base = fast.bases.get(stream).copied().ok_or_else(|| {
                StoreError::Internal("a request of the fast append has no stream".into())
            })?;
            let first = next_position;
            next_position += len as u64;
            results.push(Ok(Appended {
                version: to_u64(base, "expected version")? + offset + len as u64,
                first_position: Some(first),
                last_position: Some(next_position - 1),
                recorded_at,
            }));
        }
        Ok(Some(results))
    }
}

/// The one-statement append of a batch whose every stream expects an exact version, run on its
/// own on one of the store's append connections (see [`APPEND_SETTINGS`]), so it commits on
/// return: one round trip.
///
/// It takes the append lock and the positions by moving the counter, then inserts the rows
/// whose stream is where it should be: a stream expecting version `b > 0` must have a row at
/// `b` (sequences have no gaps, so that is one lookup by the whole key), and a stream that has
/// moved past `b` already has the row at `b + 1`, which the unique streams index refuses, as
/// the unique event-id index refuses a stored id. If any row is left out, `nursery_refuse`
/// raises SQLSTATE `NU001`, which aborts the statement: the counter and the rows roll back
/// together. Every refusal therefore writes nothing and the caller plans the batch in full.
///
/// Parameters: `$1`-`$3` one entry per stream (type, id, expected version); per event `$4` the
/// 1-based index of its stream, `$5` its offset in the stream's part of the batch, `$6`-`$9`
/// id, type, revision, format, `$11` metadata as JSON text, `$12` payload; `$10` the time.
/// Answers the head before the batch.
///
/// The lookups read the statement's snapshot, taken before the lock was granted: if the
/// previous lock holder wrote the row a stream expects, the statement refuses and the planned
/// path, which reads after taking the lock, writes the batch. The counter is read as it is
/// once the lock is granted (PostgreSQL re-reads an updated row after waiting for it).
///
/// Public so tests can pin its plan.
pub const FAST_APPEND_SQL: &str = "\
    WITH counter AS (UPDATE event_counter SET last_position = last_position + cardinality($6::uuid[]) \
                     WHERE id = 1 RETURNING last_position - cardinality($6::uuid[]) AS head), \
         written AS (INSERT INTO events (global_position, aggregate_type, aggregate_id, sequence, \
                                         event_id, event_type, payload_revision, payload_format, \
                                         recorded_at, metadata, payload) \
                     SELECT counter.head + r.n, ($1::text[])[r.s], ($2::text[])[r.s], \
                            ($3::int8[])[r.s] + r.off + 1, r.id, r.ty, r.rev, r.fmt, $10::int8, \
                            r.meta::jsonb, r.pl \
                       FROM counter, \
                            unnest($4::int4[], $5::int4[], $6::uuid[], $7::text[], $8::int4[], \
                                   $9::int2[], $11::text[], $12::bytea[]) \
                            WITH ORDINALITY AS r(s, off, id, ty, rev, fmt, meta, pl, n) \
                      WHERE r.off > 0 OR ($3::int8[])[r.s] = 0 \
                         OR (SELECT e.sequence FROM events e \
                              WHERE e.aggregate_type = ($1::text[])[r.s] \
                                AND e.aggregate_id = ($2::text[])[r.s] \
                                AND e.sequence = ($3::int8[])[r.s]) IS NOT NULL \
                     RETURNING 1) \
    SELECT counter.head FROM counter \
     WHERE CASE WHEN (SELECT count(*) FROM written) = cardinality($6::uuid[]) THEN TRUE \
                ELSE nursery_refuse('a stream is behind the version it expects') END";

/// The SQLSTATE `nursery_refuse` raises (migration 0009).
const REFUSED: &str = "NU001";

/// The settings of the connections [`FAST_APPEND_SQL`] runs on (`append_lanes` says why). Public
/// so tests can pin the statement's plan under them.
pub const APPEND_SETTINGS: [(&str, &str); 3] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    // What the statement's reasoning about snapshots assumes, whatever the database's default.
    ("default_transaction_isolation", "read committed"),
];

/// The connections of the one-statement append: two of `pool`'s, with [`APPEND_SETTINGS`]. A
/// prepared statement is planned for its parameters on each execution until PostgreSQL finds
/// its generic plan no dearer, which for [`FAST_APPEND_SQL`] it never did: planned each time,
/// a one-event append took 0.85-1.05 ms against 0.47-0.53 ms. So these connections always use
/// the generic plan, and, so that a plan made while the table was small stays right as it
/// grows, never a sequential scan (each of its lookups has an index). Only that statement runs
/// on them, and since the group commit sends one round at a time, two connections are plenty.
fn append_lanes(pool: &PgPool) -> Lanes<Postgres> {
    Lanes::new(pool.clone(), 2, settle, Some(append_setup()))
}

/// What each append connection is sent once: [`APPEND_SETTINGS`] as `SET` statements.
fn append_setup() -> String {
    APPEND_SETTINGS
        .iter()
        .map(|(name, value)| format!("SET {name} = '{value}'"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// PostgreSQL integers are signed: a bound past `i64::MAX` means "no bound".
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed step fails the test")]
mod tests {
    use sqlx::Executor;

    use super::*;

    #[test]
    fn the_append_connections_are_sent_every_setting() {
        let setup = append_setup();
        for (name, value) in APPEND_SETTINGS {
            assert!(
                setup.contains(&format!("SET {name} = '{value}'")),
                "{setup}"
            );
        }
        assert_eq!(setup.matches("SET ").count(), APPEND_SETTINGS.len());
    }

    fn server() -> String {
        std::env::var("NURSERY_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
    }

    async fn pool(max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .connect(&format!("{}/postgres", server()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_append_connections_run_with_their_settings() {
        let lanes = append_lanes(&pool(2).await);
        let mut lane = lanes.lane().await.unwrap();
        for (name, value) in APPEND_SETTINGS {
            let shown: String = sqlx::query_scalar(&format!("SHOW {name}"))
                .fetch_one(&mut *lane)
                .await
                .unwrap();
            assert_eq!(shown, value, "{name}");
        }
    }

    #[tokio::test]
    async fn a_connection_left_in_a_transaction_block_is_rolled_back_before_a_lane_keeps_it() {
        for left in ["BEGIN", "BEGIN; SELECT 1/0"] {
            let pool = pool(1).await;
            {
                // A transaction the pool never heard of (sqlx counts only its own), open or
                // failed.
                let mut conn = pool.acquire().await.unwrap();
                let _ = conn.execute(left).await;
            }
            let lanes = Lanes::new(pool, 1, settle, None);
            let mut lane = lanes.lane().await.unwrap();
            let outside: bool = lane
                .fetch_one("SELECT now() = statement_timestamp()")
                .await
                .unwrap()
                .get(0);
            assert!(outside, "after {left:?} the lane is still in a transaction");
        }
    }
}
