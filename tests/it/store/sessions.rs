//! The PostgreSQL store's own connections (kept outside sqlx's pool, which pings every
//! connection handed back to it): what happens when the server ends their sessions.

use std::sync::Arc;

use nursery::store::{
    AppendRequest, Codec, EventStore, EventStoreExt, ExpectedVersion, Metadata, StreamId,
};
use sqlx::Connection;

use crate::fixtures::{PotEvent, Pruned};

fn pruned(leaves: u32) -> nursery::store::NewEvent {
    Codec::default()
        .encode_event(&PotEvent::from(Pruned { leaves }), Metadata::default())
        .unwrap()
}

async fn append(store: &Arc<dyn EventStore>, stream: &StreamId, expected: u64) {
    store
        .append(AppendRequest {
            stream: stream.clone(),
            expected: ExpectedVersion::Exact(expected),
            events: vec![pruned(1)],
        })
        .await
        .unwrap();
}

/// Ends every session of the database but the caller's, and waits until they are gone;
/// answers how many it ended.
async fn end_sessions(url: &str) -> usize {
    let ended = crate::support::end_sessions(url).await;
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    // A backend told to end is gone once pg_stat_activity no longer lists it.
    for _ in 0..200 {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_appends_go_on_after_the_server_ends_the_stores_sessions() {
    let backend = crate::support::postgres().await;
    let store = Arc::clone(&backend.store);
    let stream = StreamId::new("Pot", "through-a-restart");
    // Open the append and read connections, and leave them idle.
    append(&store, &stream, 0).await;
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
    assert_eq!(store.load_start(&stream).await.unwrap().version, Some(1));
    assert!(end_sessions(&backend.url).await > 0, "no session was ended");
    // Each read finds its connection gone and runs again on a new one: no error.
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
    assert_eq!(store.load_start(&stream).await.unwrap().version, Some(1));
    assert_eq!(
        store
            .read_stream(&stream, 1, u64::MAX, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.read_all(1, 10).await.unwrap().len(), 1);
    assert_eq!(store.head().await.unwrap(), 1);
    // An append whose connection is gone is planned in full on the pool instead. The pool's
    // own connections were ended too, and it hands out one of them unchecked (it is built
    // with `test_before_acquire(false)`): that append may fail, but writes nothing twice and
    // the next one lands.
    let _ = store
        .append(AppendRequest {
            stream: stream.clone(),
            expected: ExpectedVersion::Exact(1),
            events: vec![pruned(2)],
        })
        .await;
    let version = store.stream_version(&stream).await.unwrap();
    append(&store, &stream, version).await;
    let stored = store.read_stream(&stream, 1, u64::MAX, 10).await.unwrap();
    assert_eq!(stored.len() as u64, version + 1);
    assert!(
        stored
            .windows(2)
            .all(|w| w[0].sequence + 1 == w[1].sequence)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_connection_was_ended_fails_once_and_then_loads() {
    // A replay folds rows as they arrive, so it is not run twice on its own: a broken
    // connection fails that load (the actor's supervisor loads again), and is not kept.
    let backend = crate::support::postgres().await;
    let store = Arc::clone(&backend.store);
    let stream = StreamId::new("Pot", "replayed");
    append(&store, &stream, 0).await;
    let mut folded = 0;
    let mut count = |_: nursery::store::EncodedEvent<'_>| {
        folded += 1;
        Ok(())
    };
    store
        .replay_stream(&stream, 1, u64::MAX, 10, &mut count)
        .await
        .unwrap();
    end_sessions(&backend.url).await;
    let mut tries = 0;
    loop {
        tries += 1;
        let mut count = |_: nursery::store::EncodedEvent<'_>| Ok(());
        match store
            .replay_stream(&stream, 1, u64::MAX, 10, &mut count)
            .await
        {
            Ok(read) => {
                assert_eq!(read, 1);
                break;
            }
            Err(error) => assert!(tries < 2, "still failing after {tries} loads: {error}"),
        }
    }
    assert_eq!(folded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_repeated_after_its_connection_broke_is_answered_as_the_first() {
    // The append connection breaks; the batch goes down the planned path, which finds its
    // event ids stored and answers the retry as the first append, as it must when a statement
    // committed just before its connection broke. The pool tests its connections here, so the
    // planned path does not meet a stale one of its own.
    let db = crate::support::FreshPg::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .test_before_acquire(true)
        .connect(&db.url)
        .await
        .unwrap();
    let store: Arc<dyn EventStore> = Arc::new(
        nursery::store::PostgresStore::with_pool(pool)
            .await
            .unwrap(),
    );
    let stream = StreamId::new("Pot", "retried-through-a-restart");
    let request = AppendRequest {
        stream: stream.clone(),
        expected: ExpectedVersion::Exact(0),
        events: vec![pruned(1), pruned(2)],
    };
    let first = store.append(request.clone()).await.unwrap();
    assert!(end_sessions(&db.url).await > 0, "no session was ended");
    let again = store.append(request).await.unwrap();
    assert_eq!(
        (again.version, again.first_position, again.last_position),
        (first.version, first.first_position, first.last_position)
    );
    assert_eq!(
        store
            .read_stream(&stream, 1, u64::MAX, 10)
            .await
            .unwrap()
            .len(),
        2
    );
}
