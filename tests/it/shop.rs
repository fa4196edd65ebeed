//! The plant shop end to end through the runtime, on the in-memory store, on SQLite and (for
//! the main flows) on PostgreSQL: purchases paid, declined, timed out; processes stopped and
//! started again mid-purchase; a provider that charges and then times out; rebuilt read models;
//! stock fought over by 64 clients. After every test, stock is conserved.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use nursery::clock::{Clock, ManualClock};
use nursery::domain::Aggregate;
use nursery::domain::shop::{
    Address, CardNumber, CartId, CustomerId, Money, OrderId, Product, ProductCommand, ProductEvent,
    ProductId, Quantity,
};
use nursery::projections::ReadStore;
use nursery::projections::SagaConfig;
use nursery::projections::shop::MemoryNotifier;
use nursery::shop::{Nursery, ShopError, ShopOptions, SimulatedProvider, View, open_stores};
use nursery::store::{Codec, EventStore, RecordedEvent, stream_all};
use nursery::testkit::FaultyStore;
use tempfile::TempDir;

use crate::support::FreshPg;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Db {
    Memory,
    Sqlite,
    Postgres,
}

/// What outlives one process of the shop: the database, the payment provider (it is someone
/// else's service), the customers' inboxes, and the clock.
struct World {
    url: String,
    memory: Option<(Arc<dyn EventStore>, Arc<dyn ReadStore>)>,
    clock: Arc<ManualClock>,
    provider: SimulatedProvider,
    notifier: MemoryNotifier,
    _dir: Option<TempDir>,
    _pg: Option<FreshPg>,
}

/// Runs one process's life on a fresh actix system; when `life` returns, the system and
/// everything on it is dropped at once, as a killed process's would be. Only the stores keep
/// what was durable.
fn process<F: Future>(life: F) -> F::Output {
    actix_rt::System::new().block_on(life)
}

impl World {
    fn new(db: Db) -> Self {
        let (url, memory, dir, pg) = match db {
            Db::Memory => (
                "memory://".to_owned(),
                Some(process(open_stores("memory://")).unwrap()),
                None,
                None,
            ),
            Db::Sqlite => {
                let dir = TempDir::new().unwrap();
                let url = format!("sqlite://{}", dir.path().join("shop.db").display());
                (url, None, Some(dir), None)
            }
            Db::Postgres => {
                let pg = process(FreshPg::new());
                (pg.url.clone(), None, None, Some(pg))
            }
        };
        Self {
            url,
            memory,
            clock: Arc::new(ManualClock::default()),
            provider: SimulatedProvider::new(),
            notifier: MemoryNotifier::default(),
            _dir: dir,
            _pg: pg,
        }
    }

    async fn stores(&self) -> (Arc<dyn EventStore>, Arc<dyn ReadStore>) {
        match &self.memory {
            Some((events, read)) => (Arc::clone(events), Arc::clone(read)),
            None => open_stores(&self.url).await.unwrap(),
        }
    }

    async fn start(&self) -> Nursery {
        let (events, read) = self.stores().await;
        self.start_on(events, read).await
    }

    async fn start_on(&self, events: Arc<dyn EventStore>, read: Arc<dyn ReadStore>) -> Nursery {
        let options = ShopOptions {
            hold_seconds: 600,
            payment_timeout_seconds: 900,
            sagas: SagaConfig {
                tick: Duration::from_millis(20),
                ..SagaConfig::default()
            },
            ..ShopOptions::default()
        };
        Nursery::builder()
            .stores(events, read)
            .options(options)
            .clock(Arc::clone(&self.clock) as Arc<dyn Clock>)
            .payment_provider(Arc::new(self.provider.clone()))
            .notifier(Arc::new(self.notifier.clone()))
            .start()
            .await
            .unwrap()
    }

    /// Moves the clock once the shop has handled everything so far (a saga takes the time
    /// of a step when it handles the event).
    async fn advance(&self, shop: &Nursery, seconds: i64) {
        shop.settle(Duration::from_secs(10)).await.unwrap();
        self.clock.advance(chrono::Duration::seconds(seconds));
    }
}

