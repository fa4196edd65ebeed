//! Sagas: the pure fixture, and the manager on every backend: routing by association, commands
//! through the gateway exactly once in effect, durable deadlines on a manual clock, outbox
//! resends, compensation, resumption after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use nursery::actors::{CommandError, Runtime};
use nursery::clock::ManualClock;
use nursery::domain::{Association, Routing, Saga, Step};
use nursery::projections::{
    DispatchError, SagaConfig, SagaDecoder, SagaDispatcher, SagaHandle, start_saga,
};
use nursery::store::{Codec, Metadata, Repository, SnapshotPolicy, StoreError};
use nursery::testkit::SagaFixture;
use serde::{Deserialize, Serialize};

use crate::fixtures::{Pot, PotCommand, PotEvent};
use crate::support::ReadBackend;

/// Waters a freshly planted pot, checks on it after an hour, and undoes its watering (by
/// pruning) if the pot is pruned hard.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Gardener {
    pot: String,
    checked: bool,
}

#[derive(Clone, Debug)]
pub struct GardenEvent {
    pub pot: String,
    pub event: PotEvent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GardenCommand {
    Water { pot: String, millilitres: u32 },
    Prune { pot: String, leaves: u32 },
}

impl Saga for Gardener {
    const NAME: &'static str = "gardener";
    type Event = GardenEvent;
    type Command = GardenCommand;

    fn routing(event: &GardenEvent) -> Option<Routing> {
        let pot = Association::new("pot", &event.pot);
        match &event.event {
            PotEvent::Planted(_) => Some(Routing::Start(pot)),
            PotEvent::Pruned(_) => Some(Routing::To(pot)),
            PotEvent::Watered(_) => None,
        }
    }

    fn handle(&mut self, event: &GardenEvent, _now: i64) -> Step<GardenCommand> {
        match &event.event {
            PotEvent::Planted(_) => {
                self.pot = event.pot.clone();
                Step::nothing()
                    .send_undoable(
                        GardenCommand::Water {
                            pot: self.pot.clone(),
                            millilitres: 10,
                        },
                        GardenCommand::Prune {
                            pot: self.pot.clone(),
                            leaves: 1,
                        },
                    )
                    .deadline("check", 3600)
            }
            PotEvent::Pruned(p) if p.leaves >= 50 => {
                Step::nothing().cancel("check").compensate().end()
            }
            _ => Step::nothing(),
        }
    }

