//! The schema migrations of each backend, embedded in the binary so a process starts in any
//! directory. Exposed so a host can run them on its own schedule (`nursery migrate` does).
//!
//! The migrations are built from `include_str!` rather than `sqlx::migrate!`: the same
//! embedding, without compiling sqlx's proc-macro crate and its drivers a second time.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The migrations for SQLite: the event store, the processors' tables, idempotency keys.
pub fn sqlite_migrator() -> Migrator {
    migrator(&[
        (
            1,
            "event store",
            include_str!("../../migrations/sqlite/0001_event_store.sql"),
        ),
        (
            2,
            "processors",
            include_str!("../../migrations/sqlite/0002_processors.sql"),
        ),
        (
            3,
            "idempotency keys",
            include_str!("../../migrations/sqlite/0003_idempotency.sql"),
        ),
    ])
}

/// The migrations for PostgreSQL: the event store, the processors' tables, the one-statement
/// append, idempotency keys.
pub fn postgres_migrator() -> Migrator {
    migrator(&[
        (
            1,
            "event store",
            include_str!("../../migrations/postgres/0001_event_store.sql"),
        ),
        (
            2,
            "processors",
            include_str!("../../migrations/postgres/0002_processors.sql"),
        ),
        (
            3,
            "fast append",
            include_str!("../../migrations/postgres/0003_fast_append.sql"),
        ),
        (
            4,
            "idempotency keys",
            include_str!("../../migrations/postgres/0004_idempotency.sql"),
        ),
        (
            5,
            "processor leaders",
            include_str!("../../migrations/postgres/0005_leaders.sql"),
        ),
        (
            6,
            "fast append relies on the unique event id",
            include_str!("../../migrations/postgres/0006_fast_append_unique.sql"),
        ),
        (
            7,
            "fast append keeps its plans",
            include_str!("../../migrations/postgres/0007_fast_append_cached_plan.sql"),
        ),
        (
            8,
            "fast append checks versions by exact keys",
            include_str!("../../migrations/postgres/0008_fast_append_exact_probes.sql"),
        ),
        (
            9,
            "the one-statement append refuses by an error",
            include_str!("../../migrations/postgres/0009_refuse.sql"),
        ),
    ])
}

fn migrator(steps: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = steps
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}
