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
//! - A caller that gives up in the middle of a statement leaves its connection mid-exchange;
//!   the driver finishes that exchange before the connection's next statement (sqlx drains
//!   what the server still owes; SQLite's worker resets the statement). Lanes never hold a
//!   transaction open across statements, so no transaction is left behind.
//! - Closing the pool the lanes were made from closes them too: they refuse new work.
//!
//! Must not touch: what the statements are. Lanes move connections only.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Database, Executor, Pool};
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
        match first {
            Err(error) if $crate::store::lanes::broke(&error) => {
                lane.discard();
                let mut lane = lanes.tested_lane().await?;
                let again = {
                    let $conn = &mut *lane;
                    $statement.await
                };
                if again.as_ref().is_err_and($crate::store::lanes::broke) {
                    lane.discard();
                }
                again
            }
            outcome => outcome,
        }
    }};
}
pub(crate) use on_lane;

/// A fixed number of connections, taken from a pool when first needed and then kept.
pub(crate) struct Lanes<DB: Database> {
    /// Where connections come from, and whose closing closes the lanes.
    pool: Pool<DB>,
    /// Whether the lanes keep the connections they take (else they take one for each use).
    keep: bool,
    /// Run once on each connection the lanes take for keeps (session settings).
    setup: Option<String>,
    /// One permit a lane: at most that many connections are kept, and waiters queue in order.
    permits: Semaphore,
    lanes: usize,
    /// Kept connections not in use; a lane without one takes a new one from the pool.
    idle: Mutex<Vec<DB::Connection>>,
}

impl<DB: Database> Lanes<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// `lanes` connections taken from `pool` (opened by it, so with its options and
    /// `after_connect` hooks), each then sent `setup`, and kept: the pool no longer counts them.
    pub(crate) fn new(pool: Pool<DB>, lanes: usize, setup: Option<String>) -> Self {
        Self::with(pool, true, lanes, setup)
    }

    /// Lanes that take a connection from the pool for each use, and so pay its ping: for a
    /// database that lives in the pool's connection (an in-memory SQLite database).
    pub(crate) fn pooled(pool: Pool<DB>) -> Self {
        let lanes = pool.options().get_max_connections() as usize;
        Self::with(pool, false, lanes, None)
    }

    fn with(pool: Pool<DB>, keep: bool, lanes: usize, setup: Option<String>) -> Self {
        let lanes = lanes.max(1);
        Self {
            pool,
            keep,
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
        if self.pool.is_closed() {
            return Err(sqlx::Error::PoolClosed);
        }
        let wait = self.pool.options().get_acquire_timeout();
        let permit = tokio::time::timeout(wait, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let held = if !self.keep {
            Held::Pooled(self.pool.acquire().await?)
        } else if let Some(connection) = (!fresh).then(|| self.idle_connection()).flatten() {
            Held::Own(connection)
        } else {
            Held::Own(self.open().await?)
        };
        Ok(Lane {
            held: Some(held),
            lanes: self,
            _permit: permit,
        })
    }

    /// A connection of the pool's, detached from it, tested and set up. The pool hands out its
    /// idle connections unchecked, and after a restart of the server they are as stale as the
    /// lanes' own: each is pinged first (once, when a lane takes it for keeps), and one that
    /// does not answer is dropped for the next.
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
            if let Some(setup) = &self.setup {
                connection.execute(setup.as_str()).await?;
            }
            return Ok(connection);
        }
    }

    fn idle_connection(&self) -> Option<DB::Connection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
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
/// connection exceptions, and 57P, shutdowns). A refusal by the database is not one.
pub(crate) fn broke(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// A connection taken from [`Lanes`]; handed back, as it is, when dropped.
pub(crate) struct Lane<'a, DB: Database> {
    held: Option<Held<DB>>,
    lanes: &'a Lanes<DB>,
    _permit: SemaphorePermit<'a>,
}

enum Held<DB: Database> {
    Own(DB::Connection),
    Pooled(PoolConnection<DB>),
}

impl<DB: Database> Lane<'_, DB> {
    /// Drops the connection instead of handing it back: it broke (see [`broke`]).
    pub(crate) fn discard(mut self) {
        self.held = None;
    }
}

impl<DB: Database> Deref for Lane<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match self.held.as_ref() {
            Some(Held::Own(connection)) => connection,
            Some(Held::Pooled(connection)) => connection,
            // `held` is only emptied by `discard` and `drop`, which consume the lane.
            None => unreachable!("a lane is used after it was given up"),
        }
    }
}

impl<DB: Database> DerefMut for Lane<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self.held.as_mut() {
            Some(Held::Own(connection)) => connection,
            Some(Held::Pooled(connection)) => connection,
            None => unreachable!("a lane is used after it was given up"),
        }
    }
}

impl<DB: Database> Drop for Lane<'_, DB> {
    fn drop(&mut self) {
        if let Some(Held::Own(connection)) = self.held.take() {
            self.lanes
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(connection);
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
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("lanes.db").display()
        );
        SqlitePoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .unwrap()
    }

    async fn answer(lane: &mut Lane<'_, Sqlite>) -> i64 {
        sqlx::query_scalar("SELECT 41 + 1")
            .fetch_one(&mut **lane)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_lane_keeps_its_connection_outside_the_pool_and_hands_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 4).await;
        let lanes = Lanes::new(pool.clone(), 2, None);
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
    async fn no_more_lanes_are_taken_than_there_are() {
        let dir = tempfile::tempdir().unwrap();
        let lanes = Lanes::new(pool(&dir, 4).await, 2, None);
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
    async fn closing_the_pool_closes_the_lanes() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 4).await;
        let lanes = Lanes::new(pool.clone(), 2, None);
        drop(lanes.lane().await.unwrap());
        pool.close().await;
        assert!(matches!(
            lanes.lane().await.map(|_| ()),
            Err(sqlx::Error::PoolClosed)
        ));
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