    fn on_deadline(&mut self, name: &str, _now: i64) -> Step<GardenCommand> {
        if name != "check" {
            return Step::nothing();
        }
        self.checked = true;
        Step::nothing()
            .send(GardenCommand::Water {
                pot: self.pot.clone(),
                millilitres: 20,
            })
            .end()
    }
}

fn planted(pot: &str) -> GardenEvent {
    GardenEvent {
        pot: pot.into(),
        event: crate::fixtures::Planted {
            species: "fern".into(),
        }
        .into(),
    }
}

fn pruned(pot: &str, leaves: u32) -> GardenEvent {
    GardenEvent {
        pot: pot.into(),
        event: crate::fixtures::Pruned { leaves }.into(),
    }
}

#[test]
fn the_gardener_waters_then_checks_after_an_hour() {
    SagaFixture::<Gardener>::new()
        .when(planted("p"))
        .expect_commands([GardenCommand::Water {
            pot: "p".into(),
            millilitres: 10,
        }])
        .expect_deadline_set("check")
        .expect_active()
        .and()
        .when_time_elapses(3599)
        .expect_no_commands()
        .and()
        .when_time_elapses(1)
        .expect_commands([GardenCommand::Water {
            pot: "p".into(),
            millilitres: 20,
        }])
        .expect_ended();
}

#[test]
fn a_hard_prune_compensates_and_cancels_the_check() {
    SagaFixture::<Gardener>::new()
        .given([planted("p")])
        .when(pruned("p", 60))
        .expect_commands([GardenCommand::Prune {
            pot: "p".into(),
            leaves: 1,
        }])
        .expect_deadline_cancelled("check")
        .expect_ended()
        .and()
        .when_time_elapses(7200)
        .expect_no_commands();
}

#[test]
fn events_reach_only_the_instances_they_are_associated_with() {
    SagaFixture::<Gardener>::new()
        .given([planted("p"), planted("q")])
        .when(pruned("p", 60))
        .expect_commands([GardenCommand::Prune {
            pot: "p".into(),
            leaves: 1,
        }])
        .expect_instances(1)
        .and()
        .when(pruned("z", 60))
        .expect_no_commands()
        .and()
        .when_time_elapses(3600)
        .expect_commands([GardenCommand::Water {
            pot: "q".into(),
            millilitres: 20,
        }])
        .expect_ended();
}

fn decoder() -> SagaDecoder<Gardener> {
    Arc::new(|record| {
        (record.stream.aggregate_type == "Pot").then_some(())?;
        let event: PotEvent = Codec::default().decode_event(record).ok()?;
        Some(GardenEvent {
            pot: record.stream.aggregate_id.clone(),
            event,
        })
    })
}

/// Sends through the gateway; `fail_first` transient failures first (the outbox must resend),
/// and every command twice (the aggregate must apply it once).
fn dispatcher(runtime: &Runtime, fail_first: Arc<AtomicUsize>) -> SagaDispatcher<Gardener> {
    let gateway = runtime.gateway();
    Arc::new(move |command, metadata| {
        let gateway = gateway.clone();
        let fail_first = Arc::clone(&fail_first);
        async move {
            if fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(DispatchError::Transient("the test says not yet".into()));
            }
            let (pot, command) = match command {
                GardenCommand::Water { pot, millilitres } => {
                    (pot, PotCommand::Water { millilitres })
                }
                GardenCommand::Prune { pot, leaves } => (pot, PotCommand::Prune { leaves }),
            };
            for _ in 0..2 {
                match gateway
                    .send_and_wait::<Pot>(&pot, command.clone(), metadata.clone())
                    .await
                {
                    Ok(_) => {}
                    Err(CommandError::Rejected(e)) => {
                        return Err(DispatchError::Permanent(e.to_string()));
                    }
                    Err(e) => return Err(DispatchError::Transient(e.to_string())),
                }
            }
            Ok(())
        }
        .boxed()
    })
}

async fn manager(
    backend: &ReadBackend,
    runtime: &Runtime,
    clock: &Arc<ManualClock>,
    fail_first: Arc<AtomicUsize>,
) -> SagaHandle {
    start_saga::<Gardener>(
        Arc::clone(&backend.store),
        Arc::clone(&backend.read),
        runtime.broker().clone(),
        decoder(),
        dispatcher(runtime, fail_first),
        Arc::clone(clock) as Arc<dyn nursery::clock::Clock>,
        SagaConfig {
            tick: Duration::from_millis(20),
            ..SagaConfig::default()
        },
    )
    .await
    .unwrap()
}

async fn pot_runtime(backend: &ReadBackend) -> Runtime {
    Runtime::builder(Arc::clone(&backend.store))
        .aggregate::<Pot>()
        .start()
        .await
        .unwrap()
}

async fn plant_pot(gateway: &nursery::actors::CommandGateway, id: &str, species: &str) {
    gateway
        .send_and_wait::<Pot>(
            id,
            PotCommand::Plant {
                species: species.into(),
            },
            Metadata::default(),
        )
        .await
        .unwrap();
}

async fn pot(backend: &ReadBackend, id: &str) -> Pot {
    Repository::<Pot>::new(
        Arc::clone(&backend.store),
        Codec::default(),
        SnapshotPolicy::NEVER,
    )
    .load(id)
    .await
    .unwrap()
    .state
}

