//! Connections a store keeps for its own hot statements, outside sqlx's pool.
//!
//! sqlx 0.8's pool tests every connection handed back to it with a ping before anyone may take
//! it again. On PostgreSQL that is a round trip to the server process, which wakes up to answer;
//! on SQLite a round trip to the driver's worker thread. A load, a version read or an append
//! is one statement, so the pool doubled the wake-ups of each. Lanes hand a connection back as
//! it is, and find out that one broke when it is next used:
//!
//! - A statement that fails because its connection broke (I/O, the protocol, a server that
//!   shut the session down) drops that connection. [`on_lane!`] then runs the statement once
//!   more on a newly opened connection, so a restart of the database costs the first statement
//!   on each idle lane a second try, not an error. Only statements that may run twice go
//!   through `on_lane!`: single reads.
//! - A caller that gives up in the middle of a statement leaves its connection mid-exchange:
//!   that connection is closed, not handed back (see [`Lane`]). Lanes never hold a
//!   transaction open across statements, and end any that a connection taken from the pool
//!   was left in (see [`Settle`]).
//! - Kept connections live no longer than the pool's `max_lifetime`. (The pool's other
//!   per-connection settings, `idle_timeout`, `before_acquire` and `after_release`, do not
//!   apply to them.)
//! - Closing the pool the lanes were made from closes them too: they refuse new work and let
//!   go of their connections.
//!
//! Must not touch: what the statements are. Lanes move connections only.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::Instant;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgDatabaseError, PgSeverity};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Database, Executor, Pool, Row};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Runs one read statement on a lane of `$lanes`, binding the lane's connection to `$conn`
/// in `$statement` (an expression whose `.await` gives a `Result<_, sqlx::Error>`). If the
/// connection turns out to be broken, it is dropped and the statement runs once more on a
/// connection that answers a ping; so `$statement` must be safe to run twice. Evaluates to
/// the statement's result; failing to get a lane returns from the enclosing function (`?`).
macro_rules! on_lane {
    ($lanes:expr, |$conn:ident| $statement:expr) => {{
        let lanes = &$lanes;
        let mut lane = lanes.lane().await?;
        let first = {
            let $conn = &mut *lane;
            $statement.await
        };
        lane.finished_with(&first);
        match first {
            Err(error) if $crate::store::lanes::broke(&error) => {
                // Unfinished, the broken connection is closed, not handed back.
                drop(lane);
                let mut lane = lanes.tested_lane().await?;
                let again = {
                    let $conn = &mut *lane;
                    $statement.await
                };
                lane.finished_with(&again);
                again
            }
            outcome => outcome,
        }
    }};
}
pub(crate) use on_lane;

/// What a store runs on each connection its lanes take from the pool, before anything else:
/// it ends a transaction the connection may have been left in (a host's `begin` cut off after
/// the server ran it). A lane's statements would otherwise never commit, or read one old
/// snapshot for ever.
pub(crate) type Settle<DB> =
    for<'c> fn(&'c mut <DB as Database>::Connection) -> BoxFuture<'c, Result<(), sqlx::Error>>;

/// PostgreSQL's [`Settle`]. Outside a transaction block, a statement is its own transaction,
/// so `now()` (when the transaction began) is when the statement began; sent as a simple query,
/// so the statement and its transaction start together. Anything else, an error too (a failed
/// transaction refuses every statement until it ends), is rolled back.
pub(crate) fn settle_postgres(
    connection: &mut sqlx::PgConnection,
) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let outside = connection
            .fetch_one("SELECT now() = statement_timestamp()")
            .await
            .and_then(|row| row.try_get::<bool, _>(0));
        if !matches!(outside, Ok(true)) {
            connection.execute("ROLLBACK").await?;
        }
        Ok(())
    })
}

/// SQLite's [`Settle`]: a read-only connection left inside a transaction would read its old
/// snapshot for ever. SQLite refuses a `ROLLBACK` outside a transaction, which is then nothing
/// to do.
pub(crate) fn settle_sqlite(
    connection: &mut sqlx::SqliteConnection,
) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let _none_open = connection.execute("ROLLBACK").await;
        Ok(())
    })
}

/// A fixed number of connections, taken from a pool when first needed and then kept.
pub(crate) struct Lanes<DB: Database> {
    /// Where connections come from, and whose closing closes the lanes.
    pool: Pool<DB>,
    /// Whether the lanes keep the connections they take (else they take one for each use).
    keep: bool,
    /// Run first on each connection the lanes take for keeps.
    settle: Option<Settle<DB>>,
    /// Run next on each connection the lanes take for keeps (session settings).
    setup: Option<String>,
    /// One permit a lane: at most that many connections are kept, and waiters queue in order.
    permits: Semaphore,
    lanes: usize,
    /// Kept connections not in use; a lane without one takes a new one from the pool.
    idle: Mutex<Vec<Kept<DB>>>,
}

