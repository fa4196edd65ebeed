//! Sagas: long-running processes that react to events by sending commands, setting deadlines,
//! and compensating when a later step fails. Pure: a saga is `(state, event) -> step`, where
//! the step says which commands to send, which deadlines to set or cancel, which association
//! values to add or remove, and whether the saga ends. Time comes in as an argument.
//!
//! Must not touch: any runtime, store or clock.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A value that routes events to saga instances: `order_id = "o-42"`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Association {
    /// What the value is (`"order_id"`).
    pub key: String,
    /// The value.
    pub value: String,
}

impl Association {
    /// `key = value`.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// How an event reaches a saga's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// The event starts a new instance associated with this value (unless one already is).
    Start(Association),
    /// The event goes to every live instance associated with this value.
    To(Association),
}

/// A command a saga sends, with the command that undoes it, if any.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Send<C> {
    /// The command.
    pub command: C,
    /// What to send if the saga later compensates (recorded with the instance).
    pub compensation: Option<C>,
}

/// A deadline to set: `name` fires `after_seconds` after `now`, unless cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// The deadline's name (cancel by it).
    pub name: String,
    /// When it fires, in seconds after the time the step was taken.
    pub after_seconds: u64,
}

/// What a saga does in answer to one event or deadline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step<C> {
    /// Commands to send, in order.
    pub send: Vec<Send<C>>,
    /// Compensations to record without sending anything now: the undo of something done
    /// before the saga started (stock a cart reserved before its checkout started the
    /// purchase). Recorded before the compensations of `send`.
    pub undo: Vec<C>,
    /// Deadlines to set.
    pub set_deadlines: Vec<Deadline>,
    /// Deadlines to cancel, by name.
    pub cancel_deadlines: Vec<String>,
    /// Association values to add.
    pub associate: Vec<Association>,
    /// Association values to remove.
    pub dissociate: Vec<Association>,
    /// Send the recorded compensations of every earlier step, newest first.
    pub compensate: bool,
    /// The saga is over: its instance, associations and deadlines go.
    pub end: bool,
}

impl<C> Default for Step<C> {
    fn default() -> Self {
        Self {
            send: Vec::new(),
            undo: Vec::new(),
            set_deadlines: Vec::new(),
            cancel_deadlines: Vec::new(),
            associate: Vec::new(),
            dissociate: Vec::new(),
            compensate: false,
            end: false,
        }
    }
}

impl<C> Step<C> {
    /// Nothing to do.
    pub fn nothing() -> Self {
        Self::default()
    }

    /// Also sends `command`.
    pub fn send(mut self, command: C) -> Self {
        self.send.push(Send {
            command,
            compensation: None,
        });
        self
    }

    /// Also sends `command`, recording `compensation` to undo it.
    pub fn send_undoable(mut self, command: C, compensation: C) -> Self {
        self.send.push(Send {
            command,
            compensation: Some(compensation),
        });
        self
    }

    /// Also records `compensation`, to send if the saga later compensates, without sending
    /// anything now.
    pub fn undo(mut self, compensation: C) -> Self {
        self.undo.push(compensation);
        self
    }

    /// Also sets a deadline.
    pub fn deadline(mut self, name: impl Into<String>, after_seconds: u64) -> Self {
        self.set_deadlines.push(Deadline {
            name: name.into(),
            after_seconds,
        });
        self
    }

    /// Also cancels a deadline.
    pub fn cancel(mut self, name: impl Into<String>) -> Self {
        self.cancel_deadlines.push(name.into());
        self
    }

    /// Also associates the instance with `key = value`.
    pub fn associate(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.associate.push(Association::new(key, value));
        self
    }

    /// Also runs the recorded compensations.
    pub fn compensate(mut self) -> Self {
        self.compensate = true;
        self
    }

    /// Ends the saga after this step.
    pub fn end(mut self) -> Self {
        self.end = true;
        self
    }
}

/// A saga type.
pub trait Saga:
    Default + Clone + Serialize + DeserializeOwned + std::marker::Send + Sync + 'static
{
    /// The saga's stored name.
    const NAME: &'static str;

    /// The events it listens to (decoded by the runtime from stored events).
    type Event: Clone + std::fmt::Debug + std::marker::Send + Sync + 'static;

    /// The commands it sends (serializable: they wait in an outbox until sent).
    type Command: Clone
        + std::fmt::Debug
        + PartialEq
        + Serialize
        + DeserializeOwned
        + std::marker::Send
        + Sync
        + 'static;

    /// How `event` reaches instances (`None`: this saga ignores it).
    fn routing(event: &Self::Event) -> Option<Routing>;

    /// Reacts to an event: changes `self`, answers the step. `now` is seconds since the Unix
    /// epoch, as the runtime's clock says.
    fn handle(&mut self, event: &Self::Event, now: i64) -> Step<Self::Command>;

    /// Reacts to the deadline `name` firing.
    fn on_deadline(&mut self, name: &str, now: i64) -> Step<Self::Command>;
}
