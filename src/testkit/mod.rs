//! The test kit: what Nursery's own tests use, public so a host tests its aggregates the same
//! way.
//!
//! - [`AggregateFixture`]: given events, when a command, expect events or an error, with no
//!   runtime at all (Axon's `AggregateTestFixture`).
//! - [`FaultyStore`]: an event store wrapper that fails, rejects or interferes with the next N
//!   appends (Akka's `PersistenceTestKit`).
//! - [`SagaFixture`]: given events, when an event or when time elapses (a virtual clock),
//!   expect commands and deadlines (Axon's `SagaTestFixture`).
//! - [`ProjectionFixture`]: given events, expect the read model's documents.
//! - [`TestRuntime`]: the whole runtime in-process on the in-memory store, with subscribers
//!   that record what they saw and `settle()` to wait until they reached the head.
//!
//! Time: run tests under `tokio::time::pause()` and move the clock with
//! `tokio::time::advance`; passivation, backoff and timeouts all follow tokio's clock.
//!
//! Must not touch: any concrete aggregate.

mod faulty_store;
mod fixture;
mod harness;
mod projection_fixture;
mod saga_fixture;

pub use faulty_store::FaultyStore;
pub use fixture::{AggregateFixture, Then};
pub use harness::{Recorder, TestRuntime};
pub use projection_fixture::ProjectionFixture;
pub use saga_fixture::{SagaFixture, SagaThen};
