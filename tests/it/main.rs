//! Nursery's integration tests, one binary so linking happens once.
//!
//! PostgreSQL tests use the real local server (`NURSERY_TEST_PG`, default
//! `postgres://postgres@127.0.0.1:5432`), each test in a fresh database of its own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests assert by panicking"
)]
#![allow(missing_docs, reason = "test code")]

mod browser;
mod cli;
mod deploy;
mod fixtures;
mod golden;
mod http;
mod layout;
mod projections;
mod relay;
mod runtime;
mod sagas;
mod shop;
mod store;
mod support;
