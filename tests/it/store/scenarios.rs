//! The scenarios of the conformance suite, each written once against `dyn EventStore`.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::StreamExt;
use nursery::domain::Aggregate;
use nursery::store::{
    AppendRequest, Appended, Codec, EventStore, EventStoreExt, ExpectedVersion, LoadStart,
    Metadata, NewEvent, PayloadFormat, Repository, Snapshot, SnapshotPolicy, StoreError, StreamId,
    stream_all, stream_events,
};
use uuid::Uuid;

use crate::fixtures::{Planted, Pot, PotEvent, Pruned, Watered, upcasters};

pub type Store = Arc<dyn EventStore>;

/// The version and positions an append answered.
fn spans(appended: &Appended) -> (u64, Option<u64>, Option<u64>) {
    (
        appended.version,
        appended.first_position,
        appended.last_position,
    )
}

fn pot(id: &str) -> StreamId {
    StreamId::new("Pot", id)
}

fn codec() -> Codec {
    Codec::new(PayloadFormat::MessagePack).with_upcasters(upcasters())
}

fn pruned(leaves: u32) -> NewEvent {
    codec()
        .encode_event(&PotEvent::from(Pruned { leaves }), Metadata::default())
        .unwrap()
}

fn request(stream: &StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream: stream.clone(),
        expected,
        events,
    }
}

/// The first append of pot `id`: one event at version 0.
pub fn first_append(id: &str) -> AppendRequest {
    request(&pot(id), ExpectedVersion::Exact(0), vec![pruned(0)])
}

async fn append_n(store: &Store, stream: &StreamId, expected: u64, n: u32) -> Appended {
    let events = (0..n).map(pruned).collect();
    store
        .append(request(stream, ExpectedVersion::Exact(expected), events))
        .await
        .unwrap()
}

pub async fn empty_store_has_head_zero(store: Store) {
    assert_eq!(store.head().await.unwrap(), 0);
    assert!(store.read_all(1, 10).await.unwrap().is_empty());
    assert_eq!(store.stream_version(&pot("nothing")).await.unwrap(), 0);
    store.ping().await.unwrap();
}

pub async fn round_trip_keeps_every_field(store: Store) {
    let stream = pot("p-1");
    let metadata = Metadata {
        command_id: Some(Uuid::new_v4()),
        correlation_id: Some(Uuid::new_v4()),
        causation_id: Some(Uuid::new_v4()),
        customer_id: Some("alice".into()),
        extra: [("origin".to_string(), "test ünïcode ✓".to_string())].into(),
    };
    let events: Vec<PotEvent> = vec![
        Planted {
            species: "Monstera deliciosa".into(),
        }
        .into(),
        Watered {
            millilitres: 250,
            source: "rain".into(),
        }
        .into(),
        Pruned { leaves: 3 }.into(),
    ];
    let encoded: Vec<NewEvent> = events
        .iter()
        .map(|e| codec().encode_event(e, metadata.clone()).unwrap())
        .collect();
    let before = chrono::Utc::now();
    let appended = store
        .append(request(&stream, ExpectedVersion::Exact(0), encoded.clone()))
        .await
        .unwrap();
    assert_eq!(spans(&appended), (3, Some(1), Some(3)));

    let read = store.read_stream(&stream, 1, u64::MAX, 100).await.unwrap();
    assert_eq!(read.len(), 3);
    for (i, (recorded, written)) in read.iter().zip(&encoded).enumerate() {
        assert_eq!(recorded.stream, stream);
        assert_eq!(recorded.sequence, i as u64 + 1);
        assert_eq!(recorded.position, i as u64 + 1);
        assert_eq!(recorded.event_id, written.event_id);
        assert_eq!(recorded.event_type, written.event_type);
        assert_eq!(recorded.revision, written.revision);
        assert_eq!(recorded.format, written.format);
        assert_eq!(recorded.payload, written.payload);
        assert_eq!(recorded.metadata, metadata);
        assert_eq!(recorded.recorded_at, appended.recorded_at);
        let skew = chrono::Duration::seconds(5);
        assert!(
            recorded.recorded_at >= before - skew
                && recorded.recorded_at <= chrono::Utc::now() + skew
        );
    }
    assert_eq!(read[1].revision, 2, "Watered is at revision 2");
    let decoded: Vec<PotEvent> = read
        .iter()
        .map(|r| codec().decode_event(r).unwrap())
        .collect();
    assert_eq!(decoded, events);
    assert_eq!(store.head().await.unwrap(), 3);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 3);
}

