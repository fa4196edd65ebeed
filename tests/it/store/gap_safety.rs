//! Gap safety on PostgreSQL: a reader of the global order never moves past a position that a
//! still-open transaction will commit later. A writer is held open exactly as an append holds
//! it (the counter row lock, then its rows), while another append and a reader run.

use std::sync::Arc;
use std::time::Duration;

use nursery::store::{
    AppendRequest, Codec, EventStore, EventStoreExt, ExpectedVersion, Metadata,
    POSTGRES_APPEND_LOCK_SQL, PostgresStore, StreamId,
};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::fixtures::{PotEvent, Pruned};
use crate::support::FreshPg;

fn one_event(stream: &str) -> AppendRequest {
    AppendRequest {
        stream: StreamId::new("Pot", stream),
        expected: ExpectedVersion::Any,
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
    let db = FreshPg::new().await;
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    store.append(one_event("first")).await.unwrap();

    let (held, held_id) = hold_writer(&store).await;
    let other = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.append(one_event("second")).await })
    };
    until_waiting_on_lock(&store, &db.name, 1).await;

    // While the held writer is open, nothing past position 1 is visible: the reader waits.
    assert_eq!(store.head().await.unwrap(), 1);
    assert!(store.read_all(2, 100).await.unwrap().is_empty());
    assert!(!other.is_finished());

    held.commit().await.unwrap();
    let appended = tokio::time::timeout(Duration::from_secs(10), other)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(appended.first_position, Some(3));

    let all = store.read_all(1, 100).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3]);
    assert_eq!(all[1].event_id, held_id);
    assert_eq!(all[2].stream.aggregate_id, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_writer_that_rolls_back_leaves_no_hole() {
    let db = FreshPg::new().await;
    let store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
    store.append(one_event("first")).await.unwrap();

    let (held, _) = hold_writer(&store).await;
    let other = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.append(one_event("second")).await })
    };
    until_waiting_on_lock(&store, &db.name, 1).await;
    assert!(store.read_all(2, 100).await.unwrap().is_empty());

    held.rollback().await.unwrap();
    let appended = tokio::time::timeout(Duration::from_secs(10), other)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
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
