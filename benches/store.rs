//! The event store benchmark: append throughput per backend, one event per append and in
//! batches, sequential and concurrent, and in the same run the raw sqlx insert of the same rows,
//! printing the ratio store/raw (the store's own overhead).
//!
//! Run: `cargo bench --bench store` (PostgreSQL on 127.0.0.1:5432 for the PostgreSQL rows).
//! Scale with `NURSERY_BENCH_SCALE` (default 1.0). Each SQL row runs the raw inserts and the
//! store in `NURSERY_BENCH_ROUNDS` rounds (default 5), alternating which goes first; the rates
//! are over all rounds, the ratio is the median of the rounds' ratios (their range beside it),
//! so one noisy moment of this shared machine does not decide a row.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark aborts on failure"
)]

mod common;

use common::{BenchDb, scale};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nursery::store::{
    AppendRequest, EventStore, ExpectedVersion, MemoryStore, Metadata, NewEvent, PayloadFormat,
    SqliteStore, SqliteWriter, StreamId,
};
use sqlx::{Connection, Executor, PgPool, QueryBuilder};
use uuid::Uuid;

fn event() -> NewEvent {
    NewEvent {
        event_id: nursery::store::ids::fresh(),
        event_type: "ItemAdded".into(),
        revision: 1,
        format: PayloadFormat::MessagePack,
        payload: PayloadFormat::MessagePack
            .encode(&serde_json::json!({"product_id": "monstera", "quantity": 2, "unit_price_cents": 1000}))
            .unwrap(),
        metadata: Metadata {
            command_id: Some(nursery::store::ids::fresh()),
            correlation_id: Some(Uuid::new_v4()),
            customer_id: Some("alice".into()),
            ..Metadata::default()
        },
    }
}

/// A workload: `writers` concurrent tasks, each doing `appends` appends of `per_append` events,
/// each writer on its own stream.
#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    writers: usize,
    appends: usize,
    per_append: usize,
    /// Requests per transaction, each for its own stream (the journal's group commit); 1 for
    /// plain appends.
    group: usize,
}

impl Workload {
    fn events(&self) -> usize {
        self.writers * self.appends * self.per_append * self.group
    }
}

