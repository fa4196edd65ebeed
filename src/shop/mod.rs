//! The `Nursery` handle: the plant shop assembled on the runtime, for Rust hosts and for the
//! HTTP facade. A builder opens the stores (SQLite, PostgreSQL or memory), registers the shop's
//! aggregates, seeds the catalog, starts the read models and the sagas; the handle takes typed
//! commands and answers typed queries; `shutdown` stops taking commands and lets the read side
//! catch up.
//!
//! Adding to a cart takes two aggregates: the product reserves stock under a hold (the one
//! place stock is decided, so it is never oversold), then the cart records the line with its
//! hold. A crash between the two leaves a hold with no line; the reservation keeper saga puts it
//! back on the shelf when the cart has been idle for its hold time.
//!
//! Must not touch: HTTP.

mod error;
mod payments;
mod views;
mod wiring;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

pub use error::ShopError;
pub use payments::{ChargeRequest, PaymentProvider, ProviderUnavailable, SimulatedProvider};

use crate::actors::{
    CommandError, CommandGateway, CommandOutcome, Runtime, RuntimeConfig, Validation,
};
use crate::clock::{Clock, SystemClock};
use crate::config::Role;
use crate::domain::shop::cart::HoldRelease;
use crate::domain::shop::{
    Address, CardNumber, Cart, CartCommand, CartEvent, CartId, CustomerId, Delivery, HoldId,
    Invoice, Money, Notification, Order, OrderId, Payment, PaymentProcessing, Product,
    ProductCommand, ProductId, Purchase, Quantity, ReservationKeeper, SEED_CATALOG,
};
use crate::domain::{Aggregate, EventSet};
use crate::projections::shop::{
    CartView, CartsProjection, CatalogProjection, LogNotifier, NotificationView,
    NotificationsProjection, Notifier, OrderView, OrdersProjection, ProductView,
};
use crate::projections::{
    DeadLetter, Leadership, MemoryReadStore, PostgresReadStore, ProcessorConfig, ProcessorStatus,
    ReadStore, RelayHandle, SagaConfig, SagaHandle, SqliteReadStore, follow_exchange,
    saga_processor_name, start_projection, start_relay, start_saga,
};
use crate::store::{
    Codec, EventStore, MemoryStore, Metadata, PostgresStore, SqliteStore, StoreError, StreamId,
    ids, stream_events,
};
use views::{RemoteView, ViewHandle};

/// The shop's settings.
#[derive(Clone, Debug)]
pub struct ShopOptions {
    /// How long an idle cart keeps its stock before it goes back on the shelf (default 30
    /// minutes).
    pub hold_seconds: u64,
    /// How long a payment may take before the purchase is compensated (default 15 minutes).
    pub payment_timeout_seconds: u64,
    /// Whether a store without the seed catalog gets it (default yes).
    pub seed_catalog: bool,
    /// How long a query waits for a read model to reach an asked position (default 5 s).
    pub read_timeout: Duration,
    /// The runtime's settings.
    pub runtime: RuntimeConfig,
    /// The read models' settings.
    pub processors: ProcessorConfig,
    /// The sagas' settings.
    pub sagas: SagaConfig,
}

impl Default for ShopOptions {
    fn default() -> Self {
        Self {
            hold_seconds: 30 * 60,
            payment_timeout_seconds: 15 * 60,
            seed_catalog: true,
            read_timeout: Duration::from_secs(5),
            runtime: RuntimeConfig::default(),
            processors: ProcessorConfig::default(),
            sagas: SagaConfig::default(),
        }
    }
}

/// Builds a [`Nursery`].
pub struct NurseryBuilder {
    database_url: String,
    role: Role,
    broker_url: Option<String>,
    stores: Option<(Arc<dyn EventStore>, Arc<dyn ReadStore>)>,
    options: ShopOptions,
    clock: Arc<dyn Clock>,
    provider: Arc<dyn PaymentProvider>,
    notifier: Arc<dyn Notifier>,
}

/// A command the shop accepted: its events are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The command's id (send it again to retry: it is applied once).
    pub command_id: Uuid,
    /// The global position of the last event written (read-your-writes: wait for it).
    pub position: u64,
}

/// A cart was opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartOpened {
    /// The cart.
    pub cart_id: CartId,
    /// The position of its first event.
    pub position: u64,
}

/// A cart was checked out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedOut {
    /// The order it became.
    pub order_id: OrderId,
    /// The position of the checkout event.
    pub position: u64,
}

/// One event of a cart's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its number in the cart's stream.
    pub sequence: u64,
    /// Its global position.
    pub position: u64,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it was recorded (RFC 3339 UTC).
    pub timestamp: String,
    /// Its payload.
    pub data: Value,
    /// Who and what caused it.
    pub metadata: Value,
}

/// A read model of the shop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Products and availability.
    Catalog,
    /// Carts.
    Carts,
    /// Orders.
    Orders,
    /// Notifications.
    Notifications,
}

/// What a delivery address is made of, as typed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressInput {
    /// The recipient.
    pub name: String,
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postcode.
    pub postcode: String,
    /// Country.
    pub country: String,
}

impl Default for NurseryBuilder {
    fn default() -> Self {
        Self {
            database_url: crate::config::DEFAULT_DATABASE_URL.to_owned(),
            role: Role::All,
            broker_url: None,
            stores: None,
            options: ShopOptions::default(),
            clock: Arc::new(SystemClock),
            provider: Arc::new(SimulatedProvider::new()),
            notifier: Arc::new(LogNotifier),
        }
    }
}

