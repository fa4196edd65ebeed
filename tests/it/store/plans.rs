//! The plans of PostgreSQL's version reads, on a stream the planner has no statistics for yet
//! (written since the last `ANALYZE`, as a busy aggregate is): one backward step in the streams
//! index, never an aggregate over every entry of the stream.

use nursery::store::{
    AppendRequest, Codec, EventStoreExt, ExpectedVersion, Metadata, POSTGRES_LOAD_START_SQL,
    POSTGRES_STREAM_VERSION_SQL, StreamId,
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
