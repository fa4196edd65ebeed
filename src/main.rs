//! The `nursery` command: serves the shop, and runs the maintenance tasks.

use std::process::ExitCode;
use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, web};
use clap::{Parser, Subcommand};
use nursery::config::{DEFAULT_BIND, DEFAULT_DATABASE_URL};
use nursery::store::{self, EventStore};
use tracing::{error, info};

/// Nursery: an online plant shop on event-sourced CQRS.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the HTTP facade (health and readiness so far).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "NURSERY_BIND", default_value = DEFAULT_BIND)]
        bind: String,
        /// The event store: sqlite://FILE (created on first start) or postgres://...
        #[arg(long, env = "NURSERY_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
    },
    /// Creates the event store's schema (or brings it up to date) and exits.
    Migrate {
        /// The event store: sqlite://FILE or postgres://...
        #[arg(long, env = "NURSERY_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let outcome = actix_rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve { bind, database_url } => serve(&bind, &database_url).await,
            Command::Migrate { database_url } => store::open(&database_url)
                .await
                .map(|_| info!(%database_url, "schema is up to date"))
                .map_err(|e| e.to_string()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(bind: &str, database_url: &str) -> Result<(), String> {
    let store: Arc<dyn EventStore> = store::open(database_url)
        .await
        .map_err(|e| format!("cannot open the event store at {database_url}: {e}"))?;
    info!(%bind, %database_url, "serving");
    let store = web::Data::from(Arc::new(store));
    HttpServer::new(move || {
        App::new()
            .app_data(store.clone())
            .route(
                "/health",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
            .route("/ready", web::get().to(ready))
    })
    .bind(bind)
    .map_err(|e| format!("cannot listen on {bind}: {e}"))?
    .run()
    .await
    .map_err(|e| e.to_string())
}

async fn ready(store: web::Data<Arc<dyn EventStore>>) -> HttpResponse {
    match store.ping().await {
        Ok(()) => HttpResponse::Ok().body("ready"),
        Err(_) => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .body("event store unavailable"),
    }
}
