//! The runtime benchmark: commands through the gateway, actors, journal and store.
//!
//! Workload: 1,000 carts × 10 AddItem commands from 64 concurrent clients (one durable event
//! per command), on SQLite and PostgreSQL: each client with one command in flight (a closed
//! loop), then with one in flight on each of `NURSERY_BENCH_WINDOW` (default 4) of its carts at
//! once, then on all of its carts at once; the hot case (64 clients on one aggregate); and in
//! the same run the raw sqlx rates for the same rows (one row per transaction from 64 writers,
//! and batched). Each command row also gives the CPU time this process spent per command (all
//! its threads: clients, runtime, SQLite's worker threads; not the PostgreSQL server's), which
//! compares changes more steadily than a rate on a noisy machine. Then memory per live idle
//! actor, RSS while touching 1M carts with passivation on, and rehydration speed.
//!
//! Run: `cargo bench --bench runtime` (PostgreSQL on 127.0.0.1:5432 for its rows).
//! `NURSERY_BENCH_SCALE` scales the counts (default 1.0); `NURSERY_BENCH_CLIENTS` sets the number of
//! concurrent clients (default 64); `NURSERY_BENCH_LINGER_US` sets the journal's `max_wait`
//! (default 0); `NURSERY_BENCH_ONLY` picks sections.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark aborts on failure"
)]
#![allow(missing_docs, reason = "a benchmark binary")]

mod common;

use common::{BenchDb, scale};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nursery::actors::{PassivationConfig, Runtime, RuntimeConfig};
use nursery::domain::{Aggregate, Command};
use nursery::store::{
    AppendRequest, Codec, EventStore, EventStoreExt, ExpectedVersion, MemoryStore, Metadata,
    Repository, SnapshotPolicy, SqliteStore, SqliteWriter,
};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, Executor, QueryBuilder};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemAdded {
    pub product_id: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

nursery::event_set! {
    /// A bench cart's events.
    pub enum BenchCartEvent { ItemAdded }
}

/// A cart shaped like the shop's: lines by product.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BenchCart {
    lines: BTreeMap<String, u32>,
}

pub struct AddItem {
    product_id: String,
    quantity: u32,
}

impl Command for AddItem {
    fn name(&self) -> &'static str {
        "AddItem"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("too many items")]
pub struct TooMany;

impl Aggregate for BenchCart {
    const TYPE: &'static str = "BenchCart";
    type Command = AddItem;
    type Event = BenchCartEvent;
    type Error = TooMany;

    fn decide(&self, command: &AddItem) -> Result<Vec<BenchCartEvent>, TooMany> {
        if self.lines.values().sum::<u32>() > 1_000_000 {
            return Err(TooMany);
        }
        Ok(vec![
            ItemAdded {
                product_id: command.product_id.clone(),
                quantity: command.quantity,
                unit_price_cents: 1000,
            }
            .into(),
        ])
    }

