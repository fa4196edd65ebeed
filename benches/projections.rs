//! The projection benchmark: catch-up rate from position 0 over a large store, live lag
//! (commit to visible in the read model) under the runtime benchmark's load, and document
//! reads from the read model (as `GET /api/carts/{id}` makes them).
//!
//! Run: `cargo bench --bench projections` (PostgreSQL on 127.0.0.1:5432 for its rows).
//! `NURSERY_BENCH_SCALE` scales the event count (default 1.0 = 1,000,000 events);
//! `NURSERY_BENCH_BATCH` sets the runner's `batch_max` (default: the read store's preference,
//! 1,000 on SQLite, 10,000 on PostgreSQL).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark aborts on failure"
)]
#![allow(missing_docs, reason = "a benchmark binary")]

mod common;

use common::{BenchDb, scale};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nursery::actors::Runtime;
use nursery::domain::{Aggregate, Command};
use nursery::projections::{
    ApplyContext, Documents, PostgresReadStore, ProcessorConfig, Projection, ReadStore,
    SqliteReadStore, start_projection,
};
use nursery::store::{
    AppendRequest, Codec, EventStore, ExpectedVersion, Metadata, RecordedEvent, SqliteStore,
    StreamId,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemAdded {
    pub product_id: String,
    pub quantity: u32,
}

nursery::event_set! {
    /// Bench cart events.
    pub enum CartEvent { ItemAdded }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cart {
    items: u32,
}

pub struct Add;

impl Command for Add {
    fn name(&self) -> &'static str {
        "Add"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl Aggregate for Cart {
    const TYPE: &'static str = "Cart";
    type Command = Add;
    type Event = CartEvent;
    type Error = Never;

    fn decide(&self, _: &Add) -> Result<Vec<CartEvent>, Never> {
        Ok(vec![
            ItemAdded {
                product_id: "monstera".into(),
                quantity: 1,
            }
            .into(),
        ])
    }

    fn apply(&mut self, _: &CartEvent) {
        self.items += 1;
    }
}

/// Items per cart, one document per cart (1,000 carts).
struct ItemsPerCart;

impl Projection for ItemsPerCart {
    fn name(&self) -> &str {
        "items_per_cart"
    }

    fn keys(&self, event: &RecordedEvent) -> Vec<String> {
        vec![event.stream.aggregate_id.clone()]
    }

    fn apply(
        &self,
        event: &RecordedEvent,
        docs: &mut Documents,
        _: ApplyContext,
    ) -> Result<(), String> {
        let CartEvent::ItemAdded(added) = Codec::default()
            .decode_event(event)
            .map_err(|e| e.to_string())?;
        let items: u64 = docs.get_as(&event.stream.aggregate_id)?.unwrap_or(0);
        docs.put(
            event.stream.aggregate_id.clone(),
            &(items + u64::from(added.quantity)),
        )
    }
}

async fn fill(store: &Arc<dyn EventStore>, events: usize) {
    let codec = Codec::default();
    let carts = 1_000;
    let per_cart = events / carts;
    let mut versions = vec![0u64; carts];
    let started = Instant::now();
    for _round in 0..per_cart / 10 {
        let batch: Vec<AppendRequest> = (0..carts)
            .map(|c| {
                let events = (0..10)
                    .map(|_| {
                        codec
                            .encode_event(
                                &CartEvent::from(ItemAdded {
                                    product_id: "monstera".into(),
                                    quantity: 1,
                                }),
                                Metadata::default(),
                            )
                            .unwrap()
                    })
                    .collect();
                let request = AppendRequest {
                    stream: StreamId::new("Cart", format!("cart-{c:04}")),
                    expected: ExpectedVersion::Exact(versions[c]),
                    events,
                };
                versions[c] += 10;
                request
            })
            .collect();
        for result in store.append_batch(&batch).await.unwrap() {
            result.unwrap();
        }
    }
    eprintln!(
        "(filled {} events in {:.1} s)",
        store.head().await.unwrap(),
        started.elapsed().as_secs_f64()
    );
}

async fn catch_up(backend: &str, store: Arc<dyn EventStore>, read: Arc<dyn ReadStore>) {
    let events = scale(1_000_000);
    fill(&store, events).await;
    let head = store.head().await.unwrap();
    let runtime = Runtime::builder(Arc::clone(&store))
        .aggregate::<Cart>()
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let handle = start_projection(
        Arc::new(ItemsPerCart),
        Arc::clone(&store),
        Arc::clone(&read),
        runtime.broker().clone(),
        ProcessorConfig {
            batch_max: std::env::var("NURSERY_BENCH_BATCH")
                .ok()
                .and_then(|b| b.parse().ok()),
            ..ProcessorConfig::default()
        },
    )
    .await
    .unwrap();
    handle
        .wait_for(head, Duration::from_secs(3_600))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    println!(
        "| {backend:<8} | catch-up from 0 over {head} events | {:>10.0} events/s | {:>8.1} s |",
        head as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    // Live lag: 64 clients send commands; each waits until the projection shows its position.
    let gateway = runtime.gateway();
    let clients: Vec<_> = (0..64)
        .map(|client| {
            let (gateway, handle) = (gateway.clone(), handle.clone());
            actix_rt::spawn(async move {
                let mut lags = Vec::new();
                for i in 0..scale(100_000).min(200_000) / 640 {
                    let outcome = gateway
                        .send_and_wait::<Cart>(
                            &format!("cart-{:04}", (client * 13 + i) % 1000),
                            Add,
                            Metadata::default(),
                        )
                        .await
                        .unwrap();
                    let committed = Instant::now();
                    handle
                        .wait_for(outcome.position.unwrap_or(0), Duration::from_secs(60))
                        .await
                        .unwrap();
                    lags.push(committed.elapsed());
                }
                lags
            })
        })
        .collect();
    let mut lags = Vec::new();
    for client in clients {
        lags.extend(client.await.unwrap());
    }
    lags.sort_unstable();
    let at = |p: f64| lags[((lags.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "| {backend:<8} | live lag, commit to visible ({} commands, 64 clients) | p50 {:.2} ms | p99 {:.2} ms |",
        lags.len(),
        at(0.5),
        at(0.99)
    );

    document_reads(backend, &read).await;
}

/// Reads from the read model, as the HTTP facade's `GET /api/carts/{id}` does: 64 clients, each
/// getting 500 of the 1,000 carts' documents one after the other.
async fn document_reads(backend: &str, read: &Arc<dyn ReadStore>) {
    let started = Instant::now();
    let clients: Vec<_> = (0..64)
        .map(|client| {
            let read = Arc::clone(read);
            actix_rt::spawn(async move {
                for i in 0..500 {
                    let key = format!("cart-{:04}", (client * 500 + i) % 1000);
                    let document = read.get("items_per_cart", &key).await.unwrap();
                    assert!(document.is_some(), "{key} has no document");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let rate = 64.0 * 500.0 / started.elapsed().as_secs_f64();
    println!("| {backend:<8} | document reads, 64 clients | {rate:>10.0} gets/s | |");
}

fn main() {
    actix_rt::System::new().block_on(async {
        println!("Projection benchmark\n");
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let sqlite = SqliteStore::connect(&url).await.unwrap();
        let read: Arc<dyn ReadStore> = Arc::new(SqliteReadStore::new(&sqlite));
        catch_up("sqlite", Arc::new(sqlite), read).await;

        let Some(db) = BenchDb::create("nursery_pj").await else {
            return;
        };
        let read: Arc<dyn ReadStore> = Arc::new(PostgresReadStore::new(&db.store));
        catch_up("postgres", Arc::new(db.store.clone()), read).await;
        db.drop().await;
    });
}