/// A kept connection, and when the lanes took it (kept no longer than the pool's
/// `max_lifetime`, as the pool would).
struct Kept<DB: Database> {
    connection: DB::Connection,
    taken: Instant,
}

impl<DB: Database> Lanes<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// `lanes` connections taken from `pool` (opened by it, so with its connect options and
    /// `after_connect` hooks), each then `settle`d, sent `setup`, and kept: the pool no longer
    /// counts them.
    pub(crate) fn new(
        pool: Pool<DB>,
        lanes: usize,
        settle: Settle<DB>,
        setup: Option<String>,
    ) -> Self {
        Self::with(pool, true, lanes, Some(settle), setup)
    }

    /// Lanes that take a connection from the pool for each use, and so pay its ping: for a
    /// database that lives in the pool's connection (an in-memory SQLite database).
    pub(crate) fn pooled(pool: Pool<DB>) -> Self {
        let lanes = pool.options().get_max_connections() as usize;
        Self::with(pool, false, lanes, None, None)
    }

    fn with(
        pool: Pool<DB>,
        keep: bool,
        lanes: usize,
        settle: Option<Settle<DB>>,
        setup: Option<String>,
    ) -> Self {
        let lanes = lanes.max(1);
        Self {
            pool,
            keep,
            settle,
            setup,
            permits: Semaphore::new(lanes),
            lanes,
            idle: Mutex::new(Vec::with_capacity(lanes)),
        }
    }

    /// Takes a lane: an idle connection, or a new one. Waits for a lane to come free at most
    /// the pool's acquire timeout.
    pub(crate) async fn lane(&self) -> Result<Lane<'_, DB>, sqlx::Error> {
        self.take(false).await
    }

    /// A lane with a newly taken connection that answered a ping, not an idle one: to run a
    /// statement again after its first connection broke (see [`on_lane!`]).
    pub(crate) async fn tested_lane(&self) -> Result<Lane<'_, DB>, sqlx::Error> {
        self.take(true).await
    }

    /// A lane; `fresh`: with a newly taken connection (which answered a ping), not an idle
    /// one.
    async fn take(&self, fresh: bool) -> Result<Lane<'_, DB>, sqlx::Error> {
        self.refuse_if_closed()?;
        // A free lane is taken at once; only a wait needs its deadline (and a timer).
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let wait = self.pool.options().get_acquire_timeout();
                tokio::time::timeout(wait, self.permits.acquire())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)?
                    .map_err(|_| sqlx::Error::PoolClosed)?
            }
        };
        // The pool may have closed while this caller waited for a lane.
        self.refuse_if_closed()?;
        let held = if self.keep {
            let idle = if fresh { None } else { self.idle_connection() };
            match idle {
                Some(kept) => Held::Own(kept),
                None => Held::Own(Kept {
                    connection: self.open().await?,
                    taken: Instant::now(),
                }),
            }
        } else {
            Held::Pooled(self.pool.acquire().await?)
        };
        Ok(Lane {
            held: Some(held),
            finished: false,
            lanes: self,
            _permit: permit,
        })
    }

    /// Refuses work once the pool is closed, and lets go of the kept connections then.
    fn refuse_if_closed(&self) -> Result<(), sqlx::Error> {
        if !self.pool.is_closed() {
            return Ok(());
        }
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Err(sqlx::Error::PoolClosed)
    }

    /// A connection of the pool's, detached from it, tested, settled and set up. The pool
    /// hands out its idle connections unchecked, and after a restart of the server they are as
    /// stale as the lanes' own: each is pinged first (once, when a lane takes it for keeps), and
    /// one that does not answer is dropped for the next.
    async fn open(&self) -> Result<DB::Connection, sqlx::Error> {
        let mut tries = self.pool.options().get_max_connections() + 1;
        loop {
            let mut connection = self.pool.acquire().await?.detach();
            tries -= 1;
            match connection.ping().await {
                Err(error) if tries == 0 => return Err(error),
                Err(_) => continue,
                Ok(()) => {}
            }
            if let Some(settle) = self.settle {
                settle(&mut connection).await?;
            }
            if let Some(setup) = &self.setup {
                connection.execute(setup.as_str()).await?;
            }
            return Ok(connection);
        }
    }

    /// The most recently used idle connection that is not past the pool's `max_lifetime`
    /// (older ones are dropped).
    fn idle_connection(&self) -> Option<Kept<DB>> {
        let max_lifetime = self.pool.options().get_max_lifetime();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(kept) = idle.pop() {
            if max_lifetime.is_none_or(|lifetime| kept.taken.elapsed() < lifetime) {
                return Some(kept);
            }
        }
        None
    }

    /// How many kept connections are idle (for tests).
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<DB: Database> fmt::Debug for Lanes<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lanes")
            .field("lanes", &self.lanes)
            .field("kept", &self.keep)
            .field("free", &self.permits.available_permits())
            .finish()
    }
}