/// Waits, with a deadline, until `check` holds of the pot.
async fn until(backend: &ReadBackend, id: &str, check: impl Fn(&Pot) -> bool) -> Pot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pot = pot(backend, id).await;
        if check(&pot) {
            return pot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga never got there: {pot:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn the_saga_waters_once_and_fires_its_deadline_once(backend: ReadBackend) {
    let runtime = pot_runtime(&backend).await;
    let clock = Arc::new(ManualClock::default());
    let saga = manager(&backend, &runtime, &clock, Arc::new(AtomicUsize::new(1))).await;
    plant_pot(&runtime.gateway(), "p", "fern").await;
    let watered = until(&backend, "p", |p| p.water == 10).await;
    assert_eq!(
        watered.events, 2,
        "sent twice and resent after a failure, applied once"
    );

    clock.advance(chrono::Duration::seconds(3599));
    saga.tick().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pot(&backend, "p").await.water, 10, "not due yet");
    clock.advance(chrono::Duration::seconds(2));
    saga.tick().await;
    let checked = until(&backend, "p", |p| p.water == 30).await;
    saga.tick().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        pot(&backend, "p").await.events,
        checked.events,
        "the deadline fired once"
    );
    let report = saga.report().await;
    assert_eq!((report.lag, report.name.as_str()), (0, "saga:gardener"));
    let left = backend.read.scan("saga:gardener", "", 100).await.unwrap();
    assert!(
        left.is_empty(),
        "an ended saga leaves nothing behind: {left:?}"
    );
}

pub async fn a_hard_prune_compensates_through_the_gateway(backend: ReadBackend) {
    let runtime = pot_runtime(&backend).await;
    let clock = Arc::new(ManualClock::default());
    let _saga = manager(&backend, &runtime, &clock, Arc::default()).await;
    let gateway = runtime.gateway();
    plant_pot(&gateway, "p", "fern").await;
    until(&backend, "p", |p| p.water == 10).await;
    gateway
        .send_and_wait::<Pot>("p", PotCommand::Prune { leaves: 60 }, Metadata::default())
        .await
        .unwrap();
    let compensated = until(&backend, "p", |p| p.leaves_pruned == 61).await;
    assert_eq!(compensated.events, 4);
    clock.advance(chrono::Duration::hours(2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        pot(&backend, "p").await.water,
        10,
        "the cancelled check never fires"
    );
}

pub async fn a_restarted_manager_resumes_and_fires_deadlines_due_during_downtime(
    backend: ReadBackend,
) {
    let runtime = pot_runtime(&backend).await;
    let clock = Arc::new(ManualClock::default());
    let first = manager(&backend, &runtime, &clock, Arc::default()).await;
    plant_pot(&runtime.gateway(), "p", "fern").await;
    until(&backend, "p", |p| p.water == 10).await;
    drop(first);
    clock.advance(chrono::Duration::hours(5));
    plant_pot(&runtime.gateway(), "q", "ivy").await;
    let second = manager(&backend, &runtime, &clock, Arc::default()).await;
    second.tick().await;
    until(&backend, "p", |p| p.water == 30).await;
    until(&backend, "q", |p| p.water == 10).await;
    assert_eq!(
        pot(&backend, "p").await.events,
        3,
        "nothing applied twice after the restart"
    );
}

pub async fn events_waiting_are_handled_before_due_deadlines(backend: ReadBackend) {
    let runtime = pot_runtime(&backend).await;
    let clock = Arc::new(ManualClock::default());
    let first = manager(&backend, &runtime, &clock, Arc::default()).await;
    let gateway = runtime.gateway();
    plant_pot(&gateway, "p", "fern").await;
    until(&backend, "p", |p| p.water == 10).await;
    drop(first);
    // While the manager is down, the check falls due and a hard prune (which cancels it) is
    // committed. On restart the prune must win: the check never fires.
    clock.advance(chrono::Duration::hours(2));
    gateway
        .send_and_wait::<Pot>("p", PotCommand::Prune { leaves: 60 }, Metadata::default())
        .await
        .unwrap();
    let second = manager(&backend, &runtime, &clock, Arc::default()).await;
    let compensated = until(&backend, "p", |p| p.leaves_pruned == 61).await;
    second.tick().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pot(&backend, "p").await.water, compensated.water);
    assert_eq!(compensated.water, 10, "the cancelled check did not fire");
}