    fn apply(&mut self, event: &BenchCartEvent) {
        match event {
            BenchCartEvent::ItemAdded(e) => {
                *self.lines.entry(e.product_id.clone()).or_default() += e.quantity
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// CPU time this process's threads have run so far (from `/proc/self/task/*/schedstat`, in
/// nanoseconds): what a command costs in CPU, steadier than a rate on a noisy machine. Threads
/// that ended are not counted (the runtime's threads live as long as the bench). `None` where
/// there is no `/proc`.
fn cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// What one workload measured.
struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time of this process per command (the database server's not included).
    cpu_per_command: Option<Duration>,
}

/// `clients` tasks; client c sends `per_cart` AddItem to each cart whose index is c mod clients
/// (or to one cart in the hot case). Answers commands/s, p50, p99 and CPU per command.
async fn drive(
    runtime: &Runtime,
    tag: &str,
    carts: usize,
    per_cart: usize,
    clients: usize,
    window: usize,
    hot: bool,
) -> Measured {
    let gateway = runtime.gateway();
    let cpu_before = cpu_time();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let gateway = gateway.clone();
            let tag = tag.to_owned();
            actix_rt::spawn(async move {
                // Up to `window` of this client's carts at once, each cart's commands in turn.
                let per_cart_latencies: Vec<Vec<Duration>> =
                    futures_util::stream::iter((client..carts).step_by(clients))
                        .map(|cart| {
                            let id = if hot {
                                format!("{tag}-hot")
                            } else {
                                format!("{tag}-{cart}")
                            };
                            let gateway = gateway.clone();
                            async move {
                                let mut latencies = Vec::with_capacity(per_cart);
                                for item in 0..per_cart {
                                    let sent = Instant::now();
                                    let command = AddItem {
                                        product_id: format!("plant-{}", item % 3),
                                        quantity: 1,
                                    };
                                    gateway
                                        .send_and_wait::<BenchCart>(
                                            &id,
                                            command,
                                            Metadata::default(),
                                        )
                                        .await
                                        .unwrap();
                                    latencies.push(sent.elapsed());
                                }
                                latencies
                            }
                        })
                        .buffer_unordered(window)
                        .collect()
                        .await;
                per_cart_latencies.concat()
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    let cpu = cpu_before
        .zip(cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    latencies.sort_unstable();
    Measured {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        cpu_per_command: cpu.map(|cpu| cpu / latencies.len().max(1) as u32),
    }
}

fn row(backend: &str, what: &str, rate: f64, measured: Option<&Measured>) {
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_owned(), |d| {
            format!("{:.2}", d.as_secs_f64() * 1000.0)
        })
    };
    let cpu = measured
        .and_then(|m| m.cpu_per_command)
        .map_or("-".to_owned(), |cpu| {
            format!("{:.1}", cpu.as_secs_f64() * 1e6)
        });
    println!(
        "| {backend:<8} | {what:<46} | {rate:>10.0} | {:>8} | {:>8} | {cpu:>10} |",
        ms(measured.map(|m| m.p50)),
        ms(measured.map(|m| m.p99))
    );
}

fn measured_row(backend: &str, what: &str, measured: &Measured) {
    row(backend, what, measured.rate, Some(measured));
}

async fn runtime_rows(backend: &str, store: Arc<dyn EventStore>) {
    let mut config = RuntimeConfig::default();
    if let Some(linger) = std::env::var("NURSERY_BENCH_LINGER_US")
        .ok()
        .and_then(|l| l.parse().ok())
    {
        config.journal.max_wait = Duration::from_micros(linger);
    }
    let runtime = Runtime::builder(Arc::clone(&store))
        .config(config)
        .aggregate::<BenchCart>()
        .start()
        .await
        .unwrap();
    let clients = std::env::var("NURSERY_BENCH_CLIENTS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let (carts, per_cart) = (scale(1_000), 10);
    drive(&runtime, "warm", 64, 2, clients, 1, false).await;
    let measured = drive(&runtime, "carts", carts, per_cart, clients, 1, false).await;
    measured_row(
        backend,
        &format!("{carts} carts x {per_cart} AddItem, {clients} clients"),
        &measured,
    );
    let window = std::env::var("NURSERY_BENCH_WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(4);
    let measured = drive(&runtime, "window", carts, per_cart, clients, window, false).await;
    measured_row(
        backend,
        &format!("the same, each client {window} of its carts at once"),
        &measured,
    );
    let measured = drive(&runtime, "many", carts, per_cart, clients, carts, false).await;
    measured_row(
        backend,
        "the same, each client all its carts at once",
        &measured,
    );
    let measured = drive(&runtime, "hot", clients * scale(40), 1, clients, 1, true).await;
    measured_row(
        backend,
        &format!("hot: {clients} clients on one cart"),
        &measured,
    );
}

fn event_row(stream: &str, sequence: usize) -> (String, i64, Uuid, Vec<u8>) {
    let payload = nursery::store::PayloadFormat::MessagePack
        .encode(&ItemAdded {
            product_id: "plant-1".into(),
            quantity: 1,
            unit_price_cents: 1000,
        })
        .unwrap();
    (
        stream.to_owned(),
        sequence as i64,
        nursery::store::ids::fresh(),
        payload,
    )
}

/// Raw sqlx on the store's own writer connection (no pool in between).
async fn raw_sqlite(writer: SqliteWriter) {
    writer.lock().await.unwrap().execute("CREATE TABLE raw_rt (pos INTEGER PRIMARY KEY, aggregate_id TEXT NOT NULL, sequence INTEGER NOT NULL, event_id BLOB NOT NULL UNIQUE, payload BLOB NOT NULL, UNIQUE (aggregate_id, sequence))").await.unwrap();
    let n = scale(2_000);
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let writer = writer.clone();
            actix_rt::spawn(async move {
                for i in (w..n).step_by(64) {
                    let (stream, seq, id, payload) = event_row(&format!("s-{w}"), i);
                    let mut conn = writer.lock().await.unwrap();
                    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
                    sqlx::query("INSERT INTO raw_rt (aggregate_id, sequence, event_id, payload) VALUES (?, ?, ?, ?)")
                        .bind(stream).bind(seq).bind(id).bind(payload).execute(&mut *tx).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    row(
        "sqlite",
        "raw sqlx: 1 row per transaction, 64 writers",
        n as f64 / start.elapsed().as_secs_f64(),
        None,
    );
    let rows = scale(100_000);
    let start = Instant::now();
    for chunk in 0..rows / 1000 {
        let mut conn = writer.lock().await.unwrap();
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let mut query =
            QueryBuilder::new("INSERT INTO raw_rt (aggregate_id, sequence, event_id, payload) ");
        query.push_values(0..1000, |mut b, i| {
            let (stream, seq, id, payload) = event_row(&format!("b-{chunk}"), i);
            b.push_bind(stream)
                .push_bind(seq)
                .push_bind(id)
                .push_bind(payload);
        });
        query.build().execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    row(
        "sqlite",
        "raw sqlx: batched, 1000 rows per transaction",
        rows as f64 / start.elapsed().as_secs_f64(),
        None,
    );
}

async fn raw_postgres(pool: sqlx::PgPool) {
    pool.execute("CREATE TABLE raw_rt (pos BIGSERIAL PRIMARY KEY, aggregate_id TEXT NOT NULL, sequence BIGINT NOT NULL, event_id UUID NOT NULL UNIQUE, payload BYTEA NOT NULL, UNIQUE (aggregate_id, sequence))").await.unwrap();
    let n = scale(10_000);
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let pool = pool.clone();
            actix_rt::spawn(async move {
                for i in (w..n).step_by(64) {
                    let (stream, seq, id, payload) = event_row(&format!("s-{w}"), i);
                    let mut tx = pool.begin().await.unwrap();
                    sqlx::query("INSERT INTO raw_rt (aggregate_id, sequence, event_id, payload) VALUES ($1, $2, $3, $4)")
                        .bind(stream).bind(seq).bind(id).bind(payload).execute(&mut *tx).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    row(
        "postgres",
        "raw sqlx: 1 row per transaction, 64 writers",
        n as f64 / start.elapsed().as_secs_f64(),
        None,
    );
    let rows = scale(100_000);
    let start = Instant::now();
    for chunk in 0..rows / 1000 {
        let mut tx = pool.begin().await.unwrap();
        let mut query =
            QueryBuilder::new("INSERT INTO raw_rt (aggregate_id, sequence, event_id, payload) ");
        query.push_values(0..1000, |mut b, i| {
            let (stream, seq, id, payload) = event_row(&format!("b-{chunk}"), i);
            b.push_bind(stream)
                .push_bind(seq)
                .push_bind(id)
                .push_bind(payload);
        });
        query.build().execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    row(
        "postgres",
        "raw sqlx: batched, 1000 rows per transaction",
        rows as f64 / start.elapsed().as_secs_f64(),
        None,
    );
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn memory_rows() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let config = RuntimeConfig {
        passivation: PassivationConfig {
            idle_timeout: Duration::from_secs(3600),
            max_live: usize::MAX,
        },
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::builder(Arc::clone(&store))
        .config(config)
        .aggregate::<BenchCart>()
        .start()
        .await
        .unwrap();
    let registry = runtime.gateway().registry::<BenchCart>().unwrap();
    let n = scale(100_000);
    // Warm the allocator and the runtime first.
    for i in 0..1_000 {
        drop(registry.get(&format!("warm-{i}")));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    let mut addrs = 0;
    for i in 0..n {
        let _ = registry.get(&format!("cart-{i:08}"));
        addrs += 1;
        if i % 10_000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Let every actor start and rehydrate (an empty stream), so it is live and idle.
    while registry
        .counters()
        .live
        .load(std::sync::atomic::Ordering::Relaxed)
        < n + 1_000
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = rss_bytes();
    println!(
        "\nmemory: {} live idle cart actors (registry entry included): {:.0} bytes each",
        addrs,
        (after.saturating_sub(before)) as f64 / n as f64
    );

    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let config = RuntimeConfig {
        passivation: PassivationConfig {
            idle_timeout: Duration::from_secs(3600),
            max_live: 10_000,
        },
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::builder(store)
        .config(config)
        .aggregate::<BenchCart>()
        .start()
        .await
        .unwrap();
    let gateway = runtime.gateway();
    let registry = gateway.registry::<BenchCart>().unwrap();
    let total = scale(1_000_000);
    let mut line = String::from("RSS while touching carts with passivation on (max 10k live):");
    let tasks = 64;
    let mut done = 0;
    let mut checkpoints = vec![total / 10, total / 4, total / 2, total * 3 / 4, total];
    checkpoints.dedup();
    for checkpoint in checkpoints {
        let from = done;
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let registry = Arc::clone(&registry);
                actix_rt::spawn(async move {
                    for i in (from + t..checkpoint).step_by(tasks) {
                        let addr = registry.get(&format!("touch-{i:08}"));
                        drop(addr);
                        if i % 256 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        done = checkpoint;
        tokio::time::sleep(Duration::from_millis(300)).await;
        line.push_str(&format!(
            " {}k: {} MiB ({} running);",
            checkpoint / 1000,
            rss_bytes() / (1 << 20),
            registry
                .counters()
                .live
                .load(std::sync::atomic::Ordering::Relaxed)
        ));
    }
    println!("{line} live now: {}", registry.live());
}

async fn rehydration_rows(backend: &str, store: Arc<dyn EventStore>) {
    let codec = Codec::default();
    let events = scale(10_000);
    let conversation = Uuid::now_v7();
    for chunk in 0..events.div_ceil(1000) {
        let batch: Vec<_> = (0..1000.min(events - chunk * 1000))
            .map(|i| {
                codec
                    .encode_event(
                        &BenchCartEvent::from(ItemAdded {
                            product_id: format!("plant-{}", i % 7),
                            quantity: 1,
                            unit_price_cents: 1000,
                        }),
                        // As the gateway writes it: each event its command, the
                        // conversation and the customer.
                        Metadata {
                            command_id: Some(Uuid::now_v7()),
                            correlation_id: Some(conversation),
                            causation_id: Some(conversation),
                            customer_id: Some("customer-1".into()),
                            ..Metadata::default()
                        },
                    )
                    .unwrap()
            })
            .collect();
        store
            .append(AppendRequest {
                stream: nursery::store::StreamId::new("BenchCart", "long"),
                expected: ExpectedVersion::Exact((chunk * 1000) as u64),
                events: batch,
            })
            .await
            .unwrap();
    }
    let plain =
        Repository::<BenchCart>::new(Arc::clone(&store), codec.clone(), SnapshotPolicy::NEVER);
    let _ = plain.load("long").await.unwrap();
    // The median of 5 loads, then of 5 folds of the same events read in full (every column,
    // metadata parsed), as loads did before they read only what decoding needs.
    let mut loads = Vec::new();
    let mut loaded = None;
    for _ in 0..5 {
        let start = Instant::now();
        loaded = Some(plain.load("long").await.unwrap());
        loads.push(start.elapsed());
    }
    let loaded = loaded.unwrap();
    let mut full_reads = Vec::new();
    let stream = Repository::<BenchCart>::stream("long");
    for _ in 0..5 {
        let start = Instant::now();
        let mut state = BenchCart::default();
        let mut read = nursery::store::stream_events(store.as_ref(), &stream, 1);
        while let Some(record) = read.next().await {
            state.apply(
                &codec
                    .decode_event::<BenchCartEvent>(&record.unwrap())
                    .unwrap(),
            );
        }
        full_reads.push(start.elapsed());
        assert_eq!(state.lines, loaded.state.lines);
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort_unstable();
        times[times.len() / 2]
    };
    let (load, full) = (median(&mut loads), median(&mut full_reads));
    println!(
        "rehydration, {backend}: {} events folded without a snapshot in {:.1} ms = {:.0} events/s \
         (median of 5); read in full: {:.1} ms = {:.0} events/s",
        loaded.replayed,
        load.as_secs_f64() * 1000.0,
        loaded.replayed as f64 / load.as_secs_f64(),
        full.as_secs_f64() * 1000.0,
        loaded.replayed as f64 / full.as_secs_f64(),
    );
    let snapshotting = Repository::<BenchCart>::new(
        Arc::clone(&store),
        codec,
        SnapshotPolicy {
            every: 100,
            keep: 2,
        },
    );
    snapshotting
        .snapshot("long", &loaded.state, (events - 50) as u64)
        .await
        .unwrap();
    let start = Instant::now();
    let with_snapshot = snapshotting.load("long").await.unwrap();
    let first = start.elapsed();
    // The first load after the snapshot's write, then the median of 21 more.
    let mut again = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        let _ = snapshotting.load("long").await.unwrap();
        again.push(start.elapsed());
    }
    let again = median(&mut again);
    println!(
        "rehydration, {backend}: loaded from a snapshot plus {} events in {:.2} ms (first), \
         {:.2} ms (median of 21 more)",
        with_snapshot.replayed,
        first.as_secs_f64() * 1000.0,
        again.as_secs_f64() * 1000.0
    );
}

/// Whether a section runs: `NURSERY_BENCH_ONLY=memory,rehydration` picks sections
/// (`commands`, `rehydration`, `memory`); unset runs all.
fn section(name: &str) -> bool {
    std::env::var("NURSERY_BENCH_ONLY")
        .map_or(true, |only| only.split(',').any(|s| s.trim() == name))
}

/// Whether a backend runs: `NURSERY_BENCH_BACKENDS=postgres` picks backends (`memory`,
/// `sqlite`, `postgres`); unset runs all.
fn backend(name: &str) -> bool {
    std::env::var("NURSERY_BENCH_BACKENDS")
        .map_or(true, |only| only.split(',').any(|s| s.trim() == name))
}

fn main() {
    actix_rt::System::new().block_on(async {
        println!("Runtime benchmark: commands through gateway, actor, journal and store\n");
        println!("| backend  | workload                                       | cmds/s     | p50 ms   | p99 ms   | CPU µs/cmd |");
        println!("|----------|------------------------------------------------|------------|----------|----------|------------|");
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let sqlite = SqliteStore::connect(&url).await.unwrap();
        let raw = sqlite.writer().clone();
        if section("commands") && backend("sqlite") {
            runtime_rows("sqlite", Arc::new(sqlite.clone())).await;
            raw_sqlite(raw).await;
        }

        let pg_store = if backend("postgres") {
            BenchDb::create("nursery_rt").await
        } else {
            None
        };
        if let Some(db) = &pg_store {
            if section("commands") {
                runtime_rows("postgres", Arc::new(db.store.clone())).await;
                raw_postgres(db.store.pool().clone()).await;
            }
        }

        println!();
        if section("rehydration") {
            if backend("memory") {
                rehydration_rows("memory", Arc::new(MemoryStore::new())).await;
            }
            if backend("sqlite") {
                let dir2 = tempfile::tempdir().unwrap();
                let url2 = format!("sqlite://{}", dir2.path().join("rehydrate.db").display());
                let store = SqliteStore::connect(&url2).await.unwrap();
                rehydration_rows("sqlite", Arc::new(store)).await;
            }
            if let Some(db) = &pg_store {
                rehydration_rows("postgres", Arc::new(db.store.clone())).await;
            }
        }
        if section("memory") {
            memory_rows().await;
        }

        if let Some(db) = pg_store {
            db.drop().await;
        }
    });
}
