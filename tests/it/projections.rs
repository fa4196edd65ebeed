//! Projections on every backend: at least once in global order with none skipped, exactly once
//! in the read model across crash points and restarts, rebuild equals live, read-your-writes,
//! dead letters that keep one aggregate's order while the others carry on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nursery::actors::Runtime;
use nursery::projections::{
    ApplyContext, Documents, ProcessorConfig, ProcessorState, Projection, ProjectionHandle,
    start_projection,
};
use nursery::store::{Codec, Metadata, RecordedEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::fixtures::{Pot, PotCommand, PotEvent};
use crate::support::ReadBackend;

/// Per pot: water and events; overall: how many events, and the last position, which the
/// handler checks moves by exactly one (a skipped or repeated event is an error).
pub struct PotSummary {
    pub poison: Arc<AtomicBool>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub events: u64,
    pub last: u64,
    pub replays: u64,
}

impl Projection for PotSummary {
    fn name(&self) -> &str {
        "pot_summary"
    }

    fn keys(&self, event: &RecordedEvent) -> Vec<String> {
        vec![
            format!("pot:{}", event.stream.aggregate_id),
            "totals".into(),
        ]
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        docs: &mut Documents,
        context: ApplyContext,
    ) -> Result<(), String> {
        let decoded: PotEvent = Codec::default()
            .decode_event(event)
            .map_err(|e| e.to_string())?;
        let mut totals: Totals = docs.get_as("totals")?.unwrap_or_default();
        let key = format!("pot:{}", event.stream.aggregate_id);
        let mut pot = docs
            .get(&key)
            .cloned()
            .unwrap_or_else(|| json!({"water": 0, "events": 0}));
        match decoded {
            PotEvent::Pruned(p) if p.leaves == 13 && self.poison.load(Ordering::SeqCst) => {
                return Err("thirteen leaves are unlucky".into());
            }
            PotEvent::Watered(w) => {
                pot["water"] = json!(pot["water"].as_u64().unwrap_or(0) + u64::from(w.millilitres))
            }
            _ => {}
        }
        pot["events"] = json!(pot["events"].as_u64().unwrap_or(0) + 1);
        pot["sequence"] = json!(event.sequence);
        totals.events += 1;
        totals.last = event.position;
        totals.replays += u64::from(context.replaying);
        docs.put(key, &pot)?;
        docs.put("totals", &totals)
    }
}

async fn runtime(backend: &ReadBackend) -> Runtime {
    Runtime::builder(Arc::clone(&backend.store))
        .aggregate::<Pot>()
        .start()
        .await
        .unwrap()
}

async fn project(
    backend: &ReadBackend,
    runtime: &Runtime,
    poison: Arc<AtomicBool>,
) -> ProjectionHandle {
    let config = ProcessorConfig {
        retries: 2,
        retry_backoff: Duration::from_millis(1),
        ..ProcessorConfig::default()
    };
    start_projection(
        Arc::new(PotSummary { poison }),
        Arc::clone(&backend.store),
        Arc::clone(&backend.read),
        runtime.broker().clone(),
        config,
    )
    .await
    .unwrap()
}

async fn send(runtime: &Runtime, pot: &str, command: PotCommand) -> u64 {
    runtime
        .gateway()
        .send_and_wait::<Pot>(pot, command, Metadata::default())
        .await
        .unwrap()
        .position
        .unwrap_or(0)
}

async fn traffic(runtime: &Runtime, tag: &str, pots: usize, waters: usize) {
    for p in 0..pots {
        send(
            runtime,
            &format!("{tag}{p}"),
            PotCommand::Plant {
                species: "fern".into(),
            },
        )
        .await;
    }
    let tasks: Vec<_> = (0..pots)
        .map(|p| {
            let gateway = runtime.gateway();
            let pot = format!("{tag}{p}");
            actix_rt::spawn(async move {
                for _ in 0..waters {
                    gateway
                        .send_and_wait::<Pot>(
                            &pot,
                            PotCommand::Water { millilitres: 2 },
                            Metadata::default(),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

async fn settle(backend: &ReadBackend, handle: &ProjectionHandle) {
    let head = backend.store.head().await.unwrap();
    handle
        .wait_for(head, Duration::from_secs(20))
        .await
        .unwrap();
}

async fn totals(backend: &ReadBackend) -> Totals {
    serde_json::from_value(
        backend
            .read
            .get("pot_summary", "totals")
            .await
            .unwrap()
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

pub async fn every_event_is_applied_once_in_order(backend: ReadBackend) {
    let runtime = runtime(&backend).await;
    // Some events exist before the projection starts (catch-up), the rest arrive live.
    traffic(&runtime, "t1-", 4, 3).await;
    let handle = project(&backend, &runtime, Arc::default()).await;
    traffic(&runtime, "t2-", 6, 5).await;
    settle(&backend, &handle).await;
    let head = backend.store.head().await.unwrap();
    let totals = totals(&backend).await;
    assert_eq!((totals.events, totals.last), (head, head));
    assert!(
        handle.dead_letters().await.unwrap().is_empty(),
        "the handler saw a gap or a repeat"
    );
    let pot = backend
        .read
        .get("pot_summary", "pot:t2-3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pot["water"], json!(5 * 2));
    let status = handle.report().await;
    assert_eq!((status.head, status.lag), (head, 0));
    assert_eq!(
        (status.position, status.state),
        (head, ProcessorState::Running)
    );
}

pub async fn a_crash_between_write_and_commit_loses_and_doubles_nothing(backend: ReadBackend) {
    let runtime = runtime(&backend).await;
    let handle = project(&backend, &runtime, Arc::default()).await;
    handle.crash_next_commits(2);
    traffic(&runtime, "t3-", 3, 4).await;
    settle(&backend, &handle).await;
    let head = backend.store.head().await.unwrap();
    assert_eq!(totals(&backend).await.events, head);
    assert!(handle.dead_letters().await.unwrap().is_empty());
}

pub async fn a_restarted_projection_resumes_from_its_checkpoint(backend: ReadBackend) {
    let runtime = runtime(&backend).await;
    let first = project(&backend, &runtime, Arc::default()).await;
    traffic(&runtime, "t4-", 2, 3).await;
    settle(&backend, &first).await;
    drop(first);
    // A new runner for the same projection (as after a restart); the old one was replaced.
    let second = project(&backend, &runtime, Arc::default()).await;
    traffic(&runtime, "t5-", 2, 3).await;
    settle(&backend, &second).await;
    let head = backend.store.head().await.unwrap();
    assert_eq!(
        totals(&backend).await.events,
        head,
        "nothing applied twice, nothing missed"
    );
}

pub async fn a_rebuild_equals_the_live_view_and_the_old_one_serves_meanwhile(backend: ReadBackend) {
    let runtime = runtime(&backend).await;
    let handle = project(&backend, &runtime, Arc::default()).await;
    traffic(&runtime, "t6-", 5, 4).await;
    settle(&backend, &handle).await;
    let live = backend.read.scan("pot_summary", "pot:", 100).await.unwrap();
    assert_eq!(live.len(), 5);
    let rebuild = {
        let handle = handle.clone();
        actix_rt::spawn(async move { handle.rebuild().await })
    };
    // Queries keep answering from the serving generation while it rebuilds.
    assert_eq!(
        backend
            .read
            .scan("pot_summary", "pot:", 100)
            .await
            .unwrap()
            .len(),
        5
    );
    rebuild.await.unwrap().unwrap();
    let rebuilt = backend.read.scan("pot_summary", "pot:", 100).await.unwrap();
    assert_eq!(rebuilt, live);
    let totals = totals(&backend).await;
    assert_eq!(
        totals.replays, totals.events,
        "every rebuilt event was applied as a replay"
    );
    assert_eq!(handle.status().generation, 2);
    // Live events keep flowing into the new generation.
    traffic(&runtime, "t7-", 1, 1).await;
    settle(&backend, &handle).await;
    assert_eq!(
        self::totals(&backend).await.events,
        backend.store.head().await.unwrap()
    );
}

pub async fn read_your_writes_waits_for_the_position(backend: ReadBackend) {
    let runtime = runtime(&backend).await;
    let handle = project(&backend, &runtime, Arc::default()).await;
    let position = send(
        &runtime,
        "p",
        PotCommand::Plant {
            species: "fern".into(),
        },
    )
    .await;
    assert_eq!(
        handle
            .wait_for(position, Duration::from_secs(10))
            .await
            .unwrap(),
        position
    );
    assert!(
        backend
            .read
            .get("pot_summary", "pot:p")
            .await
            .unwrap()
            .is_some()
    );
    let lagging = handle
        .wait_for(position + 100, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(
        (lagging.position, lagging.wanted),
        (position, position + 100)
    );
}

pub async fn a_poison_event_parks_its_aggregate_while_the_others_carry_on(backend: ReadBackend) {
    let runtime = runtime(&backend).await;
    let poison = Arc::new(AtomicBool::new(true));
    let handle = project(&backend, &runtime, Arc::clone(&poison)).await;
    for pot in ["a", "b"] {
        send(
            &runtime,
            pot,
            PotCommand::Plant {
                species: "fern".into(),
            },
        )
        .await;
    }
    let poisoned = send(&runtime, "a", PotCommand::Prune { leaves: 13 }).await;
    send(&runtime, "a", PotCommand::Water { millilitres: 5 }).await;
    send(&runtime, "b", PotCommand::Water { millilitres: 7 }).await;
    settle(&backend, &handle).await;

    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!((letters[0].position, letters[0].parked), (poisoned, true));
    assert!(
        letters[0].error.contains("unlucky") && letters[0].attempts == 3,
        "{letters:?}"
    );
    assert!(!letters[1].parked && letters[1].stream.aggregate_id == "a");
    let b = backend
        .read
        .get("pot_summary", "pot:b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b["water"], json!(7), "the other aggregate carried on");
    let a = backend
        .read
        .get("pot_summary", "pot:a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        a["events"],
        json!(1),
        "a's later events wait behind its parked one"
    );

    // Still poisonous: a retry changes nothing.
    assert!(handle.retry(letters[0].stream.clone()).await.is_err());
    assert_eq!(handle.dead_letters().await.unwrap().len(), 2);
    // Fixed: a retry applies both, in order.
    poison.store(false, Ordering::SeqCst);
    assert_eq!(handle.retry(letters[0].stream.clone()).await.unwrap(), 2);
    assert!(handle.dead_letters().await.unwrap().is_empty());
    let a = backend
        .read
        .get("pot_summary", "pot:a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            a["events"].clone(),
            a["water"].clone(),
            a["sequence"].clone()
        ),
        (json!(3), json!(5), json!(3))
    );
    // Later events of a flow again.
    poison.store(true, Ordering::SeqCst);
    send(&runtime, "a", PotCommand::Water { millilitres: 1 }).await;
    settle(&backend, &handle).await;
    assert!(handle.dead_letters().await.unwrap().is_empty());
}

pub async fn a_skipped_dead_letter_lets_the_waiting_events_through(backend: ReadBackend) {
    let runtime = runtime(&backend).await;
    let handle = project(&backend, &runtime, Arc::new(AtomicBool::new(true))).await;
    send(
        &runtime,
        "a",
        PotCommand::Plant {
            species: "fern".into(),
        },
    )
    .await;
    send(&runtime, "a", PotCommand::Prune { leaves: 13 }).await;
    send(&runtime, "a", PotCommand::Water { millilitres: 5 }).await;
    settle(&backend, &handle).await;
    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2);
    handle.skip(letters[0].id).await.unwrap();
    let left = handle.dead_letters().await.unwrap();
    assert_eq!(
        left.len(),
        1,
        "the skipped one stays listed, the waiting one was applied"
    );
    assert!(left[0].skipped && left[0].id == letters[0].id);
    // A rebuild leaves the skipped event out too, so it equals the live view.
    let live = backend.read.scan("pot_summary", "pot:", 100).await.unwrap();
    handle.rebuild().await.unwrap();
    assert_eq!(
        backend.read.scan("pot_summary", "pot:", 100).await.unwrap(),
        live
    );
    let a = backend
        .read
        .get("pot_summary", "pot:a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a["events"].clone(), a["water"].clone()),
        (json!(2), json!(5))
    );
}

/// `get_many` answers what `get` answers for each key, in one read, leaving out missing keys.
pub async fn get_many_answers_what_get_answers_in_one_read(backend: ReadBackend) {
    let runtime = runtime(&backend).await;
    traffic(&runtime, "m-", 5, 2).await;
    let handle = project(&backend, &runtime, Arc::default()).await;
    settle(&backend, &handle).await;
    // A generation that does not serve (a rebuild in progress) holds other documents: they
    // must not show.
    let serving = backend.read.active_generation("pot_summary").await.unwrap();
    backend
        .read
        .commit(nursery::projections::Commit {
            name: "pot_summary",
            generation: serving + 1,
            writes: vec![
                ("pot:m-3".to_owned(), Some(json!({ "from": "the rebuild" }))),
                (
                    "pot:nobody".to_owned(),
                    Some(json!({ "from": "the rebuild" })),
                ),
            ],
            position: 1,
            park: Vec::new(),
            resolve: Vec::new(),
            skip: Vec::new(),
            fail_before_commit: false,
        })
        .await
        .unwrap();
    let keys: Vec<String> = ["pot:m-3", "pot:m-0", "pot:nobody", "totals"]
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
    let many = backend.read.get_many("pot_summary", &keys).await.unwrap();
    assert_eq!(many.len(), 3, "{many:?}");
    for key in &keys {
        assert_eq!(
            many.get(key).cloned(),
            backend.read.get("pot_summary", key).await.unwrap(),
            "{key}"
        );
    }
    assert!(
        backend
            .read
            .get_many("pot_summary", &[])
            .await
            .unwrap()
            .is_empty()
    );
}

/// A process that follows a processor another process runs reads its generation without
/// registering it: looking never writes.
pub async fn looking_up_a_generation_registers_nothing(backend: ReadBackend) {
    let read = &backend.read;
    assert_eq!(read.serving_generation("followed").await.unwrap(), None);
    assert_eq!(
        read.serving_generation("followed").await.unwrap(),
        None,
        "the look registered it"
    );
    assert_eq!(read.active_generation("followed").await.unwrap(), 1);
    assert_eq!(read.serving_generation("followed").await.unwrap(), Some(1));
}

macro_rules! projection_suite {
    ($backend:ident: $($scenario:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[actix_rt::test]
                async fn $scenario() {
                    super::$scenario(crate::support::$backend().await).await;
                }
            )+
        }
    };
}

macro_rules! all_read_backends {
    ($($scenario:ident),+ $(,)?) => {
        projection_suite!(read_memory: $($scenario),+);
        projection_suite!(read_sqlite: $($scenario),+);
        projection_suite!(read_postgres: $($scenario),+);
    };
}

all_read_backends!(
    every_event_is_applied_once_in_order,
    a_crash_between_write_and_commit_loses_and_doubles_nothing,
    a_restarted_projection_resumes_from_its_checkpoint,
    a_rebuild_equals_the_live_view_and_the_old_one_serves_meanwhile,
    read_your_writes_waits_for_the_position,
    a_poison_event_parks_its_aggregate_while_the_others_carry_on,
    a_skipped_dead_letter_lets_the_waiting_events_through,
    looking_up_a_generation_registers_nothing,
    get_many_answers_what_get_answers_in_one_read,
);

/// On PostgreSQL, with a writer held open (as an append holds it) while the runtime keeps
/// writing: the projection waits, then applies every event in order, skipping none.
#[actix_rt::test]
async fn postgres_projection_skips_nothing_behind_a_held_open_writer() {
    let backend = crate::support::read_postgres().await;
    let runtime = runtime(&backend).await;
    let handle = project(&backend, &runtime, Arc::default()).await;
    traffic(&runtime, "before-", 2, 2).await;
    settle(&backend, &handle).await;

    let url = backend.url.clone();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut held = pool.begin().await.unwrap();
    let head: i64 = sqlx::query_scalar(nursery::store::POSTGRES_APPEND_LOCK_SQL)
        .fetch_one(&mut *held)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (global_position, aggregate_type, aggregate_id, sequence, event_id, event_type, \
         payload_revision, payload_format, recorded_at, metadata, payload) \
         VALUES ($1, 'Pot', 'held', 1, $2, 'Pruned', 1, 0, 0, '{}', $3)",
    )
    .bind(head + 1)
    .bind(uuid::Uuid::new_v4())
    .bind(nursery::store::PayloadFormat::MessagePack.encode(&json!({"leaves": 1})).unwrap())
    .execute(&mut *held)
    .await
    .unwrap();
    sqlx::query("UPDATE event_counter SET last_position = $1 WHERE id = 1")
        .bind(head + 1)
        .execute(&mut *held)
        .await
        .unwrap();

    let writers = {
        let gateway = runtime.gateway();
        actix_rt::spawn(async move {
            for i in 0..5 {
                gateway
                    .send_and_wait::<Pot>(
                        &format!("after-{i}"),
                        PotCommand::Plant {
                            species: "ivy".into(),
                        },
                        Metadata::default(),
                    )
                    .await
                    .unwrap();
            }
        })
    };
    // While the writer is held, nothing past it can commit, and the projection stays put.
    let stuck = handle
        .wait_for(u64::try_from(head).unwrap() + 1, Duration::from_millis(300))
        .await;
    assert!(stuck.is_err());
    held.commit().await.unwrap();
    writers.await.unwrap();
    settle(&backend, &handle).await;
    let totals = totals(&backend).await;
    assert_eq!(totals.events, backend.store.head().await.unwrap());
    assert!(
        handle.dead_letters().await.unwrap().is_empty(),
        "the handler saw a gap"
    );
    assert!(
        backend
            .read
            .get("pot_summary", "pot:held")
            .await
            .unwrap()
            .is_some()
    );
}

#[test]
fn the_fixture_shows_the_read_model_a_projection_builds() {
    use nursery::testkit::ProjectionFixture;
    let fixture = ProjectionFixture::new(PotSummary {
        poison: Arc::default(),
    })
    .given(
        "Pot",
        "a",
        [PotEvent::from(crate::fixtures::Planted {
            species: "fern".into(),
        })],
    )
    .unwrap()
    .given(
        "Pot",
        "a",
        [PotEvent::from(crate::fixtures::Watered {
            millilitres: 4,
            source: "can".into(),
        })],
    )
    .unwrap()
    .replaying(true)
    .given(
        "Pot",
        "b",
        [PotEvent::from(crate::fixtures::Planted {
            species: "ivy".into(),
        })],
    )
    .unwrap();
    fixture.expect_document("pot:a", json!({"water": 4, "events": 2, "sequence": 2}));
    fixture.expect_document("totals", json!({"events": 3, "last": 3, "replays": 1}));
    fixture.expect_no_document("pot:c");
}
