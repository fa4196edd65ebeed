//! What the benchmarks share: the scale knob and a throwaway PostgreSQL database.

#![allow(dead_code, reason = "each benchmark uses a part of it")]

use nursery::store::PostgresStore;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// The benchmarks allocate as the `nursery` binary does (src/main.rs).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The local PostgreSQL server the benchmarks use.
pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// `n` scaled by `NURSERY_BENCH_SCALE` (default 1.0), at least 1.
pub fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("NURSERY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(1)
}

/// A fresh PostgreSQL database with the store's schema, dropped by [`BenchDb::drop`].
pub struct BenchDb {
    admin: PgConnection,
    name: String,
    /// The store on it.
    pub store: PostgresStore,
}

impl BenchDb {
    /// Creates `<prefix>_<uuid>`; `None` (with a line saying so) when PostgreSQL is not answering.
    pub async fn create(prefix: &str) -> Option<Self> {
        let Ok(mut admin) = PgConnection::connect(&format!("{PG_SERVER}/postgres")).await else {
            println!("\n(PostgreSQL is not answering on 127.0.0.1:5432: its rows are skipped)");
            return None;
        };
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create the bench database");
        let store = PostgresStore::connect(&format!("{PG_SERVER}/{name}"))
            .await
            .expect("open the bench database");
        Some(Self { admin, name, store })
    }

    /// Closes the store's connections and drops the database.
    pub async fn drop(mut self) {
        self.store.pool().close().await;
        let _ = self
            .admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await;
    }
}
