//! The `nursery` command: serves the shop, and runs the maintenance tasks.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures_util::TryStreamExt;
use nursery::actors::Runtime;
use nursery::config::{Role, Settings};
use nursery::domain::shop::{
    Cart, CartEvent, Delivery, DeliveryEvent, Invoice, InvoiceEvent, Notification,
    NotificationEvent, Order, OrderEvent, Payment, PaymentEvent, Product, ProductEvent,
};
use nursery::domain::{Aggregate, EventSet};
use nursery::projections::shop::{
    CartsProjection, CatalogProjection, LogNotifier, NotificationsProjection, OrdersProjection,
};
use nursery::projections::{ProcessorConfig, Projection, start_projection};
use nursery::shop::open_stores;
use nursery::store::{self, Codec, EventStore, RecordedEvent, StreamId, stream_events};
use tracing::{error, info};

/// mimalloc rather than glibc's malloc: in the runtime benchmark's profile, glibc's allocator
/// took about a quarter of the process's CPU (see README, Benchmark).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Nursery: an online plant shop on event-sourced CQRS.
///
/// Settings come from nursery.toml (when present, or --config), then the environment
/// (NURSERY_*), then the flags.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// A settings file (default: nursery.toml in the working directory, when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The event store: sqlite://FILE, postgres://... or memory:// [env: NURSERY_DATABASE_URL]
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the shop: the HTTP API, the web page, /metrics, /health and /ready. Stops
    /// gracefully on SIGTERM or Ctrl-C: no new requests, those in flight finish.
    Serve {
        /// Address to listen on [env: NURSERY_BIND; default 127.0.0.1:8080].
        #[arg(long)]
        bind: Option<String>,
        /// all, command, query or events [env: NURSERY_ROLE; default all].
        #[arg(long)]
        role: Option<Role>,
    },
    /// Creates the schema (or brings it up to date) and exits.
    Migrate,
    /// Prints an aggregate's events, oldest first: sequence, position, time, type, payload.
    History {
        /// The aggregate's id (a cart id, an order id, a product id...).
        aggregate_id: String,
        /// Its type (Cart, Product, Order, Invoice, Delivery, Payment, Notification); without
        /// it, every type with that id is printed.
        #[arg(long = "type")]
        aggregate_type: Option<String>,
    },
    /// Works on the read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Rebuilds a read model (catalog, carts, orders, notifications) from position 0 into a
    /// new generation, showing progress, and makes it serve. Run it while no server follows
    /// the same database; a running server rebuilds through
    /// POST /api/admin/projections/{name}/rebuild instead.
    Rebuild {
        /// catalog, carts, orders or notifications.
        name: String,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(message) => {
            error!("{message}");
            std::process::exit(2);
        }
    };
    if let Some(url) = cli.database_url {
        settings.database_url = url;
    }
    let system = actix_rt::System::new();
    let outcome = system.block_on(async move {
        match cli.command {
            Command::Serve { bind, role } => {
                if let Some(bind) = bind {
                    settings.bind = bind;
                }
                if let Some(role) = role {
                    settings.role = role;
                }
                nursery::http::serve(settings).await
            }
            Command::Migrate => store::open(&settings.database_url)
                .await
                .map(|_| info!(database = %settings.database_url, "schema is up to date"))
                .map_err(|e| e.to_string()),
            Command::History {
                aggregate_id,
                aggregate_type,
            } => history(&settings, &aggregate_id, aggregate_type.as_deref()).await,
            Command::Projections {
                command: ProjectionsCommand::Rebuild { name },
            } => rebuild(&settings, &name).await,
        }
    });
    let code = match outcome {
        Ok(()) => 0,
        Err(message) => {
            error!("{message}");
            1
        }
    };
    // Everything durable is committed by now. Exit without dropping the actix system: tasks
    // still holding a pooled connection would try to hand it back without a runtime.
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