/// Events stored while no manager ran reach it as one batch: an instance started, told and
/// ended within the batch, others started in it, and unrelated events between them. The batch
/// is one transaction; the outcome is what one event at a time gives.
pub async fn a_batch_is_handled_as_one_event_at_a_time_would_be(backend: ReadBackend) {
    let runtime = pot_runtime(&backend).await;
    let gateway = runtime.gateway();
    for id in ["a", "b", "c"] {
        plant_pot(&gateway, id, "fern").await;
        gateway
            .send_and_wait::<Pot>(
                id,
                PotCommand::Water { millilitres: 1 },
                Metadata::default(),
            )
            .await
            .unwrap();
    }
    gateway
        .send_and_wait::<Pot>("a", PotCommand::Prune { leaves: 60 }, Metadata::default())
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::default());
    let saga = manager(&backend, &runtime, &clock, Arc::default()).await;
    // a: watered by its start, then compensated (the watering undone by a prune of one leaf).
    let a = until(&backend, "a", |p| p.leaves_pruned == 61).await;
    assert_eq!((a.water, a.events), (11, 5), "{a:?}");
    for id in ["b", "c"] {
        let pot = until(&backend, id, |p| p.water == 11).await;
        assert_eq!(pot.events, 3, "{id} watered once: {pot:?}");
    }
    let head = runtime.store().head().await.unwrap();
    saga.wait_for(head, Duration::from_secs(20))
        .await
        .unwrap_or_else(|lagging| panic!("the saga never caught up: {lagging:?}"));
    let left: Vec<String> = backend
        .read
        .scan("saga:gardener", "a:", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        left,
        ["a:pot=b", "a:pot=c"],
        "a ended; b and c wait for their check"
    );
    let outbox = backend.read.scan("saga:gardener", "o:", 100).await.unwrap();
    assert!(outbox.is_empty(), "every command was sent: {outbox:?}");
}

