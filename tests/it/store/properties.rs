//! Property: whatever sequence of appends (right or wrong expected versions, empty appends,
//! exact retries, reused ids), the store agrees with a simple model, and its streams and global
//! order stay gap-free.

use std::collections::HashMap;
use std::sync::Arc;

use nursery::store::{
    AppendRequest, Codec, EventStore, EventStoreExt, ExpectedVersion, MemoryStore, Metadata,
    NewEvent, StoreError, StreamId,
};
use proptest::prelude::*;

use crate::fixtures::{PotEvent, Pruned};

#[derive(Clone, Debug)]
enum Op {
    /// Append `count` fresh events to stream `stream`, expecting `offset` relative to the
    /// model's version (0: right; otherwise wrong), or any version.
    Append {
        stream: usize,
        count: usize,
        offset: i64,
        any: bool,
    },
    /// Send the previous successful append again, unchanged.
    Retry,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, 0usize..4, prop_oneof![3 => Just(0i64), 1 => -2i64..3], proptest::bool::weighted(0.2))
            .prop_map(|(stream, count, offset, any)| Op::Append { stream, count, offset, any }),
        1 => Just(Op::Retry),
    ]
}

fn event() -> NewEvent {
    Codec::default()
        .encode_event(&PotEvent::from(Pruned { leaves: 1 }), Metadata::default())
        .unwrap()
}

async fn check(store: Arc<dyn EventStore>, ops: Vec<Op>) {
    let mut versions: HashMap<usize, u64> = HashMap::new();
    let mut head = 0u64;
    let mut last_ok: Option<(AppendRequest, nursery::store::Appended)> = None;
    for op in ops {
        match op {
            Op::Append {
                stream,
                count,
                offset,
                any,
            } => {
                let version = versions.get(&stream).copied().unwrap_or(0);
                let expected = if any {
                    ExpectedVersion::Any
                } else {
                    ExpectedVersion::Exact(
                        u64::try_from(version as i64 + offset).unwrap_or(u64::MAX),
                    )
                };
                let request = AppendRequest {
                    stream: StreamId::new("Pot", format!("s{stream}")),
                    expected,
                    events: (0..count).map(|_| event()).collect(),
                };
                let result = store.append(request.clone()).await;
                if any || offset == 0 {
                    let appended = result.unwrap();
                    assert_eq!(appended.version, version + count as u64);
                    versions.insert(stream, appended.version);
                    head += count as u64;
                    if count > 0 {
                        last_ok = Some((request, appended));
                    }
                } else {
                    assert!(
                        matches!(result, Err(StoreError::ConcurrencyConflict { actual, .. }) if actual == version)
                    );
                }
            }
            Op::Retry => {
                if let Some((request, first)) = &last_ok {
                    let again = store.append(request.clone()).await.unwrap();
                    assert_eq!(
                        (again.version, again.first_position, again.last_position),
                        (first.version, first.first_position, first.last_position)
                    );
                }
            }
        }
    }
    let all = store.read_all(1, 10_000).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=head).collect::<Vec<_>>(),
        "global positions are gap-free"
    );
    for (stream, version) in versions {
        let events = store
            .read_stream(
                &StreamId::new("Pot", format!("s{stream}")),
                1,
                u64::MAX,
                10_000,
            )
            .await
            .unwrap();
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(
            sequences,
            (1..=version).collect::<Vec<_>>(),
            "stream sequences are gap-free"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_appends_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(check(Arc::new(MemoryStore::new()), ops));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_appends_agrees_with_the_model_on_sqlite(ops in proptest::collection::vec(op(), 1..25)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let backend = crate::support::sqlite().await;
            check(backend.store.clone(), ops).await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// PostgreSQL answers most appends in one statement and falls back to full planning on a
    /// conflict or a stored id: both paths must agree with the model.
    #[test]
    fn any_sequence_of_appends_agrees_with_the_model_on_postgres(ops in proptest::collection::vec(op(), 1..25)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let backend = crate::support::postgres().await;
            check(backend.store.clone(), ops).await;
        });
    }
}