async fn run_writers<F, Fut>(workload: Workload, append: F) -> Duration
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let append = Arc::new(append);
    let start = Instant::now();
    let tasks: Vec<_> = (0..workload.writers)
        .map(|writer| {
            let append = Arc::clone(&append);
            tokio::spawn(async move {
                for i in 0..workload.appends {
                    append(writer, i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

async fn store_run(store: Arc<dyn EventStore>, workload: Workload, run: usize) -> Duration {
    run_writers(workload, move |writer, i| {
        let store = Arc::clone(&store);
        async move {
            let batch: Vec<AppendRequest> = (0..workload.group)
                .map(|g| AppendRequest {
                    stream: StreamId::new("Cart", format!("bench-{run}-{writer}-{g}")),
                    expected: ExpectedVersion::Exact((i * workload.per_append) as u64),
                    events: (0..workload.per_append).map(|_| event()).collect(),
                })
                .collect();
            for result in store.append_batch(&batch).await.unwrap() {
                result.unwrap();
            }
        }
    })
    .await
}

const RAW_COLUMNS: &str = "aggregate_type, aggregate_id, sequence, event_id, event_type, payload_revision, \
                           payload_format, recorded_at, metadata, payload";

async fn raw_pg_run(pool: PgPool, workload: Workload, run: usize) -> Duration {
    run_writers(workload, move |writer, i| {
        let pool = pool.clone();
        async move {
            let rows: Vec<NewEvent> = (0..workload.per_append * workload.group)
                .map(|_| event())
                .collect();
            let mut tx = pool.begin().await.unwrap();
            let mut query = QueryBuilder::new(format!("INSERT INTO raw_events ({RAW_COLUMNS}) "));
            query.push_values(rows.iter().enumerate(), |mut b, (k, e)| {
                b.push_bind("Cart")
                    .push_bind(format!("bench-{run}-{writer}-{}", k / workload.per_append))
                    .push_bind((i * workload.per_append + k % workload.per_append + 1) as i64)
                    .push_bind(e.event_id)
                    .push_bind(e.event_type.as_str())
                    .push_bind(1i32)
                    .push_bind(0i16)
                    .push_bind(0i64)
                    .push_bind(serde_json::to_string(&e.metadata).unwrap())
                    .push_unseparated("::jsonb")
                    .push_bind(e.payload.as_slice());
            });
            query.build().execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    })
    .await
}

/// Raw sqlx on the store's own writer connection (no pool in between).
async fn raw_sqlite_run(sqlite: SqliteWriter, workload: Workload, run: usize) -> Duration {
    run_writers(workload, move |writer, i| {
        let sqlite = sqlite.clone();
        async move {
            let rows: Vec<NewEvent> = (0..workload.per_append * workload.group)
                .map(|_| event())
                .collect();
            let mut conn = sqlite.lock().await.unwrap();
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
            let mut query = QueryBuilder::new(format!("INSERT INTO raw_events ({RAW_COLUMNS}) "));
            query.push_values(rows.iter().enumerate(), |mut b, (k, e)| {
                b.push_bind("Cart")
                    .push_bind(format!("bench-{run}-{writer}-{}", k / workload.per_append))
                    .push_bind((i * workload.per_append + k % workload.per_append + 1) as i64)
                    .push_bind(e.event_id)
                    .push_bind(e.event_type.as_str())
                    .push_bind(1i64)
                    .push_bind(0i64)
                    .push_bind(0i64)
                    .push_bind(serde_json::to_string(&e.metadata).unwrap())
                    .push_bind(e.payload.as_slice());
            });
            query.build().execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    })
    .await
}

fn rate(events: usize, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

fn report(backend: &str, workload: Workload, rounds: &[(Duration, Option<Duration>)]) {
    let events = workload.events() * rounds.len();
    let store: Duration = rounds.iter().map(|(store, _)| *store).sum();
    let store_rate = rate(events, store);
    let raws: Option<Vec<Duration>> = rounds.iter().map(|(_, raw)| *raw).collect();
    match raws {
        Some(raws) => {
            let raw_rate = rate(events, raws.iter().sum());
            let mut ratios: Vec<f64> = rounds
                .iter()
                .zip(&raws)
                .map(|((store, _), raw)| raw.as_secs_f64() / store.as_secs_f64())
                .collect();
            ratios.sort_by(f64::total_cmp);
            let median = ratios[ratios.len() / 2];
            let range = format!("{:.2}-{:.2}", ratios[0], ratios[ratios.len() - 1]);
            println!(
                "| {backend:<10} | {:<34} | {store_rate:>12.0} | {raw_rate:>12.0} | {median:>6.2} | {range:>11} |",
                workload.name,
            );
        }
        None => println!(
            "| {backend:<10} | {:<34} | {store_rate:>12.0} | {:>12} | {:>6} | {:>11} |",
            workload.name, "-", "-", "-"
        ),
    }
}

/// How many rounds of raw and store each SQL row runs.
fn rounds() -> usize {
    std::env::var("NURSERY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5usize)
        .max(1)
}

/// Raw inserts and the store, `rounds()` times, alternating which goes first (neither always
/// meets a warmer table); each round on streams of its own.
async fn rounds_of<R, RF, S, SF>(run: usize, raw: R, store: S) -> Vec<(Duration, Option<Duration>)>
where
    R: Fn(usize) -> RF,
    RF: Future<Output = Duration>,
    S: Fn(usize) -> SF,
    SF: Future<Output = Duration>,
{
    let mut measured = Vec::new();
    for round in 0..rounds() {
        let tag = run * 100 + round;
        if round % 2 == 0 {
            let raw = raw(tag).await;
            measured.push((store(tag).await, Some(raw)));
        } else {
            let store = store(tag).await;
            measured.push((store, Some(raw(tag).await)));
        }
    }
    measured
}

fn workloads() -> Vec<Workload> {
    let workload = |name, writers, appends, per_append, group| Workload {
        name,
        writers,
        appends,
        per_append,
        group,
    };
    vec![
        workload("1 writer, 1 event/append", 1, scale(2_000), 1, 1),
        workload("1 writer, 100 events/append", 1, scale(200), 100, 1),
        workload("1 writer, 64 one-event appends/tx", 1, scale(200), 1, 64),
        workload("16 writers, 1 event/append", 16, scale(250), 1, 1),
        workload("16 writers, 100 events/append", 16, scale(20), 100, 1),
    ]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "Event store append throughput (events/s); ratio = store / raw sqlx on the same rows (median of the rounds)\n"
    );
    println!(
        "| backend    | workload                           |  store ev/s  |   raw ev/s   | ratio  | round range |"
    );
    println!(
        "|------------|------------------------------------|--------------|--------------|--------|-------------|"
    );

    let memory: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    for (run, workload) in workloads().into_iter().enumerate() {
        let elapsed = store_run(Arc::clone(&memory), workload, run).await;
        report("memory", workload, &[(elapsed, None)]);
    }

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = SqliteStore::connect(&url).await.unwrap();
    let raw_sqlite = sqlite.writer().clone();
    raw_sqlite
        .lock()
        .await
        .unwrap()
        .execute(
            "CREATE TABLE raw_events (global_position INTEGER PRIMARY KEY, aggregate_type TEXT NOT NULL, \
             aggregate_id TEXT NOT NULL, sequence INTEGER NOT NULL, event_id BLOB NOT NULL UNIQUE, \
             event_type TEXT NOT NULL, payload_revision INTEGER NOT NULL, payload_format INTEGER NOT NULL, \
             recorded_at INTEGER NOT NULL, metadata TEXT NOT NULL, payload BLOB NOT NULL, \
             UNIQUE (aggregate_type, aggregate_id, sequence))",
        )
        .await
        .unwrap();
    let sqlite: Arc<dyn EventStore> = Arc::new(sqlite);
    for (run, workload) in workloads().into_iter().enumerate() {
        let measured = rounds_of(
            run,
            |tag| raw_sqlite_run(raw_sqlite.clone(), workload, tag),
            |tag| store_run(Arc::clone(&sqlite), workload, tag),
        )
        .await;
        report("sqlite", workload, &measured);
    }

    let Some(db) = BenchDb::create("nursery_bench").await else {
        return;
    };
    let pg = db.store.clone();
    let raw_pg = pg.pool().clone();
    raw_pg
        .execute(
            "CREATE TABLE raw_events (global_position BIGSERIAL PRIMARY KEY, aggregate_type TEXT NOT NULL, \
             aggregate_id TEXT NOT NULL, sequence BIGINT NOT NULL, event_id UUID NOT NULL UNIQUE, \
             event_type TEXT NOT NULL, payload_revision INTEGER NOT NULL, payload_format SMALLINT NOT NULL, \
             recorded_at BIGINT NOT NULL, metadata JSONB NOT NULL, payload BYTEA NOT NULL, \
             UNIQUE (aggregate_type, aggregate_id, sequence))",
        )
        .await
        .unwrap();
    let pg: Arc<dyn EventStore> = Arc::new(pg);
    for (run, workload) in workloads().into_iter().enumerate() {
        let measured = rounds_of(
            run,
            |tag| raw_pg_run(raw_pg.clone(), workload, tag),
            |tag| store_run(Arc::clone(&pg), workload, tag),
        )
        .await;
        report("postgres", workload, &measured);
    }
    drop(pg);
    db.drop().await;
}
