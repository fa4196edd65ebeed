//! The `Aggregate` trait: a consistency boundary that decides commands into events and folds
//! events into its state. Pure: no I/O, no async, no clock.

use serde::{Serialize, de::DeserializeOwned};

use super::EventSet;

/// An event-sourced aggregate: its state is the fold of its events.
///
/// `decide` looks at the current state and a command and either rejects the command with a
/// domain error or answers the events that record what happened. `apply` folds one event into
/// the state; it must accept every event `decide` can produce, and must not fail: an event is a
/// fact that already happened.
///
/// The state is serializable so it can be snapshotted; bump [`Aggregate::SNAPSHOT_REVISION`]
/// whenever its shape changes, and old snapshots are ignored (the state is rebuilt from events).
pub trait Aggregate:
    Default + Clone + Send + Sync + Unpin + Serialize + DeserializeOwned + 'static
{
    /// The stored aggregate type name. Renaming it is a data migration.
    const TYPE: &'static str;

    /// The revision of the snapshot shape of this state.
    const SNAPSHOT_REVISION: u32 = 1;

    /// What callers ask of the aggregate.
    type Command: crate::domain::Command;

    /// The facts the aggregate records.
    type Event: EventSet;

    /// Why the aggregate refuses a command (a business rule, not an operational failure).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides a command against the current state.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);

    /// Folds a sequence of events, in order, into the state.
    fn apply_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Self::Event>) {
        for event in events {
            self.apply(event);
        }
    }
}

/// What every command can tell about itself, before any aggregate sees it: a stable name (for
/// logs, metrics and interceptors) and a shape check that needs no state.
pub trait Command: Send + Unpin + 'static {
    /// The command's stable name, as `"AddItem"`.
    fn name(&self) -> &'static str;

    /// Checks what can be checked without the aggregate's state (a quantity of at least 1, a
    /// well-formed card number). The validation interceptor calls it before the command is sent.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