/// Whether a statement failed because its connection can no longer be used: broken I/O or
/// protocol, a crashed driver worker, or the server ending the session (SQLSTATE classes 08,
/// connection exceptions, and 57P, shutdowns; any error of severity FATAL or PANIC). Also a
/// server that became a read-only standby (25006): a new connection may reach the new
/// primary. A refusal by the database is not one.
pub(crate) fn broke(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => {
            let fatal = error
                .try_downcast_ref::<PgDatabaseError>()
                .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic));
            fatal
                || error.code().is_some_and(|code| {
                    code.starts_with("08") || code.starts_with("57P") || code == "25006"
                })
        }
        _ => false,
    }
}

/// A connection taken from [`Lanes`]. Handed back, as it is, when dropped, if its last
/// exchange with the database was finished (see [`Lane::finish`]); otherwise it is closed: a
/// caller that gave up mid-statement leaves the connection mid-exchange, and its next user
/// would first meet what that statement still had to say (its rows, its error) or send it
/// late. (sqlx's pool cleaned such a connection up with the ping on its return.)
pub(crate) struct Lane<'a, DB: Database> {
    held: Option<Held<DB>>,
    finished: bool,
    lanes: &'a Lanes<DB>,
    _permit: SemaphorePermit<'a>,
}

enum Held<DB: Database> {
    Own(Kept<DB>),
    Pooled(PoolConnection<DB>),
}

impl<DB: Database> Lane<'_, DB> {
    /// Marks the statement run on the lane as answered in full (its result or error read to
    /// the end), so the connection may serve the next one.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    /// Marks the statement answered in full unless its connection broke (see [`broke`]): a
    /// broken connection is closed when the lane is dropped, not handed back.
    pub(crate) fn finished_with<T>(&mut self, outcome: &Result<T, sqlx::Error>) {
        if !outcome.as_ref().is_err_and(broke) {
            self.finish();
        }
    }
}

impl<DB: Database> Deref for Lane<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match self.held.as_ref() {
            Some(Held::Own(kept)) => &kept.connection,
            Some(Held::Pooled(connection)) => connection,
            // `held` is only emptied by `drop`.
            None => unreachable!("a lane is used after it was given up"),
        }
    }
}

impl<DB: Database> DerefMut for Lane<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        // A new exchange starts: the lane is unfinished until it is marked again.
        self.finished = false;
        match self.held.as_mut() {
            Some(Held::Own(kept)) => &mut kept.connection,
            Some(Held::Pooled(connection)) => connection,
            None => unreachable!("a lane is used after it was given up"),
        }
    }
}

