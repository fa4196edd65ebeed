//! Projections: read models kept as JSON documents, each updated with its checkpoint in one
//! transaction, rebuildable from position 0 while the old generation serves, with dead letters
//! for events they cannot handle.
//!
//! Must not touch: HTTP. Knows the store and the runtime's broker.

mod leader;
mod memory_read_store;
mod read_store;
mod relay;
mod runner;
mod saga;
pub mod shop;
mod sql_read_store;

pub use leader::Leadership;
pub use memory_read_store::MemoryReadStore;
pub use read_store::{Commit, DeadLetter, NewDeadLetter, ReadStore, StoredResponse};
pub use relay::{EXCHANGE, RELAY_NAME, RelayHandle, Render, follow_exchange, start_relay};
pub use runner::{
    ApplyContext, Documents, Lagging, ProcessorConfig, ProcessorState, ProcessorStatus, Projection,
    ProjectionHandle, start_projection,
};
pub use saga::{
    DispatchError, SagaConfig, SagaDecoder, SagaDispatcher, SagaHandle, saga_processor_name,
    start_saga,
};
pub use sql_read_store::{PostgresReadStore, SqliteReadStore};