fn as_json<E: EventSet>(codec: &Codec, record: &RecordedEvent) -> String {
    match codec.decode_event::<E>(record) {
        Ok(event) => serde_json::to_string(&event).unwrap_or_default(),
        Err(error) => format!("<{error}>"),
    }
}

async fn history(settings: &Settings, id: &str, only: Option<&str>) -> Result<(), String> {
    let store = store::open(&settings.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let codec = Codec::default();
    type Render = fn(&Codec, &RecordedEvent) -> String;
    let types: [(&str, Render); 7] = [
        (Cart::TYPE, as_json::<CartEvent>),
        (Product::TYPE, as_json::<ProductEvent>),
        (Order::TYPE, as_json::<OrderEvent>),
        (Invoice::TYPE, as_json::<InvoiceEvent>),
        (Delivery::TYPE, as_json::<DeliveryEvent>),
        (Payment::TYPE, as_json::<PaymentEvent>),
        (Notification::TYPE, as_json::<NotificationEvent>),
    ];
    if let Some(only) = only {
        if !types.iter().any(|(t, _)| t.eq_ignore_ascii_case(only)) {
            let known: Vec<&str> = types.iter().map(|(t, _)| *t).collect();
            return Err(format!("unknown aggregate type {only:?}; one of {known:?}"));
        }
    }
    let mut out = std::io::stdout().lock();
    let mut found = 0;
    for (aggregate_type, render) in types {
        if only.is_some_and(|o| !o.eq_ignore_ascii_case(aggregate_type)) {
            continue;
        }
        let stream = StreamId::new(aggregate_type, id);
        let records: Vec<RecordedEvent> = stream_events(&*store, &stream, 1)
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        for record in &records {
            found += 1;
            let _ = writeln!(
                out,
                "{aggregate_type}/{id} #{} @{} {} {} {}",
                record.sequence,
                record.position,
                record
                    .recorded_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                record.event_type,
                render(&codec, record)
            );
        }
    }
    if found == 0 {
        return Err(format!("no aggregate {id:?} in {}", settings.database_url));
    }
    Ok(())
}

async fn rebuild(settings: &Settings, name: &str) -> Result<(), String> {
    let (events, read) = open_stores(&settings.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let codec = Codec::default();
    let projection: Arc<dyn Projection> = match name {
        "catalog" => Arc::new(CatalogProjection::new(codec)),
        "carts" => Arc::new(CartsProjection::new(codec)),
        "orders" => Arc::new(OrdersProjection::new(codec)),
        // A rebuild replays: nothing is sent.
        "notifications" => Arc::new(NotificationsProjection::new(codec, Arc::new(LogNotifier))),
        other => {
            return Err(format!(
                "unknown read model {other:?}: catalog, carts, orders or notifications"
            ));
        }
    };
    let head = events.head().await.map_err(|e| e.to_string())?;
    let runtime = Runtime::builder(Arc::clone(&events) as Arc<dyn EventStore>)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let handle = start_projection(
        projection,
        events,
        read,
        runtime.broker().clone(),
        ProcessorConfig::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut watch = handle.watch();
    let rebuilding = handle.clone();
    let done = actix_rt::spawn(async move { rebuilding.rebuild().await });
    let mut err = std::io::stderr();
    loop {
        let at = watch.borrow().rebuild_position.unwrap_or(head);
        draw(&mut err, name, at.min(head), head);
        if done.is_finished() {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
    }
    let outcome = done.await.map_err(|e| e.to_string())?;
    draw(&mut err, name, head, head);
    let _ = writeln!(err);
    outcome?;
    info!(projection = %name, events = head, "rebuilt; the new generation serves");
    Ok(())
}

fn draw(out: &mut impl Write, name: &str, at: u64, head: u64) {
    const WIDTH: u64 = 30;
    let filled = (at * WIDTH).checked_div(head).unwrap_or(WIDTH) as usize;
    let percent = (at * 100).checked_div(head).unwrap_or(100);
    let _ = write!(
        out,
        "\r{name} [{}{}] {percent:>3}% {at}/{head} events",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled)
    );
    let _ = out.flush();
}
