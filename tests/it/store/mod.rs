//! The event store conformance suite: the same scenarios against every backend (a port of the
//! Akka persistence TCK's journal and snapshot cases, plus what that TCK lacks), and the
//! PostgreSQL gap-safety proofs.

mod gap_safety;
mod plans;
mod properties;
mod scenarios;
mod sessions;

macro_rules! conformance {
    ($backend:ident: $($scenario:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let backend = crate::support::$backend().await;
                    super::scenarios::$scenario(backend.store.clone()).await;
                }
            )+
        }
    };
}

/// Durable backends only: what was acknowledged is still there after the store is reopened.
mod durable {
    use std::sync::Arc;

    use nursery::store::{EventStore, EventStoreExt, PostgresStore, SqliteStore};

    async fn reopened_store_keeps_everything(
        backend: crate::support::Backend,
        reopen: impl AsyncFnOnce(&str) -> Arc<dyn EventStore>,
    ) {
        super::scenarios::global_reads_are_paged_in_position_order(Arc::clone(&backend.store))
            .await;
        let before = backend.store.read_all(1, 1000).await.unwrap();
        let reopened = reopen(&backend.url).await;
        assert_eq!(reopened.read_all(1, 1000).await.unwrap(), before);
        assert_eq!(reopened.head().await.unwrap(), 27);
        // Migrations are idempotent: opening twice changed nothing, and appends carry on.
        let next = reopened
            .append(nursery::store::AppendRequest {
                stream: nursery::store::StreamId::new("Pot", "x"),
                expected: nursery::store::ExpectedVersion::Exact(9),
                events: vec![],
            })
            .await
            .unwrap();
        assert_eq!(next.version, 9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_reopened_keeps_everything() {
        reopened_store_keeps_everything(crate::support::sqlite().await, async |url| {
            Arc::new(SqliteStore::connect(url).await.unwrap()) as Arc<dyn EventStore>
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_reopened_keeps_everything() {
        reopened_store_keeps_everything(crate::support::postgres().await, async |url| {
            Arc::new(PostgresStore::connect(url).await.unwrap()) as Arc<dyn EventStore>
        })
        .await;
    }
}

/// A snapshot is a cache of its events (PostgreSQL commits snapshots without waiting for the
/// disk, so a crash may lose the newest): losing snapshots, the newest or all of them, loads
/// the same state from the older snapshot or from the events alone.
mod lost_snapshots {
    use std::sync::Arc;

    use nursery::store::{Codec, Repository, SnapshotPolicy};

    use crate::fixtures::Pot;

    async fn lost_snapshots_load_the_same_state(
        backend: crate::support::Backend,
        run: impl AsyncFn(&str, &str),
    ) {
        let policy = SnapshotPolicy { every: 50, keep: 3 };
        let repository =
            Repository::<Pot>::new(Arc::clone(&backend.store), Codec::default(), policy);
        let (state, version) = super::scenarios::plant_and_water(&repository, 30).await;
        assert_eq!(version, 151);
        let with_all = repository.load("p").await.unwrap();
        assert_eq!(
            (with_all.version, with_all.replayed),
            (151, 0),
            "loaded from the snapshot at 151"
        );

        run(
            &backend.url,
            "DELETE FROM snapshots WHERE sequence = (SELECT MAX(sequence) FROM snapshots)",
        )
        .await;
        let without_newest = repository.load("p").await.unwrap();
        assert_eq!(without_newest.state, state);
        assert_eq!(
            (without_newest.version, without_newest.replayed),
            (151, 50),
            "from the snapshot at 101"
        );

        run(&backend.url, "DELETE FROM snapshots").await;
        let from_events = repository.load("p").await.unwrap();
        assert_eq!(from_events.state, state);
        assert_eq!((from_events.version, from_events.replayed), (151, 151));
        assert_eq!(with_all.state, state);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        lost_snapshots_load_the_same_state(crate::support::postgres().await, async |url, sql| {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        lost_snapshots_load_the_same_state(crate::support::sqlite().await, async |url, sql| {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        })
        .await;
    }
}

/// The SQLite writer connection is shared: the store, the SQLite read store and hosts
/// (`SqliteStore::writer`) all use it. Whatever a cut-off caller left open there (a statement list
/// between its `BEGIN` and `COMMIT`, or a sqlx `begin` cut off after its `BEGIN`), the next
/// user gets the connection outside any transaction.
mod sqlite_writer {
    use std::time::Duration;

    use nursery::store::{EventStore, EventStoreExt, SqliteStore};
    use sqlx::Connection;

    use super::scenarios::first_append;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_off_callers_leave_the_shared_writer_outside_any_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let writer = store.writer().clone();
        for cut in 0u64..100 {
            let deadline = Duration::from_micros(cut * 20);
            // An append cut off, then a host's transaction on the writer.
            let batch = vec![first_append(&format!("cut-{cut}"))];
            let _ = tokio::time::timeout(deadline, store.append_batch(&batch)).await;
            let mut conn = writer.lock().await.unwrap();
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("SELECT COUNT(*) FROM events")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            drop(conn);
            // A host's begin cut off, then the store appends.
            let _ = tokio::time::timeout(deadline / 4, async {
                let mut conn = writer.lock().await?;
                let tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(tx);
                Ok::<_, nursery::store::StoreError>(())
            })
            .await;
            let after = store
                .append(first_append(&format!("after-{cut}")))
                .await
                .unwrap();
            assert_eq!(after.version, 1);
        }
        let all = store.read_all(1, 10_000).await.unwrap();
        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
        assert!(all.len() >= 100);
    }

    /// In memory the writer stays in a pool of one, which its readers share, and the pool's
    /// release hook (not `lock`) ends what a cut-off caller left open: the conformance case
    /// for cut-off appends and snapshot saves, on that path.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_memory_cut_off_appends_store_all_or_nothing() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        super::scenarios::an_append_cut_off_at_any_point_stores_all_or_nothing(
            std::sync::Arc::new(store),
        )
        .await;
    }
}

/// On PostgreSQL the read store shares the event store's pool. A read-store commit, promotion
/// or discard cut off at any point must not leave a pooled connection inside a transaction:
/// the next append on it would hold the append lock for good. (The one-statement append runs on
/// connections of its own, so the appends here expect any version: they are planned in full,
/// on the shared pool.) These now run in a
/// task of their own, as the store's transactions do. A check, not a reproduction: the hazard
/// needs a cut between `BEGIN` and sqlx counting it, which this loop did not hit in three runs
/// without the task (the event store's cut-off conformance case did hit it, 3 runs in 11).
mod postgres_shared_pool {
    use std::time::Duration;

    use nursery::projections::{Commit, PostgresReadStore, ReadStore};
    use nursery::store::{EventStoreExt, ExpectedVersion, PostgresStore};

    use super::scenarios::first_append;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_off_read_store_transactions_never_hold_up_appends() {
        let backend = crate::support::postgres().await;
        // One connection, so the append after a cut always gets the connection the cut left.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect(&backend.url)
            .await
            .unwrap();
        let store = PostgresStore::with_pool(pool).await.unwrap();
        let read = PostgresReadStore::new(&store);
        for cut in 0u64..200 {
            let deadline = Duration::from_micros(cut * 10);
            let commit = Commit {
                name: "cut",
                generation: 1,
                writes: vec![(format!("doc-{cut}"), Some(serde_json::json!({ "n": cut })))],
                position: cut,
                park: Vec::new(),
                resolve: Vec::new(),
                skip: Vec::new(),
                fail_before_commit: false,
            };
            let _ = tokio::time::timeout(deadline, read.commit(commit)).await;
            let _ = tokio::time::timeout(deadline, read.promote("cut", 1)).await;
            let _ = tokio::time::timeout(deadline, read.discard("cut", 2)).await;
            let mut request = first_append(&format!("after-{cut}"));
            request.expected = ExpectedVersion::Any;
            let append = store.append(request);
            let appended = tokio::time::timeout(Duration::from_secs(10), append)
                .await
                .unwrap_or_else(|_| panic!("the append after cut {cut} hung"))
                .unwrap();
            assert_eq!(appended.version, 1);
        }
    }
}

macro_rules! all_backends {
    ($($scenario:ident),+ $(,)?) => {
        conformance!(memory: $($scenario),+);
        conformance!(sqlite: $($scenario),+);
        conformance!(postgres: $($scenario),+);
    };
}

all_backends!(
    empty_store_has_head_zero,
    round_trip_keeps_every_field,
    replays_are_bounded_by_from_to_and_max,
    replays_hand_over_what_decoding_needs_within_the_same_bounds,
    replays_hand_over_large_events_and_odd_types_exactly,
    replays_keep_their_bounds_across_pages,
    recent_command_ids_are_the_newest_distinct_in_range,
    a_wrong_expected_version_conflicts_and_writes_nothing,
    a_request_behind_its_stream_fails_alone_in_its_batch,
    sixty_four_racers_on_one_stream_exactly_one_wins,
    sixty_four_racers_on_sixty_four_streams_all_win,
    twenty_concurrent_appends_that_succeed_are_all_stored,
    an_empty_append_neither_creates_a_stream_nor_lowers_a_version,
    a_bad_second_event_rejects_the_whole_append,
    an_identical_retry_is_answered_as_the_first_and_stores_nothing,
    partial_overlaps_and_foreign_ids_are_duplicates,
    a_batch_fails_only_its_conflicting_requests,
    global_reads_are_paged_in_position_order,
    snapshots_round_trip_and_only_the_newest_are_kept,
    the_load_start_is_the_newest_snapshot_and_the_stream_version,
    old_revisions_are_upcast_on_read,
    unknown_types_and_corrupt_payloads_are_typed_errors,
    json_payloads_round_trip,
    a_one_mib_event_round_trips,
    a_ten_thousand_event_stream_streams_and_loads,
    repository_loads_from_the_latest_snapshot,
    a_tracking_reader_never_skips_under_concurrent_writers,
    a_tracking_reader_never_skips_across_pages_and_large_payloads,
    a_failed_request_fails_the_later_requests_of_its_stream_in_the_batch,
    a_batch_of_a_thousand_streams_commits,
    an_append_cut_off_at_any_point_stores_all_or_nothing,
);

/// A store that implements only what [`EventStore`] requires, over the in-memory one: the
/// trait's own replay and recent-command reads (what a host's store gets) keep the contract.
mod trait_defaults {
    use std::sync::Arc;

    use async_trait::async_trait;
    use nursery::store::{
        AppendRequest, AppendResult, EventStore, MemoryStore, RecordedEvent, Snapshot, StoreError,
        StreamId,
    };

    struct Plain(MemoryStore);

    #[async_trait]
    impl EventStore for Plain {
        async fn append_batch(
            &self,
            batch: &[AppendRequest],
        ) -> Result<Vec<AppendResult>, StoreError> {
            self.0.append_batch(batch).await
        }

        async fn read_stream(
            &self,
            stream: &StreamId,
            from: u64,
            to: u64,
            max: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.0.read_stream(stream, from, to, max).await
        }

        async fn read_all(&self, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
            self.0.read_all(from, max).await
        }

        async fn head(&self) -> Result<u64, StoreError> {
            self.0.head().await
        }

        async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
            self.0.stream_version(stream).await
        }

        async fn save_snapshot(&self, snapshot: &Snapshot, keep: usize) -> Result<(), StoreError> {
            self.0.save_snapshot(snapshot, keep).await
        }

        async fn latest_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
            self.0.latest_snapshot(stream).await
        }

        async fn snapshot_count(&self, stream: &StreamId) -> Result<usize, StoreError> {
            self.0.snapshot_count(stream).await
        }

        async fn ping(&self) -> Result<(), StoreError> {
            self.0.ping().await
        }
    }

    #[tokio::test]
    async fn replays_hand_over_what_decoding_needs_within_the_same_bounds() {
        super::scenarios::replays_hand_over_what_decoding_needs_within_the_same_bounds(Arc::new(
            Plain(MemoryStore::new()),
        ))
        .await;
    }

    #[tokio::test]
    async fn replays_keep_their_bounds_across_pages() {
        super::scenarios::replays_keep_their_bounds_across_pages(Arc::new(Plain(
            MemoryStore::new(),
        )))
        .await;
    }

    /// The default load start reads the snapshot only; a load then reads on from it.
    #[tokio::test]
    async fn the_default_load_start_leaves_the_version_to_the_replay() {
        let store: super::scenarios::Store = Arc::new(Plain(MemoryStore::new()));
        let stream = StreamId::new("Pot", "p");
        assert_eq!(
            store.load_start(&stream).await.unwrap(),
            nursery::store::LoadStart::default()
        );
        super::scenarios::repository_loads_from_the_latest_snapshot(store).await;
    }

    #[tokio::test]
    async fn recent_command_ids_are_the_newest_distinct_in_range() {
        super::scenarios::recent_command_ids_are_the_newest_distinct_in_range(Arc::new(Plain(
            MemoryStore::new(),
        )))
        .await;
    }
}
