//! The pure core: aggregates, their commands and events, as plain synchronous Rust.
//!
//! Nothing in this folder may use actix, sqlx, tokio, async or a clock: what a decision needs
//! from outside (a price, the time) comes in the command. `tests/it/layout.rs` greps this folder
//! for forbidden imports so the rule cannot rot.

mod aggregate;
mod event;
mod saga;
pub mod shop;

pub use aggregate::{Aggregate, Command};
pub use event::{EventSet, PayloadDecoder};
pub use saga::{Association, Deadline, Routing, Saga, Send as SagaSend, Step};