pub async fn replays_are_bounded_by_from_to_and_max(store: Store) {
    let stream = pot("bounded");
    append_n(&store, &stream, 0, 5).await;
    let sequences = |events: Vec<nursery::store::RecordedEvent>| -> Vec<u64> {
        events.iter().map(|e| e.sequence).collect()
    };
    assert_eq!(
        sequences(
            store
                .read_stream(&stream, 1, u64::MAX, usize::MAX)
                .await
                .unwrap()
        ),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        sequences(store.read_stream(&stream, 2, 4, 100).await.unwrap()),
        [2, 3, 4]
    );
    assert_eq!(
        sequences(store.read_stream(&stream, 2, u64::MAX, 2).await.unwrap()),
        [2, 3]
    );
    assert_eq!(
        sequences(store.read_stream(&stream, 4, 2, 100).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        sequences(store.read_stream(&stream, 6, u64::MAX, 100).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        sequences(store.read_stream(&stream, 3, 3, 0).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        sequences(
            store
                .read_stream(&pot("other"), 1, u64::MAX, 100)
                .await
                .unwrap()
        ),
        Vec::<u64>::new()
    );
}

/// A replay hands over what decoding needs, exactly as the full read has it, with the same
/// bounds; an error from the visitor stops it and is answered.
pub async fn replays_hand_over_what_decoding_needs_within_the_same_bounds(store: Store) {
    let stream = pot("replayed");
    append_n(&store, &stream, 0, 5).await;
    for (from, to, max) in [
        (1, u64::MAX, usize::MAX),
        (2, 4, 100),
        (2, u64::MAX, 2),
        (4, 2, 100),
        (6, u64::MAX, 100),
        (3, 3, 0),
    ] {
        let read = store.read_stream(&stream, from, to, max).await.unwrap();
        let mut replayed = Vec::new();
        let count = store
            .replay_stream(&stream, from, to, max, &mut |event| {
                replayed.push((
                    event.sequence,
                    event.event_type.to_owned(),
                    event.revision,
                    event.format,
                    event.payload.to_vec(),
                ));
                Ok(())
            })
            .await
            .unwrap();
        let expected: Vec<_> = read
            .iter()
            .map(|e| {
                (
                    e.sequence,
                    e.event_type.clone(),
                    e.revision,
                    e.format,
                    e.payload.clone(),
                )
            })
            .collect();
        assert_eq!(count, read.len(), "from {from} to {to} max {max}");
        assert_eq!(replayed, expected, "from {from} to {to} max {max}");
    }
    let mut seen = 0;
    let stopped = store
        .replay_stream(&stream, 1, u64::MAX, 100, &mut |event| {
            seen += 1;
            if event.sequence == 2 {
                return Err(StoreError::InvalidInput("stop at 2".into()));
            }
            Ok(())
        })
        .await;
    assert!(
        matches!(&stopped, Err(StoreError::InvalidInput(reason)) if reason == "stop at 2"),
        "{stopped:?}"
    );
    assert_eq!(seen, 2);
    let mut none = 0;
    let count = store
        .replay_stream(&pot("nothing"), 1, u64::MAX, 100, &mut |_| {
            none += 1;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!((count, none), (0, 0));
}

/// A replay of large events, and of types that JSON has to escape, hands each over exactly and
/// in order, however the store reads them (SQLite's replay pages leave large payloads out and
/// read them one by one).
pub async fn replays_hand_over_large_events_and_odd_types_exactly(store: Store) {
    let stream = pot("large");
    // Large and small in turn, then around SQLite's inline limit of 4 KiB, and empty.
    let sizes = [
        1_048_576u32,
        100,
        1_048_576,
        100,
        1_048_576,
        100,
        4_096,
        4_097,
        0,
    ];
    let events: Vec<NewEvent> = (0u8..)
        .zip(sizes)
        .map(|(n, size)| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: format!("Odd \"type\" \\ {n} ü\n\t\u{1}"),
            revision: 1,
            format: PayloadFormat::MessagePack,
            payload: (0..size).map(|i| (i % 251) as u8 ^ n).collect(),
            // Some with metadata larger than SQLite's inline limit too.
            metadata: Metadata {
                command_id: Some(Uuid::now_v7()),
                extra: [(
                    "note".to_owned(),
                    "x".repeat(if n % 3 == 0 { 10_000 } else { 10 }),
                )]
                .into(),
                ..Metadata::default()
            },
        })
        .collect();
    store
        .append(request(&stream, ExpectedVersion::Exact(0), events.clone()))
        .await
        .unwrap();
    // The full reads, of the stream and of the global order, carry the same bytes.
    let read = store
        .read_stream(&stream, 1, u64::MAX, usize::MAX)
        .await
        .unwrap();
    let global = store.read_all(read[0].position, usize::MAX).await.unwrap();
    assert_eq!((read.len(), global.len()), (events.len(), events.len()));
    for (k, expected) in events.iter().enumerate() {
        for (what, event) in [("stream", &read[k]), ("global", &global[k])] {
            assert_eq!(
                (event.sequence, &event.event_type, event.event_id),
                (k as u64 + 1, &expected.event_type, expected.event_id),
                "{what} read"
            );
            assert_eq!(
                event.metadata,
                expected.metadata,
                "{what} metadata of {}",
                k + 1
            );
            assert_eq!(
                (event.revision, event.format, event.position),
                (1, PayloadFormat::MessagePack, read[0].position + k as u64),
                "{what} read"
            );
            assert!(
                event.payload == expected.payload,
                "{what} payload of {}",
                k + 1
            );
        }
    }
    for max in [usize::MAX, 8, 5, 4, 1] {
        let mut seen = Vec::new();
        let count = store
            .replay_stream(&stream, 1, u64::MAX, max, &mut |event| {
                let expected = &events[seen.len()];
                assert_eq!(event.event_type, expected.event_type);
                assert!(
                    event.payload == expected.payload.as_slice(),
                    "payload of {}",
                    event.sequence
                );
                seen.push(event.sequence);
                Ok(())
            })
            .await
            .unwrap();
        let all: Vec<u64> = (1..=9u64).take(max).collect();
        assert_eq!((count, seen), (all.len(), all), "max {max}");
    }
    let mut from_five = Vec::new();
    store
        .replay_stream(&stream, 5, u64::MAX, usize::MAX, &mut |event| {
            from_five.push(event.sequence);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(from_five, [5, 6, 7, 8, 9]);
}

/// A replay over more than a page keeps its bounds: a `max` that ends inside the second page,
/// a range that starts inside the first and ends inside the third, and a stream of exactly two
/// pages.
pub async fn replays_keep_their_bounds_across_pages(store: Store) {
    let replay = |stream: StreamId, from: u64, to: u64, max: usize| {
        let store = Arc::clone(&store);
        async move {
            let mut seen = Vec::new();
            let count = store
                .replay_stream(&stream, from, to, max, &mut |event| {
                    seen.push(event.sequence);
                    Ok(())
                })
                .await
                .unwrap();
            assert_eq!(count, seen.len());
            seen
        }
    };
    let long = pot("two and a half pages");
    append_n(&store, &long, 0, 2_500).await;
    let exact = pot("two pages");
    append_n(&store, &exact, 0, 2_000).await;
    let span = |from: u64, to: u64| (from..=to).collect::<Vec<u64>>();
    assert_eq!(
        replay(long.clone(), 1, u64::MAX, 1_500).await,
        span(1, 1_500)
    );
    assert_eq!(
        replay(long.clone(), 999, 2_101, usize::MAX).await,
        span(999, 2_101)
    );
    assert_eq!(
        replay(long.clone(), 1, u64::MAX, usize::MAX).await,
        span(1, 2_500)
    );
    assert_eq!(
        replay(long.clone(), 1_001, u64::MAX, 1_000).await,
        span(1_001, 2_000)
    );
    assert_eq!(
        replay(exact.clone(), 1, u64::MAX, usize::MAX).await,
        span(1, 2_000)
    );
    assert_eq!(
        replay(exact.clone(), 2_001, u64::MAX, usize::MAX).await,
        Vec::<u64>::new()
    );
    // The full reads keep the same bounds across their pages, and a large payload on a later
    // page, behind another stream's in the global order, comes back whole.
    let large = NewEvent {
        payload: vec![7; 5_000],
        ..pruned(0)
    };
    store
        .append(request(
            &exact,
            ExpectedVersion::Exact(2_000),
            vec![large.clone()],
        ))
        .await
        .unwrap();
    store
        .append(request(
            &long,
            ExpectedVersion::Exact(2_500),
            vec![pruned(1)],
        ))
        .await
        .unwrap();
    let sequences = |events: Vec<nursery::store::RecordedEvent>| -> Vec<u64> {
        events.iter().map(|e| e.sequence).collect()
    };
    assert_eq!(
        sequences(store.read_stream(&long, 1, u64::MAX, 1_500).await.unwrap()),
        span(1, 1_500)
    );
    assert_eq!(
        sequences(
            store
                .read_stream(&long, 999, 2_101, usize::MAX)
                .await
                .unwrap()
        ),
        span(999, 2_101)
    );
    assert_eq!(
        sequences(
            store
                .read_stream(&long, 1, 2_000, usize::MAX)
                .await
                .unwrap()
        ),
        span(1, 2_000)
    );
    let global = store.read_all(1, usize::MAX).await.unwrap();
    let positions: Vec<u64> = global.iter().map(|e| e.position).collect();
    assert_eq!(positions, span(1, 4_502));
    assert_eq!(
        global[4_500].payload, large.payload,
        "the large one, 4,501st"
    );
    assert_eq!(
        (global[4_501].stream.clone(), global[4_501].sequence),
        (long.clone(), 2_501)
    );
    let middle = store.read_all(999, 1_500).await.unwrap();
    assert_eq!(
        middle.iter().map(|e| e.position).collect::<Vec<_>>(),
        span(999, 2_498)
    );
    // A fold that fails inside a page (with the next one asked for already) stops the replay,
    // and the store reads on as before.
    for _ in 0..8 {
        let stopped = store
            .replay_stream(&long, 1, u64::MAX, usize::MAX, &mut |event| {
                if event.sequence == 1_500 {
                    return Err(StoreError::InvalidInput("stop".into()));
                }
                Ok(())
            })
            .await;
        assert!(
            matches!(stopped, Err(StoreError::InvalidInput(_))),
            "{stopped:?}"
        );
    }
    assert_eq!(replay(long, 1, u64::MAX, usize::MAX).await, span(1, 2_501));
}

/// The ids of the commands behind a stream's latest events: each once, newest first, within
/// the range, at most as many as asked, also when they lie more than a page back; a load
/// remembers them oldest first.
pub async fn recent_command_ids_are_the_newest_distinct_in_range(store: Store) {
    let stream = pot("commanded");
    let commands: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let repeated = Uuid::now_v7();
    let with = |command: Option<Uuid>, leaves: u32| {
        codec()
            .encode_event(
                &PotEvent::from(Pruned { leaves }),
                Metadata {
                    command_id: command,
                    ..Metadata::default()
                },
            )
            .unwrap()
    };
    // 1-10: one event per command; 11-15: no command; 16-155: one command's 140 events.
    let mut events: Vec<NewEvent> = (0u32..)
        .zip(&commands)
        .map(|(i, c)| with(Some(*c), i))
        .collect();
    events.extend((0..5).map(|i| with(None, i)));
    events.extend((0..140).map(|i| with(Some(repeated), i)));
    store
        .append(request(&stream, ExpectedVersion::Exact(0), events))
        .await
        .unwrap();
    let newest: Vec<Uuid> = commands.iter().rev().copied().collect();
    let recent = |from, to, max| {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        async move {
            store
                .recent_command_ids(&stream, from, to, max)
                .await
                .unwrap()
        }
    };
    assert_eq!(recent(1, 155, 3).await, [repeated, newest[0], newest[1]]);
    let all: Vec<Uuid> = std::iter::once(repeated)
        .chain(newest.iter().copied())
        .collect();
    assert_eq!(recent(1, 155, 16).await, all);
    assert_eq!(recent(1, u64::MAX, 16).await, all);
    assert_eq!(recent(3, 155, 16).await, all[..9]);
    assert_eq!(recent(1, 5, 16).await, newest[5..]);
    assert_eq!(recent(11, 15, 16).await, Vec::<Uuid>::new());
    assert_eq!(recent(1, 155, 0).await, Vec::<Uuid>::new());
    assert_eq!(recent(9, 2, 16).await, Vec::<Uuid>::new());
    assert_eq!(
        store
            .recent_command_ids(&pot("nothing"), 1, u64::MAX, 16)
            .await
            .unwrap(),
        Vec::<Uuid>::new()
    );
    let repository = Repository::<Pot>::new(Arc::clone(&store), codec(), SnapshotPolicy::NEVER);
    let loaded = repository.load("commanded").await.unwrap();
    assert_eq!(loaded.version, 155);
    let oldest_first: Vec<Uuid> = all.iter().rev().copied().collect();
    assert_eq!(loaded.recent_commands, oldest_first);
    // A load looks at the latest 256 events only: of 300 more, with a command at 199 and
    // another at 200, it sees the one at 200 (455 - 255) and not the one at 199.
    let (outside, inside) = (Uuid::now_v7(), Uuid::now_v7());
    let more = (156..=455u32)
        .map(|sequence| match sequence {
            199 => with(Some(outside), sequence),
            200 => with(Some(inside), sequence),
            _ => with(None, sequence),
        })
        .collect();
    store
        .append(request(&stream, ExpectedVersion::Exact(155), more))
        .await
        .unwrap();
    let loaded = repository.load("commanded").await.unwrap();
    assert_eq!(
        (loaded.version, &loaded.recent_commands),
        (455, &vec![inside])
    );
    assert_eq!(
        recent(1, 455, 2).await,
        [inside, outside],
        "the store itself reads as far back as asked"
    );
    // From a snapshot at the head, the ids still come from the events it covers.
    repository
        .snapshot("commanded", &loaded.state, 455)
        .await
        .unwrap();
    let from_snapshot = repository.load("commanded").await.unwrap();
    assert_eq!(
        (from_snapshot.replayed, from_snapshot.recent_commands),
        (0, vec![inside])
    );
}

pub async fn a_wrong_expected_version_conflicts_and_writes_nothing(store: Store) {
    let stream = pot("conflict");
    append_n(&store, &stream, 0, 2).await;
    // Two events each: the second must not go in where the first is refused.
    for expected in [0, 1, 3, 100] {
        let error = store
            .append(request(
                &stream,
                ExpectedVersion::Exact(expected),
                vec![pruned(9), pruned(10)],
            ))
            .await
            .unwrap_err();
        match error {
            StoreError::ConcurrencyConflict {
                stream: s,
                expected: e,
                actual,
            } => {
                assert_eq!(s, stream);
                assert_eq!(e, ExpectedVersion::Exact(expected));
                assert_eq!(actual, 2);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);
    assert_eq!(store.head().await.unwrap(), 2);
    let appended = append_n(&store, &stream, 2, 1).await;
    assert_eq!(appended.version, 3);
    let any = store
        .append(request(&stream, ExpectedVersion::Any, vec![pruned(1)]))
        .await
        .unwrap();
    assert_eq!(any.version, 4);
}

/// A request whose stream is behind the version it expects fails alone, and the batch's other
/// requests land as if it had not been there: no position is lost or taken twice. (On
/// PostgreSQL the one-statement append has already inserted the other request's row when it
/// finds the stream behind; the whole statement rolls back and the batch is planned again.)
pub async fn a_request_behind_its_stream_fails_alone_in_its_batch(store: Store) {
    let behind = pot("behind");
    append_n(&store, &behind, 0, 2).await;
    let head = store.head().await.unwrap();
    let fresh = pot("beside-the-behind");
    let results = store
        .append_batch(&[
            request(&fresh, ExpectedVersion::Exact(0), vec![pruned(1)]),
            request(
                &behind,
                ExpectedVersion::Exact(5),
                vec![pruned(2), pruned(3)],
            ),
        ])
        .await
        .unwrap();
    let appended = results[0].as_ref().unwrap();
    assert_eq!(
        (appended.version, appended.first_position),
        (1, Some(head + 1))
    );
    match &results[1] {
        Err(StoreError::ConcurrencyConflict {
            expected, actual, ..
        }) => assert_eq!((*expected, *actual), (ExpectedVersion::Exact(5), 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), head + 1);
    assert_eq!(store.stream_version(&behind).await.unwrap(), 2);
    let all = store.read_all(head + 1, 10).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].stream, fresh);
}

pub async fn sixty_four_racers_on_one_stream_exactly_one_wins(store: Store) {
    let stream = pot("contended");
    append_n(&store, &stream, 0, 1).await;
    let racers: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            let stream = stream.clone();
            tokio::spawn(async move {
                store
                    .append(request(&stream, ExpectedVersion::Exact(1), vec![pruned(i)]))
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(appended) => {
                wins += 1;
                assert_eq!(appended.version, 2);
            }
            Err(StoreError::ConcurrencyConflict { actual, .. }) => assert_eq!(actual, 2),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);
    assert_eq!(store.head().await.unwrap(), 2);
}

pub async fn sixty_four_racers_on_sixty_four_streams_all_win(store: Store) {
    let racers: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .append(request(
                        &pot(&format!("s-{i}")),
                        ExpectedVersion::Exact(0),
                        vec![pruned(i), pruned(i)],
                    ))
                    .await
            })
        })
        .collect();
    let mut positions = HashSet::new();
    for racer in racers {
        let appended = racer.await.unwrap().unwrap();
        assert_eq!(appended.version, 2);
        let (first, last) = (
            appended.first_position.unwrap(),
            appended.last_position.unwrap(),
        );
        assert_eq!(last, first + 1, "one append's positions are contiguous");
        assert!(positions.insert(first) && positions.insert(last));
    }
    assert_eq!(positions, (1..=128).collect::<HashSet<u64>>());
    assert_eq!(store.head().await.unwrap(), 128);
}

pub async fn twenty_concurrent_appends_that_succeed_are_all_stored(store: Store) {
    let stream = pot("twenty");
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            let stream = stream.clone();
            tokio::spawn(async move {
                let event = pruned(i);
                let id = event.event_id;
                (
                    id,
                    store
                        .append(request(&stream, ExpectedVersion::Any, vec![event]))
                        .await,
                )
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    let mut versions = HashSet::new();
    for writer in writers {
        let (id, result) = writer.await.unwrap();
        let appended = result.unwrap();
        assert!(
            versions.insert(appended.version),
            "two appends got the same version"
        );
        acknowledged.push(id);
    }
    let stored: HashSet<Uuid> = store
        .read_stream(&stream, 1, u64::MAX, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(stored.len(), 20);
    for id in acknowledged {
        assert!(stored.contains(&id), "acknowledged event {id} was lost");
    }
    assert_eq!(versions, (1..=20).collect::<HashSet<u64>>());
}

pub async fn an_empty_append_neither_creates_a_stream_nor_lowers_a_version(store: Store) {
    let fresh = pot("empty");
    let appended = store
        .append(request(&fresh, ExpectedVersion::Exact(0), vec![]))
        .await
        .unwrap();
    assert_eq!(spans(&appended), (0, None, None));
    assert_eq!(store.stream_version(&fresh).await.unwrap(), 0);
    assert_eq!(store.head().await.unwrap(), 0);

    let existing = pot("three");
    append_n(&store, &existing, 0, 3).await;
    let appended = store
        .append(request(&existing, ExpectedVersion::Any, vec![]))
        .await
        .unwrap();
    assert_eq!(appended.version, 3);
    let stale = store
        .append(request(&existing, ExpectedVersion::Exact(1), vec![]))
        .await;
    assert!(matches!(
        stale,
        Err(StoreError::ConcurrencyConflict { actual: 3, .. })
    ));
    assert_eq!(store.stream_version(&existing).await.unwrap(), 3);
    assert_eq!(store.head().await.unwrap(), 3);
    // An empty batch is answered with no results and writes nothing.
    assert!(store.append_batch(&[]).await.unwrap().is_empty());
    assert_eq!(store.head().await.unwrap(), 3);
}

pub async fn a_bad_second_event_rejects_the_whole_append(store: Store) {
    let other = pot("other");
    let taken = pruned(1);
    store
        .append(request(
            &other,
            ExpectedVersion::Exact(0),
            vec![taken.clone()],
        ))
        .await
        .unwrap();

    let stream = pot("atomic");
    let error = store
        .append(request(
            &stream,
            ExpectedVersion::Exact(0),
            vec![pruned(2), taken.clone(), pruned(3)],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::DuplicateEvent { event_id, .. } if event_id == taken.event_id),
        "{error:?}"
    );

    let mut nameless = pruned(4);
    nameless.event_type.clear();
    let error = store
        .append(request(
            &stream,
            ExpectedVersion::Exact(0),
            vec![pruned(5), nameless],
        ))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::InvalidInput(_)), "{error:?}");

    let twice = pruned(6);
    let error = store
        .append(request(
            &stream,
            ExpectedVersion::Exact(0),
            vec![twice.clone(), twice],
        ))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::InvalidInput(_)), "{error:?}");

    assert_eq!(store.stream_version(&stream).await.unwrap(), 0);
    assert_eq!(store.head().await.unwrap(), 1);
}

pub async fn an_identical_retry_is_answered_as_the_first_and_stores_nothing(store: Store) {
    let stream = pot("retry");
    append_n(&store, &stream, 0, 2).await;
    let events = vec![pruned(1), pruned(2), pruned(3)];
    let first = store
        .append(request(&stream, ExpectedVersion::Exact(2), events.clone()))
        .await
        .unwrap();
    assert_eq!(spans(&first), (5, Some(3), Some(5)));
    append_n(&store, &stream, 5, 1).await;

    let retry = store
        .append(request(&stream, ExpectedVersion::Exact(2), events.clone()))
        .await
        .unwrap();
    assert_eq!(retry, first);
    let any = store
        .append(request(&stream, ExpectedVersion::Any, events))
        .await
        .unwrap();
    assert_eq!(any, first);
    assert_eq!(store.head().await.unwrap(), 6);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 6);
}

pub async fn partial_overlaps_and_foreign_ids_are_duplicates(store: Store) {
    let stream = pot("overlap");
    let stored = vec![pruned(1), pruned(2)];
    store
        .append(request(&stream, ExpectedVersion::Exact(0), stored.clone()))
        .await
        .unwrap();

    // The first stored id plus a new one: a partial overlap.
    let partial = store
        .append(request(
            &stream,
            ExpectedVersion::Exact(0),
            vec![stored[0].clone(), pruned(3)],
        ))
        .await;
    assert!(
        matches!(partial, Err(StoreError::DuplicateEvent { .. })),
        "{partial:?}"
    );
    // The same ids, in another order.
    let reordered = store
        .append(request(
            &stream,
            ExpectedVersion::Exact(0),
            vec![stored[1].clone(), stored[0].clone()],
        ))
        .await;
    assert!(
        matches!(reordered, Err(StoreError::DuplicateEvent { .. })),
        "{reordered:?}"
    );
    // The same ids, at another expected version.
    let shifted = store
        .append(request(&stream, ExpectedVersion::Exact(1), stored.clone()))
        .await;
    assert!(
        matches!(shifted, Err(StoreError::DuplicateEvent { .. })),
        "{shifted:?}"
    );
    // The same ids, in another stream.
    let foreign = store
        .append(request(
            &pot("elsewhere"),
            ExpectedVersion::Exact(0),
            stored,
        ))
        .await;
    assert!(
        matches!(foreign, Err(StoreError::DuplicateEvent { .. })),
        "{foreign:?}"
    );

    assert_eq!(store.head().await.unwrap(), 2);
    assert_eq!(store.stream_version(&pot("elsewhere")).await.unwrap(), 0);
}

pub async fn a_batch_fails_only_its_conflicting_requests(store: Store) {
    let (a, b, c) = (pot("a"), pot("b"), pot("c"));
    append_n(&store, &b, 0, 1).await;
    let batch = vec![
        request(&a, ExpectedVersion::Exact(0), vec![pruned(1)]),
        request(&b, ExpectedVersion::Exact(0), vec![pruned(2)]),
        request(&c, ExpectedVersion::Exact(0), vec![pruned(3), pruned(4)]),
        request(&a, ExpectedVersion::Exact(1), vec![pruned(5)]),
        request(&a, ExpectedVersion::Exact(1), vec![pruned(6)]),
    ];
    let results = store.append_batch(&batch).await.unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(spans(results[0].as_ref().unwrap()), (1, Some(2), Some(2)));
    assert!(matches!(
        results[1],
        Err(StoreError::ConcurrencyConflict { actual: 1, .. })
    ));
    assert_eq!(spans(results[2].as_ref().unwrap()), (2, Some(3), Some(4)));
    assert_eq!(spans(results[3].as_ref().unwrap()), (2, Some(5), Some(5)));
    assert!(matches!(
        results[4],
        Err(StoreError::ConcurrencyConflict { actual: 2, .. })
    ));
    assert_eq!(store.head().await.unwrap(), 5);
    assert_eq!(store.stream_version(&b).await.unwrap(), 1);
}

pub async fn global_reads_are_paged_in_position_order(store: Store) {
    let streams = [pot("x"), pot("y"), pot("z")];
    let mut written = Vec::new();
    for round in 0..9u64 {
        let stream = &streams[(round % 3) as usize];
        let events = vec![pruned(1), pruned(2), pruned(3)];
        written.extend(events.iter().map(|e| e.event_id));
        store
            .append(request(
                stream,
                ExpectedVersion::Exact(round / 3 * 3),
                events,
            ))
            .await
            .unwrap();
    }
    assert_eq!(store.head().await.unwrap(), 27);
    let mut seen = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        for event in &page {
            assert_eq!(event.position, seen.len() as u64 + 1);
            seen.push(event.event_id);
        }
        from = page.last().unwrap().position + 1;
    }
    assert_eq!(seen, written);
    let mid: Vec<u64> = store
        .read_all(20, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(mid, (20..=27).collect::<Vec<_>>());

    let streamed: Vec<u64> = stream_all(store.as_ref(), 5)
        .map(|e| e.unwrap().position)
        .collect()
        .await;
    assert_eq!(streamed, (5..=27).collect::<Vec<_>>());
}

pub async fn snapshots_round_trip_and_only_the_newest_are_kept(store: Store) {
    let stream = pot("snap");
    assert!(store.latest_snapshot(&stream).await.unwrap().is_none());
    let at = |sequence: u64| Snapshot {
        stream: stream.clone(),
        sequence,
        revision: 1,
        format: PayloadFormat::MessagePack,
        payload: vec![sequence as u8; 64],
        recorded_at: chrono::DateTime::from_timestamp_micros(
            1_700_000_000_000_000 + sequence as i64,
        )
        .unwrap(),
    };
    for sequence in [5, 10, 15] {
        store.save_snapshot(&at(sequence), 2).await.unwrap();
    }
    assert_eq!(store.latest_snapshot(&stream).await.unwrap(), Some(at(15)));
    assert_eq!(store.snapshot_count(&stream).await.unwrap(), 2);
    store.save_snapshot(&at(20), 1).await.unwrap();
    assert_eq!(store.snapshot_count(&stream).await.unwrap(), 1);
    assert_eq!(store.latest_snapshot(&stream).await.unwrap(), Some(at(20)));
    // Saving at the same sequence again replaces it.
    let mut again = at(20);
    again.payload = vec![7; 3];
    store.save_snapshot(&again, 1).await.unwrap();
    assert_eq!(store.latest_snapshot(&stream).await.unwrap(), Some(again));
    assert!(
        store
            .latest_snapshot(&pot("other"))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn the_load_start_is_the_newest_snapshot_and_the_stream_version(store: Store) {
    let stream = pot("start");
    let start =
        |store: Store, stream: StreamId| async move { store.load_start(&stream).await.unwrap() };
    let nothing = LoadStart {
        snapshot: None,
        version: Some(0),
    };
    assert_eq!(start(Arc::clone(&store), stream.clone()).await, nothing);
    append_n(&store, &stream, 0, 3).await;
    assert_eq!(
        start(Arc::clone(&store), stream.clone()).await,
        LoadStart {
            snapshot: None,
            version: Some(3)
        }
    );
    let at = |sequence: u64| Snapshot {
        stream: stream.clone(),
        sequence,
        revision: 4,
        format: PayloadFormat::Json,
        payload: vec![sequence as u8; 5_000],
        recorded_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap(),
    };
    store.save_snapshot(&at(1), 2).await.unwrap();
    store.save_snapshot(&at(2), 2).await.unwrap();
    append_n(&store, &stream, 3, 2).await;
    assert_eq!(
        start(Arc::clone(&store), stream.clone()).await,
        LoadStart {
            snapshot: Some(at(2)),
            version: Some(5)
        },
        "the newest snapshot, every field, and the version past it"
    );
    store.save_snapshot(&at(5), 2).await.unwrap();
    assert_eq!(
        start(Arc::clone(&store), stream.clone()).await,
        LoadStart {
            snapshot: Some(at(5)),
            version: Some(5)
        },
        "a snapshot at the head"
    );
    // Another stream's events and snapshots are not its own; a prefix of the id is another id.
    assert_eq!(start(Arc::clone(&store), pot("sta")).await, nothing);
    assert_eq!(
        start(Arc::clone(&store), StreamId::new("Pots", "start")).await,
        nothing
    );
}

pub async fn old_revisions_are_upcast_on_read(store: Store) {
    let stream = pot("old");
    #[derive(serde::Serialize)]
    struct WateredV1 {
        ml: u32,
    }
    for format in [PayloadFormat::MessagePack, PayloadFormat::Json] {
        let old = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "Watered".into(),
            revision: 1,
            format,
            payload: format.encode(&WateredV1 { ml: 300 }).unwrap(),
            metadata: Metadata::default(),
        };
        store
            .append(request(&stream, ExpectedVersion::Any, vec![old]))
            .await
            .unwrap();
    }
    for recorded in store.read_stream(&stream, 1, u64::MAX, 10).await.unwrap() {
        let event: PotEvent = codec().decode_event(&recorded).unwrap();
        assert_eq!(
            event,
            PotEvent::from(Watered {
                millilitres: 300,
                source: "tap".into()
            })
        );
        let without = Codec::new(PayloadFormat::MessagePack).decode_event::<PotEvent>(&recorded);
        assert!(
            matches!(&without, Err(StoreError::UnknownEventType { revision: 1, event_type, .. }) if event_type == "Watered"),
            "{without:?}"
        );
    }
}

pub async fn unknown_types_and_corrupt_payloads_are_typed_errors(store: Store) {
    let stream = pot("bad");
    let raw = |event_type: &str, revision: u32, payload: Vec<u8>| NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.into(),
        revision,
        format: PayloadFormat::MessagePack,
        payload,
        metadata: Metadata::default(),
    };
    let events = vec![
        raw("Repotted", 1, vec![0x80]),
        raw("Pruned", 1, vec![0xc1, 0xff, 0x00]),
        raw(
            "Pruned",
            1,
            PayloadFormat::MessagePack
                .encode(&serde_json::json!({"leaves": "many"}))
                .unwrap(),
        ),
        raw("Pruned", 9, vec![0x80]),
    ];
    store
        .append(request(&stream, ExpectedVersion::Exact(0), events))
        .await
        .unwrap();
    let read = store.read_stream(&stream, 1, u64::MAX, 10).await.unwrap();
    let results: Vec<_> = read
        .iter()
        .map(|r| codec().decode_event::<PotEvent>(r))
        .collect();
    assert!(
        matches!(&results[0], Err(StoreError::UnknownEventType { sequence: 1, stream: s, .. }) if *s == stream)
    );
    assert!(
        matches!(&results[1], Err(StoreError::Corrupt { sequence: 2, stream: s, .. }) if *s == stream)
    );
    assert!(matches!(
        &results[2],
        Err(StoreError::Corrupt { sequence: 3, .. })
    ));
    assert!(matches!(
        &results[3],
        Err(StoreError::UnknownEventType {
            sequence: 4,
            revision: 9,
            ..
        })
    ));
    let message = results[1].as_ref().unwrap_err().to_string();
    assert!(
        message.contains("Pot/bad") && message.contains("sequence 2"),
        "{message}"
    );

    let repository = Repository::<Pot>::new(Arc::clone(&store), codec(), SnapshotPolicy::NEVER);
    assert!(matches!(
        repository.load("bad").await,
        Err(StoreError::UnknownEventType { .. })
    ));
}

pub async fn json_payloads_round_trip(store: Store) {
    let json = Codec::new(PayloadFormat::Json).with_upcasters(upcasters());
    let stream = pot("json");
    let event = PotEvent::from(Watered {
        millilitres: 5,
        source: "dew".into(),
    });
    let encoded = json.encode_event(&event, Metadata::default()).unwrap();
    assert_eq!(encoded.format, PayloadFormat::Json);
    assert_eq!(
        std::str::from_utf8(&encoded.payload).unwrap(),
        r#"{"millilitres":5,"source":"dew"}"#
    );
    store
        .append(request(&stream, ExpectedVersion::Exact(0), vec![encoded]))
        .await
        .unwrap();
    let read = store.read_stream(&stream, 1, 1, 1).await.unwrap();
    // A MessagePack codec reads JSON rows too: the format is stored per row.
    assert_eq!(codec().decode_event::<PotEvent>(&read[0]).unwrap(), event);
}

pub async fn a_one_mib_event_round_trips(store: Store) {
    let stream = pot("big");
    let species: String = "Nephrolepis exaltata "
        .chars()
        .cycle()
        .take(1 << 20)
        .collect();
    let event = PotEvent::from(Planted { species });
    let encoded = codec().encode_event(&event, Metadata::default()).unwrap();
    assert!(encoded.payload.len() > 1 << 20);
    store
        .append(request(&stream, ExpectedVersion::Exact(0), vec![encoded]))
        .await
        .unwrap();
    let read = store.read_stream(&stream, 1, 1, 1).await.unwrap();
    assert_eq!(codec().decode_event::<PotEvent>(&read[0]).unwrap(), event);
}

pub async fn a_ten_thousand_event_stream_streams_and_loads(store: Store) {
    let stream = pot("long");
    let planted = codec()
        .encode_event(
            &PotEvent::from(Planted {
                species: "fern".into(),
            }),
            Metadata::default(),
        )
        .unwrap();
    store
        .append(request(&stream, ExpectedVersion::Exact(0), vec![planted]))
        .await
        .unwrap();
    for batch in 0..10u64 {
        let events = (0..1000).map(|_| {
            codec()
                .encode_event(
                    &PotEvent::from(Watered {
                        millilitres: 1,
                        source: "can".into(),
                    }),
                    Metadata::default(),
                )
                .unwrap()
        });
        let expected = 1 + batch * 1000;
        store
            .append(request(
                &stream,
                ExpectedVersion::Exact(expected),
                events.collect(),
            ))
            .await
            .unwrap();
    }
    let mut count = 0u64;
    let mut events = stream_events(store.as_ref(), &stream, 1);
    while let Some(event) = events.next().await {
        count += 1;
        assert_eq!(event.unwrap().sequence, count);
    }
    assert_eq!(count, 10_001);
    let loaded = Repository::<Pot>::new(Arc::clone(&store), codec(), SnapshotPolicy::NEVER)
        .load("long")
        .await
        .unwrap();
    assert_eq!(loaded.version, 10_001);
    assert_eq!(loaded.state.water, 10_000);
    assert_eq!(loaded.replayed, 10_001);
}

/// Plants pot "p", then waters it `rounds` times with 5 events each, snapshotting when due;
/// answers the state and version written.
pub async fn plant_and_water(repository: &Repository<Pot>, rounds: usize) -> (Pot, u64) {
    let mut state = Pot::default();
    let plant = nursery::domain::Aggregate::decide(
        &state,
        &crate::fixtures::PotCommand::Plant {
            species: "fern".into(),
        },
    )
    .unwrap();
    let mut version = repository
        .save("p", 0, &plant, &Metadata::default())
        .await
        .unwrap()
        .version;
    state.apply_all(&plant);
    for _ in 0..rounds {
        let events: Vec<PotEvent> = (0..5)
            .map(|_| {
                Watered {
                    millilitres: 2,
                    source: "can".into(),
                }
                .into()
            })
            .collect();
        let appended = repository
            .save("p", version, &events, &Metadata::default())
            .await
            .unwrap();
        state.apply_all(&events);
        repository
            .snapshot_if_due("p", &state, version, appended.version)
            .await;
        version = appended.version;
    }
    (state, version)
}

pub async fn repository_loads_from_the_latest_snapshot(store: Store) {
    let policy = SnapshotPolicy {
        every: 100,
        keep: 2,
    };
    let repository = Repository::<Pot>::new(Arc::clone(&store), codec(), policy);
    let fresh = repository.load("p").await.unwrap();
    assert_eq!(
        (fresh.state, fresh.version, fresh.replayed),
        (Pot::default(), 0, 0)
    );
    let (state, version) = plant_and_water(&repository, 49).await;
    assert_eq!(version, 246);
    assert_eq!(store.snapshot_count(&pot("p")).await.unwrap(), 2);
    assert_eq!(
        store
            .latest_snapshot(&pot("p"))
            .await
            .unwrap()
            .unwrap()
            .sequence,
        201
    );
    let loaded = repository.load("p").await.unwrap();
    assert_eq!(loaded.state, state);
    assert_eq!(loaded.version, 246);
    assert_eq!(
        loaded.replayed, 45,
        "only the events after the snapshot are replayed"
    );

    // A snapshot at the head: nothing to replay.
    repository.snapshot("p", &state, 246).await.unwrap();
    let at_head = repository.load("p").await.unwrap();
    assert_eq!(
        (&at_head.state, at_head.version, at_head.replayed),
        (&state, 246, 0)
    );

    // A snapshot of another revision is ignored, and the state rebuilt from the events.
    let mut stale = store.latest_snapshot(&pot("p")).await.unwrap().unwrap();
    stale.revision = 99;
    stale.sequence = 246;
    store.save_snapshot(&stale, 2).await.unwrap();
    let rebuilt = repository.load("p").await.unwrap();
    assert_eq!(rebuilt.state, state);
    assert_eq!(rebuilt.replayed, 246);
}

pub async fn a_tracking_reader_never_skips_under_concurrent_writers(store: Store) {
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..25u64 {
                    let stream = pot(&format!("w-{w}"));
                    store
                        .append(request(
                            &stream,
                            ExpectedVersion::Exact(i * 2),
                            vec![pruned(1), pruned(2)],
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // A tracking reader: reads from its checkpoint while the writers run; it must see every
    // position once, in order, with no gap.
    let mut checkpoint = 0u64;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while checkpoint < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader stuck at {checkpoint}"
        );
        let page = store.read_all(checkpoint + 1, 7).await.unwrap();
        for event in page {
            assert_eq!(
                event.position,
                checkpoint + 1,
                "the reader skipped or repeated a position"
            );
            checkpoint = event.position;
        }
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(store.head().await.unwrap(), 400);
}

/// The same guarantee for reads of more than a page, whose events include large payloads
/// (which SQLite reads apart from their page): every position once, in order, each with its
/// own payload, while writers run.
pub async fn a_tracking_reader_never_skips_across_pages_and_large_payloads(store: Store) {
    // Every seventh event large (5,000 bytes of 1), the others small (10 bytes of 0).
    let event = |k: u64| NewEvent {
        payload: if k % 7 == 0 {
            vec![1; 5_000]
        } else {
            vec![0; 10]
        },
        ..pruned(0)
    };
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let stream = pot(&format!("pages-{w}"));
                for i in 0..10u64 {
                    let events = (0..30).map(|k| event(w + i * 30 + k)).collect();
                    store
                        .append(request(&stream, ExpectedVersion::Exact(i * 30), events))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut checkpoint = 0u64;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while checkpoint < 2_400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader stuck at {checkpoint}"
        );
        for event in store.read_all(checkpoint + 1, 1_500).await.unwrap() {
            assert_eq!(
                event.position,
                checkpoint + 1,
                "the reader skipped or repeated a position"
            );
            let large = event.payload.first() == Some(&1);
            assert_eq!(
                event.payload,
                if large { vec![1; 5_000] } else { vec![0; 10] },
                "the payload of {}",
                event.position
            );
            checkpoint = event.position;
        }
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(store.head().await.unwrap(), 2_400);
}

pub async fn a_failed_request_fails_the_later_requests_of_its_stream_in_the_batch(store: Store) {
    let stream = pot("stock");
    append_n(&store, &stream, 0, 5).await;
    // Another writer moved the stream to 6; this batch's first request expected 5, its second
    // was decided after it (expecting 6): it must not be written on its own.
    append_n(&store, &stream, 5, 1).await;
    let batch = vec![
        request(&stream, ExpectedVersion::Exact(5), vec![pruned(1)]),
        request(&stream, ExpectedVersion::Exact(6), vec![pruned(2)]),
        request(&pot("other"), ExpectedVersion::Exact(0), vec![pruned(3)]),
    ];
    let results = store.append_batch(&batch).await.unwrap();
    assert!(matches!(
        results[0],
        Err(StoreError::ConcurrencyConflict { actual: 6, .. })
    ));
    assert!(
        matches!(results[1], Err(StoreError::ConcurrencyConflict { .. })),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok());
    assert_eq!(store.stream_version(&stream).await.unwrap(), 6);
}

pub async fn a_batch_of_a_thousand_streams_commits(store: Store) {
    let batch: Vec<AppendRequest> = (0..1_000)
        .map(|i| {
            request(
                &pot(&format!("many-{i}")),
                ExpectedVersion::Exact(0),
                vec![pruned(i)],
            )
        })
        .collect();
    let results = store.append_batch(&batch).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(store.head().await.unwrap(), 1_000);
}

/// An append whose caller gives up on it at any point (its future dropped, as when a task is
/// cancelled or times out) stores all of its events or none, and the store carries on: the
/// next append, a snapshot and the reads all work, and the global order has no gap; so does a
/// snapshot save cut off the same way. (A cut-off
/// append may still land after the cut, as its commit may already be on its way: so each check
/// reads the whole store in one statement, one consistent view.)
pub async fn an_append_cut_off_at_any_point_stores_all_or_nothing(store: Store) {
    for cut in 0u64..100 {
        let batch: Vec<AppendRequest> = (0..4)
            .map(|s| {
                request(
                    &pot(&format!("cut-{cut}-{s}")),
                    ExpectedVersion::Exact(0),
                    (0..3).map(pruned).collect(),
                )
            })
            .collect();
        let deadline = std::time::Duration::from_micros(cut * 20);
        let _ = tokio::time::timeout(deadline, store.append_batch(&batch)).await;
        // A snapshot save cut off the same way (it shares the SQLite writer with appends).
        let cut_snapshot = Snapshot {
            stream: pot(&format!("cut-{cut}-0")),
            sequence: 3,
            revision: 1,
            format: PayloadFormat::MessagePack,
            payload: vec![9; 64],
            recorded_at: chrono::Utc::now(),
        };
        let _ = tokio::time::timeout(deadline, store.save_snapshot(&cut_snapshot, 2)).await;
        // Whatever the cut left behind, the next append and a snapshot go through.
        let after = append_n(&store, &pot(&format!("after-{cut}")), 0, 1).await;
        assert_eq!(after.version, 1);
        store
            .save_snapshot(
                &Snapshot {
                    stream: pot(&format!("after-{cut}")),
                    sequence: 1,
                    revision: 1,
                    format: PayloadFormat::MessagePack,
                    payload: vec![1, 2, 3],
                    recorded_at: after.recorded_at,
                },
                2,
            )
            .await
            .unwrap();
        let all = store.read_all(1, 100_000).await.unwrap();
        let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
        for earlier in 0..=cut {
            let prefix = format!("cut-{earlier}-");
            let landed = all
                .iter()
                .filter(|e| e.stream.aggregate_id.starts_with(&prefix))
                .count();
            assert!(
                landed == 0 || landed == 12,
                "cut batch {earlier} landed in part: {landed} of 12 events"
            );
        }
    }
}