impl<DB: Database> Drop for Lane<'_, DB> {
    fn drop(&mut self) {
        if let Some(Held::Own(kept)) = self.held.take() {
            if self.finished && !self.lanes.pool.is_closed() {
                self.lanes
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(kept);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed step fails the test")]
mod tests {
    use std::time::Duration;

    use sqlx::sqlite::SqlitePoolOptions;
    use sqlx::{Sqlite, SqlitePool};

    use super::*;

    async fn pool(dir: &tempfile::TempDir, max: u32) -> SqlitePool {
        pool_with(dir, SqlitePoolOptions::new().max_connections(max)).await
    }

    async fn pool_with(dir: &tempfile::TempDir, options: SqlitePoolOptions) -> SqlitePool {
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("lanes.db").display()
        );
        options
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .unwrap()
    }

    fn lanes(pool: SqlitePool, lanes: usize) -> Lanes<Sqlite> {
        Lanes::new(pool, lanes, settle_sqlite, None)
    }

    /// Runs a statement on the lane and marks it finished, as `on_lane!` does.
    async fn answer(lane: &mut Lane<'_, Sqlite>) -> i64 {
        let answer = sqlx::query_scalar("SELECT 41 + 1")
            .fetch_one(&mut **lane)
            .await
            .unwrap();
        lane.finish();
        answer
    }

    #[tokio::test]
    async fn a_lane_keeps_its_connection_outside_the_pool_and_hands_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 4).await;
        let lanes = lanes(pool.clone(), 2);
        let mut lane = lanes.lane().await.unwrap();
        assert_eq!(answer(&mut lane).await, 42);
        // Detached: the pool no longer counts it, and will not ping it when it comes back.
        assert_eq!(pool.size(), 0);
        assert_eq!(lanes.idle_count(), 0);
        drop(lane);
        assert_eq!(lanes.idle_count(), 1);
        // The next lane takes the same connection instead of opening another.
        let mut lane = lanes.lane().await.unwrap();
        assert_eq!(lanes.idle_count(), 0);
        assert_eq!(answer(&mut lane).await, 42);
        drop(lane);
        assert_eq!((lanes.idle_count(), pool.size()), (1, 0));
    }

    #[tokio::test]
    async fn a_lane_left_mid_statement_closes_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let lanes = lanes(pool(&dir, 4).await, 2);
        let mut lane = lanes.lane().await.unwrap();
        assert_eq!(answer(&mut lane).await, 42);
        // A statement started and never read to its end, as by a caller that gave up.
        let rows = sqlx::query("SELECT 1 UNION ALL SELECT 2").fetch(&mut *lane);
        drop(rows);
        drop(lane);
        assert_eq!(lanes.idle_count(), 0);
        // The next lane opens a connection of its own, which works.
        let mut lane = lanes.lane().await.unwrap();
        assert_eq!(answer(&mut lane).await, 42);
    }

    #[tokio::test]
    async fn no_more_lanes_are_taken_than_there_are() {
        let dir = tempfile::tempdir().unwrap();
        let lanes = lanes(pool(&dir, 4).await, 2);
        let first = lanes.lane().await.unwrap();
        let _second = lanes.lane().await.unwrap();
        let third = lanes.lane();
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut third)
                .await
                .is_err(),
            "a third lane was handed out while two were in use"
        );
        drop(first);
        let mut third = third.await.unwrap();
        assert_eq!(answer(&mut third).await, 42);
    }

    #[tokio::test]
    async fn each_kept_connection_is_set_up_once() {
        let dir = tempfile::tempdir().unwrap();
        let lanes = Lanes::new(
            pool(&dir, 4).await,
            2,
            settle_sqlite,
            Some("PRAGMA cache_size = 1234".into()),
        );
        let (mut a, mut b) = (lanes.lane().await.unwrap(), lanes.lane().await.unwrap());
        for lane in [&mut a, &mut b] {
            let size: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(&mut **lane)
                .await
                .unwrap();
            assert_eq!(size, 1234);
        }
    }

    #[tokio::test]
    async fn a_connection_the_pool_left_in_a_transaction_is_settled_first() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 1).await;
        {
            // A host's transaction the pool never heard of (sqlx counts only its own).
            let mut conn = pool.acquire().await.unwrap();
            conn.execute("BEGIN; SELECT 1").await.unwrap();
        }
        let lanes = lanes(pool, 1);
        let mut lane = lanes.lane().await.unwrap();
        // Inside a transaction, SQLite refuses to begin another.
        lane.execute("BEGIN").await.unwrap();
        lane.execute("ROLLBACK").await.unwrap();
    }

    #[tokio::test]
    async fn a_kept_connection_lives_no_longer_than_the_pools_max_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqlitePoolOptions::new()
            .max_connections(2)
            .max_lifetime(Duration::from_millis(50));
        let lanes = lanes(pool_with(&dir, options).await, 1);
        let mut lane = lanes.lane().await.unwrap();
        lane.execute("PRAGMA cache_size = 777").await.unwrap();
        lane.finish();
        drop(lane);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut lane = lanes.lane().await.unwrap();
        let size: i64 = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&mut *lane)
            .await
            .unwrap();
        assert_ne!(size, 777, "the connection outlived its lifetime");
    }

    #[tokio::test]
    async fn closing_the_pool_closes_the_lanes() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 4).await;
        let lanes = lanes(pool.clone(), 2);
        let mut lane = lanes.lane().await.unwrap();
        answer(&mut lane).await;
        drop(lane);
        assert_eq!(lanes.idle_count(), 1);
        pool.close().await;
        assert!(matches!(
            lanes.lane().await.map(|_| ()),
            Err(sqlx::Error::PoolClosed)
        ));
        assert_eq!(lanes.idle_count(), 0, "kept connections outlived the pool");
    }

    #[tokio::test]
    async fn pooled_lanes_hand_the_pools_connection_back_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 1).await;
        let lanes = Lanes::pooled(pool.clone());
        let mut lane = lanes.lane().await.unwrap();
        assert_eq!(answer(&mut lane).await, 42);
        assert_eq!(pool.num_idle(), 0);
        drop(lane);
        // Back in the pool (after its ping), not kept by the lanes.
        tokio::time::timeout(Duration::from_secs(5), async {
            while pool.num_idle() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(lanes.idle_count(), 0);
    }

    #[test]
    fn a_broken_connection_is_told_from_a_refusal() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(broke(&sqlx::Error::Io(io)));
        assert!(broke(&sqlx::Error::Protocol("unexpected message".into())));
        assert!(broke(&sqlx::Error::WorkerCrashed));
        assert!(!broke(&sqlx::Error::RowNotFound));
        assert!(!broke(&sqlx::Error::PoolTimedOut));
    }
}