/// Writes (`Some`) or deletes (`None`) document `key` of the gardener saga's serving
/// generation, as a fault a test plants or removes.
async fn set_document(backend: &ReadBackend, key: &str, doc: Option<serde_json::Value>) {
    let generation = backend
        .read
        .active_generation("saga:gardener")
        .await
        .unwrap();
    backend
        .read
        .commit(nursery::projections::Commit {
            name: "saga:gardener",
            generation,
            writes: vec![(key.into(), doc)],
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A poisoned event in the middle of a batch (its association document does not decode): the
/// batch falls back to one event at a time, the poisoned one is parked, the others take
/// effect once.
pub async fn a_poisoned_event_in_a_batch_parks_alone(backend: ReadBackend) {
    let runtime = pot_runtime(&backend).await;
    set_document(
        &backend,
        "a:pot=x",
        Some(serde_json::json!({"not": "a list"})),
    )
    .await;
    let gateway = runtime.gateway();
    for id in ["a", "x", "b"] {
        plant_pot(&gateway, id, "fern").await;
    }
    let clock = Arc::new(ManualClock::default());
    let saga = manager(&backend, &runtime, &clock, Arc::default()).await;
    for id in ["a", "b"] {
        let pot = until(&backend, id, |p| p.water == 10).await;
        assert_eq!(pot.events, 2, "{id} watered once: {pot:?}");
    }
    let head = runtime.store().head().await.unwrap();
    saga.wait_for(head, Duration::from_secs(20))
        .await
        .unwrap_or_else(|lagging| panic!("the saga never got past the poison: {lagging:?}"));
    assert_eq!(
        pot(&backend, "x").await.water,
        0,
        "the poisoned start did nothing"
    );
    let parked = backend.read.dead_letters("saga:gardener").await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].stream.aggregate_id, "x");
    assert!(parked[0].parked);
}

/// A parked event holds back the later events of its stream (they wait, in order), not those of
/// other streams; once the cause is fixed, a retry handles them all, in order, once.
pub async fn later_events_wait_behind_a_parked_one_until_it_is_retried(backend: ReadBackend) {
    let runtime = pot_runtime(&backend).await;
    set_document(
        &backend,
        "a:pot=x",
        Some(serde_json::json!({"not": "a list"})),
    )
    .await;
    let clock = Arc::new(ManualClock::default());
    let saga = manager(&backend, &runtime, &clock, Arc::default()).await;
    let gateway = runtime.gateway();
    plant_pot(&gateway, "x", "fern").await;
    gateway
        .send_and_wait::<Pot>("x", PotCommand::Prune { leaves: 60 }, Metadata::default())
        .await
        .unwrap();
    plant_pot(&gateway, "y", "ivy").await;
    until(&backend, "y", |p| p.water == 10).await;
    let head = runtime.store().head().await.unwrap();
    saga.wait_for(head, Duration::from_secs(20))
        .await
        .unwrap_or_else(|lagging| panic!("the saga never got past x: {lagging:?}"));
    let letters = saga.dead_letters().await.unwrap();
    let kinds: Vec<(&str, bool)> = letters
        .iter()
        .map(|d| (d.event_type.as_str(), d.parked))
        .collect();
    assert_eq!(kinds, [("Planted", true), ("Pruned", false)], "{letters:?}");
    assert_eq!(letters[0].attempts, 4, "tried, then retried three times");
    assert_eq!(pot(&backend, "x").await.water, 0);

    // Still broken: the retry fails and changes nothing.
    let stream = nursery::store::StreamId::new("Pot", "x");
    assert!(saga.retry(stream.clone()).await.is_err());
    assert_eq!(saga.dead_letters().await.unwrap().len(), 2);
    // Fixed: both run, in order (watered at the start, then compensated by the hard prune).
    set_document(&backend, "a:pot=x", None).await;
    assert_eq!(saga.retry(stream).await, Ok(2));
    let x = until(&backend, "x", |p| p.leaves_pruned == 61).await;
    assert_eq!((x.water, x.events), (10, 4), "{x:?}");
    assert!(saga.dead_letters().await.unwrap().is_empty());
    // The stream flows again.
    gateway
        .send_and_wait::<Pot>("x", PotCommand::Prune { leaves: 1 }, Metadata::default())
        .await
        .unwrap();
    let head = runtime.store().head().await.unwrap();
    saga.wait_for(head, Duration::from_secs(20)).await.unwrap();
    assert!(saga.dead_letters().await.unwrap().is_empty());
}

/// Skipping a parked event releases the events waiting behind it; the skipped one stays
/// listed, marked skipped, and is never handled.
pub async fn a_skipped_event_releases_those_behind_it(backend: ReadBackend) {
    let runtime = pot_runtime(&backend).await;
    set_document(&backend, "a:pot=x", Some(serde_json::json!(7))).await;
    let clock = Arc::new(ManualClock::default());
    let saga = manager(&backend, &runtime, &clock, Arc::default()).await;
    let gateway = runtime.gateway();
    plant_pot(&gateway, "x", "fern").await;
    gateway
        .send_and_wait::<Pot>(
            "x",
            PotCommand::Water { millilitres: 1 },
            Metadata::default(),
        )
        .await
        .unwrap();
    let head = runtime.store().head().await.unwrap();
    saga.wait_for(head, Duration::from_secs(20)).await.unwrap();
    let letters = saga.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    saga.skip(letters[0].id).await.unwrap();
    let left = saga.dead_letters().await.unwrap();
    assert_eq!(left.len(), 1, "the waiting one was handled: {left:?}");
    assert!(left[0].skipped && left[0].event_type == "Planted");
    assert_eq!(
        pot(&backend, "x").await.water,
        1,
        "the skipped start never watered"
    );
}

/// A read store whose next commits succeed but answer an error, as when the connection drops
/// after COMMIT reached the server.
struct LyingReadStore {
    inner: Arc<dyn nursery::projections::ReadStore>,
    lies: AtomicUsize,
}

#[async_trait::async_trait]
impl nursery::projections::ReadStore for LyingReadStore {
    async fn active_generation(&self, name: &str) -> Result<u32, StoreError> {
        self.inner.active_generation(name).await
    }
    async fn serving_generation(&self, name: &str) -> Result<Option<u32>, StoreError> {
        self.inner.serving_generation(name).await
    }
    async fn checkpoint(&self, name: &str, generation: u32) -> Result<u64, StoreError> {
        self.inner.checkpoint(name, generation).await
    }
    async fn load(
        &self,
        name: &str,
        generation: u32,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, serde_json::Value>, StoreError> {
        self.inner.load(name, generation, keys).await
    }
    async fn commit(&self, commit: nursery::projections::Commit<'_>) -> Result<(), StoreError> {
        self.inner.commit(commit).await?;
        match self
            .lies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err(StoreError::Internal(
                "the connection dropped after COMMIT".into(),
            )),
            Err(_) => Ok(()),
        }
    }
    async fn get(&self, name: &str, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.inner.get(name, key).await
    }
    async fn scan(
        &self,
        name: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        self.inner.scan(name, prefix, limit).await
    }
    async fn promote(&self, name: &str, generation: u32) -> Result<(), StoreError> {
        self.inner.promote(name, generation).await
    }
    async fn discard(&self, name: &str, generation: u32) -> Result<(), StoreError> {
        self.inner.discard(name, generation).await
    }
    async fn dead_letters(
        &self,
        processor: &str,
    ) -> Result<Vec<nursery::projections::DeadLetter>, StoreError> {
        self.inner.dead_letters(processor).await
    }
    async fn recall_response(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<nursery::projections::StoredResponse>, StoreError> {
        self.inner.recall_response(scope, key).await
    }
    async fn remember_response(
        &self,
        scope: &str,
        key: &str,
        response: &nursery::projections::StoredResponse,
        replace_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<nursery::projections::StoredResponse, StoreError> {
        self.inner
            .remember_response(scope, key, response, replace_before)
            .await
    }
    async fn forget_responses(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        self.inner.forget_responses(before).await
    }
}

/// A commit that answered an error although it committed is not handled again: handling the
/// start twice would record its compensation twice, and the hard prune would undo it twice.
pub async fn a_commit_that_committed_despite_an_error_is_not_handled_again(backend: ReadBackend) {
    let runtime = pot_runtime(&backend).await;
    let lying = Arc::new(LyingReadStore {
        inner: Arc::clone(&backend.read),
        lies: AtomicUsize::new(1),
    });
    let mut backend = backend;
    backend.read = lying.clone();
    let clock = Arc::new(ManualClock::default());
    let _saga = manager(&backend, &runtime, &clock, Arc::default()).await;
    let gateway = runtime.gateway();
    plant_pot(&gateway, "p", "fern").await;
    until(&backend, "p", |p| p.water == 10).await;
    assert_eq!(lying.lies.load(Ordering::SeqCst), 0, "the lie was told");
    gateway
        .send_and_wait::<Pot>("p", PotCommand::Prune { leaves: 60 }, Metadata::default())
        .await
        .unwrap();
    let pruned = until(&backend, "p", |p| p.leaves_pruned >= 61).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settled = pot(&backend, "p").await;
    assert_eq!(
        (settled.leaves_pruned, settled.events),
        (61, 4),
        "the watering was undone once: {pruned:?} then {settled:?}"
    );
}

macro_rules! saga_suite {
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

macro_rules! all_saga_backends {
    ($($scenario:ident),+ $(,)?) => {
        saga_suite!(read_memory: $($scenario),+);
        saga_suite!(read_sqlite: $($scenario),+);
        saga_suite!(read_postgres: $($scenario),+);
    };
}

all_saga_backends!(
    the_saga_waters_once_and_fires_its_deadline_once,
    a_hard_prune_compensates_through_the_gateway,
    a_restarted_manager_resumes_and_fires_deadlines_due_during_downtime,
    events_waiting_are_handled_before_due_deadlines,
    a_batch_is_handled_as_one_event_at_a_time_would_be,
    a_poisoned_event_in_a_batch_parks_alone,
    later_events_wait_behind_a_parked_one_until_it_is_retried,
    a_skipped_event_releases_those_behind_it,
    a_commit_that_committed_despite_an_error_is_not_handled_again,
);
