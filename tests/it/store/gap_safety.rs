//! Gap safety on PostgreSQL: a reader of the global order never moves past a position that a
//! still-open transaction will commit later. A writer is held open exactly as an append holds
//! it (the counter row lock, then its rows), while another append and a reader run.

use std::sync::Arc;
use std::time::Duration;

use nursery::store::{
    AppendRequest, Appended, Codec, EventStore, EventStoreExt, ExpectedVersion, Metadata,
    POSTGRES_APPEND_LOCK_SQL, PostgresStore, StoreError, StreamId,
};
use sqlx::{Postgres, Transaction};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::fixtures::{PotEvent, Pruned};
use crate::support::FreshPg;

/// The one-statement path takes every batch whose streams expect exact versions; a stream
/// expecting any version is planned in full. Both take the same lock.
const PATHS: [ExpectedVersion; 2] = [ExpectedVersion::Exact(0), ExpectedVersion::Any];

fn one_event(stream: &str, expected: ExpectedVersion) -> AppendRequest {
    AppendRequest {
        stream: StreamId::new("Pot", stream),
        expected,
        events: vec![
            Codec::default()
                .encode_event(&PotEvent::from(Pruned { leaves: 1 }), Metadata::default())
                .unwrap(),
        ],
    }
}

/// Opens a transaction that takes the append lock and writes position `head + 1`, uncommitted.
async fn hold_writer(store: &PostgresStore) -> (Transaction<'static, Postgres>, Uuid) {
    let mut tx = store.pool().begin().await.unwrap();
    let head: i64 = sqlx::query_scalar(POSTGRES_APPEND_LOCK_SQL)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let event_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (global_position, aggregate_type, aggregate_id, sequence, event_id, event_type, \
         payload_revision, payload_format, recorded_at, metadata, payload) \
         VALUES ($1, 'Pot', 'held', 1, $2, 'Pruned', 1, 0, 0, '{}', '\\x80')",
    )
    .bind(head + 1)
    .bind(event_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE event_counter SET last_position = $1 WHERE id = 1")
        .bind(head + 1)
        .execute(&mut *tx)
        .await
        .unwrap();
    (tx, event_id)
}

/// Starts `request` as an append of its own, which may wait on the append lock.
fn in_background(
    store: &Arc<PostgresStore>,
    request: AppendRequest,
) -> JoinHandle<Result<Appended, StoreError>> {
    let store = Arc::clone(store);
    tokio::spawn(async move { store.append(request).await })
}

/// The answer of an append started by [`in_background`], which must come within 10 s and be a
/// success.
async fn answer(append: JoinHandle<Result<Appended, StoreError>>) -> Appended {
    tokio::time::timeout(Duration::from_secs(10), append)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// Waits, with a deadline, until `n` backends of this database wait on a lock.
async fn until_waiting_on_lock(store: &PostgresStore, db: &str, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(db)
        .fetch_one(store.pool())
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second writer never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waits_for_a_held_writer_then_sees_both_in_order() {
    for expected in PATHS {
        a_reader_waits_for_a_held_writer_then_sees_both_in_order_with(expected).await;
    }
}

async fn a_reader_waits_for_a_held_writer_then_sees_both_in_order_with(expected: ExpectedVersion) {
    let db = FreshPg::new().await;
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    store.append(one_event("first", expected)).await.unwrap();

    let (held, held_id) = hold_writer(&store).await;
    let other = in_background(&store, one_event("second", expected));
    until_waiting_on_lock(&store, &db.name, 1).await;

    // While the held writer is open, nothing past position 1 is visible: the reader waits.
    assert_eq!(store.head().await.unwrap(), 1);
    assert!(store.read_all(2, 100).await.unwrap().is_empty());
    assert!(!other.is_finished());

    held.commit().await.unwrap();
    let appended = answer(other).await;
    assert_eq!(appended.first_position, Some(3));

    let all = store.read_all(1, 100).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3]);
    assert_eq!(all[1].event_id, held_id);
    assert_eq!(all[2].stream.aggregate_id, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_writer_that_rolls_back_leaves_no_hole() {
    for expected in PATHS {
        a_held_writer_that_rolls_back_leaves_no_hole_with(expected).await;
    }
}

async fn a_held_writer_that_rolls_back_leaves_no_hole_with(expected: ExpectedVersion) {
    let db = FreshPg::new().await;
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    store.append(one_event("first", expected)).await.unwrap();

    let (held, _) = hold_writer(&store).await;
    let other = in_background(&store, one_event("second", expected));
    until_waiting_on_lock(&store, &db.name, 1).await;
    assert!(store.read_all(2, 100).await.unwrap().is_empty());

    held.rollback().await.unwrap();
    let appended = answer(other).await;
    assert_eq!(
        appended.first_position,
        Some(2),
        "the rolled-back position is reused: no hole"
    );

    let positions: Vec<u64> = store
        .read_all(1, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(positions, [1, 2]);
    assert_eq!(store.head().await.unwrap(), 2);
}

/// The one-statement append reads versions with the snapshot it took before the lock was
/// granted. An append that expects the very row the held writer is writing (row 1 of `held`)
/// waits, does not see that row once it gets the lock, refuses itself, and is planned in full
/// after the lock: it lands right after the held row, with nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_expecting_the_held_writers_row_follows_it() {
    let db = FreshPg::new().await;
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    store
        .append(one_event("first", ExpectedVersion::Exact(0)))
        .await
        .unwrap();

    let (held, held_id) = hold_writer(&store).await;
    let after = in_background(&store, one_event("held", ExpectedVersion::Exact(1)));
    until_waiting_on_lock(&store, &db.name, 1).await;
    held.commit().await.unwrap();
    let appended = answer(after).await;
    assert_eq!((appended.version, appended.first_position), (2, Some(3)));
    let held_stream = store
        .read_stream(&StreamId::new("Pot", "held"), 1, u64::MAX, usize::MAX)
        .await
        .unwrap();
    let sequences: Vec<(u64, u64)> = held_stream
        .iter()
        .map(|e| (e.sequence, e.position))
        .collect();
    assert_eq!(sequences, [(1, 2), (2, 3)]);
    assert_eq!(held_stream[0].event_id, held_id);
    assert_eq!(store.head().await.unwrap(), 3);
}