macro_rules! eventually {
    ($what:expr, $check:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(value) = $check {
                break value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {}", $what);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }};
}

fn customer(name: &str) -> CustomerId {
    CustomerId::parse(name).unwrap()
}

fn product(id: &str) -> ProductId {
    ProductId::parse(id).unwrap()
}

fn qty(n: i64) -> Quantity {
    Quantity::parse(n).unwrap()
}

fn address() -> Address {
    Address::parse("Ada Lovelace", "1 Leaf Lane", "Kew", "TW9 3AB", "UK").unwrap()
}

fn card(number: &str) -> CardNumber {
    CardNumber::parse(number).unwrap()
}

const PAYS: &str = "4242424242424242";
const DECLINED: &str = "4000000000000002";
const NO_FUNDS: &str = "4000000000009995";

/// Opens a cart for `who` with `items` in it; answers the cart.
async fn cart_with(nursery: &Nursery, who: &CustomerId, items: &[(&str, i64)]) -> CartId {
    let cart = nursery.open_cart(who, None).await.unwrap().cart_id;
    for (id, n) in items {
        nursery
            .add_item(who, &cart, &product(id), qty(*n), None)
            .await
            .unwrap();
    }
    cart
}

async fn order_in(
    nursery: &Nursery,
    who: &CustomerId,
    order: &OrderId,
    status: &str,
) -> nursery::projections::shop::OrderView {
    eventually!(format!("order {order} to be {status}"), {
        match nursery.order(who, order).await {
            Ok(view) if view.status == status => Some(view),
            _ => None,
        }
    })
}

/// Every product's stock, replayed from the store with signed arithmetic: the shelf never went
/// below zero, and what came in equals what is on the shelf, held and sold. Then the products'
/// actors and the catalog (once caught up) say the same. Answers (available, reserved, sold).
async fn assert_conserved(nursery: &Nursery) -> HashMap<String, (i64, i64, i64)> {
    // Sagas may still be writing: compare only a quiet moment, when the head did not move
    // while the events, the actors and the catalog were read.
    for _ in 0..200 {
        let before = nursery.runtime().store().head().await.unwrap();
        let answer = conserved_at(nursery, before).await;
        if nursery.runtime().store().head().await.unwrap() == before {
            if let Some(answer) = answer {
                return answer;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("stock is not conserved, or the shop never went quiet");
}

async fn conserved_at(nursery: &Nursery, head: u64) -> Option<HashMap<String, (i64, i64, i64)>> {
    let store = nursery.runtime().store();
    let records: Vec<RecordedEvent> = stream_all(&**store, 1).try_collect().await.unwrap();
    let codec = Codec::default();
    // (received, available, reserved, sold)
    let mut stock: HashMap<String, (i64, i64, i64, i64)> = HashMap::new();
    for record in records
        .iter()
        .filter(|r| r.stream.aggregate_type == Product::TYPE)
    {
        let event: ProductEvent = codec.decode_event(record).unwrap();
        let s = stock.entry(record.stream.aggregate_id.clone()).or_default();
        match event {
            ProductEvent::ProductCreated(e) => {
                s.0 += i64::from(e.stock);
                s.1 += i64::from(e.stock);
            }
            ProductEvent::StockRestocked(e) => {
                s.0 += i64::from(e.quantity);
                s.1 += i64::from(e.quantity);
            }
            ProductEvent::StockReserved(e) => {
                s.1 -= i64::from(e.quantity);
                s.2 += i64::from(e.quantity);
            }
            ProductEvent::StockReleased(e) => {
                s.1 += i64::from(e.quantity);
                s.2 -= i64::from(e.quantity);
            }
            ProductEvent::StockSold(e) => {
                s.2 -= i64::from(e.quantity);
                s.3 += i64::from(e.quantity);
            }
            ProductEvent::StockReturned(e) => {
                s.3 -= i64::from(e.quantity);
                s.1 += i64::from(e.quantity);
            }
        }
        assert!(
            s.1 >= 0,
            "{}: the shelf went negative at position {}",
            record.stream.aggregate_id,
            record.position
        );
        assert!(
            s.2 >= 0 && s.3 >= 0,
            "{}: negative holds or sales",
            record.stream.aggregate_id
        );
        assert_eq!(
            s.0,
            s.1 + s.2 + s.3,
            "{}: stock not conserved",
            record.stream.aggregate_id
        );
    }
    if records.last().map_or(0, |r| r.position) != head {
        return None;
    }
    for view in [View::Catalog] {
        nursery.wait_for(view, head).await.unwrap();
    }
    let mut answer = HashMap::new();
    for (id, (_, available, reserved, sold)) in stock {
        let actor = nursery
            .runtime()
            .gateway()
            .inspect::<Product, _>(&id, |p, _| {
                (p.available, p.reserved, p.sold, p.conserves_stock())
            })
            .await
            .unwrap();
        let view = nursery.product(&product(&id)).await.unwrap();
        let seen = [
            (
                i64::from(actor.0),
                i64::from(actor.1),
                i64::from(actor.2),
                actor.3,
            ),
            (
                i64::from(view.available),
                i64::from(view.reserved),
                i64::from(view.sold),
                true,
            ),
        ];
        if seen != [(available, reserved, sold, true); 2] {
            return None;
        }
        answer.insert(id, (available, reserved, sold));
    }
    Some(answer)
}

async fn count_events(nursery: &Nursery, event_type: &str) -> usize {
    let store = nursery.runtime().store();
    let records: Vec<RecordedEvent> = stream_all(&**store, 1).try_collect().await.unwrap();
    records
        .iter()
        .filter(|r| r.event_type == event_type)
        .count()
}

macro_rules! on_backends {
    ($test:ident, [$($db:ident),+]) => {
        mod $test {
            $(
                #[test]
                #[allow(non_snake_case)]
                fn $db() {
                    super::$test(super::Db::$db);
                }
            )+
        }
    };
}

fn a_paid_order_ends_confirmed_with_the_stock_sold(db: Db) {
    let world = World::new(db);
    process(async {
        let shop = world.start().await;
        let alice = customer("alice");
        let cart = cart_with(&shop, &alice, &[("monstera", 2), ("nephrolepis", 1)]).await;
        let view = eventually!("the cart view", {
            shop.cart(&alice, &cart)
                .await
                .ok()
                .filter(|v| v.lines.len() == 2)
        });
        assert_eq!(view.total_cents, 3000);
        let order = shop
            .checkout(&alice, &cart, address(), &card(PAYS), None)
            .await
            .unwrap()
            .order_id;
        let view = order_in(&shop, &alice, &order, "confirmed").await;
        assert_eq!(view.total_cents, 3000);
        assert_eq!(
            view.invoice.as_ref().map(|i| i.status.as_str()),
            Some("paid")
        );
        assert_eq!(
            view.delivery.as_ref().map(|d| d.status.as_str()),
            Some("released")
        );
        let kinds: Vec<&str> = view.timeline.iter().map(|t| t.kind.as_str()).collect();
        for expected in [
            "OrderPlaced",
            "PaymentRequested",
            "PaymentSucceeded",
            "OrderPaid",
            "OrderConfirmed",
        ] {
            assert!(
                kinds.contains(&expected),
                "{expected} missing from {kinds:?}"
            );
        }
        let stock = assert_conserved(&shop).await;
        assert_eq!(stock["monstera"], (8, 0, 2));
        assert_eq!(stock["nephrolepis"], (9, 0, 1));
        assert_eq!(stock["white-gardenia"], (10, 0, 0));
        let inbox = eventually!("the confirmation", {
            shop.notifications(&alice)
                .await
                .ok()
                .filter(|n| !n.is_empty())
        });
        assert_eq!(inbox[0].kind, "order_confirmed");
        assert_eq!(world.notifier.sent().len(), 1);
        assert_eq!(world.provider.charges_taken(), 1);
    });
}
on_backends!(
    a_paid_order_ends_confirmed_with_the_stock_sold,
    [Memory, Sqlite, Postgres]
);

fn a_refused_card_cancels_the_order_and_compensates_everything(db: Db) {
    let world = World::new(db);
    process(async {
        let shop = world.start().await;
        let alice = customer("alice");
        for (number, reason) in [
            (DECLINED, "card declined"),
            (NO_FUNDS, "insufficient funds"),
        ] {
            let cart = cart_with(&shop, &alice, &[("white-gardenia", 3)]).await;
            let order = shop
                .checkout(&alice, &cart, address(), &card(number), None)
                .await
                .unwrap()
                .order_id;
            let view = order_in(&shop, &alice, &order, "cancelled").await;
            assert!(
                view.cancel_reason
                    .as_deref()
                    .unwrap_or_default()
                    .contains(reason)
            );
            assert!(view.timeline.iter().any(|t| t.text.contains(reason)));
            let view = eventually!("the compensations", {
                shop.order(&alice, &order).await.ok().filter(|v| {
                    v.invoice.as_ref().is_some_and(|i| i.status == "voided")
                        && v.delivery.as_ref().is_some_and(|d| d.status == "cancelled")
                })
            });
            assert_eq!(view.status, "cancelled");
            let stock = eventually!("the stock back on the shelf", {
                let stock = assert_conserved(&shop).await;
                Some(stock).filter(|s| s["white-gardenia"] == (10, 0, 0))
            });
            assert_eq!(stock["white-gardenia"], (10, 0, 0));
        }
        let inbox = eventually!("two cancellations", {
            shop.notifications(&alice)
                .await
                .ok()
                .filter(|n| n.len() == 2)
        });
        assert!(inbox.iter().all(|n| n.kind == "order_cancelled"));
        assert_eq!(world.provider.charges_taken(), 0);
    });
}
on_backends!(
    a_refused_card_cancels_the_order_and_compensates_everything,
    [Memory, Sqlite, Postgres]
);

fn no_payment_answer_by_the_deadline_compensates_and_never_charges(db: Db) {
    let world = World::new(db);
    world.provider.be_unavailable(usize::MAX);
    process(async {
        let shop = world.start().await;
        let alice = customer("alice");
        let cart = cart_with(&shop, &alice, &[("monstera", 1)]).await;
        let order = shop
            .checkout(&alice, &cart, address(), &card(PAYS), None)
            .await
            .unwrap()
            .order_id;
        eventually!("the payment to be tried", {
            Some(()).filter(|()| world.provider.charge_calls() >= 2)
        });
        assert_eq!(shop.order(&alice, &order).await.unwrap().status, "placed");
        world.advance(&shop, 901).await;
        let view = order_in(&shop, &alice, &order, "cancelled").await;
        assert!(view.cancel_reason.unwrap().contains("timed out"));
        // The provider comes back: the charge still waiting is not made on an abandoned payment.
        world.provider.be_unavailable(0);
        eventually!("the stock back", {
            let stock = assert_conserved(&shop).await;
            Some(()).filter(|()| stock["monstera"] == (10, 0, 0))
        });
        let abandoned = count_events(&shop, "PaymentAbandoned").await;
        assert_eq!(abandoned, 1);
        tokio::time::sleep(Duration::from_millis(200)).await; // ticks in which a charge could go out
        assert_eq!(world.provider.outcome_of(&format!("pay-{order}")), None);
        assert_eq!(world.provider.charges_taken(), 0);
    });
}
on_backends!(
    no_payment_answer_by_the_deadline_compensates_and_never_charges,
    [Memory, Sqlite]
);

fn a_process_stopped_just_after_checkout_finishes_the_purchase_when_started_again(db: Db) {
    let world = World::new(db);
    world.provider.be_unavailable(usize::MAX); // nothing gets past the payment in process 1
    let alice = customer("alice");
    let order = process(async {
        let shop = world.start().await;
        let cart = cart_with(&shop, &alice, &[("monstera", 2)]).await;
        shop.checkout(&alice, &cart, address(), &card(PAYS), None)
            .await
            .unwrap()
            .order_id
    });
    world.provider.be_unavailable(0);
    process(async {
        let shop = world.start().await;
        order_in(&shop, &alice, &order, "confirmed").await;
        eventually!("the stock sold", {
            let stock = assert_conserved(&shop).await;
            Some(()).filter(|()| stock["monstera"] == (8, 0, 2))
        });
        assert_eq!(world.provider.charges_taken(), 1);
        assert_eq!(count_events(&shop, "OrderPlaced").await, 1);
        assert_eq!(count_events(&shop, "InvoiceCreated").await, 1);
    });
}
on_backends!(
    a_process_stopped_just_after_checkout_finishes_the_purchase_when_started_again,
    [Memory, Sqlite]
);

fn a_process_killed_after_the_payment_failed_compensates_exactly_once_after_restart(db: Db) {
    let world = World::new(db);
    let alice = customer("alice");
    let order = process(async {
        let (events, read) = world.stores().await;
        let dying = Arc::new(FaultyStore::new(events));
        dying.die_after("PaymentFailed");
        let shop = world
            .start_on(Arc::clone(&dying) as Arc<dyn EventStore>, read)
            .await;
        let cart = cart_with(&shop, &alice, &[("nephrolepis", 4)]).await;
        let order = shop
            .checkout(&alice, &cart, address(), &card(DECLINED), None)
            .await
            .unwrap()
            .order_id;
        eventually!("PaymentFailed to be stored", {
            Some(()).filter(|()| dying.died())
        });
        tokio::time::sleep(Duration::from_millis(100)).await; // let the saga try, and fail
        order
    });
    process(async {
        let (events, _) = world.stores().await;
        let stored: Vec<RecordedEvent> = stream_all(&*events, 1).try_collect().await.unwrap();
        assert!(stored.iter().any(|e| e.event_type == "PaymentFailed"));
        assert!(
            !stored.iter().any(|e| e.event_type == "StockReleased"),
            "released before the kill"
        );
        let shop = world.start().await;
        order_in(&shop, &alice, &order, "cancelled").await;
        eventually!("the stock back", {
            let stock = assert_conserved(&shop).await;
            Some(()).filter(|()| stock["nephrolepis"] == (10, 0, 0))
        });
        shop.settle(Duration::from_secs(5)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // any double would show by now
        assert_eq!(count_events(&shop, "StockReleased").await, 1);
        assert_eq!(count_events(&shop, "OrderCancelled").await, 1);
        assert_eq!(count_events(&shop, "InvoiceVoided").await, 1);
        assert_eq!(count_events(&shop, "DeliveryCancelled").await, 1);
        assert_eq!(count_events(&shop, "CustomerNotified").await, 1);
    });
}
on_backends!(
    a_process_killed_after_the_payment_failed_compensates_exactly_once_after_restart,
    [Memory, Sqlite]
);

fn a_provider_that_times_out_after_charging_is_retried_and_charges_once(db: Db) {
    let world = World::new(db);
    world.provider.time_out_after_charging(2);
    process(async {
        let shop = world.start().await;
        let alice = customer("alice");
        let cart = cart_with(&shop, &alice, &[("monstera", 1)]).await;
        let order = shop
            .checkout(&alice, &cart, address(), &card(PAYS), None)
            .await
            .unwrap()
            .order_id;
        order_in(&shop, &alice, &order, "confirmed").await;
        assert_eq!(world.provider.charge_calls(), 3);
        assert_eq!(world.provider.charges_taken(), 1);
        assert_eq!(count_events(&shop, "PaymentSucceeded").await, 1);
        assert_conserved(&shop).await;
    });
}
on_backends!(
    a_provider_that_times_out_after_charging_is_retried_and_charges_once,
    [Memory, Sqlite]
);

fn read_models_rebuilt_from_zero_equal_the_live_ones_and_send_nothing_again(db: Db) {
    let world = World::new(db);
    process(async {
        let shop = world.start().await;
        let (alice, bob) = (customer("alice"), customer("bob"));
        let paid = cart_with(&shop, &alice, &[("monstera", 1), ("white-gardenia", 2)]).await;
        let paid = shop
            .checkout(&alice, &paid, address(), &card(PAYS), None)
            .await
            .unwrap()
            .order_id;
        let declined = cart_with(&shop, &bob, &[("monstera", 2)]).await;
        let declined = shop
            .checkout(&bob, &declined, address(), &card(DECLINED), None)
            .await
            .unwrap()
            .order_id;
        let open = cart_with(&shop, &bob, &[("nephrolepis", 3)]).await;
        shop.remove_item(&bob, &open, &product("nephrolepis"), Some(qty(1)), None)
            .await
            .unwrap();
        order_in(&shop, &alice, &paid, "confirmed").await;
        order_in(&shop, &bob, &declined, "cancelled").await;
        eventually!("both notifications", {
            Some(()).filter(|()| world.notifier.sent().len() == 2)
        });
        assert_conserved(&shop).await;
        let read = shop.read_store();
        let generation = |name: &'static str| {
            let shop = shop.clone();
            async move {
                let all = shop.processors().await;
                all.into_iter().find(|s| s.name == name).unwrap().generation
            }
        };
        // Every saga's last command sent and applied: nothing moves any more.
        eventually!("the shop to go quiet", {
            let head = shop.runtime().store().head().await.unwrap();
            shop.settle(Duration::from_secs(5)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let still = shop.runtime().store().head().await.unwrap() == head;
            Some(()).filter(|()| still)
        });
        for name in ["catalog", "carts", "orders", "notifications"] {
            let live = read.scan(name, "", 100_000).await.unwrap();
            assert!(!live.is_empty(), "{name} is empty");
            let before = generation(name).await;
            shop.rebuild(name).await.unwrap();
            assert_eq!(generation(name).await, before + 1, "{name} was not rebuilt");
            assert_eq!(
                read.scan(name, "", 100_000).await.unwrap(),
                live,
                "{name} rebuilt differs"
            );
        }
        assert_eq!(
            world.notifier.sent().len(),
            2,
            "a rebuild sent notifications again"
        );
        let cart = shop.cart(&bob, &open).await.unwrap();
        assert_eq!((cart.lines[0].quantity, cart.total_cents), (2, 2000));
    });
}
on_backends!(
    read_models_rebuilt_from_zero_equal_the_live_ones_and_send_nothing_again,
    [Memory, Sqlite]
);

fn sixty_four_clients_fighting_for_ten_units_get_ten(db: Db) {
    let world = World::new(db);
    process(async {
        let shop = world.start().await;
        shop.create_product(
            product("rare-orchid"),
            "Rare orchid",
            "Only ten.",
            Money::price(5000).unwrap(),
            10,
        )
        .await
        .unwrap();
        let mut clients = Vec::new();
        for n in 0..64 {
            let shop = shop.clone();
            clients.push(actix_rt::spawn(async move {
                let who = customer(&format!("client-{n}"));
                let cart = shop.open_cart(&who, None).await.unwrap().cart_id;
                shop.add_item(&who, &cart, &product("rare-orchid"), qty(1), None)
                    .await
            }));
        }
        let mut won = 0;
        for client in clients {
            match client.await.unwrap() {
                Ok(_) => won += 1,
                Err(ShopError::InsufficientStock { available }) => assert_eq!(available, 0),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(won, 10);
        let stock = assert_conserved(&shop).await;
        assert_eq!(stock["rare-orchid"], (0, 10, 0));
    });
}
on_backends!(
    sixty_four_clients_fighting_for_ten_units_get_ten,
    [Memory, Sqlite, Postgres]
);

fn an_idle_cart_gives_its_stock_back_and_so_does_a_hold_whose_line_was_never_written(db: Db) {
    let world = World::new(db);
    process(async {
        let shop = world.start().await;
        let alice = customer("alice");
        let cart = cart_with(&shop, &alice, &[("monstera", 3)]).await;
        // A crash between the product's reservation and the cart's line: a hold with no line.
        shop.runtime()
            .gateway()
            .send_and_wait::<Product>(
                "monstera",
                ProductCommand::Reserve {
                    hold: "h-orphan".to_owned().try_into().unwrap(),
                    cart: cart.clone(),
                    quantity: qty(2),
                    hold_seconds: 600,
                },
                Default::default(),
            )
            .await
            .unwrap();
        let stock = assert_conserved(&shop).await;
        assert_eq!(stock["monstera"], (5, 5, 0));
        world.advance(&shop, 599).await;
        for saga in shop.sagas() {
            saga.tick().await;
        }
        assert_eq!(assert_conserved(&shop).await["monstera"], (5, 5, 0));
        world.advance(&shop, 2).await;
        eventually!("the holds to lapse", {
            for saga in shop.sagas() {
                saga.tick().await;
            }
            let stock = assert_conserved(&shop).await;
            Some(()).filter(|()| stock["monstera"] == (10, 0, 0))
        });
        let view = eventually!("the cart emptied", {
            shop.cart(&alice, &cart)
                .await
                .ok()
                .filter(|v| v.lines.is_empty())
        });
        assert_eq!((view.status.as_str(), view.total_cents), ("open", 0));
        // The cart is still the customer's to fill again.
        shop.add_item(&alice, &cart, &product("monstera"), qty(1), None)
            .await
            .unwrap();
        assert_eq!(assert_conserved(&shop).await["monstera"], (9, 1, 0));
    });
}
on_backends!(
    an_idle_cart_gives_its_stock_back_and_so_does_a_hold_whose_line_was_never_written,
    [Memory, Sqlite]
);

fn what_the_shop_refuses_changes_nothing(db: Db) {
    let world = World::new(db);
    process(async {
        let shop = world.start().await;
        let (alice, mallory) = (customer("alice"), customer("mallory"));
        let cart = cart_with(&shop, &alice, &[("monstera", 1)]).await;
        let head = shop.runtime().store().head().await.unwrap();
        let refusals = [
            shop.add_item(&mallory, &cart, &product("monstera"), qty(1), None)
                .await
                .err(),
            shop.remove_item(&mallory, &cart, &product("monstera"), None, None)
                .await
                .err(),
            shop.empty_cart(&mallory, &cart, None).await.err(),
            shop.checkout(&mallory, &cart, address(), &card(PAYS), None)
                .await
                .err(),
            shop.add_item(&alice, &cart, &product("no-such-plant"), qty(1), None)
                .await
                .err(),
            shop.add_item(&alice, &cart, &product("monstera"), qty(10), None)
                .await
                .err(),
            shop.remove_item(&alice, &cart, &product("monstera"), Some(qty(2)), None)
                .await
                .err(),
            shop.remove_item(&alice, &cart, &product("nephrolepis"), None, None)
                .await
                .err(),
            shop.add_item(
                &alice,
                &CartId::parse("no-such-cart").unwrap(),
                &product("monstera"),
                qty(1),
                None,
            )
            .await
            .err(),
        ];
        let codes: Vec<&str> = refusals
            .iter()
            .map(|e| e.as_ref().map_or("accepted", ShopError::code))
            .collect();
        assert_eq!(
            codes,
            [
                "not_found",
                "not_found",
                "not_found",
                "not_found",
                "unknown_product",
                "insufficient_stock",
                "not_in_cart",
                "not_in_cart",
                "not_found"
            ]
        );
        assert!(matches!(
            refusals[5],
            Some(ShopError::InsufficientStock { available: 9 })
        ));
        assert_eq!(
            shop.runtime().store().head().await.unwrap(),
            head,
            "a refusal wrote something"
        );
        assert!(shop.cart(&mallory, &cart).await.is_err());
        assert!(shop.cart_history(&mallory, &cart).await.is_err());
        let empty = shop.open_cart(&alice, None).await.unwrap().cart_id;
        assert_eq!(
            shop.checkout(&alice, &empty, address(), &card(PAYS), None)
                .await
                .err()
                .map(|e| e.code()),
            Some("empty_cart")
        );
        shop.checkout(&alice, &cart, address(), &card(PAYS), None)
            .await
            .unwrap();
        assert_eq!(
            shop.checkout(&alice, &cart, address(), &card(PAYS), None)
                .await
                .err()
                .map(|e| e.code()),
            Some("already_checked_out")
        );
        assert_eq!(
            shop.add_item(&alice, &cart, &product("monstera"), qty(1), None)
                .await
                .err()
                .map(|e| e.code()),
            Some("already_checked_out")
        );
        let history = shop.cart_history(&alice, &cart).await.unwrap();
        let kinds: Vec<&str> = history.iter().map(|h| h.kind.as_str()).collect();
        assert_eq!(kinds, ["CartCreated", "ItemAdded", "CartCheckedOut"]);
        assert!(
            history
                .windows(2)
                .all(|w| w[0].sequence + 1 == w[1].sequence && w[0].position < w[1].position)
        );
        assert_conserved(&shop).await;
    });
}
on_backends!(what_the_shop_refuses_changes_nothing, [Memory, Sqlite]);

fn a_fresh_store_is_seeded_once_with_the_three_plants(db: Db) {
    let world = World::new(db);
    process(async {
        let shop = world.start().await;
        shop.settle(Duration::from_secs(5)).await.unwrap();
        let products = shop.products().await.unwrap();
        let ids: Vec<&str> = products.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["monstera", "nephrolepis", "white-gardenia"]);
        assert!(
            products
                .iter()
                .all(|p| p.price_cents == 1000 && p.available == 10 && !p.description.is_empty())
        );
        assert_eq!(products[2].name, "White Gardenia");
    });
    process(async {
        let shop = world.start().await;
        assert_eq!(count_events(&shop, "ProductCreated").await, 3);
        shop.wait_for(View::Catalog, 3).await.unwrap();
    });
}
on_backends!(
    a_fresh_store_is_seeded_once_with_the_three_plants,
    [Memory, Sqlite]
);

#[derive(Clone, Debug)]
enum Move {
    Add(i64),
    Remove(i64),
    Empty,
    Checkout(bool),
}

fn a_move() -> impl proptest::strategy::Strategy<Value = Move> {
    use proptest::prelude::*;
    prop_oneof![
        5 => (1i64..4).prop_map(Move::Add),
        2 => (1i64..3).prop_map(Move::Remove),
        1 => Just(Move::Empty),
        1 => any::<bool>().prop_map(Move::Checkout),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Random clients, each with its own cart, playing random moves at the same time against
    /// one scarce product: stock is conserved, never oversold, and once everything has run its
    /// course the product holds exactly what the open carts hold.
    #[test]
    fn concurrent_random_clients_never_oversell_nor_leak(
        stock in 0u32..8,
        clients in proptest::collection::vec(proptest::collection::vec(a_move(), 1..6), 2..7),
    ) {
        let world = World::new(Db::Memory);
        process(async move {
            let shop = world.start().await;
            let fern = product("scarce-fern");
            shop.create_product(fern.clone(), "Scarce fern", "", Money::price(700).unwrap(), stock)
                .await
                .unwrap();
            let mut running = Vec::new();
            for (n, moves) in clients.into_iter().enumerate() {
                let shop = shop.clone();
                let fern = fern.clone();
                running.push(actix_rt::spawn(async move {
                    let who = customer(&format!("c{n}"));
                    let cart = shop.open_cart(&who, None).await.unwrap().cart_id;
                    for step in moves {
                        let result = match step {
                            Move::Add(q) => shop.add_item(&who, &cart, &fern, qty(q), None).await.map(|_| ()),
                            Move::Remove(q) => shop.remove_item(&who, &cart, &fern, Some(qty(q)), None).await.map(|_| ()),
                            Move::Empty => shop.empty_cart(&who, &cart, None).await.map(|_| ()),
                            Move::Checkout(pays) => shop
                                .checkout(&who, &cart, address(), &card(if pays { PAYS } else { DECLINED }), None)
                                .await
                                .map(|_| ()),
                        };
                        match result {
                            Ok(()) => {}
                            Err(ShopError::InsufficientStock { .. } | ShopError::NotInCart { .. } | ShopError::EmptyCart | ShopError::AlreadyCheckedOut) => {}
                            Err(other) => panic!("unexpected {other:?}"),
                        }
                    }
                    (who, cart)
                }));
            }
            let mut carts = Vec::new();
            for client in running {
                carts.push(client.await.unwrap());
            }
            let settled = eventually!("every purchase to finish and every hold to match a cart", {
                let stock_now = assert_conserved(&shop).await["scarce-fern"];
                let mut in_open_carts = 0;
                for (who, cart) in &carts {
                    let view = shop.cart(who, cart).await.unwrap();
                    if view.status == "open" {
                        in_open_carts += view.lines.iter().map(|l| i64::from(l.quantity)).sum::<i64>();
                    }
                }
                Some(stock_now).filter(|s| s.1 == in_open_carts)
            });
            assert!(settled.2 <= i64::from(stock), "sold {} of {stock}", settled.2);
        });
    }
}
