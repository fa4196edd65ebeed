#![doc = include_str!("../README.md")]
//!
//! # Layout
//! Each layer knows only the ones above it in this list (see `ARCHITECTURE.md`):
//! - [`domain`]: the plant shop in pure, synchronous Rust: aggregates decide commands into
//!   events and fold events into state. No actix, sqlx, tokio, async or clock.
//! - [`store`]: the event store behind one trait, [`store::EventStore`], with SQLite (the
//!   embedded default), PostgreSQL and in-memory implementations, codecs, upcasters, snapshots.
//! - [`actors`]: the actix runtime (aggregate actors, journal, broker, registry, gateway).
//! - [`projections`]: read models as documents, checkpointed runners, rebuilds, dead letters.
//! - `http`, [`config`], `main.rs`, [`testkit`]: the edges.

pub mod actors;
pub mod clock;
pub mod config;
pub mod domain;
pub mod http;
pub mod projections;
pub mod shop;
pub mod store;
pub mod testkit;