impl NurseryBuilder {
    /// The database: `sqlite://path` (the default, `sqlite://nursery.db`), `postgres://...` or
    /// `memory://`.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = url.into();
        self
    }

    /// What this process runs (default: everything). `Command`: the aggregates, no read model
    /// or saga. `Query`: no aggregate; the read models are followed through their checkpoints
    /// in the shared database, as the events process writes them. `Events`: the aggregates (the
    /// sagas send commands), the read models and the sagas, once this process leads them (on
    /// PostgreSQL, one events process at a time leads; the others wait).
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// RabbitMQ (`amqp://...`): a process that runs the read models relays every event to the
    /// `nursery.events` topic exchange; a query process follows the exchange to see changes at
    /// once. Without it, everything stays in process (and query processes poll).
    pub fn broker_url(mut self, url: Option<String>) -> Self {
        self.broker_url = url.filter(|u| !u.is_empty());
        self
    }

    /// Runs on stores the host opened (a test that restarts on the same stores).
    pub fn stores(mut self, events: Arc<dyn EventStore>, read: Arc<dyn ReadStore>) -> Self {
        self.stores = Some((events, read));
        self
    }

    /// The shop's settings.
    pub fn options(mut self, options: ShopOptions) -> Self {
        self.options = options;
        self
    }

    /// The time source of deadlines (tests move a [`ManualClock`](crate::clock::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The payment provider (default: the simulated one).
    pub fn payment_provider(mut self, provider: Arc<dyn PaymentProvider>) -> Self {
        self.provider = provider;
        self
    }

    /// Where notifications are sent (default: the log).
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Opens the stores, starts everything, seeds the catalog. Call it inside an actix system.
    pub async fn start(self) -> Result<Nursery, ShopError> {
        let role = self.role;
        let runs_aggregates = role != Role::Query;
        let runs_processors = matches!(role, Role::All | Role::Events);
        let mut leadership = None;
        let (store, read): (Arc<dyn EventStore>, Arc<dyn ReadStore>) = match self.stores {
            Some(stores) => stores,
            None if role == Role::Events && is_postgres(&self.database_url) => {
                // One events process leads at a time; its commits are fenced by its epoch.
                let events = PostgresStore::connect(&self.database_url).await?;
                let read = PostgresReadStore::new(&events);
                let lead = Leadership::take(read.pool(), "nursery-processors").await?;
                let fenced = read.fenced(&lead);
                leadership = Some(lead);
                (Arc::new(events), Arc::new(fenced))
            }
            None => open_stores(&self.database_url).await?,
        };
        let mut options = self.options;
        if role == Role::Events {
            // The command processes append; this process hears of their events only by
            // looking at the head.
            options.runtime.broker.poll_interval = options
                .runtime
                .broker
                .poll_interval
                .min(Duration::from_millis(20));
        }
        let codec = options.runtime.codec.clone();
        let mut builder = Runtime::builder(Arc::clone(&store))
            .config(options.runtime.clone())
            .interceptor(Validation);
        if runs_aggregates {
            builder = builder
                .aggregate::<Product>()
                .aggregate::<Cart>()
                .aggregate::<Order>()
                .aggregate::<Invoice>()
                .aggregate::<Delivery>()
                .aggregate::<Payment>()
                .aggregate::<Notification>();
        }
        let runtime = builder.start().await?;
        let gateway = runtime.gateway();
        let broker = runtime.broker().clone();
        let nudge = Arc::new(Notify::new());
        let follow_every = if self.broker_url.is_some() {
            views::FOLLOW_WITH_BROKER
        } else {
            views::FOLLOW_EVERY
        };
        let project = |projection: Arc<dyn crate::projections::Projection>| {
            let (store, read, broker) = (Arc::clone(&store), Arc::clone(&read), broker.clone());
            let nudge = Arc::clone(&nudge);
            let config = options.processors.clone();
            async move {
                if runs_processors {
                    Ok::<_, StoreError>(ViewHandle::Local(
                        start_projection(projection, store, read, broker, config).await?,
                    ))
                } else {
                    Ok(ViewHandle::Remote(RemoteView::follow(
                        projection.name(),
                        read,
                        store,
                        nudge,
                        follow_every,
                    )))
                }
            }
        };
        let catalog = project(Arc::new(CatalogProjection::new(codec.clone()))).await?;
        let carts = project(Arc::new(CartsProjection::new(codec.clone()))).await?;
        let orders = project(Arc::new(OrdersProjection::new(codec.clone()))).await?;
        let notifications = project(Arc::new(NotificationsProjection::new(
            codec.clone(),
            self.notifier,
        )))
        .await?;
        let mut sagas = Vec::new();
        if runs_processors {
            sagas.push(
                start_saga::<Purchase>(
                    Arc::clone(&store),
                    Arc::clone(&read),
                    broker.clone(),
                    wiring::purchase_decoder(codec.clone()),
                    wiring::dispatcher::<Purchase>(gateway.clone(), Arc::clone(&self.provider)),
                    Arc::clone(&self.clock),
                    options.sagas.clone(),
                )
                .await?,
            );
            sagas.push(
                start_saga::<PaymentProcessing>(
                    Arc::clone(&store),
                    Arc::clone(&read),
                    broker.clone(),
                    wiring::payment_decoder(codec.clone()),
                    wiring::dispatcher::<PaymentProcessing>(
                        gateway.clone(),
                        Arc::clone(&self.provider),
                    ),
                    Arc::clone(&self.clock),
                    options.sagas.clone(),
                )
                .await?,
            );
            sagas.push(
                start_saga::<ReservationKeeper>(
                    Arc::clone(&store),
                    Arc::clone(&read),
                    broker,
                    wiring::reservation_decoder(codec.clone()),
                    wiring::dispatcher::<ReservationKeeper>(
                        gateway.clone(),
                        Arc::clone(&self.provider),
                    ),
                    Arc::clone(&self.clock),
                    options.sagas.clone(),
                )
                .await?,
            );
        }
        let broker_connected = Arc::new(AtomicBool::new(false));
        let mut relay = None;
        if let Some(url) = &self.broker_url {
            if runs_processors {
                relay = Some(
                    start_relay(
                        url.clone(),
                        Arc::clone(&read),
                        runtime.broker().clone(),
                        wiring::render(codec.clone()),
                    )
                    .await?,
                );
            } else if role == Role::Query {
                let nudge = Arc::clone(&nudge);
                follow_exchange(
                    url.clone(),
                    Arc::clone(&broker_connected),
                    Arc::new(move || nudge.notify_waiters()),
                );
            }
        }
        let nursery = Nursery {
            inner: Arc::new(Inner {
                runtime,
                gateway,
                store,
                read,
                codec,
                catalog,
                carts,
                orders,
                notifications,
                sagas,
                leadership,
                role,
                relay,
                broker_connected,
                uses_broker: self.broker_url.is_some() && role != Role::Command,
                provider: self.provider,
                options,
                closed: AtomicBool::new(false),
                closing: tokio::sync::watch::channel(false).0,
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        };
        if nursery.inner.options.seed_catalog && runs_aggregates {
            nursery.seed().await?;
        }
        Ok(nursery)
    }
}

/// Opens the event store and the read store a URL names, sharing its database.
pub async fn open_stores(
    url: &str,
) -> Result<(Arc<dyn EventStore>, Arc<dyn ReadStore>), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(url).await?;
        let read = PostgresReadStore::new(&store);
        Ok((Arc::new(store), Arc::new(read)))
    } else if url.starts_with("sqlite:") {
        let store = SqliteStore::connect(url).await?;
        let read = SqliteReadStore::new(&store);
        Ok((Arc::new(store), Arc::new(read)))
    } else if url == "memory://" || url == "memory:" {
        Ok((
            Arc::new(MemoryStore::new()),
            Arc::new(MemoryReadStore::new()),
        ))
    } else {
        Err(StoreError::InvalidInput(format!(
            "unsupported database URL scheme in {url:?}: use sqlite://, postgres:// or memory://"
        )))
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The plant shop, running. Cheap to clone; every clone is the same shop.
#[derive(Clone)]
pub struct Nursery {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    gateway: CommandGateway,
    store: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    codec: Codec,
    catalog: ViewHandle,
    carts: ViewHandle,
    orders: ViewHandle,
    notifications: ViewHandle,
    sagas: Vec<SagaHandle>,
    leadership: Option<Leadership>,
    role: Role,
    relay: Option<RelayHandle>,
    broker_connected: Arc<AtomicBool>,
    uses_broker: bool,
    provider: Arc<dyn PaymentProvider>,
    options: ShopOptions,
    closed: AtomicBool,
    closing: tokio::sync::watch::Sender<bool>,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Counts a command in flight until dropped, so shutdown can wait for it.
struct InFlight<'a>(&'a Inner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn metadata(command_id: Uuid, customer: Option<&CustomerId>) -> Metadata {
    Metadata {
        command_id: Some(command_id),
        correlation_id: Some(command_id),
        customer_id: customer.map(ToString::to_string),
        ..Metadata::default()
    }
}

/// An id derived from a command id, so a retried command makes the same cart, hold or order.
fn derived(command_id: Uuid, what: &str) -> Uuid {
    ids::derived(&command_id, what.as_bytes())
}

const LIST_LIMIT: usize = 10_000;

impl Nursery {
    /// A builder with the defaults: `sqlite://nursery.db`, the simulated payment provider,
    /// notifications to the log, the system clock.
    pub fn builder() -> NurseryBuilder {
        NurseryBuilder::default()
    }

    /// The runtime underneath (gateway, broker, store).
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The read store the read models and sagas keep their documents in.
    pub fn read_store(&self) -> &Arc<dyn ReadStore> {
        &self.inner.read
    }

    /// The payment provider.
    pub fn payment_provider(&self) -> &Arc<dyn PaymentProvider> {
        &self.inner.provider
    }

    /// The settings it runs with.
    pub fn options(&self) -> &ShopOptions {
        &self.inner.options
    }

    fn enter(&self) -> Result<InFlight<'_>, ShopError> {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(&self.inner);
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(ShopError::unavailable("the shop is shutting down"));
        }
        Ok(guard)
    }

    async fn seed(&self) -> Result<(), ShopError> {
        for seed in &SEED_CATALOG {
            let command_id = Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("nursery-seed:{}", seed.id).as_bytes(),
            );
            let id = ProductId::parse(seed.id)?;
            match self
                .create_product_with(
                    command_id,
                    id,
                    seed.name,
                    seed.description,
                    Money::from_cents(seed.price_cents),
                    seed.stock,
                )
                .await
            {
                Ok(_) | Err(ShopError::AlreadyExists) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    async fn position_of(&self, outcome: &CommandOutcome) -> Result<u64, ShopError> {
        match outcome.position {
            Some(position) => Ok(position),
            // A repeat or a no-op wrote nothing: the head is at or after whatever it wrote.
            None => Ok(self.inner.store.head().await?),
        }
    }

    /// Puts a new product on the shelf under a given command id (a retry with the same id
    /// changes nothing).
    pub async fn create_product_as(
        &self,
        command_id: Option<Uuid>,
        id: ProductId,
        name: &str,
        description: &str,
        price: Money,
        stock: u32,
    ) -> Result<Accepted, ShopError> {
        let command_id = command_id.unwrap_or_else(ids::fresh);
        self.create_product_with(command_id, id, name, description, price, stock)
            .await
    }

    /// Puts a new product on the shelf (an admin command).
    pub async fn create_product(
        &self,
        id: ProductId,
        name: &str,
        description: &str,
        price: Money,
        stock: u32,
    ) -> Result<Accepted, ShopError> {
        self.create_product_with(ids::fresh(), id, name, description, price, stock)
            .await
    }

    async fn create_product_with(
        &self,
        command_id: Uuid,
        id: ProductId,
        name: &str,
        description: &str,
        price: Money,
        stock: u32,
    ) -> Result<Accepted, ShopError> {
        let _guard = self.enter()?;
        let command = ProductCommand::Create {
            name: name.to_owned(),
            description: description.to_owned(),
            price,
            stock,
        };
        let outcome = self
            .inner
            .gateway
            .send_and_wait::<Product>(id.as_str(), command, metadata(command_id, None))
            .await
            .map_err(|e| ShopError::from_command(e, ShopError::from))?;
        Ok(Accepted {
            command_id,
            position: self.position_of(&outcome).await?,
        })
    }

    /// Adds items to a product's shelf (an admin command).
    pub async fn restock(
        &self,
        id: &ProductId,
        quantity: u32,
        command_id: Option<Uuid>,
    ) -> Result<Accepted, ShopError> {
        let _guard = self.enter()?;
        let command_id = command_id.unwrap_or_else(ids::fresh);
        let outcome = self
            .inner
            .gateway
            .send_and_wait::<Product>(
                id.as_str(),
                ProductCommand::Restock { quantity },
                metadata(command_id, None),
            )
            .await
            .map_err(|e| ShopError::from_command(e, ShopError::from))?;
        Ok(Accepted {
            command_id,
            position: self.position_of(&outcome).await?,
        })
    }

    /// Opens a cart for `customer`.
    pub async fn open_cart(
        &self,
        customer: &CustomerId,
        command_id: Option<Uuid>,
    ) -> Result<CartOpened, ShopError> {
        let _guard = self.enter()?;
        let command_id = command_id.unwrap_or_else(ids::fresh);
        let cart_id = CartId::parse(format!("c-{}", derived(command_id, "cart").simple()))?;
        let command = CartCommand::Create {
            owner: customer.clone(),
            hold_seconds: self.inner.options.hold_seconds,
        };
        let outcome = self
            .inner
            .gateway
            .send_and_wait::<Cart>(
                cart_id.as_str(),
                command,
                metadata(command_id, Some(customer)),
            )
            .await
            .map_err(|e| ShopError::from_command(e, ShopError::from))?;
        Ok(CartOpened {
            cart_id,
            position: self.position_of(&outcome).await?,
        })
    }

    /// Adds `quantity` of `product` to the cart, holding the stock for it. Refused with
    /// `InsufficientStock` (saying what is available) when the shelf is short, `UnknownProduct`
    /// when there is no such product, `NotFound` when the cart is not the customer's.
    pub async fn add_item(
        &self,
        customer: &CustomerId,
        cart: &CartId,
        product: &ProductId,
        quantity: Quantity,
        command_id: Option<Uuid>,
    ) -> Result<Accepted, ShopError> {
        let _guard = self.enter()?;
        let gateway = &self.inner.gateway;
        let command_id = command_id.unwrap_or_else(ids::fresh);
        // The cart first, so a wrong cart holds no stock even for a moment. A refusal is read
        // again on the cart as stored: another command process may have changed it.
        let (who, what) = (customer.clone(), product.clone());
        let room = move |c: &Cart, _| {
            c.check_open_for(&who)
                .and_then(|()| c.check_room(&what, quantity))
        };
        gateway
            .inspect_confirmed::<Cart, _>(cart.as_str(), room, Result::is_ok)
            .await
            .map_err(|e| ShopError::from_command(e, ShopError::from))?
            .map_err(ShopError::from)?;
        // The product's name and price, before anything is held (a product that does not exist
        // holds nothing; one created by another process is looked for in the store).
        let listing = |p: &Product, _| p.exists.then(|| (p.name.clone(), p.price));
        let found = gateway
            .inspect_confirmed::<Product, _>(product.as_str(), listing, Option::is_some)
            .await
            .map_err(|e| ShopError::from_command(e, ShopError::from))?;
        let (name, unit_price) = found.ok_or(ShopError::UnknownProduct)?;
        let hold = HoldId::parse(format!("h-{}", derived(command_id, "hold").simple()))?;
        let reserve = ProductCommand::Reserve {
            hold: hold.clone(),
            cart: cart.clone(),
            quantity,
            hold_seconds: self.inner.options.hold_seconds,
        };
        let mut meta = metadata(derived(command_id, "reserve"), Some(customer));
        meta.correlation_id = Some(command_id);
        gateway
            .send_and_wait::<Product>(product.as_str(), reserve, meta.clone())
            .await
            .map_err(|e| ShopError::from_command(e, ShopError::from))?;
        let add = CartCommand::AddItem {
            customer: customer.clone(),
            product: product.clone(),
            name,
            unit_price,
            quantity,
            hold: hold.clone(),
        };
        match gateway
            .send_and_wait::<Cart>(cart.as_str(), add, metadata(command_id, Some(customer)))
            .await
        {
            Ok(outcome) => Ok(Accepted {
                command_id,
                position: self.position_of(&outcome).await?,
            }),
            Err(error @ (CommandError::Rejected(_) | CommandError::Refused(_))) => {
                // The cart refused: the line was not written, so the hold goes back now (should
                // this fail too, the reservation keeper gives it back once the cart is idle).
                let release = ProductCommand::Release { hold, keep: 0 };
                meta.command_id = Some(derived(command_id, "release"));
                let _ = gateway
                    .send_and_wait::<Product>(product.as_str(), release, meta)
                    .await;
                Err(ShopError::from_command(error, ShopError::from))
            }
            // No clear answer (a timeout, a crash, the store): the line may have been written.
            // The hold stays; if the line never was, the reservation keeper releases it when the
            // cart has been idle for its hold time. Retrying with the same command id is safe.
            Err(error) => Err(ShopError::from_command(error, ShopError::from)),
        }
    }

    /// Removes `quantity` (or, with `None`, all) of `product` from the cart and puts the stock
    /// back on the shelf.
    pub async fn remove_item(
        &self,
        customer: &CustomerId,
        cart: &CartId,
        product: &ProductId,
        quantity: Option<Quantity>,
        command_id: Option<Uuid>,
    ) -> Result<Accepted, ShopError> {
        let command = CartCommand::RemoveItem {
            customer: customer.clone(),
            product: product.clone(),
            quantity,
        };
        self.shrink_cart(customer, cart, command, command_id).await
    }

    /// Removes every line of the cart and puts the stock back on the shelf.
    pub async fn empty_cart(
        &self,
        customer: &CustomerId,
        cart: &CartId,
        command_id: Option<Uuid>,
    ) -> Result<Accepted, ShopError> {
        let command = CartCommand::Empty {
            customer: customer.clone(),
        };
        self.shrink_cart(customer, cart, command, command_id).await
    }

    /// Runs a command that takes lines out of a cart, then releases the holds it names (from
    /// the events it wrote). Should the process die between the two, the reservation keeper
    /// releases them later: releases are absolute, so nothing is released twice.
    async fn shrink_cart(
        &self,
        customer: &CustomerId,
        cart: &CartId,
        command: CartCommand,
        command_id: Option<Uuid>,
    ) -> Result<Accepted, ShopError> {
        let _guard = self.enter()?;
        let command_id = command_id.unwrap_or_else(ids::fresh);
        let outcome = self
            .inner
            .gateway
            .send_and_wait::<Cart>(cart.as_str(), command, metadata(command_id, Some(customer)))
            .await
            .map_err(|e| ShopError::from_command(e, ShopError::from))?;
        // The events this command wrote: just now, or, for a repeat, the first time (whose
        // releases may not have gone out: the caller retried after an unclear answer).
        let events = if outcome.events > 0 {
            let from = outcome.version + 1 - outcome.events as u64;
            self.events_of::<Cart>(cart.as_str(), from, outcome.version)
                .await?
        } else if outcome.duplicate {
            self.events_of_command::<Cart>(cart.as_str(), command_id)
                .await?
        } else {
            Vec::new()
        };
        let releases: Vec<HoldRelease> = events
            .into_iter()
            .flat_map(|event| match event {
                CartEvent::ItemRemoved(e) => e.releases,
                CartEvent::CartEmptied(e) => e.releases,
                _ => Vec::new(),
            })
            .collect();
        let mut position = self.position_of(&outcome).await?;
        for (n, release) in releases.into_iter().enumerate() {
            let command = ProductCommand::Release {
                hold: release.hold,
                keep: release.keep,
            };
            let mut meta = metadata(derived(command_id, &format!("release-{n}")), Some(customer));
            meta.correlation_id = Some(command_id);
            // Absolute releases: sending one again releases nothing twice. One that fails here
            // is sent by the reservation keeper once the cart is idle.
            if let Ok(released) = self
                .inner
                .gateway
                .send_and_wait::<Product>(release.product.as_str(), command, meta)
                .await
            {
                position = position.max(released.position.unwrap_or(0));
            }
        }
        Ok(Accepted {
            command_id,
            position,
        })
    }

    /// Checks the cart out: the purchase saga takes it from there (invoice, delivery, payment).
    pub async fn checkout(
        &self,
        customer: &CustomerId,
        cart: &CartId,
        address: Address,
        card: &CardNumber,
        command_id: Option<Uuid>,
    ) -> Result<CheckedOut, ShopError> {
        let _guard = self.enter()?;
        let command_id = command_id.unwrap_or_else(ids::fresh);
        let order_id = OrderId::parse(format!("o-{}", derived(command_id, "order").simple()))?;
        let command = CartCommand::Checkout {
            customer: customer.clone(),
            order: order_id.clone(),
            address,
            payment: self.inner.provider.tokenize(card),
            payment_timeout_seconds: self.inner.options.payment_timeout_seconds,
        };
        let outcome = self
            .inner
            .gateway
            .send_and_wait::<Cart>(cart.as_str(), command, metadata(command_id, Some(customer)))
            .await
            .map_err(|e| ShopError::from_command(e, ShopError::from))?;
        Ok(CheckedOut {
            order_id,
            position: self.position_of(&outcome).await?,
        })
    }

    /// The events of aggregate `id` from `from` through `to` (those of one command: a later
    /// command's events are not its own), decoded straight from what the store reads.
    async fn events_of<A: Aggregate>(
        &self,
        id: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<A::Event>, ShopError> {
        let stream = StreamId::new(A::TYPE, id);
        let codec = &self.inner.codec;
        let mut events = Vec::new();
        self.inner
            .store
            .replay_stream(&stream, from, to, usize::MAX, &mut |event| {
                events.push(codec.decode_encoded::<A::Event>(&stream, event)?);
                Ok(())
            })
            .await?;
        Ok(events)
    }

    /// The events a command wrote to aggregate `id`, found by the command id in their metadata.
    async fn events_of_command<A: Aggregate>(
        &self,
        id: &str,
        command_id: Uuid,
    ) -> Result<Vec<A::Event>, ShopError> {
        let stream = StreamId::new(A::TYPE, id);
        let records: Vec<_> = stream_events(&*self.inner.store, &stream, 1)
            .try_filter(|r| std::future::ready(r.metadata.command_id == Some(command_id)))
            .try_collect()
            .await?;
        records
            .iter()
            .map(|r| self.inner.codec.decode_event::<A::Event>(r))
            .collect::<Result<_, _>>()
            .map_err(ShopError::from)
    }

    fn handle(&self, view: View) -> &ViewHandle {
        match view {
            View::Catalog => &self.inner.catalog,
            View::Carts => &self.inner.carts,
            View::Orders => &self.inner.orders,
            View::Notifications => &self.inner.notifications,
        }
    }

    /// Waits until `view` has applied `position` (read-your-writes), up to the read timeout;
    /// answers the position it is at.
    pub async fn wait_for(&self, view: View, position: u64) -> Result<u64, ShopError> {
        Ok(self
            .handle(view)
            .wait_for(position, self.inner.options.read_timeout)
            .await?)
    }

    /// A watch of `view`'s status: it changes each time the view's position moves.
    pub fn watch(&self, view: View) -> tokio::sync::watch::Receiver<ProcessorStatus> {
        self.handle(view).watch()
    }

    /// Whether the event store answers (for readiness).
    pub async fn ping(&self) -> Result<(), ShopError> {
        Ok(self.inner.store.ping().await?)
    }

    /// Whether this process can serve: the event store answers and, where a broker is
    /// configured and used (the relay, or a query process following the exchange), it is
    /// connected.
    pub async fn ready(&self) -> Result<(), ShopError> {
        self.ping().await?;
        if self.inner.uses_broker {
            let connected = match &self.inner.relay {
                Some(relay) => relay.connected(),
                None => self.inner.broker_connected.load(Ordering::SeqCst),
            };
            if !connected {
                return Err(ShopError::unavailable(
                    "the message broker is not connected",
                ));
            }
        }
        Ok(())
    }

    /// The AMQP relay, in a process that runs it.
    pub fn relay(&self) -> Option<&RelayHandle> {
        self.inner.relay.as_ref()
    }

    /// The position `view` has applied.
    pub fn position(&self, view: View) -> u64 {
        self.handle(view).status().position
    }

    async fn document<T: serde::de::DeserializeOwned>(
        &self,
        view: View,
        key: &str,
    ) -> Result<Option<T>, ShopError> {
        let name = self.handle(view).name().to_owned();
        self.inner
            .read
            .get(&name, key)
            .await?
            .map(|doc| serde_json::from_value(doc).map_err(|e| ShopError::Internal(e.to_string())))
            .transpose()
    }

    async fn scan(&self, view: View, prefix: &str) -> Result<Vec<(String, Value)>, ShopError> {
        let name = self.handle(view).name().to_owned();
        Ok(self.inner.read.scan(&name, prefix, LIST_LIMIT).await?)
    }

    /// Every product, by id.
    pub async fn products(&self) -> Result<Vec<ProductView>, ShopError> {
        self.scan(View::Catalog, "p:")
            .await?
            .into_iter()
            .map(|(_, doc)| {
                serde_json::from_value(doc).map_err(|e| ShopError::Internal(e.to_string()))
            })
            .collect()
    }

    /// One product.
    pub async fn product(&self, id: &ProductId) -> Result<ProductView, ShopError> {
        self.document(View::Catalog, &CatalogProjection::key(id.as_str()))
            .await?
            .ok_or(ShopError::UnknownProduct)
    }

    /// The customer's cart (`NotFound` if it is another customer's).
    pub async fn cart(&self, customer: &CustomerId, cart: &CartId) -> Result<CartView, ShopError> {
        self.document::<CartView>(View::Carts, &CartsProjection::key(cart.as_str()))
            .await?
            .filter(|view| view.owner == customer.as_str())
            .ok_or(ShopError::NotFound)
    }

    /// The customer's carts.
    pub async fn carts(&self, customer: &CustomerId) -> Result<Vec<CartView>, ShopError> {
        let prefix = CartsProjection::owner_prefix(customer.as_str());
        self.owned(View::Carts, &prefix, CartsProjection::key).await
    }

    /// The documents an owner index of `view` lists under `prefix` (its keys end with the
    /// document's id), each read by the key `key_of` gives its id.
    async fn owned<T: serde::de::DeserializeOwned>(
        &self,
        view: View,
        prefix: &str,
        key_of: fn(&str) -> String,
    ) -> Result<Vec<T>, ShopError> {
        // The owner's index, then every document it names in one read, in the index's order.
        let keys: Vec<String> = self
            .scan(view, prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key_of(key.rsplit(':').next().unwrap_or_default()))
            .collect();
        let name = self.handle(view).name().to_owned();
        let mut documents = self.inner.read.get_many(&name, &keys).await?;
        keys.iter()
            .filter_map(|key| documents.remove(key))
            .map(|doc| serde_json::from_value(doc).map_err(|e| ShopError::Internal(e.to_string())))
            .collect()
    }

    /// The customer's order (`NotFound` if it is another customer's).
    pub async fn order(
        &self,
        customer: &CustomerId,
        order: &OrderId,
    ) -> Result<OrderView, ShopError> {
        self.document::<OrderView>(View::Orders, &OrdersProjection::key(order.as_str()))
            .await?
            .filter(|view| view.customer_id == customer.as_str())
            .ok_or(ShopError::NotFound)
    }

    /// Waits, up to `timeout`, until the order is confirmed or cancelled, and answers it. Wakes
    /// on each change of the orders read model (a watch), not by polling.
    pub async fn order_outcome(
        &self,
        customer: &CustomerId,
        order: &OrderId,
        timeout: Duration,
    ) -> Result<OrderView, ShopError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let seen = self.position(View::Orders);
            match self.order(customer, order).await {
                Ok(view) if view.status == "confirmed" || view.status == "cancelled" => {
                    return Ok(view);
                }
                Ok(_) | Err(ShopError::NotFound) => {}
                Err(error) => return Err(error),
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.inner.orders.wait_for(seen + 1, left).await?;
        }
    }

    /// The customer's orders.
    pub async fn orders(&self, customer: &CustomerId) -> Result<Vec<OrderView>, ShopError> {
        let prefix = OrdersProjection::owner_prefix(customer.as_str());
        self.owned(View::Orders, &prefix, OrdersProjection::key)
            .await
    }

    /// The customer's notifications, newest first.
    pub async fn notifications(
        &self,
        customer: &CustomerId,
    ) -> Result<Vec<NotificationView>, ShopError> {
        let mut found: Vec<NotificationView> = self
            .scan(
                View::Notifications,
                &NotificationsProjection::customer_prefix(customer.as_str()),
            )
            .await?
            .into_iter()
            .map(|(_, doc)| {
                serde_json::from_value(doc).map_err(|e| ShopError::Internal(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        found.reverse();
        Ok(found)
    }

    /// The cart's events, in order, read from the event store (`NotFound` if it is another
    /// customer's).
    pub async fn cart_history(
        &self,
        customer: &CustomerId,
        cart: &CartId,
    ) -> Result<Vec<HistoryEntry>, ShopError> {
        let stream = StreamId::new(Cart::TYPE, cart.as_str());
        let records: Vec<_> = stream_events(&*self.inner.store, &stream, 1)
            .try_collect()
            .await?;
        let mut entries = Vec::with_capacity(records.len());
        for record in &records {
            let event: CartEvent = self.inner.codec.decode_event(record)?;
            if let CartEvent::CartCreated(created) = &event {
                if &created.owner != customer {
                    return Err(ShopError::NotFound);
                }
            }
            entries.push(HistoryEntry {
                sequence: record.sequence,
                position: record.position,
                kind: event.event_type().to_owned(),
                timestamp: record
                    .recorded_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                data: serde_json::to_value(&event)
                    .map_err(|e| ShopError::Internal(e.to_string()))?,
                metadata: serde_json::json!({
                    "command_id": record.metadata.command_id,
                    "correlation_id": record.metadata.correlation_id,
                    "causation_id": record.metadata.causation_id,
                }),
            });
        }
        if entries.is_empty() {
            return Err(ShopError::NotFound);
        }
        Ok(entries)
    }

    /// Every read model's and saga's status, with the head and the lag.
    pub async fn processors(&self) -> Vec<ProcessorStatus> {
        let inner = &self.inner;
        let mut all = vec![
            inner.catalog.report().await,
            inner.carts.report().await,
            inner.orders.report().await,
            inner.notifications.report().await,
        ];
        for saga in &inner.sagas {
            all.push(saga.report().await);
        }
        if let Some(relay) = &inner.relay {
            let mut status = relay.status();
            if let Ok(head) = inner.store.head().await {
                status.head = head;
                status.lag = head.saturating_sub(status.position);
            }
            all.push(status);
        }
        if matches!(inner.role, Role::Command | Role::Query) {
            // The sagas and the relay run in the events process: report them as their
            // checkpoints in the database say, as the views are.
            let mut elsewhere = self.saga_names();
            if inner.uses_broker {
                elsewhere.push(crate::projections::RELAY_NAME.to_owned());
            }
            let head = inner.store.head().await.unwrap_or(0);
            for name in elsewhere {
                all.push(self.followed(name, head).await);
            }
        }
        all
    }

    /// A processor another process runs, as its checkpoint says.
    async fn followed(&self, name: String, head: u64) -> ProcessorStatus {
        let read = &self.inner.read;
        // Read only: the process that runs it registers it.
        let checkpoint = read
            .serving_checkpoint(&name)
            .await
            .map(|found| found.unwrap_or((1, 0)));
        let (generation, position, last_error) = match checkpoint {
            Ok((generation, position)) => (generation, position, None),
            Err(error) => (0, 0, Some(error.to_string())),
        };
        ProcessorStatus {
            name,
            position,
            generation,
            state: if last_error.is_some() {
                crate::projections::ProcessorState::Failing
            } else {
                crate::projections::ProcessorState::Running
            },
            rebuild_position: None,
            last_error,
            head,
            lag: head.saturating_sub(position),
        }
    }

    /// Rebuilds a read model from position 0 while the current one keeps serving.
    pub async fn rebuild(&self, name: &str) -> Result<(), ShopError> {
        let handle = [
            &self.inner.catalog,
            &self.inner.carts,
            &self.inner.orders,
            &self.inner.notifications,
        ]
        .into_iter()
        .find(|h| h.name() == name)
        .ok_or(ShopError::NotFound)?;
        handle.rebuild().await.map_err(ShopError::Internal)
    }

    /// The parked events of every read model.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ShopError> {
        let mut all = Vec::new();
        for view in [
            View::Catalog,
            View::Carts,
            View::Orders,
            View::Notifications,
        ] {
            all.extend(self.handle(view).dead_letters().await?);
        }
        for name in self.saga_names() {
            all.extend(self.inner.read.dead_letters(&name).await?);
        }
        Ok(all)
    }

    /// The sagas' processor names, whichever process runs them.
    fn saga_names(&self) -> Vec<String> {
        vec![
            saga_processor_name::<Purchase>(),
            saga_processor_name::<PaymentProcessing>(),
            saga_processor_name::<ReservationKeeper>(),
        ]
    }

    /// Retries the dead letter `id` (and the events of its aggregate waiting behind it), in
    /// the read model that parked it; answers how many events were applied. `NotFound` if no
    /// read model has it.
    pub async fn retry_dead_letter(&self, id: i64) -> Result<usize, ShopError> {
        for view in [
            View::Catalog,
            View::Carts,
            View::Orders,
            View::Notifications,
        ] {
            let handle = self.handle(view);
            let letters = handle.dead_letters().await?;
            if let Some(letter) = letters.into_iter().find(|d| d.id == id) {
                return handle
                    .retry(letter.stream)
                    .await
                    .map_err(ShopError::Rejected);
            }
        }
        for name in self.saga_names() {
            let letters = self.inner.read.dead_letters(&name).await?;
            let Some(letter) = letters.into_iter().find(|d| d.id == id) else {
                continue;
            };
            let Some(saga) = self.inner.sagas.iter().find(|s| s.name() == name) else {
                return Err(ShopError::Rejected(format!(
                    "{name} runs in the events process: retry its dead letters there"
                )));
            };
            return saga.retry(letter.stream).await.map_err(ShopError::Rejected);
        }
        Err(ShopError::NotFound)
    }

    /// The names of the read models, for rebuilds.
    pub fn view_names(&self) -> Vec<String> {
        [
            View::Catalog,
            View::Carts,
            View::Orders,
            View::Notifications,
        ]
        .into_iter()
        .map(|v| self.handle(v).name().to_owned())
        .collect()
    }

    /// The sagas this process runs (purchase, payment processing, reservations; none in the
    /// `command` and `query` roles), to wait on or tick in tests.
    pub fn sagas(&self) -> Vec<&SagaHandle> {
        self.inner.sagas.iter().collect()
    }

    /// What this process runs.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// Resolves if this process loses the lead over the event processors (an `events` process
    /// on PostgreSQL): it must then stop, and start again to wait for the lead. Never resolves
    /// in a process that does not lead.
    pub async fn lead_lost(&self) {
        match &self.inner.leadership {
            Some(lead) => lead.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Waits until every read model and saga has handled everything written so far, up to
    /// `timeout`.
    pub async fn settle(&self, timeout: Duration) -> Result<(), ShopError> {
        // One deadline for all of them: `timeout` bounds the whole wait.
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let head = self.inner.store.head().await?;
        for view in [
            View::Catalog,
            View::Carts,
            View::Orders,
            View::Notifications,
        ] {
            self.handle(view).wait_for(head, left()).await?;
        }
        for saga in self.sagas() {
            saga.wait_for(head, left()).await?;
        }
        Ok(())
    }

    /// Stops taking new commands (they answer `Unavailable`) and tells whoever follows the shop
    /// (live streams) that it is closing. Commands already in flight go on.
    pub fn begin_shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.closing.send_replace(true);
    }

    /// Resolves once the shop begins shutting down.
    pub async fn closing(&self) {
        let mut closing = self.inner.closing.subscribe();
        let _ = closing.wait_for(|closing| *closing).await;
    }

    /// Stops taking commands, waits (up to `timeout`) for those in flight to be answered and for
    /// the read side to catch up with them. The actix system is the host's to stop.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), ShopError> {
        self.begin_shutdown();
        let drained = async {
            while self.inner.in_flight.load(Ordering::SeqCst) > 0 {
                let idle = self.inner.idle.notified();
                if self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, drained)
            .await
            .map_err(|_| ShopError::Timeout)?;
        // The read side catches up with what it can in the time left; what it does not reach,
        // it resumes from its checkpoint at the next start (nothing is lost either way).
        if self.inner.role != Role::Command && self.inner.role != Role::Query {
            if let Err(error) = self.settle(timeout).await {
                tracing::warn!(%error, "stopping before the read side caught up; it resumes at the next start");
            }
        }
        Ok(())
    }
}

impl AddressInput {
    /// Parses the address.
    pub fn parse(&self) -> Result<Address, ShopError> {
        Ok(Address::parse(
            &self.name,
            &self.street,
            &self.city,
            &self.postcode,
            &self.country,
        )?)
    }
}
