//! The split deployment, proved with real processes on loopback: two command processes, one
//! query process and an events process (with a standby) on one fresh PostgreSQL database,
//! launched by `deploy/launch.sh`. Clients drive both command processes at the same carts and
//! products at once; mid-run the leading events process is killed with SIGKILL and the standby
//! takes over. Then: no oversell, every acknowledged command stored, the query process's views
//! equal what the store says, every purchase finished, no event applied twice.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use nursery::domain::Aggregate;
use nursery::domain::shop::{Cart, CartEvent, Product, ProductEvent};
use nursery::shop::open_stores;
use nursery::store::{Codec, RecordedEvent, stream_all};
use serde_json::{Value, json};

use crate::support::{FreshPg, Vhost};

const SECRET: &str = "deploy-secret";
const ADMIN: &str = "deploy-admin";

struct Process {
    child: Child,
    base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn launch(role: &str, url: &str, broker: &str) -> Process {
    let port = free_port();
    let child = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/launch.sh"))
        .arg(role)
        .arg(port.to_string())
        .env("NURSERY_BIN", env!("CARGO_BIN_EXE_nursery"))
        .env("NURSERY_DATABASE_URL", url)
        .env("NURSERY_BROKER_URL", broker)
        .env("NURSERY_SECRET", SECRET)
        .env("NURSERY_ADMIN_TOKEN", ADMIN)
        .env("NURSERY_RATE_LIMIT", "0")
        .env("NURSERY_SHUTDOWN_SECONDS", "2")
        // An add whose answer was lost (a timeout, a cart that kept conflicting) may leave a
        // hold without its line: the reservation keeper releases it once the cart has been
        // idle this long, which the test must be able to wait for.
        .env("NURSERY_HOLD_SECONDS", "4")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Process {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn healthy(client: &awc::Client, process: &Process) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{}/ready", process.base)).send().await {
            if response.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never got ready",
            process.base
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call(
    client: &awc::Client,
    method: &str,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let request = match method {
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    }
    .insert_header(("Authorization", format!("Bearer {token}")));
    let sent = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    };
    match sent {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let body = response
                .json::<Value>()
                .limit(1 << 20)
                .await
                .unwrap_or(Value::Null);
            (status, body)
        }
        Err(_) => (0, Value::Null),
    }
}

#[test]
fn two_command_processes_a_query_process_and_a_failing_over_events_process_stay_correct() {
    let pg = actix_rt::System::new().block_on(FreshPg::new());
    let url = pg.url.clone();
    let vhost = Vhost::new();
    let amqp = vhost.url.clone();
    // The schema first, so the processes do not race to create it.
    let migrated = Command::new(env!("CARGO_BIN_EXE_nursery"))
        .args(["migrate", "--database-url", &url])
        .status()
        .unwrap();
    assert!(migrated.success());
    let mut events_a = launch("events", &url, &amqp);
    let commands = [
        launch("command", &url, &amqp),
        launch("command", &url, &amqp),
    ];
    let query = launch("query", &url, &amqp);
    let mut events_b: Option<Process> = None;
    actix_rt::System::new().block_on(async {
        let client = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
        for process in commands.iter().chain([&query, &events_a]) {
            healthy(&client, process).await;
        }
        // The standby: it waits for the lead, so it does not answer yet.
        events_b = Some(launch("events", &url, &amqp));
        let standby = events_b.as_ref().unwrap().base.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Alive, but not ready: it stands by.
            if let Ok(response) = client.get(format!("{standby}/health")).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the standby never answered /health");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = call(&client, "GET", format!("{standby}/ready"), "", None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("standing_by")));
        let (status, body) = call(
            &client,
            "POST",
            format!("{}/api/admin/products", commands[0].base),
            ADMIN,
            Some(json!({ "id": "rare-fern", "name": "Rare fern", "price_cents": 2500, "stock": 12 })),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let (status, body) = call(
            &client,
            "POST",
            format!("{}/api/admin/products/monstera/restock", commands[1].base),
            ADMIN,
            Some(json!({ "quantity": 100 })),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let mut customers = Vec::new();
        for n in 0..8 {
            let mut response = client
                .post(format!("{}/api/sessions", commands[n % 2].base))
                .send_json(&json!({ "customer": format!("buyer-{n}") }))
                .await
                .unwrap();
            let session: Value = response.json().await.unwrap();
            let token = session["token"].as_str().unwrap().to_owned();
            let (status, cart) =
                call(&client, "POST", format!("{}/api/carts", commands[n % 2].base), &token, Some(json!({}))).await;
            assert_eq!(status, 201, "{cart}");
            customers.push((token, cart["cart_id"].as_str().unwrap().to_owned()));
        }
        // An SSE client on the query process, following one cart while both command processes
        // change it.
        let (sse_token, sse_cart) = customers[0].clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            // The query process sees the new cart once its view has caught up.
            let response = client
                .get(format!("{}/api/carts/{sse_cart}/stream", query.base))
                .insert_header(("Authorization", format!("Bearer {sse_token}")))
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .unwrap();
            if response.status().as_u16() == 200 {
                break response;
            }
            assert!(Instant::now() < deadline, "the query process never showed the cart");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let sse_events = Arc::new(Mutex::new(0usize));
        let counted = sse_events.clone();
        let sse = actix_rt::spawn(async move {
            let mut text = String::new();
            while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                *counted.lock().unwrap() = text.matches("event: cart").count();
            }
        });
        let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
        let orders = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
        let bases: Vec<String> = commands.iter().map(|p| p.base.clone()).collect();
        let mut workers = Vec::new();
        for (n, (token, cart)) in customers.clone().into_iter().enumerate() {
            let (client, bases, acknowledged, orders) =
                (client.clone(), bases.clone(), acknowledged.clone(), orders.clone());
            workers.push(actix_rt::spawn(async move {
                // Both command processes, alternately, at the same cart and the same products.
                for step in 0..12 {
                    let base = &bases[step % 2];
                    let product = if step % 3 == 0 { "rare-fern" } else { "monstera" };
                    let (status, body) = call(
                        &client,
                        "POST",
                        format!("{base}/api/carts/{cart}/items"),
                        &token,
                        Some(json!({ "product_id": product, "quantity": 1 })),
                    )
                    .await;
                    if status == 202 {
                        acknowledged.lock().unwrap().push(body["command_id"].as_str().unwrap().to_owned());
                    }
                    if step == 8 {
                        let (status, body) = call(
                            &client,
                            "DELETE",
                            format!("{base}/api/carts/{cart}/items/monstera?quantity=1"),
                            &token,
                            None,
                        )
                        .await;
                        if status == 202 {
                            acknowledged.lock().unwrap().push(body["command_id"].as_str().unwrap().to_owned());
                        }
                    }
                }
                if n % 4 != 3 {
                    let card = if n % 4 == 2 { "4000000000000002" } else { "4242424242424242" };
                    let (status, body) = call(
                        &client,
                        "POST",
                        format!("{}/api/carts/{cart}/checkout", bases[n % 2]),
                        &token,
                        Some(json!({
                            "delivery_address": { "name": "B", "street": "S", "city": "C", "postcode": "P", "country": "X" },
                            "payment": { "card_number": card }
                        })),
                    )
                    .await;
                    if status == 202 {
                        acknowledged.lock().unwrap().push(body["command_id"].as_str().unwrap().to_owned());
                        orders.lock().unwrap().push((token.clone(), body["order_id"].as_str().unwrap().to_owned()));
                    }
                }
            }));
        }
        // Mid-run, the leading events process dies; the standby takes over.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acknowledged.lock().unwrap().len() < 30 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = Command::new("kill").arg("-9").arg(events_a.child.id().to_string()).status();
        let _ = events_a.child.wait();
        // And the broker drops every connection: the relay and the followers reconnect.
        vhost.cut();
        for worker in workers {
            worker.await.unwrap();
        }
        healthy(&client, events_b.as_ref().unwrap()).await;
        let acknowledged = acknowledged.lock().unwrap().clone();
        let orders = orders.lock().unwrap().clone();
        assert!(acknowledged.len() >= 50, "the load barely ran: {}", acknowledged.len());
        assert!(!orders.is_empty());

        // Every purchase finishes, seen through the query process.
        let deadline = Instant::now() + Duration::from_secs(60);
        for (token, order) in &orders {
            loop {
                let (status, view) = call(&client, "GET", format!("{}/api/orders/{order}", query.base), token, None).await;
                if status == 200 && (view["status"] == "confirmed" || view["status"] == "cancelled") {
                    let kinds: Vec<&str> = view["timeline"].as_array().unwrap().iter().map(|t| t["type"].as_str().unwrap()).collect();
                    let unique: BTreeSet<&&str> = kinds.iter().collect();
                    assert_eq!(unique.len(), kinds.len(), "an event was applied twice: {kinds:?}");
                    break;
                }
                assert!(Instant::now() < deadline, "order {order} never finished: {view}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        // The store: every acknowledged command is there; stock conserved, never negative.
        let (store, _) = open_stores(&url).await.unwrap();
        let codec = Codec::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        let (records, stock) = loop {
            let records: Vec<RecordedEvent> = stream_all(&*store, 1).try_collect().await.unwrap();
            let mut stock: BTreeMap<String, Product> = BTreeMap::new();
            for record in records.iter().filter(|r| r.stream.aggregate_type == Product::TYPE) {
                let event: ProductEvent = codec.decode_event(record).unwrap();
                let product = stock.entry(record.stream.aggregate_id.clone()).or_default();
                product.apply(&event);
                assert!(product.conserves_stock(), "{}: not conserved at {}", record.stream.aggregate_id, record.position);
            }
            // Sagas done: nothing is held for a checked-out cart any more.
            let mut carts: BTreeMap<String, Cart> = BTreeMap::new();
            for record in records.iter().filter(|r| r.stream.aggregate_type == Cart::TYPE) {
                let event: CartEvent = codec.decode_event(record).unwrap();
                carts.entry(record.stream.aggregate_id.clone()).or_default().apply(&event);
            }
            let in_open_carts: u32 = carts
                .values()
                .filter(|c| c.status == nursery::domain::shop::cart::CartStatus::Open)
                .flat_map(|c| c.lines.values())
                .map(|l| l.quantity())
                .sum();
            let reserved: u32 = stock.values().map(|p| p.reserved).sum();
            if reserved == in_open_carts {
                break (records, stock);
            }
            if Instant::now() >= deadline {
                dump_holds(&url, &records, &stock, &codec).await;
            }
            assert!(Instant::now() < deadline, "holds never settled: {reserved} held, {in_open_carts} in open carts");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let stored: BTreeSet<String> = records
            .iter()
            .filter_map(|r| r.metadata.command_id.map(|id| id.to_string()))
            .collect();
        let lost: Vec<&String> = acknowledged.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
        assert!(stock["rare-fern"].sold + stock["rare-fern"].reserved <= 12, "rare-fern oversold");

        // The query process's views equal what the store says (a double apply would show).
        let head = store.head().await.unwrap();
        let any_token = &customers[0].0;
        let (status, catalog) = call(&client, "GET", format!("{}/api/products?min_position={head}", query.base), any_token, None).await;
        assert_eq!(status, 200, "{catalog}");
        for product in catalog.as_array().unwrap() {
            let id = product["id"].as_str().unwrap();
            assert_eq!(product["available"].as_u64(), Some(u64::from(stock[id].available)), "{id}: the catalog disagrees with the store");
        }
        for (token, cart) in &customers {
            let (status, view) = call(&client, "GET", format!("{}/api/carts/{cart}?min_position={head}", query.base), token, None).await;
            assert_eq!(status, 200, "{view}");
            let stream = nursery::store::StreamId::new("Cart", cart.clone());
            let mut state = Cart::default();
            for record in store.read_stream(&stream, 1, u64::MAX, 10_000).await.unwrap() {
                let event: CartEvent = codec.decode_event(&record).unwrap();
                state.apply(&event);
            }
            let in_store: u64 = state.lines.values().map(|l| u64::from(l.quantity())).sum();
            let in_view: u64 = view["lines"].as_array().unwrap().iter().map(|l| l["quantity"].as_u64().unwrap()).sum();
            assert_eq!(in_store, in_view, "cart {cart}: the view disagrees with the store");
        }
        // The query process reports every processor, those of the events process included,
        // and all of them reach the head.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, listed) = call(&client, "GET", format!("{}/api/admin/projections", query.base), ADMIN, None).await;
            assert_eq!(status, 200, "{listed}");
            let names: BTreeSet<&str> = listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
            for name in ["catalog", "carts", "orders", "notifications", "saga:PurchaseManagement", "saga:PaymentProcessing", "saga:CartReservations", "relay:amqp"] {
                assert!(names.contains(name), "{name} is not listed: {listed}");
            }
            let behind: Vec<&Value> = listed.as_array().unwrap().iter().filter(|p| p["position"].as_u64() < Some(head)).collect();
            if behind.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "processors never reached {head}: {behind:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The SSE client saw the cart change (its first event is the view when it connected).
        let deadline = Instant::now() + Duration::from_secs(10);
        while *sse_events.lock().unwrap() < 3 {
            assert!(Instant::now() < deadline, "the SSE client got {} events", *sse_events.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sse.abort();
        // The query process follows: a new add shows up in its view without a restart.
        let (token, cart) = &customers[3];
        let (status, added) = call(&client, "POST", format!("{}/api/carts/{cart}/items", commands[1].base), token, Some(json!({ "product_id": "nephrolepis", "quantity": 1 }))).await;
        if status == 202 {
            let position = added["position"].as_u64().unwrap();
            let (status, _) = call(&client, "GET", format!("{}/api/carts/{cart}?min_position={position}", query.base), token, None).await;
            assert_eq!(status, 200);
        }
    });
    drop(events_b);
    drop(pg);
    drop(vhost);
}

#[actix_rt::test]
async fn a_process_that_lost_the_lead_can_no_longer_commit() {
    use nursery::projections::{Commit, Leadership, PostgresReadStore, ReadStore};
    use nursery::store::{PostgresStore, StoreError};
    let pg = FreshPg::new().await;
    let store = PostgresStore::connect(&pg.url).await.unwrap();
    let read = PostgresReadStore::new(&store);
    let first = Leadership::take(read.pool(), "processors").await.unwrap();
    let zombie = read.fenced(&first);
    let commit = |position| Commit {
        name: "catalog",
        generation: 1,
        position,
        ..Commit::default()
    };
    zombie.commit(commit(1)).await.unwrap();
    // Another process waits for the lead while the first holds it.
    let pool = read.pool().clone();
    let second = actix_rt::spawn(async move { Leadership::take(&pool, "processors").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "two processes lead at once");
    // The first one's lock connection breaks (its process hangs, its network drops).
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted",
    )
    .execute(read.pool())
    .await
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the standby never took the lead")
        .unwrap()
        .unwrap();
    assert_eq!((first.epoch(), second.epoch()), (1, 2));
    tokio::time::timeout(Duration::from_secs(5), first.lost())
        .await
        .expect("the first process never noticed it lost the lead");
    assert!(matches!(
        zombie.commit(commit(2)).await,
        Err(StoreError::Fenced(_))
    ));
    assert_eq!(
        read.checkpoint("catalog", 1).await.unwrap(),
        1,
        "the zombie's commit went through"
    );
    read.fenced(&second).commit(commit(2)).await.unwrap();
    assert_eq!(read.checkpoint("catalog", 1).await.unwrap(), 2);
}

/// Prints, for every hold a product still keeps, the events of its cart and of the hold, and
/// the reservation keeper's documents and dead letters: what a failed settle needs to be read.
async fn dump_holds(
    url: &str,
    records: &[RecordedEvent],
    stock: &BTreeMap<String, Product>,
    codec: &Codec,
) {
    use sqlx::{Connection, Row};
    for (product, state) in stock {
        for (hold, held) in &state.holds {
            let cart = held
                .cart
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default();
            eprintln!(
                "== hold {hold} of {product}: {} units for cart {cart}",
                held.quantity
            );
            for record in records {
                let line = if record.stream.aggregate_type == Cart::TYPE
                    && record.stream.aggregate_id == cart
                {
                    let event: CartEvent = codec.decode_event(record).unwrap();
                    format!("{event:?}")
                } else if record.stream.aggregate_type == Product::TYPE {
                    let event: ProductEvent = codec.decode_event(record).unwrap();
                    let text = format!("{event:?}");
                    if !text.contains(hold.as_str()) {
                        continue;
                    }
                    format!("{} {text}", record.stream.aggregate_id)
                } else {
                    continue;
                };
                eprintln!(
                    "  @{} cmd={:?} {line}",
                    record.position, record.metadata.command_id
                );
            }
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let rows = sqlx::query("SELECT projection, generation, key, body::text AS body FROM documents WHERE projection LIKE '%Reservation%' AND body::text LIKE $1")
                .bind(format!("%{cart}%"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
            for row in rows {
                eprintln!(
                    "  doc {} {} {}: {}",
                    row.get::<String, _>("projection"),
                    row.get::<i32, _>("generation"),
                    row.get::<String, _>("key"),
                    row.get::<String, _>("body")
                );
            }
            let rows = sqlx::query("SELECT processor, position, error, parked FROM dead_letters")
                .fetch_all(&mut conn)
                .await
                .unwrap();
            for row in rows {
                eprintln!(
                    "  dead letter {} @{}: {} parked={}",
                    row.get::<String, _>("processor"),
                    row.get::<i64, _>("position"),
                    row.get::<String, _>("error"),
                    row.get::<bool, _>("parked")
                );
            }
        }
    }
}
