//! The plans of PostgreSQL's version reads, on a stream the planner has no statistics for yet
//! (written since the last `ANALYZE`, as a busy aggregate is): one backward step in the streams
//! index, never an aggregate over every entry of the stream. And the plan the one-statement
//! append keeps on its connections: every lookup by an index, whatever the table held when the
//! plan was made.

use nursery::store::{
    AppendRequest, Codec, EventStoreExt, ExpectedVersion, Metadata, POSTGRES_APPEND_SETTINGS,
    POSTGRES_FAST_APPEND_SQL, POSTGRES_LOAD_START_SQL, POSTGRES_STREAM_VERSION_SQL, StreamId,
};
use sqlx::Connection;

use crate::fixtures::{PotEvent, Pruned};

#[tokio::test]
async fn version_reads_take_one_step_back_in_the_streams_index() {
    let backend = crate::support::postgres().await;
    let events = (0..2_000)
        .map(|leaves| {
            Codec::default()
                .encode_event(&PotEvent::from(Pruned { leaves }), Metadata::default())
                .unwrap()
        })
        .collect();
    backend
        .store
        .append(AppendRequest {
            stream: StreamId::new("Pot", "long"),
            expected: ExpectedVersion::Exact(0),
            events,
        })
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&backend.url).await.unwrap();
    for sql in [POSTGRES_STREAM_VERSION_SQL, POSTGRES_LOAD_START_SQL] {
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
            .bind("Pot")
            .bind("long")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Only Scan Backward using events_stream_sequence")
                && !plan.contains("Aggregate"),
            "{sql}:\n{plan}"
        );
    }
    // And the answer is the version.
    let version: i64 = sqlx::query_scalar(POSTGRES_STREAM_VERSION_SQL)
        .bind("Pot")
        .bind("long")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 2_000);
}

#[tokio::test]
async fn the_one_statement_append_keeps_a_plan_of_index_lookups() {
    let backend = crate::support::postgres().await;
    let mut conn = sqlx::PgConnection::connect(&backend.url).await.unwrap();
    // The store's append connections, as the store sets them up; the plan is made while the
    // table is empty, as on a store's first append.
    for (name, value) in POSTGRES_APPEND_SETTINGS {
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(name)
            .bind(value)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::raw_sql(&format!("PREPARE fast AS {POSTGRES_FAST_APPEND_SQL}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN EXECUTE fast(ARRAY['Pot'], ARRAY['long'], ARRAY[5::int8], ARRAY[1], ARRAY[0], \
         ARRAY[gen_random_uuid()], ARRAY['Pruned'], ARRAY[1], ARRAY[0::int2], 0, ARRAY['{}'], \
         ARRAY['\\x00'::bytea])",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        !plan.contains("Seq Scan")
            && plan.contains("using events_stream_sequence on events")
            && plan.contains("using event_counter_pkey on event_counter"),
        "{plan}"
    );
    // A generic plan: the parameters stay parameters.
    assert!(plan.contains("$3"), "{plan}");
}

/// The one-statement append runs, on a connection of its own that accepted the settings: a
/// connection that could not be opened would send every batch down the planned path unseen.
#[tokio::test]
async fn the_one_statement_append_runs_on_its_own_connection() {
    let backend = crate::support::postgres().await;
    backend
        .store
        .append(AppendRequest {
            stream: StreamId::new("Pot", "fresh"),
            expected: ExpectedVersion::Exact(0),
            events: vec![
                Codec::default()
                    .encode_event(&PotEvent::from(Pruned { leaves: 1 }), Metadata::default())
                    .unwrap(),
            ],
        })
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&backend.url).await.unwrap();
    let ran: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND left(query, 300) = left($1, 300)",
    )
    .bind(POSTGRES_FAST_APPEND_SQL)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(ran, 1);
}
